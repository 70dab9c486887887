#!/bin/bash
# issue 19, item 4 on mistral.rs (vendor patch 15): 32 agents x 20 steps x 40-token steps on
# the default engine, one request at a time, with the prefix cache's KV bounded by
# --kv-budget-mib B for each B in BUDGETS (0: no byte limit, only --hot-states, which the
# serve bench sets to 2 x clients + 2). No peer: the rows compare with each other, run back
# to back; the same loop's llama-server ratio is in ../serve-2026-12-07-split.
SP=${SP:-/root/.cache/state-pack/target/release/state-pack}
cd "$(dirname "$0")"
for B in ${BUDGETS:-0 3000 1500}; do
  FLAGS=()
  [ "$B" = 0 ] || FLAGS=(--kv-budget-mib "$B")
  OUT=serve-32-t40-s20-mistralrs-kv$B
  /usr/bin/time -v $SP "${FLAGS[@]}" bench --workload serve --clients 32 --steps 20 \
    --tokens-per-step 40 --json > $OUT.json 2> $OUT.log
  echo "$OUT rc=$? $(date)" >> runs.txt
  grep -E 'Maximum resident' $OUT.log >> runs.txt
done
echo done >> runs.txt
