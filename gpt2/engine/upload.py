"""The fast engine's weights: declared in the root session and uploaded as the file stores them.

The device holds the file's bytes: every 2-D weight goes to the backend in the file's own
type (f32, f16, q8_0 blocks byte for byte) where the engine takes that type, converted only
where the user asked for another `dtype` (or the engine has no such type: bf16 and f64 are
widened to f32, exactly; other quantized types become q8_0). LayerNorm's gain and bias are
tensors of their own, applied on the device after each norm (gpt2.engine.graph, our fused
kernels' prologue, native/cuda/embed_norm.cuh); the output head is wte itself (tied),
read after ln_f. Q, K and V are one matrix per layer (c_attn).

Layout. ggml's products and our kernels read a linear layer as n_out rows of n_in values
([n_out, n_in] in numpy terms, ne = [n_in, n_out]), with a q8_0 block running along n_in.
llama.cpp's GGUF layout stores its weights so, and so do wte (vocabulary rows) and wpe in every
layout: those are read as they lie in the file. The Ruby converter's GGUF and HF's safetensors
store the linear weights the other way round (Conv1D, [n_in, n_out]): those are transposed as
they are read, a permutation of the file's values in their own type. A product over the other
axis would need ggml_mul_mat to read a transposed matrix, which it refuses for every type, and
a q8_0 block along n_out cannot be read along n_in at all: such a tensor (no writer of ours
makes one) is dequantized, transposed and quantized again.

Reading. Every tensor the file holds whole in the host's byte order, in a float type the
engine takes as it is or converts as it reads (`_READ_CONVERTS`: f32 -> f16, f16 -> f32,
bf16 -> f32), in either orientation, is read in one call, `tinynn.read_file_ranges`, through
the file's own descriptor: a few threads pread pieces at once, each checked finite as it
lands; on the CPU straight into ggml's buffer (one copy; a converted or transposed tensor a
tile at a time through a small buffer per thread, converted and written transposed by the
thread that read it), on a device through a few page-locked staging buffers whose rounds are
copied asynchronously while the next are read, one wait at the end (memory over the model's
own: the staging buffers, N_STAGING x STAGING_BYTES, and the tiles' buffers). The others (a
type quantized or dequantized, a file in the other byte order, weights held in memory, split
q, k, v) stream a slice of rows at a time (`Rows`, gpt2.weights): a few threads read and
convert slices (pread and numpy's casts release the GIL) while the main thread uploads them
in order; slices in flight are bounded (`WORKERS`, `SLICE_VALUES`), so the host memory they
take over the model's own is at most 2 x WORKERS slices. The file's tensors are read first:
on the CPU the memory they are read into is advised to use huge pages before it is first
touched (native/host_weights.c), and so is the rest of the weights, which lie between them.

On the CPU the f32 and f16 matrices are laid out in tiles for our own product
(native/cpu_product.c: one summation order whatever the batch, and a tile's rows read as
one stream): the one departure from the file's layout (a download unpacks them again).
Those read from the file are written so by the reading threads as they land (a packed
range of read_file_ranges: no pass over the model after the read); the others, streamed,
are packed in place after the upload (`pack_for_cpu`). Staged reads (the device's path)
are never packed.
"""

from __future__ import annotations

import os
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from gpt2.config import GPT2Config
from gpt2.progress import progress
from gpt2.weights import FLOAT_KINDS, FileTensors, GPT2Weights, Rows, to_f32
from tinynn import FileReadError, ReadRange, Session, Tensor, read_file_ranges

WEIGHT_DTYPES = ("f32", "f16", "q8_0")
Q8_0_BLOCK = 32  # q8_0 quantizes 32 values along the input axis together


@dataclass
class LayerWeights:
    ln_1_g: Tensor  # f32 [d]: ln_1's gain, applied on the device
    ln_1_b: Tensor  # f32 [d]: ln_1's bias
    w_qkv: Tensor  # [d, 3d] (ne): 3d rows of d, q | k | v
    b_qkv: Tensor  # [3d]
    w_o: Tensor  # [d, d]
    b_o: Tensor  # [d]
    ln_2_g: Tensor  # f32 [d]
    ln_2_b: Tensor  # f32 [d]
    w_fc: Tensor  # [d, d_ff]
    b_fc: Tensor  # [d_ff]
    w_proj: Tensor  # [d_ff, d]
    b_proj: Tensor  # [d]


@dataclass
class FastWeights:
    wte: Tensor  # [d, V]: read by get_rows, and the (tied) output head after ln_f
    wpe: Tensor  # f32 [d, n_rows]
    ln_f_g: Tensor  # f32 [d]
    ln_f_b: Tensor  # f32 [d]
    layers: list[LayerWeights]


def declare_weights(s: Session, c: GPT2Config, dtype: str, n_rows: int) -> FastWeights:
    """The persistent weight tensors (before finalize_weights)."""

    def matrix(n_in: int, n_out: int) -> Tensor:
        kind = "f16" if dtype == "q8_0" and n_in % Q8_0_BLOCK else dtype
        return s.input_typed_persistent(kind, (n_in, n_out))

    def vector(n: int) -> Tensor:
        return s.input_typed_persistent("f32", (n,))

    d = c.n_embd
    return FastWeights(
        wte=matrix(d, c.vocab_size),
        wpe=s.input_typed_persistent("f32", (d, n_rows)),
        ln_f_g=vector(d),
        ln_f_b=vector(d),
        layers=[
            LayerWeights(
                ln_1_g=vector(d),
                ln_1_b=vector(d),
                w_qkv=matrix(d, 3 * d),
                b_qkv=vector(3 * d),
                w_o=matrix(d, d),
                b_o=vector(d),
                ln_2_g=vector(d),
                ln_2_b=vector(d),
                w_fc=matrix(d, c.d_ff),
                b_fc=vector(c.d_ff),
                w_proj=matrix(c.d_ff, d),
                b_proj=vector(d),
            )
            for _ in range(c.n_layer)
        ],
    )


WORKERS = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1, 8)
SLICE_VALUES = 1 << 20  # values in one slice of rows (4 MB as float32); 2 x WORKERS in flight
# Staging buffers for the file's bytes on their way to a device (page-locked): a round fills
# one while the copies of the others run.
STAGING_BYTES = 16 << 20
N_STAGING = 4
STAGE_HOST_MEMORY = False  # tests: the CPU's tensors through the device's staged path too
_STORED_AS = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0"}
# file kind -> the engine dtypes read_file_ranges reads it into (as it is, or converted)
_READ_CONVERTS = {"F32": ("f32", "f16"), "F16": ("f16", "f32"), "BF16": ("f32",)}
_FILE_TYPES = {"F32": "f32", "F16": "f16", "BF16": "bf16"}  # tinynn.read_file_ranges' names
_VALUE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "f32": 4, "f16": 2}


PACK_GROUP = 16  # our CPU product packs rows whose length is a multiple of this


def weight_tensors(fw: FastWeights) -> list[Tensor]:
    """Every tensor of the weights."""
    out = [fw.wte, fw.wpe, fw.ln_f_g, fw.ln_f_b]
    for layer in fw.layers:
        out += list(vars(layer).values())
    return out


def cpu_product_matrices(fw: FastWeights) -> list[Tensor]:
    """The matrices that our CPU product takes, packed: f32 and f16, n_in a multiple of
    PACK_GROUP; wte too, whose embedding rows are then read by packed_get_rows. q8_0 stays
    as stored: ggml's q8_0 kernels already sum a column in one order alone and among others
    (gpt2.engine.graph)."""
    matrices = [fw.wte]
    for layer in fw.layers:
        matrices += [layer.w_qkv, layer.w_o, layer.w_fc, layer.w_proj]
    return [t for t in matrices if t.dtype in ("f32", "f16") and t.ne[0] % PACK_GROUP == 0]


def pack_for_cpu(s: Session, fw: FastWeights) -> None:
    """Packs in place, with the session's threads, the matrices of cpu_product_matrices that
    were not packed as they were read (those streamed, or all where reads are staged)."""
    for t in cpu_product_matrices(fw):
        if not t.packed:
            s.pack_rows(t)


def upload_weights(fw: FastWeights, weights: GPT2Weights, n_rows: int, device: str) -> None:
    """Uploads the weights into the declared tensors (see the module's docstring): those the
    file holds whole in a type read_file_ranges takes in one read of the file, then the
    others, streamed slice by slice."""
    from_file: list[tuple[Tensor, Rows]] = []
    others: deque[tuple[Tensor, Rows | None, str]] = deque()
    for t, rows, name in _tensors(fw, weights, n_rows):
        if _read_from_file(t, rows):
            from_file.append((t, rows))
        else:
            others.append((t, rows, name))
    # on the CPU the product's matrices are read in its layout (staged reads never are)
    cpu = device == "cpu" and not STAGE_HOST_MEMORY
    _read_files(from_file, {id(t) for t in cpu_product_matrices(fw)} if cpu else set())
    with ThreadPoolExecutor(WORKERS, thread_name_prefix="upload") as pool:
        try:
            steps = _steps(others, weights, device)
            for step in _in_order(pool, steps, 2 * WORKERS):
                step()
        finally:
            pool.shutdown(cancel_futures=True)


def _tensors(
    fw: FastWeights, weights: GPT2Weights, n_rows: int
) -> Iterator[tuple[Tensor, Rows | None, str]]:
    """Each declared tensor, its rows as the engine takes them (a vector: one value a row;
    None for a vector held in pieces) and its canonical name: wte and wpe first, then the
    layers, one after another."""
    yield fw.wte, weights.rows("wte"), "wte"
    wpe = weights.rows("wpe")
    yield fw.wpe, Rows(wpe.kind, (n_rows, wpe.shape[1]), wpe.read, wpe.in_file), "wpe"
    yield fw.ln_f_g, _vector(weights, "ln_f.weight"), "ln_f.weight"
    yield fw.ln_f_b, _vector(weights, "ln_f.bias"), "ln_f.bias"
    for i, layer in enumerate(fw.layers):
        p = f"h.{i}."
        for t, name in (
            (layer.ln_1_g, "ln_1.weight"),
            (layer.ln_1_b, "ln_1.bias"),
            (layer.w_qkv, "attn.c_attn.weight"),
            (layer.b_qkv, "attn.c_attn.bias"),
            (layer.w_o, "attn.c_proj.weight"),
            (layer.b_o, "attn.c_proj.bias"),
            (layer.ln_2_g, "ln_2.weight"),
            (layer.ln_2_b, "ln_2.bias"),
            (layer.w_fc, "mlp.c_fc.weight"),
            (layer.b_fc, "mlp.c_fc.bias"),
            (layer.w_proj, "mlp.c_proj.weight"),
            (layer.b_proj, "mlp.c_proj.bias"),
        ):
            if name.endswith(".bias") or name.startswith("ln_"):
                yield t, _vector(weights, p + name), p + name
            else:  # canonical [in, out]; the device's rows are outputs: [out, in]
                yield t, weights.rows(p + name, transposed=True), p + name


def _vector(weights: GPT2Weights, name: str) -> Rows | None:
    """A 1-D tensor as rows of one value, where the file holds it whole; else None."""
    tensors = weights.tensors
    rows = tensors.rows(name) if isinstance(tensors, FileTensors) else None
    return rows if rows is not None and rows.in_file is not None else None


def _read_from_file(t: Tensor, rows: Rows | None) -> bool:
    """Whether t is read from the file by read_file_ranges: its rows lie there whole (or
    transposed whole), as t's type or one read_file_ranges converts into it."""
    if rows is None or rows.in_file is None:
        return False
    return rows.kind == _STORED_AS[t.dtype] or t.dtype in _READ_CONVERTS.get(rows.kind, ())


def _read_files(reads: list[tuple[Tensor, Rows]], packed: set[int]) -> None:
    """Each tensor whole from its Rows' place in the file (as many rows as t has), in one
    read_file_ranges call per file (every range checked against the file's size first);
    those whose id is in `packed` written in our CPU product's layout as they are read."""
    by_file: dict[int, list[tuple[Tensor, Rows]]] = defaultdict(list)
    for read in reads:
        by_file[id(read[1].in_file.file)].append(read)
    for group in by_file.values():
        file = group[0][1].in_file.file
        ranges = []
        for t, rows in group:
            src = rows.in_file
            file_type = None  # as stored
            n_file = t.nbytes  # the bytes of the file the range reads
            if rows.kind != _STORED_AS[t.dtype]:
                file_type = _FILE_TYPES[rows.kind]
                n_file = t.nbytes // _VALUE_BYTES[t.dtype] * _VALUE_BYTES[rows.kind]
            file.check_range(src.offset, n_file, f"tensor {src.name}")
            ranges.append(
                ReadRange(t, src.offset, t.nbytes, 0, src.file_rows, file_type, id(t) in packed)
            )
        try:
            bad = read_file_ranges(
                group[0][0].session,
                file.fd,
                ranges,
                n_threads=WORKERS,
                staging_bytes=STAGING_BYTES,
                n_staging=N_STAGING,
                staged=STAGE_HOST_MEMORY,
            )
        except FileReadError as e:  # a read error, or the file cut while it is read
            i = e.range_index
            what = f"tensor {group[i][1].in_file.name}" if i >= 0 else "tensors"
            raise ValueError(f"{file.path}: cannot read {what}: {e}") from None
        if bad is not None:
            t, rows = group[bad[0]]
            raise _not_finite(t, rows, ranges[bad[0]], bad[1])


def _not_finite(t: Tensor, rows: Rows, read: ReadRange, at: int) -> ValueError:
    """The error for a value read_file_ranges refused at byte `at` of a range's bytes of the
    file: not finite there, or (converted to f16) past f16's range."""
    src = rows.in_file
    if read.file_type is None or t.dtype != "f16":
        return src.nonfinite()
    value = src.file.pread(src.offset + at, _VALUE_BYTES[rows.kind], f"tensor {src.name}")
    v = float(np.frombuffer(bytes(value), FLOAT_KINDS[rows.kind])[0])
    if not np.isfinite(v):
        return src.nonfinite()
    return ValueError(
        f"{src.name}: values such as {v:.6g} do not fit f16 (f16's largest is 65504): "
        "load it with dtype='f32'"
    )


# A step: a job for a worker thread (read and convert one slice), and what the main thread
# does with its result (upload it, in order).
Step = tuple[Callable[[], object], Callable[[object], None]]


def _in_order(pool: ThreadPoolExecutor, steps: Iterable[Step], depth: int) -> Iterator[Callable]:
    """Runs the steps' jobs on `pool`, at most `depth` at once, and yields, in order, each
    step's second part bound to its job's result."""
    pending: deque[tuple[Future, Callable[[object], None]]] = deque()
    for job, then in steps:
        pending.append((pool.submit(job), then))
        if len(pending) >= depth:
            future, then = pending.popleft()
            yield _bind(then, future.result())
    while pending:
        future, then = pending.popleft()
        yield _bind(then, future.result())


def _bind(then: Callable[[object], None], result: object) -> Callable[[], None]:
    return lambda: then(result)


def _steps(
    others: deque[tuple[Tensor, Rows | None, str]], weights: GPT2Weights, device: str
) -> Iterator[Step]:
    """The streamed tensors' steps: vectors read whole, 2-D tensors a slice at a time. Each
    tensor leaves `others` as its steps are made, so that what its rows hold (a transposed
    tensor is read whole, by its first slice's job) goes once its last slice is uploaded."""
    where = "the CPU" if device == "cpu" else "the device"
    for _ in progress(range(len(others)), f"uploading to {where}", len(others), "tensor"):
        t, rows, name = others.popleft()
        if t.ndim == 1:
            yield _small(t, weights, name)
        else:
            yield from _stream(t, rows, name)


def _small(t: Tensor, weights: GPT2Weights, name: str) -> Step:
    """A 1-D tensor, read whole (float32: f16 and bf16 widen exactly)."""
    return (lambda: _engine_type(t.dtype, weights[name], name)), t.upload


def _slices(n: int, width: int) -> Iterator[tuple[int, int]]:
    step = max(1, SLICE_VALUES // max(width, 1))
    for r0 in range(0, n, step):
        yield r0, min(r0 + step, n)


def _stream(t: Tensor, rows: Rows, name: str) -> Iterator[Step]:
    """Tensor t ([rows, width] in numpy terms) from `rows`, converted to t's type
    (`_in_engine_type`) a slice at a time."""
    row_bytes = t.nbytes // rows.shape[0]
    for r0, r1 in _slices(*rows.shape):
        yield (
            (lambda r0=r0, r1=r1: _in_engine_type(t.dtype, rows, rows.read(r0, r1), name)),
            _upload_at(t, r0 * row_bytes),
        )


def _in_engine_type(dtype: str, rows: Rows, data: np.ndarray, name: str) -> np.ndarray:
    """Rows `data` (as rows.read gives them) in engine type `dtype`, contiguous (a transposed
    view is copied here, in the worker, not by the upload): as stored where the file has that
    type, else through float32 (exact from f16 and bf16)."""
    if rows.kind == _STORED_AS[dtype]:
        data = np.ascontiguousarray(data)
        return data.reshape(-1) if dtype == "q8_0" else data
    return _engine_type(dtype, to_f32(rows.kind, data, (len(data), rows.shape[1])), name)


def _upload_at(t: Tensor, offset: int) -> Callable[[np.ndarray], None]:
    return lambda data: t.upload(data, offset)


def put(t: Tensor, a: np.ndarray, name: str = "tensor", offset: int = 0) -> None:
    """Uploads host data converted to the tensor's type (`_engine_type`) at byte `offset`."""
    t.upload(_engine_type(t.dtype, a, name), offset)


def _engine_type(dtype: str, a: np.ndarray, name: str) -> np.ndarray:
    """Host data (float32 or float64) in an engine type: f32, f16 or q8_0 blocks (quantized
    from float32). ValueError naming `name` when a value does not fit the type (f16 past
    65504, a q8_0 block scale past f16's range): it would be inf or NaN on the device."""
    a = np.ascontiguousarray(a)
    if dtype == "f32":
        return a.astype(np.float32)
    if dtype == "f16":
        with np.errstate(over="ignore"):  # checked just below
            out = a.astype(np.float16)
        ok = np.isfinite(out).all()
    else:
        from gguf.constants import GGMLQuantizationType
        from gguf.quants import quantize

        with np.errstate(over="ignore"):
            out = quantize(a.astype(np.float32), GGMLQuantizationType.Q8_0).reshape(-1)
        ok = np.isfinite(out.reshape(-1, Q8_0_BLOCK + 2)[:, :2].copy().view(np.float16)).all()
    if not ok:
        raise ValueError(
            f"{name}: values up to {float(np.max(np.abs(a))):.3g} do not fit {dtype} "
            f"(f16's largest is 65504; q8_0's is 127 x that): load it with dtype='f32'"
        )
    return out
