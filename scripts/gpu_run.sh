#!/usr/bin/env bash
# Everything the GPU machine is for, in one call (it starts bare each time):
# build ggml with CUDA and the shim, run the CUDA tests (required, not
# skipped), the CUDA parity tables and the benchmarks, each step skipped when
# the time left (GPU_RUN_SECONDS, default 580) would not cover it.
#
#   OUT=... bash scripts/gpu_run.sh [build] [kernels] [tests] [sanitize] [profile] [profile-prefill]
#                                   [floor] [graphs] [parity] [fused] [user] [llama] [bench]
#                                   [bench-xl] [bench-f32] [serve] [load] [parity-xl] [pack]
#
# The CUDA build takes about 4 of the 10 minutes a call may run. `pack` returns
# the built libraries (xz, in 15 MB parts); put them together here with
#   mkdir -p .prebuilt && cat native_lib.tar.xz.* > .prebuilt/native_lib.tar.xz
# (.prebuilt/ is git-ignored, never committed) and carry .prebuilt instead of
# third_party: a call without `build` then unpacks them, and .prebuilt/libtinynn.so,
# when present, replaces the shim (it builds on any machine, no CUDA needed).
#
# Results land in $OUT (default build/gpu_out): run.log (the steps' tails, as they
# go) and one archive, results.tgz: every step's whole log (tests.log, sanitize.log,
# kernels.log, llama's) and its JSON, so the device tool's 8 files never drop a log.
# The tool copies the working tree as it is: with uncommitted edits in it (other work
# in progress), start the call's command with `git stash -u` to run what is committed.
# Python wheels the machine lacks may sit in .whl/.
set -u
OUT=${OUT:-$PWD/build/gpu_out}
RES=$(mktemp -d)
# the machine has handed back results of earlier calls from a reused temp dir: start empty
find "$RES" -mindepth 1 -delete
mkdir -p "$OUT" "$RES/xl"
STEPS=" ${*:-build tests parity bench bench-xl parity-xl} "
BUDGET=${GPU_RUN_SECONDS:-580}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=$PWD:/tmp/site
fi
has() { [[ "$STEPS" == *" $1 "* ]]; }
llama_build=
# no timing runs beside a compiler: wait for llama.cpp's background build, once
wait_llama_build() {
    [ -n "$llama_build" ] || return 0
    stamp "waiting for llama-bench's build"
    wait "$llama_build"
    echo "-- llama-bench build exit $?"
    tail -3 "$RES/llama_build.log"
    llama_build=
}
stamp() { echo "== $(date -u +%H:%M:%S) (${SECONDS}s) $*"; }
# step NAME SECONDS CMD...: runs CMD under a timeout if that many seconds remain
step() {
    local name=$1 need=$2 left=$((BUDGET - SECONDS))
    shift 2
    if [ "$left" -lt "$need" ]; then stamp "skip $name ($left s left)"; return 0; fi
    stamp "$name"
    timeout "$((left < need * 2 ? left : need * 2))" "$@"
    echo "-- $name exit $?"
}

{
    stamp machine
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    nvcc --version | tail -1
    python3 -c 'import torch, transformers, numpy; print("torch", torch.__version__, "transformers", transformers.__version__, "numpy", numpy.__version__)'
    lscpu | grep -m1 "Model name"
    if has llama; then
        # llama.cpp's build takes five minutes: start it now, in the background, and let
        # the steps that time anything wait for it (wait_llama_build)
        stamp "llama-bench build, in the background"
        bash scripts/llama_bench.sh --build-only > "$RES/llama_build.log" 2>&1 &
        llama_build=$!
    fi
    # the packed CUDA libraries replace build/native/lib: only where there is a GPU (a
    # dry run of this script on a CPU machine must keep that machine's own build)
    if ! has build && [ -f .prebuilt/native_lib.tar.xz ] && command -v nvidia-smi >/dev/null; then
        stamp "prebuilt libraries"
        mkdir -p build/native && xz -dc .prebuilt/native_lib.tar.xz | tar -x -C build/native
        if [ -f .prebuilt/libtinynn.so ]; then cp .prebuilt/libtinynn.so build/native/lib/; fi
        ls build/native/lib
    fi
    if has build; then
        stamp build
        cmake -S native -B build/native -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
            -DCMAKE_CUDA_ARCHITECTURES=90 -DTINYNN_CPU_ALL_VARIANTS=OFF > /tmp/build.log 2>&1 &&
            cmake --build build/native -j "$(nproc)" >> /tmp/build.log 2>&1
        status=$?
        tail -2 /tmp/build.log
        if [ $status -ne 0 ]; then tail -60 /tmp/build.log; exit 1; fi
        ls build/native/lib
    fi
    if has kernels; then
        # our kernels beside their plain references, then memcheck (native/cuda/tests)
        step kernels 120 bash -c "bash native/cuda/tests/run.sh && bash native/cuda/tests/run_sampling.sh" \
            > "$RES/kernels.log" 2>&1
        tail -12 "$RES/kernels.log"
    fi
    if has tests; then
        # every CUDA case of the suite (Ray's module left out where Ray is not installed:
        # it holds none, and one collection error must not stop the rest)
        skip=()
        python3 -c "import ray" 2>/dev/null || skip=(--ignore=tests/gpt2/test_ray_serve.py)
        TINYNN_REQUIRE_CUDA=1 step tests 150 python3 -m pytest tests "${skip[@]}" -v \
            -p no:cacheprovider --continue-on-collection-errors -k cuda -o addopts="" -rA \
            2>&1 | tee "$RES/tests.log" | tail -30
    fi
    if has sanitize; then
        # our kernels' CUDA tests (fused decode, device sampler) under compute-sanitizer's memcheck
        TINYNN_REQUIRE_CUDA=1 step sanitize 150 compute-sanitizer --tool memcheck --error-exitcode 3 \
            python3 -m pytest tests/gpt2/test_fused_decode.py tests/tinynn/test_device_sampler.py \
            -q -k cuda -p no:cacheprovider \
            -o addopts="" > "$RES/sanitize.log" 2>&1
        grep -E "ERROR SUMMARY|passed|failed" "$RES/sanitize.log" | tail -4
    fi
    if has profile; then
        wait_llama_build
        step profile 90 python3 scripts/profile_decode.py --device cuda --shapes gpt2 gpt2-xl \
            --dtypes f16 q8_0 f32 --json "$RES/profile_h200.json" 2>&1 | tail -8
    fi
    if has profile-prefill; then
        wait_llama_build
        step "profile prefill" 60 python3 scripts/profile_decode.py --device cuda \
            --shapes gpt2 gpt2-xl --dtypes f16 --prefill 1024 \
            --json "$RES/profile_prefill_h200.json" 2>&1 | tail -4
    fi
    if has floor; then
        wait_llama_build
        # the same weight products through torch/cuBLAS in one CUDA graph: what a matvec can cost
        step "matvec floor" 40 python3 scripts/matvec_floor.py --json "$RES/matvec_floor_h200.json" \
            2>&1 | tail -3
    fi
    if has graphs; then
        wait_llama_build
        # the same decode with ggml-cuda's CUDA graphs off: the difference is the replay.
        # ggml-cuda turns graphs off when the variable is set at all, even to 0.
        step "decode, CUDA graphs on" 20 env -u GGML_CUDA_DISABLE_GRAPHS python3 -m gpt2.bench \
            --device cuda --shapes gpt2 --dtypes f16 --workloads decode --no-hf \
            --json "$RES/graphs_on.json" 2>&1 | tail -4
        step "decode, CUDA graphs off" 20 env GGML_CUDA_DISABLE_GRAPHS=1 python3 -m gpt2.bench \
            --device cuda --shapes gpt2 --dtypes f16 --workloads decode --no-hf \
            --json "$RES/graphs_off.json" 2>&1 | tail -4
    fi
    if has parity; then
        step "parity gpt2" 40 python3 scripts/cuda_parity.py --shapes gpt2 --out "$RES" 2>&1 | tail -12
        step "parity hf" 40 bash -c "python3 scripts/hf_small_folder.py /tmp/hf_small &&
            python3 -m gpt2 parity hf --model /tmp/hf_small --device cuda" 2>&1 | tail -20
    fi
    if has fused; then
        wait_llama_build
        # our decode kernels beside ggml's graphs, and what generate() feels (greedy, sampled)
        step "fused gpt2" 90 python3 -m gpt2.bench --device cuda --shapes gpt2 --dtypes f16 q8_0 \
            --workloads decode generate batch --batch 8 --decode auto --no-hf \
            --json "$RES/fused_gpt2_h200.json" 2>&1 | tail -12
        step "fused gpt2-xl" 90 python3 -m gpt2.bench --device cuda --shapes gpt2-xl \
            --dtypes f16 q8_0 --workloads decode generate --decode auto --no-hf \
            --json "$RES/fused_gpt2-xl_h200.json" 2>&1 | tail -10
        step "gpt2 f16, 32 sequences" 40 python3 -m gpt2.bench --device cuda --shapes gpt2 \
            --dtypes f16 --workloads batch --batch 32 --decode auto --no-hf \
            --json "$RES/fused_gpt2_b32_h200.json" 2>&1 | tail -3
    fi
    if has user; then
        # what a user gets: gpt2.load + complete() per token, our kernels (auto) and ggml's
        # graphs, on the bench's GGUFs (the files llama-bench reads in the llama step)
        step "write GGUFs" 90 python3 scripts/write_bench_ggufs.py --shapes gpt2 gpt2-xl \
            --dtypes f16 q8_0 --out /tmp/ggufs 2>&1 | tail -2
        wait_llama_build
        step "user path" 120 python3 scripts/bench_user_path.py /tmp/ggufs/gpt2_f16.gguf \
            /tmp/ggufs/gpt2_q8_0.gguf --device cuda --out "$RES/user_gpt2.json" 2>&1 | tail -6
        step "user path xl" 90 python3 scripts/bench_user_path.py /tmp/ggufs/gpt2-xl_f16.gguf \
            /tmp/ggufs/gpt2-xl_q8_0.gguf --device cuda --batch 0 --out "$RES/user_gpt2-xl.json" \
            2>&1 | tail -6
    fi
    if has llama; then
        # llama.cpp's llama-bench on the same GGUFs, in the same call (LLAMA_SRC carried)
        wait_llama_build
        step llama 60 env OUT="$RES/llama" LLAMA_BENCH_ARGS="-ngl 99 -fa 1 -p 512 -n 128 -r 3" \
            bash scripts/llama_bench.sh /tmp/ggufs/gpt2_f16.gguf /tmp/ggufs/gpt2_q8_0.gguf \
            /tmp/ggufs/gpt2-xl_f16.gguf /tmp/ggufs/gpt2-xl_q8_0.gguf 2>&1 | tail -20
    fi
    if has bench; then
        wait_llama_build
        # HF compiled (torch.compile, minutes of compiling) only where the targets cite it: f16
        step "bench gpt2" 60 python3 -m gpt2.bench --device cuda --shapes gpt2 --dtypes f32 q8_0 \
            --hf-compiled off --json "$RES/bench_gpt2_h200.json" 2>&1 | tail -22
        step "bench gpt2 f16" 120 python3 -m gpt2.bench --device cuda --shapes gpt2 --dtypes f16 \
            --json "$RES/bench_gpt2_f16_h200.json" 2>&1 | tail -22
    fi
    if has bench-xl; then
        wait_llama_build
        step "bench gpt2-xl" 150 python3 -m gpt2.bench --device cuda --shapes gpt2-xl \
            --dtypes f16 q8_0 --workloads decode prefill \
            --json "$RES/bench_gpt2-xl_h200.json" 2>&1 | tail -16
    fi
    if has bench-f32; then
        wait_llama_build
        step "bench gpt2 f32 decode" 30 python3 -m gpt2.bench --device cuda --shapes gpt2 \
            --dtypes f32 --workloads decode --no-hf --json "$RES/bench_gpt2_f32_h200.json" 2>&1 | tail -4
    fi
    if has serve; then
        wait_llama_build
        # issue 14's targets: 8 and 32 streaming clients of 128 tokens, gpt2 f16 random weights
        step serve 60 python3 scripts/load_test.py --random gpt2 --device cuda --dtype f16 \
            --max-batch 32 --clients 1,8,32 --seconds 10 --max-tokens 128 \
            --out "$RES/serve_h200.json" 2>&1 | tail -4
    fi
    if has load; then
        wait_llama_build
        # the user step's GGUFs when it ran (f16 and q8_0), else f16 written here
        ggufs=(); [ -d /tmp/ggufs ] && ggufs=(--ggufs /tmp/ggufs --dtypes f16 q8_0)
        step load 120 python3 scripts/bench_load_cuda.py "${ggufs[@]}" --convert-shape none \
            --paths gpt2/data/default.gguf --out "$RES/load_h200.json" 2>&1 | tail -12
    fi
    if has parity-xl; then
        step "parity gpt2-xl" 90 python3 scripts/cuda_parity.py --shapes gpt2-xl --out "$RES/xl" 2>&1 | tail -12
    fi
    if has pack; then
        stamp pack
        tar -C build/native -c lib | xz -T0 -6 | split -b 15M -d - "$OUT/native_lib.tar.xz."
        ls -la "$OUT"
    fi
    stamp end
    tar -czf "$OUT/results.tgz" -C "$RES" .
} 2>&1 | tee "$OUT/run.log"
