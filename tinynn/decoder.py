"""Decoder: our fused CUDA decode step (native/cuda/decode.h) over a session's tensors.

A Decoder reads the weights and the KV cache a CUDA session holds as persistent
tensors (see ``tnn_decoder_new`` in native/tinynn.h for the layouts) and runs one
token of 1..max_batch sequences a call: one upload, one CUDA graph launch, one
download, each sequence's token chosen on the device (greedy, or the sampling
rule of native/cuda/sampling.h with the host's uniform draw).

It belongs to the session: closing the session frees it too (a later call
raises, it never reads freed memory).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .dtypes import SAMPLING_DTYPE  # tnn_sampling_params; imported from here by callers
from .session import INT32, Session, Tensor, c_integer

# ln_1_g, ln_1_b, w_qkv, b_qkv, w_o, b_o, ln_2_g, ln_2_b, w_fc, b_fc, w_proj, b_proj, kv
LAYER_TENSORS = 13


class Decoder:
    def __init__(
        self,
        session: Session,
        *,
        n_head: int,
        eps: float,
        max_batch: int,
        wte: Tensor,
        wpe: Tensor,
        ln_f_g: Tensor,
        ln_f_b: Tensor,
        layers: Sequence[Sequence[Tensor]],
    ):
        if any(len(layer) != LAYER_TENSORS for layer in layers):
            raise ValueError(f"each layer gives {LAYER_TENSORS} tensors")
        self._session = session
        self._lib = session._lib
        handles = [t.handle for layer in layers for t in layer]
        array = np.array(handles, dtype=np.uintp) if handles else np.zeros(0, np.uintp)
        self._handle = self._lib.tnn_decoder_new(
            session._ptr(),
            c_integer(n_head, "n_head", INT32),
            float(eps),
            c_integer(max_batch, "max_batch", INT32),
            wte.handle,
            wpe.handle,
            ln_f_g.handle,
            ln_f_b.handle,
            array.ctypes.data,
            len(layers),
        )
        self.max_batch = int(max_batch)
        self.n_vocab = int(wte.ne[1])  # wte is ne = [n_embd, n_vocab]: the logits row length
        self._ids = np.zeros(self.max_batch, np.int32)

    @property
    def closed(self) -> bool:
        return self._handle is None or self._session.closed

    def step(
        self,
        tokens: np.ndarray,
        positions: np.ndarray,
        slots: np.ndarray,
        sampling: np.ndarray | None = None,
        logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Chosen ids [n] (and logits [n, vocab] when asked) of one step of n
        sequences. sampling: a SAMPLING_DTYPE array of n records, or None (greedy)."""
        if self.closed:
            raise ValueError("the decoder is closed")
        n = len(tokens)
        args = [np.ascontiguousarray(a, dtype=np.int32) for a in (tokens, positions, slots)]
        if any(len(a) != n for a in args):
            raise ValueError("tokens, positions and slots must have the same length")
        if sampling is not None:
            sampling = np.ascontiguousarray(sampling, dtype=SAMPLING_DTYPE)
            if len(sampling) != n:
                raise ValueError(f"expected {n} sampling records, got {len(sampling)}")
        out_ids = np.zeros(n, np.int32)
        out_logits = np.zeros((n, self.n_vocab), np.float32) if logits else None
        self._lib.tnn_decoder_step(
            self._handle,
            n,
            *(a.ctypes.data for a in args),
            None if sampling is None else sampling.ctypes.data,
            out_ids.ctypes.data,
            None if out_logits is None else out_logits.ctypes.data,
        )
        return out_ids, out_logits

    def close(self) -> None:
        if self._handle is not None and not self._session.closed:
            self._lib.tnn_decoder_free(self._handle)
        self._handle = None

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
