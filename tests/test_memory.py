"""Memory probe, gradient accumulation and the 9 h plan: accum choice, budget refusal, accum: auto, the real probe."""

import json

import pytest
import torch
import yaml
from conftest import ROOT, pipeline, tiny_plan
from torch import nn

from roadtop import accum as accums
from roadtop import probe as probes
from roadtop.dag import budget
from roadtop.errors import RoadtopError
from roadtop.dag.plan import load_plan
from roadtop.dag.records import FAILED

BUDGET, MARGIN = 16.0, 0.75


# ---- gradient accumulation is batch 64, in pieces ----------------------------------------------------------------
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


# ---- the accum choice from hand-made measurements ------------------------------------------------------------
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


def test_oom_is_caught_recorded_and_the_probe_goes_on():
    freed = []

    def boom():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    rec = probes.guarded_trial(boom, 1, cleanup=lambda: freed.append(1))
    assert rec["status"] == "oom" and "out of memory" in rec["error"] and freed == [1]
    assert probes.is_oom(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    assert not probes.is_oom(ValueError("bad size"))
    fake, calls = {1: T(1, "oom"), 2: T(2, peak=12.0), 4: T(4, peak=8.0)}, []
    seen = probes.probe_run({"arch": "x"}, [1, 2, 4, 8], lambda a: (calls.append(a), fake[a])[1],
                            lambda r: accums.trial_fits(r, BUDGET, MARGIN))
    assert [r["accum"] for r in seen] == [1, 2]  # stopped at the first fit
    calls.clear()
    probes.probe_run({"arch": "x", "accum": 4}, [1, 2], lambda a: (calls.append(a), fake[a])[1],
                     lambda r: accums.trial_fits(r, BUDGET, MARGIN))
    assert calls == [1, 2, 4]  # an explicit accum is always measured


def test_budget_fraction_emulates_16gb_on_bigger_cards():
    assert probes.budget_fraction(16, 80 * 2**30) == pytest.approx(0.2)
    assert probes.budget_fraction(16, 12 * 2**30) == 1.0


def test_time_estimate_counts_epochs_validation_and_tta():
    counts = {"n_train": 1000, "n_holdout": 100, "n_test": 400}
    p = {"epochs": 12, "finetune": True, "tta_n": 4, "valid_pct": 0.2}
    # 13 epochs x 800 images x 0.01 s + 14 validations x 200 x 0.004 + 5 TTA passes x 500 x 0.004 + start-up
    assert budget.estimate_seconds(0.01, 0.004, counts, p, overhead_s=7) == pytest.approx(104 + 11.2 + 10 + 7)


# ---- plans: accum values, the injected runs, accum: auto, the budget --------------------------------------------
@pytest.mark.parametrize("accum, ok", [(1, True), (8, True), ("auto", True), ("big", False), (3, False), (0, False)])
def test_plan_accepts_int_or_auto_only(tmp_path, tiny_data, accum, ok):
    f = tiny_plan(tmp_path, tiny_data, defaults={"accum": accum}, probe={})
    if ok:
        assert load_plan(f).job("train/res").params["accum"] == accum
    else:
        with pytest.raises(RoadtopError, match=r"accum=.* is not allowed: use a positive divisor of 64") as e:
            load_plan(f)
        assert "\n" not in str(e.value)


def test_auto_without_probe_section_refused(tmp_path, tiny_data):
    with pytest.raises(RoadtopError, match="accum: auto needs the memory probe: add a `probe:` section"):
        load_plan(tiny_plan(tmp_path, tiny_data, defaults={"accum": "auto"}))


def test_probe_gets_the_train_runs(tmp_path, tiny_data):
    plan = load_plan(tiny_plan(tmp_path, tiny_data, defaults={"accum": "auto"},
                               runs={"res": {"arch": "test_resnet"}, "cnx": {"arch": "test_convnext", "accum": 2}},
                               probe={"accums": [1, 2]}))
    assert plan.jobs[0].name == "probe"
    assert plan.job("probe").params["runs"] == {
        "res": {"arch": "test_resnet", "item_method": "squish", "item_size": 64, "size": 32},
        "cnx": {"arch": "test_convnext", "item_method": "squish", "item_size": 64, "size": 32, "accum": 2}}
    assert plan.job("train/res").needs == ["probe"]
    with pytest.raises(RoadtopError, match="'runs' is set by the pipeline"):
        load_plan(tiny_plan(tmp_path, tiny_data, probe={"runs": {}}))


def _write_probe(plan, trials: dict, gpu=True, seconds=120.0, counts=None):
    """A hand-made probe.json for `plan`: run -> trials, with the plan's current specs."""
    pj = plan.job("probe")
    runs = {}
    for name, spec in pj.params["runs"].items():
        accum, why = accums.choose_accum(trials[name], BUDGET, MARGIN)
        runs[name] = {"spec": spec, "trials": trials[name], "accum": accum, "reason": why}
    info = {"device": "NVIDIA test" if gpu else "cpu", "gpu_measured": gpu}
    res = probes.probe_result(runs, info, counts or {"n_train": 9367, "n_holdout": 1040, "n_test": 3469},
                              {"gpu_budget_gb": BUDGET, "margin_gb": MARGIN, "time_budget_h": 9}, seconds)
    probes.save_probe(pj.out_dir, res)


def _paddy_like(tmp_path, tiny_data, **probe):
    """The tiny plan with 12-epoch fine_tune runs, as the real plan has, and a probe section."""
    return tiny_plan(tmp_path, tiny_data, defaults={"accum": "auto", "epochs": 12, "finetune": True, "tta_n": 4},
                     probe=probe)


def test_resolve_accum_needs_the_probe_then_takes_its_choice(tmp_path, tiny_data):
    plan = load_plan(_paddy_like(tmp_path, tiny_data))
    with pytest.raises(RoadtopError, match="the memory probe has not run; run `pipeline.py run --only probe`"):
        budget.resolve_accum(plan, plan.job("train/res"))
    _write_probe(plan, {"res": [T(1, "oom"), T(2, peak=12.2)], "cnx": [T(1, "oom"), T(2, "oom"), T(4, peak=9.0)]})
    assert budget.resolve_accum(plan, plan.job("train/res")) == 2
    assert budget.resolve_accum(plan, plan.job("train/cnx")) == 4
    (plan.job("probe").out_dir / FAILED).write_text(json.dumps({"cause": "NameError: x"}))
    with pytest.raises(RoadtopError, match=r"the memory probe failed \(NameError: x\)"):
        budget.resolve_accum(plan, plan.job("train/res"))


def test_resolve_accum_refuses_a_stale_probe_and_a_run_that_never_fits(tmp_path, tiny_data):
    plan = load_plan(_paddy_like(tmp_path, tiny_data))
    _write_probe(plan, {"res": [T(1, "oom"), T(2, "oom")], "cnx": [T(1, peak=3.0)]})
    with pytest.raises(RoadtopError, match=r"train/res: accum: auto, but nothing fits \(1: oom; 2: oom\)"):
        budget.resolve_accum(plan, plan.job("train/res"))
    plan2 = load_plan(_paddy_like(tmp_path, tiny_data, gpu_budget_gb=24.0))  # same out_dir, bigger budget
    plan2.job("train/cnx").params["size"] = 48  # the plan changed after the probe ran
    with pytest.raises(RoadtopError, match="the probe measured .* the plan now says"):
        budget.resolve_accum(plan2, plan2.job("train/cnx"))


def test_plan_over_9h_is_refused_naming_the_overflowing_runs(tmp_path, tiny_data):
    """Two fine_tune runs of 12 epochs on the real Paddy's 9367 images: at 0.15 s per image each takes about
    4.7 h, so the second overflows 9 h; --override accepts it; at 0.05 s/img the plan fits."""
    plan = load_plan(_paddy_like(tmp_path, tiny_data))
    _write_probe(plan, {"res": [T(1, "oom"), T(2, peak=12.0, s=0.15)], "cnx": [T(1, peak=10.0, s=0.15)]})
    one = budget.estimate_seconds(0.15, None, {"n_train": 9367, "n_holdout": 1040, "n_test": 3469},
                                  plan.job("train/res").params)
    assert 4.5 < one / 3600 < 5
    total = f"{(120 + 2 * one) / 3600:.2f}"
    with pytest.raises(RoadtopError, match=rf"refused: est\. {total} h > time_budget_h 9: run\(s\) cnx overflow"):
        budget.check_plan(plan, log=lambda *a: None)
    lines = []
    assert budget.check_plan(plan, override=True, log=lines.append) == 0
    assert any(ln.startswith("res ") and "auto 2" in ln and "12.00" in ln for ln in lines), lines
    assert "over budget, going on (--override)" in lines[-1]
    _write_probe(plan, {"res": [T(1, "oom"), T(2, peak=12.0, s=0.05)], "cnx": [T(1, peak=10.0, s=0.05)]})
    lines.clear()
    assert budget.check_plan(plan, log=lines.append) == 0 and lines[-1] == "within budget: OK"


def test_explicit_accum_that_does_not_fit_is_refused(tmp_path, tiny_data):
    plan = load_plan(tiny_plan(tmp_path, tiny_data, defaults={"accum": 1}, probe={}))
    _write_probe(plan, {"res": [T(1, "oom"), T(2, peak=12.0)], "cnx": [T(1, peak=10.0)]})
    with pytest.raises(RoadtopError, match=r"run\(s\) res do not fit 16 GiB at their accum"):
        budget.check_plan(plan, log=lambda *a: None)


def test_pipeline_plan_cli_exits_nonzero_over_budget(tmp_path, tiny_data):
    f = _paddy_like(tmp_path, tiny_data)
    _write_probe(load_plan(f), {"res": [T(1, peak=12.0, s=0.3)], "cnx": [T(1, peak=10.0, s=0.01)]})
    r = pipeline("plan", "--params", f, check=False)
    assert r.returncode == 2 and "run(s) res, cnx overflow" in r.stderr and "est. time" in r.stdout, r.stderr
    assert pipeline("plan", "--params", f, "--override").returncode == 0


# ---- the real probe, on CPU ----------------------------------------------------------------------------------
def test_probe_trial_on_cpu_times_and_marks_memory_unmeasured(tiny_data):
    from roadtop.paddy import split_files

    trn, _ = split_files(tiny_data, 0.1, 42)
    files = probes.probe_files(trn, 0, probes.images_needed(1))
    assert len(files) == len(trn)  # the tiny set's smallest class is topped up with every other image
    rec = probes.probe_trial(tiny_data, files, {"arch": "test_resnet", "item_size": 64, "size": 32}, 2, steps=1)
    assert rec["status"] == "ok", rec["error"]
    assert rec["peak_reserved_gb"] is None and rec["s_per_img"] > 0 and rec["s_per_img_infer"] > 0
    assert rec["bs"] == 32 and rec["batches"] == 4  # warm-up step of 2 batches + 1 timed step of 2


def test_demo_style_plan_probes_first_then_trains_with_auto(tmp_path, tiny_data):
    """The pipeline runs the probe notebook first; `accum: auto` then resolves to 1 on CPU; `plan` prints the table."""
    from roadtop.paddy import split_files

    f = tiny_plan(tmp_path, tiny_data, defaults={"accum": "auto"}, runs={"res": {"arch": "test_resnet"}},
                  probe={"accums": [1, 2], "steps": 1})
    pipeline("run", "--params", f, "--only", "probe")
    plan = load_plan(f)
    out = plan.job("probe").out_dir
    probe = json.loads((out / accums.PROBE_JSON).read_text())
    trn, hold = split_files(tiny_data, 0.1, 42)
    assert probe["gpu_measured"] is False and probe["counts"]["n_train"] == len(trn)
    assert probe["counts"]["n_holdout"] == len(hold) and probe["counts"]["n_test"] == 20
    assert [t["accum"] for t in probe["runs"]["res"]["trials"]] == [1]
    assert (out / probes.PROBE_PNG).stat().st_size > 0 and (out / probes.PROBE_CSV).exists()
    assert budget.resolve_accum(plan, plan.job("train/res")) == 1
    r = pipeline("plan", "--params", f)
    assert "res" in r.stdout and "auto 1" in r.stdout and "n/m" in r.stdout and "within budget: OK" in r.stdout


def test_demo_and_paddy_plans_have_a_probe():
    demo = load_plan(ROOT / "params" / "demo.yaml")
    assert demo.jobs[0].stage == "probe" and all(j.params["accum"] == "auto" for j in demo.jobs if j.stage == "train")
    paddy = yaml.safe_load((ROOT / "params" / "paddy.yaml").read_text())
    assert paddy["probe"]["gpu_budget_gb"] == 16 and paddy["probe"]["time_budget_h"] == 9
