"""Execute a plan's jobs with papermill: skip what is done, isolate failures, write manifests last."""

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RoadtopError
from ..paths import atomic_write
from .budget import expected_seconds, resolve_accum
from .checks import cached_check, check_runs_dirs, raise_problems, walk_problems
from .datafiles import scan
from .fingerprint import data_fingerprint, fingerprint, job_parts
from .plan import resolve_plan_data
from .execute import execute_job
from .procs import Inline, JobProcs
from .records import State, cause, job_state, record_failure
from .render import with_data
from .report import write_report
from .slots import ONE_SLOT, decide, slot_label
from .stages import stage

__all__ = ["CHECKS", "Step", "check_out_dir", "csv_columns", "check_data", "prepare_data",
           "ensemble_members", "job_step", "walk", "run_plan"]

CHECKS = "checks"  # under the plan's out_dir: the data-check results and the per-file hash cache


def check_out_dir(folder, where: str = "out_dir"):
    """Raise one line unless `folder` can be written: it, or the nearest folder above it that exists, is a folder
    this process may write in (not a file, not read-only)."""
    folder = Path(folder)
    p = folder
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise RoadtopError(f"{where} {folder}: {p} is a file, not a folder: pick another --out (or out_dir in the plan)")
    if not os.access(p, os.W_OK | os.X_OK):
        raise RoadtopError(f"{where} {folder}: {p} is not writable (read-only or not yours): pick another --out "
                           f"(or out_dir in the plan), or fix its permissions")


def _publish(src: Path, dst: Path):
    """Copy a finished artifact to a top-level name atomically."""
    with atomic_write(dst, "wb") as f, open(src, "rb") as s:
        shutil.copyfileobj(s, f)


def csv_columns(plan) -> tuple:
    """The train.csv columns the plan's stages rely on (the stage table's csv_columns), in order, once each."""
    return tuple(dict.fromkeys(c for j in plan.jobs for c in stage(j.stage).csv_columns))


def check_data(plan, data: Path, data_fp: str, skip_bad: bool = False, log=print, files=None) -> list:
    """Check the Paddy data before anything runs; returns image ids to skip (only with skip_bad), else raises."""
    probs = cached_check(data, data_fp, plan.out_dir / CHECKS, plan.data.get("labels"), csv_columns(plan), files)
    skip = sorted({p.image for p in probs if p.image}) if skip_bad else []
    fatal = [p for p in probs if not (skip_bad and p.image)]
    raise_problems(fatal, f"data check of {data}")
    if skip:
        log(f"--skip-bad: leaving out {len(skip)} image(s): {', '.join(skip[:10])}{' ...' if len(skip) > 10 else ''}")
    return skip


def prepare_data(plan, skip_bad: bool = False, check: bool = True, log=print) -> tuple:
    """(plan, data folder, data fingerprint): the plan as a new one whose jobs read the data folder (and leave out
    the bad images with skip_bad), when a stage reads the Paddy data, checked first when `check`.

    The folder is walked once, for the fingerprint and the check. Without `check` the data is only checked when
    bad images are to be skipped, since the skip list is a parameter of the runs (and so of their fingerprints);
    what the walk itself finds (a symlink loop, a dangling link, a name that is not UTF-8) is said either way.
    """
    if not any(stage(j.stage).paddy for j in plan.jobs):
        return plan, "(none: no stage of this plan reads the Paddy data)", ""
    skip_bad = skip_bad or bool(plan.data.get("skip_bad"))
    data = resolve_plan_data(plan)
    files = scan(data)
    data_fp = data_fingerprint(data, plan.out_dir / CHECKS, files)
    skip = []
    if check or skip_bad:
        skip = check_data(plan, data, data_fp, skip_bad, log, files)
    else:
        raise_problems(walk_problems(files), f"data check of {data}")
    return with_data(plan, data, skip), data, data_fp


def ensemble_members(plan, job, states: dict, allow_partial: bool = False, projected: bool = False) -> tuple:
    """Which of `job`'s upstream runs it ensembles: (members, note, {bad run: cause}); members None = it waits.

    A member is a run that is complete (with `projected`, as `status` sees it, also a stale or pending run, which
    `run` finishes first) and whose saved predictions pass their checks (finite probabilities, the vocab and
    test-id order the other runs have). Without allow_partial the ensemble waits for every run.
    """
    ready = ("complete", "stale", "pending") if projected else ("complete",)
    done = [d for d in job.needs if states.get(d, {}).get("state") in ready]
    saved = {d: plan.job(d).out_dir for d in done if states[d]["state"] == "complete"}
    bad = {}
    for p in check_runs_dirs(saved):
        bad.setdefault(p.run, p.what)
    done = [d for d in done if d not in bad]
    left = [d for d in job.needs if d not in done]
    if not done:
        return None, "no complete run to ensemble", bad
    if left and not allow_partial:
        return None, (f"{len(left)} run(s) not complete ({', '.join(left)}); "
                      f"--allow-partial ensembles the {len(done)} complete run(s)"), bad
    return done, f"left out of the ensemble: {', '.join(left)}" if left else "", bad


@dataclass(frozen=True)
class Step:
    """One job as `run` and `status` see it now: the job with the parameters it runs with (accum: auto resolved,
    the ensemble's members), its state and why, what its records say, its fingerprint and parts."""

    job: object
    state: State
    detail: str = ""  # why it waits or cannot start
    record: dict = field(default_factory=dict)  # as the jobs after it see it: its records (job_state), else pending
    fp: str = ""
    parts: dict = None
    note: str = ""  # the runs the ensemble leaves out
    bad: dict = field(default_factory=dict)  # runs whose saved predictions cannot be ensembled: {name: cause}

    @property
    def marks(self) -> dict:
        """The records of the runs it found bad, as the jobs after it see them: failed, with the cause."""
        return {d: {"state": State.FAILED, "cause": why} for d, why in self.bad.items()}


_PENDING = {"state": State.PENDING}


def job_step(plan, job, data_fp: str, states: dict, fps: dict, allow_partial: bool = False,
             projected: bool = False) -> Step:
    """The Step of `job`, given the states of the jobs before it (name -> record) and their fingerprints `fps`.

    It reads only: what a job learns from the jobs it needs (accum from the probe's result, the ensemble's
    members) comes back as a new job in the step. `projected` (status) counts stale and pending runs as runs that
    `run` would finish first.
    """
    st = stage(job.stage)
    if st.trains and job.params.get("accum") == "auto":
        try:
            job = job.with_params(accum=resolve_accum(plan, job))  # the probe (an earlier job) picked it
        except RoadtopError as e:  # no usable probe: this job cannot start, the others go on
            state = job_state(job)  # failed (a recorded cause) or pending; never complete without its accum
            return Step(job, State.CANNOT_START, str(e), state if state["state"] == State.FAILED else _PENDING)
    done = ("complete", "stale", "pending") if projected else ("complete",)
    waiting = [d for d in job.needs if states.get(d, {}).get("state") not in done] if st.predicts else []
    if waiting:  # it predicts with the models of a finished ensemble
        return Step(job, State.WAITS, f"waits for {', '.join(waiting)}", _PENDING)
    members, note, bad = None, "", {}
    if st.ensembles:  # which runs it reads decides its parameters, so pick them first
        members, note, bad = ensemble_members(plan, job, states, allow_partial, projected)
        if members is None:
            return Step(job, State.WAITS, note, _PENDING, bad=bad)
        job = job.with_params(run_dirs=[str(plan.job(d).out_dir) for d in members])
    parts = job_parts(job, data_fp, fps, members)
    fp = fingerprint(parts)
    record = job_state(job, fp, parts)
    return Step(job, State(record["state"]), record.get("cause", ""), record, fp, parts, note, bad)


def walk(plan, data_fp: str, outcomes=None, allow_partial: bool = False, projected: bool = False):
    """Each job in order as a Step, with the fingerprint `run` gives it: what `status` shows (`run` steps each job
    with job_step too, from the same states, as the jobs it needs settle).

    `outcomes` (name -> record) are the caller's: what became of the jobs it ran between two steps, which the
    ensemble's members are picked from. walk only reads it. A run whose saved predictions the ensemble cannot
    read counts as failed for the jobs after it.
    """
    outcomes = outcomes if outcomes is not None else {}
    seen, fps, marked = {}, {}, {}
    for job in plan.jobs:
        step = job_step(plan, job, data_fp, {**seen, **outcomes, **marked}, fps, allow_partial, projected)
        seen = {**seen, job.name: step.record}
        marked = {**marked, **step.marks}
        if step.fp:
            fps = {**fps, job.name: step.fp}
        yield step


def _step_says_run(step, tag: str, mine: bool, force: bool, outcomes: dict, log) -> bool:
    """True when `step` is to run now; otherwise say why not (failed before starting, waits, up to date, not in
    --only), recording a job that cannot start as failed in `outcomes`."""
    job = step.job
    if step.state is State.CANNOT_START:
        outcomes[job.name] = record_failure(job, step.detail)
        log(f"{tag}: FAILED before starting: {step.detail}")
        return False
    for d, why in step.bad.items() if mine else ():
        log(f"{tag}: run {d} cannot be ensembled: {why}")
    if step.state is State.WAITS:
        if mine:
            log(f"{tag}: skipped, {step.detail}")
        return False
    if step.note and mine:
        log(f"{tag}: {step.note}")
    if step.state is State.COMPLETE and not (force and mine):
        log(f"{tag}: up to date, skipped ({job.out_dir})")
        return False
    if not mine:
        log(f"{tag}: not in --only, left {step.state}")
        return False
    return True


def _ended(plan, job, state: dict, tag: str, on: str, log) -> list:
    """Say how a job that ran ended; publish a complete one's files. Returns the names that could not be published."""
    unpublished = []
    if state["state"] == State.COMPLETE:
        log(f"{tag}: done in {state['seconds']:.1f}s{on}")
        for name in stage(job.stage).publishes:
            try:
                _publish(job.out_dir / name, plan.out_dir / name)
            except OSError as e:  # the job's own copy is complete; the top-level one is as it was
                unpublished.append(name)
                log(f"{tag}: {name} not copied to {plan.out_dir}: {cause(e)}")
    else:
        seen_nb = job.out_dir / state["notebook"]
        unrecorded = f" (failed.json not written: {state['unrecorded']})" if state.get("unrecorded") else ""
        log(f"{tag}: FAILED after {state['seconds']:.1f}s{on}: {state['cause']}"
            f"{f' (see {seen_nb})' if seen_nb.exists() else ''}{unrecorded}")
    return unpublished


def run_plan(plan, force=False, only=None, allow_partial=False, skip_bad=False, log=print, cards=ONE_SLOT) -> int:
    """Run the plan's jobs; returns the exit code (non-zero if any job failed).

    `cards` (roadtop.dag.slots.parse_gpus or parse_jobs): one slot each. ONE_SLOT (the default) runs one job at a
    time in this process, in plan order; more run up to one job per slot at once, each in its own process (that
    sees only its card, for --gpus). Either way roadtop.dag.slots.decide picks the next job that may start (its
    upstream jobs settled; side by side, the longest the probe expects first) and
    job_step says whether it has to run.
    """
    t_start = time.time()
    check_out_dir(plan.out_dir)
    picked = {j.name for j in plan.select(only)}
    plan, data, data_fp = prepare_data(plan, skip_bad, check=True, log=log)
    side = "" if cards == ONE_SLOT else f", up to {len(cards)} at once on {', '.join(map(slot_label, cards))}"
    log(f"plan {plan.name} ({plan.source}): {len(plan.jobs)} jobs, data {data}, outputs {plan.out_dir}{side}")
    seen, outcomes, marked, fps, unpublished = {}, {}, {}, {}, []  # as stepped; what became of the jobs run; bad runs
    running, said = {}, {}  # name -> card of the jobs running now; the jobs whose wait was said
    n = len(plan.jobs)
    tags = {j.name: f"[{k}/{n}] {j.name}" for k, j in enumerate(plan.jobs, 1)}
    on = {c: "" if c is None else f" on {slot_label(c)}" for c in cards}
    launcher = Inline(execute_job) if cards == ONE_SLOT else JobProcs(cards)
    seconds = {}  # side by side: job -> expected seconds once the probe has settled, the longest first
    with launcher:
        while True:
            settled = {m for m in seen if m not in running}
            if cards != ONE_SLOT and not seconds and any(stage(plan.job(m).stage).measures for m in settled):
                seconds = expected_seconds(plan)  # the probe of this run: ran now, or up to date
            d = decide(plan.jobs, settled, running, cards, seconds)
            for name, why in d.waits.items() if cards != ONE_SLOT and not d.start else ():
                if name not in said:  # once, when it first waits for a job to end
                    said[name] = why
                    log(f"{tags[name]}: {why}")
            if d.start:
                name, card = d.start
                job = plan.job(name)
                step = job_step(plan, job, data_fp, {**seen, **outcomes, **marked}, fps, allow_partial)
                seen[name] = step.record
                marked.update(step.marks)
                if step.fp:
                    fps[name] = step.fp
                if _step_says_run(step, tags[name], name in picked, force, outcomes, log):
                    log(f"{tags[name]}: running {step.job.notebook.name} -> {step.job.out_dir}{on[card]} "
                        f"(elapsed {time.time() - t_start:.0f}s)")
                    running[name] = card
                    launcher.start(step.job.spec(), step.fp, step.parts, card)
                continue
            if not running:
                break
            name, state = launcher.next()
            outcomes[name] = state
            unpublished += _ended(plan, plan.job(name), state, tags[name], on[running.pop(name)], log)
    states = {**seen, **outcomes, **marked}
    failed = [n for n, s in states.items() if s["state"] == "failed"]
    log(f"finished in {time.time() - t_start:.0f}s: {sum(s['state'] == 'complete' for s in states.values())} "
        f"complete, {len(failed)} failed{': ' + ', '.join(failed) if failed else ''}")
    published = [plan.out_dir / name for j in plan.jobs for name in stage(j.stage).publishes
                 if states.get(j.name, {}).get("state") == "complete" and (plan.out_dir / name).exists()]
    for f in published:
        log(f"{f.stem}: {f}")
    try:
        log(f"report: {write_report(plan, states)}")
    except Exception as e:  # noqa: BLE001 - the report only shows what ran: it must not fail the run
        log(f"report not written: {cause(e)}")
    if failed or unpublished:
        log("to resume: fix the cause above (e.g. free disk space), then run the same command again: complete "
            "jobs are skipped, only what is missing runs")
    return 1 if failed or unpublished else 0
