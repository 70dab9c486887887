#!/bin/bash
# issue 19 serve measurements, mistral.rs engine after vendor patch 14 (CPU attention): state-pack vs llama-server -np C, same clients.
M=/root/.cache/state-pack/models/SmolLM2-135M-Instruct.Q4_1.gguf
LS=/root/.cache/state-pack/llama-server-0.3.36-tilecfg/build/bin/llama-server
SP=${SP:-/root/.cache/state-pack/target/release/state-pack}
CELLS=50062   # the pool the llama.cpp rows used (1100 MiB of this model's f16 KV)
cd "$(dirname "$0")"
# ROWS="C,T ..." picks rows; RUN=-rN names a repeat run's files.
for CT in ${ROWS:-1,8 1,40 8,8 8,40}; do
  C=${CT%,*}; T=${CT#*,}
  $LS -m $M --host 127.0.0.1 --port 8096 -np $C -c $CELLS -kvu > ls-$C-$T.log 2>&1 &
  pid=$!
  for i in $(seq 120); do curl -sf http://127.0.0.1:8096/health >/dev/null && break; sleep 1; done
  /usr/bin/time -v $SP bench --workload serve --clients $C --steps 20 --tokens-per-step $T --peer http://127.0.0.1:8096 --json > serve-$C-t$T-mistralrs$RUN.json 2> serve-$C-t$T-mistralrs$RUN.log
  echo "C=$C T=$T$RUN rc=$? $(date)" >> runs.txt
  grep -E 'Maximum resident' serve-$C-t$T-mistralrs$RUN.log >> runs.txt
  ps -o rss= -p $pid >> runs.txt
  kill $pid; sleep 2
done
echo done >> runs.txt
