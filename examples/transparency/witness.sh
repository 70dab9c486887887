#!/usr/bin/env bash
# A log, a witness and an auditor, end to end, with the `state-pack` binary:
#   1. an agent writes a receipt log (two demo steps on the default model);
#   2. the log publishes its checkpoint as a C2SP signed note, and as static tlog-tiles;
#   3. a witness cosigns it; the log grows; the witness cosigns the new checkpoint only with a
#      consistency proof from the one it cosigned before;
#   4. the operator adds the cosignatures; an auditor verifies the log, requiring the witness.
#
#   examples/transparency/witness.sh [WORKDIR]      (needs target/release/state-pack)
set -euo pipefail
BIN="${STATE_PACK_BIN:-$(cd "$(dirname "$0")/../.." && pwd)/target/release/state-pack}"
W="${1:-$(mktemp -d)}"
mkdir -p "$W"
cd "$W"
sp() { "$BIN" --key "$W/log-key.pem" "$@"; }

sp run --steps 2 --db log.db >/dev/null
sp receipts checkpoint --db log.db --format note > note-1.txt
LOG_VKEY="$(sp receipts checkpoint --db log.db --format vkey)"
SIZE1="$(sed -n 2p note-1.txt)"
echo "log $LOG_VKEY at size $SIZE1"

"$BIN" keys new --key "$W/witness-key.pem" >/dev/null 2>&1 || true
wit() { "$BIN" witness "$@" --name witness.example/w1 --witness-key "$W/witness-key.pem" --state "$W/witness-state"; }
WITNESS_VKEY="$(wit vkey)"
wit cosign note-1.txt --log "$LOG_VKEY" > cosigned-1.txt
sp receipts cosign cosigned-1.txt --db log.db

sp run --steps 2 --db log.db >/dev/null
sp receipts checkpoint --db log.db --format note > note-2.txt
SIZE2="$(sed -n 2p note-2.txt)"
sp receipts prove --consistency "$SIZE1" "$SIZE2" --db log.db > proof.json
wit cosign note-2.txt --log "$LOG_VKEY" --proof proof.json > cosigned-2.txt
sp receipts cosign cosigned-2.txt --db log.db
echo "witnessed sizes $SIZE1 and $SIZE2"

sp receipts export --db log.db --format tiles tiles
"$BIN" verify --db log.db --witness "$WITNESS_VKEY" --trusted-checkpoint note-1.txt
