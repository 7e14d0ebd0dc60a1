"""FastGPT2: GPT-2 as few ggml nodes as we can make it, built once.

The weights (gpt2.engine.upload) and the KV cache with its sequence slots
(gpt2.engine.kv_cache) live in one root session; every graph
(gpt2.engine.graph) is a fork of it. Generation state (positions) lives in
the sequences (gpt2.sequence), never here.

Except for f32 weights on CUDA, which compute in f32 throughout: attention
there is softmax(K^T Q) V as separate f32 nodes over f32 caches
(`exact_attention`), and prefills of 4..16 tokens are padded off ggml-cuda's
TF32 kernel (`pad_prefill`, gpt2.tf32). Greedy picks happen on the device: a
step downloads one int32 id a sequence.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import numpy as np

from gpt2.engine.graph import Graph, GraphShape, bucket, build_graph
from gpt2.engine.kv_cache import declare_cache, upload_mask_table
from gpt2.engine.memory import check_fits, default_n_ctx
from gpt2.engine.upload import WEIGHT_DTYPES, declare_weights, upload_weights
from gpt2.sampling import SamplingParams
from gpt2.sequence import SlotEngine
from gpt2.tf32 import STRICT_F32_COLUMNS, TF32_COLUMNS
from gpt2.weights import GPT2Weights
from tinynn import Decoder, Session, TinyNNError
from tinynn.decoder import SAMPLING_DTYPE

MAX_PREFILL_GRAPHS = 8  # prefill graphs kept, by shape (least recently used go)
MAX_FUSED_BATCH = 8  # sequences our fused decode step takes at once (native/cuda/decode.h)

log = logging.getLogger("gpt2")


class FastGPT2(SlotEngine):
    """GPT-2 on one device with f32, f16 or q8_0 weights.

    ``n_ctx`` bounds positions (default: the model's context, at most
    gpt2.engine.memory.DEFAULT_MAX_N_CTX); ``n_slots``
    is how many sequences may be alive at once (gpt2.slots; each holds a
    cache of n_ctx positions). ``exact_attention`` and ``pad_prefill``
    default to on for f32 weights on CUDA and off elsewhere; True or False
    forces them, on any device. ``fused_decode``: decode steps in our own CUDA
    kernels (native/cuda, tinynn.Decoder) instead of ggml graphs, where they run
    (CUDA, f16 or q8_0 weights, an sm_90 GPU). Off by default until a GPU run has
    measured them (bench/NOTES.md); True asks for them (an error where they
    cannot run), None uses them where they run and logs why not elsewhere; with
    None, a step the fused kernels fail (a TinyNNError) is logged, and that step
    and the rest run as ggml graphs.
    """

    def __init__(
        self,
        weights: GPT2Weights,
        device: str = "cpu",
        dtype: str = "f32",
        *,
        n_ctx: int | None = None,
        n_slots: int | None = None,
        n_threads: int | None = None,
        exact_attention: bool | None = None,
        pad_prefill: bool | None = None,
        fused_decode: bool | None = False,
    ):
        if dtype not in WEIGHT_DTYPES:
            raise ValueError(f"dtype must be one of {WEIGHT_DTYPES}, got {dtype!r}")
        c = self.config = weights.config
        self.vocab_size = c.vocab_size
        self.n_ctx = n_ctx or default_n_ctx(c.n_positions)
        if not 0 < self.n_ctx <= c.n_positions:
            raise ValueError(f"n_ctx={self.n_ctx} must be in 1..{c.n_positions}")
        self._init_slots(n_slots, "model")
        self.device, self.dtype = device, dtype
        cuda_f32 = device == "cuda" and dtype == "f32"
        self.exact_attention = cuda_f32 if exact_attention is None else exact_attention
        self.pad_prefill = cuda_f32 if pad_prefill is None else pad_prefill
        # cache (and position, mask) rows per slot: room for a padded prefill
        # even when n_ctx, the user's bound on positions, is shorter
        padded = min(max(self.n_ctx, STRICT_F32_COLUMNS), c.n_positions)
        self.n_rows = padded if self.pad_prefill else self.n_ctx
        # ggml-cuda's flash attention reads f16 K/V (it would convert f32 every
        # step); on the CPU an f32 model keeps an f32 cache, for parity, and so
        # does exact attention.
        cpu_f32 = device == "cpu" and dtype == "f32"
        kv_dtype = "f32" if cpu_f32 or self.exact_attention else "f16"
        self.root = Session(device, n_threads=n_threads)
        try:
            self.weights = declare_weights(self.root, c, dtype, self.n_rows)
            self.cache = declare_cache(
                self.root, c.n_layer, c.n_embd, self.n_rows, self.n_slots, kv_dtype
            )
            check_fits(self.root, self.weights, self.cache, n_ctx=self.n_ctx, n_slots=self.n_slots)
            self.root.finalize_weights()  # zeroed: empty caches
            upload_weights(self.weights, weights, self.n_rows, device)
            upload_mask_table(self.cache)
            self.fused_decode = fused_decode
            self.decoder = self._fused_decoder(fused_decode)
        except BaseException:
            self.root.close()
            raise
        self._prefill_graphs: OrderedDict[GraphShape, Graph] = OrderedDict()
        self._decode_graphs: dict[GraphShape, Graph] = {}
        self.decode_graph_builds = 0

    def _fused_decoder(self, wanted: bool | None) -> Decoder | None:
        """Our fused decode step where it runs and is wanted, else None."""
        if wanted is False:
            return None
        why_not = None
        if self.device != "cuda":
            why_not = "it runs on CUDA only"
        elif self.dtype not in ("f16", "q8_0") or self.cache.dtype != "f16":
            why_not = "it takes f16 or q8_0 weights and an f16 cache"
        if why_not is None:
            w = self.weights
            layers = [
                (lw.w_qkv, lw.b_qkv, lw.w_o, lw.b_o, lw.w_fc, lw.b_fc, lw.w_proj, lw.b_proj, kv)
                for lw, kv in zip(w.layers, self.cache.layers, strict=True)
            ]
            try:
                return Decoder(
                    self.root,
                    n_head=self.config.n_head,
                    eps=self.config.layer_norm_epsilon,
                    max_batch=min(self.n_slots, MAX_FUSED_BATCH),
                    wte=w.wte,
                    wpe=w.wpe,
                    lm_head=w.lm_head,
                    lm_bias=w.lm_bias,
                    layers=layers,
                )
            except TinyNNError as e:
                why_not = str(e)
        if wanted:
            raise ValueError(f"fused_decode=True, but our fused decode step cannot run: {why_not}")
        log.debug("decode steps run as ggml graphs: the fused step %s", why_not)
        return None

    @property
    def kv_dtype(self) -> str:
        return self.cache.dtype

    @property
    def max_positions(self) -> int:
        return self.n_ctx

    # -- graphs -------------------------------------------------------------------
    def _graph(self, shape: GraphShape) -> Graph:
        return build_graph(
            self.root, self.config, self.weights, self.cache, shape, self.exact_attention
        )

    def _prefill_graph(self, shape: GraphShape) -> Graph:
        g = self._prefill_graphs.pop(shape, None)
        if g is None:
            g = self._graph(shape)
            while len(self._prefill_graphs) >= MAX_PREFILL_GRAPHS:
                self._prefill_graphs.popitem(last=False)[1].sess.close()
        self._prefill_graphs[shape] = g
        return g

    def _decode_graph(self, shape: GraphShape) -> Graph:
        if shape not in self._decode_graphs:
            self._decode_graphs[shape] = self._graph(shape)
            self.decode_graph_builds += 1
        return self._decode_graphs[shape]

    def _run(self, g: Graph, ints: list[np.ndarray], greedy: bool) -> np.ndarray:
        """Uploads tokens, positions, cache rows (and last rows), computes, and
        returns the greedy ids or the logits rows [rows, vocab]: one native
        call, one wait for the device."""
        data = np.concatenate(ints).astype(np.int32)
        if greedy:
            return g.sess.compute_io(g.ints, data, g.out_ids)
        return g.sess.compute_io(g.ints, data, g.logits).reshape(-1, self.vocab_size)

    # -- slot calls (gpt2.sequence) ---------------------------------------------
    def _prefill(
        self, first: int, prompts: list[np.ndarray], all_logits: bool, greedy: bool
    ) -> np.ndarray:
        """Runs the prompts from position 0 in one graph, prompt i into slot
        first+i. Shorter prompts are padded to the longest."""
        lengths = np.array([len(p) for p in prompts])
        n_seq = len(prompts)
        n_q = self._prefill_length(n_seq, int(lengths.max()))
        n_kv = bucket(n_q, self.n_rows)
        g = self._prefill_graph(GraphShape(first, n_seq, n_q, n_kv, last_only=not all_logits))
        # Padding: id 0 at positions t..n_q-1, written to those cache rows of its
        # own slot. Real queries never attend past themselves, and decode at
        # position p overwrites row p before any query reads it.
        tokens = np.zeros((n_seq, n_q), dtype=np.int32)
        for i, seq in enumerate(prompts):
            tokens[i, : len(seq)] = seq
        positions = np.tile(np.arange(n_q), n_seq)
        ints = [tokens.reshape(-1), positions, self.cache.rows(first, n_seq, positions)]
        if not all_logits:
            ints.append(np.arange(n_seq) * n_q + lengths - 1)  # the real last tokens
        return self._run(g, ints, greedy)

    def _prefill_length(self, n_seq: int, t: int) -> int:
        """Tokens per sequence that a prefill of n_seq prompts of t computes:
        t, or 17 where its products would have 4..16 columns (TF32_COLUMNS)
        and pad_prefill is on. A model whose whole context is shorter than 17
        has no room: t (TF32)."""
        padded = STRICT_F32_COLUMNS
        tf32 = t in TF32_COLUMNS or n_seq * t in TF32_COLUMNS  # attention, weights
        return padded if self.pad_prefill and tf32 and padded <= self.n_rows else t

    def _prefill_slots(self, first: int, prompts: list[np.ndarray], greedy: bool) -> np.ndarray:
        return self._prefill(first, prompts, all_logits=False, greedy=greedy)

    def _logits_slot(self, slot: int, ids: np.ndarray) -> np.ndarray:
        rows = self._prefill(slot, [ids], all_logits=True, greedy=False)
        return rows[: len(ids)]  # without the padding

    def _step_slots(
        self,
        first: int,
        tokens: np.ndarray,
        positions: np.ndarray,
        active: np.ndarray,
        greedy: bool,
    ) -> np.ndarray:
        n_seq = len(tokens)
        if self.decoder is not None and n_seq <= self.decoder.max_batch:
            slots = first + np.arange(n_seq, dtype=np.int32)
            try:
                ids, logits = self.decoder.step(tokens, positions, slots, logits=not greedy)
                return ids if greedy else logits
            except TinyNNError as e:
                self._fused_step_failed(e)
        n_kv = bucket(int(positions.max()) + 1, self.n_ctx)
        g = self._decode_graph(GraphShape(first, n_seq, 1, n_kv, last_only=False))
        return self._run(g, [tokens, positions, self.cache.rows(first, n_seq, positions)], greedy)

    def _sample_slots(
        self,
        first: int,
        tokens: np.ndarray,
        positions: np.ndarray,
        active: np.ndarray,
        params: list[SamplingParams],
        uniforms: np.ndarray,
    ) -> np.ndarray:
        n_seq = len(tokens)
        if self.decoder is None or n_seq > self.decoder.max_batch:
            return super()._sample_slots(first, tokens, positions, active, params, uniforms)
        records = np.zeros(n_seq, dtype=SAMPLING_DTYPE)  # one record a sequence
        records["temperature"] = [p.temperature for p in params]
        records["top_k"] = [p.top_k for p in params]
        records["top_p"] = [p.top_p for p in params]
        records["uniform"] = uniforms
        slots = first + np.arange(n_seq, dtype=np.int32)
        try:
            return self.decoder.step(tokens, positions, slots, sampling=records)[0]
        except TinyNNError as e:
            self._fused_step_failed(e)
        return super()._sample_slots(first, tokens, positions, active, params, uniforms)

    def _fused_step_failed(self, e: TinyNNError) -> None:
        """A step our kernels failed: an error where they were asked for; where they
        were only used where they run, ggml's graphs take this step and the rest (the
        failed step's cache rows are written again)."""
        if self.fused_decode:
            raise e
        log.warning("our fused decode step failed (%s); decoding through ggml's graphs", e)
        decoder, self.decoder = self.decoder, None
        decoder.close()

    def _free_device(self) -> None:
        if self.decoder is not None:
            self.decoder.close()
        for g in list(self._prefill_graphs.values()) + list(self._decode_graphs.values()):
            g.sess.close()
        self._prefill_graphs.clear()
        self._decode_graphs.clear()
        self.root.close()
