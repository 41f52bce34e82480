#!/usr/bin/env python
"""GPU check of the memory probe: Lesson 7's five big runs under an emulated 16 GiB budget, on one GPU.

For each of convnext_large 224 and 320x240, vit_large 224, swinv2_large 192 and swin_large 224 (random weights,
pretrained=False: no internet needed) it runs notebooks/probe.ipynb (its train(), fp16, accum 1, 2, 4, 8 until one fits
under budget - margin) on generated 480x640 JPEGs in the Paddy layout, then runs it again for ~20 batches at the
chosen accum under the same cap to show the choice really fits. Prints (and writes to --out) a table: run, accum chosen, probe peak,
real peak, seconds of probing, seconds per image, and the lesson's process-total MB at bs 32 for comparison.

    python bench/gpu_check.py --out DIR            # on a GPU machine; about 4-6 minutes on one H100
    python bench/gpu_check.py --tiny --out DIR     # CPU self-check of this script with timm's test_* models

Needs only torch, timm and fastai (and this repository).
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Lesson 7 (fast.ai course22, "Road to the Top" part 3): process-total MB in fp16 at accum 2 (bs 32), on Kaggle.
LESSON = {
    "convnext_large_224": ("convnext_large_in22k", 480, 224, 12191),
    "convnext_large_320x240": ("convnext_large_in22k", 480, [320, 240], 15561),
    "vit_large_224": ("vit_large_patch16_224", 480, 224, 16251),
    "swinv2_large_192": ("swinv2_large_window12_192_22k", 480, 192, 14373),
    "swin_large_224": ("swin_large_patch4_window7_224", 480, 224, 12773),
}
TINY = {  # the same shapes of plan on CPU, in seconds
    "convnext_64": ("test_convnext", 96, 64, None),
    "convnext_64x48": ("test_convnext", 96, [64, 48], None),
    "vit_160": ("test_vit", 160, 160, None),
}


def args_parser():
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="outputs/gpu_check", help="folder for gpu_check.md / .json and the data")
    p.add_argument("--data", default="", help="folder for the generated images (default: under --out)")
    p.add_argument("--budget", type=float, default=16.0, help="GiB to emulate (Kaggle: 16)")
    p.add_argument("--margin", type=float, default=0.75, help="GiB kept free under the budget")
    p.add_argument("--steps", type=int, default=2, help="timed optimiser steps per probe trial")
    p.add_argument("--real-batches", type=int, default=0, help="batches of the real run (0: 20 on GPU, 4 --tiny)")
    p.add_argument("--deadline", type=float, default=420, help="seconds after which remaining runs are skipped")
    p.add_argument("--tiny", action="store_true", help="CPU self-check with timm's test_* models")
    return p


def fmt(v, spec=".2f"):
    """A number, or '-' for None."""
    return "-" if v is None else format(v, spec)


def main(argv=None) -> int:
    """Probe, choose, train for real under the cap; print and save the table."""
    a = args_parser().parse_args(argv)
    t_start = time.time()
    import fastai
    import timm
    import torch

    import papermill as pm

    from roadtop.paddy import make_demo
    from roadtop.paths import NOTEBOOKS

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = TINY if a.tiny else LESSON
    a.real_batches = a.real_batches or (4 if a.tiny else 20)
    size = (96, 128) if a.tiny else (480, 640)
    data = make_demo(Path(a.data or out) / f"data-{size[0]}x{size[1]}", n_train=300, n_test=8, size=size, seed=0, progress=False)
    versions = {"torch": torch.__version__, "timm": timm.__version__, "fastai": fastai.__version__,
                "python": platform.python_version()}
    specs = {name: {"arch": arch, "item_method": "squish", "item_size": item_size, "size": sz}
             for name, (arch, item_size, sz, _) in runs.items()}

    def probe_nb(folder, runs, accums, steps):
        """Execute the probe notebook on `runs`; its probe.json."""
        folder.mkdir(parents=True, exist_ok=True)
        pm.execute_notebook(str(NOTEBOOKS / "probe.ipynb"), str(folder / "probe.ipynb"), cwd=str(NOTEBOOKS),
                            parameters=dict(data_path=str(data), out_dir=str(folder), runs=runs, accums=accums,
                                            steps=steps, holdout_pct=0.0, gpu_budget_gb=a.budget,
                                            margin_gb=a.margin), kernel_name="python3", progress_bar=False)
        return json.loads((folder / "probe.json").read_text())

    t0 = time.time()
    probed = probe_nb(out / "probe", specs, [1, 2, 4, 8], a.steps)
    probe_s = time.time() - t0
    info = {k: probed.get(k) for k in ("device", "gpu_total_gb", "outside_torch_gb", "emulated_fraction")}
    chosen = {n: r["accum"] for n, r in probed["runs"].items() if r["accum"] is not None}
    real = {}
    if chosen and time.time() - t_start < a.deadline:
        real = probe_nb(out / "real", {n: {**specs[n], "accum": acc} for n, acc in chosen.items()},
                        sorted(set(chosen.values())), max(1, a.real_batches // min(chosen.values())))["runs"]
    rows = []
    for name, (arch, _, sz, lesson_mb) in runs.items():
        r = probed["runs"][name]
        trials, accum = r["trials"], r["accum"]
        pick = next((t for t in trials if t["accum"] == accum), None)
        got = next((t for t in real.get(name, {}).get("trials", []) if t["accum"] == accum), None)
        rows.append({"run": name, "arch": arch, "size": sz, "accum": accum, "why": r["reason"],
                     "probe_peak_gb": pick and pick["peak_reserved_gb"],
                     "probe_alloc_gb": pick and pick["peak_allocated_gb"],
                     "real_peak_gb": got and got["peak_reserved_gb"], "real_status": got and got["status"],
                     "real_batches": got and got.get("batches"), "real_error": got and got["error"],
                     "probe_seconds": round(sum(t["seconds"] or 0 for t in trials), 1),
                     "real_seconds": got and got["seconds"], "s_per_img": got and got["s_per_img"],
                     "lesson_mb_bs32": lesson_mb,
                     "trials": [{k: t[k] for k in ("accum", "status", "peak_reserved_gb", "seconds", "error")}
                                for t in trials]})
        print(f"{name}: accum {accum} ({r['reason']}); real {rows[-1]['real_status']} peak "
              f"{fmt(rows[-1]['real_peak_gb'])} GiB", flush=True)
    print(f"probing took {probe_s:.0f}s", flush=True)

    head = ("| run | accum chosen | probe peak GiB (reserved / allocated) | real peak GiB (status, batches) | "
            "seconds of probing | real s/img | lesson MB at bs 32 (process, P100) |")
    title = (f"GPU check on {info['device']} ({info.get('gpu_total_gb')} GiB; torch allocator capped at "
             f"{a.budget:g} GiB = fraction {fmt(info['emulated_fraction'], '.3f')}; CUDA context and other non-torch "
             f"memory {fmt(info.get('outside_torch_gb'))} GiB); margin {a.margin:g} GiB; {versions}")
    lines = [title, "", head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"| {r['run']} | skipped ({r['skipped']}) | | | | | |")
            continue
        trials = ", ".join(f"{t['accum']}:{t['status'] if t['status'] != 'ok' else fmt(t['peak_reserved_gb'])}"
                           for t in r["trials"])
        lines.append(f"| {r['run']} | {fmt(r['accum'], 'd')} | {fmt(r['probe_peak_gb'])} / "
                     f"{fmt(r['probe_alloc_gb'])} (trials {trials}) | {fmt(r['real_peak_gb'])} ({r['real_status']}, "
                     f"{r['real_batches']}) | {r['probe_seconds']:.1f} | {fmt(r['s_per_img'], '.4f')} | "
                     f"{r['lesson_mb_bs32'] or '-'} |")
    lines.append("")
    lines.append(f"total {time.time() - t_start:.0f}s")
    text = "\n".join(lines)
    print(text, flush=True)
    (out / "gpu_check.md").write_text(text + "\n")
    (out / "gpu_check.json").write_text(json.dumps({"info": info, "versions": versions, "budget_gb": a.budget,
                                                    "margin_gb": a.margin, "rows": rows,
                                                    "seconds": round(time.time() - t_start, 1)}, indent=1))
    bad = [r["run"] for r in rows if not r.get("skipped") and r.get("real_status") != "ok"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
