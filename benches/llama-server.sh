#!/usr/bin/env bash
# The peer for `state-pack bench --peer`: llama.cpp's own llama-server on the default model.
#
# Builds llama-server (Release, -march=native, as llama.cpp's own builds are) from the
# llama.cpp sources inside llama-cpp-python's sdist on PyPI (the package registries are the
# only network this project assumes), caches the build, and runs it in the foreground:
#
#   benches/llama-server.sh [PORT]            # first run builds it: about 6 min on 2 cores
#   benches/llama-server.sh --build-only      # builds it if missing, prints its path (.ci/run:
#                                             # the remote engine's tests start it themselves)
#   target/release/state-pack --engine llamacpp bench --steps 20 --runs 3 \
#       --peer http://127.0.0.1:8080           # in another shell
#
# Needs cmake (`. .ci/llamacpp-env` installs it from PyPI) and a C++ compiler.
set -euo pipefail

BUILD_ONLY=0
[ "${1:-}" = "--build-only" ] && { BUILD_ONLY=1; shift; }
PORT="${1:-8080}"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
# "-tilecfg": builds from before cmake/ggml-amx-tilecfg.cmake died of SIGILL on AMX CPUs.
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/state-pack/llama-server-$VERSION-tilecfg"
BIN="$CACHE/build/bin/llama-server"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

if [ ! -x "$BIN" ]; then
    mkdir -p "$CACHE"
    if ! ls "$CACHE"/llama_cpp_python-"$VERSION".tar.gz >/dev/null 2>&1; then
        echo "downloading llama-cpp-python $VERSION (sources only) ..." >&2
        python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python \
            "llama-cpp-python==$VERSION" -d "$CACHE"
    fi
    SRC="$CACHE/llama_cpp_python-$VERSION/vendor/llama.cpp"
    [ -d "$SRC" ] || tar xzf "$CACHE/llama_cpp_python-$VERSION.tar.gz" -C "$CACHE"
    echo "building llama-server in $CACHE/build ..." >&2
    # The same GCC AMX fix as state-pack's own llama.cpp build (docs/BUILD.md).
    cmake -S "$SRC" -B "$CACHE/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
        -DCMAKE_PROJECT_INCLUDE="$ROOT/cmake/ggml-amx-tilecfg.cmake" \
        -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF >/dev/null
    cmake --build "$CACHE/build" --target llama-server -j "$(nproc)" >&2
fi
if [ "$BUILD_ONLY" = 1 ]; then
    echo "$BIN"
    exit 0
fi

# The default model, as `state-pack model fetch` caches it (or any GGUF in $MODEL).
MODEL="${MODEL:-${XDG_CACHE_HOME:-$HOME/.cache}/state-pack/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
if [ ! -f "$MODEL" ]; then
    echo "no model at $MODEL: run \`state-pack model fetch\` first (from $ROOT: cargo run --release -- model fetch)" >&2
    exit 1
fi
echo "llama-server on $MODEL at http://127.0.0.1:$PORT" >&2
exec "$BIN" -m "$MODEL" --host 127.0.0.1 --port "$PORT"
