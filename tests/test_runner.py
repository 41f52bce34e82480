"""Runs that survive: incremental reruns, resume after SIGKILL, failure isolation, bad data stopped early."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT, pipeline, tiny_plan
from roadtop.preds import load_preds


def mtimes(out):
    return {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/*/manifest.json")} | \
           {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/manifest.json")}


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_data):
    """The tiny seeded plan run once, uninterrupted."""
    d = tmp_path_factory.mktemp("base")
    plan = tiny_plan(d, tiny_data)
    r = pipeline("run", "--params", plan)
    return plan, d / "out", r


def test_end_to_end_outputs(base, tiny_data):
    plan, out, r = base
    assert "[1/3] train/res: running" in r.stdout and "finished in" in r.stdout
    sub = pd.read_csv(out / "submission.csv")
    sample = pd.read_csv(tiny_data / "sample_submission.csv")
    assert sub.image_id.tolist() == sample.image_id.tolist()
    vocab = load_preds(out / "train" / "res").vocab
    assert set(sub.label) <= set(vocab)
    for run in ("res", "cnx"):
        assert (out / "train" / run / "train.ipynb").exists()  # executed notebook, parameters recorded
        m = json.loads((out / "train" / run / "manifest.json").read_text())
        assert m["outputs"] == ["preds.npz"] and m["params"]["arch"] in ("test_resnet", "test_convnext")
    table = pd.read_csv(out / "ensemble" / "holdout.csv")
    assert table.run.tolist()[:2] == ["res", "cnx"] and table.run.tolist()[-1] == "ensemble"
    assert table.holdout_accuracy.between(0, 1).all()
    assert table.weight.tolist()[:2] == [2.0, 1.0]
    status = pipeline("status", "--params", plan).stdout
    assert status.count("complete") == 3


def test_rerun_skips_and_param_change_reruns_only_that_run(base, tmp_path):
    plan, out, _ = base
    work = tmp_path / "out"
    shutil.copytree(out, work)
    before = mtimes(work)
    r = pipeline("run", "--params", plan, "--out", work)
    assert r.stdout.count("up to date, skipped") == 3 and "running" not in r.stdout
    assert mtimes(work) == before
    p = yaml.safe_load(plan.read_text())
    p["train"]["runs"]["cnx"]["epochs"] = 2
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(p, sort_keys=False))
    r = pipeline("run", "--params", changed, "--out", work)
    assert "train/res: up to date, skipped" in r.stdout
    assert "train/cnx: running" in r.stdout and "ensemble: running" in r.stdout
    after = mtimes(work)
    assert after["res"] == before["res"] and after["cnx"] != before["cnx"]
    r = pipeline("run", "--params", changed, "--out", work, "--force", "--only", "res")
    assert "train/res: running" in r.stdout and "train/cnx: up to date" in r.stdout


def test_sigkill_mid_run_then_resume_equals_uninterrupted(base, tmp_path):
    plan, ref, _ = base
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(ROOT / "pipeline.py"), "run", "--params", str(plan), "--out", str(out)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while not (out / "train" / "cnx" / "train.ipynb").exists():  # the second run has started
        assert proc.poll() is None and time.time() < deadline, "pipeline ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / "train" / "res" / "manifest.json").exists()
    assert not (out / "train" / "cnx" / "manifest.json").exists() and not (out / "submission.csv").exists()
    res_mtime = (out / "train" / "res" / "manifest.json").stat().st_mtime_ns
    r = pipeline("run", "--params", plan, "--out", out)
    assert "train/res: up to date, skipped" in r.stdout and "train/cnx: running" in r.stdout
    assert (out / "train" / "res" / "manifest.json").stat().st_mtime_ns == res_mtime
    assert (out / "submission.csv").read_bytes() == (ref / "submission.csv").read_bytes()
    for job in ("train/res", "train/cnx", "ensemble"):
        a = json.loads((out / job / "manifest.json").read_text())["fingerprint"]
        b = json.loads((ref / job / "manifest.json").read_text())["fingerprint"]
        assert a == b, job
    assert np.allclose(load_preds(out / "train" / "cnx").test_probs, load_preds(ref / "train" / "cnx").test_probs)


def test_failed_run_is_isolated(tmp_path, tiny_data):
    plan = tiny_plan(tmp_path, tiny_data, runs={"res": {"arch": "test_resnet"},
                                                "broken": {"arch": "test_resnet", "tta_n": 0}})
    r = pipeline("run", "--params", plan, check=False)
    assert r.returncode == 1
    assert "train/broken: FAILED" in r.stdout and "train.ipynb" in r.stdout
    assert "ensemble: skipped, 1 run(s) not complete (train/broken); --allow-partial" in r.stdout
    out = tmp_path / "out"
    assert (out / "train" / "res" / "manifest.json").exists() and not (out / "submission.csv").exists()
    failed = json.loads((out / "train" / "broken" / "failed.json").read_text())
    assert failed["cause"] and "\n" not in failed["cause"]
    assert (out / "train" / "broken" / "train.ipynb").exists()  # papermill's notebook with the error cell
    status = pipeline("status", "--params", plan).stdout
    assert "train/broken" in status and "failed" in status and failed["cause"][:40] in status
    r = pipeline("run", "--params", plan, "--allow-partial", check=False)
    assert r.returncode == 1 and "train/res: up to date" in r.stdout
    assert "left out of the ensemble: train/broken" in r.stdout
    runs = pd.read_csv(out / "ensemble" / "holdout.csv").run.tolist()
    assert runs[0] == "res" and "broken" not in runs and runs[-1] == "ensemble"
    assert (out / "submission.csv").exists()


def test_bad_data_stops_before_any_run(tmp_path, tiny_data):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    f = next((data / "train_images" / "hispa").iterdir())
    f.write_bytes(f.read_bytes()[:200])
    plan = tiny_plan(tmp_path, data)
    r = pipeline("run", "--params", plan, check=False)
    assert r.returncode == 2
    assert f"{f}: unreadable image" in r.stderr and "nothing was run" in r.stderr
    assert not (tmp_path / "out" / "train").exists()
    r = pipeline("check", "--params", plan, check=False)
    assert r.returncode == 1 and f"{f}: unreadable image" in r.stdout
    r = pipeline("run", "--params", plan, "--skip-bad", "--only", "res")
    assert f"--skip-bad: leaving out 1 image(s): {f.name}" in r.stdout
    m = json.loads((tmp_path / "out" / "train" / "res" / "manifest.json").read_text())
    assert m["params"]["skip_images"] == [f.name]


def test_auto_accum_without_a_probe_result_fails_that_run_only(tmp_path, tiny_data):
    plan = tiny_plan(tmp_path, tiny_data, defaults={"accum": "auto"}, runs={"res": {"arch": "test_resnet"}},
                     probe={"accums": [1, 2], "steps": 1})
    r = pipeline("run", "--params", plan, "--only", "res", check=False)
    assert r.returncode == 1 and "train/res: FAILED before starting" in r.stdout
    failed = json.loads((tmp_path / "out" / "train" / "res" / "failed.json").read_text())
    assert "probe" in failed["cause"] and "\n" not in failed["cause"]
    assert "failed" in pipeline("status", "--params", plan).stdout
