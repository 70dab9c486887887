#!/usr/bin/env bash
# The remote engine beside the in-process llama.cpp engine, in one run (docs/REMOTE.md).
# llama-server as benches/llama-server.sh builds it, on the default model, one slot, 2 threads.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
BIN="${BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/state-pack/target}/release/state-pack}"
SERVER="$("$ROOT/benches/llama-server.sh" --build-only)"
MODEL="$HOME/.cache/state-pack/models/SmolLM2-135M-Instruct.Q4_1.gguf"
"$SERVER" -m "$MODEL" --host 127.0.0.1 --port 8181 -np 1 -t 2 >/dev/null 2>&1 &
trap 'kill $!' EXIT
until curl -sf http://127.0.0.1:8181/health >/dev/null; do sleep 0.2; done
"$BIN" --engine remote --remote-url http://127.0.0.1:8181 \
    bench --compare-engines --steps 20 --runs 3 --json > "$(dirname "$0")/bench-compare.json"
