#!/usr/bin/env python3
"""Tables (Markdown) from the JSON that benches/gpu/host.sh wrote.

    python3 benches/gpu/summarize.py benches/results/gpu-2026-12-06

Per-step figures are medians over runs 2.. of each arm: run 1 includes CUDA graph capture,
cuBLAS autotuning and mistral.rs's PTX JIT. Each arm's run is the mean of its steps; the
split of a step (prefill, decode, restore, save, the pack's overhead, the rest) is the
median of each part over the same runs. Nothing here is computed from a formula: every
figure is read from a measured run.
"""
import json
import os
import statistics
import sys

SPLIT = ("prefill", "decode", "restore", "save", "overhead", "other")


def load(d, name):
    p = os.path.join(d, name + ".json")
    if not os.path.exists(p) or os.path.getsize(p) == 0:
        return None
    with open(p) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError:
            return None


def later_runs(report, arm):
    runs = [r for r in report["arm_runs"] if r["arm"] == arm]
    return runs[1:] if len(runs) > 1 else runs


def step_ms(run):
    return statistics.fmean(run["step_ms"]) if run["step_ms"] else 0.0


def arm(report, name):
    runs = later_runs(report, name)
    if not runs:
        return None
    split = {k: statistics.median(r["split_ms"][k] for r in runs) for k in SPLIT}
    return {"step_ms": statistics.median(step_ms(r) for r in runs), "split": split, "n": len(runs)}


def pair_ratio(report, a, b):
    ra, rb = later_runs(report, a), later_runs(report, b)
    return statistics.median(step_ms(x) / max(step_ms(y), 1e-9) for x, y in zip(ra, rb))


def demo_rows(reports):
    out = []
    for rep in reports if isinstance(reports, list) else [reports]:
        naive, sp, peer = arm(rep, "naive"), arm(rep, "state_pack"), arm(rep, "peer")
        row = {
            "engine": rep["engine"],
            "naive": naive,
            "sp": sp,
            "peer": peer,
            "speedup": pair_ratio(rep, "naive", "state_pack"),
            "sp_over_peer": pair_ratio(rep, "state_pack", "peer") if peer else None,
            "identical": rep["outputs_identical"],
            "peer_same": rep["peer"]["outputs_match_statepack"] if rep.get("peer") else None,
            "savings": rep["token_savings"],
            "runs": sp["n"],
        }
        out.append(row)
    return out


def fmt(x, nd=1):
    return "–" if x is None else f"{x:.{nd}f}"


def print_demo(rows, title):
    print(f"\n#### {title}\n")
    print("| engine | naive ms/step | state-pack ms/step | llama-server ms/step | naive / state-pack | state-pack / llama-server | tokens prefilled saved | outputs naive = state-pack | llama-server = state-pack |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---|")
    for r in rows:
        print(
            f"| {r['engine']} | {fmt(r['naive']['step_ms'])} | {fmt(r['sp']['step_ms'])} | "
            f"{fmt(r['peer']['step_ms'] if r['peer'] else None)} | {fmt(r['speedup'])}x | "
            f"{fmt(r['sp_over_peer'], 2) + 'x' if r['sp_over_peer'] else '–'} | {100 * r['savings']:.1f}% | "
            f"{'yes' if r['identical'] else 'no'} | {'–' if r['peer_same'] is None else ('yes' if r['peer_same'] else 'no')} |"
        )
    print("\nWhere a step went (ms per step, medians):\n")
    print("| engine | arm | " + " | ".join(SPLIT) + " | total |")
    print("|---|---|" + "---:|" * (len(SPLIT) + 1))
    for r in rows:
        for name, a in (("naive", r["naive"]), ("state-pack", r["sp"]), ("llama-server", r["peer"])):
            if a is None:
                continue
            cells = " | ".join(fmt(a["split"][k], 2) for k in SPLIT)
            print(f"| {r['engine']} | {name} | {cells} | {fmt(a['step_ms'], 2)} |")


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "gpu-out"
    csv = os.path.join(d, "nvidia-smi.csv")
    if os.path.exists(csv):
        print("GPU: " + open(csv).read().strip().splitlines()[-1])
    lscpu = os.path.join(d, "lscpu.txt")
    if os.path.exists(lscpu):
        for line in open(lscpu):
            if line.startswith(("Model name", "CPU(s):")):
                print(line.strip())
    for name, title in (
        ("demo-gpu", "Demo loop, GPU"),
        ("demo-ctx4k-gpu", "Demo loop with a 4,000-token base, GPU"),
        ("demo-mistralrs-q41-bf16-gpu", "mistral.rs on the file's Q4_1 weights, bf16, GPU"),
        ("agent-gpu", "Legal-research agent (real tool calls), GPU"),
        ("demo-cpu-llamacpp", "Demo loop, llama.cpp, same host, GPU hidden (CPU cores)"),
        ("demo-cpu-llamacpp-pool", "Demo loop, llama.cpp with --thread-pool, same host, GPU hidden (CPU cores)"),
        ("demo-cpu-mistralrs", "Demo loop, mistral.rs, same host, GPU hidden (CPU cores)"),
        ("demo-ctx4k-random8b-llamacpp-gpu", "8B-shaped random-weight model, 4,000-token base, llama.cpp, GPU"),
        ("demo-ctx4k-random8b-mistralrs-gpu", "8B-shaped random-weight model, 4,000-token base, mistral.rs, GPU"),
    ):
        rep = load(d, name)
        if rep is not None:
            steps = rep[0]["steps"] if rep else "?"
            print_demo(demo_rows(rep), f"{title}, {steps} steps (`{name}.json`)")
    rest = load(d, "restore-llamacpp-gpu")
    if rest is not None:
        later = lambda v: v[1:] if len(v) > 1 else v
        print(f"\n#### Restore vs re-prefill, {rest['state_tokens']} tokens (`restore-llamacpp-gpu.json`)\n")
        print(
            f"restore {statistics.median(later(rest['restore_ms'])):.2f} ms vs re-prefill "
            f"{statistics.median(later(rest['reprefill_ms'])):.2f} ms; infer after restore "
            f"{statistics.median(later(rest['restored_infer_ms'])):.2f} ms vs after re-prefill "
            f"{statistics.median(later(rest['reprefilled_infer_ms'])):.2f} ms; outputs identical: "
            f"{rest['outputs_identical']}"
        )
    serve = [(c, e, load(d, f"serve-{c}-{e}-gpu")) for c in (1, 32) for e in ("llamacpp", "mistralrs")]
    if any(s for _, _, s in serve):
        steps = next(s for _, _, s in serve if s)["load"]["steps"]
        print(f"\n#### Serve workload over HTTP, {steps} steps per client, GPU\n")
        print("| clients | engine | steps/s | infer p50 ms | infer p99 ms | queued p50 ms | errors | ledger verifies |")
        print("|---:|---|---:|---:|---:|---:|---:|---|")
        for c, e, s in serve:
            if s:
                l = s["load"]
                print(
                    f"| {c} | {e} | {l['steps_per_s']:.2f} | {l['infer_p50_ms']:.1f} | {l['infer_p99_ms']:.1f} | "
                    f"{l['queued_p50_ms']:.1f} | {l['errors']} | {s['verify_ok']} |"
                )
    peer = [(c, load(d, f"serve-{c}-t8-peer-llamacpp-gpu")) for c in (1, 32)]
    if any(s for _, s in peer):
        print("\n#### Serve workload against llama-server -np C, llama.cpp, GPU, 20 steps of 8 tokens\n")
        print("| clients | server | steps/s | infer p50 ms | infer p99 ms | prefilled / reused | errors | state-pack / llama-server |")
        print("|---:|---|---:|---:|---:|---|---:|---:|")
        for c, s in peer:
            if not s:
                continue
            for who, l in (("state-pack", s["load"]), ("llama-server", s.get("peer"))):
                if not l:
                    continue
                ratio = f"{s['load']['steps_per_s'] / l['steps_per_s']:.2f}x" if who == "llama-server" else ""
                print(
                    f"| {c} | {who} | {l['steps_per_s']:.2f} | {l['infer_p50_ms']:.1f} | {l['infer_p99_ms']:.1f} | "
                    f"{l['prefilled']:,} / {l['reused']:,} | {l['errors']} | {ratio} |"
                )
    runs = os.path.join(d, "runs.txt")
    if os.path.exists(runs):
        print("\nRuns (name, exit status, seconds, command):\n")
        for line in open(runs):
            print("    " + line.rstrip())


if __name__ == "__main__":
    main()
