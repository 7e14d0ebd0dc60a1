"""Where a model comes from: a GGUF file, an HF snapshot folder, an HF hub id,
or (no name at all) the small model embedded in this package."""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL = Path(__file__).resolve().parent / "data" / "default.gguf"
HUB_FILES = ["config.json", "model.safetensors", "tokenizer.json", "vocab.json", "merges.txt"]


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
    if path.exists():
        return path
    text = str(name)
    if text.endswith(".gguf") or text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise FileNotFoundError(f"no such model file or folder: {text}")
    return _from_hub(text)


def _from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise FileNotFoundError(f"{repo_id!r} is not a local path") from exc
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES, local_files_only=True))
    except Exception:
        pass
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except Exception as exc:
        raise FileNotFoundError(
            f"{repo_id!r} is neither a local file or folder nor in the Hugging Face cache, and "
            f"downloading it failed ({type(exc).__name__}: {exc}). Fetch it where there is a "
            f"network with `hf download {repo_id} {' '.join(HUB_FILES[:3])}` (huggingface_hub "
            "1.x and later; `huggingface-cli download` before) and pass the folder it prints."
        ) from exc
