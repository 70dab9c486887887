"""Per-step medians of each arm run in this directory's `bench --json` outputs."""
import glob, json, os, statistics as st

here = os.path.dirname(os.path.abspath(__file__))
for f in sorted(glob.glob(os.path.join(here, "*.json"))):
    for r in json.load(open(f)):
        for a in r["arm_runs"]:
            s = a["split_ms"]
            print(f"{os.path.basename(f):14} {a['arm']:10} step {st.median(a['step_ms']):7.1f}  "
                  f"prefill {s['prefill']:7.1f}  decode {s['decode']:5.1f}  save {s['save']:4.2f}  "
                  f"pack {s['overhead']:4.2f} ms")
