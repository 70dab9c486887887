#!/usr/bin/env python3
"""Medians over run-*/ of the replica JSON that run.sh writes: the table in docs/DEPLOY.md."""
import glob, json, os, statistics, sys

here = os.path.dirname(os.path.abspath(__file__))
arms = {}
for path in sorted(glob.glob(os.path.join(here, "run-*", "*.json"))):
    r = json.load(open(path))
    arms.setdefault(os.path.basename(path)[:-5], []).append(r)
print("| arm | runs | steps/s (median, min-max) | prefilled | restored from Redis | reused | receipts lost | verify |")
print("|---|---:|---|---:|---:|---:|---:|---|")
for name, rs in sorted(arms.items()):
    med = lambda k: statistics.median(r[k] for r in rs)
    sps = [r["steps_per_s"] for r in rs]
    print(f"| {name} | {len(rs)} | {med('steps_per_s'):.2f} ({min(sps):.2f}-{max(sps):.2f}) "
          f"| {med('prefilled'):.0f} | {med('restored'):.0f} | {med('reused'):.0f} "
          f"| {sum(r['receipts_lost'] for r in rs)} | {'OK' if all(r['verify_ok'] for r in rs) else 'FAILED'} |")
