"""ggml type ids and their numpy buffer types (TNN_TYPE_* in native/tinynn.h)."""

import numpy as np

GGML_TYPE_IDS = {"f32": 0, "f16": 1, "q8_0": 8, "i32": 26}

# numpy dtype of a buffer for each type; q8_0 moves as raw bytes.
DTYPES = {"f32": np.float32, "f16": np.float16, "i32": np.int32, "q8_0": np.uint8}

_NAMES = {v: k for k, v in GGML_TYPE_IDS.items()}


def dtype_name(type_id: int) -> str:
    """Our name of a ggml type id ("ggml:<id>" for types we do not handle)."""
    return _NAMES.get(type_id, f"ggml:{type_id}")


# tnn_sampling_params (native/cuda/sampling.h): one record a row or sequence,
# for the fused decode step, the device sampler and the host sampler alike.
SAMPLING_DTYPE = np.dtype(
    [("temperature", "<f4"), ("top_k", "<i4"), ("top_p", "<f4"), ("uniform", "<f4")]
)
