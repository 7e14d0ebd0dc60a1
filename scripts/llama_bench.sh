#!/usr/bin/env bash
# Build llama.cpp's llama-bench from the pinned source and run it on GGUF files, for a
# comparison with our engine on the same files in the same GPU call (issue 12).
#
#   LLAMA_SRC=.device/llama_cpp_src.tar.xz OUT=DIR bash scripts/llama_bench.sh A.gguf [B.gguf ...]
#   bash scripts/llama_bench.sh --build-only   (build llama-bench and stop: start the five
#   minutes of building early, in the background, while the GGUFs are written)
#
# LLAMA_SRC: the tarball scripts/llama_cpp_source.py writes (default as above).
# LLAMA_BUILD: build folder (default /tmp/llama_build); a llama-bench already built there
#   is reused. LLAMA_CUDA: ON (default) or OFF (a CPU build, to check this script).
# LLAMA_BENCH_ARGS: llama-bench's arguments besides -m and -o
#   (default: -ngl 99 -fa 1 -p 1024 -n 128 -r 5). OUT: default build/llama_bench.
# Writes $OUT/llama_bench.json (a list: llama-bench's JSON rows of every model, each with
# the pinned source added) and $OUT/llama_bench.log (the build's tail, llama-bench's
# markdown tables and its messages).
set -euo pipefail
if [ $# -lt 1 ]; then
    sed -n '2,16p' "$0" >&2
    exit 2
fi
SRC_TAR=${LLAMA_SRC:-.device/llama_cpp_src.tar.xz}
BUILD=${LLAMA_BUILD:-/tmp/llama_build}
OUT=${OUT:-$PWD/build/llama_bench}
read -r -a BENCH_ARGS <<< "${LLAMA_BENCH_ARGS:--ngl 99 -fa 1 -p 1024 -n 128 -r 5}"
BENCH=$BUILD/bin/llama-bench
BUILD_ONLY=0
if [ "$1" = --build-only ]; then BUILD_ONLY=1; shift; fi
LOG=$OUT/llama_bench.log
mkdir -p "$OUT"
: > "$LOG"

SRC=$BUILD.src  # unpacked next to the build, outside any checkout
if [ -x "$BENCH" ]; then
    echo "llama_bench: reusing $BENCH" | tee -a "$LOG"
else
    echo "llama_bench: building llama-bench from $SRC_TAR (LLAMA_CUDA=${LLAMA_CUDA:-ON})"
    rm -rf "$SRC" && mkdir -p "$SRC"
    xz -dc "$SRC_TAR" | tar -x -C "$SRC"
    # the source has no .git: keep cmake's `git rev-parse` from finding an enclosing repository
    export GIT_CEILING_DIRECTORIES=$SRC
    # what llama-bench reports as its build_commit: the pinned source it came from
    from=$(sed -n 's/^package=//p; s/^version=/-/p' "$SRC/llama.cpp/.tinynn-pin" | tr -d '\n')
    start=$SECONDS
    if ! { cmake -S "$SRC/llama.cpp" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DGGML_CUDA="${LLAMA_CUDA:-ON}" -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF \
        -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_COMMIT="$from" &&
        cmake --build "$BUILD" --target llama-bench -j "$(nproc)"; } > "$BUILD.log" 2>&1; then
        tail -40 "$BUILD.log" | tee -a "$LOG"
        echo "llama_bench: build failed (full log: $BUILD.log)" | tee -a "$LOG"
        exit 1
    fi
    tail -2 "$BUILD.log" >> "$LOG"
    echo "llama_bench: built in $((SECONDS - start)) s" | tee -a "$LOG"
fi

if [ $BUILD_ONLY = 1 ]; then exit 0; fi

# one run per model: JSON rows on stdout, the markdown table on stderr (into the log)
shopt -s nullglob  # no model's rows: an empty list
rows=$(mktemp -d)
status=0
i=0
for model in "$@"; do
    i=$((i + 1))
    echo "== $model: llama-bench ${BENCH_ARGS[*]}" | tee -a "$LOG"
    if ! "$BENCH" -m "$model" "${BENCH_ARGS[@]}" -o json -oe md > "$rows/$i.json" 2>> "$LOG"; then
        echo "llama_bench: llama-bench failed on $model" | tee -a "$LOG"
        rm -f "$rows/$i.json"
        status=1
    fi
done
grep '^|' "$LOG" || true  # the tables, for the caller's output

# the rows of every model in one list, each naming the source it was built from
pin=$(cat "$SRC/llama.cpp/.tinynn-pin" 2>/dev/null || true)
python3 - "$OUT/llama_bench.json" "$pin" "$rows"/*.json <<'EOF'
import json, sys
out, pin, files = sys.argv[1], sys.argv[2], sys.argv[3:]
source = dict(line.split("=", 1) for line in pin.split())
rows = [{**row, "source": source} for f in files for row in json.load(open(f))]
json.dump(rows, open(out, "w"), indent=1)
print(f"llama_bench: {len(rows)} rows -> {out}")
EOF
rm -rf "$rows"
exit $status
