#!/usr/bin/env bash
# Builds and runs the standalone test of the graph path's device sampler
# (sample_logits.cu, no ggml), then compute-sanitizer's memcheck on its quick
# mode. Needs a GPU of sm_90 or newer.
#   native/cuda/tests/run_sample_logits.sh            # from anywhere
#   TNN_TEST_DIR=/some/dir native/cuda/tests/run_sample_logits.sh   # where the binary goes
# (not $OUT: on the GPU machine that folder's files are what a call returns)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${TNN_TEST_DIR:-$(mktemp -d /tmp/tnn_sample_logits.XXXXXX)}"
bin="$out/test_sample_logits"
nvcc -arch=sm_90 -O3 -std=c++17 -Xptxas -v -o "$bin" "$here/test_sample_logits.cu" 2> "$out/ptxas.txt"
if grep -E "[1-9][0-9]* bytes spill" "$out/ptxas.txt"; then
    echo "register spills (see $out/ptxas.txt)" >&2
fi
"$bin"
sanitizer="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
"$sanitizer" --tool memcheck --error-exitcode 3 "$bin" --quick
