#!/usr/bin/env bash
# Everything the GPU machine is for, in one call (it starts bare each time):
# build ggml with CUDA and the shim, run the whole suite with the CUDA tests
# required, the CUDA parity tables and the benchmarks; optionally train the
# embedded default model meanwhile (GPU busy only while the CPUs build).
#
#   bash scripts/gpu_run.sh [train] [build] [tests] [parity] [bench]
#
# Results land in $OUT (default build/gpu_out): run.log, parity_h200.json,
# bench_h200.json, default_model/. Python wheels the machine lacks may sit in
# .whl/ (installed to /tmp/site first).
set -u
OUT=${OUT:-$PWD/build/gpu_out}
mkdir -p "$OUT"
STEPS=" ${*:-build tests parity bench} "
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=$PWD:/tmp/site
fi
has() { [[ "$STEPS" == *" $1 "* ]]; }
stamp() { echo "== $(date -u +%H:%M:%S) $*"; }

{
    stamp machine
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    nvcc --version | tail -1
    python3 -c 'import torch, transformers, numpy; print("torch", torch.__version__, "transformers", transformers.__version__, "numpy", numpy.__version__)'
    lscpu | grep -m1 "Model name"

    if has train; then
        stamp "train (background)"
        python3 scripts/train_default_model.py --device cuda --max-seconds 300 \
            --out "$OUT/default_model" --verify > /tmp/train.log 2>&1 &
        train_pid=$!
    fi
    if has build; then
        stamp build
        cmake -S native -B build/native -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
            -DCMAKE_CUDA_ARCHITECTURES=90 -DTINYNN_CPU_ALL_VARIANTS=OFF > /tmp/build.log 2>&1 &&
            cmake --build build/native -j "$(nproc)" >> /tmp/build.log 2>&1
        status=$?
        tail -3 /tmp/build.log
        if [ $status -ne 0 ]; then tail -60 /tmp/build.log; exit 1; fi
        ls -la build/native/lib
    fi
    if [ -n "${train_pid:-}" ]; then
        wait "$train_pid"
        stamp "train done"
        tail -40 /tmp/train.log
    fi
    if has tests; then
        stamp tests
        TINYNN_REQUIRE_CUDA=1 timeout 300 python3 -m pytest tests -q -p no:cacheprovider \
            -o addopts="" 2>&1 | tail -40
    fi
    if has parity; then
        stamp parity
        timeout 300 python3 scripts/cuda_parity.py --out "$OUT" 2>&1 | tail -30
        timeout 120 python3 scripts/hf_small_folder.py /tmp/hf_small &&
            timeout 200 python3 -m gpt2 parity hf --model /tmp/hf_small --device cuda 2>&1 | tail -20
    fi
    if has bench; then
        stamp bench
        timeout 420 python3 -m gpt2.bench --device cuda --json "$OUT/bench_h200.json" 2>&1 | tail -45
    fi
    stamp end
} 2>&1 | tee "$OUT/run.log"
