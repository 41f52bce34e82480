"""Fingerprints that decide whether a job is up to date: notebook source, parameters, data, upstream jobs."""

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..nbcode import export_cells, uses
from ..paths import atomic_write
from .datafiles import scan
from .params import FINGERPRINT_SKIPS

__all__ = ["PART_NAMES", "file_hashes", "data_fingerprint", "job_parts", "fingerprint", "what_changed"]

PART_NAMES = ("notebook", "params", "data", "upstream")  # what a job's fingerprint is made of, in this order


def _sha(*parts) -> str:
    """sha256 hex of `parts`, each as bytes or str (a file name's undecodable bytes as they are), NUL-separated."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()


def _file_sha(f: Path) -> str:
    """sha256 hex of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(f, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_cache(f) -> dict:
    """The per-file hash cache {rel: [size, mtime_ns, sha]}, or {} if absent or unreadable."""
    try:
        return json.loads(Path(f).read_text())
    except (OSError, ValueError, TypeError):
        return {}


def file_hashes(path, cache_file=None, threads: int = 4, files=None) -> dict:
    """{relative path: sha256 of its bytes} for every file under `path` (`files`: its scan, else scanned here).

    With `cache_file`, a file's hash is reused while its size and mtime are unchanged, so a rerun on 14k unchanged
    images only stats them; a file rewritten in place (even with the same size) is read again.
    """
    path = Path(path)
    files = files or scan(path)
    old = _read_cache(cache_file) if cache_file else {}
    stats = {rel: list(st) for rel, st in files.files.items()}
    todo = [rel for rel in stats if not (old.get(rel) and old[rel][:2] == stats[rel])]
    with ThreadPoolExecutor(threads) as ex:  # hashlib releases the GIL: reading and hashing overlap
        fresh = dict(zip(todo, ex.map(lambda rel: _file_sha(path / rel), todo)))
    hashes = {rel: fresh[rel] if rel in fresh else old[rel][2] for rel in sorted(stats)}
    if cache_file and (todo or set(old) != set(stats)):
        with atomic_write(cache_file) as fh:
            json.dump({rel: [*stats[rel], h] for rel, h in hashes.items()}, fh)
    return hashes


def data_fingerprint(path, cache_dir=None, files=None) -> str:
    """The data folder's content: every file's name and sha256 (hashes cached per file under `cache_dir`), and each
    entry that is not data (a broken link, ...) with why. `files`: the folder's scan, else scanned here."""
    path = Path(path)
    files = files or scan(path)
    cache = Path(cache_dir) / f"hashes-{_sha(path.resolve())[:12]}.json" if cache_dir else None
    return _sha(*(f"{rel}:{h}" for rel, h in file_hashes(path, cache, files=files).items()),
                *(f"{rel}:!{why}" for rel, why in sorted(files.broken.items())))


def _notebook_source(nb: Path) -> str:
    """The notebook's code and markdown, without outputs or metadata (what decides the result), and the code it runs
    from other notebooks (roadtop.nbcode.load: the probe trains with train.ipynb's functions)."""
    cells = [(c["cell_type"], "".join(c["source"])) for c in json.loads(nb.read_text())["cells"]]
    runs = [(name, export_cells(name, nb.parent)) for name in uses(src for kind, src in cells if kind == "code")]
    return json.dumps(cells + runs)


def job_parts(job, data_fp: str, upstream: dict, members=None) -> dict:
    """What a job's result depends on: notebook source (hash), parameters, input data, the upstream jobs it reads.

    Paths the pipeline sets (roadtop.dag.params.FINGERPRINT_SKIPS) are left out: the data and upstream parts already say
    what they hold, so the same plan in another output folder has the same fingerprints.
    """
    params = {k: v for k, v in job.params.items() if k not in FINGERPRINT_SKIPS}
    reads = job.needs if members is None else members
    return {"notebook": _sha(_notebook_source(job.notebook)),
            "params": json.loads(json.dumps(params, sort_keys=True, default=str)),
            "data": data_fp, "upstream": {n: upstream.get(n) for n in reads}}


def fingerprint(parts: dict) -> str:
    """One hash of a job's parts (job_parts)."""
    return _sha(*(json.dumps(parts[k], sort_keys=True) for k in PART_NAMES))


def _short(v, n: int = 40) -> str:
    """A value as at most `n` characters of JSON."""
    s = json.dumps(v, default=str)
    return s if len(s) <= n else s[: n - 3] + "..."


def what_changed(old: dict, new: dict) -> list:
    """What differs between two jobs' parts, one phrase each: 'params (epochs 1 -> 2)', 'upstream (train/a)'."""
    if not old:
        return ["fingerprint (recorded before its parts were)"]
    out = []
    for k in PART_NAMES:
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if k in ("params", "upstream") and isinstance(a, dict) and isinstance(b, dict):
            keys = sorted(n for n in set(a) | set(b) if a.get(n, "(unset)") != b.get(n, "(unset)"))
            if k == "params":
                keys = [f"{n} {_short(a[n]) if n in a else '(unset)'} -> {_short(b[n]) if n in b else '(unset)'}"
                        for n in keys]
            out.append(f"{k} ({', '.join(keys)})")
        else:
            out.append(k)
    return out
