"""Plans (roadtop.dag.plan): accum values, the probe's injected runs, jobs and their upstream from the stage table."""

import pytest
import yaml
from conftest import ROOT, tiny_plan

from roadtop.dag.plan import load_plan
from roadtop.dag.stages import ORDER, STAGES
from roadtop.errors import RoadtopError


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

def test_demo_and_paddy_plans_have_a_probe():
    demo = load_plan(ROOT / "params" / "demo.yaml")
    accums = {j.name: j.params["accum"] for j in demo.jobs if j.stage == "train"}
    assert demo.jobs[0].stage == "probe" and "auto" in accums.values() and 2 in accums.values()  # one run shows accum
    paddy = yaml.safe_load((ROOT / "params" / "paddy.yaml").read_text())
    assert paddy["probe"]["gpu_budget_gb"] == 15 and paddy["probe"]["time_budget_h"] == 9


def test_jobs_follow_the_stage_table(tmp_path, tiny_data):
    f = tiny_plan(tmp_path, tiny_data, probe={}, multitarget={"arch": "test_resnet", "size": 32, "item_size": 64},
                  collab={})
    plan = load_plan(f)
    assert [j.name for j in plan.jobs] == ["probe", "train/res", "train/cnx", "multitarget", "collab", "ensemble"]
    assert [j.stage for j in plan.jobs] == [s for s in ORDER for j in plan.jobs if j.stage == s]  # table order
    for j in plan.jobs:
        assert j.notebook.name == STAGES[j.stage].notebook
        assert j.needs == [n.name for n in plan.jobs if n.stage in STAGES[j.stage].upstream]
    assert plan.job("ensemble").needs == ["train/res", "train/cnx", "multitarget"]
    assert plan.job("multitarget").needs == ["probe"] and plan.job("collab").needs == []
    with pytest.raises(RoadtopError, match=r"unknown section\(s\) \['trian'\]: a plan has .*'ensemble'"):
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump({**yaml.safe_load(f.read_text()), "trian": {}}))
        load_plan(bad)


def test_predict_job_reads_the_runs_models_and_the_ensembles_choice(tmp_path, tiny_data):
    plan = load_plan(tiny_plan(tmp_path, tiny_data, predict={}))
    job = plan.job("predict")
    assert job.needs == ["train/res", "train/cnx", "ensemble"]
    assert job.params["ensemble_dir"] == str(plan.job("ensemble").out_dir)
    assert job.params["run_dirs"] == [str(plan.job("train/res").out_dir), str(plan.job("train/cnx").out_dir)]
    assert not STAGES["predict"].ensembles and STAGES["predict"].predicts  # it predicts, it does not ensemble
    raw = yaml.safe_load(tiny_plan(tmp_path, tiny_data, predict={}).read_text())
    del raw["ensemble"]
    (tmp_path / "no_ens.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(RoadtopError, match="predict predicts with the ensemble's models: add an `ensemble:` section"):
        load_plan(tmp_path / "no_ens.yaml")
    with pytest.raises(RoadtopError, match="'ensemble_dir' is set by the pipeline"):
        load_plan(tiny_plan(tmp_path, tiny_data, predict={"ensemble_dir": "x"}))
