#!/usr/bin/env python
"""Benchmark: the whole demo pipeline end to end (fresh output folder, data already generated), against its goal.

    python bench/demo.py [--params params/demo.yaml] [--jobs 1 2] [--goal 180] [--repeat 1]

Runs the demo one job at a time (--jobs 1, the baseline: torch's default threads) and as `make demo` does (--jobs 2:
two jobs at once, one thread each, the longest expected first), and prints each job's seconds side by side, the
totals next to the goal (<= 3 min on a 2-core CPU machine), and each run's holdout table (with one thread per job
the numbers are those of `make test`'s demo; torch's default threads round differently). With --repeat N it runs N
times at each and prints the best and the median total: on a shared machine timings are noisy.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent


def run_once(params: str, jobs: int) -> tuple:
    """One `pipeline.py run --jobs N` in a fresh folder: (total seconds, [(job, seconds)], holdout table)."""
    with tempfile.TemporaryDirectory() as out:
        t0 = time.time()
        r = subprocess.run([sys.executable, str(ROOT / "pipeline.py"), "run", "--params", params, "--out", out,
                            "--jobs", str(jobs)],
                           cwd=ROOT, capture_output=True, text=True)
        total = time.time() - t0
        if r.returncode:
            sys.exit(f"demo failed (exit {r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        rows = [(json.loads(m.read_text())["job"], json.loads(m.read_text())["seconds"])
                for m in sorted(Path(out).glob("**/manifest.json"), key=lambda p: p.stat().st_mtime)]
        holdout = Path(out) / "ensemble" / "holdout.csv"
        table = pd.read_csv(holdout) if holdout.exists() else None
    return total, rows, table


def main():
    """Run the demo `--repeat` times at each --jobs; per-job seconds side by side, totals against the goal, and the
    holdout table of each."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default=str(ROOT / "params" / "demo.yaml"))
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2],
                    help="jobs at once, each compared (default: 1, the baseline one at a time, and 2, make demo's)")
    ap.add_argument("--goal", type=float, default=180.0, help="seconds the demo may take")
    ap.add_argument("--repeat", type=int, default=1, help="runs to make at each --jobs (best and median reported)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from roadtop.dag.plan import load_plan, resolve_plan_data

    resolve_plan_data(load_plan(args.params), progress=False)  # generation is install-time work, not timed
    totals, seconds, tables = {}, {}, {}
    for n in args.jobs:
        for i in range(args.repeat):
            total, rows, tables[n] = run_once(args.params, n)
            totals.setdefault(n, []).append(total)
            print(f"--jobs {n}: run {i + 1}/{args.repeat}: {total:.1f} s", flush=True)
            for job, s in rows:
                seconds.setdefault(job, {})[n] = s  # the last run's
    cols = [f"--jobs {n}" for n in args.jobs]
    print(f"\n{'job (seconds, last run)':32s} " + " ".join(f"{c:>9s}" for c in cols))
    for job, by in seconds.items():
        print(f"{job:32s} " + " ".join(f"{by.get(n, float('nan')):9.1f}" for n in args.jobs))
    print(f"{'total (pipeline.py run), median':32s} " + " ".join(f"{statistics.median(totals[n]):9.1f}"
                                                                 for n in args.jobs))
    for n in args.jobs:
        t = totals[n]
        print(f"--jobs {n}: totals {[round(x, 1) for x in t]}, best {min(t):.1f}, median {statistics.median(t):.1f}"
              f"   goal <= {args.goal:.0f}   {'OK' if statistics.median(t) <= args.goal else 'OVER'}")
    for n in args.jobs:
        if tables[n] is not None:
            print(f"\nholdout, --jobs {n}:\n{tables[n].to_string(index=False)}")


if __name__ == "__main__":
    main()
