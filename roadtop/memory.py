"""Lesson 7's memory probe, automated: peak GPU memory per run x accum, the accum that fits, and the 9 h plan.

A *trial* trains one run (arch, item transform, size) for a few batches at one gradient-accumulation setting
(`bs = 64 // accum`) on a small subset and records peak GPU memory and seconds per image. An out-of-memory is caught
and recorded as "does not fit". The probe notebook writes every trial to `probe.json`; `resolve_accum` turns a
plan's `accum: auto` into the smallest accum that fits the budget with a margin, and `check_plan` estimates each
run's time from the measured speed and refuses a plan that overflows the time budget.
"""

import gc
import json
import math
import random
import time
from contextlib import nullcontext
from pathlib import Path

from .errors import RoadtopError
from .paths import KAGGLE_INPUT, atomic_write, default_out

__all__ = [
    "DEMO_RUNS", "EFFECTIVE_BS", "PROBE_CSV", "PROBE_JSON", "PROBE_PNG", "RUN_STAGES", "SPEC_KEYS",
    "budget_fraction", "check_accum", "check_plan", "choose_accum", "device_info", "emulate_budget",
    "estimate_seconds", "free_memory", "guarded_trial", "images_needed", "is_oom", "load_probe", "notebook_accum", "plan_rows",
    "plot_probe", "probe_all", "probe_files", "probe_result", "probe_run", "probe_runs", "probe_trial",
    "resolve_accum", "run_key", "run_spec", "save_probe", "trial_fits", "trials_frame",
]

EFFECTIVE_BS = 64  # lesson 7: every run sees batches of 64, in `accum` pieces of 64 // accum
PROBE_JSON, PROBE_CSV, PROBE_PNG = "probe.json", "probe.csv", "probe.png"
RUN_STAGES = ("train", "multitarget")  # the stages whose jobs train a model (and take `accum`)
SPEC_KEYS = ("arch", "item_method", "item_size", "size")  # what decides a run's memory and speed
PROBE_VALID_PCT = 0.2  # the probe splits its subset like a training run does
INFER_RATIO = 1 / 3  # forward-only cost relative to a training step, when inference was not timed
RUN_OVERHEAD_S = 10.0  # per run: kernel start, imports, loaders and model creation (measured ~7 s on the CPU demo)
GIB = 2**30
DEMO_RUNS = {"convnext_squish": {"arch": "test_convnext", "item_method": "squish", "item_size": 128, "size": 64}}
_OOM_MARKS = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED",
              "CUDNN_STATUS_NOT_ENOUGH_WORKSPACE")


# ---- plan side: what to probe, and `accum` values -------------------------------------------------------------
def check_accum(value, where: str):
    """Return `value` if it is "auto" or a positive divisor of 64; else raise one line naming `where`."""
    if value == "auto":
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1 and EFFECTIVE_BS % value == 0:
        return value
    raise RoadtopError(f"{where}: accum={value!r} is not allowed: use a positive divisor of {EFFECTIVE_BS} "
                       f"(1, 2, 4, 8, ...) or 'auto' (the memory probe's choice)")


def run_key(job) -> str:
    """The name a training job has in the probe: its run name (train/<run>) or its stage (multitarget)."""
    return job.name.split("/", 1)[-1]


def _norm(v):
    """JSON-stable value: tuples become lists (so specs compare equal after a round trip)."""
    return [_norm(x) for x in v] if isinstance(v, (list, tuple)) else v


def run_spec(params: dict) -> dict:
    """The part of a run's parameters that decides memory and speed (plus an explicit int accum)."""
    spec = {k: _norm(params[k]) for k in SPEC_KEYS if k in params}
    if isinstance(params.get("accum"), int):
        spec["accum"] = params["accum"]
    return spec


def probe_runs(jobs) -> dict:
    """run name -> spec for every training job: what the pipeline injects as the probe's `runs`."""
    return {run_key(j): run_spec(j.params) for j in jobs if j.stage in RUN_STAGES}


# ---- the GPU: budget emulation, cleanup, out-of-memory --------------------------------------------------------
def budget_fraction(budget_gb: float, total_bytes: int) -> float:
    """The share of a GPU of `total_bytes` that is `budget_gb` GiB (1.0 when the GPU is no bigger)."""
    return min(1.0, budget_gb * GIB / total_bytes)


def emulate_budget(budget_gb: float, enable: bool = True):
    """Cap this process's CUDA allocator at `budget_gb` GiB on a bigger GPU; the fraction set, or None (CPU/off)."""
    import torch

    if not (enable and torch.cuda.is_available()):
        return None
    frac = budget_fraction(budget_gb, torch.cuda.get_device_properties(0).total_memory)
    torch.cuda.set_per_process_memory_fraction(frac, 0)
    return frac


def device_info() -> dict:
    """Where the probe runs: device name, whether GPU memory is measured, total and non-torch memory (GiB)."""
    import torch

    if not torch.cuda.is_available():
        return {"device": "cpu", "gpu_measured": False, "gpu_total_gb": None, "outside_torch_gb": None}
    torch.zeros(1, device="cuda")  # creates the CUDA context, which torch's allocator does not count
    free, total = torch.cuda.mem_get_info()
    outside = (total - free - torch.cuda.memory_reserved()) / GIB
    return {"device": torch.cuda.get_device_name(0), "gpu_measured": True, "gpu_total_gb": round(total / GIB, 2),
            "outside_torch_gb": round(outside, 3)}


def free_memory():
    """Drop what the last trial left: collect garbage, empty CUDA's cache, reset the peak counters."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def is_oom(e: BaseException) -> bool:
    """True for CUDA's out-of-memory error and the cuBLAS/cuDNN allocation failures that mean the same."""
    import torch

    return isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError)
                                                      and any(m in str(e) for m in _OOM_MARKS))


def _sync():
    import torch

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


# ---- one trial ------------------------------------------------------------------------------------------------
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


def _meter(measured: int, cap: int):
    """A fastai callback: times `measured` training batches after the first real optimiser step, then stops the
    fit (or after `cap` batches). fp16 steps skipped for overflow do not count: only a real step creates the
    optimiser state, and memory peaks after it."""
    from fastai.callback.core import Callback, CancelFitException
    from fastai.torch_core import find_bs

    class ProbeMeter(Callback):
        order = 100  # after GradientAccumulation and MixedPrecision

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
    import torch

    mp = getattr(learn, "mixed_precision", None)
    if mp is not None and getattr(mp, "autocast", None) is not None and torch.is_autocast_enabled("cuda"):
        mp.autocast.__exit__(None, None, None)


def _infer_seconds(learn, n: int):
    """Seconds per image of forward passes (no gradients) over `n` batches (after a warm-up batch on GPU)."""
    import torch
    from fastai.torch_core import find_bs

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
    import torch

    from .train import dataloaders, learner

    learn = None
    measured = batches - accum if batches else steps * accum  # after a warm-up of one step (accum batches)
    try:
        dls = dataloaders(path, files, spec.get("item_method", "squish"), spec.get("item_size", 128),
                          spec.get("size", 64), accum, PROBE_VALID_PCT, None, num_workers=num_workers)
        if len(dls.train) == 0:
            raise RoadtopError(f"probe: {len(dls.train_ds)} training images make no batch of {dls.bs}: "
                               f"use more images (probe_images)")
        learn = learner(dls, spec["arch"], pretrained=False, accum=accum, metrics=[])
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
    from fastprogress.fastprogress import progress_bar

    for a in accums:
        check_accum(a, "probe accums")

    def fits(rec):
        return trial_fits(rec, budget_gb, margin_gb)

    out = {}
    for name in progress_bar(list(runs), display=progress, leave=False):
        spec = runs[name]
        trials = probe_run(spec, accums, lambda a, s=spec: probe_trial(path, files, s, a, steps, 0, num_workers),
                           fits, stop_at_fit)
        accum, reason = choose_accum(trials, budget_gb, margin_gb)
        out[name] = {"spec": spec, "trials": trials, "accum": accum, "reason": reason}
        if log:
            log(f"{name:24s} {spec.get('arch', '?'):28s} -> accum {accum}  ({reason})")
    return out


# ---- the choice ---------------------------------------------------------------------------------------------
def trial_fits(rec: dict, budget_gb: float, margin_gb: float) -> bool:
    """A trial fits when it ran and its peak (reserved) stays under budget - margin; unmeasured (CPU) fits."""
    if rec.get("status") != "ok":
        return False
    peak = rec.get("peak_reserved_gb")
    return peak is None or peak <= budget_gb - margin_gb


def choose_accum(trials: list, budget_gb: float, margin_gb: float):
    """(smallest accum that fits, why) from a run's trials; (None, why not) when none does."""
    ok = sorted((r for r in trials if trial_fits(r, budget_gb, margin_gb)), key=lambda r: r["accum"])
    if ok:
        r = ok[0]
        if r.get("peak_reserved_gb") is None:
            return r["accum"], "GPU memory not measured (CPU): the largest batch that ran"
        return r["accum"], (f"peak {r['peak_reserved_gb']:.2f} GiB at bs {r['bs']} <= {budget_gb:g} - "
                            f"{margin_gb:g} GiB")
    if not trials:
        return None, "not probed"
    why = []
    for r in sorted(trials, key=lambda r: r["accum"]):
        if r["status"] == "ok":
            why.append(f"{r['accum']}: {r['peak_reserved_gb']:.2f} GiB > {budget_gb - margin_gb:g}")
        else:
            why.append(f"{r['accum']}: {r['status']}" + (f" ({r['error'][:80]})" if r["status"] == "error" else ""))
    return None, "nothing fits (" + "; ".join(why) + ")"


# ---- the probe's output -----------------------------------------------------------------------------------------
def probe_result(runs: dict, info: dict, counts: dict, settings: dict, seconds: float) -> dict:
    """The probe's JSON record: where it ran, the budget it used, the data's size and every run's trials."""
    return {**info, **settings, "counts": counts, "seconds": round(seconds, 1), "runs": runs,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S")}


def trials_frame(result: dict):
    """Every trial as one row of a DataFrame (run, spec, accum, status, peaks, speed, chosen)."""
    import pandas as pd

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
    import matplotlib.pyplot as plt
    import numpy as np

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


def load_probe(out_dir) -> dict:
    """The probe's probe.json from `out_dir`; one clear error if the probe has not run or failed."""
    from .runner import FAILED

    out = Path(out_dir)
    f, failed = out / PROBE_JSON, out / FAILED
    if failed.exists():
        try:
            cause = json.loads(failed.read_text()).get("cause", "")
        except (OSError, ValueError):
            cause = "?"
        raise RoadtopError(f"the memory probe failed ({cause}): see {out / 'probe.ipynb'}, fix it and rerun "
                           f"`pipeline.py run --only probe`, or set accum explicitly")
    if not f.exists():
        raise RoadtopError(f"{f} is missing: the memory probe has not run; run `pipeline.py run --only probe` "
                           f"(or the whole plan) first")
    try:
        return json.loads(f.read_text())
    except ValueError:
        raise RoadtopError(f"{f} is not valid JSON: delete it and rerun `pipeline.py run --only probe`") from None


def _probe_job(plan, why: str):
    """The plan's probe job, or one clear error saying that `why` needs it."""
    for j in plan.jobs:
        if j.stage == "probe":
            return j
    raise RoadtopError(f"{plan.source.name}: {why} needs the memory probe: add a `probe:` section to the plan "
                       f"(e.g. `probe: {{}}`)")


def _entry(probe: dict, name: str, spec: dict, where: str) -> dict:
    """The probe's record for run `name`, checked against the run's current spec."""
    e = probe.get("runs", {}).get(name)
    if e is None:
        raise RoadtopError(f"{where}: the probe has no run '{name}' (the plan changed since): rerun "
                           f"`pipeline.py run --only probe`")
    old = {k: _norm(v) for k, v in e["spec"].items()}
    if old != spec:
        raise RoadtopError(f"{where}: the probe measured {old}, the plan now says {spec}: rerun "
                           f"`pipeline.py run --only probe`")
    return e


def resolve_accum(plan, job) -> int:
    """`accum: auto` -> the smallest accum whose probed peak fits the plan's budget with margin (1 on CPU)."""
    where = f"{plan.source.name} {job.name}"
    pj = _probe_job(plan, f"{job.name}'s accum: auto")
    probe = load_probe(pj.out_dir)
    e = _entry(probe, run_key(job), run_spec(job.params), where)
    if not probe.get("gpu_measured"):
        import torch

        if torch.cuda.is_available():
            raise RoadtopError(f"{where}: the probe ran on CPU but this machine has a GPU: rerun it here with "
                               f"`pipeline.py run --only probe --force`")
    budget, margin = pj.params["gpu_budget_gb"], pj.params["margin_gb"]
    accum, reason = choose_accum(e["trials"], budget, margin)
    if accum is None:
        raise RoadtopError(f"{where}: accum: auto, but {reason} under {budget:g} GiB: use a smaller size or arch, "
                           f"or add a larger accum to probe.accums")
    return accum


def notebook_accum(accum, spec: dict, search=None) -> int:
    """`accum` for a notebook run outside the pipeline: an int as is; "auto" from a probe.json with this spec."""
    check_accum(accum, "accum")
    if accum != "auto":
        return accum
    import torch

    spec = run_spec({**spec, "accum": None})
    dirs = search if search is not None else [default_out("probe"), *sorted(KAGGLE_INPUT.glob("*")),
                                              *sorted(KAGGLE_INPUT.glob("*/probe"))]
    for d in map(Path, dirs):
        f = d / PROBE_JSON
        if not f.exists():
            continue
        probe = json.loads(f.read_text())
        for e in probe.get("runs", {}).values():
            if {k: _norm(v) for k, v in e["spec"].items() if k != "accum"} == spec:
                a, _ = choose_accum(e["trials"], probe["gpu_budget_gb"], probe["margin_gb"])
                if a is not None and (probe.get("gpu_measured") or not torch.cuda.is_available()):
                    print(f"accum: auto -> {a} (from {f})")
                    return a
    if not torch.cuda.is_available():
        print("accum: auto -> 1 (CPU, no probe for this run: memory is not the limit here)")
        return 1
    raise RoadtopError(f"accum='auto' but no probe.json in {[str(d) for d in dirs]} measured {spec} on a GPU: "
                       f"run notebooks/probe.ipynb first, or set accum")


# ---- the time plan ----------------------------------------------------------------------------------------------
def estimate_seconds(s_fit: float, s_infer: float, counts: dict, params: dict,
                     overhead_s: float = RUN_OVERHEAD_S) -> float:
    """One run's time: (fine_tune's frozen epoch +) epochs over the fit split, validation, final validate, TTA,
    plus a fixed start-up overhead."""
    n_train = counts["n_train"]
    vp = params.get("valid_pct", 0.2)
    n_fit, n_valid = n_train * (1 - vp), n_train * vp
    epochs = params.get("epochs", 1) + (1 if params.get("finetune") else 0)
    tta_passes = params.get("tta_n", 4) + 1  # fastai's tta: n augmented passes + one plain pass
    s_infer = s_infer if s_infer else s_fit * INFER_RATIO
    return overhead_s + (epochs * n_fit * s_fit + (epochs + 1) * n_valid * s_infer
            + tta_passes * (counts["n_test"] + counts.get("n_holdout", 0)) * s_infer)


def _speed(trials: list, accum: int):
    """(s_per_img, s_per_img_infer) at `accum`, else from the nearest accum that ran."""
    ran = [t for t in trials if t["status"] == "ok" and t.get("s_per_img")]
    if not ran:
        return None, None
    t = min(ran, key=lambda t: (abs(math.log2(t["accum"]) - math.log2(accum or 1)), t["accum"]))
    return t["s_per_img"], t.get("s_per_img_infer")


def plan_rows(plan) -> tuple:
    """(rows, probe job, probe): per training run its accum, peak GiB at that accum, fit, est. seconds."""
    pj = _probe_job(plan, "`pipeline.py plan`")
    probe = load_probe(pj.out_dir)
    budget, margin = pj.params["gpu_budget_gb"], pj.params["margin_gb"]
    rows, cum = [], float(probe.get("seconds") or 0)
    for job in plan.jobs:
        if job.stage not in RUN_STAGES:
            continue
        name, acc = run_key(job), job.params.get("accum", 1)
        e = _entry(probe, name, run_spec(job.params), f"{plan.source.name} {job.name}")
        auto = acc == "auto"
        if auto:
            acc, _ = choose_accum(e["trials"], budget, margin)
        t = next((t for t in e["trials"] if t["accum"] == acc), None)
        fits = t is not None and trial_fits(t, budget, margin)
        s_fit, s_inf = _speed(e["trials"], acc)
        secs = estimate_seconds(s_fit, s_inf, probe["counts"], job.params) if s_fit else float("nan")
        cum += 0 if math.isnan(secs) else secs
        if t is None:
            peak, peak_txt = None, "not probed"
        elif t["status"] != "ok":
            peak, peak_txt = None, t["status"].upper()
        else:
            peak = t["peak_reserved_gb"]
            peak_txt = "n/m" if peak is None else f"{peak:.2f}"
        rows.append({"run": name, "accum": acc, "auto": auto, "peak_gb": peak, "peak": peak_txt, "fits": fits,
                     "seconds": secs, "cumulative": cum})
    return rows, pj, probe


def _dur(s: float) -> str:
    """'1h 05m', '4m 07s' or '12.3s'."""
    if s is None or math.isnan(s):
        return "?"
    if s >= 3600:
        return f"{int(s // 3600)}h {int(s % 3600 // 60):02d}m"
    return f"{int(s // 60)}m {int(s % 60):02d}s" if s >= 60 else f"{s:.1f}s"


def check_plan(plan, override: bool = False, log=print) -> int:
    """Print run / accum / est. peak / est. time against time_budget_h; refuse an overflowing plan unless `override`."""
    rows, pj, probe = plan_rows(plan)
    hours, budget = pj.params["time_budget_h"], pj.params["gpu_budget_gb"]
    c = probe["counts"]
    if probe.get("gpu_measured"):
        mem = f"GPU memory measured, {budget:g} GiB budget - {pj.params['margin_gb']:g} margin"
        if probe.get("emulated_fraction"):
            mem += f", emulated at {probe['emulated_fraction']:.3f} of the card"
    else:
        mem = "GPU memory not measured: n/m"
    log(f"plan {plan.name}: probe on {probe.get('device')} ({mem}); {c['n_train']} train / {c.get('n_holdout', 0)} "
        f"holdout / {c['n_test']} test images")
    log(f"{'run':28s} {'accum':>8s} {'est. peak GiB':>14s} {'est. time':>10s} {'cumulative':>11s}")
    log(f"{'(probe)':28s} {'':>8s} {'':>14s} {_dur(probe.get('seconds') or 0):>10s} "
        f"{_dur(probe.get('seconds') or 0):>11s}")
    for r in rows:
        acc = "-" if r["accum"] is None else f"{'auto ' if r['auto'] else ''}{r['accum']}"
        flag = "" if r["fits"] else "  <- does not fit"
        log(f"{r['run']:28s} {acc:>8s} {r['peak']:>14s} {_dur(r['seconds']):>10s} {_dur(r['cumulative']):>11s}{flag}")
    total = rows[-1]["cumulative"] if rows else float(probe.get("seconds") or 0)
    over = [r["run"] for r in rows if r["cumulative"] > hours * 3600]
    unfit = [r["run"] for r in rows if not r["fits"]]
    log(f"total {total / 3600:.2f} h of time_budget_h {hours:g} (speed measured on {probe.get('device')}; "
        f"{RUN_OVERHEAD_S:g} s a run for start-up)")
    problems = []
    if over:
        problems.append(f"est. {total / 3600:.2f} h > time_budget_h {hours:g}: run(s) {', '.join(over)} overflow "
                        f"(drop them, lower epochs/tta_n, or raise time_budget_h)")
    if unfit:
        problems.append(f"run(s) {', '.join(unfit)} do not fit {budget:g} GiB at their accum (use accum: auto or "
                        f"a larger accum)")
    if problems and not override:
        raise RoadtopError(f"plan {plan.name} refused: {'; '.join(problems)}; --override runs it anyway")
    if problems:
        log(f"over budget, going on (--override): {'; '.join(problems)}")
    else:
        log("within budget: OK")
    return 0
