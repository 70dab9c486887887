#!/usr/bin/env bash
# Makes the carry-ready bundle for a GPU host that has CUDA, CMake and Python but no Rust and
# no network, and takes files in batches of at most 64 MiB (docs/BUILD.md, "GPU"):
#
#   gpu-bundle/state-pack.xz        the CLI, built for x86-64-v3 (portable across x86 hosts),
#                                   llama.cpp linked as shared libraries, stripped, xz
#   gpu-bundle/llama.cpp.tar.xz     llama.cpp's sources, to build its CUDA libraries there:
#                                   the engine's (llama-cpp-sys-2) and llama-server's
#   gpu-bundle/model.xz.part-NN     the default model, xz, in parts of 36 MiB
#   gpu-bundle/MANIFEST             SHA-256 of every file, and of the model itself
#
#   benches/gpu/bundle.sh                 # builds (cold: 20-30 min on 2 cores), then bundles
#   FEATURES=llamacpp,cuda benches/gpu/bundle.sh   # also mistral.rs on CUDA (installs the
#                                                  # CUDA 13.0 toolkit: cuda-toolkit.sh)
#   BIN=path/to/state-pack benches/gpu/bundle.sh   # bundles a binary built already
#   (BUNDLE_DIR, XZ_LEVEL, LLAMA_SERVER_SRC and MODEL override where it writes, how hard it
#   compresses, and which sources and model it takes)
#
# Then carry the parts in separate calls (`benches/gpu/host.sh stash`) and run
# `benches/gpu/host.sh build` and `bench` with the rest (the calls must follow each other: a host keeps
# stashed files only while it stays up).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="${BUNDLE_DIR:-$ROOT/gpu-bundle}"
PART_BYTES=$((36 * 1024 * 1024))
XZ="xz -${XZ_LEVEL:-9} -T0"
REGISTRY="${CARGO_HOME:-$HOME/.cargo}/registry/src"

if [ -z "${BIN:-}" ]; then
    . "$ROOT/.ci/llamacpp-env"
    FEATURES="${FEATURES:-llamacpp}"
    case ",$FEATURES," in *,cuda,*) eval "$("$ROOT/benches/gpu/cuda-toolkit.sh")" ;; esac
    export CARGO_TARGET_DIR="${GPU_TARGET_DIR:-$HOME/.cache/state-pack/target-gpu}"
    # A target-cpu=native binary holds instructions (AVX512-FP16) other x86 CPUs lack.
    LLAMA_BUILD_SHARED_LIBS=1 RUSTFLAGS='-C target-cpu=x86-64-v3' \
        cargo build --release --features "$FEATURES" --bin state-pack --manifest-path "$ROOT/Cargo.toml"
    BIN="$CARGO_TARGET_DIR/release/state-pack"
fi
[ -x "$BIN" ] || { echo "no binary at $BIN" >&2; exit 1; }

rm -rf "$OUT"
mkdir -p "$OUT"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

strip -o "$tmp/state-pack" "$BIN"
$XZ -c "$tmp/state-pack" > "$OUT/state-pack.xz"

# llama.cpp's sources: the engine's (llama-cpp-sys-2's copy) and, for the llama-server peer,
# the llama.cpp that benches/llama-server.sh builds (llama-cpp-python's sdist; the crate's
# copy has no server). Docs, models, tests and other backends left out.
ENGINE_SRC="$(ls -d "$REGISTRY"/*/llama-cpp-sys-2-0.1.161/llama.cpp | head -1)"
SERVER_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
SERVER_SRC="${LLAMA_SERVER_SRC:-$HOME/.cache/state-pack/llama-server-$SERVER_VERSION-tilecfg/llama_cpp_python-$SERVER_VERSION/vendor/llama.cpp}"
if [ ! -d "$SERVER_SRC" ]; then
    mkdir -p "$tmp/sdist"
    python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$SERVER_VERSION" -d "$tmp/sdist"
    tar xzf "$tmp/sdist"/llama_cpp_python-*.tar.gz -C "$tmp/sdist"
    SERVER_SRC="$(ls -d "$tmp"/sdist/llama_cpp_python-*/vendor/llama.cpp)"
fi
mkdir -p "$tmp/src"
cp -r "$ENGINE_SRC" "$tmp/src/engine"
cp -r "$SERVER_SRC" "$tmp/src/server"
for d in "$tmp/src/engine" "$tmp/src/server"; do
    rm -rf "$d"/docs "$d"/models "$d"/tests "$d"/examples "$d"/benches "$d"/media "$d"/tools/ui/node_modules
    for b in cann hexagon hip metal musa opencl openvino sycl vulkan webgpu zdnn zendnn kompute virtgpu; do
        rm -rf "$d/ggml/src/ggml-$b"
    done
done
cp "$ROOT/cmake/ggml-amx-tilecfg.cmake" "$tmp/src/"
tar -C "$tmp/src" -cf - . | $XZ > "$OUT/llama.cpp.tar.xz"

MODEL="${MODEL:-$HOME/.cache/state-pack/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
if [ ! -f "$MODEL" ]; then
    # The binary loads llama.cpp's shared libraries, and a CUDA build CUDA's, even to fetch
    # the model: those the build used, and the toolkit's libcuda stub under its real SONAME.
    libs="$(find "$(dirname "$BIN")" -maxdepth 6 -name 'libllama.so.0' -printf '%h:' 2>/dev/null)"
    cu="${CUDA_HOME:-${CUDA_TOOLKIT_DIR:-/opt/cu13}/nvidia/cu13}"
    if [ -f "$cu/lib/stubs/libcuda.so" ]; then
        mkdir -p "$tmp/stubs"
        ln -sf "$cu/lib/stubs/libcuda.so" "$tmp/stubs/libcuda.so.1"
        libs="$libs$cu/lib:$tmp/stubs:"
    fi
    LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:-}" "$BIN" model fetch >/dev/null
fi
$XZ -c "$MODEL" > "$tmp/model.xz"
split -b "$PART_BYTES" -d -a 2 "$tmp/model.xz" "$OUT/model.xz.part-"

(
    cd "$OUT"
    sha256sum state-pack.xz llama.cpp.tar.xz model.xz.part-*
    echo "$(sha256sum < "$MODEL" | cut -d' ' -f1)  model.gguf"
) > "$OUT/MANIFEST"
ls -l "$OUT"
