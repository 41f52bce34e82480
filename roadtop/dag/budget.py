"""Time and memory budgets of a plan from the probe's results: `accum: auto`, per-run estimates, the 9 h check."""

import json
import math
from pathlib import Path

import pandas as pd

from ..accum import auto_accum, probe_file, read_probes, run_spec, same_spec, trial_fits
from ..clock import hms
from ..errors import RoadtopError
from .records import FAILED
from .stages import stage

__all__ = ["RUN_OVERHEAD_S", "run_key", "probe_runs", "probe_stages", "load_probe", "resolve_accum", "estimate_seconds", "plan_rows", "expected_seconds", "check_plan"]


INFER_RATIO = 1 / 3  # forward-only cost relative to a training step, when inference was not timed


RUN_OVERHEAD_S = 10.0  # per run: kernel start, imports, loaders and model creation (measured ~7 s on the CPU demo)


def run_key(job) -> str:
    """The name a training job has in the probe: its run name (train/<run>) or its stage (multitarget)."""
    return job.name.split("/", 1)[-1]


def probe_runs(jobs) -> dict:
    """run name -> spec for every training job: what the pipeline injects as the probe's `runs`."""
    return {run_key(j): run_spec(j.params) for j in jobs if stage(j.stage).trains}


def probe_stages(jobs) -> dict:
    """run name -> the stage that trains it: the probe's `stages`, recorded in probe.json for the notebooks."""
    return {run_key(j): j.stage for j in jobs if stage(j.stage).trains}


def load_probe(out_dir) -> dict:
    """The probe's probe.json from `out_dir`; one clear error if the probe has not run or failed."""
    out = Path(out_dir)
    failed = out / FAILED
    if failed.exists():
        try:
            cause = json.loads(failed.read_text()).get("cause", "")
        except (OSError, ValueError):
            cause = "?"
        raise RoadtopError(f"the memory probe failed ({cause}): see {out / 'probe.ipynb'}, fix it and rerun "
                           f"`pipeline.py run --only probe`, or set accum explicitly")
    for _, probe in read_probes([out]):
        return probe
    raise RoadtopError(f"{probe_file(out)} is missing: the memory probe has not run; run `pipeline.py run --only "
                       f"probe` (or the whole plan) first")


def _probe_job(plan, why: str):
    """The plan's probe job, or one clear error saying that `why` needs it."""
    for j in plan.jobs:
        if stage(j.stage).measures:
            return j
    raise RoadtopError(f"{plan.source.name}: {why} needs the memory probe: add a `probe:` section to the plan "
                       f"(e.g. `probe: {{}}`)")


def _entry(probe: dict, name: str, params: dict, where: str) -> dict:
    """The probe's record for run `name`, checked against the run's current parameters."""
    e = probe.get("runs", {}).get(name)
    if e is None:
        raise RoadtopError(f"{where}: the probe has no run '{name}' (the plan changed since): rerun "
                           f"`pipeline.py run --only probe`")
    if not same_spec(e["spec"], params):
        raise RoadtopError(f"{where}: the probe measured {run_spec(e['spec'])}, the plan now says {run_spec(params)}: "
                           f"rerun `pipeline.py run --only probe`")
    return e


def resolve_accum(plan, job) -> int:
    """`accum: auto` -> the smallest accum whose probed peak fits the probe's budget with margin (1 on CPU), as
    roadtop.accum.auto_accum says; one line naming the job when the probe is missing, stale or nothing fits."""
    where = f"{plan.source.name} {job.name}"
    pj = _probe_job(plan, f"{job.name}'s accum: auto")
    probe = load_probe(pj.out_dir)
    accum, why = auto_accum(probe, _entry(probe, run_key(job), job.params, where))
    if accum is None:
        raise RoadtopError(f"{where}: accum: auto, but {why}")
    return accum


def estimate_seconds(s_fit: float, s_infer: float, counts: dict, params: dict,
                     overhead_s: float = RUN_OVERHEAD_S, models: int = 1) -> float:
    """One run's time: (fine_tune's frozen epoch +) epochs over the fit split, validation, final validate, for each
    of the `models` it trains (multitarget: 2, the disease-only model beside it), TTA, plus a fixed start-up
    overhead."""
    n_train = counts["n_train"]
    vp = params.get("valid_pct", 0.2)
    n_fit, n_valid = n_train * (1 - vp), n_train * vp
    epochs = params.get("epochs", 1) + (1 if params.get("finetune") else 0)
    tta_passes = params.get("tta_n", 4) + 1  # fastai's tta: n augmented passes + one plain pass
    s_infer = s_infer if s_infer else s_fit * INFER_RATIO
    return overhead_s + (models * (epochs * n_fit * s_fit + (epochs + 1) * n_valid * s_infer)
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
        if not stage(job.stage).trains:
            continue
        name, acc = run_key(job), job.params.get("accum", 1)
        e = _entry(probe, name, job.params, f"{plan.source.name} {job.name}")
        auto = acc == "auto"
        if auto:
            acc, _ = auto_accum(probe, e)
        t = next((t for t in e["trials"] if t["accum"] == acc), None)
        fits = t is not None and trial_fits(t, budget, margin)
        s_fit, s_inf = _speed(e["trials"], acc)
        secs = (estimate_seconds(s_fit, s_inf, probe["counts"], job.params, models=stage(job.stage).models)
                if s_fit else float("nan"))
        cum += 0 if math.isnan(secs) else secs
        if t is None:
            peak, peak_txt = None, "not probed"
        elif t["status"] != "ok":
            peak, peak_txt = None, t["status"].upper()
        else:
            peak = t["peak_reserved_gb"]
            peak_txt = "n/m" if peak is None else f"{peak:.2f}"
        # predicting the test set again with TTA (a code competition's rerun): forward passes only
        predict_s = (job.params.get("tta_n", 4) + 1) * probe["counts"]["n_test"] * (s_inf or s_fit * INFER_RATIO) \
            if s_fit else float("nan")
        rows.append({"run": name, "job": job.name, "accum": acc, "auto": auto, "peak_gb": peak, "peak": peak_txt, "fits": fits,
                     "seconds": secs, "cumulative": cum, "predict_seconds": predict_s})
    return rows, pj, probe


def expected_seconds(plan) -> dict:
    """job name -> its expected seconds, from the probe (what `run --jobs` / `--gpus` starts longest first);
    empty until the probe has run (or when it failed, or the plan has none)."""
    try:
        rows, _, _ = plan_rows(plan)
    except (RoadtopError, KeyError, TypeError, ValueError):  # no usable probe.json: plan order it is (`plan` says why)
        return {}
    return {r["job"]: r["seconds"] for r in rows if not math.isnan(r["seconds"])}


def check_plan(plan, override: bool = False, log=print, checks=()) -> int:
    """Print run / accum / est. peak / est. time against time_budget_h; refuse an overflowing plan unless `override`.

    Each of `checks(plan, rows, session_h, log)` prints more and returns its problems as strings (e.g.
    roadtop.kaggle.budget.kaggle_budget, added by pipeline.py)."""
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
    probe_s = hms(probe.get("seconds") or 0, "?")
    table = [("(probe)", "", "", probe_s, probe_s, "")] + [
        (r["run"], "-" if r["accum"] is None else f"{'auto ' if r['auto'] else ''}{r['accum']}", r["peak"],
         hms(r["seconds"], "?"), hms(r["cumulative"], "?"), "" if r["fits"] else "<- does not fit") for r in rows]
    text = pd.DataFrame(table, columns=["run", "accum", "est. peak GiB", "est. time", "cumulative", ""])
    for line in text.to_string(index=False).splitlines():
        log(line.rstrip())
    total = rows[-1]["cumulative"] if rows else float(probe.get("seconds") or 0)
    # One session runs the whole plan, unless the plan fans out as Kaggle kernels (one session each: `checks`)
    over = [] if plan.kaggle else [r["run"] for r in rows if r["cumulative"] > hours * 3600]
    unfit = [r["run"] for r in rows if not r["fits"]]
    within = ("one Kaggle session per GPU kernel (kaggle.session_hours, checked below)" if plan.kaggle else
              f"of time_budget_h {hours:g}")
    log(f"total {total / 3600:.2f} h on one GPU, {within} (speed measured on {probe.get('device')}; "
        f"{RUN_OVERHEAD_S:g} s a run for start-up)")
    problems = []
    if over:
        problems.append(f"est. {total / 3600:.2f} h > time_budget_h {hours:g}: run(s) {', '.join(over)} overflow "
                        f"(drop them, lower epochs/tta_n, or raise time_budget_h)")
    if unfit:
        problems.append(f"run(s) {', '.join(unfit)} do not fit {budget:g} GiB at their accum (use accum: auto or "
                        f"a larger accum)")
    for check in checks:
        problems += check(plan, rows, hours, log)
    if problems and not override:
        raise RoadtopError(f"plan {plan.name} refused: {'; '.join(problems)}; --override runs it anyway")
    if problems:
        log(f"over budget, going on (--override): {'; '.join(problems)}")
    else:
        log("within budget: OK")
    return 0
