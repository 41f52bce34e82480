"""The training notebook: accumulation shown on a tiny model, k-fold splits and out-of-fold predictions, plumbing."""

import json

import nbformat
import pytest
import torch
from torch import nn

from roadtop import paddy, train
from roadtop.errors import RoadtopError
from roadtop.nbcode import load
from roadtop.preds import load_preds


def test_accumulated_gradient_equals_one_batch_except_with_batchnorm():
    gap = load("train.ipynb")["accumulation_gap"]  # the notebook's own cell
    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    plain = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    assert gap(plain, x, y, accum=2) < 1e-6 and gap(plain, x, y, accum=4) < 1e-6
    with_bn = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    assert gap(with_bn, x, y, accum=2) > 1e-3


def test_item_method_must_be_one_fastai_knows():
    assert [train.check_item_method(m) for m in ("squish", "crop", "pad")] == ["squish", "crop", "pad"]
    with pytest.raises(RoadtopError, match="item_method='stretch' is unknown"):
        train.check_item_method("stretch")


def test_folds_partition_the_non_holdout_images(tiny_data):
    trn, hold = paddy.split_files(tiny_data, 0.1, 42)
    ids, labels = [f.name for f in trn], [f.parent.name for f in trn]
    folds = paddy.fold_ids(ids, labels, 5, seed=42)
    assert sorted(folds) == sorted(ids) and not set(folds) & {f.name for f in hold}  # every id in exactly one fold
    assert set(folds.values()) == set(range(5))
    sizes = [list(folds.values()).count(k) for k in range(5)]
    assert max(sizes) - min(sizes) <= 1
    for lab in set(labels):  # stratified: each label spread evenly over the folds
        per = [sum(1 for i, la in zip(ids, labels) if la == lab and folds[i] == k) for k in range(5)]
        assert max(per) - min(per) <= 1, lab
    assert paddy.fold_ids(ids[::-1], labels[::-1], 5, seed=42) == folds  # order does not matter, the seed does
    assert paddy.fold_ids(ids, labels, 5, seed=7) != folds
    with pytest.raises(RoadtopError, match="k-fold needs an integer of at least 2"):
        paddy.fold_ids(ids, labels, 1)


def test_plan_runs_come_from_the_probe(tmp_path):
    probe = tmp_path / "out" / "probe"
    probe.mkdir(parents=True)
    spec = {"arch": "convnext_atto", "item_method": "crop", "item_size": [128, 96], "size": 64}
    (probe / "probe.json").write_text(json.dumps({"runs": {"cnx": {"spec": spec, "stage": "train"},
                                                          "multitarget": {"spec": spec, "stage": "multitarget"}}}))
    assert train.plan_runs(tmp_path / "out" / "train" / "cnx") == {"cnx": spec}
    assert train.plan_runs(tmp_path / "out" / "train" / "other") == {}  # a run outside the plan shows just itself
    assert train.plan_runs(tmp_path / "x", search=[tmp_path]) == {}  # no probe.json there


def test_kfold_run_saves_out_of_fold_predictions(tiny_data, tmp_path):
    """One fold of a 3-fold run, with accum 2: the notebook attaches GradientAccumulation and saves its fold's TTA."""
    import papermill as pm

    from roadtop.paths import NOTEBOOKS

    out = tmp_path / "cnx_f1"
    pm.execute_notebook(str(NOTEBOOKS / "train.ipynb"), str(tmp_path / "train.ipynb"), cwd=str(NOTEBOOKS),
                        parameters=dict(data_path=str(tiny_data), out_dir=str(out), arch="test_resnet", item_size=48,
                                        size=32, accum=2, epochs=1, tta_n=1, folds=3, fold=1, seed=0),
                        kernel_name="python3", progress_bar=False)
    text = "".join(o.get("text", "") for c in nbformat.read(tmp_path / "train.ipynb", 4).cells
                   if c.cell_type == "code" for o in c.outputs)
    assert "batch size 32, accum 2" in text and "GradientAccumulation attached: True" in text
    trn, _ = paddy.split_files(tiny_data, 0.1, 42)
    folds = paddy.fold_ids([f.name for f in trn], [f.parent.name for f in trn], 3, seed=0)
    p = load_preds(out)
    assert sorted(p.oof_ids) == sorted(i for i, k in folds.items() if k == 1)
    assert p.oof_labels == [next(f.parent.name for f in trn if f.name == i) for i in p.oof_ids]
    assert p.oof_probs.shape == (len(p.oof_ids), len(p.vocab))
    assert (out / "subm.csv").read_text().startswith("image_id,label")
    cfg = json.loads((out / "model.json").read_text())  # each fold saves its model
    assert cfg["name"] == "cnx_f1" and cfg["bs"] == 32 and cfg["vocab"] == p.vocab and (out / "model.safetensors").exists()


def test_channels_last_bodies_get_a_permute_before_the_head():
    class Body(nn.Module):
        def __init__(self, fmt):
            super().__init__()
            self.model = nn.Identity()
            self.model.output_fmt = fmt

        def forward(self, x):
            return x.permute(0, 2, 3, 1) if self.model.output_fmt == "NHWC" else x

    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    x = torch.randn(2, 8, 5, 5)
    swin = train.channels_first(nn.Sequential(Body("NHWC"), head))
    assert swin(x).shape == (2, 2)
    assert torch.allclose(swin[0](x), x)  # the permute undoes the body's NHWC
    cnn = nn.Sequential(Body("NCHW"), head)
    assert train.channels_first(cnn)[0].__class__ is Body


def test_skipped_images_leave_training_and_holdout(tiny_data):
    trn, hold = paddy.split_files(tiny_data, 0.1, 42)
    bad = {trn[0].name, hold[0].name}
    trn2, hold2 = paddy.split_files(tiny_data, 0.1, 42, skip=bad)
    assert not bad & {f.name for f in trn2 + hold2}
    assert len(trn2) + len(hold2) == len(trn) + len(hold) - 2
