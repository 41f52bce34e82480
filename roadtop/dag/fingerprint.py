"""Fingerprints that decide whether a job is up to date: notebook source, parameters, data, upstream jobs."""

import hashlib
import json
from pathlib import Path

__all__ = ["data_fingerprint", "job_fingerprint"]


def _sha(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()


def data_fingerprint(path) -> str:
    """Names and sizes of every file under the data folder, plus the CSVs' bytes (fast on 14k images)."""
    path = Path(path)
    items = []
    for f in sorted(path.rglob("*")):
        if f.is_file():
            rel = f.relative_to(path).as_posix()
            items.append(f"{rel}:{f.stat().st_size}")
            if f.suffix == ".csv":
                items.append(hashlib.sha256(f.read_bytes()).hexdigest())
    return _sha(*items)


def _notebook_source(nb: Path) -> str:
    """The notebook's code and markdown, without outputs or metadata (what decides the result)."""
    cells = json.loads(nb.read_text())["cells"]
    return json.dumps([(c["cell_type"], "".join(c["source"])) for c in cells])


def job_fingerprint(job, data_fp: str, upstream: dict, members=None) -> str:
    """Notebook source + parameters + input data + the fingerprints of the jobs it reads.

    Paths the pipeline sets (out_dir, data_path, run_dirs) are left out: the data and upstream fingerprints already
    say what they hold, so the same plan in another output folder has the same fingerprints.
    """
    params = {k: v for k, v in job.params.items() if k not in ("out_dir", "data_path", "run_dirs")}
    reads = job.needs if members is None else members
    return _sha(_notebook_source(job.notebook), json.dumps(params, sort_keys=True, default=str), data_fp,
                json.dumps({n: upstream.get(n) for n in reads}, sort_keys=True))
