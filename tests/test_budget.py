"""Time and memory budgets (roadtop.dag.budget): accum: auto from the probe, time estimates, the 9 h refusal."""

import json

import pytest
from conftest import pipeline, tiny_plan
from test_accum import BUDGET, MARGIN, T

from roadtop import accum as accums
from roadtop import probe as probes
from roadtop.dag import budget
from roadtop.dag.plan import load_plan
from roadtop.dag.records import FAILED
from roadtop.errors import RoadtopError


def test_time_estimate_counts_epochs_validation_and_tta():
    counts = {"n_train": 1000, "n_holdout": 100, "n_test": 400}
    p = {"epochs": 12, "finetune": True, "tta_n": 4, "valid_pct": 0.2}
    # 13 epochs x 800 images x 0.01 s + 14 validations x 200 x 0.004 + 5 TTA passes x 500 x 0.004 + start-up
    assert budget.estimate_seconds(0.01, 0.004, counts, p, overhead_s=7) == pytest.approx(104 + 11.2 + 10 + 7)

def test_a_stage_that_trains_two_models_expects_twice_the_training_time():
    """multitarget trains the disease-only model beside the multi-target one, each for the run's epochs."""
    counts = {"n_train": 1000, "n_holdout": 100, "n_test": 400}
    p = {"epochs": 12, "finetune": True, "tta_n": 4, "valid_pct": 0.2}
    assert budget.estimate_seconds(0.01, 0.004, counts, p, overhead_s=7, models=2) == \
        pytest.approx(2 * (104 + 11.2) + 10 + 7)
    from roadtop.dag.stages import stage
    assert stage("multitarget").models == 2 and stage("train").models == 1


def test_the_plans_estimate_for_multitarget_counts_its_two_models(tmp_path, tiny_data):
    same = {"arch": "test_resnet", "item_method": "squish", "item_size": 64, "size": 32}
    plan = load_plan(tiny_plan(tmp_path, tiny_data, runs={"res": {"arch": "test_resnet"}}, probe={},
                               multitarget={**same, "epochs": 1, "tta_n": 1}))
    _write_probe(plan, {"res": [T(1, peak=3.0, s=0.05)], "multitarget": [T(1, peak=3.0, s=0.05)]})
    got = budget.expected_seconds(plan)
    train_part = budget.estimate_seconds(0.05, None, {"n_train": 9367, "n_holdout": 0, "n_test": 0},
                                         plan.job("train/res").params, overhead_s=0)
    assert got["multitarget"] - got["train/res"] == pytest.approx(train_part)  # a second model's epochs, no more


def test_expected_seconds_are_the_plans_estimates_per_job_and_none_before_the_probe(tmp_path, tiny_data):
    plan = load_plan(_paddy_like(tmp_path, tiny_data))
    assert budget.expected_seconds(plan) == {}  # the probe has not run
    _write_probe(plan, {"res": [T(1, "oom"), T(2, peak=12.0, s=0.15)], "cnx": [T(1, peak=10.0, s=0.05)]})
    got = budget.expected_seconds(plan)
    rows = {r["job"]: r["seconds"] for r in budget.plan_rows(plan)[0]}
    assert got == rows and set(got) == {"train/res", "train/cnx"} and got["train/res"] > 2.5 * got["train/cnx"]
    assert budget.expected_seconds(load_plan(tiny_plan(tmp_path, tiny_data))) == {}  # a plan without a probe


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
    cnx = plan2.job("train/cnx").with_params(size=48)  # the plan changed after the probe ran
    with pytest.raises(RoadtopError, match="the probe measured .* the plan now says"):
        budget.resolve_accum(plan2, cnx)

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
    assert any(ln.lstrip().startswith("res ") and "auto 2" in ln and "12.00" in ln for ln in lines), lines
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
    assert "kaggle: one run per kernel would be 2 GPU kernels" in r.stdout  # pipeline.py adds the Kaggle fan-out
    assert "kaggle: 1 GPU kernel (packs of up to 2 runs" in r.stdout  # (roadtop.kaggle.budget): both on one T4 x2
    assert pipeline("plan", "--params", f, "--override").returncode == 0

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
