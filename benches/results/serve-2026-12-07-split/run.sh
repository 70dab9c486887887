#!/bin/bash
# issue 19 (after 6fc878e: prompt chunks and decode tokens take turns on the CPU), STEPS=N
# steps a client (default 20).
# state-pack's server against llama-server -np C driven by the same clients (one
# invocation per row: the two arms run back to back), for
#   - 32 agents writing 40-token steps, on both engines;
#   - mistral.rs batching several requests (--mistralrs-sequences S) against one at a time.
# Both sides get the same KV pool, larger than the earlier rows' 1,100 MiB: 32 agents of this
# loop reach ~1,700 tokens each, ~54,000 in all, which overflowed llama-server's 50,062 cells.
#
# ROWS="ENGINE,C,T[,S] ..." picks rows: ENGINE llamacpp or mistralrs, C clients, T tokens a
# step, S mistral.rs sequences at once (default 1). NOPEER=1 leaves llama-server out;
# RUN=-rN names a repeat run's files.
M=/root/.cache/state-pack/models/SmolLM2-135M-Instruct.Q4_1.gguf
LS=/root/.cache/state-pack/llama-server-0.3.36-tilecfg/build/bin/llama-server
SP=${SP:-/root/.cache/state-pack/target/release/state-pack}
MIB=1500
CELLS=68266   # 1500 MiB of this model's f16 KV (23,040 bytes a token)
cd "$(dirname "$0")"
for ROW in ${ROWS:-llamacpp,32,40 mistralrs,32,40}; do
  IFS=, read -r E C T S <<< "$ROW"
  S=${S:-1}
  case $E in
    llamacpp) FLAGS="--engine llamacpp --kv-budget-mib $MIB"; NAME=$E ;;
    mistralrs) FLAGS="--mistralrs-sequences $S"; NAME=$E-s$S ;;
  esac
  PEER=()
  if [ -z "$NOPEER" ]; then
    $LS -m $M --host 127.0.0.1 --port 8096 -np $C -c $CELLS -kvu > ls-$C-$T.log 2>&1 &
    pid=$!
    for i in $(seq 120); do curl -sf http://127.0.0.1:8096/health >/dev/null && break; sleep 1; done
    PEER=(--peer http://127.0.0.1:8096)
  fi
  OUT=serve-$C-t$T-s${STEPS:-20}-$NAME$RUN
  /usr/bin/time -v $SP $FLAGS bench --workload serve --clients $C --steps ${STEPS:-20} --tokens-per-step $T \
    "${PEER[@]}" --json > $OUT.json 2> $OUT.log
  echo "$OUT rc=$? $(date)" >> runs.txt
  grep -E 'Maximum resident' $OUT.log >> runs.txt
  if [ -z "$NOPEER" ]; then ps -o rss= -p $pid >> runs.txt; kill $pid; sleep 2; fi
done
echo done >> runs.txt
