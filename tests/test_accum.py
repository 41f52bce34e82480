"""Gradient accumulation (batch 64 in pieces) and the accum choice from the probe's trials (roadtop.accum)."""

import torch
from torch import nn

from roadtop import accum as accums

BUDGET, MARGIN = 16.0, 0.75


def _fit_synthetic(accum: int, batchnorm: bool):
    """Train a small net for one epoch of 192 samples (3 effective batches of 64) with fastai's
    GradientAccumulation(64) at batch size 64 // accum, in a real Learner, in fp32; returns (state, optimiser steps)."""
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
    dls = DataLoaders(DataLoader(ds, bs=64 // accum, shuffle=False), DataLoader(ds[:64], bs=64), device="cpu")
    torch.manual_seed(1)
    bn = [nn.BatchNorm1d(16)] if batchnorm else []
    model = nn.Sequential(nn.Linear(8, 16), *bn, nn.ReLU(), nn.Linear(16, 2))
    steps = CountSteps()
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), cbs=[GradientAccumulation(64)] if accum > 1 else [])
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
