"""Gradient accumulation settings: what `accum` may be, and `accum: auto` as the probe's choice (the smallest that fits)."""

import json
from pathlib import Path

import torch

from .errors import RoadtopError
from .paths import default_out, kaggle_folders

__all__ = ["EFFECTIVE_BS", "PROBE_JSON", "SPEC_KEYS", "check_accum", "run_spec", "same_spec", "trial_fits",
           "choose_accum", "auto_accum", "probe_dirs", "probe_file", "read_probes", "notebook_accum"]


EFFECTIVE_BS = 64  # lesson 7: every run sees batches of 64, in `accum` pieces of 64 // accum


PROBE_JSON = "probe.json"  # what the probe writes and `accum: auto` reads


SPEC_KEYS = ("arch", "item_method", "item_size", "size")  # what decides a run's memory and speed


GIB = 2**30


def check_accum(value, where: str):
    """Return `value` if it is "auto" or a positive divisor of 64; else raise one line naming `where`."""
    if value == "auto":
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1 and EFFECTIVE_BS % value == 0:
        return value
    raise RoadtopError(f"{where}: accum={value!r} is not allowed: use a positive divisor of {EFFECTIVE_BS} "
                       f"(1, 2, 4, 8, ...) or 'auto' (the memory probe's choice)")


def _norm(v):
    """JSON-stable value: tuples become lists (so specs compare equal after a round trip)."""
    return [_norm(x) for x in v] if isinstance(v, (list, tuple)) else v


def run_spec(params: dict) -> dict:
    """The part of a run's parameters that decides memory and speed (plus an explicit int accum)."""
    spec = {k: _norm(params[k]) for k in SPEC_KEYS if k in params}
    if isinstance(params.get("accum"), int):
        spec["accum"] = params["accum"]
    return spec


def same_spec(recorded: dict, params: dict, accum: bool = True) -> bool:
    """True when a probe record's spec is that of a run with `params` (an explicit accum too, unless not `accum`)."""
    drop = {} if accum else {"accum": None}
    return run_spec({**recorded, **drop}) == run_spec({**params, **drop})


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


def auto_accum(probe: dict, entry: dict) -> tuple:
    """`accum: auto` for the run `entry` of a probe.json: (the smallest accum whose peak fits the probe's budget with
    margin, why); (None, why not, with the fix) when none does or the probe ran on CPU and this machine has a GPU."""
    if not probe.get("gpu_measured") and torch.cuda.is_available():
        return None, ("the probe ran on CPU and this machine has a GPU: rerun it here with "
                      "`pipeline.py run --only probe --force`")
    budget = probe["gpu_budget_gb"]
    accum, why = choose_accum(entry["trials"], budget, probe["margin_gb"])
    if accum is None:
        why += f" under {budget:g} GiB: use a smaller size or arch, or add a larger accum to probe.accums"
    return accum, why


def probe_dirs(out_dir=None) -> list:
    """Folders a notebook looks in for probe.json, nearest first: beside its run's folder (a pipeline run:
    <out>/<stage>/<run> and <out>/probe), the default outputs/probe, then every Kaggle input holding one."""
    near = [Path(out_dir).parent.parent / "probe"] if out_dir else []
    return list(dict.fromkeys([*near, default_out("probe"), *kaggle_folders(PROBE_JSON)]))


def probe_file(folder) -> Path:
    """Where the probe's record (probe.json) is in `folder`."""
    return Path(folder) / PROBE_JSON


def read_probes(dirs):
    """(file, content) of the probe.json in each of `dirs` that holds one, nearest first; one line for a file that
    is not JSON."""
    for f in (probe_file(d) for d in dirs):
        if not f.exists():
            continue
        try:
            probe = json.loads(f.read_text())
        except ValueError:
            raise RoadtopError(f"{f} is not valid JSON: delete it and rerun `pipeline.py run --only probe`") from None
        yield f, probe


def notebook_accum(accum, spec: dict, search=None) -> int:
    """`accum` for a notebook run outside the pipeline: an int as is; "auto" from a probe.json with this spec."""
    check_accum(accum, "accum")
    if accum != "auto":
        return accum
    dirs = search if search is not None else probe_dirs()
    for f, probe in read_probes(dirs):
        for e in probe.get("runs", {}).values():
            if same_spec(e["spec"], spec, accum=False):
                a, _ = auto_accum(probe, e)
                if a is not None:
                    print(f"accum: auto -> {a} (from {f})")
                    return a
    if not torch.cuda.is_available():
        print("accum: auto -> 1 (CPU, no probe for this run: memory is not the limit here)")
        return 1
    spec = run_spec({**spec, "accum": None})
    raise RoadtopError(f"accum='auto' but no probe.json in {[str(d) for d in dirs]} measured {spec} on a GPU: "
                       f"run notebooks/probe.ipynb first, or set accum")
