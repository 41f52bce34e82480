"""Gradient accumulation (batch 64 in pieces) and the accum choice from the probe's trials (roadtop.accum)."""

import json

import pytest
import torch
from torch import nn

from roadtop import accum as accums
from roadtop.errors import RoadtopError

BUDGET, MARGIN = 16.0, 0.75


def _fit_synthetic(accum: int, batchnorm: bool):
    """Train a small net for one epoch of 192 samples (3 effective batches of EFFECTIVE_BS = 64) with fastai's
    GradientAccumulation(64) at batch size 64 // accum (an accum roadtop allows), in a real Learner, in fp32;
    returns (state, optimiser steps)."""
    from fastai.callback.core import Callback
    from fastai.callback.training import GradientAccumulation
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat

    class CountSteps(Callback):
        def before_fit(self):
            self.n = 0

        def after_step(self):
            self.n += 1

    g = torch.Generator().manual_seed(0)
    x = torch.randn(192, 8, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    ds = list(zip(x, y))
    bs = accums.EFFECTIVE_BS // accums.check_accum(accum, "test")
    dls = DataLoaders(DataLoader(ds, bs=bs, shuffle=False), DataLoader(ds[:64], bs=64), device="cpu")
    torch.manual_seed(1)
    bn = [nn.BatchNorm1d(16)] if batchnorm else []
    model = nn.Sequential(nn.Linear(8, 16), *bn, nn.ReLU(), nn.Linear(16, 2))
    steps = CountSteps()
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(),
                    cbs=[GradientAccumulation(accums.EFFECTIVE_BS)] if accum > 1 else [])
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 0.05, cbs=steps)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, steps.n

def _max_diff(a, b, skip=("num_batches_tracked",)):
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a if not k.endswith(skip))

def test_accum_gives_the_same_weights_without_batchnorm():
    """accum 1, 2, 4 with GradientAccumulation(64): the same 3 optimiser steps, the same weights (fp32 tolerance)."""
    torch.manual_seed(1)
    init = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)).state_dict()
    w1, n1 = _fit_synthetic(1, batchnorm=False)
    assert n1 == 3 and _max_diff(w1, init) > 1e-2  # it trained
    for accum in (2, 4):
        w, n = _fit_synthetic(accum, batchnorm=False)
        assert n == 3, f"accum {accum}: {n} optimiser steps for 3 effective batches of 64"
        assert _max_diff(w, w1) < 1e-5, f"accum {accum} drifted {_max_diff(w, w1):.2e} from batch 64"

def test_accum_with_batchnorm_differs_and_says_why():
    """Batch norm normalises each *small* batch with its own statistics, so accumulation is NOT batch 64 there:
    the weights differ far beyond fp32 noise, the running statistics too, and the buffer counting batches shows
    the cause (BN saw 3, 6, 12 batches). The lesson's big models use LayerNorm (ViT, Swin, ConvNeXt), which is
    per-sample and unaffected; a ResNet's BN is, a little, which is why the lesson calls it 'nearly' the same."""
    w1, _ = _fit_synthetic(1, batchnorm=True)
    for accum in (2, 4):
        w, n = _fit_synthetic(accum, batchnorm=True)
        assert n == 3  # the optimiser still steps once per 64 samples...
        assert _max_diff(w, w1) > 1e-3  # ...but from different gradients
        assert not torch.allclose(w["1.running_mean"], w1["1.running_mean"], atol=1e-5)
        assert int(w["1.num_batches_tracked"]) == 3 * accum

def T(accum, status="ok", peak=None, s=0.01, infer=None, error=""):
    """A trial record as the probe writes it."""
    return {"accum": accum, "bs": 64 // accum, "status": status, "peak_reserved_gb": peak if status == "ok" else None,
            "peak_allocated_gb": None, "s_per_img": s if status == "ok" else None, "s_per_img_infer": infer,
            "seconds": 1.0, "error": error}

def test_oom_at_accum_1_picks_2():
    assert accums.choose_accum([T(1, "oom"), T(2, peak=12.19), T(4, peak=9.0)], BUDGET, MARGIN)[0] == 2

def test_margin_pushes_a_near_miss_to_the_next_accum():
    """vit_large at bs 32 was 'very close' to 16 GB in the lesson: with a margin it goes to accum 4."""
    trials = [T(1, "oom"), T(2, peak=15.6), T(4, peak=11.0)]
    assert accums.choose_accum(trials, BUDGET, MARGIN)[0] == 4
    assert accums.choose_accum(trials, BUDGET, 0.0)[0] == 2

def test_nothing_fits_says_why():
    accum, why = accums.choose_accum([T(1, "oom"), T(2, "oom"), T(4, peak=15.9)], BUDGET, MARGIN)
    assert accum is None and "1: oom" in why and "15.90 GiB > 15.25" in why

def test_cpu_probe_falls_back_to_the_largest_batch():
    accum, why = accums.choose_accum([T(1, peak=None), T(2, peak=None)], BUDGET, MARGIN)
    assert accum == 1 and "not measured" in why


SPEC = {"arch": "convnext_atto", "item_method": "crop", "item_size": [128, 96], "size": 64}


def _probe(folder, trials, gpu=True, spec=SPEC):
    """A probe.json in `folder` as the probe writes it: one run with `trials`, measured on a GPU or not."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = {"gpu_measured": gpu, "gpu_budget_gb": BUDGET, "margin_gb": MARGIN,
             "runs": {"cnx": {"spec": spec, "trials": trials, "stage": "train"}}}
    (folder / accums.PROBE_JSON).write_text(json.dumps(probe))
    return probe


def test_check_accum_takes_auto_and_divisors_of_64_only():
    assert [accums.check_accum(a, "x") for a in (1, 2, 64, "auto")] == [1, 2, 64, "auto"]
    for bad in (3, 0, -2, True, 2.0, "2"):
        with pytest.raises(RoadtopError, match=r"^train.runs.a: accum=.* is not allowed: use a positive divisor"):
            accums.check_accum(bad, "train.runs.a")


def test_same_spec_compares_after_a_json_round_trip_and_an_explicit_accum_counts():
    params = {**SPEC, "item_size": (128, 96), "epochs": 3, "accum": 2}  # a tuple in the plan, a list in JSON
    assert accums.same_spec({**SPEC, "accum": 2}, params)
    assert not accums.same_spec(SPEC, params) and accums.same_spec(SPEC, params, accum=False)
    assert not accums.same_spec({**SPEC, "size": 48}, params, accum=False)
    assert accums.same_spec(SPEC, {**SPEC, "accum": "auto"})  # auto is not part of the spec


def test_notebook_accum_reads_the_nearest_probe_that_measured_its_spec(tmp_path, capsys):
    """A notebook run alone (or on Kaggle) with accum: auto: the probe's choice for this spec, from the first
    folder holding a probe.json that measured it; an int stays as written."""
    _probe(tmp_path / "far", [T(1, peak=3.0)])  # a later folder would say 1
    near = tmp_path / "near"
    _probe(near, [T(1, "oom"), T(2, peak=12.0), T(4, peak=8.0)])
    spec = {**SPEC, "item_size": (128, 96)}
    assert accums.notebook_accum("auto", spec, search=[tmp_path / "none", near, tmp_path / "far"]) == 2
    assert f"accum: auto -> 2 (from {near / accums.PROBE_JSON})" in capsys.readouterr().out
    assert accums.notebook_accum(4, spec, search=[near]) == 4
    with pytest.raises(RoadtopError, match="accum=3 is not allowed"):
        accums.notebook_accum(3, spec, search=[near])
    other = {**spec, "size": 48}  # measured nowhere: the farther probe does not know it either
    assert accums.notebook_accum("auto", other, search=[near, tmp_path / "far"]) == 1  # on CPU memory is no limit
    assert "CPU, no probe for this run" in capsys.readouterr().out


def test_auto_on_a_gpu_needs_a_probe_measured_on_a_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cpu = _probe(tmp_path / "cpu", [T(1, peak=None)], gpu=False)
    assert accums.auto_accum(cpu, cpu["runs"]["cnx"]) == (None, "the probe ran on CPU and this machine has a GPU: "
                                                          "rerun it here with `pipeline.py run --only probe --force`")
    with pytest.raises(RoadtopError, match=r"^accum='auto' but no probe.json in .* measured .* on a GPU"):
        accums.notebook_accum("auto", SPEC, search=[tmp_path / "cpu"])
    gpu = _probe(tmp_path / "gpu", [T(1, "oom"), T(2, "oom")])
    accum, why = accums.auto_accum(gpu, gpu["runs"]["cnx"])
    assert accum is None and why.startswith("nothing fits (1: oom; 2: oom) under 16 GiB: use a smaller size")
    _probe(tmp_path / "gpu", [T(1, "oom"), T(2, peak=15.5), T(4, peak=9.0)])
    assert accums.notebook_accum("auto", SPEC, search=[tmp_path / "cpu", tmp_path / "gpu"]) == 4  # 15.5 > 16 - 0.75


def test_read_probes_names_a_probe_json_that_is_not_json(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / accums.PROBE_JSON).write_text("{not json")
    with pytest.raises(RoadtopError, match=r"bad/probe.json is not valid JSON: delete it and rerun"):
        list(accums.read_probes([tmp_path / "bad"]))
    assert list(accums.read_probes([tmp_path / "none"])) == []
