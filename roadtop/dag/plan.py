"""A run plan (params/*.yaml) turned into checked notebook jobs, before anything runs."""

import fnmatch
import inspect
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from ..accum import check_accum
from ..ensemble import FOLD_RE, fold_name
from ..errors import RoadtopError
from ..paddy import make_demo, resolve_data
from ..paths import NOTEBOOKS, ROOT, iskaggle
from .budget import probe_runs, probe_stages
from .params import SET_BY_PIPELINE as _SET_BY_PIPELINE  # the one list (roadtop.dag.params)
from .params import check_arch, check_limit, notebook_params, validate_params
from .render import Job
from .stages import ORDER, stage

__all__ = ["DEFAULT_PLAN", "Job", "Plan", "load_plan", "pick", "resolve_plan_data"]

DEFAULT_PLAN = ROOT / "params" / "demo.yaml"
_TOP = {"name", "out_dir", "data", "kaggle", *ORDER}
_DATA = {"path": str, "demo": dict, "holdout_pct": float, "holdout_seed": int, "labels": list, "skip_bad": bool}
_DEMO = {k: type(p.default) for k, p in inspect.signature(make_demo).parameters.items()  # data.demo: make_demo's
         if k not in ("path", "progress")}  # own arguments (n_train, n_test, size, seed), typed by their defaults
RUN_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # a run's folder name: plain, never '.' or '..', never a path


@dataclass(frozen=True)
class Plan:
    """A checked run plan, rendered: where it came from, where it writes, and its frozen jobs in execution order."""

    name: str
    source: Path
    out_dir: Path
    jobs: tuple
    data: dict
    kaggle: dict = field(default_factory=dict)

    def __post_init__(self):
        """The jobs as a tuple: a rendered plan gets new jobs only as a new plan (dataclasses.replace)."""
        object.__setattr__(self, "jobs", tuple(self.jobs))

    def job(self, name: str) -> Job:
        """The job called `name`."""
        for j in self.jobs:
            if j.name == name:
                return j
        raise RoadtopError(f"no job '{name}' in plan {self.source.name}: pick one of {[j.name for j in self.jobs]}")

    def select(self, patterns=None) -> tuple:
        """The jobs `patterns` pick (see `pick`), in plan order; every job when there are none."""
        names = set(pick([j.name for j in self.jobs], patterns, f"in plan {self.source.name}"))
        return tuple(j for j in self.jobs if j.name in names)


def pick(names, patterns=None, where: str = "") -> list:
    """The `names` that `patterns` pick, in order (all of them when there are none): `run --only` and the kaggle
    commands pick jobs alike. A pattern is a job's name or a glob (train/res, res, 'train/*', ensemble), matched
    against the whole name and against the part after the stage (res for train/res). A pattern that picks none is
    one line listing the names."""
    names = list(names)
    if not patterns:
        return names
    out = set()
    for pat in patterns:
        hit = {n for n in names if fnmatch.fnmatchcase(n, pat) or fnmatch.fnmatchcase(n.split("/", 1)[-1], pat)}
        if not hit:
            raise RoadtopError(f"--only {pat}: no such job{' ' + where if where else ''}: pick from "
                               f"{', '.join(names)} (a name or a glob like 'train/*')")
        out |= hit
    return [n for n in names if n in out]


class _PlanLoader(yaml.SafeLoader):
    """yaml's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last one silently)."""

    def get_single_data(self):
        """The document, after checking every mapping in it for repeated keys."""
        node = self.get_single_node()
        if node is not None:
            _no_repeats(node, [])
        return self.construct_document(node) if node is not None else None


def _no_repeats(node, path: list):
    """Raise a yaml error naming the key path of the first key repeated in a mapping under `node`."""
    if isinstance(node, yaml.MappingNode):
        seen = {}
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else str(k.value)
            if key in seen:
                raise _Repeated(".".join([*path, key]), seen[key] + 1, k.start_mark.line + 1)
            seen[key] = k.start_mark.line
            _no_repeats(v, [*path, key])
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _no_repeats(v, [*path, str(i)])


class _Repeated(Exception):
    """A key given twice: its key path and both lines."""


def _read_yaml(path: Path) -> dict:
    """The plan file's mapping, or one line saying why it is not a plan (missing, a folder, binary, bad YAML)."""
    if not path.exists():
        raise RoadtopError(f"{path} does not exist: pass --params with a plan from params/ (e.g. params/demo.yaml)")
    if not path.is_file():
        raise RoadtopError(f"{path} is a folder, not a plan: pass --params with a YAML file (e.g. params/demo.yaml)")
    try:
        text = path.read_bytes().decode("utf-8")
        if "\0" in text:
            raise UnicodeDecodeError("utf-8", b"\0", 0, 1, "NUL byte")
    except UnicodeDecodeError:
        raise RoadtopError(f"{path} is not a text file (not UTF-8): pass --params with a YAML plan") from None
    except OSError as e:
        raise RoadtopError(f"{path} cannot be read ({e.strerror}): check its permissions") from None
    try:
        raw = yaml.load(text, Loader=_PlanLoader)
    except _Repeated as e:
        key, first, again = e.args
        raise RoadtopError(f"{path} line {again}: {key} is given twice (also line {first}): keep one of them "
                           f"(YAML would silently keep the last)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise RoadtopError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)}): fix the syntax") from None
    if raw is None:
        raise RoadtopError(f"{path} is empty: a plan needs at least one stage section ({', '.join(ORDER)}); "
                           f"see params/demo.yaml")
    if not isinstance(raw, dict):
        raise RoadtopError(f"{path}: a plan is a mapping of sections ({', '.join(sorted(_TOP))})")
    return raw


def _check_data(data: dict, where: str):
    """The data: section's keys, types and LIMITS (data.demo: make_demo's arguments)."""
    bad = sorted(set(data) - set(_DATA))
    if bad:
        raise RoadtopError(f"{where}: unknown data key(s) {bad}: data takes {sorted(_DATA)}")
    demo = data.get("demo") or {}
    bad = sorted(set(demo) - set(_DEMO)) if isinstance(demo, dict) else []
    if bad:
        raise RoadtopError(f"{where}: unknown data.demo key(s) {bad}: it takes {', '.join(_DEMO)}")
    typed = [(f"data.{k}", k, v, _DATA[k]) for k, v in data.items() if v is not None and not (k == "demo" and not v)]
    typed += [(f"data.demo.{k}", f"demo.{k}", v, _DEMO[k]) for k, v in demo.items()]
    for path, name, v, want in typed:
        ok = (want in (list, tuple) and isinstance(v, (list, tuple))) or \
             (isinstance(v, want) and not (isinstance(v, bool) and want is not bool)) or \
             (want is float and isinstance(v, int) and not isinstance(v, bool))
        if not ok:
            shown = "a list, e.g. [a, b]" if want in (list, tuple) else want.__name__
            raise RoadtopError(f"{where}: {path}={v!r} is {type(v).__name__}: write {path} as {shown}")
        check_limit(name, v, where, path)
    for lab in data.get("labels") or []:
        if not isinstance(lab, str) or not RUN_NAME.fullmatch(lab) or lab in (".", ".."):
            raise RoadtopError(f"{where}: data.labels item {lab!r} is not a folder name: list the label folders' names")


def _check_run_name(run, where: str, section: str) -> str:
    """`run` as a folder name: letters, digits, _, -, . only (not '.', '..' or empty); else one line."""
    name = "" if run is None else str(run)
    if not RUN_NAME.fullmatch(name) or name in (".", ".."):
        raise RoadtopError(f"{where}: run name {name!r} under {section}.runs is not a plain name: rename it with "
                           f"letters, digits, _, - and . only (it names the run's folder)")
    return name


def _section(raw, key, where) -> dict:
    sec = raw.get(key) or {}
    if not isinstance(sec, dict):
        raise RoadtopError(f"{where}: '{key}' must be a mapping of name: value, not {type(sec).__name__}")
    return sec


def _stage_params(name, overrides, data, where, paths):
    """Validate `overrides` for stage `name`'s notebook, adding the data settings the notebook declares; `paths`
    maps each override to its key path in the plan."""
    nb = NOTEBOOKS / stage(name).notebook
    declared = notebook_params(nb)
    for k in _SET_BY_PIPELINE & set(overrides):
        raise RoadtopError(f"{where}: '{k}' is set by the pipeline; remove it from the plan (data: path sets data)")
    shared = {k: v for k, v in data.items() if k in declared and k in ("holdout_pct", "holdout_seed")}
    return nb, validate_params(nb, {**shared, **overrides}, where, {**{k: f"data.{k}" for k in shared}, **paths})


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
    _check_data(data, where)
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
                run = _check_run_name(run, where, st.name)
                w = f"{where} run '{run}'"
                if not isinstance(over, dict):
                    raise RoadtopError(f"{w}: a run is a mapping of parameters, e.g. {{arch: convnext_small}}")
                keys = {k: f"{st.name}.{'runs.' + run if k in over else 'defaults'}.{k}" for k in {**defaults, **over}}
                for job_name, fold_over in _fold_jobs(run, {**defaults, **over}, w):
                    nb, params = _stage_params(st.name, fold_over, data, w, keys)
                    check_arch(params["arch"], params["size"], w)
                    jobs.append(Job(f"{st.name}/{job_name}", st.name, nb, params, out / st.name / job_name))
        else:
            nb, params = _stage_params(st.name, sec, data, f"{where} {st.name}", {k: f"{st.name}.{k}" for k in sec})
            if "arch" in params and "size" in params:  # a single-job stage that trains a timm model too
                check_arch(params["arch"], params["size"], f"{where} {st.name}")
            jobs.append(Job(st.name, st.name, nb, params, out / st.name))
    for j in jobs:  # accum: a positive divisor of 64 or "auto" (the memory probe's choice)
        if "accum" in j.params:
            check_accum(j.params["accum"], f"{where} {j.name}")
    if not jobs:
        raise RoadtopError(f"{where}: no stage section, nothing to run: add one of {', '.join(ORDER)} "
                           f"(see params/demo.yaml)")
    return Plan(name, path, out, _render(jobs, where), data, _section(raw, "kaggle", where))


def _render(jobs: list, where: str) -> tuple:
    """The plan's final jobs: each with its upstream jobs, its out_dir as a parameter, the probe with the runs it
    measures, predict with the ensemble's and the runs' folders. Nothing changes them after this."""
    if not any(stage(j.stage).measures for j in jobs) and any(j.params.get("accum") == "auto" for j in jobs):
        raise RoadtopError(f"{where}: accum: auto needs the memory probe: add a `probe:` section (e.g. probe: {{}})")
    out = []
    for j in jobs:  # the jobs of its upstream stages that the plan has (the ensemble: every run)
        st, extra = stage(j.stage), {"out_dir": str(j.out_dir)}
        needs = [n.name for n in jobs if n.stage in st.upstream]
        if st.measures:
            extra.update(runs=probe_runs(jobs), stages=probe_stages(jobs))
        if st.predicts:  # the ensemble's choice (ensemble.json) and the runs' saved models
            ens = [n.out_dir for n in jobs if n.name in needs and stage(n.stage).ensembles]
            if not ens:
                raise RoadtopError(f"{where}: {j.name} predicts with the ensemble's models: add an `ensemble:` section")
            extra.update(ensemble_dir=str(ens[0]),
                         run_dirs=[str(n.out_dir) for n in jobs if n.name in needs and stage(n.stage).member])
        out.append(replace(j.with_params(**extra), needs=needs))
    return tuple(out)


def resolve_plan_data(plan: Plan, progress: bool = True) -> Path:
    """The plan's Paddy folder: `data.path`, Kaggle's input on Kaggle, else the demo (generated when absent).
    The jobs that read it get it as a new plan: roadtop.dag.render.with_data."""
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
    return p
