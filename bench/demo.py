#!/usr/bin/env python
"""Benchmark: the whole demo pipeline end to end (fresh output folder, data already generated), against its goal.

    python bench/demo.py [--params params/demo.yaml] [--goal 180]

Prints each job's seconds and the total next to the goal (the foundation's: <= 3 min on a 2-core CPU machine).
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default=str(ROOT / "params" / "demo.yaml"))
    ap.add_argument("--goal", type=float, default=180.0, help="seconds the demo may take")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from roadtop.dag.plan import load_plan, resolve_plan_data

    resolve_plan_data(load_plan(args.params), progress=False)  # generation is install-time work, not timed
    with tempfile.TemporaryDirectory() as out:
        t0 = time.time()
        r = subprocess.run([sys.executable, str(ROOT / "pipeline.py"), "run", "--params", args.params, "--out", out],
                           cwd=ROOT, capture_output=True, text=True)
        total = time.time() - t0
        if r.returncode:
            sys.exit(f"demo failed (exit {r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        rows = [(json.loads(m.read_text())["job"], json.loads(m.read_text())["seconds"])
                for m in sorted(Path(out).glob("**/manifest.json"), key=lambda p: p.stat().st_mtime)]
    print(f"{'job':32s} {'seconds':>8s}")
    for job, s in rows:
        print(f"{job:32s} {s:8.1f}")
    print(f"{'total (pipeline.py run)':32s} {total:8.1f}   goal <= {args.goal:.0f}   "
          f"{'OK' if total <= args.goal else 'OVER'}")


if __name__ == "__main__":
    main()
