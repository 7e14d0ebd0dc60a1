"""Where ggml-cuda 0.20.2 multiplies f32 matrices on TF32 tensor cores (0.25.3's source reads
the same: mmf.cu and the dispatch between mmvf, mmf and cuBLAS are unchanged).

An f32 matrix times 1..3 columns runs an f32 kernel (mmvf), 17 or more go to
cuBLAS (strict f32: the shim sets NVIDIA_TF32_OVERRIDE=0), and 4..16 columns
run ggml's mmf kernel on TF32 MMA, which rounds inputs to 10 mantissa bits.
The CUDA engines compute such products with 17 columns instead.
"""

TF32_COLUMNS = range(4, 17)
STRICT_F32_COLUMNS = TF32_COLUMNS.stop  # the fewest columns past the TF32 range
