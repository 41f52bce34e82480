"""Shared fixtures: a tiny generated Paddy dataset, tiny run plans that train in seconds on CPU, and the demo run."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "params" / "demo.yaml"


def make_demo_args() -> list:
    """The options `make demo` gives `pipeline.py run` after its --params (e.g. ['--jobs', '2']), read from the
    Makefile, so the demo the tests check is the one `make demo` runs."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.startswith("demo:")]
    args = shlex.split(lines[starts[0] + 1]) if starts and starts[0] + 1 < len(lines) else []
    if "run" not in args or "--params" not in args:
        raise RuntimeError("Makefile: the demo target's first recipe line should be `$(PY) pipeline.py run --params "
                           "params/demo.yaml [options]`: the demo fixture runs those options")
    return args[args.index("--params") + 2:]


DEMO_RUN = make_demo_args()
os.environ.setdefault("PYTHONWARNINGS", "ignore")
# One torch thread per process: `make test` runs two test workers on the two cores, and each notebook kernel and
# pipeline they start inherits this; two processes of two OpenMP threads each on two cores spin against each other
# (a demo training run measured 248 s so, 80 s with one thread each).
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_itemcollected(item):
    """Under pytest-xdist (`make test`: -n auto --dist loadgroup) keep the tests that share a costly fixture on one
    worker, so it is built once: every test of the demo run in one group, a module's fixture users in another.
    Marked as each test is collected, before any pytest_collection_modifyitems (xdist's reads the marks there).
    pytest is pinned below 9.2, whose node ids lose these groups (pytest-dev/pytest-xdist#1386)."""
    info = getattr(item, "_fixtureinfo", None)
    shared = {name: defs[-1].scope for name, defs in (info.name2fixturedefs.items() if info else ())
              if defs and defs[-1].scope in ("module", "session") and name != "tiny_data"}
    if "demo" in shared:
        item.add_marker(pytest.mark.xdist_group("demo"))
    elif "module" in shared.values():
        item.add_marker(pytest.mark.xdist_group(item.path.name))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A 120-image Paddy-layout dataset (48x64 JPEGs), generated once per session."""
    from roadtop.paddy import make_demo

    return make_demo(tmp_path_factory.mktemp("data") / "paddy", n_train=120, n_test=20, size=(48, 64), seed=1,
                     progress=False)


def tiny_plan(tmp_path, data, runs=None, defaults=None, **sections) -> Path:
    """Write a plan YAML with 1-epoch tiny-model runs on `data`; returns its path."""
    plan = {
        "name": "tiny",
        "out_dir": str(tmp_path / "out"),
        "data": {"path": str(data), "holdout_pct": 0.1, "holdout_seed": 42},
        "train": {
            "defaults": {"pretrained": False, "finetune": False, "epochs": 1, "tta_n": 1, "seed": 0,
                         "item_method": "squish", "item_size": 64, "size": 32, **(defaults or {})},
            "runs": runs or {"res": {"arch": "test_resnet"}, "cnx": {"arch": "test_convnext"}},
        },
        "ensemble": {"weights": {"test_resnet": 2}},
        **sections,
    }
    f = tmp_path / "plan.yaml"
    f.write_text(yaml.safe_dump(plan, sort_keys=False))
    return f


def pipeline(*args, check=True, **kw) -> subprocess.CompletedProcess:
    """Run `python pipeline.py ARGS` from the repo root, capturing output."""
    r = subprocess.run([sys.executable, str(ROOT / "pipeline.py"), *map(str, args)], cwd=ROOT, text=True,
                       capture_output=True, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"pipeline {args} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """`make demo`'s pipeline (`--jobs 2`), the demo plan as shipped, run once in a fresh output folder:
    (plan, out, run, data). Each of its two jobs at a time gets one torch thread, as every test process has."""
    from roadtop.dag.plan import load_plan, resolve_plan_data

    out = tmp_path_factory.mktemp("demo") / "out"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}  # the notebooks' warnings, as a user sees them
    r = pipeline("run", "--params", DEMO, "--out", out, *DEMO_RUN, env=env)
    plan = load_plan(DEMO, out)
    return plan, out, r, resolve_plan_data(plan, progress=False)
