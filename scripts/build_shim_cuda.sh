#!/usr/bin/env bash
# libtinynn.so alone, with our CUDA kernels, against the ggml libraries of a packed CUDA
# build (scripts/gpu_run.sh's `pack`, unpacked into LIB) and ggml's headers: about a minute
# on the GPU machine, where a whole CUDA build takes five. The flags are those CMake gives
# the tinynn target (native/CMakeLists.txt); the ggml libraries must come from the same pin.
#
#   bash scripts/build_shim_cuda.sh [LIB (default build/native/lib)]
#   GGML_INCLUDE: ggml's include folder (default third_party/ggml/include); CUDA_ARCH: 90
set -euo pipefail
LIB=${1:-build/native/lib}
INC=${GGML_INCLUDE:-third_party/ggml/include}
ARCH=${CUDA_ARCH:-90}
[ -f "$INC/ggml.h" ] || { echo "build_shim_cuda: no ggml.h in $INC"; exit 1; }
[ -f "$LIB/libggml-base.so" ] || { echo "build_shim_cuda: no ggml libraries in $LIB"; exit 1; }
OBJ=$(mktemp -d)
DEFS="-DGGML_BACKEND_DL -DGGML_SHARED -DTNN_HAVE_CUDA_KERNELS -DNDEBUG"
pids=()
for src in native/*.c; do
    extra=()
    case "$(basename "$src")" in # native/CMakeLists.txt's per-file options
    sampler.c) extra=(-fno-trapping-math) ;;
    port_dot.c | port_rows.c) extra=(-ffp-contract=off) ;;
    esac
    gcc -O3 -std=gnu11 -fPIC -fvisibility=hidden -Wall -Wextra -Wno-unused-parameter \
        -Wno-format-truncation $DEFS "${extra[@]}" -Inative -I"$INC" \
        -c "$src" -o "$OBJ/$(basename "$src").o" &
    pids+=($!)
done
for src in native/cuda/*.cu; do
    nvcc -O3 -std=c++17 -arch=sm_"$ARCH" -Xcompiler -fPIC,-fvisibility=hidden $DEFS \
        -Inative -I"$INC" -c "$src" -o "$OBJ/$(basename "$src").o" &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
nvcc -shared -o "$LIB/libtinynn.so" "$OBJ"/*.o -L"$LIB" -lggml -lggml-base -ldl -lpthread -lm \
    -cudart static -Xlinker -rpath,'$ORIGIN'
rm -rf "$OBJ"
echo "build_shim_cuda: $LIB/libtinynn.so"
