"""FastGPT2: GPT-2 as few ggml nodes as we can make it, built once.

The weights (gpt2.engine.upload) and the KV cache with its sequence slots
(gpt2.engine.kv_cache) live in one root session; every graph
(gpt2.engine.graph) is a fork of it. Positions live in the context's table
(gpt2.engine.context), never in a graph.

A step plan (gpt2.engine.step) runs as: its decode rows in our fused CUDA
step (up to 32 sequences, tinynn.Decoder) or one graph over their run of
slots, then its prefill rows, a graph for each run of adjacent slots, each
row padded to a bucket of lengths (`prefill_bucket`), so that prompts and
prompt chunks of many lengths share a few graphs. Token
choice stays on the device where it can (the graph's argmax for greedy rows,
our CUDA sampler for sampled ones): a step then downloads one int32 id a
row; rows that want logits or log-probabilities bring their logits to the
shim's C sampler.

Except for f32 weights on CUDA, which compute in f32 throughout: attention
there is softmax(K^T Q) V as separate f32 nodes over f32 caches
(`exact_attention`), and prefills of 4..16 tokens are padded off ggml-cuda's
TF32 kernel (`pad_prefill`, gpt2.tf32).
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import numpy as np

from gpt2.engine.base import Engine
from gpt2.engine.choice import all_greedy, choose_rows, sampling_records
from gpt2.engine.graph import Graph, GraphShape, bucket, build_graph
from gpt2.engine.kv_cache import declare_cache, upload_mask_table
from gpt2.engine.memory import check_fits, default_n_ctx
from gpt2.engine.step import StepResult, StepRow
from gpt2.engine.upload import (
    WEIGHT_DTYPES,
    LayerWeights,
    declare_weights,
    pack_for_cpu,
    upload_weights,
    weight_tensors,
)
from gpt2.tf32 import STRICT_F32_COLUMNS, TF32_COLUMNS
from gpt2.weights import GPT2Weights
from tinynn import Decoder, Session, Tensor, TinyNNError
from tinynn.dtypes import SAMPLING_DTYPE

MAX_PREFILL_GRAPHS = 8  # prefill graphs kept, by shape (least recently used go)
MAX_FUSED_BATCH = 32  # sequences our fused decode step takes at once (native/tinynn.h)
DECODE_MODES = ("auto", "fused", "graphs")
# tokens a prefilled sequence computes: the next of these, then a multiple of the last
PREFILL_BUCKETS = (16, 32, 64, 128, 256, 512)

log = logging.getLogger("gpt2")


class FastGPT2(Engine):
    """GPT-2 on one device with f32, f16 or q8_0 weights.

    ``n_ctx`` bounds positions (default: the model's context, at most
    gpt2.engine.memory.DEFAULT_MAX_N_CTX); ``n_slots``
    is how many sequences may be alive at once (gpt2.slots; each holds a
    cache of n_ctx positions). ``exact_attention`` and ``pad_prefill``
    default to on for f32 weights on CUDA and off elsewhere; True or False
    forces them, on any device. ``decode``: "fused" runs decode steps in our
    own CUDA kernels (native/cuda, tinynn.Decoder), an error where they cannot run
    (they need CUDA, f16 or q8_0 weights, 64-wide heads and an sm_90 GPU); "graphs"
    runs them as ggml graphs; "auto" (default) takes our kernels where they run and
    logs once why not elsewhere, and where a step fails in them (a TinyNNError) logs
    it and runs that step and the rest as graphs. Batches of more than
    MAX_FUSED_BATCH sequences always step as graphs.
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
        decode: str = "auto",
    ):
        if dtype not in WEIGHT_DTYPES:
            raise ValueError(f"dtype must be one of {WEIGHT_DTYPES}, got {dtype!r}")
        c = self.config = weights.config
        self.vocab_size = c.vocab_size
        self.n_ctx = n_ctx or default_n_ctx(c.n_positions)
        if not 0 < self.n_ctx <= c.n_positions:
            raise ValueError(f"n_ctx={self.n_ctx} must be in 1..{c.n_positions}")
        self._init_context(n_slots, "model")
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
            # before the huge-page thread starts: its collapses hold the memory map
            # that the table's first writes fault in (24-94 ms after it, 4-9 before)
            upload_mask_table(self.cache)
            if device == "cpu":  # our product's layout, where the read did not make it
                pack_for_cpu(self.root, self.weights)
                # the weights' pages made huge in the background: decode reads them
                # faster (native/host_weights.c)
                self.root.move_to_huge_pages(weight_tensors(self.weights))
            if decode not in DECODE_MODES:
                raise ValueError(f"decode must be one of {DECODE_MODES}, got {decode!r}")
            self.decode_mode = decode
            self.decoder = self._fused_decoder(decode)
            # sampled rows of a graph step are chosen by our CUDA sampler where it runs
            self.device_sampling = device == "cuda" and self.root.can_sample_on_device
        except BaseException:
            self.root.close()
            raise
        self._prefill_graphs: OrderedDict[GraphShape, Graph] = OrderedDict()
        self._decode_graphs: dict[GraphShape, Graph] = {}
        self.decode_graph_builds = 0
        self.prefill_graph_builds = 0

    def _fused_decoder(self, mode: str) -> Decoder | None:
        """Our fused decode step where it runs and is wanted, else None."""
        if mode == "graphs":
            return None
        why_not = None
        if self.device != "cuda":
            why_not = "it runs on CUDA only"
        elif self.dtype not in ("f16", "q8_0") or self.cache.dtype != "f16":
            why_not = "it takes f16 or q8_0 weights and an f16 cache"
        if why_not is None:
            w = self.weights
            layers = [
                decoder_layer(lw, kv) for lw, kv in zip(w.layers, self.cache.layers, strict=True)
            ]
            try:
                return Decoder(
                    self.root,
                    n_head=self.config.n_head,
                    eps=self.config.layer_norm_epsilon,
                    max_batch=min(self.n_slots, MAX_FUSED_BATCH),
                    wte=w.wte,
                    wpe=w.wpe,
                    ln_f_g=w.ln_f_g,
                    ln_f_b=w.ln_f_b,
                    layers=layers,
                )
            except TinyNNError as e:
                why_not = str(e)
        if mode == "fused":
            raise ValueError(f"decode='fused', but our fused decode step cannot run: {why_not}")
        level = logging.INFO if self.device == "cuda" else logging.DEBUG
        log.log(level, "decode steps run as ggml graphs: our fused step %s", why_not)
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
            self.prefill_graph_builds += 1
            while len(self._prefill_graphs) >= MAX_PREFILL_GRAPHS:
                self._prefill_graphs.popitem(last=False)[1].sess.close()
        self._prefill_graphs[shape] = g
        return g

    def _decode_graph(self, shape: GraphShape) -> Graph:
        if shape not in self._decode_graphs:
            self._decode_graphs[shape] = self._graph(shape)
            self.decode_graph_builds += 1
        return self._decode_graphs[shape]

    def _compute(
        self, g: Graph, ints: list[np.ndarray], part: list[StepRow], member: np.ndarray
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Uploads tokens, positions, cache rows (and last rows), computes, and
        returns (ids, logits) of the graph's output rows `member` (the rows of
        part): the argmax where every row is greedy; our CUDA sampler's choice
        where the rows only choose and the device can; else the logits rows
        [rows, vocab] for the host. One native call, one wait for the device."""
        data = np.concatenate(ints).astype(np.int32)
        if all_greedy(part):
            return g.sess.compute_io(g.ints, data, g.out_ids)[member], None
        if self.device_sampling and not any(r.needs_logits for r in part):
            records = np.zeros(g.logits.ne[1], dtype=SAMPLING_DTYPE)  # other rows: greedy
            records[member] = sampling_records(part)
            return g.sess.compute_io_sample(g.ints, data, g.logits, records)[member], None
        logits = g.sess.compute_io(g.ints, data, g.logits).reshape(-1, self.vocab_size)
        return None, logits[member]

    # -- the step (gpt2.engine.base) ------------------------------------------------
    def _run(self, rows: list[StepRow], tokens: np.ndarray) -> StepResult:
        """Decode rows first (one fused step or one graph), then the prefill rows
        (a graph for each run of adjacent slots): a decode graph's idle members
        write a stale row of their own slot, which a prefill in the same step
        must overwrite, never the other way round."""
        result = StepResult.empty(len(rows))
        # every one-token row is a decode row ("all" logits of one token are its last):
        # a prefill graph shared with longer rows would give it other bits
        decode = [i for i, r in enumerate(rows) if len(r.tokens) == 1]
        if decode:
            self._decode(rows, decode, result)
        if len(decode) < len(rows):
            taken = set(decode)
            prefill = sorted(
                (i for i in range(len(rows)) if i not in taken), key=lambda i: rows[i].slot
            )
            for group in self._prefill_groups(rows, prefill):
                self._prefill(rows, group, result)
        return result

    def _decode(self, rows: list[StepRow], index: list[int], result: StepResult) -> None:
        """One token of each rows[index]: our fused step where it runs, else one
        graph over the run of slots they sit in (slots between them idle)."""
        part = [rows[i] for i in index]
        tokens = np.array([r.tokens[0] for r in part], dtype=np.int32)
        positions = np.array([r.position for r in part], dtype=np.int32)
        slots = np.array([r.slot for r in part], dtype=np.int32)
        host = [r.needs_logits for r in part]
        device_choice = all_greedy(part) or not any(host)
        if self.decoder is not None and len(part) <= self.decoder.max_batch:
            records = None if all_greedy(part) else sampling_records(part)
            try:
                ids, logits = self.decoder.step(
                    tokens, positions, slots, sampling=records, logits=any(host)
                )
            except TinyNNError as e:
                self._fused_step_failed(e)
            else:
                self._take(part, index, result, ids if device_choice else None, logits)
                return
        first, last = int(slots.min()), int(slots.max())
        n_seq = last - first + 1
        all_tokens = np.zeros(n_seq, dtype=np.int32)
        all_positions = self.context.positions[first : last + 1].astype(np.int32)
        np.minimum(all_positions, self.n_rows - 1, out=all_positions)  # idle full slots
        member = slots - first
        all_tokens[member] = tokens
        all_positions[member] = positions
        n_kv = bucket(int(positions.max()) + 1, self.n_ctx)
        g = self._decode_graph(GraphShape(first, n_seq, 1, n_kv, last_only=False))
        ints = [all_tokens, all_positions, self.cache.rows(first, n_seq, all_positions)]
        ids, logits = self._compute(g, ints, part, member)
        self._take(part, index, result, ids, logits)

    def _take(
        self,
        part: list[StepRow],
        index: list[int],
        result: StepResult,
        ids: np.ndarray | None,
        logits: np.ndarray | None,
    ) -> None:
        """Fills the result rows of part: the device's ids where it chose, else the
        native sampler's over the logits; logits where asked."""
        if logits is not None:
            for k, (i, r) in enumerate(zip(index, part, strict=True)):
                if r.logits == "last":
                    result.logits[i] = logits[k]
                elif r.logits == "all" and len(r.tokens) == 1:  # a decode row's one token
                    result.logits[i] = logits[k][None, :]
        if ids is not None:  # the device's choice, for the rows that asked for one
            chose = [k for k, r in enumerate(part) if r.chooses]
            result.tokens[[index[k] for k in chose]] = ids[chose]
            return
        choose_rows(result, part, index, logits)

    def _prefill_groups(self, rows: list[StepRow], order: list[int]) -> list[list[int]]:
        """The prefill rows (sorted by slot) in groups whose padded tokens fit the
        cache, whatever their slots (a prefill graph gathers its rows); a row that
        does not fit with others goes alone (and is padded as far as its own room
        allows, `_prefill`)."""
        groups: list[list[int]] = []
        for i in order:
            g = groups[-1] if groups else None
            if g is not None:
                trial = g + [i]
                t = max(len(rows[j].tokens) for j in trial)
                n_q = self._prefill_length(len(trial), t)
                if all(rows[j].position + n_q <= self.n_rows for j in trial):
                    g.append(i)
                    continue
            groups.append([i])
        return groups

    def _prefill(self, rows: list[StepRow], index: list[int], result: StepResult) -> None:
        """rows[index] (any slots) in one graph, each from its own position,
        padded to the longest's bucket: id 0 past a row's tokens, written to
        those cache rows of its own slot. Real queries never attend past themselves, and
        the row at position p is written again before any query reads it."""
        part = [rows[i] for i in index]
        n_seq = len(part)
        slots = np.array([r.slot for r in part])
        lengths = np.array([len(r.tokens) for r in part])
        starts = np.array([r.position for r in part])
        n_q = self._prefill_length(n_seq, int(lengths.max()), self.n_rows - int(starts.max()))
        every = any(r.logits == "all" for r in part)
        n_kv = bucket(int((starts + n_q).max()), self.n_rows)
        g = self._prefill_graph(GraphShape(None, n_seq, n_q, n_kv, last_only=not every))
        tokens = np.zeros((n_seq, n_q), dtype=np.int32)
        for k, r in enumerate(part):
            tokens[k, : lengths[k]] = r.tokens
        positions = (starts[:, None] + np.arange(n_q)[None, :]).reshape(-1)
        ints = [tokens.reshape(-1), positions, self.cache.rows_of(slots, positions)]
        last = np.arange(n_seq) * n_q + lengths - 1  # each row's last real token
        if not every:
            ints.append(last)
        ints.append(self.cache.rows_of(slots, np.tile(np.arange(n_kv), n_seq)))  # gathered
        if every:  # every row's logits, for the host
            out = g.sess.compute_io(g.ints, np.concatenate(ints).astype(np.int32), g.logits)
            out = out.reshape(-1, self.vocab_size)
            for k, (i, r) in enumerate(zip(index, part, strict=True)):
                if r.logits == "all":
                    result.logits[i] = out[k * n_q : k * n_q + lengths[k]]
            self._take(part, index, result, None, out[last])
            return
        ids, logits = self._compute(g, ints, part, np.arange(n_seq))
        self._take(part, index, result, ids, logits)

    def _prefill_length(self, n_seq: int, t: int, room: int | None = None) -> int:
        """Tokens per sequence that a prefill of n_seq rows of at most t tokens
        computes, where each row has room for `room` (cache rows past its
        position; default: all of them): t's bucket (prefill_bucket), or t where the bucket has no
        room; then 17 where its products would have 4..16 columns
        (TF32_COLUMNS) and pad_prefill is on. A row with less room than 17 (a
        context shorter than 17, a chunk near its end) is computed as it is:
        t (TF32)."""
        room = self.n_rows if room is None else room
        n_q = prefill_bucket(t)
        if n_q > room:
            n_q = t
        tf32 = n_q in TF32_COLUMNS or n_seq * n_q in TF32_COLUMNS  # attention, weights
        padded = STRICT_F32_COLUMNS
        return padded if self.pad_prefill and tf32 and padded <= room else n_q

    def _fused_step_failed(self, e: TinyNNError) -> None:
        """A step our kernels failed: an error where they were asked for; where they
        were only used where they run, ggml's graphs take this step and the rest (the
        failed step's cache rows are written again)."""
        if self.decode_mode == "fused":
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


def decoder_layer(lw: LayerWeights, kv: Tensor) -> tuple[Tensor, ...]:
    """A layer's tensors in the order tnn_decoder_new takes them (native/tinynn.h)."""
    return (
        lw.ln_1_g,
        lw.ln_1_b,
        lw.w_qkv,
        lw.b_qkv,
        lw.w_o,
        lw.b_o,
        lw.ln_2_g,
        lw.ln_2_b,
        lw.w_fc,
        lw.b_fc,
        lw.w_proj,
        lw.b_proj,
        kv,
    )


def prefill_bucket(t: int) -> int:
    """The tokens a sequence computes in a prefill of t: the next of 16, 32, 64,
    ..., 512, then of the multiples of 512 (a graph is built and kept a shape,
    gpt2.engine.graph)."""
    if t > PREFILL_BUCKETS[-1]:
        return -(-t // PREFILL_BUCKETS[-1]) * PREFILL_BUCKETS[-1]
    return next(b for b in PREFILL_BUCKETS if b >= t)
