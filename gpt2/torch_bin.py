"""pytorch_model.bin: a PyTorch state dict read through torch's safe loader
(`weights_only=True`: tensors only, no code run), as gpt2.weights' TensorInfo and arrays.
torch is optional: only this reader needs it, and it says how to do without."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gpt2.files import ModelFile
from gpt2.weights import FLOAT_KINDS, TensorInfo


def read_torch_bin(path: Path) -> tuple[dict[str, TensorInfo], dict[str, np.ndarray]]:
    """pytorch_model.bin through torch's safe loader (tensors only, no code run)."""
    try:
        import torch
    except ImportError:
        raise ValueError(
            f"{path}: a PyTorch checkpoint needs torch (pip install torch), or convert it once "
            'where torch is: `python -c "from transformers import GPT2LMHeadModel as M; '
            "M.from_pretrained('FOLDER').save_pretrained('FOLDER', safe_serialization=True)\"`"
        ) from None
    # read through the descriptor that was checked to be a regular file, never re-opened
    with ModelFile(path) as f, open(f.fd, "rb", closefd=False) as stream:
        try:
            state = torch.load(stream, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises many types on bad files
            raise ValueError(
                f"{path}: cannot read PyTorch checkpoint ({type(e).__name__}: {e})"
            ) from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state dict ({type(state).__name__})")
    infos, arrays = {}, {}
    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{path}: entry {name!r} is not a tensor")
        try:
            infos[name], arrays[name] = torch_tensor(torch, path, name, t)
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001 - any tensor torch cannot hand over plainly
            raise ValueError(
                f"{path}: tensor {name}: cannot read it ({type(e).__name__}: {e})"
            ) from None
    return infos, arrays


def torch_tensor(torch, path: Path, name: str, t) -> tuple[TensorInfo, np.ndarray]:
    """One tensor of a state dict as (info, array in its own type); nn.Parameter as its
    data, any layout but a dense (strided) one refused by name."""
    if t.layout != torch.strided:
        raise ValueError(
            f"{path}: tensor {name}: {str(t.layout).removeprefix('torch.')} tensors are not "
            "supported (a GPT-2 checkpoint's are dense)"
        )
    t = t.detach()  # nn.Parameter, requires_grad: the same values, as a plain tensor
    kind = TORCH_KINDS.get(str(t.dtype), str(t.dtype))
    if kind == "BF16":
        a = t.contiguous().view(torch.int16).numpy().view(np.uint16)
    elif kind in FLOAT_KINDS:
        a = t.contiguous().numpy()
    else:
        a = np.empty(0)
    return TensorInfo(name, path, 0, a.nbytes, kind, tuple(t.shape)), a


TORCH_KINDS = {
    "torch.float32": "F32",
    "torch.float16": "F16",
    "torch.bfloat16": "BF16",
    "torch.float64": "F64",
}
