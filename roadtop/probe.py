"""Lesson 7's memory probe, mechanics only: read peak GPU memory, time training steps, catch out-of-memory.

The probe notebook trains each run of the plan for a moment (its `train()`), one *trial* per accum (`bs = 64 //
accum`); this module holds what is not the lesson's code: the 16 GB emulation, `report_gpu` (peak memory), a
callback that times a few optimiser steps and stops the fit, the out-of-memory guard, the record, the chart.
"""

import gc
import json
import math
import time
from contextlib import nullcontext
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from fastai.callback.core import Callback, CancelFitException
from fastai.torch_core import find_bs

from .clock import utc_now
from .accum import EFFECTIVE_BS, GIB, probe_file, same_spec, trial_fits
from .paths import atomic_write

__all__ = ["DEMO_RUNS", "PROBE_CSV", "PROBE_PNG", "PROBE_VALID_PCT", "StepMeter", "accums_for", "budget_fraction",
           "device_info", "emulate_budget", "enough", "guarded_trial", "images_needed", "infer_seconds", "is_oom",
           "plot_probe", "probe_result", "report_gpu", "probed_as", "reset_peak", "save_probe", "trials_frame"]

PROBE_CSV, PROBE_PNG = "probe.csv", "probe.png"


PROBE_VALID_PCT = 0.2  # the probe's train() splits its images like a training run does


DEMO_RUNS = {"convnext_squish": {"arch": "test_convnext", "item_method": "squish", "item_size": 128, "size": 64}}


_OOM_MARKS = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED",
              "CUDNN_STATUS_NOT_ENOUGH_WORKSPACE")


def budget_fraction(budget_gb: float, total_bytes: int) -> float:
    """The share of a GPU of `total_bytes` that is `budget_gb` GiB (1.0 when the GPU is no bigger)."""
    return min(1.0, budget_gb * GIB / total_bytes)


def emulate_budget(budget_gb: float, enable: bool = True):
    """Cap this process's CUDA allocator at `budget_gb` GiB on a bigger GPU; the fraction set, or None (CPU/off)."""
    if not (enable and torch.cuda.is_available()):
        return None
    frac = budget_fraction(budget_gb, torch.cuda.get_device_properties(0).total_memory)
    torch.cuda.set_per_process_memory_fraction(frac, 0)
    return frac


def device_info() -> dict:
    """Where the probe runs: device name, whether GPU memory is measured, total and non-torch memory (GiB)."""
    if not torch.cuda.is_available():
        return {"device": "cpu", "gpu_measured": False, "gpu_total_gb": None, "outside_torch_gb": None}
    torch.zeros(1, device="cuda")  # creates the CUDA context, which torch's allocator does not count
    free, total = torch.cuda.mem_get_info()
    outside = (total - free - torch.cuda.memory_reserved()) / GIB
    return {"device": torch.cuda.get_device_name(0), "gpu_measured": True, "gpu_total_gb": round(total / GIB, 2),
            "outside_torch_gb": round(outside, 3)}


def reset_peak():
    """Start a trial's peak-memory count from now (nothing to do on CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def report_gpu(log=print) -> dict:
    """The lesson's `report_gpu`: peak GPU memory since `reset_peak`, GiB, printed; None values on CPU."""
    if not torch.cuda.is_available():
        return {"peak_reserved_gb": None, "peak_allocated_gb": None}
    _sync()
    peak = {"peak_reserved_gb": round(torch.cuda.max_memory_reserved() / GIB, 3),
            "peak_allocated_gb": round(torch.cuda.max_memory_allocated() / GIB, 3)}
    if log:
        log(f"peak GPU memory: {peak['peak_reserved_gb']:.2f} GiB reserved, {peak['peak_allocated_gb']:.2f} allocated")
    return peak


def is_oom(e: BaseException) -> bool:
    """True for CUDA's out-of-memory error and the cuBLAS/cuDNN allocation failures that mean the same."""
    return isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError)
                                                      and any(m in str(e) for m in _OOM_MARKS))


def _sync():
    """Wait for the GPU's queued work, so times and peaks are complete (nothing on CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def guarded_trial(fn, accum: int) -> dict:
    """Run `fn() -> dict` as one trial: an out-of-memory becomes status 'oom', any other error status 'error'.

    The caller frees memory after it (`gc.collect()`, `torch.cuda.empty_cache()`): the exception is gone by then,
    so its traceback no longer pins the trial's tensors."""
    rec = {"accum": accum, "bs": EFFECTIVE_BS // accum, "status": "ok", "peak_reserved_gb": None,
           "peak_allocated_gb": None, "s_per_img": None, "s_per_img_infer": None, "seconds": None, "error": ""}
    t0 = time.perf_counter()
    try:
        rec.update(fn())
    except Exception as e:  # noqa: BLE001 - a trial that fails must not stop the probe
        rec["status"] = "oom" if is_oom(e) else "error"
        rec["error"] = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        _leave_autocast()
    rec["seconds"] = round(time.perf_counter() - t0, 3)
    return rec


def _leave_autocast():
    """An error inside fastai's MixedPrecision can leave CUDA autocast on: turn it off for the next trial."""
    if torch.cuda.is_available() and torch.is_autocast_enabled("cuda"):
        torch.set_autocast_enabled("cuda", False)


def images_needed(steps: int) -> int:
    """Images a trial needs so its training split holds (1 + steps) batches of 64 (warm-up + measured)."""
    return math.ceil((1 + steps) * EFFECTIVE_BS / (1 - PROBE_VALID_PCT)) + 1


def accums_for(spec: dict, accums) -> list:
    """The accums to try for a run, smallest first: the probe's list plus the run's own explicit accum."""
    return sorted({*accums, *([spec["accum"]] if "accum" in spec else [])})


def enough(trials: list, spec: dict, stop_at_fit: bool, budget_gb: float, margin_gb: float) -> bool:
    """Stop a run's accum loop: after an error (another accum will not help), or at the first fit once the
    run's own accum has been measured too."""
    last = trials[-1]
    if last["status"] == "error":
        return True
    explicit_done = "accum" not in spec or any(t["accum"] == spec["accum"] for t in trials)
    return stop_at_fit and trial_fits(last, budget_gb, margin_gb) and explicit_done


def probed_as(results: dict, spec: dict):
    """(name, record) of an already probed run with the same spec (the k folds of a run), or None."""
    return next(((n, r) for n, r in results.items() if same_spec(r["spec"], spec)), None)


class StepMeter(Callback):
    """Times `steps` optimiser steps after a warm-up one (memory peaks once Adam's state exists), then stops the
    fit. fp16 steps skipped for overflow and batches that gradient accumulation holds back are not steps."""

    order = 100  # after fastai's accumulation and mixed-precision callbacks

    def __init__(self, steps: int):
        """Time `steps` optimiser steps after the warm-up one."""
        self.target = steps

    def before_fit(self):
        """Start counting batches, steps and timed images from zero."""
        self.n, self.steps, self.timed, self.secs, self.imgs = 0, 0, 0, 0.0, 0
        self.last, self.started, self.cancelled = None, False, False

    def before_batch(self):
        """A new batch: its step is not skipped yet."""
        self.cancelled = False

    def after_cancel_step(self):
        """Note a step skipped by fp16's overflow check."""
        self.cancelled = True  # MixedPrecision skipped this step (inf/NaN gradients)

    def after_step(self):
        """Count a real optimiser step."""
        self.steps += not self.cancelled

    def after_batch(self):
        """Time the batch once the warm-up step is done; stop the fit after `steps` more."""
        if not self.training:
            return
        self.n += 1
        _sync()
        now = time.perf_counter()
        if self.started:
            self.secs += now - self.last
            self.imgs += find_bs(self.yb)
        self.started = self.started or self.steps > 0
        self.last = now
        if self.steps > self.target:
            raise CancelFitException()

    def speed(self) -> dict:
        """Seconds per training image over the timed batches, batches seen and optimiser steps taken."""
        return {"s_per_img": self.secs / self.imgs if self.imgs else None, "batches": self.n,
                "optimiser_steps": self.steps}


def infer_seconds(learn, n: int):
    """Seconds per image of forward passes (no gradients) over `n` batches (after a warm-up batch on GPU)."""
    cuda = torch.cuda.is_available()
    model, dl = learn.model.eval(), learn.dls.train
    ctx = torch.autocast("cuda", dtype=torch.float16) if cuda else nullcontext()
    gc.collect()  # the cancelled fit's loader iterator, else forked workers inherit it (and complain on exit)
    warm, imgs, it = int(cuda), 0, iter(dl)  # on CPU the training batches already warmed the same shapes
    t0 = time.perf_counter()
    try:
        with torch.no_grad(), ctx:
            for i in range(n + warm):
                b = next(it, None)
                if b is None:
                    it.close()
                    it = iter(dl)
                    b = next(it)
                model(*b[:dl.n_inp])
                _sync()
                if i < warm:
                    t0 = time.perf_counter()
                else:
                    imgs += find_bs(b)
    finally:
        it.close()  # shut the loader's workers down now, in this process
    return (time.perf_counter() - t0) / imgs if imgs else None


def probe_result(runs: dict, info: dict, counts: dict, settings: dict, seconds: float, stages=None) -> dict:
    """The probe's JSON record: where it ran, the budget it used, the data's size and every run's trials, each with
    the stage that trains it (`stages`: run name -> stage)."""
    runs = {name: {**r, "stage": (stages or {}).get(name)} for name, r in runs.items()}
    return {**info, **settings, "counts": counts, "seconds": round(seconds, 1), "runs": runs,
            "finished": utc_now()}


def trials_frame(result: dict):
    """Every trial as one row of a DataFrame (run, spec, accum, status, peaks, speed, chosen)."""
    rows = []
    for name, r in result["runs"].items():
        for t in r["trials"]:
            rows.append({"run": name, "arch": r["spec"].get("arch"), "size": str(r["spec"].get("size")),
                         **{k: t.get(k) for k in ("accum", "bs", "status", "peak_reserved_gb", "peak_allocated_gb",
                                                   "s_per_img", "s_per_img_infer", "seconds")},
                         "chosen": t["accum"] == r["accum"], "error": t.get("error", "")})
    return pd.DataFrame(rows)


def save_probe(out_dir, result: dict) -> Path:
    """Write probe.json and probe.csv into `out_dir` atomically; returns the JSON's path."""
    out = Path(out_dir)
    with atomic_write(probe_file(out)) as f:
        json.dump(result, f, indent=1)
    with atomic_write(out / PROBE_CSV) as f:
        trials_frame(result).to_csv(f, index=False)
    return probe_file(out)


def plot_probe(result: dict, ax=None):
    """Bars of peak GPU memory per run and accum against the budget line (seconds per image on CPU)."""
    df = trials_frame(result)
    measured = bool(result.get("gpu_measured"))
    if ax is None:
        _, ax = plt.subplots(figsize=(max(6, 1.4 * max(1, df["run"].nunique())) + 2, 4))
    runs, accums = list(result["runs"]), sorted(df["accum"].unique()) if len(df) else [1]
    width = 0.8 / len(accums)
    budget, margin = result.get("gpu_budget_gb", 16), result.get("margin_gb", 0)
    for k, a in enumerate(accums):
        colour, label = plt.cm.viridis(k / max(1, len(accums))), f"accum {a} (bs {EFFECTIVE_BS // a})"
        for i, run in enumerate(runs):
            row = df[(df.run == run) & (df.accum == a)]
            if row.empty:
                continue
            r, x = row.iloc[0], i + (k - (len(accums) - 1) / 2) * width
            if measured and r.status != "ok":  # out of memory (or an error): drawn as a hatched bar to the budget
                ax.bar(x, budget, width, color="none", edgecolor=colour, hatch="//", label=label)
                ax.text(x, budget / 2, r.status.upper(), ha="center", rotation=90, color="red")
                label = None
                continue
            y = r.peak_reserved_gb if measured else (r.s_per_img or 0) * 1000
            bar = ax.bar(x, y, width, color=colour, edgecolor="black" if r.chosen else "none", linewidth=2,
                         label=label)
            label = None  # one legend entry per accum
            if r.chosen:
                ax.bar_label(bar, labels=["chosen"], fontsize=8)
    ax.set_xticks(np.arange(len(runs)), runs, rotation=20, ha="right")
    if measured:
        ax.axhline(budget, color="red", label=f"budget {budget:g} GiB")
        ax.axhline(budget - margin, color="red", ls="--", label=f"budget - margin ({margin:g} GiB)")
        ax.set_ylabel("peak GPU memory (reserved), GiB")
        ax.set_title(f"Peak memory per run and accum on {result.get('device')}")
    else:
        ax.set_ylabel("ms per training image")
        ax.set_title("CPU: GPU memory not measured; speed per run and accum")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return ax
