"""Kernel folders from a plan: the notebook with its parameters injected, its bootstrap cell and kernel-metadata.json."""

import ast
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import nbformat
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

from ..dag.stages import stage
from ..errors import RoadtopError
from ..nbcode import EXPORT, export_cells, uses
from ..paths import KAGGLE_INPUT, KAGGLE_WORKING, atomic_write
from .record import load_record
from .packnb import pack_notebook
from .schedule import pack_runs
from .settings import KaggleSettings, internet_on, kaggle_dir, kernel_slug, kernel_title, settings

__all__ = [
    "BOOTSTRAP_NOTE",
    "Kernel",
    "bootstrap_source",
    "build_kernels",
    "gpu_kernel",
    "kaggle_out",
    "kaggle_params",
    "kernel_metadata",
    "kernel_notebook",
    "kernel_fingerprint",
    "kernel_of",
    "recorded_fingerprint",
    "select_jobs",
    "source_versions",
]


BOOTSTRAP_NOTE = ("*The hidden cell below writes the helper modules of this lesson's `roadtop` package that this "
                  "notebook imports, so it runs as is; the lesson starts after it.*")


@dataclass
class Kernel:
    """A Kaggle kernel: the jobs it runs (one, or a GPU pack), slug, owner/slug ref, folder, metadata, the runs
    it reads, the hash of what it sends."""

    jobs: list
    slug: str
    ref: str
    folder: Path
    meta: dict
    needs: list  # runs (of other kernels) whose outputs it reads
    content_hash: str  # of the notebook and its metadata; `kernel_fingerprint` adds the versions of its sources
    name: str = ""  # the run name for one job (e.g. train/convnext), pack<i> for a pack

    def __post_init__(self):
        """Name a one-job kernel after its run."""
        self.name = self.name or self.jobs[0].name

    @property
    def job(self):
        """The first (for a one-job kernel: the) job."""
        return self.jobs[0]

    @property
    def runs(self) -> list:
        """The names of the runs it carries."""
        return [j.name for j in self.jobs]


def kernel_of(record: dict, run: str) -> str:
    """The name of the recorded kernel that carries run `run` (itself, or its pack); "" if none."""
    if run in record["kernels"]:
        return run
    return next((n for n, r in record["kernels"].items() if run in (r.get("runs") or ())), "")


def gpu_kernel(k: Kernel) -> bool:
    """True when kernel `k` asks Kaggle for a GPU (and so takes one of the account's GPU sessions)."""
    return bool(k.meta.get("enable_gpu"))


def source_versions(k: Kernel, record: dict) -> dict:
    """run -> the recorded version of the kernel carrying it, for each run `k` reads."""
    return {n: record["kernels"].get(kernel_of(record, n), {}).get("version") for n in k.needs}


def kernel_fingerprint(k: Kernel, record: dict) -> str:
    """What decides whether `k` is up to date on Kaggle (as a job's fingerprint does locally): its content hash
    plus the versions of the kernels it reads, so re-pushing a source run makes the kernel that reads it stale."""
    versions = source_versions(k, record)
    if not versions:
        return k.content_hash
    text = k.content_hash + json.dumps(versions, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def recorded_fingerprint(entry: dict) -> str:
    """The fingerprint a push record's kernel entry was pushed with ("sha" in records written before the rename)."""
    return entry.get("fingerprint", entry.get("sha", ""))


def select_jobs(plan, runs=None, st: KaggleSettings | None = None) -> list:
    """The jobs to send: those `runs` picks (names or globs, as `run --only`: Plan.select), else the settings'
    stages."""
    st = st or settings(plan)
    if runs:
        return list(plan.select(runs))
    out = [j for j in plan.jobs if j.stage in st.stages]
    if not out:
        raise RoadtopError(f"{plan.source}: no job of the stages {st.stages} to push: name jobs with --only")
    return out


def _ordered(jobs: list) -> list:
    """`jobs`, each after the jobs it needs (depth-first, otherwise in plan order)."""
    by, seen, out = {j.name: j for j in jobs}, set(), []

    def visit(j, trail=()):
        """Append `j` after the jobs it needs; `trail` catches cycles."""
        if j.name in seen:
            return
        if j.name in trail:
            raise RoadtopError(f"runs {' -> '.join((*trail, j.name))} need each other: fix 'needs'")
        for n in j.needs:
            if n in by:
                visit(by[n], (*trail, j.name))
        seen.add(j.name)
        out.append(j)

    for j in jobs:
        visit(j)
    return out


def _local_paths(value, prefix=""):
    """(where, value) of every absolute path outside /kaggle inside a param value (str, list or dict)."""
    if isinstance(value, str):
        local = value.startswith(("/", "~")) and not value.startswith("/kaggle/")
        return [(prefix, value)] if local else []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    return [hit for k, v in items for hit in _local_paths(v, f"{prefix}[{k!r}]")]


def kaggle_out(job) -> Path:
    """Where `job` writes on Kaggle: /kaggle/working for the ensemble and predict (Kaggle takes submission.csv
    from there), else /kaggle/working/<its local out_dir's name>, so saved runs keep their names."""
    if stage(job.stage).publishes or stage(job.stage).predicts:
        return KAGGLE_WORKING
    return KAGGLE_WORKING / Path(job.out_dir).name


def kaggle_params(job, slug_of: dict, st: KaggleSettings, jobs: dict | None = None) -> dict:
    """`job.params` for a Kaggle kernel: competition data, out_dir under /kaggle/working, run_dirs and
    weights_dir at the attached kernels/dataset. `slug_of`: run -> slug of the runs sent to Kaggle;
    `jobs`: run -> job."""
    jobs = jobs or {job.name: job}
    p = dict(job.params)
    if "data_path" in p and not str(p["data_path"]).startswith("/kaggle/"):
        p["data_path"] = str(KAGGLE_INPUT / st.competition) if stage(job.stage).paddy else ""
    if "out_dir" in p:
        p["out_dir"] = str(kaggle_out(job))
    if "run_dirs" in p:
        runs = _source_runs(job, slug_of, jobs)
        p["run_dirs"] = [str(KAGGLE_INPUT / slug_of[n] / kaggle_out(jobs[n]).relative_to(KAGGLE_WORKING))
                         for n in runs]
        if not runs:
            raise RoadtopError(f"{job.name}: none of the runs it reads is sent to Kaggle: push them with it "
                               "(e.g. --only 'train/*' ensemble)")
    if "ensemble_dir" in p:  # the predict kernel reads ensemble.json from the ensemble kernel's output
        ens = [n for n in job.needs if n in slug_of and stage(jobs[n].stage).ensembles]
        if not ens:
            raise RoadtopError(f"{job.name}: its ensemble is not sent to Kaggle: push it with it (--only ... ensemble)")
        p["ensemble_dir"] = str(KAGGLE_INPUT / slug_of[ens[0]] / kaggle_out(jobs[ens[0]]).relative_to(KAGGLE_WORKING))
    online, why = internet_on(st)
    if p.get("pretrained") and st.weights_dataset and "weights_dir" in p:
        p["weights_dir"] = str(KAGGLE_INPUT / st.weights_dataset.split("/")[1])
    elif p.get("pretrained") and not online:
        if "weights_dir" not in p:
            raise RoadtopError(f"{job.name}: {Path(job.notebook).name} has no weights_dir parameter, and "
                               f"its kernel has no internet ({why}): set pretrained: false")
        raise RoadtopError(f"{job.name}: pretrained {p.get('arch', '')} on an internet-off kernel ({why}) "
                           "needs the weights dataset, and kaggle.weights_dataset is not set: run `pipeline.py "
                           "kaggle weights FOLDER --dataset <you>/roadtop-timm-weights`, then set it in the plan")
    elif "weights_dir" in p:
        p["weights_dir"] = ""
    bad = [(k + sub, v) for k, val in p.items() for sub, v in _local_paths(val)]
    if bad:
        k, v = bad[0]
        raise RoadtopError(f"{job.name}: parameter {k}={v!r} is a path on this machine, which a Kaggle "
                           "kernel cannot see: leave it empty or point it under /kaggle/input")
    return p


def _source_runs(job, slug_of: dict, jobs: dict) -> list:
    """Runs whose outputs `job` reads: its run_dirs matched to runs by out_dir, or (run_dirs=[]) its needs."""
    wanted = job.params.get("run_dirs") or []
    if not wanted:
        needs = [n for n in job.needs if n in slug_of]
        return [n for n in needs if stage(jobs[n].stage).member] or needs
    by_dir = {Path(j.out_dir).resolve(): n for n, j in jobs.items()}
    runs = []
    for d in wanted:
        n = by_dir.get(Path(d).resolve())
        if n not in slug_of:
            raise RoadtopError(f"{job.name}: run_dirs entry {d} is not the out_dir of a run sent to Kaggle: "
                               "add that run to --only, or leave run_dirs empty")
        runs.append(n)
    return runs


def _imports(code: str) -> set:
    """roadtop modules that Python source `code` imports (absolute, or relative inside roadtop)."""
    code = "\n".join("" if ln.lstrip().startswith(("%", "!")) else ln for ln in code.splitlines())
    found = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("roadtop.")}
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == 0 and mod.startswith("roadtop"):
                found |= {mod.split(".")[1]} if "." in mod else {a.name for a in node.names}
            elif node.level == 1:
                found |= {mod.split(".")[0]} if mod else {a.name for a in node.names}
    return found


def _lessons(nb) -> dict:
    """{name: a notebook of its export cells} for each notebook whose code `nb` runs (roadtop.nbcode.load: the probe
    trains with train.ipynb's functions), so the kernel finds them where nbcode looks: beside the package."""
    out = {}
    for name in uses(c.source for c in nb.cells if c.cell_type == "code"):
        cells = [nbformat.v4.new_code_cell(src, metadata={"tags": [EXPORT]}, id=f"{EXPORT}-{i}")
                 for i, src in enumerate(export_cells(name))]
        out[name] = nbformat.writes(nbformat.v4.new_notebook(cells=cells))
    return out


def _modules(nb, pkg_dir: Path, lessons=None) -> list:
    """File names of the roadtop modules the notebook's code (and the `lessons` notebooks it runs) needs, following
    imports between modules."""
    sources = [c.source for c in nb.cells if c.cell_type == "code"]
    sources += [c.source for text in (lessons or {}).values() for c in nbformat.reads(text, as_version=4).cells]
    try:
        todo = set().union(*(_imports(src) for src in sources))
    except SyntaxError:
        return sorted(p.name for p in pkg_dir.glob("*.py"))  # cannot tell: send them all
    seen = {"__init__", "errors", "paths"}
    todo |= seen
    while todo:
        m = todo.pop()
        seen.add(m)
        if (pkg_dir / f"{m}.py").exists():
            todo |= _imports((pkg_dir / f"{m}.py").read_text(encoding="utf-8")) - seen
    return sorted(f"{m}.py" for m in seen if (pkg_dir / f"{m}.py").exists())


def _literal(text: str) -> str:
    """`text` as a Python literal that reads like the file: a raw triple-quoted string when it can be one."""
    for q in ("'''", '"""'):
        lit = f"r{q}{text}{q}"
        if q not in text and not text.endswith(("\\", q[0])) and ast.literal_eval(lit) == text:
            return lit
    return repr(text)


def bootstrap_source(modules=None, pkg_dir=None, lessons=None) -> str:
    """The hidden cell of every kernel: writes roadtop's `modules` (file names; default all) as readable
    source to a temp folder that goes first on sys.path, so `import roadtop` works with no install, and the
    `lessons` notebooks ({name: text}) whose code the notebook runs to notebooks/ beside it."""
    pkg_dir = Path(pkg_dir or Path(__file__).parent.parent)
    names = modules or sorted(p.name for p in pkg_dir.glob("*.py"))
    body = "".join(f"\n_roadtop_src[{n!r}] = {_literal((pkg_dir / n).read_text(encoding='utf-8'))}\n"
                   for n in names)
    body += "".join(f"\n_roadtop_src[{f'../notebooks/{n}'!r}] = {_literal(text)}\n"
                    for n, text in (lessons or {}).items())
    return (
        f"# roadtop's modules used by this notebook ({', '.join(names)})"
        + (f" and the notebooks whose code it runs ({', '.join(lessons)})" if lessons else "")
        + ", added by `pipeline.py kaggle push`:\n"
        "# written to a temp folder put first on sys.path, so no install (and no internet) is needed.\n"
        "import os, sys, tempfile\n"
        "_roadtop_src = {}\n" + body +
        "\n_roadtop_dir = os.path.join(tempfile.gettempdir(), 'roadtop-src')\n"
        "for _name, _text in _roadtop_src.items():\n"
        "    _file = os.path.normpath(os.path.join(_roadtop_dir, 'roadtop', _name))\n"
        "    os.makedirs(os.path.dirname(_file), exist_ok=True)\n"
        "    with open(_file, 'w', encoding='utf-8') as _f:\n"
        "        _f.write(_text)\n"
        "sys.path.insert(0, _roadtop_dir)\n"
        "del _roadtop_src, _name, _text, _file, _f\n"
    )


def _inputs_source(params: dict) -> str:
    """A cell that points the /kaggle/input/<slug>... parameters at where this session mounted them
    (roadtop.paths.mounted); "" when no parameter names a Kaggle input."""
    names = [k for k, v in params.items()
             if any(str(x).startswith(f"{KAGGLE_INPUT}/") for x in (v if isinstance(v, list) else [v]))]
    if not names:
        return ""
    return "\n".join([
        "# roadtop (added by `pipeline.py kaggle push`): inputs are mounted at /kaggle/input/<slug>, or in",
        "# newer sessions at /kaggle/input/<kind>/<owner>/<slug>: point the parameters at wherever they are.",
        "from roadtop.paths import mounted",
        *(f"{k} = [mounted(p) for p in {k}]" if isinstance(params[k], list) else f"{k} = mounted({k})"
          for k in names),
    ]) + "\n"


def kernel_notebook(notebook, params: dict):
    """`notebook` with `params` injected (papermill), then a cell that finds the inputs where Kaggle mounted
    them; the bootstrap cell first; outputs cleared."""
    nb = parameterize_notebook(load_notebook_node(str(notebook)), params, kernel_name="python3",
                               language="python")
    fix = _inputs_source(params)
    if fix:
        at = next(i for i, c in enumerate(nb.cells) if "injected-parameters" in c.metadata.get("tags", []))
        nb.cells.insert(at + 1, nbformat.v4.new_code_cell(fix, metadata={"tags": ["roadtop-inputs"]}))
    lessons = _lessons(nb)
    boot = nbformat.v4.new_code_cell(bootstrap_source(_modules(nb, Path(__file__).parent.parent, lessons),
                                                      lessons=lessons))
    boot.metadata.update({"tags": ["roadtop-bootstrap"], "_kg_hide-input": True})  # Kaggle folds the code
    note = nbformat.v4.new_markdown_cell(BOOTSTRAP_NOTE, metadata={"tags": ["roadtop-bootstrap-note"]})
    nb.cells[:0] = [note, boot]
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if tags and tags[0] in ("roadtop-bootstrap-note", "roadtop-bootstrap", "injected-parameters",
                                "roadtop-inputs"):
            cell.id = tags[0]  # fixed ids: the same run gives the same text (and hash)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        for key in ("execution", "papermill", *(() if tags else ("tags",))):
            cell.metadata.pop(key, None)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata.setdefault("language_info", {"name": "python"})
    nbformat.validate(nb)
    return nb


def kernel_metadata(jobs, st: KaggleSettings, ref: str, slug: str, kernel_sources: list) -> dict:
    """kernel-metadata.json for a kernel running `jobs` (a job or a pack's list), with the keys `kaggle kernels
    push` reads."""
    jobs = jobs if isinstance(jobs, list) else [jobs]
    datasets = list(st.datasets)
    if any(j.params.get("pretrained") for j in jobs) and st.weights_dataset:
        datasets.insert(0, st.weights_dataset)
    gpu = st.enable_gpu and any(stage(j.stage).gpu for j in jobs)
    meta = {
        "id": ref, "title": kernel_title(slug), "code_file": f"{slug}.ipynb", "language": "python",
        "kernel_type": "notebook", "is_private": st.is_private, "enable_gpu": gpu, "enable_tpu": False,
        "enable_internet": internet_on(st)[0], "dataset_sources": datasets,
        "competition_sources": [st.competition] if any(stage(j.stage).paddy for j in jobs) else [],
        "kernel_sources": kernel_sources, "model_sources": [],
    }
    if st.accelerator and gpu:
        meta["machine_shape"] = st.accelerator
    return meta


def _packed(j, st) -> bool:
    """True for a job that goes in a GPU pack: a GPU training run (not predict)."""
    return st.enable_gpu and stage(j.stage).gpu and stage(j.stage).trains


def _groups(plan, jobs: list, st, seconds: dict, log=print) -> list:
    """(kernel name, jobs) in push order: each GPU run in a pack of up to kaggle.gpus_per_session runs (probe
    estimates `seconds`: longest with longest), named pack1, pack2...; every other job a kernel of its own.
    The packs are made over every GPU run the plan sends, whatever `jobs` picks, so a pack keeps its name and its
    runs when one of them is pushed again: the picked run's pack-mates run again with it (said so)."""
    ordered = _ordered(jobs)
    gpu = [j for j in ordered if _packed(j, st)]
    if st.gpus_per_session <= 1 or not gpu:
        return [(j.name, [j]) for j in ordered]
    every = list({j.name: j for j in [*_ordered([j for j in plan.jobs if j.stage in st.stages]), *gpu]
                  if _packed(j, st)}.values())
    packs, _ = pack_runs({j.name: seconds.get(j.name) for j in every}, st.gpus_per_session, st.session_hours * 3600)
    by, picked = {j.name: j for j in every}, {j.name for j in gpu}
    out = []
    for i, p in enumerate(packs):
        if picked & set(p):
            mates = [n for n in p if n not in picked]
            if mates:
                log(f"pack{i + 1}: {', '.join(mates)} goes again with {', '.join(n for n in p if n in picked)}, "
                    "its pack-mate (one kernel trains both)")
            out.append((f"pack{i + 1}", [by[n] for n in p]))
    return out + [(j.name, [j]) for j in ordered if j.name not in by]


def build_kernels(plan, jobs: list, username: str, st=None, record=None, write=True, log=print,
                  seconds=None) -> list:
    """Kernel folders (notebook + kernel-metadata.json) under outputs/ for `jobs`, needed runs first; GPU runs
    in packs of kaggle.gpus_per_session (`seconds`: the probe's estimates, run -> seconds)."""
    st = st or settings(plan)
    record = record if record is not None else load_record(plan)
    groups = _groups(plan, jobs, st, seconds or {}, log)
    slug_of = {}  # run -> slug of the kernel that carries it
    for n, rec in record.get("kernels", {}).items():
        for run in rec.get("runs") or [n]:
            slug_of[run] = rec.get("slug") or kernel_slug(st.slug_prefix, n)
    for name, group in groups:
        for j in group:
            slug_of[j.name] = kernel_slug(st.slug_prefix, name)
    slugs = {name: kernel_slug(st.slug_prefix, name) for name, _ in groups}
    clash = sorted(n for n, sl in slugs.items() if list(slugs.values()).count(sl) > 1)
    if clash:
        raise RoadtopError(f"runs {clash} give the same kernel slug {slugs[clash[0]]}: rename one of them")
    by_name = {j.name: j for j in plan.jobs}
    kernels, missing = [], {}
    for name, group in groups:
        inside = {j.name for j in group}
        for job in group:
            for n in job.needs:
                if n not in slug_of:
                    missing.setdefault(n, []).append(job.name)
        needs = list(dict.fromkeys(n for j in group for n in j.needs if n in slug_of and n not in inside))
        slug = slugs[name]
        ref = f"{username}/{slug}"
        sources = list(dict.fromkeys(f"{username}/{slug_of[n]}" for n in needs))
        meta = kernel_metadata(group, st, ref, slug, sources)
        texts = [nbformat.writes(kernel_notebook(j.notebook, kaggle_params(j, slug_of, st, by_name))) for j in group]
        text = texts[0] if len(group) == 1 and name == group[0].name else nbformat.writes(
            pack_notebook(group, texts, [kaggle_out(j).name for j in group], st.gpus_per_session))
        content_hash = hashlib.sha256((text + json.dumps(meta, sort_keys=True)).encode()).hexdigest()[:16]
        folder = kaggle_dir(plan) / slug
        if write:
            with atomic_write(folder / meta["code_file"]) as f:
                f.write(text)
            with atomic_write(folder / "kernel-metadata.json") as f:
                json.dump(meta, f, indent=2)
        kernels.append(Kernel(group, slug, ref, folder, meta, needs, content_hash, name))
    for n, who in missing.items():
        log(f"{', '.join(who)}: need {n}, which is not sent to Kaggle; their kernels run without it")
    return kernels
