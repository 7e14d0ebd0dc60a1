#!/usr/bin/env bash
# The users' route to CUDA, checked on a GPU machine without network: build a
# wheel with ggml's CUDA backend the way the README says (CMAKE_ARGS through
# pip), install it into a fresh virtual environment, and run the CUDA tests
# (required, not skipped) from outside the checkout, against the INSTALLED
# package and the library installed beside it.
#
#   OUT=... bash scripts/gpu_wheel.sh [pytest paths, default: those of gpu_run.sh's tests]
#
# Run from the repository root. Needs third_party/ggml (carried: there is no
# network to fetch it), nvcc, cmake and ninja; the venv sees the machine's
# python3 packages (torch, numpy). Wheels of missing Python packages
# (scikit-build-core and its dependencies, gguf, pytest, ...) may sit in .whl/.
# Results in $OUT (default build/gpu_out): run.log, wheel.log (the whole
# build), tests.log, and native_lib.tar.xz.* (the installed libtinynn.so and
# libggml*.so in lib/, xz in 15 MB parts: reuse them as scripts/gpu_run.sh's
# header says).
set -uo pipefail
OUT=${OUT:-$PWD/build/gpu_out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)  # absolute: the tests run elsewhere
WORK=$(mktemp -d)
VENV=$WORK/venv PY=$WORK/venv/bin/python
mkdir -p "$WORK/wheel" "$WORK/pack/lib"
if [ $# -eq 0 ]; then
    set -- tests/tinynn tests/gpt2/test_engines.py tests/gpt2/test_exact_attention.py \
        tests/reliability/test_resources.py
fi
export PYTHONUNBUFFERED=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
stamp() { echo "== $(date -u +%H:%M:%S) (${SECONDS}s) $*"; }

{
    stamp machine
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    nvcc --version | tail -1
    cmake --version | head -1
    if [ ! -f third_party/ggml/CMakeLists.txt ]; then
        echo "third_party/ggml is missing: carry it (no network here to fetch it)"; exit 1
    fi
    stamp "venv (system site packages)"
    python3 -m venv --system-site-packages "$VENV" || exit 1
    # the machine's packages (torch, numpy, pytest) may sit in a user or extra site
    # directory that a venv does not see: list them after the venv's own
    python3 -c 'import sys; print("\n".join(p for p in sys.path if p.endswith(("site-packages", "dist-packages"))))' \
        > "$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/machine.pth"
    if ls .whl/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-deps .whl/*.whl || echo "(some wheels of .whl/ did not install)"
    fi
    # no build isolation (it would download the build requirements): the backend must be here
    "$PY" -c "import scikit_build_core; print('scikit-build-core', scikit_build_core.__version__)" ||
        { echo "scikit-build-core is missing: put its wheel (and pathspec's) in .whl/"; exit 1; }
    # a fresh build folder: build/wheel may hold an earlier build's libraries, which the
    # install step would copy into the wheel too
    stamp "wheel with CUDA"
    CMAKE_ARGS="-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DTINYNN_CPU_ALL_VARIANTS=OFF" \
        "$PY" -m pip wheel -v --no-build-isolation --no-deps -C build-dir="$WORK/build" . \
        -w "$WORK/wheel" > "$OUT/wheel.log" 2>&1
    status=$?
    tail -3 "$OUT/wheel.log"
    if [ $status -ne 0 ]; then tail -60 "$OUT/wheel.log"; exit 1; fi
    ls -la "$WORK/wheel"
    "$PY" -m pip install -q --no-deps "$WORK"/wheel/*.whl || exit 1
    "$PY" -m pip check || echo "(missing dependencies above: add their wheels to .whl/)"

    # packed before the tests: a call cut short by its time limit still returns them
    stamp pack
    lib_dir=$(cd "$WORK" && env -u PYTHONPATH "$PY" -c \
        "import pathlib, tinynn; print(pathlib.Path(tinynn.__file__).parent)")
    cp "$lib_dir"/libggml*.so "$lib_dir"/libtinynn.so "$WORK/pack/lib/"
    tar -C "$WORK/pack" -c lib | xz -T0 -6 | split -b 15M -d - "$OUT/native_lib.tar.xz."
    ls -la "$OUT"
    # the tests, copied away from the checkout (relative paths now name the
    # copies), import the installed tinynn and gpt2
    stamp "CUDA tests against the installed package"
    cp -r tests pyproject.toml "$WORK/"
    (
        cd "$WORK" && unset PYTHONPATH || exit 1
        "$PY" -c "import pathlib, tinynn, gpt2
print('tinynn', tinynn.__file__, 'gpt2', gpt2.__file__)
print('library', tinynn.library_path())
print('cuda:', tinynn.cuda_unavailable_reason() or 'available')
here = pathlib.Path(tinynn.__file__).resolve().parent
assert pathlib.Path(tinynn.library_path()).resolve().parent == here, 'not the installed library'"
        # Ray's tests hold no CUDA case and Ray is not on the GPU machine: leave them out
        # there rather than lose the whole run to one collection error
        skip=()
        "$PY" -c "import ray" 2>/dev/null || { skip=(--ignore=tests/gpt2/test_ray_serve.py);
            echo "ray is not installed: tests/gpt2/test_ray_serve.py left out"; }
        TINYNN_REQUIRE_CUDA=1 timeout "${TESTS_SECONDS:-400}" "$PY" -m pytest "$@" "${skip[@]}" -v -k cuda \
            -p no:cacheprovider --continue-on-collection-errors -o addopts="" -rA 2>&1 | tee "$OUT/tests.log" | tail -30
        echo "-- tests exit ${PIPESTATUS[0]}"
    )

    stamp end
} 2>&1 | tee "$OUT/run.log"
