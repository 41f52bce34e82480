"""Runs that survive: incremental reruns, `status` (stale and why), resume after SIGKILL mid-training, failure
isolation, bad predictions left out of the ensemble, bad data stopped early (even a same-size corrupt image)."""

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

from roadtop.dag.params import notebook_defaults
from roadtop.preds import load_preds

LONG = 60  # cnx's epochs: a training cell long enough for the kill test to catch it between two epochs


def mtimes(out):
    return {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/*/manifest.json")} | \
           {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/manifest.json")}


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_data):
    """The tiny seeded plan run once, uninterrupted."""
    d = tmp_path_factory.mktemp("base")
    plan = tiny_plan(d, tiny_data, runs={"res": {"arch": "test_resnet"}, "cnx": {"arch": "test_convnext", "epochs": LONG}})
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
        assert m["outputs"] == ["model.json", "model.safetensors", "preds.npz", "subm.csv"] and m["params"]["arch"] in ("test_resnet", "test_convnext")
    table = pd.read_csv(out / "ensemble" / "holdout.csv")
    assert table.run.tolist()[:2] == ["res", "cnx"] and table.run.tolist()[-1] == "ensemble"
    assert table.holdout_accuracy.between(0, 1).all()
    assert table.weight.tolist()[:2] == [2.0, 1.0]
    status = pipeline("status", "--params", plan).stdout
    assert status.count("complete") == 3


def _changed_plan(plan, tmp_path, **res):
    """A copy of `plan` whose run res has the parameters `res` on top."""
    p = yaml.safe_load(plan.read_text())
    p["train"]["runs"]["res"].update(res)
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(p, sort_keys=False))
    return changed


def _status(plan, out) -> dict:
    """`pipeline.py status` as {job: (state, the rest of its line)}."""
    lines = pipeline("status", "--params", plan, "--out", out).stdout.splitlines()
    rows = [ln.split(None, 2) + [""] for ln in lines if ln.startswith(("train/", "ensemble"))]
    return {r[0]: (r[1], r[2]) for r in rows}


def test_status_says_which_jobs_are_stale_and_what_changed(base, tmp_path):
    plan, out, _ = base
    assert {j: s for j, (s, _) in _status(plan, out).items()} == \
        {"train/res": "complete", "train/cnx": "complete", "ensemble": "complete"}
    st = _status(_changed_plan(plan, tmp_path, epochs=2), out)
    assert st["train/res"][0] == "stale" and st["train/res"][1].startswith("changed: params (epochs 1 -> 2)")
    assert st["ensemble"][0] == "stale" and st["ensemble"][1].startswith("changed: upstream (train/res)")
    assert st["train/cnx"][0] == "complete"
    lr = notebook_defaults(ROOT / "notebooks" / "train.ipynb")["lr"]  # the tiny plan keeps the notebook's lr
    st = _status(_changed_plan(plan, tmp_path, tta_n=2, lr=lr * 10), out)
    assert st["train/res"][1].startswith(f"changed: params (lr {lr} -> {lr * 10}, tta_n 1 -> 2)")


def test_rerun_skips_and_param_change_reruns_only_that_run(base, tmp_path):
    plan, out, _ = base
    work = tmp_path / "out"
    shutil.copytree(out, work)
    before = mtimes(work)
    r = pipeline("run", "--params", plan, "--out", work)
    assert r.stdout.count("up to date, skipped") == 3 and "running" not in r.stdout
    assert mtimes(work) == before
    changed = _changed_plan(plan, tmp_path, epochs=2)
    r = pipeline("run", "--params", changed, "--out", work)
    assert "train/cnx: up to date, skipped" in r.stdout
    assert "train/res: running" in r.stdout and "ensemble: running" in r.stdout
    after = mtimes(work)
    assert after["cnx"] == before["cnx"] and after["res"] != before["res"]
    assert {s for s, _ in _status(changed, work).values()} == {"complete"}
    r = pipeline("run", "--params", changed, "--out", work, "--force", "--only", "ensemble")  # complete, rerun
    assert "ensemble: running" in r.stdout
    assert "train/res: up to date" in r.stdout and "train/cnx: up to date" in r.stdout


def training_cell(nb):
    """(papermill status, epochs in fastai's table) of an executed notebook's training cell; None if unreadable."""
    try:
        cells = json.loads(nb.read_text())["cells"]
    except (OSError, ValueError):  # not there yet, or caught half-written
        return None
    for c in cells:
        if "papermill_description=training" in "".join(c["source"]):
            html = "".join("".join(o.get("data", {}).get("text/html", "")) for o in c.get("outputs", []))
            rows = html.split("<tbody>", 1)[1].count("<tr>") if "<tbody>" in html else 0
            return c.get("metadata", {}).get("papermill", {}).get("status"), rows
    return None


def test_sigkill_mid_training_then_resume_equals_uninterrupted(base, tmp_path):
    plan, ref, _ = base
    out = tmp_path / "out"
    nb = out / "train" / "cnx" / "train.running.ipynb"  # papermill's saves while it runs, renamed when it ends
    proc = subprocess.Popen([sys.executable, str(ROOT / "pipeline.py"), "run", "--params", str(plan), "--out", str(out)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    seen = None
    while not (seen and seen[0] == "running" and seen[1] >= 1):  # cnx is training and has logged an epoch
        assert proc.poll() is None and time.time() < deadline, f"pipeline ended before it could be killed ({seen})"
        assert not (out / "train" / "cnx" / "preds.npz").exists(), f"training ended unseen: raise LONG ({seen})"
        time.sleep(0.1)
        seen = training_cell(nb)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    status, epochs = training_cell(nb)
    assert status == "running" and 1 <= epochs < LONG  # the notebook's last save: mid-training, epochs logged
    assert (out / "train" / "res" / "manifest.json").exists()
    assert not (out / "train" / "cnx" / "manifest.json").exists() and not (out / "submission.csv").exists()
    res_mtime = (out / "train" / "res" / "manifest.json").stat().st_mtime_ns
    assert _status(plan, out)["train/cnx"][0] == "pending"
    r = pipeline("run", "--params", plan, "--out", out)
    assert "train/res: up to date, skipped" in r.stdout and "train/cnx: running" in r.stdout
    assert (out / "train" / "res" / "manifest.json").stat().st_mtime_ns == res_mtime
    assert (out / "submission.csv").read_bytes() == (ref / "submission.csv").read_bytes()
    for job in ("train/res", "train/cnx", "ensemble"):
        a = json.loads((out / job / "manifest.json").read_text())["fingerprint"]
        b = json.loads((ref / job / "manifest.json").read_text())["fingerprint"]
        assert a == b, job
    assert np.allclose(load_preds(out / "train" / "cnx").test_probs, load_preds(ref / "train" / "cnx").test_probs)


def test_complete_run_with_nan_predictions_is_left_out_of_the_ensemble_and_named(base, tmp_path):
    plan, out, _ = base
    work = tmp_path / "out"
    shutil.copytree(out, work)
    f = work / "train" / "cnx" / "preds.npz"
    with np.load(f) as z:
        d = {k: z[k] for k in z.files}
    d["test_probs"][0, :] = np.nan
    np.savez(f, **d)
    r = pipeline("run", "--params", plan, "--out", work, "--allow-partial", check=False)
    assert r.returncode == 1 and "train/cnx: up to date" in r.stdout
    assert f"ensemble: run train/cnx cannot be ensembled: {f}: test_probs holds NaN/inf" in r.stdout
    assert "ensemble: left out of the ensemble: train/cnx" in r.stdout and "ensemble: running" in r.stdout
    rows = pd.read_csv(work / "ensemble" / "holdout.csv").run.tolist()
    assert rows[0] == "res" and "cnx" not in rows and rows[-1] == "ensemble"  # members first, submitted ensemble last
    assert json.loads((work / "ensemble" / "manifest.json").read_text())["parts"]["upstream"].keys() == {"train/res"}
    st = _status(plan, work)
    assert st["train/cnx"][0] == "failed" and "test_probs holds NaN/inf" in st["train/cnx"][1]


def test_failed_run_is_isolated(base, tmp_path):
    """A run added to the finished plan fails: the others stay complete, the last good submission stays, and
    --allow-partial ensembles the rest."""
    plan, ref, _ = base
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    shutil.rmtree(out / "ensemble")  # the ensemble to redo; the published submission.csv of the last good run stays
    p = yaml.safe_load(plan.read_text())
    p["train"]["runs"]["broken"] = {"arch": "test_resnet", "pretrained": True, "weights_dir": str(tmp_path / "none")}
    plan = tmp_path / "broken.yaml"
    plan.write_text(yaml.safe_dump(p, sort_keys=False))
    good = (out / "submission.csv").read_bytes()
    r = pipeline("run", "--params", plan, "--out", out, check=False)
    assert r.returncode == 1
    assert "train/res: up to date" in r.stdout and "train/cnx: up to date" in r.stdout
    assert "train/broken: FAILED" in r.stdout and "train.ipynb" in r.stdout
    assert "ensemble: skipped, 1 run(s) not complete (train/broken); --allow-partial" in r.stdout
    assert (out / "submission.csv").read_bytes() == good  # nothing already written is lost
    failed = json.loads((out / "train" / "broken" / "failed.json").read_text())
    assert failed["cause"] and "\n" not in failed["cause"]
    assert (out / "train" / "broken" / "train.ipynb").exists()  # papermill's notebook with the error cell
    status = pipeline("status", "--params", plan, "--out", out).stdout
    assert "train/broken" in status and "failed" in status and failed["cause"][:40] in status
    r = pipeline("run", "--params", plan, "--out", out, "--allow-partial", check=False)
    assert r.returncode == 1 and "train/res: up to date" in r.stdout
    assert "left out of the ensemble: train/broken" in r.stdout and "ensemble: running" in r.stdout
    runs = pd.read_csv(out / "ensemble" / "holdout.csv").run.tolist()
    assert runs[:2] == ["res", "cnx"] and "broken" not in runs and runs[-1] == "ensemble"
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


def test_same_size_corrupt_image_is_caught_after_a_clean_check(tmp_path, tiny_data):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    plan = tiny_plan(tmp_path, data)
    r = pipeline("run", "--params", plan, "--only", "ensemble")  # checks the data (clean, remembered), trains nothing
    assert "ensemble: skipped" in r.stdout and not (tmp_path / "out" / "train").exists()
    assert len(list((tmp_path / "out" / "checks").glob("data-check-*.json"))) == 1
    f = sorted((data / "train_images" / "blast").iterdir())[1]
    size = f.stat().st_size
    f.write_bytes(b"\0" * size)  # same name, same size, not an image
    assert f.stat().st_size == size
    r = pipeline("run", "--params", plan, check=False)
    assert r.returncode == 2 and f"{f}: unreadable image" in r.stderr and "nothing was run" in r.stderr
    assert not (tmp_path / "out" / "train").exists()


def test_auto_accum_without_a_probe_result_fails_that_run_only(tmp_path, tiny_data):
    plan = tiny_plan(tmp_path, tiny_data, defaults={"accum": "auto"}, runs={"res": {"arch": "test_resnet"}},
                     probe={"accums": [1, 2], "steps": 1})
    r = pipeline("run", "--params", plan, "--only", "res", check=False)
    assert r.returncode == 1 and "train/res: FAILED before starting" in r.stdout
    failed = json.loads((tmp_path / "out" / "train" / "res" / "failed.json").read_text())
    assert "probe" in failed["cause"] and "\n" not in failed["cause"]
    assert "failed" in pipeline("status", "--params", plan).stdout
