#!/usr/bin/env bash
# The GPU host's half of benches/gpu/bundle.sh: it receives the bundle in calls of at most
# 64 MiB, builds llama.cpp's CUDA libraries (the engine's, and llama-server) from the carried
# sources, checks that every library resolves and that the model is the pinned one, and runs
# the benchmarks, writing JSON to $OUT (default ./gpu-out).
#
#   benches/gpu/host.sh stash          keep the carried gpu-bundle/ files in $STASH
#   benches/gpu/host.sh build          unpack, build the engine's CUDA libraries (about 5 min
#                                      on 16 cores; run again to resume where it stopped)
#   benches/gpu/host.sh build-server   build llama-server with CUDA (about 5 min; optional:
#                                      without it the benchmarks have no llama-server arm)
#   benches/gpu/host.sh bench          the benchmarks (needs the build and the model)
#   benches/gpu/host.sh big            an 8B-shaped GGUF with random weights, and its bench
#   benches/gpu/host.sh cpu-check      the same steps with CUDA off (to try this script on a
#                                      machine without a GPU)
#   ONLY="demo-gpu ..." host.sh bench   only the measurements named (see `measure` below)
#
# Every step runs in the foreground: a host may end a call's processes when the call ends
# (the device service this was first run on does), so each must finish within one call.
# Every measurement writes NAME.json and NAME.log and a line in runs.txt; one that fails is
# recorded there and the rest still run. Results are copied to $OUT as the step ends, even
# when it is stopped (e.g. by `timeout`).
#
# $STASH (default /tmp/state-pack-gpu) survives between calls only while the host stays up:
# each step says what is missing and stops at once if an earlier one's files are gone.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
STASH="${STASH:-/tmp/state-pack-gpu}"
# Results are written in the stash and copied to $OUT when a step ends.
RESULTS="$STASH/out"
OUT="${OUT:-$PWD/gpu-out}"
BUNDLE="$ROOT/gpu-bundle"
CUDA="${GPU_CUDA:-ON}"
ARCH="${CUDA_ARCH:-90-real}"
JOBS="$(nproc)"
mkdir -p "$STASH" "$RESULTS" "$OUT"

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

unpack_sources() {
    check_manifest
    need llama.cpp.tar.xz
    if [ ! -f "$STASH/src/.unpacked" ]; then
        rm -rf "$STASH/src" && mkdir -p "$STASH/src"
        tar -C "$STASH/src" -xJf "$STASH/llama.cpp.tar.xz"
        touch "$STASH/src/.unpacked"
    fi
}

build() {
    unpack_sources
    local started=$SECONDS
    # The engine's libraries, as shared libraries with the SONAMEs the binary was linked
    # against (libllama.so.0, libggml*.so.0, libllama-common.so.0).
    cmake_build "$STASH/src/engine" "$STASH/build-engine" all -DBUILD_SHARED_LIBS=ON \
        -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_APP=OFF
    say "engine libraries built in $((SECONDS - started)) s"
    touch "$STASH/built"
}

build_server() {
    unpack_sources
    local started=$SECONDS
    cmake_build "$STASH/src/server" "$STASH/build-server" llama-server -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON
    say "llama-server built in $((SECONDS - started)) s"
}

copy_out() {
    cp -r "$RESULTS"/. "$OUT"/ 2>/dev/null || true
}

libs() { find "$STASH/build-engine" -name '*.so*' -printf '%h\n' | sort -u | tr '\n' ':'; }

# CUDA's runtime libraries for mistral.rs (cudart, cuBLAS, cuRAND, NVRTC): the host's
# PyTorch wheels have them (nvidia/cu13/lib), or a system toolkit does.
cuda_libs() {
    python3 -c 'import nvidia, os
print(":".join(d for p in nvidia.__path__ for d in (os.path.join(p, "cu13", "lib"),) if os.path.isdir(d)))' 2>/dev/null || true
}

binary() {
    check_manifest
    need state-pack.xz built
    if [ ! -x "$STASH/state-pack" ]; then
        xz -dc "$STASH/state-pack.xz" > "$STASH/state-pack" && chmod +x "$STASH/state-pack"
    fi
    export LD_LIBRARY_PATH="$(libs)$(cuda_libs):${LD_LIBRARY_PATH:-}"
    if ldd "$STASH/state-pack" | grep 'not found'; then
        say "a library the binary needs is not resolved (above)"
        exit 6
    fi
    ldd "$STASH/state-pack" > "$RESULTS/ldd.txt"
}

machine() {
    { nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true; } > "$RESULTS/nvidia-smi.csv" 2>&1
    { nvidia-smi || true; } > "$RESULTS/nvidia-smi.txt" 2>&1
    { lscpu || true; } > "$RESULTS/lscpu.txt"
    { nvcc --version || true; } > "$RESULTS/nvcc.txt" 2>&1
    "$STASH/state-pack" --version > "$RESULTS/version.txt" 2>&1 || true
}

sp() { "$STASH/state-pack" --key "$STASH/key.pem" "$@"; }

# One measurement: its JSON in $RESULTS/NAME.json, its stderr in NAME.log, and a line in
# runs.txt; a failure is recorded and the next measurement still runs.
measure() {
    local name=$1 started=$SECONDS rc=0
    shift
    if ! wanted "$name"; then say "$name: measured already (runs.txt) or not in ONLY, skipped"; return; fi
    say "measuring $name"
    "$@" > "$RESULTS/$name.json" 2> "$RESULTS/$name.log" || rc=$?
    echo "$name rc=$rc $((SECONDS - started))s $*" >> "$RESULTS/runs.txt"
    [ "$rc" = 0 ] || say "$name failed ($rc): $(tail -3 "$RESULTS/$name.log")"
}

# A measurement that succeeded in an earlier call is not repeated: a step stopped by a call's
# time limit resumes where it stopped when run again.
measured() { grep -q "^$1 rc=0 " "$RESULTS/runs.txt" 2>/dev/null; }

# Whether `measure NAME` would run: not measured yet, and in ONLY if that is set
# (ONLY="name ..." runs just those measurements, for a short device budget). A peer server
# is started only for a measurement that will run.
wanted() { ! measured "$1" && { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }; }

server_up() { # model, port, log, gpu layers, more llama-server arguments...
    [ -x "$STASH/build-server/bin/llama-server" ] || { say "no llama-server built: no peer arm"; return 7; }
    local model=$1 port=$2 log=$3 ngl=$4
    shift 4
    "$STASH/build-server/bin/llama-server" -m "$model" --host 127.0.0.1 --port "$port" -ngl "$ngl" "$@" \
        > "$log" 2>&1 &
    echo $! > "$STASH/server.pid"
    for _ in $(seq 1 300); do
        curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && return 0
        sleep 1
    done
    say "llama-server did not come up: $(tail -5 "$log")"
    return 7
}

server_down() { kill "$(cat "$STASH/server.pid")" 2>/dev/null || true; sleep 2; }

# The layers really are on the GPU: each engine says so while loading.
probe() { # engine, device, model
    [ -s "$RESULTS/probe-$1-$2.txt" ] && return
    RUST_LOG=info sp --engine "$1" --device "$2" --model "$3" run --steps 2 --db "$STASH/probe-$1.db" \
        > "$RESULTS/probe-$1-$2.txt" 2>&1 || say "probe of $1 on $2 failed: $(tail -5 "$RESULTS/probe-$1-$2.txt")"
    grep -iE "offload|cuda|device" "$RESULTS/probe-$1-$2.txt" | head -8 >&2 || true
}

bench() {
    unpack_model
    binary
    machine
    local m="$STASH/model.gguf" dev="cuda:0" ngl=999 peer="http://127.0.0.1:8089"
    [ "$CUDA" = ON ] || { dev=cpu; ngl=0; }
    probe llamacpp "$dev" "$m"
    probe mistralrs "$dev" "$m"
    # Naive vs state-pack on each engine, and llama-server, in the same runs (4 runs: the
    # first includes CUDA graph capture and PTX JIT, the summary leaves it out).
    local with_peer=()
    measured demo-gpu && measured demo-ctx4k-gpu ||
        { server_up "$m" 8089 "$RESULTS/llama-server.log" "$ngl" && with_peer=(--peer "$peer"); }
    measure demo-gpu sp --device "$dev" --model "$m" bench --compare-engines --steps 20 --runs 4 "${with_peer[@]}" --json
    measure demo-ctx4k-gpu sp --device "$dev" --model "$m" bench --compare-engines --context-tokens 4000 --steps 10 --runs 4 "${with_peer[@]}" --json
    server_down
    # mistral.rs on the file's own Q4_1 weights (candle has CUDA kernels for them), bf16.
    measure demo-mistralrs-q41-bf16-gpu sp --engine mistralrs --requantize-q8 false --dtype bf16 --device "$dev" --model "$m" bench --steps 20 --runs 4 --json
    measure restore-llamacpp-gpu sp --engine llamacpp --device "$dev" --model "$m" bench --workload restore --state-tokens 4000 --runs 5 --json
    measure agent-gpu sp --device "$dev" --model "$m" bench --compare-engines --workload agent --steps 8 --runs 3 --json
    for c in 1 32; do
        for e in llamacpp mistralrs; do
            measure "serve-$c-$e-gpu" sp --engine "$e" --device "$dev" --model "$m" bench --workload serve --clients "$c" --steps 10 --json
        done
    done
    # The serve workload against llama-server -np C (continuous batching, one unified pool of
    # 1,500 MiB of this model's cells on both sides), the same clients and loop, 20 steps of
    # the demo's 8 tokens.
    for c in 1 32; do
        local name="serve-$c-t8-peer-llamacpp-gpu"
        wanted "$name" || continue
        with_peer=()
        server_up "$m" 8091 "$RESULTS/ls-np$c.log" "$ngl" -np "$c" -c 68266 -kvu && with_peer=(--peer http://127.0.0.1:8091)
        measure "$name" sp --engine llamacpp --device "$dev" --model "$m" --kv-budget-mib 1500 bench --workload serve \
            --clients "$c" --steps 20 --tokens-per-step 8 "${with_peer[@]}" --json
        server_down
    done
    # The same binary and libraries with the GPU hidden: this host's CPU cores.
    if [ "$CUDA" = ON ]; then
        export CUDA_VISIBLE_DEVICES=
        with_peer=()
        # One engine at a time: mistral.rs's naive arm on CPU takes minutes a run, so it
        # gets fewer steps and cannot hold up llama.cpp's figures.
        if wanted demo-cpu-llamacpp || wanted demo-cpu-llamacpp-pool; then
            server_up "$m" 8089 "$RESULTS/llama-server-cpu.log" 0 && with_peer=(--peer "$peer")
        fi
        measure demo-cpu-llamacpp sp --engine llamacpp --device cpu --model "$m" bench --steps 10 --runs 3 "${with_peer[@]}" --json
        # With one persistent thread pool, as llama-server has (PERFORMANCE.md section 8.3).
        measure demo-cpu-llamacpp-pool sp --engine llamacpp --device cpu --thread-pool --model "$m" bench --steps 10 --runs 3 "${with_peer[@]}" --json
        server_down
        measure demo-cpu-mistralrs sp --engine mistralrs --device cpu --model "$m" bench --steps 8 --runs 3 --json
        unset CUDA_VISIBLE_DEVICES
    fi
    say "benchmarks written to $RESULTS"
}

big() {
    binary
    need src/server/gguf-py
    unpack_model
    if [ ! -f "$STASH/random-8b.gguf" ]; then
        PYTHONPATH="$STASH/src/server/gguf-py" python3 "$ROOT/benches/gpu/random_model.py" \
            "$STASH/model.gguf" "$STASH/random-8b.gguf"
    fi
    local m="$STASH/random-8b.gguf" peer="http://127.0.0.1:8090"
    probe llamacpp cuda:0 "$m"
    # Its outputs are meaningless (random weights); only its timings count.
    local with_peer=()
    measured demo-ctx4k-random8b-llamacpp-gpu ||
        { server_up "$m" 8090 "$RESULTS/llama-server-8b.log" 999 && with_peer=(--peer "$peer"); }
    measure demo-ctx4k-random8b-llamacpp-gpu sp --engine llamacpp --device cuda:0 --model "$m" bench --context-tokens 4000 --steps 10 --runs 3 "${with_peer[@]}" --json
    server_down
    # One more run with the pack's debug events: what each step's KV export and its SHA-256
    # took, and llama.cpp's own clocks and graph reuse (its figures are not the tables').
    RUST_LOG=warn,state_pack_core=debug measure debug-random8b-llamacpp-gpu sp --engine llamacpp --device cuda:0 --model "$m" bench --context-tokens 4000 --steps 10 --runs 1 --json
    measure demo-ctx4k-random8b-mistralrs-gpu sp --engine mistralrs --device cuda:0 --dtype bf16 --requantize-q8 false --model "$m" bench --context-tokens 4000 --steps 10 --runs 3 --json
    say "8B-shaped (random weights) benchmarks written to $RESULTS"
}

case "${1:-}" in
    stash) stash ;;
    build) build ;;
    build-server) build_server ;;
    bench | big)
        trap copy_out EXIT
        trap 'exit 143' TERM INT
        if [ "$1" = bench ]; then bench; else big; fi
        ;;
    cpu-check)
        trap copy_out EXIT
        CUDA=OFF build && CUDA=OFF build_server && CUDA=OFF bench
        ;;
    *) sed -n '2,/^set -euo/p' "$0" | grep '^#'; exit 2 ;;
esac
