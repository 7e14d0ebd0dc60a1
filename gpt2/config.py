"""GPT-2 hyperparameters: one frozen dataclass, read from HF config.json or GGUF metadata."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from gpt2.files import read_text
from gpt2.names import LAYOUT_GGUF_LLAMA, from_canonical

log = logging.getLogger(__name__)

# HF config.json keys that describe training, packaging or generation, not the forward
# pass we compute. They are ignored silently; any other unknown key is ignored with a debug
# log (HF's convention), and a config of another model_type is refused by name.
_HF_IGNORED_KEYS = frozenset(
    {
        "_name_or_path",
        "_num_labels",
        "id2label",
        "label2id",
        "output_attentions",
        "output_hidden_states",
        "output_past",
        "problem_type",
        "return_dict",
        "tokenizer_class",
        "torchscript",
        "activation_function",  # checked separately: must be gelu_new
        "add_cross_attention",
        "architectures",
        "attn_pdrop",
        "bos_token_id",
        "dtype",
        "embd_pdrop",
        "eos_token_id",
        "gradient_checkpointing",
        "initializer_range",
        "model_type",
        "n_ctx",  # old alias of n_positions, checked for agreement
        "pad_token_id",
        "reorder_and_upcast_attn",
        "resid_pdrop",
        "scale_attn_by_inverse_layer_idx",
        "scale_attn_weights",
        "summary_activation",
        "summary_first_dropout",
        "summary_proj_to_labels",
        "summary_type",
        "summary_use_proj",
        "task_specific_params",
        "tie_word_embeddings",
        "torch_dtype",
        "transformers_version",
        "use_cache",
    }
)

# Options that change the math; we only implement GPT-2's defaults for them.
_HF_REQUIRED_VALUES: dict[str, Any] = {
    "activation_function": "gelu_new",
    "add_cross_attention": False,
    "reorder_and_upcast_attn": False,
    "scale_attn_by_inverse_layer_idx": False,
    "scale_attn_weights": True,
    "tie_word_embeddings": True,
}


@dataclass(frozen=True)
class GPT2Config:
    """Shape of a GPT-2 model. Defaults are GPT-2 small (124M)."""

    n_layer: int = 12  # number of transformer blocks
    n_embd: int = 768  # residual width d (C in nanoGPT)
    n_head: int = 12  # attention heads; d_head = n_embd / n_head
    n_positions: int = 1024  # context length: rows of wpe
    vocab_size: int = 50257  # rows of wte (tied with the output head)
    n_inner: int | None = None  # MLP width; None means 4 * n_embd
    layer_norm_epsilon: float = 1e-5  # LayerNorm eps (biased variance)

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_embd", "n_head", "n_positions", "vocab_size"):
            _check_positive_int(name, getattr(self, name))
        if self.n_inner is not None:
            _check_positive_int("n_inner", self.n_inner)
        eps = self.layer_norm_epsilon
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < math.inf:
            raise ValueError(f"layer_norm_epsilon must be a positive float, got {eps!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")

    @property
    def d_ff(self) -> int:
        """MLP hidden width."""
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    @property
    def d_head(self) -> int:
        """Width of one attention head."""
        return self.n_embd // self.n_head

    def to_hf_dict(self) -> dict:
        """The architecture keys of an HF GPT2Config (config.json), the inverse
        of from_hf_config for them."""
        return {
            "n_layer": self.n_layer,
            "n_embd": self.n_embd,
            "n_head": self.n_head,
            "n_positions": self.n_positions,
            "vocab_size": self.vocab_size,
            "n_inner": self.n_inner,
            "layer_norm_epsilon": self.layer_norm_epsilon,
        }

    @classmethod
    def from_hf_config(cls, source: dict | str | Path) -> GPT2Config:
        """Read an HF `config.json` (a dict, the file, or the folder that holds it)."""
        where = "config dict"
        if not isinstance(source, dict):
            path = Path(source)
            if path.is_dir():
                path = path / "config.json"
            where = str(path)
            if not path.exists():
                raise ValueError(f"{where}: file not found")
            try:
                source = json.loads(read_text(path))  # a regular file of bounded size
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e})") from None
            except RecursionError:
                raise ValueError(f"{where}: JSON nested too deeply") from None
        if not isinstance(source, dict):
            raise ValueError(f"{where}: expected a JSON object, found {type(source).__name__}")
        model_type = source.get("model_type", "gpt2")
        if model_type != "gpt2":
            raise ValueError(f"{where}: model_type {model_type!r} is not GPT-2")
        own = {f.name for f in fields(cls)}
        unknown = sorted(set(source) - own - _HF_IGNORED_KEYS)
        if unknown:
            log.debug("%s: ignoring config keys %s", where, unknown)
        for key, want in _HF_REQUIRED_VALUES.items():
            if key in source and source[key] != want:
                raise ValueError(
                    f"{where}: unsupported {key}={source[key]!r} (only {want!r} is implemented)"
                )
        kwargs = {k: source[k] for k in own if k in source}
        if "n_ctx" in source and source["n_ctx"] != kwargs.get("n_positions", source["n_ctx"]):
            raise ValueError(
                f"{where}: n_ctx ({source['n_ctx']}) differs from "
                f"n_positions ({kwargs['n_positions']})"
            )
        if "n_positions" not in kwargs and "n_ctx" in source:
            kwargs["n_positions"] = source["n_ctx"]
        try:
            return cls(**kwargs)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None

    @classmethod
    def from_gguf(cls, reader: Any, path: str | Path = "<gguf>") -> GPT2Config:
        """Read the `gpt2.*` metadata of a GGUF header: gpt2.gguf_header's, or an open
        `gguf.GGUFReader` (both give `get_field(key).contents()` and `tensors`)."""
        arch = _field(reader, "general.architecture")
        if arch is not None and arch != "gpt2":
            raise ValueError(f"{path}: general.architecture is {arch!r}, expected 'gpt2'")

        def need(key: str) -> int:
            value = _field(reader, key)
            if value is None:
                raise ValueError(f"{path}: missing metadata key {key}")
            return _int(value, key, path)

        n_embd = need("gpt2.embedding_length")
        d_ff = _field(reader, "gpt2.feed_forward_length")
        d_ff = None if d_ff is None else _int(d_ff, "gpt2.feed_forward_length", path)
        vocab = _field(reader, "gpt2.vocab_size")
        if vocab is None:
            vocab = _gguf_vocab_size(reader, path)
        vocab = _int(vocab, "gpt2.vocab_size", path)
        eps = _field(reader, "gpt2.attention.layer_norm_epsilon")
        if eps is not None and (isinstance(eps, (str, list, bool)) or not math.isfinite(eps)):
            raise ValueError(
                f"{path}: metadata gpt2.attention.layer_norm_epsilon must be a finite number, "
                f"got {eps!r:.80}"
            )
        try:
            return cls(
                n_layer=need("gpt2.block_count"),
                n_embd=n_embd,
                n_head=need("gpt2.attention.head_count"),
                n_positions=need("gpt2.context_length"),
                vocab_size=vocab,
                n_inner=None if d_ff is None or d_ff == 4 * n_embd else d_ff,
                # GGUF stores eps as f32: 1e-5 reads back as 9.99999974e-06. Round to
                # 7 significant digits so the value is the one that was written.
                layer_norm_epsilon=1e-5 if eps is None else float(f"{float(eps):.7g}"),
            )
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _int(value: Any, key: str, path: str | Path) -> int:
    """A metadata integer; ValueError naming the key for strings, lists, inf, NaN, 2.5."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{path}: metadata {key} must be an integer, got {value!r:.80}")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise ValueError(f"{path}: metadata {key} must be an integer, got {value!r}")
    return int(value)


def _field(reader: Any, key: str) -> Any:
    """A GGUF metadata value as a Python scalar/str/list, or None when absent."""
    f = reader.get_field(key)
    if f is None:
        return None
    try:
        return f.contents()
    except Exception as e:  # noqa: BLE001 - gguf fails in several ways on odd types
        raise ValueError(f"metadata {key}: unreadable value ({type(e).__name__}: {e})") from None


def _gguf_vocab_size(reader: Any, path: str | Path) -> int:
    (wte,) = from_canonical("wte", LAYOUT_GGUF_LLAMA)  # both GGUF layouts name it alike
    for t in reader.tensors:
        if t.name == wte and len(t.shape) == 2:
            return int(t.shape[1])  # GGUF ne = [n_embd, n_vocab]
    tokens = reader.get_field("tokenizer.ggml.tokens")
    if tokens is not None:
        return len(tokens.contents())
    raise ValueError(
        f"{path}: cannot tell the vocab size (no gpt2.vocab_size, {wte} or tokenizer.ggml.tokens)"
    )
