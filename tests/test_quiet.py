"""Quiet by default: no library warnings on the commands' stderr or in the executed notebooks, and Ctrl-C is one
line."""

import os
import signal
import subprocess
import sys
import time

from conftest import DEMO, ROOT, tiny_plan
from roadtop.dag.plan import load_plan


def _env() -> dict:
    """The environment a user has: without the suite's PYTHONWARNINGS=ignore."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}


def test_validate_on_the_demo_prints_nothing_on_stderr(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "pipeline.py"), "validate", "--params", str(DEMO), "--out",
                        str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.splitlines()[-1] == f"{DEMO}: OK, {len(load_plan(DEMO).jobs)} jobs -> {tmp_path / 'out'}"


def test_a_job_warns_nothing_and_ctrl_c_is_one_line(tmp_path, tiny_data):
    """A run's stderr holds only papermill's progress bar (no Jupyter TCP warning, no torch.jit FutureWarning, in
    the kernel either); Ctrl-C (SIGINT to the process group, as a terminal sends it) prints the one line."""
    plan = tiny_plan(tmp_path, tiny_data, runs={"res": {"arch": "test_resnet", "epochs": 40}})
    p = subprocess.Popen([sys.executable, str(ROOT / "pipeline.py"), "run", "--params", str(plan)], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                         start_new_session=True)
    running = tmp_path / "out" / "train" / "res" / "train.running.ipynb"
    deadline = time.time() + 240
    while not (running.exists() and "<th>epoch</th>" in running.read_text(errors="replace")):  # training runs
        assert p.poll() is None and time.time() < deadline, p.communicate()
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=120)
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and not ln.startswith("Executing")]
    assert p.returncode == 130
    assert len(lines) == 1 and lines[0].startswith("interrupted after ") and lines[0].endswith(
        "s; rerun to finish what is missing"), err
    assert "FutureWarning" not in running.read_text() and "Warning" not in out


def test_the_quiet_list_filters_those_warnings_only(tmp_path):
    """A fresh interpreter that imports roadtop, then the libraries, with every other warning shown: the two
    deprecations the libraries raise as they are imported are gone, a warning of the same kinds with another
    message still shows."""
    code = ("import warnings, roadtop\n"
            "import fastai.tabular.all, timm\n"
            "warnings.warn('`torch.jit.script` is deprecated, again', FutureWarning)\n"
            "warnings.warn('something else is deprecated', FutureWarning)\n")
    r = subprocess.run([sys.executable, "-W", "always", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       env={**_env(), "PYTHONPATH": str(ROOT)}, timeout=300)
    assert r.returncode == 0, r.stderr
    shown = [ln for ln in r.stderr.splitlines() if "Warning" in ln]
    assert len(shown) == 1 and "FutureWarning: something else is deprecated" in shown[0], r.stderr
