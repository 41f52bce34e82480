"""Execute a plan's jobs with papermill: skip what is done, isolate failures, write manifests last."""

import json
import shutil
import time
from pathlib import Path

import papermill as pm

from ..errors import RoadtopError
from ..paths import atomic_write
from .budget import resolve_accum
from .checks import cached_check, check_runs_dirs, raise_problems
from .fingerprint import data_fingerprint, job_fingerprint
from .params import notebook_params
from .plan import resolve_plan_data
from .records import FAILED, MANIFEST, cause, job_state, record_failure
from .report import write_report

__all__ = ["execute_job", "check_data", "run_plan"]


def execute_job(job, fingerprint: str, log=print) -> dict:
    """Run one notebook with papermill into its out_dir; manifest.json (written last) marks it complete."""
    out = job.out_dir
    out.mkdir(parents=True, exist_ok=True)
    for stale in (MANIFEST, FAILED):  # from here until the manifest is rewritten, the job is not complete
        (out / stale).unlink(missing_ok=True)
    before = {p.name: p.stat().st_mtime for p in out.iterdir()}
    executed = out / f"{job.stage}.ipynb"
    t0 = time.time()
    try:
        pm.execute_notebook(str(job.notebook), str(executed), parameters=job.params, cwd=str(job.notebook.parent),
                            kernel_name="python3", progress_bar=True, log_output=False)
    except Exception as e:  # noqa: BLE001 - any failure of one job must not stop the others
        return record_failure(job, cause(e), seconds=time.time() - t0, notebook=executed.name)
    outputs = sorted(p.name for p in out.iterdir()
                     if p.is_file() and not p.name.startswith(".") and p.name not in (executed.name, MANIFEST)
                     and (p.name not in before or p.stat().st_mtime != before[p.name]))
    rec = {"job": job.name, "fingerprint": fingerprint, "seconds": round(time.time() - t0, 1),
           "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "notebook": executed.name, "outputs": outputs,
           "params": job.params}
    with atomic_write(out / MANIFEST) as f:
        json.dump(rec, f, indent=1, default=str)
    return {"state": "complete", **rec}


def _publish(src: Path, dst: Path):
    """Copy a finished artifact to a top-level name atomically."""
    with atomic_write(dst, "wb") as f, open(src, "rb") as s:
        shutil.copyfileobj(s, f)


def check_data(plan, data: Path, data_fp: str, skip_bad: bool = False, log=print) -> list:
    """Check the Paddy data before anything runs; returns image ids to skip (only with skip_bad), else raises."""
    probs = cached_check(data, data_fp, plan.out_dir / "checks", plan.data.get("labels"))
    skip = sorted({p.image for p in probs if p.image}) if skip_bad else []
    fatal = [p for p in probs if not (skip_bad and p.image)]
    raise_problems(fatal, f"data check of {data}")
    if skip:
        log(f"--skip-bad: leaving out {len(skip)} image(s): {', '.join(skip[:10])}{' ...' if len(skip) > 10 else ''}")
        for j in plan.jobs:
            if "skip_images" in notebook_params(j.notebook):
                j.params["skip_images"] = skip
    return skip


def _bad_members(plan, names) -> dict:
    """Complete runs whose saved predictions cannot be ensembled: {name: one-line cause}."""
    bad = {}
    for n in names:
        for p in check_runs_dirs([plan.job(n).out_dir]):
            bad[n] = p.what
    ok = [n for n in names if n not in bad]
    for p in check_runs_dirs([plan.job(n).out_dir for n in ok]):
        culprit = next((n for n in ok if f"run '{Path(plan.job(n).out_dir).name}'" in p.what), ok[-1])
        bad[culprit] = p.what
    return bad


def _ensemble_members(plan, job, states, allow_partial, tag, log):
    """The complete runs whose predictions pass their checks; None when the ensemble should wait."""
    done = [d for d in job.needs if states.get(d, {}).get("state") == "complete"]
    for d, why in _bad_members(plan, done).items():
        log(f"{tag}: run {d} cannot be ensembled: {why}")
        states[d] = {"state": "failed", "cause": why}
        done.remove(d)
    left = [d for d in job.needs if d not in done]
    if not done:
        log(f"{tag}: skipped, no complete run to ensemble")
        return None
    if left and not allow_partial:
        log(f"{tag}: skipped, {len(left)} run(s) not complete ({', '.join(left)}); "
            f"--allow-partial ensembles the {len(done)} complete run(s)")
        return None
    if left:
        log(f"{tag}: left out of the ensemble: {', '.join(left)}")
    return done


def run_plan(plan, force=False, only=None, allow_partial=False, skip_bad=False, log=print) -> int:
    """Run the plan's jobs in order; returns the exit code (non-zero if any job failed)."""
    t_start = time.time()
    if any(j.stage != "collab" for j in plan.jobs):  # the Paddy stages: data resolved, fingerprinted, checked
        data = resolve_plan_data(plan)
        data_fp = data_fingerprint(data)
        check_data(plan, data, data_fp, skip_bad or bool(plan.data.get("skip_bad")), log)
    else:
        data, data_fp = "(none: collab reads its own)", ""
    log(f"plan {plan.name} ({plan.source}): {len(plan.jobs)} jobs, data {data}, outputs {plan.out_dir}")
    only = set(only or [])
    unknown = only - {j.name for j in plan.jobs} - {j.name.split("/", 1)[-1] for j in plan.jobs}
    if unknown:
        raise RoadtopError(f"--only {sorted(unknown)}: no such job; pick from {[j.name for j in plan.jobs]}")
    fps, states = {}, {}
    n = len(plan.jobs)
    for k, job in enumerate(plan.jobs, 1):
        tag = f"[{k}/{n}] {job.name}"
        if job.stage in ("train", "multitarget") and job.params.get("accum") == "auto":
            try:
                job.params["accum"] = resolve_accum(plan, job)  # the probe (an earlier job) picked it
            except RoadtopError as e:  # no usable probe: this job cannot start, the others go on
                states[job.name] = record_failure(job, str(e))
                log(f"{tag}: FAILED before starting: {e}")
                continue
        picked = not only or job.name in only or job.name.split("/", 1)[-1] in only
        members = None
        if job.stage == "ensemble":  # which runs it reads decides its parameters, so pick them first
            members = _ensemble_members(plan, job, states, allow_partial, tag, log if picked else (lambda _: None))
            if members is None:
                states[job.name] = {"state": "pending"}
                continue
            job.params["run_dirs"] = [str(plan.job(d).out_dir) for d in members]
        fp = fps[job.name] = job_fingerprint(job, data_fp, fps, members)
        state = job_state(job, fp)
        if state["state"] == "complete" and not (force and picked):
            log(f"{tag}: up to date, skipped ({job.out_dir})")
            states[job.name] = state
            continue
        if not picked:
            log(f"{tag}: not in --only, left {state['state']}")
            states[job.name] = state
            continue
        log(f"{tag}: running {job.notebook.name} -> {job.out_dir} (elapsed {time.time() - t_start:.0f}s)")
        state = states[job.name] = execute_job(job, fp, log)
        if state["state"] == "complete":
            log(f"{tag}: done in {state['seconds']:.1f}s")
            if job.stage == "ensemble":
                _publish(job.out_dir / "submission.csv", plan.out_dir / "submission.csv")
        else:
            log(f"{tag}: FAILED after {state['seconds']:.1f}s: {state['cause']} "
                f"(see {job.out_dir / state['notebook']})")
    failed = [n for n, s in states.items() if s["state"] == "failed"]
    log(f"finished in {time.time() - t_start:.0f}s: {sum(s['state'] == 'complete' for s in states.values())} "
        f"complete, {len(failed)} failed{': ' + ', '.join(failed) if failed else ''}")
    sub = plan.out_dir / "submission.csv"
    if sub.exists() and states.get("ensemble", {}).get("state") == "complete":
        log(f"submission: {sub}")
    try:
        log(f"report: {write_report(plan, states)}")
    except Exception as e:  # noqa: BLE001 - the report only shows what ran: it must not fail the run
        log(f"report not written: {cause(e)}")
    return 1 if failed else 0
