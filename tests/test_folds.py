"""k-fold bagging: `folds: k` expands a run into k fold jobs whose validation folds cover every non-holdout image once."""

import numpy as np
import pytest
import yaml
from conftest import ROOT, pipeline, tiny_plan

from roadtop import ensemble, paddy, preds
from roadtop.dag import plan as plan_mod
from roadtop.errors import RoadtopError


@pytest.fixture
def notebooks():
    """The project's notebooks (the training notebook declares `folds` and `fold`)."""
    return ROOT / "notebooks"


def test_seeded_five_folds_cover_every_non_holdout_image_once(tmp_path, tiny_data, notebooks):
    f = tiny_plan(tmp_path, tiny_data, runs={"cnx": {"arch": "test_convnext", "folds": 5}, "res": {"arch": "test_resnet"}},
                  defaults={"seed": 3})
    plan = plan_mod.load_plan(f)
    names = [j.name for j in plan.jobs]
    assert names == [*(f"train/cnx-fold{i}" for i in range(5)), "train/res", "ensemble"]
    folds = [j for j in plan.jobs if j.name.startswith("train/cnx-")]
    assert [(j.params["folds"], j.params["fold"], j.params["seed"]) for j in folds] == [(5, i, 3) for i in range(5)]
    assert [j.out_dir.name for j in folds] == [f"cnx-fold{i}" for i in range(5)]
    assert plan.job("train/res").params.get("folds", 0) == 0 and plan.job("ensemble").needs == tuple(names[:-1])
    # each fold job validates on the images paddy.fold_ids gives its fold: together, every non-holdout image once
    trn, hold = paddy.split_files(tiny_data, plan.data["holdout_pct"], plan.data["holdout_seed"])
    seen = {}
    for j in folds:
        fold_of = paddy.fold_ids([p.name for p in trn], [p.parent.name for p in trn], j.params["folds"], j.params["seed"])
        for iid in (i for i, k in fold_of.items() if k == j.params["fold"]):
            seen.setdefault(iid, []).append(j.name)
    assert sorted(seen) == sorted(p.name for p in trn) and all(len(v) == 1 for v in seen.values())
    assert not set(seen) & {p.name for p in hold}
    # the fold jobs' out-of-fold predictions, bagged, cover them all
    vocab, labels = paddy.LABELS, {p.name: p.parent.name for p in trn}
    rng = np.random.default_rng(0)
    runs = []
    for j in folds:
        ids = sorted(i for i, v in seen.items() if v == [j.name])
        runs.append(preds.RunPreds(j.out_dir.name, "test_convnext", vocab, ["t"], np.full((1, 10), 0.1), [], [],
                                   np.zeros((0, 10)), oof_ids=ids, oof_labels=[labels[i] for i in ids],
                                   oof_probs=rng.dirichlet(np.ones(10), len(ids))))
    bag = ensemble.bag_folds(runs)
    assert len(bag) == 1 and sorted(bag[0].oof_ids) == sorted(p.name for p in trn)


@pytest.mark.parametrize("run, msg", [
    ({"arch": "test_convnext", "folds": 5, "seed": None}, "folds: 5 needs seed: <int>"),
    ({"arch": "test_convnext", "folds": 5, "seed": 0, "fold": 2}, "'fold' is set by the pipeline"),
    ({"arch": "test_convnext", "folds": "5", "seed": 0}, "folds='5': use an integer k >= 2"),
])
def test_bad_folds_are_refused_in_one_line(tmp_path, tiny_data, notebooks, run, msg):
    with pytest.raises(RoadtopError, match=msg):
        plan_mod.load_plan(tiny_plan(tmp_path, tiny_data, runs={"cnx": run}))


def test_a_plain_run_may_not_look_like_a_fold(tmp_path, tiny_data, notebooks):
    with pytest.raises(RoadtopError, match="run 'x-fold1'.*kept for k-fold jobs"):
        plan_mod.load_plan(tiny_plan(tmp_path, tiny_data, runs={"x-fold1": {"arch": "test_resnet"}}))


def test_folds_in_defaults_expand_every_run_and_each_fold_is_a_kaggle_run(tmp_path, tiny_data, notebooks):
    from roadtop.kaggle import kernels

    f = tiny_plan(tmp_path, tiny_data, defaults={"folds": 3, "seed": 0})
    raw = yaml.safe_load(f.read_text())
    raw["data"]["path"] = ""  # as on Kaggle: the competition's input
    f.write_text(yaml.safe_dump(raw, sort_keys=False))
    plan = plan_mod.load_plan(f)
    assert [j.name for j in plan.jobs if j.stage == "train"] == [f"train/{r}-fold{i}" for r in ("res", "cnx")
                                                                 for i in range(3)]
    ks = kernels.build_kernels(plan, plan.jobs, "someone", write=False, log=lambda s: None)
    folds = [j.name for j in plan.jobs if j.stage == "train"]
    by = {j.name: j for k in ks for j in k.jobs}
    assert [len(k.runs) for k in ks] == [2, 2, 2, 1]  # GPU packs of two folds (a T4 x2 session), the ensemble
    assert sorted(r for k in ks[:3] for r in k.runs) == sorted(folds) and ks[-1].needs == folds
    for i in range(3):  # each fold a run of its own, its notebook parameterised with its fold
        job = by[f"train/cnx-fold{i}"]
        nb = kernels.kernel_notebook(job.notebook, job.params)
        injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
        assert f"fold = {i}\n" in injected.source and "folds = 3\n" in injected.source


def test_fold_jobs_train_and_their_out_of_fold_predictions_cover_the_training_images(tmp_path, tiny_data):
    """Through the pipeline: a seeded `folds: 2` run trains two fold jobs whose saved out-of-fold predictions
    together cover every non-holdout training image exactly once, and the ensemble bags them."""
    f = tiny_plan(tmp_path, tiny_data, runs={"res": {"arch": "test_resnet", "folds": 2}}, defaults={"seed": 3})
    pipeline("run", "--params", f)
    out = tmp_path / "out"
    parts = [preds.load_preds(out / "train" / f"res-fold{i}") for i in range(2)]
    trn, _ = paddy.split_files(tiny_data, 0.1, 42)
    ids = [set(p.oof_ids) for p in parts]
    assert not ids[0] & ids[1] and ids[0] | ids[1] == {f.name for f in trn}
    for p in parts:
        assert p.oof_probs.shape == (len(p.oof_ids), len(p.vocab))
        assert p.oof_labels == [next(f.parent.name for f in trn if f.name == i) for i in p.oof_ids]
    assert (out / "submission.csv").exists()
