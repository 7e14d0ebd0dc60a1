"""Logit parity: the Ruby project's dump format and its metrics, made pass/fail, and every
engine against HF transformers (`gpt2 parity hf`).

Dump format: one line of space-separated floats (the last position's logits), written with
`repr` so every float64 round-trips exactly. `.npy` files are read too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

HF_PROMPT_SEED = 1234  # fixed: every run of `parity hf` compares the same random prompts
KV_LONG_PROMPT = 32  # parity hf: above this many tokens, the kv engine runs only ...
KV_SHORT_POSITIONS = 8  # ... the first 8 positions (it rebuilds its graph every token)
HF_PARITY_ENGINES = (("fast_f32", "fast"), ("full", "full"), ("kv", "kv"))  # (row, engine)


def read_dump(path: str | Path) -> np.ndarray:
    """Read a logits dump (text line of floats, or .npy) as float64."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: no such file")
    if p.suffix == ".npy":
        try:
            return np.asarray(np.load(p, allow_pickle=False), dtype=np.float64)
        except Exception as e:  # noqa: BLE001 - numpy raises several types
            raise ValueError(f"{p}: cannot read .npy file: {e}") from None
    text = p.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise ValueError(f"{p}: expected one line of floats, found {len(lines)} non-empty lines")
    try:
        values = np.array([float(tok) for tok in lines[0].split()], dtype=np.float64)
    except ValueError as e:
        raise ValueError(f"{p}: not a list of floats ({e})") from None
    if values.size == 0:
        raise ValueError(f"{p}: empty dump")
    return values


def write_dump(path: str | Path, logits_row: np.ndarray) -> None:
    """Write one row of logits as one line of `repr` floats (exact round trip)."""
    row = np.asarray(logits_row, dtype=np.float64)
    if row.ndim != 1:
        raise ValueError(f"write_dump takes one row of logits, got shape {row.shape}")
    Path(path).write_text(" ".join(repr(float(v)) for v in row) + "\n", encoding="utf-8")


@dataclass
class ParityReport:
    """Metrics of `ours` against `ref`; for 2-D inputs, those of the worst row."""

    shape: tuple[int, ...]
    row: int | None  # 2-D: row whose argmax/top-k are shown (first failing, else worst)
    max_abs: float  # over all elements
    max_abs_row: int | None  # 2-D: row of the largest difference; None for 1-D
    max_abs_index: int  # column of the largest difference
    ours_at_max: float
    ref_at_max: float
    mean_abs: float  # over all elements
    argmax_ours: int
    argmax_ref: int
    argmax_equal: bool  # for 2-D: on every row
    top_k: int
    top_ours: list[int]  # descending
    top_ref: list[int]
    overlap: int  # |top_ours & top_ref|; for 2-D the smallest over rows
    threshold: float | None
    passed: bool
    rows_failed: list[int]  # 2-D: rows where argmax or top-k disagree or max-abs exceeds


def check_max_abs(max_abs: float | None) -> float | None:
    """A max-abs threshold: None (not checked) or a number >= 0. NaN is refused:
    every comparison with it is false, so ``diff > nan`` would pass any difference."""
    if max_abs is None:
        return None
    if isinstance(max_abs, bool) or not isinstance(max_abs, int | float | np.number):
        raise ValueError(f"max_abs must be a number, got {max_abs!r}")
    if math.isnan(max_abs) or max_abs < 0:
        raise ValueError(f"max_abs must be a number >= 0 (inf: no bound), got {max_abs!r}")
    return float(max_abs)


def compare(
    ours: np.ndarray, ref: np.ndarray, max_abs: float | None = None, top_k: int = 5
) -> ParityReport:
    """Compare logits; passed = max-abs <= max_abs (if given), argmax equal, top-k k/k."""
    max_abs = check_max_abs(max_abs)
    a = np.asarray(ours, dtype=np.float64)
    b = np.asarray(ref, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: ours {a.shape}, ref {b.shape}")
    if a.ndim not in (1, 2) or a.size == 0:
        raise ValueError(f"expected a non-empty 1-D or 2-D array of logits, got shape {a.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        which = "ours" if not np.isfinite(a).all() else "ref"
        raise ValueError(f"non-finite values in {which}")
    k = min(top_k, a.shape[-1])
    a2, b2 = np.atleast_2d(a), np.atleast_2d(b)
    diff = np.abs(a2 - b2)  # [rows, V]
    row_max = diff.max(axis=1)
    arg_a, arg_b = a2.argmax(axis=1), b2.argmax(axis=1)
    tops_a = [_top(r, k) for r in a2]
    tops_b = [_top(r, k) for r in b2]
    overlaps = [len(set(x) & set(y)) for x, y in zip(tops_a, tops_b, strict=True)]
    bad = [
        i
        for i in range(a2.shape[0])
        if arg_a[i] != arg_b[i] or overlaps[i] < k or (max_abs is not None and row_max[i] > max_abs)
    ]
    # the row to show: the first failing one, else the one with the largest max-abs
    r = bad[0] if bad else int(row_max.argmax())
    mr, mc = np.unravel_index(int(diff.argmax()), diff.shape)
    return ParityReport(
        shape=a.shape,
        row=None if a.ndim == 1 else r,
        max_abs=float(diff[mr, mc]),
        max_abs_row=None if a.ndim == 1 else int(mr),
        max_abs_index=int(mc),
        ours_at_max=float(a2[mr, mc]),
        ref_at_max=float(b2[mr, mc]),
        mean_abs=float(diff.mean()),
        argmax_ours=int(arg_a[r]),
        argmax_ref=int(arg_b[r]),
        argmax_equal=bool((arg_a == arg_b).all()),
        top_k=k,
        top_ours=tops_a[r],
        top_ref=tops_b[r],
        overlap=min(overlaps),
        threshold=max_abs,
        passed=not bad,
        rows_failed=bad,
    )


def format_report(report: ParityReport) -> str:
    """Human-readable lines, in the order of the Ruby `parity.py compare`."""
    rp = report
    where = f"[{rp.max_abs_index}]"
    lines = [f"shape: {rp.shape}"]
    if rp.row is not None:
        where = f"[{rp.max_abs_row}, {rp.max_abs_index}]"
        lines.append(
            f"rows failed: {len(rp.rows_failed)}/{rp.shape[0]}; argmax/top-k below: row {rp.row}"
        )
    lines += [
        f"max-abs diff: {rp.max_abs:.6e} at {where} ours={rp.ours_at_max!r} ref={rp.ref_at_max!r}",
        f"mean-abs diff: {rp.mean_abs:.6e}",
        (
            f"argmax: ours={rp.argmax_ours} ref={rp.argmax_ref} "
            f"{'match' if rp.argmax_equal else 'MISMATCH'}"
        ),
        f"top-{rp.top_k} ours: {rp.top_ours}",
        f"top-{rp.top_k} ref:  {rp.top_ref}",
        f"top-{rp.top_k} overlap: {rp.overlap}/{rp.top_k}",
    ]
    limit = "none" if rp.threshold is None else f"{rp.threshold:g}"
    lines.append(f"result: {'PASS' if rp.passed else 'FAIL'} (max-abs threshold: {limit})")
    return "\n".join(lines)


def _top(row: np.ndarray, k: int) -> list[int]:
    """Indices of the k largest values, descending (stable for ties)."""
    return [int(i) for i in np.argsort(-row, kind="stable")[:k]]


# ---------------------------------------------------------------------------------------
# every engine against HF transformers


@dataclass
class ParityRow:
    """One engine's logits at every position of every prompt against a reference."""

    engine: str
    device: str
    vs: str  # the reference: "hf_f64"
    positions: int  # rows compared (prompts x positions)
    max_abs: float
    mean_abs: float
    argmax_equal: int  # positions whose argmax agrees
    top5_overlap_min: int  # the smallest top-5 overlap over positions
    passed: bool


@dataclass
class HFParity:
    """What `hf_parity` measured: one row per engine, all against HF in float64."""

    model: Path
    prompts: list[list[int]]
    kv_positions: int  # the kv engine's rows cover the first kv_positions of each prompt
    max_abs_threshold: float
    rows: list[ParityRow]

    @property
    def length(self) -> int:
        return len(self.prompts[0])

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    def to_json(self) -> dict:
        """The document `gpt2 parity hf --json` writes."""
        return {
            "model": str(self.model),
            "prompts": len(self.prompts),
            "length": self.length,
            "max_abs_threshold": self.max_abs_threshold,
            "rows": [asdict(r) for r in self.rows],
        }


def random_prompts(
    vocab_size: int, n_prompts: int, length: int, seed: int = HF_PROMPT_SEED
) -> list[list[int]]:
    """`n_prompts` prompts of `length` token ids, uniform over the vocabulary."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab_size, length).tolist() for _ in range(n_prompts)]


def kv_positions(length: int) -> int:
    """How many positions of a `length`-token prompt the kv engine is compared on."""
    return length if length <= KV_LONG_PROMPT else KV_SHORT_POSITIONS


def hf_logits(
    folder: str | Path, prompts: Sequence[Sequence[int]]
) -> tuple[np.ndarray, np.ndarray]:
    """HF transformers' GPT2LMHeadModel on the CPU: logits [N*T, vocab] in f32 and f64
    (both returned as float64 arrays), the prompts' rows one after the other."""
    try:
        import torch
        from transformers import GPT2LMHeadModel
        from transformers.utils import logging as hf_logging
    except ImportError as e:
        raise ValueError(
            f"parity hf needs torch and transformers ({e}); install them with "
            "`pip install '.[test]'` from the source folder"
        ) from None
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    model = GPT2LMHeadModel.from_pretrained(str(folder), attn_implementation="eager")
    model.eval()
    out = []
    with torch.no_grad():
        for dtype in (torch.float32, torch.float64):
            model.to(dtype)
            rows = [model(torch.tensor([p])).logits[0].numpy().astype(np.float64) for p in prompts]
            out.append(np.concatenate(rows))
    return out[0], out[1]


def parity_row(
    engine: str, device: str, ours: np.ndarray, ref: np.ndarray, max_abs: float, vs: str = "hf_f64"
) -> ParityRow:
    """`compare` of logits [positions, vocab], as one table row."""
    rp = compare(ours, ref, max_abs=max_abs, top_k=5)
    return ParityRow(
        engine=engine,
        device=device,
        vs=vs,
        positions=int(ours.shape[0]),
        max_abs=rp.max_abs,
        mean_abs=rp.mean_abs,
        argmax_equal=int((ours.argmax(axis=1) == ref.argmax(axis=1)).sum()),
        top5_overlap_min=rp.overlap,
        passed=rp.passed,
    )


def hf_parity(
    folder: str | Path,
    device: str = "cpu",
    n_prompts: int = 3,
    length: int = 16,
    max_abs: float = 1e-2,
    n_threads: int | None = None,
) -> HFParity:
    """HF transformers (f32 and f64, CPU), the numpy reference and every engine on
    `device` ("cpu" or "cuda"), on the same `n_prompts` random prompts of `length` tokens;
    each against HF in float64. The kv engine runs on the first `kv_positions(length)`
    positions only. Raises ValueError for a folder that is not an HF folder or a length
    outside the context."""
    from gpt2.api import make_engine
    from gpt2.reference import GPT2Reference
    from gpt2.weights import load_model

    check_max_abs(max_abs)
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(
            f"parity hf needs an HF folder (config.json + model.safetensors): {folder}"
        )
    if n_prompts < 1:
        raise ValueError(f"n_prompts must be >= 1, got {n_prompts}")
    loaded = load_model(folder)
    cfg = loaded.config
    if not 1 <= length <= cfg.n_positions:
        raise ValueError(f"length must be in 1..{cfg.n_positions} (the context), got {length}")
    prompts = random_prompts(cfg.vocab_size, n_prompts, length)

    # Our engines run before torch is imported: torch's OpenMP threads keep spinning after
    # each op and, on a small machine, starve ggml's own threads (measured: 50x slower).
    t, kv_t = length, kv_positions(length)
    ours: list[tuple[str, int, np.ndarray]] = []
    for name, kind in HF_PARITY_ENGINES:
        n = kv_t if kind == "kv" else t
        n_ctx = None if kind == "fast" else n
        with make_engine(
            loaded.weights, kind, device, "f32", n_ctx=n_ctx, n_threads=n_threads
        ) as e:
            ours.append((name, n, np.concatenate([e.logits(p[:n]) for p in prompts])))

    ref = np.concatenate([GPT2Reference(loaded.weights).logits(p) for p in prompts])
    hf32, hf64 = hf_logits(folder, prompts)
    rows = [
        parity_row("hf_f32", "cpu", hf32, hf64, max_abs),
        parity_row("reference", "cpu", ref, hf64, max_abs),
    ]
    for name, n, logits in ours:
        want = np.concatenate([hf64[i * t : i * t + n] for i in range(n_prompts)])
        rows.append(parity_row(name, device, logits.astype(np.float64), want, max_abs))
    return HFParity(folder, prompts, kv_t, max_abs, rows)


def format_parity_table(rows: Sequence[ParityRow], threshold: float) -> str:
    """The rows as an aligned text table, with the pass rule under it."""
    head = ("engine", "device", "vs", "max-abs", "mean-abs", "argmax", "top-5 min", "result")
    body = [
        (
            r.engine,
            r.device,
            r.vs,
            f"{r.max_abs:.3e}",
            f"{r.mean_abs:.3e}",
            f"{r.argmax_equal}/{r.positions}",
            f"{r.top5_overlap_min}/5",
            "PASS" if r.passed else "FAIL",
        )
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(x, widths, strict=True)).rstrip()
        for x in [head, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"pass: max-abs <= {threshold:g}, argmax equal and top-5 5/5 at every position")
    return "\n".join(lines)


def format_hf_parity(result: HFParity) -> str:
    """What `gpt2 parity hf` prints: what was compared, then the table."""
    t, kv_t = result.length, result.kv_positions
    head = (
        f"model {result.model}: {len(result.prompts)} random prompts of {t} tokens "
        f"(seed {HF_PROMPT_SEED})" + (f"; kv on the first {kv_t} positions" if kv_t < t else "")
    )
    return head + "\n" + format_parity_table(result.rows, result.max_abs_threshold)
