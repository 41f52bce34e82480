"""`make demo`'s pipeline end to end: the demo plan as shipped, in a fresh output folder."""

import json

import nbformat
import pandas as pd
import pytest
from conftest import ROOT, pipeline

from roadtop.dag.plan import load_plan, resolve_plan_data
from roadtop.preds import load_preds

DEMO = ROOT / "params" / "demo.yaml"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    r = pipeline("run", "--params", DEMO, "--out", out)
    plan = load_plan(DEMO, out)
    return plan, out, r, resolve_plan_data(plan, progress=False)


def test_submission_matches_sample_and_vocab(demo):
    plan, out, r, data = demo
    sub = pd.read_csv(out / "submission.csv")
    sample = pd.read_csv(data / "sample_submission.csv")
    assert sub.image_id.tolist() == sample.image_id.tolist()
    vocab = load_preds(plan.job(next(j.name for j in plan.jobs if j.stage == "train")).out_dir).vocab
    assert sub.label.notna().all() and set(sub.label) <= set(vocab)
    assert f"submission: {out / 'submission.csv'}" in r.stdout


def test_one_executed_notebook_per_job_with_its_parameters(demo):
    plan, out, r, _ = demo
    for job in plan.jobs:
        nb = nbformat.read(job.out_dir / f"{job.stage}.ipynb", as_version=4)
        injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
        assert f"out_dir = \"{job.out_dir}\"" in injected.source
        assert nb.metadata.papermill.exception is None, job.name
        assert json.loads((job.out_dir / "manifest.json").read_text())["job"] == job.name
    assert f"[{len(plan.jobs)}/{len(plan.jobs)}]" in r.stdout


def test_holdout_table_has_every_member_and_the_ensemble(demo):
    plan, out, _, _ = demo
    table = pd.read_csv(out / "ensemble" / "holdout.csv")
    members = [j.out_dir.name for j in plan.jobs if j.stage in ("train", "multitarget")]
    assert table.run.tolist()[:len(members)] == members and table.run.tolist().count("ensemble") == 1
    assert table.holdout_accuracy.between(0, 1).all()
    vit = table[table.arch == "test_vit"]
    assert (vit.weight == 2).all()
    # better than guessing the most common class on the holdout
    run_dirs = json.loads((out / "ensemble" / "manifest.json").read_text())["params"]["run_dirs"]
    assert len(run_dirs) == len(members)
    labels = load_preds(run_dirs[0]).holdout_labels
    majority = pd.Series(labels).value_counts(normalize=True).iloc[0]
    assert table.set_index("run").loc["ensemble", "holdout_accuracy"] > majority


def test_probe_ran_first_and_sized_every_run(demo):
    plan, out, r, _ = demo
    assert plan.jobs[0].name == "probe" and f"[1/{len(plan.jobs)}] probe: running" in r.stdout
    probe = json.loads((out / "probe" / "probe.json").read_text())
    trains = [j for j in plan.jobs if j.stage == "train"]
    assert set(probe["runs"]) == {j.out_dir.name for j in trains} | {"multitarget"}
    assert probe["gpu_measured"] is False  # CPU: speed measured, memory marked as not measured
    for j in trains:  # accum: auto took the probe's choice (1 on CPU)
        assert json.loads((j.out_dir / "manifest.json").read_text())["params"]["accum"] == 1


def test_multitarget_learns_disease_and_variety(demo):
    """The demo data carries a variety signal: both errors well below chance, and variety beats 'always ADT45'."""
    plan, out, _, _ = demo
    m = json.loads((out / "multitarget" / "metrics.json").read_text())
    for split in ("valid", "holdout"):
        assert m["multitarget"][f"disease_err_{split}"] < 0.5 * 0.9
        assert m["multitarget"][f"variety_err_{split}"] < 0.5 * 0.9
        assert m["multitarget"][f"variety_err_{split}"] < m["most_common_class"][f"variety_err_{split}"]
        assert m["disease_only"][f"disease_err_{split}"] < 0.5 * 0.9
    p = load_preds(out / "multitarget")
    assert len(p.vocab) == 10 and p.test_probs.shape == (len(p.test_ids), 10)


def test_collab_table_and_roadtop_trainer_best(demo):
    _, out, _, _ = demo
    t = pd.read_csv(out / "collab" / "collab_results.csv").set_index("model")
    assert {"DotProduct", "+ sigmoid_range", "+ biases", "collab_learner", "roadtop fit_collab"} <= set(t.index)
    assert t.valid_rmse.between(0.5, 1.5).all()
    assert t.valid_rmse.idxmin() == "roadtop fit_collab"
