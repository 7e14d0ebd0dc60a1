#!/usr/bin/env bash
# Builds and runs the standalone sampling-kernel test (no ggml), then
# compute-sanitizer's memcheck on its quick mode. Needs a GPU of sm_90 or newer.
#   native/cuda/tests/run_sampling.sh            # from anywhere
#   TNN_TEST_DIR=/some/dir native/cuda/tests/run_sampling.sh   # where the binary goes
# (not $OUT: on the GPU machine that folder's files are what a call returns)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${TNN_TEST_DIR:-$(mktemp -d /tmp/tnn_sampling.XXXXXX)}"
bin="$out/test_sampling"
nvcc -arch=sm_90 -O3 -std=c++17 -Xptxas -v -o "$bin" "$here/test_sampling.cu" 2> "$out/ptxas.txt"
if grep -E "[1-9][0-9]* bytes spill" "$out/ptxas.txt"; then
    echo "register spills (see $out/ptxas.txt)" >&2
fi
"$bin"
sanitizer="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
"$sanitizer" --tool memcheck --error-exitcode 3 "$bin" --quick
