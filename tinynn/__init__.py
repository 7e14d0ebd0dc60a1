"""ctypes binding of libtinynn, a C shim over ggml.

import numpy as np, tinynn
with tinynn.Session("cpu") as s:
    w = s.input_2d_f32_persistent(3, 4)   # ne = [4, 3]
    s.finalize_weights()
    w.upload(np.ones((3, 4), np.float32))
    x = s.input_2d_f32(2, 4)              # ne = [4, 2]
    y = s.set_output(s.matmul(w, x))      # ne = [3, 2] -> numpy (2, 3) = x @ w.T
    s.realize(y)
    x.upload(np.ones((2, 4), np.float32))
    s.compute()
    print(y.download())
    # or, as one step (one wait for the device): upload, compute, download
    print(s.compute_io(x, np.full((2, 4), 2, np.float32), y))
"""

from ._lib import ABI_VERSION, library_path
from .decoder import Decoder
from .errors import TinyNNError
from .file_reads import FILE_RANGE_DTYPE, FileReadError, ReadRange, read_file_ranges
from .sampler import SAMPLING_DTYPE, SampledRows, penalize_rows, sample_rows
from .session import (
    CPU_KERNELS,
    Session,
    Tensor,
    cpu_kernels_supported,
    cuda_available,
    cuda_unavailable_reason,
)

__all__ = [
    "ABI_VERSION",
    "CPU_KERNELS",
    "Decoder",
    "FILE_RANGE_DTYPE",
    "FileReadError",
    "ReadRange",
    "SAMPLING_DTYPE",
    "SampledRows",
    "Session",
    "Tensor",
    "TinyNNError",
    "cpu_kernels_supported",
    "cuda_available",
    "cuda_unavailable_reason",
    "library_path",
    "penalize_rows",
    "read_file_ranges",
    "sample_rows",
]
