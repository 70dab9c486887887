#!/usr/bin/env bash
# The replica figures of docs/DEPLOY.md ("Replicas on several machines"): three (or one)
# `state-pack serve` with llama.cpp on the default model, one Postgres (started by the test),
# one Redis, nginx; 16 agents x 20 steps through the proxy, with and without a replica
# killed (SIGKILL) mid-run. Each run writes its JSON into run-N/. Run 1 also holds the
# 16 clients x 25 operations concurrency test's JSON.
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=benches/results/replicas-postgres-2026-12-07
export CARGO_TARGET_DIR="${STATE_PACK_TARGET_DIR:-$HOME/.cache/state-pack/target}"
. .ci/llamacpp-env
runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(1 2 3)
for run in "${runs[@]}"; do
    mkdir -p "$out/run-$run"
    STATE_PACK_REPLICAS_OUT="$PWD/$out/run-$run" \
        cargo test --release --features llamacpp,testing --test postgres -- \
        --include-ignored --test-threads 1 --nocapture \
        replicas::a_replica_killed_mid_run_loses_nothing replicas::one_replica_against_three
done
