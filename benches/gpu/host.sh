#!/usr/bin/env bash
# The GPU host's half of benches/gpu/bundle.sh: it receives the bundle in calls of at most
# 64 MiB, builds llama.cpp's CUDA libraries (the engine's and llama-server) from the carried
# sources, checks that every library resolves and that the model is the pinned one, and runs
# the benchmarks, writing JSON to $OUT (default ./gpu-out).
#
#   benches/gpu/host.sh stash                 keep the carried gpu-bundle/ files in $STASH
#   benches/gpu/host.sh build [--background]  unpack and build the CUDA libraries (5-10 min)
#   benches/gpu/host.sh bench                 the benchmarks (needs the build and the model)
#   benches/gpu/host.sh big                   an 8B-shaped GGUF with random weights, and its bench
#   benches/gpu/host.sh cpu-check             the same steps with CUDA off (to try this script
#                                             on a machine without a GPU)
#
# $STASH (default /tmp/state-pack-gpu) survives between calls only while the host stays up:
# each step says what is missing and stops at once if an earlier one's files are gone.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
STASH="${STASH:-/tmp/state-pack-gpu}"
OUT="${OUT:-$PWD/gpu-out}"
BUNDLE="$ROOT/gpu-bundle"
CUDA="${GPU_CUDA:-ON}"
ARCH="${CUDA_ARCH:-90-real}"
JOBS="$(nproc)"
mkdir -p "$STASH" "$OUT"

say() { echo "host.sh: $*" >&2; }

stash() {
    local n=0
    for f in "$BUNDLE"/*; do
        [ -e "$f" ] || continue
        cp "$f" "$STASH/"
        n=$((n + 1))
    done
    say "stashed $n file(s) in $STASH: $(ls "$STASH" | tr '\n' ' ')"
}

# Every file the manifest names that is here must match it.
check_manifest() {
    [ -f "$STASH/MANIFEST" ] || { say "no MANIFEST in $STASH: stash the bundle first"; exit 3; }
    (cd "$STASH" && grep -v ' model.gguf$' MANIFEST | while read -r sum name; do
        if [ -f "$name" ]; then
            echo "$sum  $name" | sha256sum -c --quiet - || { say "$name does not match the manifest"; exit 4; }
        fi
    done)
}

need() {
    for f in "$@"; do
        [ -e "$STASH/$f" ] || { say "missing $STASH/$f (an earlier call's files are gone: the host was given back); start again from 'stash'"; exit 3; }
    done
}

unpack_model() {
    if [ -f "$STASH/model.gguf" ]; then return; fi
    local parts
    parts=$(grep -c ' model.xz.part-' "$STASH/MANIFEST")
    for p in $(seq -f '%02g' 0 $((parts - 1))); do need "model.xz.part-$p"; done
    cat "$STASH"/model.xz.part-* > "$STASH/model.xz"
    if command -v xz >/dev/null; then
        xz -dc "$STASH/model.xz" > "$STASH/model.gguf"
    else
        python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$STASH/model.xz" "$STASH/model.gguf"
    fi
    local want have
    want=$(grep ' model.gguf$' "$STASH/MANIFEST" | cut -d' ' -f1)
    have=$(sha256sum "$STASH/model.gguf" | cut -d' ' -f1)
    [ "$want" = "$have" ] || { say "the model's SHA-256 is $have, not the pinned $want"; rm -f "$STASH/model.gguf"; exit 4; }
    say "model ok: $have"
}

cmake_build() { # source dir, build dir, target, extra flags...
    local src=$1 dir=$2 target=$3
    shift 3
    local gen=()
    command -v ninja >/dev/null && gen=(-G Ninja)
    cmake -S "$src" -B "$dir" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA="$CUDA" \
        -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DGGML_CUDA_NCCL=OFF -DGGML_NATIVE=ON -DGGML_OPENMP=OFF \
        -DGGML_CCACHE=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DCMAKE_PROJECT_INCLUDE="$STASH/src/ggml-amx-tilecfg.cmake" "$@" >/dev/null
    cmake --build "$dir" --target "$target" -j "$JOBS" > "$dir.log" 2>&1 || { tail -30 "$dir.log" >&2; exit 5; }
}

build() {
    check_manifest
    need llama.cpp.tar.xz
    rm -rf "$STASH/src" && mkdir -p "$STASH/src"
    tar -C "$STASH/src" -xJf "$STASH/llama.cpp.tar.xz"
    local started=$SECONDS
    # The engine's libraries, as shared libraries with the SONAMEs the binary was linked
    # against (libllama.so.0, libggml*.so.0, libllama-common.so.0).
    cmake_build "$STASH/src/engine" "$STASH/build-engine" all -DBUILD_SHARED_LIBS=ON \
        -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF
    say "engine libraries built in $((SECONDS - started)) s"
    cmake_build "$STASH/src/server" "$STASH/build-server" llama-server -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON
    say "llama-server built in $((SECONDS - started)) s"
    touch "$STASH/built"
}

libs() { find "$STASH/build-engine" -name '*.so*' -printf '%h\n' | sort -u | tr '\n' ':'; }

binary() {
    check_manifest
    need state-pack.xz built
    if [ ! -x "$STASH/state-pack" ]; then
        xz -dc "$STASH/state-pack.xz" > "$STASH/state-pack" && chmod +x "$STASH/state-pack"
    fi
    export LD_LIBRARY_PATH="$(libs)${LD_LIBRARY_PATH:-}"
    if ldd "$STASH/state-pack" | grep 'not found'; then
        say "a library the binary needs is not resolved (above)"
        exit 6
    fi
    ldd "$STASH/state-pack" > "$OUT/ldd.txt"
}

machine() {
    { nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true; } > "$OUT/nvidia-smi.csv" 2>&1
    { nvidia-smi || true; } > "$OUT/nvidia-smi.txt" 2>&1
    { lscpu || true; } > "$OUT/lscpu.txt"
    { nvcc --version || true; } > "$OUT/nvcc.txt" 2>&1
}

sp() { "$STASH/state-pack" --key "$STASH/key.pem" "$@"; }

server_up() { # model, port, log
    "$STASH/build-server/bin/llama-server" -m "$1" --host 127.0.0.1 --port "$2" -ngl 999 \
        ${GPU_CUDA_OFF:+-ngl 0} > "$3" 2>&1 &
    echo $! > "$STASH/server.pid"
    for _ in $(seq 1 120); do
        curl -sf "http://127.0.0.1:$2/health" >/dev/null 2>&1 && return 0
        sleep 1
    done
    say "llama-server did not come up: $(tail -5 "$3")"
    exit 7
}

server_down() { kill "$(cat "$STASH/server.pid")" 2>/dev/null || true; wait 2>/dev/null || true; }

bench() {
    unpack_model
    binary
    machine
    local m="$STASH/model.gguf" dev="cuda:0"
    [ "$CUDA" = ON ] || dev=cpu
    # The layers really are on the GPU: llama.cpp says so while loading.
    RUST_LOG=info sp --engine llamacpp --device "$dev" --model "$m" run --steps 2 --db "$STASH/probe.db" \
        > "$OUT/probe.txt" 2>&1 || { tail -20 "$OUT/probe.txt" >&2; exit 8; }
    grep -i "offload" "$OUT/probe.txt" | head -5 >&2 || true
    server_up "$m" 8089 "$OUT/llama-server.log"
    sp --engine llamacpp --device "$dev" --model "$m" bench --steps 20 --runs 3 \
        --peer http://127.0.0.1:8089 --json > "$OUT/demo-llamacpp-gpu.json"
    server_down
    sp --engine llamacpp --device "$dev" --model "$m" bench --workload restore --runs 5 --json \
        > "$OUT/restore-llamacpp-gpu.json"
    sp --engine llamacpp --device "$dev" --model "$m" bench --workload agent --steps 8 --runs 3 --json \
        > "$OUT/agent-llamacpp-gpu.json"
    for c in 1 32; do
        sp --engine llamacpp --device "$dev" --model "$m" bench --workload serve --clients "$c" --steps 20 --json \
            > "$OUT/serve-$c-llamacpp-gpu.json"
    done
    # The same binary with the GPU hidden: the same host's CPU cores.
    CUDA_VISIBLE_DEVICES= sp --engine llamacpp --device cpu --model "$m" bench --steps 20 --runs 3 --json \
        > "$OUT/demo-llamacpp-cpu16.json"
    say "benchmarks written to $OUT"
}

big() {
    binary
    need src/server/gguf-py
    unpack_model
    if [ ! -f "$STASH/random-8b.gguf" ]; then
        PYTHONPATH="$STASH/src/server/gguf-py" python3 "$ROOT/benches/gpu/random_model.py" \
            "$STASH/model.gguf" "$STASH/random-8b.gguf"
    fi
    sp --engine llamacpp --device cuda:0 --model "$STASH/random-8b.gguf" bench --steps 10 --runs 2 --json \
        > "$OUT/demo-llamacpp-gpu-random8b.json"
    say "8B-shaped (random weights) benchmark written to $OUT"
}

case "${1:-}" in
    stash) stash ;;
    build)
        if [ "${2:-}" = --background ]; then
            nohup "$0" build > "$STASH/build.log" 2>&1 &
            say "building in the background: $STASH/build.log"
        else
            build
        fi
        ;;
    wait-build)
        for _ in $(seq 1 "${2:-540}"); do
            [ -f "$STASH/built" ] && { say "build done"; exit 0; }
            sleep 1
        done
        say "build not done: $(tail -3 "$STASH/build.log" 2>/dev/null)"
        exit 9
        ;;
    bench) bench ;;
    big) big ;;
    cpu-check) CUDA=OFF GPU_CUDA_OFF=1 build && CUDA=OFF GPU_CUDA_OFF=1 bench ;;
    *) sed -n '2,17p' "$0"; exit 2 ;;
esac
