"""Kaggle as the distributed engine: push kernels, poll their status, collect outputs, submit."""

import fnmatch
import json
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from ..errors import RoadtopError
from ..paths import KAGGLE_WORKING, atomic_write
from .client import KaggleCallError, api_username, call_kaggle, connect
from .kernels import Kernel, build_kernels, kaggle_out, select_jobs
from .record import load_state, save_state
from .settings import settings

__all__ = ["TERMINAL", "MARKER", "push", "refresh", "status_table", "status", "collect", "submit"]


TERMINAL = ("COMPLETE", "ERROR", "CANCEL_REQUESTED", "CANCEL_ACKNOWLEDGED")  # TERMINAL[1:]: ended badly


MARKER = "kaggle-kernel.json"  # written into a run's out_dir when `collect` installs a kernel's output there






def _now() -> str:
    """UTC time, ISO format, seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _push_one(api, plan, k: Kernel, st, state, log, sleep):
    """Push kernel folder `k` (`kernels_push`, as `kaggle kernels push` does) and record the new version."""
    srcs = ", ".join([st.competition, *k.meta["dataset_sources"], *k.meta["kernel_sources"]])
    hint = {403: f"accept the rules at https://www.kaggle.com/competitions/{st.competition}/rules and check "
                 f"that {k.ref.split('/')[0]} owns {k.ref} and may use {srcs}",
            404: f"one of {srcs} does not exist: check kaggle.* in the plan"}
    resp = call_kaggle(api.kernels_push, str(k.folder), timeout=str(st.timeout) if st.timeout else None,
                       run=k.name, what=f"push of {k.ref}", st=st, log=log, sleep=sleep, hint=hint)
    if resp is None or getattr(resp, "error", ""):
        why = getattr(resp, "error", "") or "no answer"
        raise KaggleCallError(f"{k.name}: Kaggle refused the push of {k.ref}: {why}")
    state["kernels"][k.name] = {
        "ref": k.ref, "slug": k.slug, "folder": str(k.folder), "version": resp.version_number,
        "url": resp.url, "sha": k.sha, "pushed_at": _now(), "status": "QUEUED", "failure": "",
        "checked_at": "",
    }
    save_state(plan, state)
    bad = [s for attr in ("invalid_dataset_sources", "invalid_competition_sources", "invalid_kernel_sources")
           for s in (getattr(resp, attr, None) or [])]
    if bad:
        raise KaggleCallError(f"{k.name}: pushed {k.ref} v{resp.version_number}, but Kaggle does not know "
                              f"the sources {bad}: fix kaggle.* in the plan")
    log(f"{k.name}: pushed {k.ref} version {resp.version_number} ({resp.url})")


def push(plan, runs=None, force: bool = False, wait: bool = False, dry_run: bool = False, api=None,
         log=print, sleep=time.sleep) -> int:
    """Build and push a kernel per run; a run that needs others goes once they are COMPLETE (`wait`: poll
    until then). A run already pushed with the same content is skipped unless `force`. Returns exit code."""
    st = settings(plan)
    jobs = select_jobs(plan, runs, st)
    state = load_state(plan)
    if dry_run:
        user = st.username or os.environ.get("KAGGLE_USERNAME", "")
        if not user:
            raise RoadtopError(f"push --dry-run needs the owner: set kaggle.username in {plan.source} "
                               "(or KAGGLE_USERNAME)")
        for k in build_kernels(plan, jobs, user, st, state, log=log):
            log(f"{k.name}: kernel folder {k.folder} (not pushed: --dry-run)")
        return 0
    api = api or connect()
    kernels = build_kernels(plan, jobs, st.username or api_username(api), st, state, log=log)
    rc, todo, failed = 0, [], set()
    for k in kernels:
        rec = state["kernels"].get(k.name)
        if rec and rec.get("sha") == k.sha and rec.get("status") not in TERMINAL[1:] and not force:
            log(f"{k.name}: {k.ref} version {rec.get('version')} is already pushed with these parameters "
                "(--force pushes a new version)")
        else:
            todo.append(k)
    while todo:
        in_todo = {k.name for k in todo}
        blockers = sorted({n for k in todo for n in k.needs if n not in in_todo and n not in failed})
        done = refresh(api, plan, blockers, st=st, state=state, log=log, sleep=sleep) if blockers else {}
        waiting = []
        for k in todo:
            broken = [n for n in k.needs if n in failed or done.get(n, ("",))[0] in TERMINAL[1:]]
            if broken:
                why = "failed to push" if broken[0] in failed else f"ended in {done[broken[0]][0]} on Kaggle"
                log(f"{k.name}: not pushed: {broken[0]} {why} (fix it, then `pipeline.py kaggle push` again)")
                failed.add(k.name)
                rc = 1
            elif any(n in in_todo or done.get(n, ("",))[0] != "COMPLETE" for n in k.needs):
                waiting.append(k)
            else:
                try:
                    _push_one(api, plan, k, st, state, log, sleep)
                except KaggleCallError as e:
                    log(str(e))
                    failed.add(k.name)
                    rc = 1
                    if e.code == 401:  # every further call would fail the same way
                        return rc
        stuck = len(waiting) == len(todo)
        todo = waiting
        if stuck and not wait:
            for k in waiting:
                pending = [f"{n} ({done.get(n, ('not pushed',))[0]})" for n in k.needs
                           if done.get(n, ("",))[0] != "COMPLETE"]
                log(f"{k.name}: waits for {', '.join(pending)} to COMPLETE on Kaggle; then rerun "
                    "`pipeline.py kaggle push` (or push with --wait)")
            return rc
        if stuck:
            sleep(st.poll_interval)
    return rc


def refresh(api, plan, names, st=None, state=None, log=print, sleep=time.sleep) -> dict:
    """Ask Kaggle for the status of the kernels of runs `names` and record it: run -> (status, message)."""
    st = st or settings(plan)
    state = state if state is not None else load_state(plan)
    out = {}
    for n in names:
        rec = state["kernels"].get(n)
        if rec is None:
            raise RoadtopError(f"{n}: was never pushed to Kaggle: run `pipeline.py kaggle push --runs {n}`")
        hint = {403: f"{rec['ref']} must belong to the account of these credentials",
                404: f"push it first (pipeline.py kaggle push --runs {n})"}
        resp = call_kaggle(api.kernels_status, rec["ref"], run=n, what=f"status of {rec['ref']}", st=st,
                           log=log, sleep=sleep, hint=hint)
        s = getattr(resp.status, "name", str(resp.status or "UNKNOWN")).upper()
        rec.update(status=s, failure=resp.failure_message or "", checked_at=_now())
        out[n] = (s, rec["failure"])
    save_state(plan, state)
    return out


def _pushed(plan, state: dict, runs=None) -> list:
    """The pushed runs matching `runs` (names or globs; all when None)."""
    names = list(state["kernels"])
    if not names:
        raise RoadtopError(f"nothing of {plan.source} is pushed to Kaggle yet: run `pipeline.py kaggle push`")
    for pat in runs or []:
        if not any(fnmatch.fnmatchcase(n, pat) for n in names):
            raise RoadtopError(f"--runs {pat}: no such run among those pushed ({', '.join(names)})")
    return [n for n in names if not runs or any(fnmatch.fnmatchcase(n, pat) for pat in runs)]


def status_table(state: dict, names) -> list:
    """Lines of the status table: run, kernel, version, status, time since the push."""
    rows = [("RUN", "KERNEL", "VER", "STATUS", "SINCE PUSH")]
    now = datetime.now(timezone.utc)
    for n in names:
        r = state["kernels"][n]
        try:
            secs = int((now - datetime.fromisoformat(r["pushed_at"])).total_seconds())
            since = f"{secs // 3600}:{secs // 60 % 60:02d}:{secs % 60:02d}"
        except (KeyError, ValueError):
            since = "?"
        rows.append((n, r["ref"], str(r.get("version", "")), r.get("status", "?"), since))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]


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
            self.out.write(f"[{datetime.now().strftime('%H:%M:%S')}]\n" + "\n".join(lines) + "\n")
        self.out.flush()
        self.lines, self.key = lines, key


def status(plan, runs=None, once: bool = False, interval=None, api=None, out=None, log=print,
           sleep=time.sleep) -> int:
    """Poll the pushed kernels (QUEUED/RUNNING/COMPLETE/ERROR...) with a live table until all have ended (or
    once). Returns 1 when one ended in ERROR or was cancelled, else 0."""
    st = settings(plan)
    state = load_state(plan)
    names = _pushed(plan, state, runs)
    api = api or connect()
    live, reported = _Live(out or sys.stdout), set()
    while True:
        now = refresh(api, plan, names, st=st, state=state, log=log, sleep=sleep)
        live.show(status_table(state, names), key=tuple(sorted(now.items())))
        for n, (s, msg) in now.items():
            if s in TERMINAL[1:] and n not in reported:
                reported.add(n)
                log(f"{n}: kernel {state['kernels'][n]['ref']} ended in {s}: {msg or 'no message'} "
                    f"(`pipeline.py kaggle collect --runs {n}` downloads its log)")
        if once or all(s in TERMINAL for s, _ in now.values()):
            return 1 if any(s in TERMINAL[1:] for s, _ in now.values()) else 0
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
        json.dump({"ref": rec["ref"], "version": rec.get("version"), "collected_at": _now()}, f, indent=2)
    log(f"{job.name}: {len(files)} files of {rec['ref']} v{rec.get('version')} -> {dest}")
    return True


def _download(api, n, rec, st, log, sleep) -> Path:
    """Download kernel `rec`'s output and log into <kernel folder>/output/, replaced only when complete."""
    folder = Path(rec["folder"])
    tmp, old, dest = folder / ".output.partial", folder / ".output.old", folder / "output"
    shutil.rmtree(tmp, ignore_errors=True)
    call_kaggle(api.kernels_output, rec["ref"], str(tmp), force=True, quiet=True, run=n,
                what=f"download of {rec['ref']} output", st=st, log=log, sleep=sleep)
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest


def collect(plan, runs=None, replace: bool = False, api=None, log=print, sleep=time.sleep) -> int:
    """Download the output (and log) of each COMPLETE/ERROR kernel into <kernel folder>/output/ and install
    a COMPLETE one into its run's out_dir under outputs/. Returns 0 when all were COMPLETE and collected."""
    st = settings(plan)
    state = load_state(plan)
    names = _pushed(plan, state, runs)
    api = api or connect()
    jobs = {j.name: j for j in plan.jobs}
    rc = 0
    for n in names:
        rec = state["kernels"][n]
        try:
            s, msg = refresh(api, plan, [n], st=st, state=state, log=log, sleep=sleep)[n]
            if s not in ("COMPLETE", "ERROR"):
                log(f"{n}: {rec['ref']} is {s}; collect it once it is COMPLETE (pipeline.py kaggle status)")
                rc = 1
                continue
            dest = _download(api, n, rec, st, log, sleep)
        except KaggleCallError as e:
            log(str(e))
            rc = 1
            if e.code == 401:
                return rc
            continue
        if s == "ERROR":
            log(f"{n}: {rec['ref']} ended in ERROR ({msg or 'no message'}); its log is in {dest}")
            rc = 1
        elif n in jobs:
            _install(jobs[n], dest, rec, replace, log)
    return rc


def submit(plan, message=None, api=None, log=print, sleep=time.sleep) -> int:
    """Submit the ensemble: to a code competition its kernel + version (CreateCodeSubmission), to a file
    competition the submission.csv that kernel wrote (downloaded by `collect`). Returns an exit code."""
    st = settings(plan)
    state = load_state(plan)
    ens = [j for j in plan.jobs if j.stage == "ensemble" and j.name in state["kernels"]]
    if not ens:
        raise RoadtopError(f"the ensemble of {plan.source} is not on Kaggle: run `pipeline.py kaggle push`")
    job, rec = ens[0], state["kernels"][ens[0].name]
    api = api or connect()
    msg = message or f"roadtop {plan.name}: {rec['ref']} v{rec['version']}"
    kw = {"run": job.name, "st": st, "log": log, "sleep": sleep,
          "hint": f"accept the rules at https://www.kaggle.com/competitions/{st.competition}/rules"}
    if st.code_competition:
        s, _ = refresh(api, plan, [job.name], st=st, state=state, log=log, sleep=sleep)[job.name]
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
    state.setdefault("submissions", []).append(
        {**sent, "ref": getattr(resp, "ref", None), "message": getattr(resp, "message", ""), "at": _now()})
    save_state(plan, state)
    log(f"{job.name}: {getattr(resp, 'message', '')} (submission {getattr(resp, 'ref', '?')})")
    return 0
