"""Kaggle as the distributed engine: kernel folders from a plan, push, poll, collect, submit, weights dataset.

Every run becomes its own Kaggle kernel with internet off: the notebook with its parameters injected by
papermill, a first cell that writes the `roadtop` package inline (no internet, no extra Kaggle entity
needed), and a `kernel-metadata.json`. Kernels that need other runs (the ensemble) list them in
`kernel_sources` and read their saved predictions from `/kaggle/input/<slug>/`. Every call goes through the
`kaggle` package's `KaggleApi` (the calls of the `kaggle` CLI). Credentials stay where the kaggle client
finds them: nothing here writes them.
"""

import argparse
import fnmatch
import hashlib
import io
import json
import os
import re
import shutil
import sys
import time
from contextlib import redirect_stdout
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

from .errors import RoadtopError
from .paths import KAGGLE_INPUT, KAGGLE_WORKING, atomic_write, default_out

__all__ = [
    "COMPETITION", "TERMINAL", "WEIGHT_EXTS", "MARKER", "KaggleSettings", "KaggleCallError", "Kernel",
    "settings", "slugify", "kernel_slug", "kernel_title", "kaggle_dir", "select_jobs", "kaggle_out",
    "kaggle_params", "bootstrap_source", "kernel_notebook", "kernel_metadata", "build_kernels",
    "load_state", "save_state", "connect", "api_username", "call_kaggle", "push", "refresh", "status_table",
    "status", "collect", "submit", "weight_name", "find_weights", "local_pretrained_cfg", "package_weights",
    "add_subcommands",
]

COMPETITION = "paddy-disease-classification"
TERMINAL = ("COMPLETE", "ERROR", "CANCEL_REQUESTED", "CANCEL_ACKNOWLEDGED")  # TERMINAL[1:]: ended badly
WEIGHT_EXTS = (".safetensors", ".pth", ".pt", ".bin")  # in order of preference
MARKER = "kaggle-kernel.json"  # written into a run's out_dir when `collect` installs a kernel's output there
_HF_STEMS = ("model", "pytorch_model", "open_clip_pytorch_model")
_GPU_STAGES = ("probe", "train", "multitarget")


# ---- settings ----------------------------------------------------------------------------------------------
@dataclass
class KaggleSettings:
    """The plan's `kaggle:` section with its defaults; `settings()` refuses unknown keys and wrong types."""

    competition: str = COMPETITION  # competition slug: every Paddy kernel's input, and the submit target
    code_competition: bool = False  # submit the ensemble kernel's version, else its submission.csv
    username: str = ""  # kernel owner; empty: the user the credentials belong to
    slug_prefix: str = ""  # kernel slugs are <prefix>-<run>; empty: roadtop-<plan name>
    stages: list = field(default_factory=lambda: ["train", "multitarget", "ensemble"])  # what `push` sends without --runs
    enable_gpu: bool = True  # GPU for probe/train/multitarget kernels (ensemble and collab run on CPU)
    accelerator: str = ""  # Kaggle machine shape, e.g. NvidiaTeslaT4; empty: Kaggle's default GPU
    is_private: bool = True  # kernels are private
    weights_dataset: str = ""  # owner/slug of the pretrained weights dataset (pipeline.py kaggle weights)
    datasets: list = field(default_factory=list)  # extra owner/slug datasets attached to every kernel
    timeout: int = 0  # session timeout in seconds; 0: Kaggle's own limit
    poll_interval: float = 60.0  # seconds between status polls
    retries: int = 5  # retries after a 429/5xx/no answer
    backoff: float = 2.0  # first retry delay in seconds, doubling each time (a Retry-After header wins)


def settings(plan) -> KaggleSettings:
    """KaggleSettings from `plan.kaggle`; an unknown key or a wrong type is a RoadtopError naming the plan."""
    raw = dict(getattr(plan, "kaggle", None) or {})
    known, defaults = [f.name for f in fields(KaggleSettings)], KaggleSettings()
    where = f"{getattr(plan, 'source', 'plan')}: kaggle"
    for k, v in raw.items():
        if k not in known:
            raise RoadtopError(f"{where}.{k} is unknown: use one of {', '.join(known)}")
        want = type(getattr(defaults, k))
        ok = isinstance(v, want) or (want is float and isinstance(v, int)) or (want is str and v is None)
        if not ok or (want is not bool and isinstance(v, bool)):
            raise RoadtopError(f"{where}.{k}={v!r} should be {want.__name__}: fix it in the plan")
    st = KaggleSettings(**{k: ("" if v is None else v) for k, v in raw.items()})
    st.slug_prefix = st.slug_prefix or slugify(f"roadtop-{getattr(plan, 'name', 'plan')}")
    for ds in [st.weights_dataset, *st.datasets]:
        if ds and not re.fullmatch(r"[\w.-]+/[\w.-]+", ds):
            raise RoadtopError(f"{where}: dataset '{ds}' should be owner/slug, as in its URL")
    return st


class KaggleCallError(RoadtopError):
    """A Kaggle API call that failed for good; `.code` is the HTTP status (None: no answer, or a refusal)."""

    def __init__(self, message, code=None):
        """One-line message naming the run; `code` the HTTP status."""
        super().__init__(message)
        self.code = code


# ---- names -------------------------------------------------------------------------------------------------
def slugify(text: str) -> str:
    """Kaggle-style slug: lowercase ASCII letters, digits and single hyphens."""
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")


def kernel_slug(prefix: str, run: str) -> str:
    """Slug of run `run`'s kernel: <prefix>-<run>, 5-50 characters (a long one ends in a short hash)."""
    s = slugify(f"{prefix}-{run}")
    if len(s) > 50:
        s = s[:43].rstrip("-") + "-" + hashlib.sha1(s.encode()).hexdigest()[:6]
    return s if len(s) >= 5 else f"{s}-kernel"


def kernel_title(slug: str) -> str:
    """A title that Kaggle turns back into exactly `slug` (Kaggle derives a kernel's URL from its title)."""
    return slug.replace("-", " ")


def kaggle_dir(plan) -> Path:
    """Where the kernel folders and the push record (kernels.json) of `plan` live: <out_dir>/kaggle/<name>."""
    return Path(plan.out_dir) / "kaggle" / slugify(plan.name)


# ---- kernel folders ----------------------------------------------------------------------------------------
@dataclass
class Kernel:
    """One run as a Kaggle kernel: job, slug, owner/slug ref, folder, metadata, runs it reads, hash."""

    job: object
    slug: str
    ref: str
    folder: Path
    meta: dict
    needs: list
    sha: str

    @property
    def name(self):
        """The run name (e.g. train/convnext)."""
        return self.job.name


def select_jobs(plan, runs=None, st: KaggleSettings | None = None) -> list:
    """The jobs to send: those matching `runs` (names or globs like 'train/*'), else the settings' stages."""
    st = st or settings(plan)
    names = [j.name for j in plan.jobs]
    if runs:
        picked = set()
        for pat in runs:
            hit = [n for n in names if fnmatch.fnmatchcase(n, pat)]
            if not hit:
                raise RoadtopError(f"--runs {pat}: no such run in {plan.source} (runs: {', '.join(names)})")
            picked.update(hit)
        return [j for j in plan.jobs if j.name in picked]
    out = [j for j in plan.jobs if j.stage in st.stages]
    if not out:
        raise RoadtopError(f"{plan.source}: no run of the stages {st.stages} to push: name runs with --runs")
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
    """Where `job` writes on Kaggle: /kaggle/working for the ensemble (Kaggle takes submission.csv from
    there), else /kaggle/working/<its local out_dir's name>, so saved runs keep their names."""
    return KAGGLE_WORKING if job.stage == "ensemble" else KAGGLE_WORKING / Path(job.out_dir).name


def kaggle_params(job, slug_of: dict, st: KaggleSettings, jobs: dict | None = None) -> dict:
    """`job.params` for a Kaggle kernel: competition data, out_dir under /kaggle/working, run_dirs and
    weights_dir at the attached kernels/dataset. `slug_of`: run -> slug of the runs sent to Kaggle;
    `jobs`: run -> job."""
    jobs = jobs or {job.name: job}
    p = dict(job.params)
    if "data_path" in p and not str(p["data_path"]).startswith("/kaggle/"):
        p["data_path"] = "" if job.stage == "collab" else str(KAGGLE_INPUT / st.competition)
    if "out_dir" in p:
        p["out_dir"] = str(kaggle_out(job))
    if "run_dirs" in p:
        runs = _source_runs(job, slug_of, jobs)
        p["run_dirs"] = [str(KAGGLE_INPUT / slug_of[n] / kaggle_out(jobs[n]).relative_to(KAGGLE_WORKING))
                         for n in runs]
        if not runs:
            raise RoadtopError(f"{job.name}: none of the runs it reads is sent to Kaggle: push them with it "
                               "(e.g. --runs 'train/*' ensemble)")
    if p.get("pretrained"):
        if "weights_dir" not in p:
            raise RoadtopError(f"{job.name}: {Path(job.notebook).name} has no weights_dir parameter, and "
                               "a Kaggle kernel has no internet to fetch weights: set pretrained: false")
        if not st.weights_dataset:
            raise RoadtopError(f"{job.name}: pretrained=True needs local weights on an internet-off kernel: "
                               "run `pipeline.py kaggle weights FOLDER`, then set kaggle.weights_dataset")
        p["weights_dir"] = str(KAGGLE_INPUT / st.weights_dataset.split("/")[1])
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
        return [n for n in needs if jobs[n].stage in ("train", "multitarget")] or needs
    by_dir = {Path(j.out_dir).resolve(): n for n, j in jobs.items()}
    runs = []
    for d in wanted:
        n = by_dir.get(Path(d).resolve())
        if n not in slug_of:
            raise RoadtopError(f"{job.name}: run_dirs entry {d} is not the out_dir of a run sent to Kaggle: "
                               "add that run to --runs, or leave run_dirs empty")
        runs.append(n)
    return runs


def _imports(code: str) -> set:
    """roadtop modules that Python source `code` imports (absolute, or relative inside roadtop)."""
    import ast

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


def _modules(nb, pkg_dir: Path) -> list:
    """File names of the roadtop modules the notebook's code needs, following imports between modules."""
    try:
        todo = set().union(*(_imports(c.source) for c in nb.cells if c.cell_type == "code"))
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


def bootstrap_source(modules=None, pkg_dir=None) -> str:
    """First cell of every kernel: writes roadtop's `modules` (file names; default all) to a temp folder
    that goes first on sys.path, so `import roadtop` works on an internet-off kernel."""
    pkg_dir = Path(pkg_dir or Path(__file__).parent)
    names = modules or sorted(p.name for p in pkg_dir.glob("*.py"))
    body = "".join(f"    {n!r}: {(pkg_dir / n).read_text(encoding='utf-8')!r},\n" for n in names)
    return (
        "# roadtop bootstrap (added by `pipeline.py kaggle push`): this kernel runs with internet off, so\n"
        f"# the roadtop modules it uses travel inline ({', '.join(names)});\n"
        "# they are written to a temp folder put first on sys.path.\n"
        "import os, sys, tempfile\n"
        "_roadtop_src = {\n" + body + "}\n"
        "_roadtop_dir = os.path.join(tempfile.gettempdir(), 'roadtop-src')\n"
        "os.makedirs(os.path.join(_roadtop_dir, 'roadtop'), exist_ok=True)\n"
        "for _name, _text in _roadtop_src.items():\n"
        "    with open(os.path.join(_roadtop_dir, 'roadtop', _name), 'w', encoding='utf-8') as _f:\n"
        "        _f.write(_text)\n"
        "sys.path.insert(0, _roadtop_dir)\n"
        "del _roadtop_src, _name, _text, _f\n"
    )


def _inputs_source(params: dict) -> str:
    """A cell that points /kaggle/input/<slug>... parameters at where this session mounted them: Kaggle
    mounts an input at /kaggle/input/<slug>, or in newer sessions under /kaggle/input/<kind>/<owner>/."""
    names = [k for k, v in params.items()
             if any(str(x).startswith(f"{KAGGLE_INPUT}/") for x in (v if isinstance(v, list) else [v]))]
    if not names:
        return ""
    fix = [f"{k} = [_roadtop_input(p) for p in {k}]" if isinstance(params[k], list) else
           f"{k} = _roadtop_input({k})" for k in names]
    return "\n".join([
        "# roadtop (added by `pipeline.py kaggle push`): inputs are mounted at /kaggle/input/<slug>, or in",
        "# newer sessions at /kaggle/input/<kind>/<owner>/<slug>: point the parameters at wherever they are.",
        "import glob as _glob, os as _os",
        "def _roadtop_input(p, root='/kaggle/input/'):",
        "    if _os.path.exists(p) or not p.startswith(root):",
        "        return p",
        "    rest = p[len(root):]",
        "    hits = sorted(_glob.glob(root + '*/' + rest) + _glob.glob(root + '*/*/' + rest))",
        "    return hits[0] if hits else p",
        *fix,
    ]) + "\n"


def kernel_notebook(notebook, params: dict):
    """`notebook` with `params` injected (papermill), then a cell that finds the inputs where Kaggle mounted
    them; the bootstrap cell first; outputs cleared."""
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = parameterize_notebook(load_notebook_node(str(notebook)), params, kernel_name="python3",
                               language="python")
    fix = _inputs_source(params)
    if fix:
        at = [i for i, c in enumerate(nb.cells) if "injected-parameters" in c.metadata.get("tags", [])][0]
        nb.cells.insert(at + 1, nbformat.v4.new_code_cell(fix, metadata={"tags": ["roadtop-inputs"]}))
    boot = nbformat.v4.new_code_cell(bootstrap_source(_modules(nb, Path(__file__).parent)))
    boot.metadata["tags"] = ["roadtop-bootstrap"]
    nb.cells.insert(0, boot)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if tags and tags[0] in ("roadtop-bootstrap", "injected-parameters", "roadtop-inputs"):
            cell.id = tags[0]  # fixed ids: the same run gives the same text (and hash)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        for key in ("execution", "papermill", *(() if tags else ("tags",))):
            cell.metadata.pop(key, None)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata.setdefault("language_info", {"name": "python"})
    nbformat.validate(nb)
    return nb


def kernel_metadata(job, st: KaggleSettings, ref: str, slug: str, kernel_sources: list) -> dict:
    """kernel-metadata.json for `job`, with the keys `kaggle kernels push` reads."""
    datasets = list(st.datasets)
    if job.params.get("pretrained") and st.weights_dataset:
        datasets.insert(0, st.weights_dataset)
    gpu = st.enable_gpu and job.stage in _GPU_STAGES
    meta = {
        "id": ref, "title": kernel_title(slug), "code_file": f"{slug}.ipynb", "language": "python",
        "kernel_type": "notebook", "is_private": st.is_private, "enable_gpu": gpu, "enable_tpu": False,
        "enable_internet": False, "dataset_sources": datasets,
        "competition_sources": [] if job.stage == "collab" else [st.competition],
        "kernel_sources": kernel_sources, "model_sources": [],
    }
    if st.accelerator and gpu:
        meta["machine_shape"] = st.accelerator
    return meta


def build_kernels(plan, jobs: list, username: str, st=None, state=None, write=True, log=print) -> list:
    """Kernel folders (notebook + kernel-metadata.json) under outputs/ for `jobs`, needed runs first."""
    import nbformat

    st = st or settings(plan)
    state = state if state is not None else load_state(plan)
    on_kaggle = {j.name for j in jobs} | set(state.get("kernels", {}))
    slug_of = {j.name: kernel_slug(st.slug_prefix, j.name) for j in plan.jobs if j.name in on_kaggle}
    clash = sorted(n for n, s in slug_of.items() if list(slug_of.values()).count(s) > 1)
    if clash:
        raise RoadtopError(f"runs {clash} give the same kernel slug {slug_of[clash[0]]}: rename one of them")
    by_name = {j.name: j for j in plan.jobs}
    kernels, missing = [], {}
    for job in _ordered(jobs):
        for n in job.needs:
            if n not in slug_of:
                missing.setdefault(n, []).append(job.name)
        needs = [n for n in job.needs if n in slug_of]
        slug = slug_of[job.name]
        ref = f"{username}/{slug}"
        meta = kernel_metadata(job, st, ref, slug, [f"{username}/{slug_of[n]}" for n in needs])
        text = nbformat.writes(kernel_notebook(job.notebook, kaggle_params(job, slug_of, st, by_name)))
        sha = hashlib.sha256((text + json.dumps(meta, sort_keys=True)).encode()).hexdigest()[:16]
        folder = kaggle_dir(plan) / slug
        if write:
            with atomic_write(folder / meta["code_file"]) as f:
                f.write(text)
            with atomic_write(folder / "kernel-metadata.json") as f:
                json.dump(meta, f, indent=2)
        kernels.append(Kernel(job, slug, ref, folder, meta, needs, sha))
    for n, who in missing.items():
        log(f"{', '.join(who)}: need {n}, which is not sent to Kaggle; their kernels run without it")
    return kernels


# ---- push record -------------------------------------------------------------------------------------------
def load_state(plan) -> dict:
    """The push record of `plan` (kernels.json): run -> ref, version, status, ...; empty before any push."""
    p = kaggle_dir(plan) / "kernels.json"
    if not p.exists():
        return {"kernels": {}, "submissions": []}
    try:
        return json.loads(p.read_text())
    except ValueError:
        raise RoadtopError(f"{p} is not valid JSON: fix or delete it (the kernels on Kaggle stay)") from None


def save_state(plan, state: dict):
    """Write the push record atomically, after every change, so a later error loses nothing."""
    with atomic_write(kaggle_dir(plan) / "kernels.json") as f:
        json.dump(state, f, indent=2, sort_keys=True)


def _now() -> str:
    """UTC time, ISO format, seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---- the kaggle client -------------------------------------------------------------------------------------
def connect():
    """An authenticated `KaggleApi`: KAGGLE_API_TOKEN, KAGGLE_USERNAME/KAGGLE_KEY or ~/.kaggle/kaggle.json."""
    import requests
    from kaggle.api.kaggle_api_extended import KaggleApi

    api = KaggleApi()
    cfg_dir = os.environ.get("KAGGLE_CONFIG_DIR") or os.path.expanduser("~/.kaggle")
    if not os.environ.get("KAGGLE_CONFIG_DIR") and not os.path.isdir(cfg_dir):
        cfg_dir = os.path.join(os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"), "kaggle")
    api.config_dir, api.config = cfg_dir, os.path.join(cfg_dir, "kaggle.json")  # the client's rule, now
    buf = io.StringIO()
    try:
        with redirect_stdout(buf):
            api.authenticate()
    except SystemExit:
        raise RoadtopError("no Kaggle credentials found: set KAGGLE_USERNAME and KAGGLE_KEY, put kaggle.json "
                           "in ~/.kaggle/ (chmod 600), or set KAGGLE_API_TOKEN (kaggle.com > Settings > API)"
                           ) from None
    except requests.RequestException as e:
        code, msg = _http_error(e)
        raise KaggleCallError(f"kaggle: checking the credentials failed ({code or 'no answer'}: {msg})",
                              code) from None
    if buf.getvalue().strip():
        print(buf.getvalue().strip(), file=sys.stderr)  # e.g. the client's "key readable by others" warning
    return api


def api_username(api) -> str:
    """The user the credentials belong to."""
    return (getattr(api, "config_values", None) or {}).get("username", "")


def _http_error(e):
    """(HTTP status or None, server message) of an exception raised by the kaggle client."""
    import requests

    err = e
    for _ in range(5):  # the client re-raises some HTTP errors as ValueError: look behind them
        if err is None or isinstance(err, requests.HTTPError):
            break
        err = err.__context__
    if isinstance(err, requests.HTTPError) and err.response is not None:
        try:
            msg = err.response.json().get("message") or err.response.reason
        except ValueError:
            msg = err.response.reason or str(err)
        return err.response.status_code, msg
    return None, (str(e).splitlines() or [type(e).__name__])[0]


def _transient(e) -> bool:
    """True for errors a retry can cure: no connection, timeouts."""
    import requests
    import urllib3

    return isinstance(e, (requests.ConnectionError, requests.Timeout, urllib3.exceptions.HTTPError,
                          ConnectionError))


def _retry_after(e):
    """Seconds asked for by the Retry-After header of the HTTP error behind `e`, or None."""
    try:
        return max(0.0, float(e.response.headers.get("Retry-After")))
    except (AttributeError, TypeError, ValueError):
        return None


def call_kaggle(fn, *args, run: str, what: str, st=None, hint="", sleep=time.sleep, log=print, **kw):
    """`fn(*args, **kw)`, retried with exponential backoff (or Retry-After) on 429/5xx/no answer; any other
    failure is a KaggleCallError whose one line names the run, what failed and what to do (`hint`, a str or
    {403: ..., 404: ...})."""
    st = st or KaggleSettings()
    for attempt in range(st.retries + 1):
        try:
            return fn(*args, **kw)
        except Exception as e:
            code, msg = _http_error(e)
            if code is None and not _transient(e):
                if isinstance(e, (ValueError, OSError)):  # the client's own checks, e.g. a bad metadata file
                    raise KaggleCallError(f"{run}: {what} failed: {msg}") from None
                raise
            if (code is None or code == 429 or code >= 500) and attempt < st.retries:
                delay = _retry_after(e)
                delay = min(300.0, st.backoff * 2**attempt if delay is None else delay)
                log(f"{run}: Kaggle answered {code or 'nothing'} to {what}; "
                    f"retry {attempt + 1}/{st.retries} in {delay:.0f} s")
                sleep(delay)
                continue
            raise KaggleCallError(_explain(code, msg, run, what, hint, st.retries + 1), code) from None
    raise AssertionError("unreachable")


def _explain(code, msg, run, what, hint, tries) -> str:
    """One line for a failed Kaggle call."""
    head = f"{run}: {what} failed"
    if isinstance(hint, dict):
        hint = hint.get(code, "")
    if code == 401:
        return (f"{head}: Kaggle rejected the credentials (401 {msg}): check KAGGLE_USERNAME/KAGGLE_KEY, "
                "~/.kaggle/kaggle.json or KAGGLE_API_TOKEN")
    if code == 403:
        return f"{head}: Kaggle refused access (403 {msg}): {hint or 'check that this account may use it'}"
    if code == 404:
        return f"{head}: Kaggle found nothing (404 {msg}): {hint or 'check the name'}"
    if code is None or code == 429 or code >= 500:
        return (f"{head}: Kaggle still answered {code or 'nothing'} ({msg}) after {tries} tries: "
                "rerun the same command later (local files are unchanged)")
    return f"{head}: Kaggle answered {code} ({msg})"


# ---- push --------------------------------------------------------------------------------------------------
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


# ---- status ------------------------------------------------------------------------------------------------
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


# ---- collect -----------------------------------------------------------------------------------------------
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


# ---- submit ------------------------------------------------------------------------------------------------
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


# ---- pretrained weights ------------------------------------------------------------------------------------
def weight_name(p) -> str:
    """The model a weight file is for: <name>.<ext>, <name>/model.safetensors, models--timm--<name>/..."""
    p = Path(p)
    for part in reversed(p.parts[:-1]):
        if part.startswith("models--"):
            return part.split("--")[-1]
    stem = p.name[: -len(p.suffix)] if p.suffix else p.name
    return p.parent.name if stem in _HF_STEMS else stem


def _candidates(arch: str) -> list:
    """Names `arch`'s weights may be saved under: itself, timm's current name, its pretrained tag."""
    names = [arch]
    try:
        import timm
        from timm.models._registry import get_deprecated_models

        new = get_deprecated_models().get(arch, arch)
        cfg = timm.get_pretrained_cfg(new)
        names += [new, cfg.hf_hub_id.split("/")[-1]] if cfg is not None and cfg.hf_hub_id else [new]
    except (ImportError, RuntimeError, KeyError, AttributeError):
        pass  # no timm, or an arch timm does not know: its plain name only
    return list(dict.fromkeys(names))


def find_weights(arch: str, weights_dir) -> Path:
    """The weight file for timm `arch` in `weights_dir`, searched recursively, .safetensors first."""
    d = Path(weights_dir)
    names = _candidates(arch)
    if not d.is_dir():
        raise RoadtopError(f"weights_dir {d} is not a folder: on Kaggle attach the weights dataset "
                           "(kaggle.weights_dataset); elsewhere point weights_dir at the weight files")
    files = sorted((p for p in d.rglob("*") if p.suffix in WEIGHT_EXTS and p.is_file()),
                   key=lambda p: (WEIGHT_EXTS.index(p.suffix), len(p.parts), str(p)))
    for name in names:
        for p in files:
            if weight_name(p) == name:
                return p
    looked = " or ".join(f"{n}.safetensors" for n in names)
    raise RoadtopError(f"no weights for {arch} in {d} (looked for {looked}): save them there, or package a "
                       "folder with `pipeline.py kaggle weights FOLDER`")


def local_pretrained_cfg(arch: str, weights_dir) -> dict:
    """timm's `pretrained_cfg_overlay` loading `arch`'s pretrained weights from a local file (internet off):
    `timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=local_pretrained_cfg(arch, d))`."""
    return {"file": str(find_weights(arch, weights_dir))}


def package_weights(src, dataset: str, archs=None, upload: bool = True, api=None, st=None, dest=None,
                    log=print, sleep=time.sleep) -> Path:
    """Stage the weights of `archs` found under `src` as <arch>.<ext> (all weight files when no archs; hard
    links) + dataset-metadata.json in `dest` (default outputs/kaggle/weights/<slug>), then create (or
    version) the Kaggle dataset `dataset` (owner/slug) from that folder."""
    src, st = Path(src).expanduser(), st or KaggleSettings()
    if not src.is_dir():
        raise RoadtopError(f"{src} is not a folder of weight files")
    if not re.fullmatch(r"[\w.-]+/[\w-]{6,50}", dataset or ""):
        raise RoadtopError(f"dataset '{dataset}' should be owner/slug, the slug 6-50 letters, digits or '-'")
    picked = {a: find_weights(a, src) for a in archs or []}  # named as the plan names the arch
    for p in [] if archs else sorted(src.rglob("*"), key=lambda p: (p.suffix not in WEIGHT_EXTS or
                                                                     WEIGHT_EXTS.index(p.suffix), str(p))):
        if p.suffix in WEIGHT_EXTS and p.is_file():
            picked.setdefault(weight_name(p), p)  # one file per model, .safetensors preferred
    if not picked:
        raise RoadtopError(f"{src} holds no weight files ({', '.join(WEIGHT_EXTS)}): save each model's "
                           "state_dict there as <arch>.safetensors (README: Kaggle)")
    slug = dataset.split("/")[1]
    folder = Path(dest) if dest else default_out("kaggle", "weights", slug)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name, p in picked.items():
        try:
            os.link(p.resolve(), folder / f"{name}{p.suffix}")
        except OSError:
            shutil.copy2(p.resolve(), folder / f"{name}{p.suffix}")
    files = sorted(t.name for t in folder.iterdir())
    meta = {"title": kernel_title(slug), "id": dataset, "licenses": [{"name": "other"}],
            "description": "Pretrained timm weights for roadtop's internet-off kernels; each model card "
                           "gives its license. Files: " + ", ".join(files)}
    with atomic_write(folder / "dataset-metadata.json") as f:
        json.dump(meta, f, indent=2)
    log(f"weights: {len(files)} files staged in {folder}: {', '.join(files)}")
    if not upload:
        return folder
    api = api or connect()
    kw = {"run": "weights", "st": st, "log": log, "sleep": sleep}
    try:
        call_kaggle(api.dataset_status, dataset, what=f"status of dataset {dataset}", **kw)
        exists = True
    except KaggleCallError as e:
        if e.code != 404:
            raise
        exists = False
    if exists:
        resp = call_kaggle(api.dataset_create_version, str(folder), "roadtop weights", quiet=True,
                           what=f"new version of dataset {dataset}", **kw)
    else:
        resp = call_kaggle(api.dataset_create_new, str(folder), public=False, quiet=True,
                           what=f"creation of dataset {dataset}", **kw)
    if getattr(resp, "error", None):
        raise KaggleCallError(f"weights: Kaggle refused dataset {dataset}: {resp.error}")
    log(f"weights: dataset {dataset} {'updated' if exists else 'created'} ({getattr(resp, 'url', '')}); "
        f"set kaggle.weights_dataset: {dataset} in the plan")
    return folder


# ---- command line ------------------------------------------------------------------------------------------
def _plan(args):
    """The plan named by --params (the default plan when none), with --out applied."""
    from .plan import load_plan

    return load_plan(getattr(args, "params", None), getattr(args, "out", None))


def _cmd_push(args) -> int:
    """`kaggle push`."""
    return push(_plan(args), args.runs, force=args.force, wait=args.wait, dry_run=args.dry_run)


def _cmd_status(args) -> int:
    """`kaggle status`."""
    return status(_plan(args), args.runs, once=args.once, interval=args.interval)


def _cmd_collect(args) -> int:
    """`kaggle collect`."""
    return collect(_plan(args), args.runs, replace=args.replace)


def _cmd_submit(args) -> int:
    """`kaggle submit`."""
    return submit(_plan(args), args.message)


def _cmd_weights(args) -> int:
    """`kaggle weights`: the weights of the plan's pretrained archs (or all found) as a Kaggle dataset."""
    plan = _plan(args)
    dataset = args.dataset or settings(plan).weights_dataset
    if not dataset:
        raise RoadtopError("name the dataset: --dataset owner/slug (or kaggle.weights_dataset in the plan)")
    archs = sorted({j.params["arch"] for j in plan.jobs if j.params.get("pretrained") and "arch" in j.params})
    dest = Path(plan.out_dir) / "kaggle" / "weights" / dataset.split("/")[-1]
    package_weights(args.folder, dataset, archs, upload=not args.no_upload, st=settings(plan), dest=dest)
    return 0


def add_subcommands(parser):
    """Add push/status/collect/submit/weights under `parser` (pipeline.py's `kaggle`), each with func(args)
    -> exit code. Failures raise RoadtopError (one line), which pipeline.py prints."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", default=argparse.SUPPRESS, help="plan YAML (default: params/demo.yaml)")
    common.add_argument("--out", default=argparse.SUPPRESS, help="output folder (default: the plan's)")
    runs = argparse.ArgumentParser(add_help=False)
    runs.add_argument("--runs", nargs="+", metavar="NAME", help="run names or globs, e.g. 'train/*' ensemble")
    sub = parser.add_subparsers(dest="kaggle_cmd", metavar="{push,status,collect,submit,weights}",
                                required=True)

    p = sub.add_parser("push", parents=[common, runs], help="push each run as a Kaggle kernel (internet off)")
    p.add_argument("--force", action="store_true", help="push a new version even if nothing changed")
    p.add_argument("--wait", action="store_true", help="poll; push runs that need others once those COMPLETE")
    p.add_argument("--dry-run", action="store_true", help="only build the kernel folders under outputs/")
    p.set_defaults(func=_cmd_push)

    p = sub.add_parser("status", parents=[common, runs], help="poll the pushed kernels, live table")
    p.add_argument("--once", action="store_true", help="one poll, then exit")
    p.add_argument("--interval", type=float, help="seconds between polls (default: kaggle.poll_interval)")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("collect", parents=[common, runs], help="download kernel outputs into outputs/")
    p.add_argument("--replace", action="store_true", help="install over a run's local results")
    p.set_defaults(func=_cmd_collect)

    p = sub.add_parser("submit", parents=[common], help="submit the ensemble (code or file competition)")
    p.add_argument("--message", "-m", help="submission description")
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser("weights", parents=[common], help="the plan's pretrained weights as a Kaggle dataset")
    p.add_argument("folder", help="folder of <arch>.safetensors files (or a Hugging Face cache folder)")
    p.add_argument("--dataset", help="owner/slug (default: kaggle.weights_dataset of the plan)")
    p.add_argument("--no-upload", action="store_true", help="only stage the dataset folder under outputs/")
    p.set_defaults(func=_cmd_weights)
    return parser
