"""The seed README's curl walkthrough, as written (the bearer token added), against
`state-pack serve` (../shared/SEED-PROTOCOL.md)."""

import json
import subprocess

from conftest import system_tool


def curl(server, path, body):
    out = subprocess.run(
        [
            system_tool("curl"), "-sS", "-X", "POST", server.url + path,
            "-H", "Content-Type: application/json",
            "-H", "Authorization: Bearer " + server.token,
            "-d", json.dumps(body),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def test_the_seed_readme_walkthrough_runs_unchanged(server):
    base = "You are a legal research agent..."
    created = curl(server, "/states", {"base_text": base})
    assert len(created["state_hash"]) == 64, created
    for field in ("tokens", "bytes", "cache_hit", "elapsed_s"):
        assert field in created, created
    # Same text, same hash: idempotent.
    again = curl(server, "/states", {"base_text": base})
    assert again["state_hash"] == created["state_hash"]
    assert again["cache_hit"] is True

    h = created["state_hash"]
    inferred = curl(server, "/infer", {"state_hash": h, "delta_text": "Step 1: clause affects indemnity."})
    for field in ("state_hash", "new_state_hash", "delta_hash", "output", "tokens"):
        assert field in inferred, inferred
    for field in ("base", "delta", "new_total", "saved", "savings_pct"):
        assert field in inferred["tokens"], inferred

    compacted = curl(server, "/compact", {"state_hash": h, "accumulated_deltas": ["Step 1...", "Step 2..."]})
    assert len(compacted["new_state_hash"]) == 64, compacted
    assert compacted["steps_folded"] == 2
    assert "tokens" in compacted

    health = server.get("/health")
    for field in ("model", "states_hot", "states_cached"):
        assert field in health
    info = server.get("/states/" + compacted["new_state_hash"])
    for field in ("state_hash", "tokens", "bytes", "model", "hot"):
        assert field in info

    # A dtype other than the engine's KV type is refused with what it runs.
    runs = health["model"]["kv_dtype"]
    other = "bfloat16" if runs != "bfloat16" else "float32"
    refused = curl(server, "/states", {"base_text": base, "dtype": other})
    assert refused["error"]["code"] == "unsupported_dtype"
    assert runs in refused["error"]["message"]
    assert curl(server, "/states", {"base_text": base, "dtype": runs})["state_hash"] == h
