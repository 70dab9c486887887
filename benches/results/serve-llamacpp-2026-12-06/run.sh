#!/bin/bash
# issue 19 serve measurements: state-pack (llama.cpp) vs llama-server -np C, same clients.
M=/root/.cache/state-pack/models/SmolLM2-135M-Instruct.Q4_1.gguf
LS=/root/.cache/state-pack/llama-server-0.3.36-tilecfg/build/bin/llama-server
SP=/root/.cache/state-pack/target/release/state-pack
CELLS=50062   # 1100 MiB of this model's f16 KV (23,040 bytes a token)
cd /tmp/serve19
for C in 1 8 32; do
  for T in 8 40; do
    $LS -m $M --host 127.0.0.1 --port 8096 -np $C -c $CELLS -kvu > ls-$C-$T.log 2>&1 &
    pid=$!
    for i in $(seq 120); do curl -sf http://127.0.0.1:8096/health >/dev/null && break; sleep 1; done
    /usr/bin/time -v $SP --engine llamacpp --kv-budget-mib 1100 bench --workload serve --clients $C --steps 20 --tokens-per-step $T --peer http://127.0.0.1:8096 --json > serve-$C-t$T-llamacpp.json 2> serve-$C-t$T-llamacpp.log
    echo "C=$C T=$T rc=$? $(date)" >> runs.txt
    grep -E 'VmHWM|Maximum resident' serve-$C-t$T-llamacpp.log >> runs.txt
    ps -o rss= -p $pid >> runs.txt
    kill $pid; sleep 2
  done
done
echo done >> runs.txt
