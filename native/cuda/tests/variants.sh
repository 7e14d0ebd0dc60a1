#!/usr/bin/env bash
# Times the decode step under other GEMV launch policies than the default (gemv.cuh's
# TNN_GEMV_BLOCKS_PER_SM and TNN_GEMV_F16_SMALL_R), each build checked by the whole of
# test_decode first. A GPU of sm_90 or newer. Run from anywhere:
#   bash native/cuda/tests/variants.sh > variants.txt
set -u
here="$(cd "$(dirname "$0")" && pwd)"
for v in "default:" "two-blocks-per-sm-r2:-DTNN_GEMV_BLOCKS_PER_SM=2 -DTNN_GEMV_F16_SMALL_R=2" \
         "one-block-per-sm-r2:-DTNN_GEMV_F16_SMALL_R=2"; do
    name=${v%%:*} flags=${v#*:} bin="${TNN_TEST_DIR:-/tmp}/tnn_test_decode_$name"
    # shellcheck disable=SC2086  # flags are words
    nvcc -O3 -arch=sm_90 -std=c++17 $flags -o "$bin" "$here/test_decode.cu" || continue
    echo "=== $name ($flags)"
    timeout 150 "$bin" | grep -E "timing|batch [18] pos  200|FAIL|PASS|fail"
done
