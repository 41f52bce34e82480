#!/usr/bin/env python
"""GPU check of the memory probe: Lesson 7's five big runs under an emulated 16 GiB budget, on one GPU.

For each of convnext_large 224 and 320x240, vit_large 224, swinv2_large 192 and swin_large 224 (random weights,
pretrained=False: no internet needed) it runs roadtop.probe's probe (fp16, accum 1, 2, 4, 8 until one fits under
budget - margin) on generated 480x640 JPEGs in the Paddy layout, then trains ~20 batches at the chosen accum under
the same cap to show the choice really fits. Prints (and writes to --out) a table: run, accum chosen, probe peak,
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

    from roadtop import accum as accums
    from roadtop import probe
    from roadtop.paddy import make_demo, split_files

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = TINY if a.tiny else LESSON
    a.real_batches = a.real_batches or (4 if a.tiny else 20)
    size = (96, 128) if a.tiny else (480, 640)
    data = make_demo(Path(a.data or out) / f"data-{size[0]}x{size[1]}", n_train=300, n_test=8, size=size, seed=0, progress=False)
    files, _ = split_files(data, 0.0, 0)
    probe_files = probe.probe_files(files, 0, probe.images_needed(a.steps))
    info = probe.device_info()
    info["emulated_fraction"] = probe.emulate_budget(a.budget)
    versions = {"torch": torch.__version__, "timm": timm.__version__, "fastai": fastai.__version__,
                "python": platform.python_version()}
    print(f"{info} {versions}; data {len(files)} images {size}, ready in {time.time() - t_start:.0f}s", flush=True)

    def fits(r):
        return accums.trial_fits(r, a.budget, a.margin)

    rows = []
    for name, (arch, item_size, sz, lesson_mb) in runs.items():
        if time.time() - t_start > a.deadline:
            rows.append({"run": name, "arch": arch, "skipped": "deadline"})
            print(f"{name}: skipped, past the {a.deadline:.0f}s deadline", flush=True)
            continue
        spec = {"arch": arch, "item_method": "squish", "item_size": item_size, "size": sz}
        t0 = time.time()
        trials = probe.probe_run(spec, [1, 2, 4, 8], lambda acc, s=spec: probe.probe_trial(
            data, probe_files, s, acc, steps=a.steps), fits)
        probe_s = time.time() - t0
        accum, why = accums.choose_accum(trials, a.budget, a.margin)
        chosen = next((t for t in trials if t["accum"] == accum), None)
        real = None
        if accum is not None:
            real = probe.probe_trial(data, files, spec, accum, steps=1, batches=accum + a.real_batches)
        rows.append({"run": name, "arch": arch, "size": sz, "accum": accum, "why": why,
                     "probe_peak_gb": chosen and chosen["peak_reserved_gb"],
                     "probe_alloc_gb": chosen and chosen["peak_allocated_gb"],
                     "real_peak_gb": real and real["peak_reserved_gb"], "real_status": real and real["status"],
                     "real_batches": real and real.get("batches"), "real_error": real and real["error"],
                     "probe_seconds": round(probe_s, 1), "real_seconds": real and real["seconds"],
                     "s_per_img": real and real["s_per_img"], "lesson_mb_bs32": lesson_mb,
                     "trials": [{k: t[k] for k in ("accum", "status", "peak_reserved_gb", "seconds", "error")}
                                for t in trials]})
        r = rows[-1]
        print(f"{name}: accum {accum} ({why}); real {r['real_status']} peak {fmt(r['real_peak_gb'])} GiB; "
              f"probe {probe_s:.0f}s; trials {[(t['accum'], t['status'], t['peak_reserved_gb']) for t in trials]}",
              flush=True)

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
