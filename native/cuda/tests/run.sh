#!/usr/bin/env bash
# Builds and runs the decode-step test on a GPU machine (sm_90), then the
# memory checker over its quick mode. Run from anywhere:
#   bash native/cuda/tests/run.sh            # everything, timing included
#   bash native/cuda/tests/run.sh --quick    # tiny shapes only, then memcheck
# -I stub: the argmax stand-in for sampling_kernels.cuh, used only when the
# real file is absent beside decode.cu (a quoted include looks there first).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${TNN_TEST_DIR:-/tmp}/tnn_test_decode"
nvcc -O3 -arch=sm_90 -std=c++17 -Xptxas -v -I "$here/stub" -o "$out" "$here/test_decode.cu" 2> "$out.ptxas.txt" || {
    cat "$out.ptxas.txt"; exit 1; }
grep -E "Compiling entry|Used|spill" "$out.ptxas.txt" | paste - - - | sed -E "s/.*function .([^']+).*spill stores, ([0-9]+ bytes spill loads).*(Used [0-9]+ registers).*/\1: \3, \2/" | c++filt | cut -c1-150 || true
"$out" "$@"
if command -v compute-sanitizer > /dev/null; then
    compute-sanitizer --tool memcheck --error-exitcode 3 "$out" --quick > "$out.memcheck.txt" 2>&1 || {
        tail -50 "$out.memcheck.txt"; echo "memcheck: FAILED"; exit 3; }
    tail -3 "$out.memcheck.txt"
    echo "memcheck: clean"
else
    echo "compute-sanitizer not found: memcheck skipped"
fi
