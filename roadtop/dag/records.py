"""A job's records in its out_dir: manifest.json (complete, written last) and failed.json (one-line cause)."""

import json
from enum import StrEnum
from pathlib import Path

from ..clock import utc_now
from ..paths import atomic_write

__all__ = ["MANIFEST", "FAILED", "State", "job_state", "record_failure", "cause"]


MANIFEST = "manifest.json"


FAILED = "failed.json"


class State(StrEnum):
    """A job's state: what its records say (the first four), or why it does not run now (the last two)."""

    COMPLETE = "complete"  # manifest there, outputs there, fingerprint the same
    STALE = "stale"  # ran, but something it depends on changed since
    FAILED = "failed"  # failed.json says why
    PENDING = "pending"  # never ran (or its outputs are gone)
    WAITS = "waits"  # for the jobs it reads (the ensemble for its runs, predict for the ensemble)
    CANNOT_START = "cannot_start"  # its parameters cannot be made (accum: auto without a usable probe result)


def _read_json(f: Path):
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError):
        return None


def job_state(job, fingerprint=None, parts=None) -> dict:
    """{'state': complete|stale|failed|pending, ...}: complete = manifest there, outputs there, fingerprint same.

    A stale job's record says what changed since it ran (`changed`: notebook, params, data, upstream), from the
    fingerprint parts its manifest stored and `parts`, the ones it has now.
    """
    m = _read_json(job.out_dir / MANIFEST)
    if m and all((job.out_dir / o).exists() for o in m.get("outputs", [])):
        if fingerprint is None or m.get("fingerprint") == fingerprint:
            return {"state": State.COMPLETE, **m}
        from .fingerprint import what_changed  # here, not on top: a job's process (roadtop.dag.execute) writes records
        # without the planner's imports (fingerprint -> params -> timm, torch), which take seconds
        return {"state": State.STALE, **m, "changed": what_changed(m.get("parts"), parts or {})}
    f = _read_json(job.out_dir / FAILED)
    if f:
        return {"state": State.FAILED, **f}
    return {"state": State.PENDING}


def cause(e: BaseException) -> str:
    """One line saying why a notebook failed."""
    ename, evalue = getattr(e, "ename", None), getattr(e, "evalue", None)
    line = f"{ename}: {evalue}" if ename else f"{type(e).__name__}: {e}"
    line = " ".join(line.split())
    return line[:300]


def record_failure(job, cause: str, seconds: float = 0.0, notebook: str = "") -> dict:
    """Write failed.json (the one-line cause `pipeline.py status` shows); the job is then not complete. Where it
    cannot be written (a full disk), the state says why in `unrecorded`, for the caller to print."""
    rec = {"job": job.name, "cause": cause, "seconds": round(seconds, 1), "notebook": notebook,
           "finished": utc_now()}
    try:
        job.out_dir.mkdir(parents=True, exist_ok=True)
        (job.out_dir / MANIFEST).unlink(missing_ok=True)
        with atomic_write(job.out_dir / FAILED) as f:
            json.dump(rec, f, indent=1)
    except OSError as e:
        return {"state": State.FAILED, **rec, "unrecorded": e.strerror or type(e).__name__}
    return {"state": State.FAILED, **rec}
