"""Train the embedded default model: a byte-level BPE tokenizer and a small GPT-2.

Input is the corpus from `scripts/prepare_corpus.py` (documents separated by
`<|endoftext|>` lines). Output is an HF-style GPT-2 folder that transformers'
GPT2LMHeadModel and this project's loaders both read:

    config.json         GPT2LMHeadModel keys (gelu_new, eps 1e-5, tied embeddings)
    model.safetensors   float16, HF names with the `transformer.` prefix, Conv1D [in, out]
    tokenizer.json      byte-level BPE, 8192 ids, <|endoftext|> is the last id (like GPT-2)
    train_report.json   corpus manifest, steps, tokens, seconds, losses, versions

The real run, on one NVIDIA H200:

    python scripts/prepare_corpus.py
    python scripts/train_default_model.py --device cuda --max-seconds 360 \\
        --out "$OUT/default_model" --verify

It stops at --max-steps (8000 x 64 x 256 tokens = 131M tokens, about 58 passes over the
2.3M-token corpus; 107 s of wall time on an H200 with torch.compile) or at --max-seconds,
counted from the start of the script, whichever comes first. More steps do not help: the
corpus is small and the model overfits (measured on an H200, 2026-11-29: dropout 0.1 and a
6-minute cosine reached its best validation loss 3.59 after 56M tokens, then rose to 4.07;
dropout 0.2 and 8000 steps reached 3.45). The weights with the best validation loss seen
at the periodic evaluations are the ones saved.

A CPU smoke test of the whole path (tiny model, one minute):

    python scripts/train_default_model.py --device cpu --max-seconds 60 \\
        --n-layer 2 --n-embd 64 --n-head 4 --batch-size 16 --out build/smoke_model --verify

The model is written here as a nanoGPT-style torch module (no transformers at training
time); `--verify` loads the saved folder with transformers and compares logits.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

EOT = "<|endoftext|>"
MAX_FILE_BYTES = 16 * 1024 * 1024  # every output file must stay under this


# --- model ------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    """The GPT-2 hyperparameters that this script varies; the rest are GPT-2's."""

    vocab_size: int = 8192  # BPE ids, <|endoftext|> included
    n_positions: int = 256  # context length (learned position embeddings)
    n_layer: int = 6  # transformer blocks
    n_embd: int = 256  # residual width C
    n_head: int = 8  # attention heads; head size = n_embd // n_head
    dropout: float = 0.2  # embd/attn/resid dropout while training; the corpus is small
    layer_norm_epsilon: float = 1e-5  # GPT-2's


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)  # fused Q, K, V (HF order)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        nh, hs = self.n_head, C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x [B, T, C]
        q = q.view(B, T, nh, hs).transpose(1, 2)  # [B, nh, T, hs]
        k = k.view(B, T, nh, hs).transpose(1, 2)  # [B, nh, T, hs]
        v = v.view(B, T, nh, hs).transpose(1, 2)  # [B, nh, T, hs]
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )  # [B, nh, T, hs], scaled by 1/sqrt(hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # [B, T, C]
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # gelu_new: GPT-2's tanh approximation.
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))  # pre-LN, as in GPT-2
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """GPT-2: token + learned position embeddings, pre-LN blocks, ln_f, tied lm_head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(cfg.vocab_size, cfg.n_embd),
                "wpe": nn.Embedding(cfg.n_positions, cfg.n_embd),
                "drop": nn.Dropout(cfg.dropout),
                "h": nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
                "ln_f": nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon),
            }
        )
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied, as in GPT-2
        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual projections: 0.02 / sqrt(2 * n_layer).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids [B, T] -> logits [B, T, vocab]."""
        _, T = idx.shape
        if T > self.cfg.n_positions:
            raise ValueError(f"sequence length {T} > n_positions {self.cfg.n_positions}")
        pos = torch.arange(T, device=idx.device)  # [T]
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)  # [B, T, C]
        return self.lm_head(self.transformer.ln_f(x))  # [B, T, vocab]


# --- tokenizer and data ------------------------------------------------------------------


def split_documents(text: str, val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Shuffle whole documents with `seed`, then hold out ~val_fraction of the bytes."""
    docs = [d.strip("\n") for d in text.split(f"\n{EOT}\n") if d.strip()]
    order = np.random.default_rng(seed).permutation(len(docs))
    total = sum(len(d) for d in docs)
    val, train, val_chars = [], [], 0
    for i in order:
        if val_chars < val_fraction * total:
            val.append(docs[i])
            val_chars += len(docs[i])
        else:
            train.append(docs[i])
    return train, val


def train_tokenizer(docs: list[str], vocab_size: int):  # -> tokenizers.Tokenizer
    """Byte-level BPE (GPT-2's scheme) with <|endoftext|> as the last id."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,  # the special token is added after, as id vocab-1
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    tok.add_special_tokens([EOT])
    eot_id = tok.token_to_id(EOT)
    if tok.get_vocab_size() != vocab_size or eot_id != vocab_size - 1:
        raise SystemExit(
            f"tokenizer: expected {vocab_size} ids with {EOT} last, got "
            f"{tok.get_vocab_size()} ids and {EOT} at {eot_id} (corpus too small?)"
        )
    return tok


def encode_docs(tok, docs: list[str], eot_id: int) -> np.ndarray:
    """Token ids of all documents, each followed by <|endoftext|>, as one uint16 stream."""
    ids: list[int] = []
    for enc in tok.encode_batch(docs, add_special_tokens=False):
        ids.extend(enc.ids)
        ids.append(eot_id)
    return np.asarray(ids, dtype=np.uint16)  # vocab 8192 fits; halves host memory


def get_batch(
    data: torch.Tensor, batch_size: int, block: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of the stream: inputs [B, T] and next-token targets [B, T]."""
    starts = torch.randint(0, data.numel() - block - 1, (batch_size,), generator=gen)
    starts = starts.to(data.device)
    offsets = torch.arange(block + 1, device=data.device)
    windows = data[starts[:, None] + offsets[None, :]].long()  # [B, T+1]
    return windows[:, :-1], windows[:, 1:]


@torch.no_grad()
def evaluate(model: nn.Module, data: torch.Tensor, block: int, batch_size: int) -> float:
    """Mean next-token loss over consecutive non-overlapping windows of `data`."""
    model.eval()
    n = (data.numel() - 1) // block
    if n == 0:
        raise SystemExit(f"validation set has {data.numel()} tokens, fewer than one window")
    x_all = data[: n * block].view(n, block).long()
    y_all = data[1 : n * block + 1].view(n, block).long()
    total, count = 0.0, 0
    for i in range(0, n, batch_size):
        x, y = x_all[i : i + batch_size], y_all[i : i + batch_size]
        with autocast(data.device):
            logits = model(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum")
        total += loss.item()
        count += y.numel()
    model.train()
    return total / count


def autocast(device: torch.device):  # -> context manager
    """bf16 autocast on CUDA (fast, no loss scaling needed); plain f32 on the CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


# --- export ------------------------------------------------------------------------------

# Linear layers that HF GPT-2 stores as Conv1D, whose weight is [in, out] = Linear's .T
CONV1D = (
    "attn.c_attn.weight",
    "attn.c_proj.weight",
    "mlp.c_fc.weight",
    "mlp.c_proj.weight",
)


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under HF GPT2LMHeadModel's names and orientation, float16."""
    out = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to transformer.wte.weight; HF re-ties on load
        t = t.detach().float().cpu()
        if name.endswith(CONV1D):
            t = t.t()
        out[name] = t.to(torch.float16).contiguous()
    return out


def hf_config(cfg: ModelConfig, eot_id: int) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.n_positions,
        "n_ctx": cfg.n_positions,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "initializer_range": 0.02,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "tie_word_embeddings": True,
        "torch_dtype": "float16",
    }


def save_folder(out: Path, model: GPT, tok, eot_id: int, report: dict) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(hf_config(model.cfg, eot_id), indent=2) + "\n")
    save_file(hf_state_dict(model), str(out / "model.safetensors"), metadata={"format": "pt"})
    # safetensors writes the file 0600; the package ships it, so make it world-readable.
    (out / "model.safetensors").chmod(0o644)
    tok.save(str(out / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "GPT2TokenizerFast",
        "bos_token": EOT,
        "eos_token": EOT,
        "unk_token": EOT,
        "model_max_length": model.cfg.n_positions,
        "add_prefix_space": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    (out / "train_report.json").write_text(json.dumps(report, indent=2) + "\n")
    for f in out.iterdir():
        if f.stat().st_size >= MAX_FILE_BYTES:
            raise SystemExit(f"{f}: {f.stat().st_size} bytes, over the {MAX_FILE_BYTES} limit")


def load_hf_into(model: GPT, folder: Path) -> None:
    """Read model.safetensors back into our module (undoing the Conv1D transpose)."""
    from safetensors.torch import load_file

    sd = load_file(str(folder / "model.safetensors"))
    ours = {k: (v.t() if k.endswith(CONV1D) else v).float() for k, v in sd.items()}
    ours["lm_head.weight"] = ours["transformer.wte.weight"]
    model.load_state_dict(ours, strict=True)


def verify(folder: Path, model: GPT, tok) -> dict:
    """Load `folder` with transformers and compare its logits with our module's."""
    from transformers import GPT2LMHeadModel

    prompt = "The Python interpreter reads a line of text and"
    ids = torch.tensor([tok.encode(prompt).ids])
    hf = GPT2LMHeadModel.from_pretrained(str(folder), dtype=torch.float32).eval()
    ours = copy.deepcopy(model).float().cpu().eval()
    with torch.no_grad():
        hf_logits = hf(ids).logits[0]
        ours_f32 = ours(ids)[0]  # our weights before f16 storage
        load_hf_into(ours, folder)
        ours_f16 = ours(ids)[0]  # our module on exactly the stored weights
    result = {
        "prompt": prompt,
        "tokens": ids.shape[1],
        # The f16 rounding of the stored weights: the brief's bound is 1e-2.
        "max_abs_vs_f32_module": float((hf_logits - ours_f32).abs().max()),
        # Same weights on both sides: any difference is a naming/orientation/arch bug.
        "max_abs_vs_stored_weights": float((hf_logits - ours_f16).abs().max()),
        "argmax_equal": bool((hf_logits.argmax(-1) == ours_f32.argmax(-1)).all()),
    }
    result["ok"] = (
        result["max_abs_vs_f32_module"] < 1e-2 and result["max_abs_vs_stored_weights"] < 1e-4
    )
    return result


@torch.no_grad()
def greedy_continuation(model: GPT, tok, prompt: str, n_new: int, device: torch.device) -> str:
    """Greedy decode with the full context each step (small model: no cache needed)."""
    model.eval()
    ids = tok.encode(prompt).ids
    for _ in range(n_new):
        x = torch.tensor([ids[-model.cfg.n_positions :]], device=device)
        with autocast(device):
            nxt = int(model(x)[0, -1].float().argmax())
        ids.append(nxt)
        if nxt == tok.token_to_id(EOT):
            break
    return tok.decode(ids)


# --- training ----------------------------------------------------------------------------


def lr_at(progress: float, peak: float, warmup: float, floor: float) -> float:
    """Linear warmup then cosine decay to `floor * peak`; progress runs 0 -> 1."""
    if progress < warmup:
        return peak * progress / warmup
    t = min(1.0, (progress - warmup) / max(1e-9, 1.0 - warmup))
    return peak * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t)))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, default=Path("build/corpus"), help="prepare_corpus out")
    p.add_argument("--out", type=Path, default=Path("build/default_model"), help="model folder")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--max-seconds", type=float, default=360.0, help="whole-run wall budget")
    p.add_argument(
        "--max-steps", type=int, default=8000, help="step cap, sets the schedule (0: none)"
    )
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--n-layer", type=int, default=6)
    p.add_argument("--n-embd", type=int, default=256)
    p.add_argument("--n-head", type=int, default=8)
    p.add_argument("--n-positions", type=int, default=256)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--warmup", type=float, default=0.03, help="fraction of the run")
    p.add_argument("--eval-every", type=float, default=20.0, help="seconds between evals")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--verify", action="store_true", help="check the folder with transformers")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    t_start = time.time()
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device (use --device cpu)")
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    manifest = json.loads((args.corpus / "manifest.json").read_text())
    text = (args.corpus / "corpus.txt").read_text(encoding="utf-8")
    train_docs, val_docs = split_documents(text, 0.01, args.seed)
    tok = train_tokenizer(train_docs, args.vocab_size)
    eot_id = tok.token_to_id(EOT)
    train_ids = encode_docs(tok, train_docs, eot_id)
    val_ids = encode_docs(tok, val_docs, eot_id)
    print(
        f"corpus {len(text) / 1e6:.1f} M chars; docs train {len(train_docs)} val {len(val_docs)};"
        f" tokens train {train_ids.size:,} val {val_ids.size:,}"
        f" ({len(text) / (train_ids.size + val_ids.size):.2f} chars/token);"
        f" setup {time.time() - t_start:.1f}s",
        flush=True,
    )
    train_data = torch.from_numpy(train_ids.astype(np.int32)).to(device)
    val_data = torch.from_numpy(val_ids.astype(np.int32)).to(device)

    cfg = ModelConfig(
        vocab_size=args.vocab_size,
        n_positions=args.n_positions,
        n_layer=args.n_layer,
        n_embd=args.n_embd,
        n_head=args.n_head,
        dropout=args.dropout,
    )
    if cfg.n_embd % cfg.n_head:
        raise SystemExit(f"n_embd {cfg.n_embd} is not divisible by n_head {cfg.n_head}")
    model = GPT(cfg).to(device)
    n_params = sum(p.numel() for p in model.parameters())  # tied weight counted once
    print(f"model {n_params / 1e6:.2f} M parameters, {2 * n_params / 2**20:.1f} MiB at f16")

    # GPT-2/nanoGPT practice: no weight decay on biases, LayerNorm weights.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=args.lr,
        betas=(0.9, 0.95),
        fused=device.type == "cuda",
    )

    step_model: nn.Module = model
    want_compile = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
    if want_compile:
        step_model = torch.compile(model)

    gen = torch.Generator().manual_seed(args.seed)
    deadline = t_start + args.max_seconds
    # Reserve time for the final evaluation, saving and the samples.
    reserve = 15.0 if device.type == "cuda" else 5.0
    t_train = time.time()
    train_budget = max(1.0, deadline - reserve - t_train)
    best = {"val_loss": float("inf"), "step": 0, "state": None}
    history: list[dict] = []
    step, tokens_seen, last_eval, train_loss = 0, 0, time.time(), float("nan")
    tokens_per_step = args.batch_size * cfg.n_positions

    def run_eval() -> float:
        val_loss = evaluate(model, val_data, cfg.n_positions, args.batch_size)
        entry = {
            "step": step,
            "seconds": round(time.time() - t_start, 1),
            "train_loss": round(train_loss, 4),
            "val_loss": round(val_loss, 4),
        }
        history.append(entry)
        print(f"eval {entry}", flush=True)
        if val_loss < best["val_loss"]:
            # The corpus is small: keep the best weights in case later steps overfit.
            best.update(
                val_loss=val_loss,
                step=step,
                state={k: v.detach().clone() for k, v in model.state_dict().items()},
            )
        return val_loss

    model.train()
    while True:
        elapsed = time.time() - t_train
        if elapsed >= train_budget or (args.max_steps and step >= args.max_steps):
            break
        progress = elapsed / train_budget
        if args.max_steps:
            progress = max(progress, step / args.max_steps)
        lr = lr_at(progress, args.lr, args.warmup, 0.1)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = get_batch(train_data, args.batch_size, cfg.n_positions, gen)
        try:
            with autocast(device):
                logits = step_model(x)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
            loss.backward()
        except Exception as exc:  # torch.compile failures surface on the first call
            if step_model is model:
                raise
            print(f"torch.compile failed ({type(exc).__name__}: {exc}); running eager")
            step_model = model
            optimizer.zero_grad(set_to_none=True)
            continue
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += tokens_per_step
        if step % 50 == 0 or step == 1:
            train_loss = loss.item()  # syncs the GPU; only every 50 steps
            rate = tokens_seen / max(1e-9, time.time() - t_train)
            print(
                f"step {step} loss {train_loss:.4f} lr {lr:.2e} tok/s {rate:,.0f}"
                f" elapsed {time.time() - t_start:.0f}s",
                flush=True,
            )
        if time.time() - last_eval >= args.eval_every:
            run_eval()
            last_eval = time.time()

    train_loss = loss.item() if step else float("nan")
    train_seconds = time.time() - t_train
    final_val = run_eval()
    if best["state"] is not None and best["step"] != step:
        print(f"restoring the best weights: step {best['step']} val {best['val_loss']:.4f}")
        model.load_state_dict(best["state"])

    report = {
        "corpus_manifest": manifest,
        "model_config": asdict(cfg),
        "parameters": n_params,
        "tokenizer": {
            "type": "byte-level BPE",
            "vocab_size": args.vocab_size,
            "eot_id": eot_id,
        },
        "train_tokens": int(train_ids.size),
        "val_tokens": int(val_ids.size),
        "val_fraction_of_documents_bytes": 0.01,
        "steps": step,
        "batch_size": args.batch_size,
        "tokens_seen": tokens_seen,
        "epochs": round(tokens_seen / max(1, train_ids.size), 2),
        "train_seconds": round(train_seconds, 1),
        "final_train_loss": round(train_loss, 4),
        "final_val_loss": round(final_val, 4),
        "saved_step": best["step"] if best["state"] is not None else step,
        "saved_val_loss": round(min(best["val_loss"], final_val), 4),
        "history": history,
        "seed": args.seed,
        "args": {k: str(v) for k, v in vars(args).items()},
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "compiled": step_model is not model,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    report["total_seconds"] = round(time.time() - t_start, 1)
    save_folder(args.out, model, tok, eot_id, report)
    print(
        f"final train loss {train_loss:.4f}, val loss {final_val:.4f}, saved val loss"
        f" {report['saved_val_loss']:.4f} (step {report['saved_step']}); {step} steps,"
        f" {tokens_seen:,} tokens, {train_seconds:.0f}s training, wrote {args.out}"
    )

    for prompt in ("The Python", "Once upon a time"):
        print(f"\n--- greedy: {prompt!r}\n{greedy_continuation(model, tok, prompt, 60, device)}")

    if args.verify:
        result = verify(args.out, model, tok)
        print(f"\nverify (transformers GPT2LMHeadModel): {json.dumps(result)}")
        report["verify"] = result
        (args.out / "train_report.json").write_text(json.dumps(report, indent=2) + "\n")
        if not result["ok"]:
            return 1
    print(f"total {time.time() - t_start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
