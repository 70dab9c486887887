#!/usr/bin/env bash
# Restore vs re-prefill of a cold 4,000-token state on llama.cpp, the blob kept beside the
# database and in Redis (same machine), in one run; then the blob tiers' own cost.
set -euo pipefail
cd "$(dirname "$0")/../../.."
B="${CARGO_TARGET_DIR:-target}/release/state-pack"
OUT="$(dirname "$0")"
port=6411
redis-server --port $port --bind 127.0.0.1 --save '' --appendonly no --daemonize yes > /dev/null
trap 'redis-cli -p $port shutdown nosave > /dev/null 2>&1 || true' EXIT
"$B" --engine llamacpp bench --workload restore --state-tokens 4000 --runs 3 --json > "$OUT/restore-dir.json"
"$B" --engine llamacpp --kv "redis://127.0.0.1:$port/" bench --workload restore --state-tokens 4000 --runs 3 --json > "$OUT/restore-redis.json"
lscpu | grep 'Model name' > "$OUT/cpu.txt"
cargo bench --features llamacpp,testing --bench kv_blobs 2>&1 | grep -E '^kv_blob|time:   \[|thrpt:  \[' | grep -v '%\]' > "$OUT/kv_blobs-bench.txt"
