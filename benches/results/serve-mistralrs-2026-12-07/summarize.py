"""Prints the serve table of docs/SERVER.md from the JSON that run.sh wrote.

usage: python3 summarize.py DIR
"""
import glob
import json
import re
import sys

rows = []
for f in sorted(glob.glob(sys.argv[1] + "/serve-*-t*-*.json")):
    m = re.search(r"serve-(\d+)-t(\d+)-([\w-]+)\.json", f)
    try:
        d = json.load(open(f))
    except ValueError:
        continue  # a run still writing, or one that failed
    rows.append((int(m[1]), int(m[2]), m[3], d))
for c, t, engine, d in sorted(rows):
    l, p = d["load"], d.get("peer") or {}
    checks = "" if l["errors"] == 0 and d["verify_ok"] else f" (errors {l['errors']}, verify {d['verify_ok']})"
    peer = (
        f"{p['steps_per_s']:.2f} | {p['infer_p50_ms']:,.0f} / {p['infer_p99_ms']:,.0f} | "
        f"{l['steps_per_s'] / p['steps_per_s']:.2f}x"
        if p
        else "– | – | –"
    )
    print(
        f"| {c} | {t} | {l['steps_per_s']:.2f}{checks} | {l['infer_p50_ms']:,.0f} / {l['infer_p99_ms']:,.0f} | "
        f"{peer} | {l['prefilled']:,} / {l['reused']:,} | {d['rss_peak_mib']:,.0f} |"
    )
