"""A rendered plan (roadtop.dag.render): frozen jobs that `status` and `run` read and never change; what is only
known later (the data folder, accum from the probe, the ensemble's members) comes back as new jobs."""

import copy
import dataclasses
import json
import pickle

import pytest
from conftest import DEMO, tiny_plan

from roadtop.dag import runner
from roadtop.dag.plan import load_plan, pick
from roadtop.dag.records import State
from roadtop.dag.render import FrozenDict, FrozenList, freeze, thaw, with_data
from roadtop.errors import RoadtopError


def test_frozen_values_refuse_changes_and_stay_dicts_and_lists():
    v = freeze({"a": [1, {"b": [2]}], "c": {"d": 3}})
    assert v == {"a": [1, {"b": [2]}], "c": {"d": 3}} and isinstance(v["a"][1], FrozenDict)
    assert json.dumps(v) == '{"a": [1, {"b": [2]}], "c": {"d": 3}}'
    for change in (lambda: v.__setitem__("a", 1), lambda: v["a"].append(4), lambda: v["a"][1]["b"].extend([5]),
                   lambda: v["c"].update(d=4), lambda: v.pop("c"), lambda: v["a"].sort()):
        with pytest.raises(TypeError, match="read-only: make a new job with Job.with_params"):
            change()
    assert copy.deepcopy(v) == v and isinstance(pickle.loads(pickle.dumps(v))["a"], FrozenList)
    plain = thaw(v)
    plain["a"][1]["b"].append(9)  # a thawed copy is the caller's own
    assert type(plain["a"]) is list and v["a"][1]["b"] == [2]


def test_a_job_is_frozen_and_with_params_makes_a_new_one(tmp_path, tiny_data):
    plan = load_plan(tiny_plan(tmp_path, tiny_data))
    job = plan.job("train/res")
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.params = {}
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.jobs = ()
    with pytest.raises(TypeError):
        job.params["epochs"] = 3
    new = job.with_params(epochs=3)
    assert new.params["epochs"] == 3 and job.params["epochs"] == 1 and new.name == job.name
    assert isinstance(plan.jobs, tuple) and isinstance(job.needs, tuple)
    moved = with_data(plan, tmp_path / "data", ["a.jpg"])
    assert moved.job("train/res").params["data_path"] == str(tmp_path / "data")
    assert moved.job("train/res").params["skip_images"] == ["a.jpg"]
    assert plan.job("train/res").params["skip_images"] == [] and plan == load_plan(plan.source)


def test_one_way_to_pick_jobs():
    names = ["probe", "train/res", "train/cnx", "train/cnx-fold0", "ensemble"]
    assert pick(names) == names and pick(names, []) == names
    assert pick(names, ["res", "ensemble"]) == ["train/res", "ensemble"]
    assert pick(names, ["train/*"]) == ["train/res", "train/cnx", "train/cnx-fold0"]
    assert pick(names, ["cnx*", "train/res"]) == ["train/res", "train/cnx", "train/cnx-fold0"]
    with pytest.raises(RoadtopError) as e:
        pick(names, ["res", "nope"], "in plan p.yaml")
    assert str(e.value) == ("--only nope: no such job in plan p.yaml: pick from probe, train/res, train/cnx, "
                            "train/cnx-fold0, ensemble (a name or a glob like 'train/*')")


def test_status_and_run_only_probe_leave_the_rendered_demo_plan_as_it_was(tmp_path, capsys):
    """The demo plan, rendered once: `status` and `run --only probe` (the library functions the CLI calls) read its
    jobs and change none of them; accum: auto and the data folder reach the steps as new jobs."""
    plan = load_plan(DEMO, tmp_path / "out")
    before = copy.deepcopy(plan.jobs)
    assert plan.jobs == load_plan(DEMO, tmp_path / "out").jobs  # rendering is deterministic
    ready, data, data_fp = runner.prepare_data(plan, check=False)
    steps = list(runner.walk(ready, data_fp, projected=True))
    assert {s.job.name: s.state for s in steps if s.state is not State.PENDING} == \
        {"train/vit_squish": State.CANNOT_START, "train/resnet_squish": State.CANNOT_START}  # auto: no probe yet
    assert plan.jobs == before and all(not j.params.get("data_path") for j in plan.jobs)
    assert ready.job("train/vit_squish").params["data_path"] == str(data)

    assert runner.run_plan(plan, only=["probe"]) == 0
    assert plan.jobs == before
    out = capsys.readouterr().out
    assert "[1/8] probe: done in" in out and "train/vit_squish: FAILED" not in out
    ready, _, data_fp = runner.prepare_data(plan, check=False)
    steps = {s.job.name: s for s in runner.walk(ready, data_fp, projected=True)}
    assert steps["probe"].state is State.COMPLETE
    auto = steps["train/vit_squish"]
    assert auto.state is State.PENDING and isinstance(auto.job.params["accum"], int)  # the probe's choice
    assert plan.job("train/vit_squish").params["accum"] == "auto" and plan.jobs == before
    assert steps["ensemble"].job.params["run_dirs"] == [str(plan.job(n).out_dir) for n in plan.job("ensemble").needs]
    assert plan.job("ensemble").params["run_dirs"] == []
    with pytest.raises(TypeError):
        plan.job("probe").params["runs"]["vit_squish"] = {}
