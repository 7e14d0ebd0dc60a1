"""Where a model comes from: a GGUF file, an HF snapshot folder, an HF hub id,
or (no name at all) the small model embedded in this package."""

from __future__ import annotations

import logging
import re
import shlex
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MODEL = Path(__file__).resolve().parent / "data" / "default.gguf"
TOKENIZER_FILES = ["tokenizer.json", "vocab.json", "merges.txt"]
# safetensors, single or sharded with its index; pytorch_model.bin only where there are none
HUB_FILES = [
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*-of-*.safetensors",
    *TOKENIZER_FILES,
]
HUB_FILES_TORCH = ["config.json", "pytorch_model.bin", *TOKENIZER_FILES]
MODEL_MARKS = ("config.json",)  # what makes a folder a model folder


def is_model_folder(path: Path) -> bool:
    """A folder is a model only if it holds one (its config.json)."""
    return path.is_dir() and any((path / m).is_file() for m in MODEL_MARKS)


# An HF hub id: "name" or "owner/name", letters, digits, "_", "-", "." (huggingface_hub's
# validate_repo_id); anything else given as a model is a local path.
HUB_ID = re.compile(r"[\w.-]{1,96}(/[\w.-]{1,96})?")
MODEL_FILE_SUFFIXES = (".gguf", ".safetensors", ".bin")


def _local_path_evidence(text: str, path: Path) -> str | None:
    """Why `text` is taken as a local path rather than a hub id (None: it may be
    a hub id): its form, or a folder on its way that exists here."""
    if text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1:
        return "it is a path"
    if text.endswith(MODEL_FILE_SUFFIXES):
        return f"it ends in {path.suffix}"
    if not HUB_ID.fullmatch(text):
        return "it is not a Hugging Face hub id"
    if "/" in text and path.parent.is_dir():  # "models/gpt2-f16" where models/ exists
        return f"{path.parent}/ exists here"
    return None


def resolve_model(name: str | Path | None) -> Path:
    """A local path for `name`. Hub ids are read from the local HF cache, or
    downloaded when online; offline and not cached is an error that says how
    to fetch the model."""
    if name is None:
        if not DEFAULT_MODEL.is_file():
            raise FileNotFoundError(
                f"the embedded default model is missing ({DEFAULT_MODEL}); reinstall the "
                "package or pass --model"
            )
        return DEFAULT_MODEL
    path = Path(name).expanduser()
    text = str(name)
    if path.exists() and (not path.is_dir() or is_model_folder(path)):
        return path
    evidence = _local_path_evidence(text, path)
    if evidence is not None:
        if path.is_dir():
            raise FileNotFoundError(f"{text} is a folder but holds no model (no config.json)")
        raise FileNotFoundError(
            f"no such file or folder: {text} (no such model here; {evidence}, so it was "
            "not looked up on the Hugging Face hub)"
        )
    if path.exists():  # e.g. "gpt2" from the repository root: the package's source folder
        log.debug("%s is a folder without a model: taken as a hub id", text)
    return _from_hub(text)


def _from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise FileNotFoundError(f"{repo_id!r} is not a local path") from exc

    def fetch(local: bool) -> Path:
        folder = Path(snapshot_download(repo_id, allow_patterns=HUB_FILES, local_files_only=local))
        if not any(folder.glob("*.safetensors")):  # an older checkpoint: its .bin
            folder = Path(
                snapshot_download(repo_id, allow_patterns=HUB_FILES_TORCH, local_files_only=local)
            )
        if not is_model_folder(folder):
            raise ValueError(f"the snapshot in {folder} has no config.json")
        return folder

    try:
        return fetch(local=True)
    except Exception:
        pass
    try:
        return fetch(local=False)
    except Exception as exc:
        raise FileNotFoundError(
            f"{repo_id!r} is neither a local file or folder nor in the Hugging Face cache, and "
            f"downloading it failed ({type(exc).__name__}: {exc}). Fetch it where there is a "
            f"network with `hf download {repo_id} --include {_include_patterns()}` "
            "(huggingface_hub 1.x and later; `huggingface-cli download` before) and pass the "
            "folder it prints; it holds the config, the weights and the tokenizer files."
        ) from exc


def _include_patterns() -> str:
    """HUB_FILES as `hf download --include` patterns, quoted for a shell: a pattern
    no file matches is skipped (a named file that is missing would fail)."""
    return " ".join(shlex.quote(f) for f in HUB_FILES)
