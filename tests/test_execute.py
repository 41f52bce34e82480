"""roadtop.dag.execute: one job's notebook run into its out_dir (manifest last), and a job's own light process."""

import json
import subprocess
import sys

import nbformat

from conftest import ROOT
from roadtop.dag.execute import execute_job, read_spec, write_spec
from roadtop.dag.render import Job


def _notebook(path, code: str):
    """A notebook with a `parameters` cell (n = 1) and one cell of `code`."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("n = 1", metadata={"tags": ["parameters"]}),
                                         nbformat.v4.new_code_cell(code)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_a_jobs_process_imports_none_of_the_planners_heavy_modules():
    """It starts once per job of --gpus / --jobs: torch and timm alone take seconds to import."""
    code = ("import sys, roadtop.dag.execute\n"
            "print(sorted(m for m in ('torch', 'timm', 'pandas', 'fastai', 'roadtop.dag.params', "
            "'roadtop.dag.render') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


def test_a_rendered_job_becomes_a_plain_spec_that_survives_the_spec_file(tmp_path):
    job = Job("train/x", "train", tmp_path / "t.ipynb", {"sizes": [1, 2], "opts": {"a": 1}}, tmp_path / "x")
    spec = job.spec()
    assert type(spec.params) is dict and type(spec.params["sizes"]) is list and type(spec.params["opts"]) is dict
    write_spec(tmp_path / "job.pickle", spec, "fp", {"params": {}})
    assert read_spec(tmp_path / "job.pickle") == (spec, "fp", {"params": {}})


def test_a_jobs_process_runs_the_notebook_with_its_parameters_and_hands_back_its_record(tmp_path):
    _notebook(tmp_path / "t.ipynb", "open('n.txt', 'w').write(str(n * 2))")
    job = Job("train/x", "train", tmp_path / "t.ipynb", {"n": 21}, tmp_path / "x").spec()
    write_spec(tmp_path / "job.pickle", job, "fp1", {})
    # as JobProcs starts it: `python -m roadtop.dag.execute SPEC RESULT` (run_one), a process of its own
    subprocess.run([sys.executable, "-m", "roadtop.dag.execute", str(tmp_path / "job.pickle"),
                    str(tmp_path / "result.json")], cwd=ROOT, check=True, timeout=300)
    rec = json.loads((tmp_path / "result.json").read_text())
    assert rec["state"] == "complete" and rec["params"] == {"n": 21} and rec["fingerprint"] == "fp1"
    assert (tmp_path / "n.txt").read_text() == "42"  # the notebook ran in its own folder, with n = 21
    assert json.loads((tmp_path / "x" / "manifest.json").read_text())["fingerprint"] == "fp1"
    assert (tmp_path / "x" / "train.ipynb").exists() and not (tmp_path / "x" / "train.running.ipynb").exists()


def test_a_failing_cell_is_a_failed_record_with_the_executed_notebook_kept(tmp_path):
    _notebook(tmp_path / "t.ipynb", "raise ValueError('bad cell')")
    rec = execute_job(Job("train/x", "train", tmp_path / "t.ipynb", {}, tmp_path / "x").spec(), "fp", {},
                      progress=False)
    assert rec["state"] == "failed" and "ValueError" in rec["cause"] and "bad cell" in rec["cause"]
    assert not (tmp_path / "x" / "manifest.json").exists() and (tmp_path / "x" / "train.ipynb").exists()
