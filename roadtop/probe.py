"""Lesson 7's memory probe, mechanics only: train a run for a few batches at an accum, read peak GPU memory and speed.

A *trial* trains one run (arch, item transform, size) for a few batches at one gradient-accumulation setting
(`bs = 64 // accum`) on a small subset and records peak GPU memory and seconds per image. An out-of-memory is caught
and recorded as "does not fit". `choose_accum` picks the smallest accum that fits the budget with a margin.
"""

import gc
import json
import math
import random
import time
from contextlib import nullcontext
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from fastai.callback.core import Callback, CancelBatchException, CancelFitException
from fastai.torch_core import find_bs
from fastai.vision.all import (
    CategoryBlock,
    DataBlock,
    ImageBlock,
    RandomSplitter,
    Resize,
    aug_transforms,
    parent_label,
    vision_learner,
)
from fastprogress.fastprogress import progress_bar

from .accum import EFFECTIVE_BS, GIB, PROBE_JSON, check_accum, choose_accum, trial_fits
from .errors import RoadtopError
from .paths import atomic_write
from .train import channels_first
from .train import num_workers as default_workers

__all__ = ["DEMO_RUNS", "PROBE_CSV", "PROBE_PNG", "PROBE_VALID_PCT", "budget_fraction", "device_info", "emulate_budget", "free_memory", "guarded_trial", "images_needed", "is_oom", "plot_probe", "probe_all", "probe_files", "probe_result", "probe_run", "probe_trial", "save_probe", "trials_frame"]

PROBE_CSV, PROBE_PNG = "probe.csv", "probe.png"


PROBE_VALID_PCT = 0.2  # the probe splits its subset like a training run does


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


def free_memory():
    """Drop what the last trial left: collect garbage, empty CUDA's cache, reset the peak counters."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def is_oom(e: BaseException) -> bool:
    """True for CUDA's out-of-memory error and the cuBLAS/cuDNN allocation failures that mean the same."""
    return isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError)
                                                      and any(m in str(e) for m in _OOM_MARKS))


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def guarded_trial(fn, accum: int, cleanup=None) -> dict:
    """Run `fn() -> dict` as one trial: an out-of-memory becomes status 'oom', any other error status 'error'.

    Memory is freed after the trial either way (outside the `except`, so the traceback no longer pins tensors).
    """
    rec = {"accum": accum, "bs": EFFECTIVE_BS // accum, "status": "ok", "peak_reserved_gb": None,
           "peak_allocated_gb": None, "s_per_img": None, "s_per_img_infer": None, "seconds": None, "error": ""}
    t0 = time.perf_counter()
    try:
        rec.update(fn())
    except Exception as e:  # noqa: BLE001 - a trial that fails must not stop the probe
        rec["status"] = "oom" if is_oom(e) else "error"
        rec["error"] = " ".join(f"{type(e).__name__}: {e}".split())[:300]
    rec["seconds"] = round(time.perf_counter() - t0, 3)
    (cleanup or free_memory)()
    return rec


def probe_files(files, n: int = 0, need: int = 0, seed: int = 0) -> list:
    """The probe's images: the smallest class (lesson: bacterial_panicle_blight) or `n` random ones, topped up
    from the other classes to `need` images so every trial gets its full batches."""
    files = list(files)
    if n:
        pick = random.Random(seed).sample(files, min(n, len(files)))
    else:
        by = {}
        for f in files:
            by.setdefault(Path(f).parent.name, []).append(f)
        if not by:
            raise RoadtopError("probe_files: no training images to probe on: check data_path")
        smallest = min(by, key=lambda k: (len(by[k]), k))
        pick = sorted(by[smallest])
    if len(pick) < need:
        chosen = set(map(str, pick))
        rest = [f for f in files if str(f) not in chosen]
        random.Random(seed).shuffle(rest)
        pick += rest[:need - len(pick)]
    return pick


def images_needed(steps: int) -> int:
    """Images a subset needs so its training split holds (1 + steps) batches of 64 (warm-up + measured)."""
    return math.ceil((1 + steps) * EFFECTIVE_BS / (1 - PROBE_VALID_PCT)) + 1


def _dataloaders(path, files, spec: dict, accum: int, num_workers):
    """The training notebook's DataLoaders for a trial: the run's item Resize and aug_transforms, bs 64 // accum."""
    size = spec.get("size", 64)
    item_size = spec.get("item_size", 128)
    dblock = DataBlock(blocks=(ImageBlock, CategoryBlock), get_items=lambda _: list(files), get_y=parent_label,
                       splitter=RandomSplitter(PROBE_VALID_PCT),
                       item_tfms=Resize(item_size if isinstance(item_size, int) else tuple(item_size),
                                        method=spec.get("item_method", "squish")),
                       batch_tfms=aug_transforms(size=size if isinstance(size, int) else tuple(size), min_scale=0.75))
    workers = default_workers() if num_workers is None else num_workers
    return dblock.dataloaders(Path(path), bs=EFFECTIVE_BS // accum, num_workers=workers)


class _StepEvery(Callback):
    """One optimiser step per `accum` batches: the step pattern (hence memory and time) of gradient accumulation.

    The training notebook attaches fastai's callback for this; the probe only needs its rhythm, not its loss scaling.
    """

    order, run_valid = 6, False  # before MixedPrecision (10), as fastai's accumulation callback

    def __init__(self, accum: int):
        self.accum = accum

    def before_fit(self):
        self.seen = 0

    def before_step(self):
        self.seen += 1
        if self.seen % self.accum:
            raise CancelBatchException()  # skip this step and zero_grad: the gradients keep adding up


def _learner(dls, arch: str, accum: int):
    """A random-weights `vision_learner` as the training notebook builds it (fp16 on a GPU), stepping every accum."""
    learn = vision_learner(dls, arch, pretrained=False, metrics=[], cbs=[_StepEvery(accum)] if accum > 1 else [])
    channels_first(learn.model)
    return learn.to_fp16() if torch.cuda.is_available() else learn


def _meter(measured: int, cap: int):
    """A fastai callback: times `measured` training batches after the first real optimiser step, then stops the
    fit (or after `cap` batches). fp16 steps skipped for overflow do not count: only a real step creates the
    optimiser state, and memory peaks after it."""
    class ProbeMeter(Callback):
        order = 100  # after the accumulation step and MixedPrecision

        def before_fit(self):
            self.n, self.steps, self.timed, self.secs, self.imgs = 0, 0, 0, 0.0, 0
            self.last, self.pause, self.started, self.cancelled = None, None, False, False

        def before_batch(self):
            self.cancelled = False

        def after_cancel_step(self):
            self.cancelled = True  # MixedPrecision skipped this step (inf/NaN gradients)

        def after_step(self):
            self.steps += not self.cancelled

        def after_train(self):
            self.pause = time.perf_counter()  # a small subset takes several epochs: validation is not training

        def before_train(self):
            if self.pause is not None and self.last is not None:
                self.last += time.perf_counter() - self.pause

        def after_batch(self):
            if not self.training:
                return
            self.n += 1
            _sync()
            now = time.perf_counter()
            if self.started:
                self.secs += now - self.last
                self.imgs += find_bs(self.yb)
                self.timed += 1
            self.started = self.started or self.steps > 0
            self.last = now
            if self.timed >= measured or self.n >= cap:
                raise CancelFitException()

    return ProbeMeter()


def _leave_autocast(learn):
    """fastai's MixedPrecision enters autocast in before_batch: leave it if an error struck before after_loss."""
    mp = getattr(learn, "mixed_precision", None)
    if mp is not None and getattr(mp, "autocast", None) is not None and torch.is_autocast_enabled("cuda"):
        mp.autocast.__exit__(None, None, None)


def _infer_seconds(learn, n: int):
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


def _train_trial(path, files, spec: dict, accum: int, steps: int, batches, num_workers):
    """Train `spec` on `files` for warm-up + measured batches at `accum`; peak memory and seconds per image."""
    learn = None
    measured = batches - accum if batches else steps * accum  # after a warm-up of one step (accum batches)
    try:
        dls = _dataloaders(path, files, spec, accum, num_workers)
        if len(dls.train) == 0:
            raise RoadtopError(f"probe: {len(dls.train_ds)} training images make no batch of {dls.bs}: "
                               f"use more images (probe_images)")
        learn = _learner(dls, spec["arch"], accum)
        if hasattr(learn, "mixed_precision"):  # start the fp16 loss scale low: fewer skipped (stateless) steps
            learn.mixed_precision.kwargs["init_scale"] = 2.0**10
        meter = _meter(measured, cap=measured + 9 * accum)
        with learn.no_bar(), learn.no_logging():
            learn.fit(10_000, 1e-3, cbs=meter)  # the meter cancels the fit
        s_infer = _infer_seconds(learn, max(1, min(steps, 4)))  # TTA and validation run forward only
        peak = {}
        if torch.cuda.is_available():
            peak = {"peak_reserved_gb": round(torch.cuda.max_memory_reserved() / GIB, 3),
                    "peak_allocated_gb": round(torch.cuda.max_memory_allocated() / GIB, 3)}
        return {**peak, "s_per_img": meter.secs / meter.imgs if meter.imgs else None, "s_per_img_infer": s_infer,
                "batches": meter.n, "optimiser_steps": meter.steps}
    except BaseException:
        if learn is not None:
            _leave_autocast(learn)
        raise


def probe_trial(path, files, spec: dict, accum: int, steps: int = 2, batches: int = 0, num_workers=None) -> dict:
    """One trial of `spec` at `accum`: a record with status ok/oom/error, peak GiB and seconds per image."""
    free_memory()
    return guarded_trial(lambda: _train_trial(path, files, spec, accum, steps, batches, num_workers), accum)


def probe_run(spec: dict, accums, trial, fits, stop_at_fit: bool = True) -> list:
    """Trials of one run in increasing accum (plus its explicit accum); stops at the first fit if asked."""
    todo = sorted({*accums, *([spec["accum"]] if "accum" in spec else [])})
    out = []
    for a in todo:
        rec = trial(a)
        out.append(rec)
        if rec["status"] == "error":  # a bug or a bad spec: another accum will not help
            break
        done_explicit = "accum" not in spec or any(r["accum"] == spec["accum"] for r in out)
        if stop_at_fit and fits(rec) and done_explicit:
            break
    return out


def probe_all(path, files, runs: dict, accums, steps: int = 2, stop_at_fit: bool = True, budget_gb: float = 16.0,
              margin_gb: float = 0.75, num_workers=None, progress: bool = True, log=print) -> dict:
    """Probe every run: name -> {spec, trials, accum (the choice), reason}."""
    for a in accums:
        check_accum(a, "probe accums")

    def fits(rec):
        return trial_fits(rec, budget_gb, margin_gb)

    out, measured = {}, {}  # measured: spec -> the run it was measured for (k folds of a run share one spec)
    for name in progress_bar(list(runs), display=progress, leave=False):
        spec = runs[name]
        key = json.dumps(spec, sort_keys=True, default=str)
        if key in measured:
            first = out[measured[key]]
            out[name] = {**first, "reason": f"{first['reason']}; as {measured[key]}, same spec"}
        else:
            measured[key] = name
            trials = probe_run(spec, accums, lambda a, s=spec: probe_trial(path, files, s, a, steps, 0, num_workers),
                               fits, stop_at_fit)
            accum, reason = choose_accum(trials, budget_gb, margin_gb)
            out[name] = {"spec": spec, "trials": trials, "accum": accum, "reason": reason}
        accum, reason = out[name]["accum"], out[name]["reason"]
        if log:
            fixed = f"; this run sets accum {spec['accum']} itself" if "accum" in spec else ""
            log(f"{name:24s} {spec.get('arch', '?'):28s} -> accum {accum}  ({reason}{fixed})")
    return out


def probe_result(runs: dict, info: dict, counts: dict, settings: dict, seconds: float, stages=None) -> dict:
    """The probe's JSON record: where it ran, the budget it used, the data's size and every run's trials, each with
    the stage that trains it (`stages`: run name -> stage)."""
    runs = {name: {**r, "stage": (stages or {}).get(name)} for name, r in runs.items()}
    return {**info, **settings, "counts": counts, "seconds": round(seconds, 1), "runs": runs,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S")}


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
    with atomic_write(out / PROBE_JSON) as f:
        json.dump(result, f, indent=1)
    with atomic_write(out / PROBE_CSV) as f:
        trials_frame(result).to_csv(f, index=False)
    return out / PROBE_JSON


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
