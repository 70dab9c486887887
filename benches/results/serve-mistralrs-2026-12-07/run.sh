#!/bin/bash
# issue 19 serve measurements, mistral.rs engine: state-pack vs llama-server -np C, same clients.
M=/root/.cache/state-pack/models/SmolLM2-135M-Instruct.Q4_1.gguf
LS=/root/.cache/state-pack/llama-server-0.3.36-tilecfg/build/bin/llama-server
SP=/root/.cache/state-pack/target/release/state-pack
CELLS=50062   # the pool the llama.cpp rows used (1100 MiB of this model's f16 KV)
cd "$(dirname "$0")"
for CT in "1 8" "8 8" "1 40" "8 40" "32 8"; do
  set -- $CT; C=$1; T=$2
  $LS -m $M --host 127.0.0.1 --port 8096 -np $C -c $CELLS -kvu > ls-$C-$T.log 2>&1 &
  pid=$!
  for i in $(seq 120); do curl -sf http://127.0.0.1:8096/health >/dev/null && break; sleep 1; done
  /usr/bin/time -v $SP bench --workload serve --clients $C --steps 20 --tokens-per-step $T --peer http://127.0.0.1:8096 --json > serve-$C-t$T-mistralrs.json 2> serve-$C-t$T-mistralrs.log
  echo "C=$C T=$T rc=$? $(date)" >> runs.txt
  grep -E 'Maximum resident' serve-$C-t$T-mistralrs.log >> runs.txt
  ps -o rss= -p $pid >> runs.txt
  kill $pid; sleep 2
done
echo done >> runs.txt
