"""Where a model comes from: a GGUF file, an HF snapshot folder, an HF hub id,
or (no name at all) the small model embedded in this package."""

from __future__ import annotations

import logging
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


def _looks_like_hub_id(text: str) -> bool:
    return not (text.endswith(".gguf") or text.startswith((".", "/", "~")) or text.count("/") > 1)


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
    if not _looks_like_hub_id(text):
        if path.is_dir():
            raise FileNotFoundError(f"{text} is a folder but holds no model (no config.json)")
        raise FileNotFoundError(f"no such model file or folder: {text}")
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
            f"network with `hf download {repo_id} {' '.join(HUB_FILES[:3])}` (huggingface_hub "
            "1.x and later; `huggingface-cli download` before) and pass the folder it prints."
        ) from exc
