"""A run plan (params/*.yaml) turned into checked notebook jobs, before anything runs."""

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..accum import check_accum
from ..ensemble import FOLD_RE, fold_name
from ..errors import RoadtopError
from ..paddy import make_demo, resolve_data
from ..paths import NOTEBOOKS, ROOT, iskaggle
from .budget import probe_runs, probe_stages
from .params import check_arch, notebook_params, validate_params
from .stages import ORDER, stage

__all__ = ["DEFAULT_PLAN", "Job", "Plan", "load_plan", "resolve_plan_data"]

DEFAULT_PLAN = ROOT / "params" / "demo.yaml"
_TOP = {"name", "out_dir", "data", "kaggle", *ORDER}
_DATA = {"path", "demo", "holdout_pct", "holdout_seed", "labels", "skip_bad"}
_SET_BY_PIPELINE = {"out_dir", "data_path", "run_dirs", "runs", "ensemble_dir"}


@dataclass
class Job:
    """One notebook execution: its stage (= notebook stem), full parameters and output folder."""

    name: str
    stage: str
    notebook: Path
    params: dict
    out_dir: Path
    needs: list = field(default_factory=list)


@dataclass
class Plan:
    """A checked run plan: where it came from, where it writes, and its jobs in execution order."""

    name: str
    source: Path
    out_dir: Path
    jobs: list
    data: dict
    kaggle: dict = field(default_factory=dict)

    def job(self, name: str) -> Job:
        """The job called `name`."""
        for j in self.jobs:
            if j.name == name:
                return j
        raise RoadtopError(f"no job '{name}' in plan {self.source.name}: pick one of {[j.name for j in self.jobs]}")


def _read_yaml(path: Path) -> dict:
    if not path.exists():
        raise RoadtopError(f"{path} does not exist: pass --params with a plan from params/ (e.g. params/demo.yaml)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise RoadtopError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)}): fix the syntax") from None
    if not isinstance(raw, dict):
        raise RoadtopError(f"{path}: a plan is a mapping of sections ({', '.join(sorted(_TOP))})")
    return raw


def _section(raw, key, where) -> dict:
    sec = raw.get(key) or {}
    if not isinstance(sec, dict):
        raise RoadtopError(f"{where}: '{key}' must be a mapping of name: value, not {type(sec).__name__}")
    return sec


def _stage_params(name, overrides, data, where):
    """Validate `overrides` for stage `name`'s notebook, adding the data settings the notebook declares."""
    nb = NOTEBOOKS / stage(name).notebook
    declared = notebook_params(nb)
    for k in _SET_BY_PIPELINE & set(overrides):
        raise RoadtopError(f"{where}: '{k}' is set by the pipeline; remove it from the plan (data: path sets data)")
    shared = {k: v for k, v in data.items() if k in declared and k in ("holdout_pct", "holdout_seed")}
    return nb, validate_params(nb, {**shared, **overrides}, where)


def _fold_jobs(run: str, over: dict, where: str) -> list:
    """A run's jobs as (name, overrides): itself, or with `folds: k` (k >= 2) k jobs <run>-fold<i> (fold=i)."""
    if FOLD_RE.match(run):
        raise RoadtopError(f"{where}: a run name ending in -fold<i> is kept for k-fold jobs: rename the run")
    k = over.get("folds", 0)
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise RoadtopError(f"{where}: folds={k!r}: use an integer k >= 2 (k-fold bagging) or 0 (one random split)")
    if k < 2:
        return [(run, over)]
    if "fold" in over:
        raise RoadtopError(f"{where}: 'fold' is set by the pipeline (one job per fold of folds: {k}): remove it")
    if isinstance(over.get("seed"), bool) or not isinstance(over.get("seed"), int):
        raise RoadtopError(f"{where}: folds: {k} needs seed: <int>, so that every fold job cuts the same folds")
    return [(fold_name(run, i), {**over, "fold": i}) for i in range(k)]


def load_plan(path=None, out_dir=None) -> Plan:
    """Read and check a plan: unknown keys, types, timm archs and fixed input sizes all fail here, in one line."""
    path = Path(path or DEFAULT_PLAN)
    raw = _read_yaml(path)
    where = path.name
    extra = sorted(set(raw) - _TOP)
    if extra:
        raise RoadtopError(f"{where}: unknown section(s) {extra}: a plan has {sorted(_TOP)}")
    data = _section(raw, "data", where)
    bad = sorted(set(data) - _DATA)
    if bad:
        raise RoadtopError(f"{where}: unknown data key(s) {bad}: data takes {sorted(_DATA)}")
    name = str(raw.get("name") or path.stem)
    out = Path(out_dir or raw.get("out_dir") or ROOT / "outputs")
    out = out if out.is_absolute() else ROOT / out
    jobs = []
    for st in (stage(n) for n in ORDER):
        if st.name not in raw or raw[st.name] is False:
            continue
        sec = _section(raw, st.name, where)
        if st.many:  # named runs, one job each: {defaults, runs}
            unknown = sorted(set(sec) - {"defaults", "runs"})
            if unknown:
                raise RoadtopError(f"{where}: {st.name} takes 'defaults' and 'runs', not {unknown}")
            defaults = _section(sec, "defaults", f"{where} {st.name}")
            runs = _section(sec, "runs", f"{where} {st.name}")
            if not runs:
                raise RoadtopError(f"{where}: {st.name}.runs is empty: add at least one run (name: {{arch: ...}})")
            for run, over in runs.items():
                w = f"{where} run '{run}'"
                if not isinstance(over, dict):
                    raise RoadtopError(f"{w}: a run is a mapping of parameters, e.g. {{arch: convnext_small}}")
                for job_name, fold_over in _fold_jobs(str(run), {**defaults, **over}, w):
                    nb, params = _stage_params(st.name, fold_over, data, w)
                    check_arch(params["arch"], params["size"], w)
                    jobs.append(Job(f"{st.name}/{job_name}", st.name, nb, params, out / st.name / job_name))
        else:
            nb, params = _stage_params(st.name, sec, data, f"{where} {st.name}")
            if "arch" in params and "size" in params:  # a single-job stage that trains a timm model too
                check_arch(params["arch"], params["size"], f"{where} {st.name}")
            jobs.append(Job(st.name, st.name, nb, params, out / st.name))
    for j in jobs:  # accum: a positive divisor of 64 or "auto" (the memory probe's choice)
        if "accum" in j.params:
            check_accum(j.params["accum"], f"{where} {j.name}")
    probe = next((j for j in jobs if stage(j.stage).measures), None)
    if probe:
        probe.params["runs"], probe.params["stages"] = probe_runs(jobs), probe_stages(jobs)
    elif any(j.params.get("accum") == "auto" for j in jobs):
        raise RoadtopError(f"{where}: accum: auto needs the memory probe: add a `probe:` section (e.g. probe: {{}})")
    for j in jobs:  # the jobs of its upstream stages that the plan has (the ensemble: every run)
        j.needs = [n.name for n in jobs if n.stage in stage(j.stage).upstream]
        if stage(j.stage).predicts:  # the ensemble's choice (ensemble.json) and the runs' saved models
            ens = [n.out_dir for n in jobs if n.name in j.needs and stage(n.stage).ensembles]
            if not ens:
                raise RoadtopError(f"{where}: {j.name} predicts with the ensemble's models: add an `ensemble:` section")
            j.params["ensemble_dir"] = str(ens[0])
            j.params["run_dirs"] = [str(n.out_dir) for n in jobs if n.name in j.needs and stage(n.stage).member]
    plan = Plan(name, path, out, jobs, data, _section(raw, "kaggle", where))
    for j in plan.jobs:
        j.params["out_dir"] = str(j.out_dir)
    return plan


def resolve_plan_data(plan: Plan, progress: bool = True) -> Path:
    """The plan's Paddy folder: `data.path`, Kaggle's input on Kaggle, else the demo (generated when absent)."""
    if plan.data.get("path") or iskaggle():
        p = resolve_data(str(plan.data.get("path") or ""))
    else:
        demo = dict(plan.data.get("demo") or {})
        if "size" in demo:
            demo["size"] = tuple(demo["size"])
        try:
            p = make_demo(progress=progress, **demo)
        except TypeError as e:
            raise RoadtopError(f"{plan.source.name}: data.demo: {e}: it takes n_train, n_test, size, seed") from None
    for j in plan.jobs:
        if "data_path" in notebook_params(j.notebook):
            j.params["data_path"] = str(p)
    return p
