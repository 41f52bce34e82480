"""Kaggle as the distributed engine: push kernels, poll their status, collect outputs, submit."""

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from ..dag.plan import pick
from ..dag.records import cause
from ..dag.report import write_report
from ..dag.stages import stage
from ..clock import elapsed, utc_clock, utc_now
from ..errors import RoadtopError
from ..paths import KAGGLE_WORKING, atomic_write
from .budget import gpu_seconds, quota_problem
from .client import KaggleCallError, gpu_quota, kernel_image, api_username, call_kaggle, connect, kernel_version, owner_username
from .kernels import (Kernel, build_kernels, gpu_kernel, kaggle_out, kernel_fingerprint, kernel_of, recorded_fingerprint,
                      select_jobs, source_versions)
from .packnb import PACK_JSON
from .record import load_record, save_record
from .schedule import Action, Candidate, KernelState, asks_datasets, decide, running_repushes, state_of, too_long
from .settings import internet_on, settings

__all__ = [
    "MARKER",
    "SESSION_CAP",
    "PushOutcome",
    "PushResult",
    "KernelState",
    "collect",
    "push",
    "refresh",
    "run",
    "run_states",
    "stale_sources",
    "status",
    "status_table",
    "submit",
]


MARKER = "kaggle-kernel.json"  # written into a run's out_dir when `collect` installs a kernel's output there


# The refusal of a GPU kernel beyond the account's batch GPU sessions, in SaveKernel's `error` field (HTTP 200):
# "Maximum batch GPU session count of 2 reached." (Kaggle/kaggle-cli#185 shows the CLI printing it as
# "Kernel push error: ..."; adapter-hub/playground#4 handles the same text).
SESSION_CAP = "maximum batch gpu session count"


class PushOutcome(str, Enum):
    """What one push came to."""

    PUSHED = "pushed"  # a new version, recorded
    SESSIONS_BUSY = "sessions busy"  # Kaggle's session cap refused a GPU kernel: push it again when one frees
    REFUSED = "refused"  # not counted as pushed: Kaggle refused it, or ran it without a source (recorded so)


@dataclass(frozen=True)
class PushResult:
    """A push's outcome, the line that says it, (REFUSED) the cause the live table shows and the HTTP code."""

    outcome: PushOutcome
    message: str = ""
    cause: str = ""
    code: int | None = None  # the HTTP status when the push call itself failed (401: every later call would too)


def _saved(version, url):
    """What SaveKernel would have answered, for a version found after the answer was lost (5xx)."""
    return SimpleNamespace(version_number=version, url=url, error="", invalid_dataset_sources=[],
                           invalid_competition_sources=[], invalid_kernel_sources=[])


def _recover_push(api, k: Kernel, before, kw: dict, code):
    """After a 5xx or no answer to the push of `k`: the version SaveKernel made anyway, if the kernel has one
    newer than `before` (so nothing is pushed twice); None to retry the push."""
    now = call_kaggle(kernel_version, api, k.ref, what=f"version check of {k.ref}", **kw)
    if now is None or now == before:
        return None
    kw["log"](f"{k.name}: Kaggle answered {code or 'nothing'} to the push, but {k.ref} has a new version {now}: "
              "recorded it, not pushed again")
    return _saved(now, f"https://www.kaggle.com/code/{k.ref}")


def _lost_sources(resp) -> list:
    """The sources SaveKernel could not attach yet still ran the version without (Kaggle/kaggle-cli#433: "The
    following are not valid dataset sources and could not be added to the kernel: [...]" then "Kernel version
    179 successfully pushed")."""
    return [s for attr in ("invalid_dataset_sources", "invalid_competition_sources", "invalid_kernel_sources")
            for s in (getattr(resp, attr, None) or [])]


def _push_one(api, plan, k: Kernel, st, record, log, sleep) -> PushResult:
    """Push kernel folder `k` (`kernels_push`, as `kaggle kernels push` does) and record the new version; a
    version that lost a source is recorded RUN_FAILED with the cause. HTTP failures raise KaggleCallError."""
    srcs = ", ".join([*k.meta["competition_sources"], *k.meta["dataset_sources"], *k.meta["kernel_sources"]])
    hint = {403: f"accept the rules at https://www.kaggle.com/competitions/{st.competition}/rules and check "
                 f"that {k.ref.split('/')[0]} owns {k.ref} and may use {srcs}",
            404: f"one of {srcs} does not exist: check kaggle.* in the plan"}
    kw = {"run": k.name, "st": st, "log": log, "sleep": sleep}
    before = record["kernels"].get(k.name, {}).get("version")
    if before is None:  # no record here (outputs wiped, another machine): ask Kaggle which version exists now
        before = call_kaggle(kernel_version, api, k.ref, what=f"version check of {k.ref}", **kw)
    _pin_image(k, st, record)
    resp = call_kaggle(api.kernels_push, str(k.folder), timeout=str(st.timeout) if st.timeout else None,
                       what=f"push of {k.ref}", hint=hint, recover=partial(_recover_push, api, k, before, kw), **kw)
    why = getattr(resp, "error", "") if resp is not None else "no answer"
    if why and SESSION_CAP in why.lower():
        return PushResult(PushOutcome.SESSIONS_BUSY,
                          f"{k.name}: Kaggle runs no more GPU sessions for this account now ({why.strip()})")
    if why:
        reason = f"Kaggle refused the push of {k.ref}: {why}"
        return PushResult(PushOutcome.REFUSED, f"{k.name}: {reason}", reason)
    entry = {"ref": k.ref, "slug": k.slug, "folder": str(k.folder), "version": resp.version_number,
             "url": resp.url, "fingerprint": kernel_fingerprint(k, record), "sources": source_versions(k, record),
             "gpu": gpu_kernel(k), "pushed_at": utc_now(), "status": KernelState.QUEUED.value, "failure": "",
             "checked_at": "", "running_since": "", "runs": k.runs, "pack": k.name not in k.runs}
    lost = _lost_sources(resp)
    if lost:
        reason = (f"Kaggle could not attach {', '.join(lost)} (still processing, or no such source): the version "
                 f"would run without it; wait until it is ready (kaggle datasets status), then push again")
        record["kernels"][k.name] = {**entry, "status": KernelState.RUN_FAILED.value, "failure": reason,
                                     "fingerprint": ""}
        save_record(plan, record)
        return PushResult(PushOutcome.REFUSED,
                          f"{k.name}: {k.ref} v{resp.version_number} not counted as pushed: {reason}", reason)
    record["kernels"][k.name] = entry
    save_record(plan, record)
    carries = f" (runs {', '.join(k.runs)}, one per GPU)" if k.name not in k.runs else ""
    log(f"{k.name}: pushed {k.ref} version {resp.version_number}{carries} ({resp.url})")
    if not record.get("docker_image"):  # the sweep's first kernel: every later one runs on its image
        image = st.docker_image or call_kaggle(kernel_image, api, k.ref, what=f"image of {k.ref}", **kw)
        if image:
            record["docker_image"] = image
            save_record(plan, record)
            log(f"kaggle: {k.ref} runs on {image}: every later kernel of {plan.name} is pinned to it")
    return PushResult(PushOutcome.PUSHED)


PINNING = "original"  # keep a version on the image it was saved with (kaggle 2.2.5 valid_push_pinning_types)


def _pin_image(k: Kernel, st, record: dict):
    """Write the sweep's image into `k`'s kernel-metadata.json (docker_image, docker_image_pinning_type): the
    plan's kaggle.docker_image, else the image of its first kernel; left out of the kernel's hash."""
    image = st.docker_image or record.get("docker_image", "")
    if not image:
        return
    meta = {**k.meta, "docker_image": image, "docker_image_pinning_type": PINNING}
    with atomic_write(k.folder / "kernel-metadata.json") as f:
        json.dump(meta, f, indent=2)


def _dataset_ready(api, ds: str, st, log, sleep) -> str:
    """'ready', 'missing' or Kaggle's processing status of one of your datasets. GetDatasetStatus answers a
    dataset that does not exist (yet) with 403 "Permission 'datasets.get' was denied", not 404."""
    try:
        s = call_kaggle(api.dataset_status, ds, run="datasets", what=f"status of dataset {ds}", st=st, log=log,
                        sleep=sleep)
    except KaggleCallError as e:
        if e.code in (403, 404):
            return "missing"
        raise
    return str(s or "").lower()


def _up_to_date(k: Kernel, record: dict) -> bool:
    """True when `k` is recorded with this content and these source versions, and did not end badly."""
    rec = record["kernels"].get(k.name)
    return bool(rec) and recorded_fingerprint(rec) == kernel_fingerprint(k, record) and not state_of(
        rec.get("status")).bad


def _candidate(k: Kernel, record: dict, user: str) -> Candidate:
    """The scheduler's view of kernel `k`: what it reads, GPU, its own datasets (their status can be asked)."""
    mine = tuple(d for d in k.meta["dataset_sources"] if d.split("/")[0] == user)
    return Candidate(k.name, needs=tuple(k.needs), runs=tuple(k.runs), gpu=gpu_kernel(k), datasets=mine,
                     current=_up_to_date(k, record))


def run_states(record: dict) -> dict:
    """run -> KernelState, and kernel -> KernelState: a pack's runs share its state until it is COMPLETE, then
    each has its own from the pack's pack.json (COMPLETE, or RUN_FAILED with its cause)."""
    out = {}
    for n, rec in record["kernels"].items():
        s = out[n] = state_of(rec.get("status"))
        for run in rec.get("runs") or [n]:
            res = (rec.get("results") or {}).get(run)
            out[run] = s if s is not KernelState.COMPLETE or res is None else (
                KernelState.COMPLETE if res["state"] == "complete" else KernelState.RUN_FAILED)
    return out


def _kernel_state(record: dict, n: str) -> KernelState:
    """The recorded KernelState of run `n`."""
    return state_of(record["kernels"][n].get("status"))


def _holding(record: dict) -> int:
    """GPU kernels of the record that hold one of the account's sessions now."""
    return sum(1 for r in record["kernels"].values() if r.get("gpu") and state_of(r.get("status")).holds_session)


def _watched(record: dict, todo: list, names: list) -> list:
    """Kernels to ask Kaggle about: those of the runs ours read, ours, and every GPU kernel of the plan, while
    they hold a session (their state may change)."""
    needed = {kernel_of(record, n) for k in todo for n in k.needs}
    return [n for n, r in record["kernels"].items()
            if (n in names or n in needed or r.get("gpu")) and state_of(r.get("status")).holds_session]


def _try_push(api, plan, k: Kernel, st, record, log, sleep) -> PushResult:
    """_push_one, with a failed HTTP call (KaggleCallError, said in one line) as a refusal carrying its code."""
    try:
        return _push_one(api, plan, k, st, record, log, sleep)
    except KaggleCallError as e:
        return PushResult(PushOutcome.REFUSED, str(e), str(e).split(": ", 1)[-1], code=e.code)


@dataclass
class _Sweep:
    """What one push command knows between polls: the plan's kernels, those still to send, the failed ones (name
    -> why), the live table's notes, polls in a row that Kaggle's session cap refused with none of ours running,
    and the exit code."""

    kernels: list
    todo: list
    failed: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)
    refusals: int = 0
    rc: int = 0


def _settle(sw: _Sweep, plan_now: dict, record: dict, log) -> bool:
    """Take the kernels that `decide` failed or skipped out of sw.todo, saying so; True when there were any."""
    settled = [k for k in sw.todo if plan_now[k.name].action in (Action.FAIL, Action.SKIP)]
    for k in sw.todo:
        d = plan_now[k.name]
        sw.notes[k.name] = d.why
        if d.action is Action.FAIL:
            sw.failed[k.name], sw.rc = d.why, 1
            log(f"{k.name}: not pushed: {d.why}: {d.fix}")
        elif d.action is Action.SKIP:
            log(f"{k.name}: {k.ref} version {record['kernels'][k.name].get('version')} is already pushed "
                "with these parameters and sources (--force pushes a new version)")
    sw.todo = [k for k in sw.todo if k not in settled]
    return bool(settled)


def _push_pass(api, plan, sw: _Sweep, st, record, force, user, log, sleep) -> tuple:
    """One poll's pushes: decide, push the first kernel it says to push, decide again, until none is to push now.
    (progress, full): something was pushed; Kaggle's session cap refused a GPU push. Stops the command on 401."""
    datasets, full, progress = {}, False, False
    while sw.todo:
        states, cands = run_states(record), [_candidate(k, record, user) for k in sw.todo]
        for c in cands:
            if asks_datasets(c, cands, states):
                for d in c.datasets:
                    datasets.setdefault(d, _dataset_ready(api, d, st, log, sleep))
        lost = {r for k in sw.kernels if k.name in sw.failed for r in k.runs}
        plan_now = decide(cands, states, datasets, _holding(record), st.max_gpu_sessions,
                          failed=set(sw.failed) | lost, force=force, kaggle_full=full)
        if _settle(sw, plan_now, record, log):  # what reads them is decided again without them
            continue
        k = next((k for k in sw.todo if plan_now[k.name].action is Action.PUSH), None)
        if k is None:
            break
        done = _try_push(api, plan, k, st, record, log, sleep)
        if done.outcome is PushOutcome.SESSIONS_BUSY:  # fewer sessions than asked now, or others hold them
            full = True
            if sw.refusals == 0:
                log(f"{done.message}: the next GPU kernel goes when one of the {_holding(record)} running here ends")
            continue
        sw.todo.remove(k)
        sw.notes.pop(k.name, None)
        if done.outcome is PushOutcome.REFUSED:
            log(done.message)
            sw.failed[k.name], sw.rc = done.cause, 1
            if done.code == 401:  # every further call would fail the same way
                raise _Unauthorized
            continue
        progress = True
    return progress, full


class _Unauthorized(Exception):
    """The credentials were refused: the push command stops (its line is said already)."""


def _schedule(api, plan, kernels: list, st, record, force, wait, user, log, sleep, live) -> int:
    """Push `kernels` (needed runs first) keeping at most st.max_gpu_sessions GPU kernels holding a session; a
    run that reads others goes when they are COMPLETE. Each poll asks Kaggle the states, then pushes as
    roadtop.kaggle.schedule.decide says (_push_pass). `wait`: poll until every kernel has ended."""
    names, sw = [k.name for k in kernels], _Sweep(kernels, list(kernels))
    while True:
        watch = _watched(record, sw.todo, names)
        if watch:
            try:
                refresh(api, plan, watch, st=st, record=record, log=log, sleep=sleep)
            except KaggleCallError as e:  # a long fan-out waits out an outage; a short command reports it
                if not wait or e.code == 401:
                    raise
                log(f"{e}; the next poll tries again")
        try:
            progress, full = _push_pass(api, plan, sw, st, record, force, user, log, sleep)
        except _Unauthorized:
            return sw.rc
        sw.refusals = sw.refusals + 1 if full and not _holding(record) else 0  # others hold the sessions
        live.show(*status_table(record, names, notes={k.name: sw.notes.get(k.name, "") for k in sw.todo},
                                failed=sw.failed, runs_of={k.name: k.runs for k in kernels}))
        running = [n for n in names if n in record["kernels"] and _kernel_state(record, n).holds_session]
        if not sw.todo and (not wait or not running):
            break
        if not wait:
            if progress:
                continue
            for k in sw.todo:
                log(f"{k.name}: waits ({sw.notes.get(k.name, '')}); rerun `pipeline.py kaggle push` later, or "
                    "`push --wait` / `kaggle run` to keep going")
            break
        sleep(min(st.poll_interval * 2 ** max(0, sw.refusals - 1), 1800.0))  # backs off while others hold them
    runs_now = run_states(record)
    if wait and any(runs_now[r].bad for k in kernels if k.name in record["kernels"] for r in [k.name, *k.runs]):
        sw.rc = 1
    return sw.rc


def push(plan, runs=None, force: bool = False, wait: bool = False, dry_run: bool = False, api=None,
         log=print, sleep=time.sleep, out=None, force_running: bool = False, override: bool = False) -> int:
    """Build and push a kernel per run, at most kaggle.max_gpu_sessions GPU kernels at once; a run that reads
    others goes once they are COMPLETE (`wait`: keep polling and pushing until every kernel has ended). A run
    already pushed with the same content and source versions is skipped unless `force`. Returns exit code."""
    st = settings(plan)
    jobs = select_jobs(plan, runs, st)
    record = load_record(plan)
    online, why = internet_on(st)
    if dry_run:
        user = st.username or owner_username()
        if not user:
            raise RoadtopError(f"push --dry-run needs the owner: set kaggle.username in {plan.source}, "
                               "KAGGLE_USERNAME, ~/.kaggle/kaggle.json or ~/.kaggle/access_token")
        built = build_kernels(plan, jobs, user, st, record, log=log, seconds=gpu_seconds(plan))
        log(f"kaggle: internet {'on' if online else 'off'} ({why})")
        for k in built:
            log(f"{k.name}: kernel folder {k.folder} (not pushed: --dry-run)")
        return 0
    api = api or connect()
    user = st.username or api_username(api)
    kernels = build_kernels(plan, jobs, user, st, record, log=log, seconds=gpu_seconds(plan))
    _refuse_running_repush(api, plan, kernels, st, record, force, force_running, log, sleep)
    sending = [k for k in kernels if gpu_kernel(k) and (force or not _up_to_date(k, record))]
    _check_sessions(plan, sending, st, override, log)
    _check_quota(api, plan, sending, st, override, log, sleep)
    packs = (f", each training up to {st.gpus_per_session} runs at once, one per GPU (gpus_per_session)"
             if st.gpus_per_session > 1 else "")
    log(f"kaggle: internet {'on' if online else 'off'} ({why}); at most {st.max_gpu_sessions} GPU kernels at once"
        + packs)
    live = _Live(out or sys.stdout)
    return _schedule(api, plan, kernels, st, record, force, wait, user, live.below(log), sleep, live)


def _refuse_running_repush(api, plan, kernels, st, record, force, force_running, log, sleep):
    """Refuse (one line) to push a new version of a kernel whose recorded version is queued or running: Kaggle
    does not stop the old one (Kaggle/kaggle-cli#388), so both sessions are billed; `force_running` goes ahead."""
    again = [k.name for k in kernels if k.name in record["kernels"] and (force or not _up_to_date(k, record))]
    live = running_repushes(again, record)
    if live:
        refresh(api, plan, live, st=st, record=record, log=log, sleep=sleep)
        live = running_repushes(live, record)
    for n in live:
        rec = record["kernels"][n]
        if not force_running:
            raise RoadtopError(f"{n}: {rec['ref']} v{rec['version']} is {rec['status']} on Kaggle: a new version "
                               "would not stop it and both sessions would be billed (Kaggle/kaggle-cli#388); wait "
                               "until it ends (pipeline.py kaggle status), or push with --force-running")
        log(f"{n}: --force-running: pushing a new version while v{rec['version']} is {rec['status']}: Kaggle "
            "bills both sessions until that one ends")


def _check_sessions(plan, kernels: list, st, override: bool, log):
    """Refuse (one line) to push a GPU kernel whose estimated time passes one Kaggle session (kaggle.session_hours):
    Kaggle would stop it there with its hours spent; `override` goes ahead."""
    problems = [f"{p} (kaggle.session_hours)" for p in
                too_long({k.name: k.runs for k in kernels}, gpu_seconds(plan), st.session_hours * 3600)]
    if problems and not override:
        raise RoadtopError(f"kaggle push refused: {problems[0]}{f' (and {len(problems) - 1} more)' if problems[1:] else ''}"
                           "; give that run fewer epochs or a smaller size, or --override")
    for p in problems:
        log(f"kaggle: {p}; going on (--override)")


def _check_quota(api, plan, kernels: list, st, override: bool, log, sleep):
    """Refuse (one line) to push GPU `kernels` whose estimated hours (the probe's) exceed the weekly GPU quota
    left (quota_view): hours needed, hours left, refresh time; `override` goes ahead."""
    if not kernels:
        return
    quota = gpu_quota(api, st, log=log, sleep=sleep)
    if quota is None:
        log("kaggle: Kaggle reports no weekly GPU quota for this account; not checked")
        return
    secs = gpu_seconds(plan)
    unknown = [r for k in kernels for r in k.runs if not secs.get(r) or secs[r] != secs[r]]
    if unknown:
        log(f"kaggle: weekly GPU quota {quota.left_h:.2f} h left (refreshes {quota.refresh_text()}); no probe "
            f"estimate for {', '.join(unknown)}: not checked (`pipeline.py run --only probe`, then `plan`)")
        return
    needed = sum(max(secs[r] for r in k.runs) for k in kernels) / 3600  # a pack lasts as long as its longest run
    problem = quota_problem(needed, quota)
    if problem and not override:
        raise RoadtopError(f"kaggle push refused: {problem}; push fewer jobs (--only), wait for the refresh, or "
                           "--override")
    log(f"kaggle: {problem}; going on (--override)" if problem else
        f"kaggle: the GPU kernels need est. {needed:.2f} GPU h of the {quota.left_h:.2f} h left this week")


def run(plan, runs=None, force: bool = False, submit_it: bool = False, message=None, api=None, log=print,
        sleep=time.sleep, out=None, force_running: bool = False, override: bool = False) -> int:
    """The whole plan on Kaggle: push under the session cap until every kernel has ended, collect the outputs,
    then (`submit_it`) submit the ensemble. Interrupted, it resumes from kernels.json without re-pushing."""
    api = api or connect()
    rc = push(plan, runs, force=force, wait=True, api=api, log=log, sleep=sleep, out=out,
              force_running=force_running, override=override)
    if rc:
        log("kaggle run: some kernels failed (table above): fix them and rerun `pipeline.py kaggle run`")
        return rc
    rc = collect(plan, runs, api=api, log=log, sleep=sleep)
    if rc or not submit_it:
        return rc
    return submit(plan, message, api=api, log=log, sleep=sleep)


def _versioned(rec: dict) -> str:
    """owner/slug/version of the recorded version: the 2.2.5 client's kernels_status and kernels_output take it
    (parse_kernel_string) and ask for that version (version_label "v<N>"), not the latest one."""
    return f"{rec['ref']}/{rec['version']}" if rec.get("version") else rec["ref"]


def _pack_results(api, n, rec, st, log, sleep) -> dict:
    """run -> {state, gpu, cause} of a COMPLETE pack kernel: its pack.json, the one file downloaded (the client's
    file_pattern); a pack that wrote none failed every run."""
    tmp = Path(rec["folder"]) / ".pack"
    shutil.rmtree(tmp, ignore_errors=True)
    call_kaggle(api.kernels_output, _versioned(rec), str(tmp), file_pattern=rf"^{PACK_JSON}$", force=True,
                quiet=True, run=n, what=f"download of {rec['ref']}'s {PACK_JSON}", st=st, log=log, sleep=sleep)
    try:
        results = json.loads((tmp / PACK_JSON).read_text())
    except (OSError, ValueError):
        results = {}
    shutil.rmtree(tmp, ignore_errors=True)
    missing = {"state": "failed", "gpu": None, "cause": f"{rec['ref']} v{rec.get('version')} wrote no {PACK_JSON}"}
    return {run: results.get(run, missing) for run in rec["runs"]}


def refresh(api, plan, names, st=None, record=None, log=print, sleep=time.sleep) -> dict:
    """Ask Kaggle for the status of the kernels of runs `names` and record it: run -> (status, message). A
    version recorded RUN_FAILED (lost a source) keeps that verdict until the run is pushed again."""
    st = st or settings(plan)
    record = record if record is not None else load_record(plan)
    out = {}
    for n in names:
        rec = record["kernels"].get(n)
        if rec is None:
            raise RoadtopError(f"{n}: was never pushed to Kaggle: run `pipeline.py kaggle push --only {n}`")
        if state_of(rec.get("status")) is KernelState.RUN_FAILED:
            out[n] = (KernelState.RUN_FAILED.value, rec.get("failure", ""))
            continue
        hint = {403: f"{rec['ref']} must belong to the account of these credentials",
                404: f"push it first (pipeline.py kaggle push --only {n})"}
        resp = call_kaggle(api.kernels_status, _versioned(rec), run=n, what=f"status of {rec['ref']}",
                           st=st, log=log, sleep=sleep, hint=hint)
        s = state_of(resp.status).value
        if s == "RUNNING" and rec.get("status") != "RUNNING":
            rec["running_since"] = utc_now()
        rec.update(status=s, failure=resp.failure_message or state_of(s).why, checked_at=utc_now())
        if s == "COMPLETE" and rec.get("pack") and "results" not in rec:
            rec["results"] = _pack_results(api, n, rec, st, log, sleep)
        out[n] = (s, rec["failure"])
    save_record(plan, record)
    return out


def _pushed(plan, record: dict, runs=None) -> list:
    """The pushed kernels carrying a job (or named) as `runs` picks (roadtop.dag.plan.pick; all when None)."""
    names = list(record["kernels"])
    if not names:
        raise RoadtopError(f"nothing of {plan.source} is pushed to Kaggle yet: run `pipeline.py kaggle push`")
    carried = {n: [n, *(record["kernels"][n].get("runs") or [])] for n in names}
    hit = set(pick(dict.fromkeys(x for xs in carried.values() for x in xs), runs, "among those pushed"))
    return [n for n in names if hit & set(carried[n])]


def stale_sources(record: dict, name: str) -> list:
    """The runs whose kernel has a newer version than the one run `name` was pushed to read."""
    rec = record["kernels"].get(name, {})
    return [n for n, v in (rec.get("sources") or {}).items()
            if record["kernels"].get(kernel_of(record, n), {}).get("version") != v]


def _phase(record: dict, n: str, notes: dict, failed: dict) -> tuple:
    """(word, detail) for run `n` in the live table: waiting / queued / running / complete / error / failed."""
    r = record["kernels"].get(n)
    if n in failed:
        return "failed", failed[n]
    if n in notes:
        return "waiting", notes[n] or "its turn"
    if r is None:
        return "not pushed", ""
    s = r.get("status", "?")
    stale = stale_sources(record, n)
    extra = f"; stale: {', '.join(stale)} pushed anew since" if stale else ""
    if s == "RUNNING":
        return "running", elapsed(r.get("running_since") or r.get("pushed_at")) + extra
    if state_of(s) in (KernelState.ERROR, KernelState.RUN_FAILED):
        return "error" if state_of(s) is KernelState.ERROR else "failed", (r.get("failure") or "no message") + extra
    if s == "CANCEL_ACKNOWLEDGED":
        return "cancelled", (r.get("failure") or "cancelled on Kaggle") + extra
    if s == "CANCEL_REQUESTED":
        return "cancelling", "still holds its session" + extra
    if s == "NEW_SCRIPT":
        return "queued", "new version" + extra
    return s.lower(), extra.lstrip("; ")


def status_table(record: dict, names, notes=None, failed=None, runs_of=None) -> tuple:
    """(lines, key) of the status table, a row per run: run, its kernel, version, record (waiting / queued /
    running (elapsed) / complete / error (cause), stale when a run it reads was pushed anew; a pack's run: its
    own outcome once the pack is COMPLETE); `names`: kernels; `key` ignores the clock."""
    notes, failed, runs_of = notes or {}, failed or {}, runs_of or {}
    rows, key = [], []
    for n in names:
        r = record["kernels"].get(n, {})
        word, detail = _phase(record, n, notes, failed)
        for run in r.get("runs") or runs_of.get(n) or [n]:
            res = (r.get("results") or {}).get(run) if word == "complete" else None
            w, d = ("failed", res["cause"]) if res and res["state"] != "complete" else (word, detail)
            rows.append((run, r.get("ref", "-"), str(r.get("version", "-")), f"{w} ({d})" if d else w))
            key.append((run, w, d if w != "running" else ""))
    lines = pd.DataFrame(rows, columns=["RUN", "KERNEL", "VER", "STATE"]).to_string(index=False).splitlines()
    return lines, tuple(key)


class _Live:
    """A table redrawn in place on a terminal; elsewhere (logs, CI) printed again only when it changed."""

    def __init__(self, out):
        """Draw on text stream `out`."""
        self.out, self.lines, self.key = out, [], None
        self.tty = hasattr(out, "isatty") and out.isatty()

    def show(self, lines, key=None):
        """Replace the previous drawing with `lines`; off a terminal, print only when `key` changed."""
        if self.tty:
            if self.lines:
                self.out.write(f"\x1b[{len(self.lines)}F\x1b[J")  # cursor up over the old table, clear
            self.out.write("\n".join(lines) + "\n")
        elif key is None or key != self.key:
            self.out.write(f"[{utc_clock()}]\n" + "\n".join(lines) + "\n")
        self.out.flush()
        self.lines, self.key = lines, key

    def below(self, log):
        """`log`, after which the table is drawn anew below the line instead of over it."""
        def logged(msg):
            """Log `msg`; the next drawing starts under it."""
            log(msg)
            self.lines = []
        return logged


def status(plan, runs=None, once: bool = False, interval=None, api=None, out=None, log=print,
           sleep=time.sleep) -> int:
    """Poll the pushed kernels (QUEUED/RUNNING/COMPLETE/ERROR...) with a live table until all have ended (or
    once). Returns 1 when one ended in ERROR or was cancelled, else 0."""
    st = settings(plan)
    record = load_record(plan)
    names = _pushed(plan, record, runs)
    api = api or connect()
    live, reported = _Live(out or sys.stdout), set()
    log = live.below(log)
    if record.get("docker_image"):
        log(f"kaggle: the kernels of {plan.name} run on {record['docker_image']} (pinned after the first push)")
    while True:
        now = refresh(api, plan, names, st=st, record=record, log=log, sleep=sleep)
        live.show(*status_table(record, names))
        for n, (s, msg) in now.items():
            if state_of(s).bad and n not in reported:
                reported.add(n)
                log(f"{n}: kernel {record['kernels'][n]['ref']} ended in {s}: {msg or 'no message'} "
                    f"(`pipeline.py kaggle collect --only {n}` downloads its log)")
            for run, res in (record["kernels"][n].get("results") or {}).items():
                if res["state"] != "complete" and run not in reported:
                    reported.add(run)
                    log(f"{run}: failed in pack {record['kernels'][n]['ref']} (GPU {res.get('gpu')}): "
                        f"{res['cause']} (`pipeline.py kaggle collect --only {run}` downloads its notebook)")
        if once or all(state_of(s).ended for s, _ in now.values()):
            for n in names:
                if stale_sources(record, n):
                    log(f"{n}: stale: {', '.join(stale_sources(record, n))} was pushed anew since; "
                        "`pipeline.py kaggle push` (or `kaggle run`) pushes it again")
            runs_now = run_states(record)
            return 1 if any(runs_now[x].bad for n in names for x in [n, *record["kernels"][n].get("runs", [])]) else 0
        sleep(interval or st.poll_interval)


def _install(job, src: Path, rec: dict, replace: bool, log) -> bool:
    """Copy a kernel's output into the run's out_dir (manifest.json last), never over a local run's files."""
    dest = Path(job.out_dir)
    if dest.exists() and any(dest.iterdir()) and not (dest / MARKER).exists() and not replace:
        log(f"{job.name}: kept the local results in {dest}; Kaggle's output is in {src} "
            "(--replace installs it)")
        return False
    src = src / kaggle_out(job).relative_to(KAGGLE_WORKING)
    if not src.is_dir():
        log(f"{job.name}: {rec['ref']} wrote nothing to {kaggle_out(job)}; nothing to install")
        return False
    files = sorted((p for p in src.iterdir() if p.is_file() and p.suffix != ".log"),
                   key=lambda p: (p.name == "manifest.json", p.name))
    for p in files:
        with atomic_write(dest / p.name, "wb") as f, open(p, "rb") as g:
            shutil.copyfileobj(g, f)
    with atomic_write(dest / MARKER) as f:
        json.dump({"ref": rec["ref"], "version": rec.get("version"), "collected_at": utc_now()}, f, indent=2)
    log(f"{job.name}: {len(files)} files of {rec['ref']} v{rec.get('version')} -> {dest}")
    return True


def _download(api, n, rec, st, log, sleep) -> Path:
    """Download kernel `rec`'s output and log into <kernel folder>/output/, replaced only when complete."""
    folder = Path(rec["folder"])
    tmp, old, dest = folder / ".output.partial", folder / ".output.old", folder / "output"
    shutil.rmtree(tmp, ignore_errors=True)
    call_kaggle(api.kernels_output, _versioned(rec), str(tmp), force=True, quiet=True, run=n,
                what=f"download of {rec['ref']} output", st=st, log=log, sleep=sleep)
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest


def collect(plan, runs=None, replace: bool = False, api=None, log=print, sleep=time.sleep) -> int:
    """Download the output (and log) of each COMPLETE/ERROR kernel into <kernel folder>/output/, install a
    COMPLETE one into its run's out_dir under outputs/, then write outputs/report.html. Returns 0 when all were
    COMPLETE and collected."""
    st = settings(plan)
    record = load_record(plan)
    names = _pushed(plan, record, runs)
    api = api or connect()
    jobs = {j.name: j for j in plan.jobs}
    rc, failed = 0, {}
    for n in names:
        rec = record["kernels"][n]
        try:
            s, msg = refresh(api, plan, [n], st=st, record=record, log=log, sleep=sleep)[n]
            lost = state_of(s) is KernelState.RUN_FAILED
            if not state_of(s).ended or lost:
                log(f"{n}: {rec['ref']} v{rec.get('version')} is {s}"
                    + (f" ({msg})" if lost else "; collect it once it is COMPLETE (pipeline.py kaggle status)"))
                rc = 1
                continue
            dest = _download(api, n, rec, st, log, sleep)
        except KaggleCallError as e:
            log(str(e))
            rc = 1
            if e.code == 401:
                return rc
            continue
        if s != "COMPLETE":
            log(f"{n}: {rec['ref']} ended in {s} ({msg or 'no message'}); its log is in {dest}")
            for run in rec.get("runs") or [n]:
                failed[run] = {"state": "failed", "cause": f"Kaggle kernel {s}: {msg or 'no message'} (log: {dest})"}
            rc = 1
            continue
        for run in rec.get("runs") or [n]:  # a pack: each run into its own folder, a failed one says why
            res = (rec.get("results") or {}).get(run)
            if res and res["state"] != "complete":
                where = dest / kaggle_out(jobs[run]).relative_to(KAGGLE_WORKING) if run in jobs else dest
                log(f"{run}: failed in pack {rec['ref']} v{rec.get('version')} (GPU {res.get('gpu')}): "
                    f"{res['cause']}; its executed notebook is in {where}")
                failed[run] = {"state": "failed", "cause": f"{res['cause']} (pack {rec['ref']}; notebook: {where})"}
                rc = 1
            elif run in jobs:
                _install(jobs[run], dest, rec, replace, log)
    try:  # the same one-page report as a local run: what was collected, next to what ran here
        log(f"report: {write_report(plan, failed)}")
    except Exception as e:  # noqa: BLE001 - the report only shows what was collected: it must not fail collect
        log(f"report not written: {cause(e)}")
    return rc


def submit(plan, message=None, api=None, log=print, sleep=time.sleep) -> int:
    """Submit the ensemble: to a code competition its kernel + version (CreateCodeSubmission), to a file
    competition the submission.csv that kernel wrote (downloaded by `collect`). Returns an exit code."""
    st = settings(plan)
    record = load_record(plan)
    ens = [j for j in plan.jobs if j.name in record["kernels"] and  # a code competition reruns the predict kernel
           (stage(j.stage).predicts if st.code_competition else "submission.csv" in stage(j.stage).publishes)]
    if not ens:
        what = "predict kernel (a `predict:` section)" if st.code_competition else "ensemble"
        raise RoadtopError(f"the {what} of {plan.source} is not on Kaggle: run `pipeline.py kaggle push`")
    job, rec = ens[0], record["kernels"][ens[0].name]
    api = api or connect()
    msg = message or f"roadtop {plan.name}: {rec['ref']} v{rec['version']}"
    kw = {"run": job.name, "st": st, "log": log, "sleep": sleep,
          "hint": f"accept the rules at https://www.kaggle.com/competitions/{st.competition}/rules"}
    if st.code_competition:
        s, _ = refresh(api, plan, [job.name], st=st, record=record, log=log, sleep=sleep)[job.name]
        if s != "COMPLETE":
            raise RoadtopError(f"{job.name}: {rec['ref']} v{rec['version']} is {s}; Kaggle takes a code "
                               "submission only from a COMPLETE version: wait (pipeline.py kaggle status)")
        resp = call_kaggle(api.competition_submit_code, "submission.csv", msg, st.competition,
                           kernel=rec["ref"], kernel_version=rec["version"], quiet=True,
                           what=f"code submission of {rec['ref']} v{rec['version']}", **kw)
        sent = {"kernel": rec["ref"], "version": rec["version"]}
    else:
        csv = Path(rec["folder"]) / "output" / "submission.csv"
        if not csv.exists():
            raise RoadtopError(f"{job.name}: {csv} is missing: run `pipeline.py kaggle collect` once the "
                               "ensemble kernel is COMPLETE")
        resp = call_kaggle(api.competition_submit, str(csv), msg, st.competition, quiet=True,
                           what=f"submission of {csv.name}", **kw)
        if getattr(resp, "message", "") == api.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE:
            raise KaggleCallError(f"{job.name}: uploading {csv} failed: rerun `pipeline.py kaggle submit`")
        sent = {"file": str(csv)}
    record.setdefault("submissions", []).append(
        {**sent, "ref": getattr(resp, "ref", None), "message": getattr(resp, "message", ""), "at": utc_now()})
    save_record(plan, record)
    log(f"{job.name}: {getattr(resp, 'message', '')} (submission {getattr(resp, 'ref', '?')})")
    return 0
