"""Plans (roadtop.dag.plan): accum values, the probe's injected runs, jobs and their upstream from the stage table,
and every bad value refused in one line naming the file, the key path and the fix."""

import ast

import pytest
import yaml
from conftest import ROOT, tiny_plan

from roadtop.dag import cli
from roadtop.dag.params import LIMITS, check_limit, notebook_params
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
    assert plan.job("train/res").needs == ("probe",)
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
        assert j.needs == tuple(n.name for n in plan.jobs if n.stage in STAGES[j.stage].upstream)
    assert plan.job("ensemble").needs == ("train/res", "train/cnx", "multitarget")
    assert plan.job("multitarget").needs == ("probe",) and plan.job("collab").needs == ()
    with pytest.raises(RoadtopError, match=r"unknown section\(s\) \['trian'\]: a plan has .*'ensemble'"):
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump({**yaml.safe_load(f.read_text()), "trian": {}}))
        load_plan(bad)


def test_predict_job_reads_the_runs_models_and_the_ensembles_choice(tmp_path, tiny_data):
    plan = load_plan(tiny_plan(tmp_path, tiny_data, predict={}))
    job = plan.job("predict")
    assert job.needs == ("train/res", "train/cnx", "ensemble")
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


RUN = "train: {runs: {a: {arch: test_resnet%s}}}\n"


@pytest.mark.parametrize("text, line", [
    ("train:\n  runs:\n    a: {arch: test_resnet}\n    a: {arch: test_vit}\n",
     "p.yaml line 4: train.runs.a is given twice (also line 3): keep one of them (YAML would silently keep the last)"),
    ("train:\n  runs:\n    a:\n      arch: test_resnet\n      epochs: 1\n      epochs: 2\n",
     "p.yaml line 6: train.runs.a.epochs is given twice (also line 5): keep one of them"),
    ("data: {path: x, path: y}\ntrain: {runs: {a: {arch: test_resnet}}}\n", "p.yaml line 1: data.path is given twice"),
    ("train: {runs: {'..': {arch: test_resnet}}}\n", "p.yaml: run name '..' under train.runs is not a plain name: "
     "rename it with letters, digits, _, - and . only (it names the run's folder)"),
    ("train: {runs: {'.': {arch: test_resnet}}}\n", "p.yaml: run name '.' under train.runs is not a plain name"),
    ("train: {runs: {'': {arch: test_resnet}}}\n", "p.yaml: run name '' under train.runs is not a plain name"),
    ("train: {runs: {'../../x': {arch: test_resnet}}}\n", "p.yaml: run name '../../x' under train.runs is not a plain"),
    ("train: {runs: {a b: {arch: test_resnet}}}\n", "p.yaml: run name 'a b' under train.runs is not a plain name"),
    (RUN % ", epochs: 0", "p.yaml run 'a': train.runs.a.epochs=0 is out of range: it must be > 0; "
                          "fix train.runs.a.epochs in the plan"),
    ("train: {defaults: {epochs: -3}, runs: {a: {arch: test_resnet}}}\n",
     "p.yaml run 'a': train.defaults.epochs=-3 is out of range: it must be > 0; fix train.defaults.epochs in the plan"),
    (RUN % ", lr: -1", "p.yaml run 'a': train.runs.a.lr=-1 is out of range: it must be > 0; fix train.runs.a.lr"),
    (RUN % ", lr: .nan", "p.yaml run 'a': train.runs.a.lr=nan is not a finite number: set train.runs.a.lr to a number"),
    (RUN % ", size: 0", "p.yaml run 'a': train.runs.a.size=0 is out of range: it must be > 0"),
    (RUN % ", item_size: [0, 64]", "p.yaml run 'a': train.runs.a.item_size=[0, 64] is out of range: every number in "
                                   "it must be > 0; fix train.runs.a.item_size in the plan"),
    (RUN % ", item_method: stretch", "p.yaml run 'a': train.runs.a.item_method='stretch' is unknown: set "
                                     "train.runs.a.item_method to one of squish, crop, pad"),
    (RUN % ", holdout_pct: 0", "p.yaml run 'a': train.runs.a.holdout_pct=0 is out of range: it must be in (0, 1)"),
    ("data: {holdout_pct: 1.5}\n" + RUN % "", "p.yaml: data.holdout_pct=1.5 is out of range: it must be in (0, 1); "
                                              "fix data.holdout_pct in the plan"),
    ("data: {labels: blast}\n" + RUN % "", "p.yaml: data.labels='blast' is str: write data.labels as a list, "
                                           "e.g. [a, b]"),
    ("data: {demo: {n_test: 0}}\n" + RUN % "", "p.yaml: data.demo.n_test=0 is out of range: it must be > 0; "
                                               "fix data.demo.n_test in the plan"),
    ("data: {demo: {n_tests: 5}}\n" + RUN % "", "p.yaml: unknown data.demo key(s) ['n_tests']: it takes n_train, "
                                                "n_test, size, seed"),
    ("ensemble: {method: best}\n", "p.yaml ensemble: ensemble.method='best' is unknown: set ensemble.method to one "
                                   "of auto, mean, greedy, optimize"),
    ("ensemble: {weights: {a: -1}}\n", "p.yaml ensemble: ensemble.weights={'a': -1} is out of range: every number "
                                       "in it must be >= 0"),
    ("collab: {sample: 0}\n", "p.yaml collab: collab.sample=0 is out of range: it must be in (0, 1]"),
    ("# nothing yet\n", "p.yaml is empty: a plan needs at least one stage section (probe, train, multitarget, collab, "
                        "ensemble, predict); see params/demo.yaml"),
    ("data: {path: x}\n", "p.yaml: no stage section, nothing to run: add one of probe, train, multitarget, collab, "
                          "ensemble, predict (see params/demo.yaml)"),
])
def test_bad_plan_values_are_one_line_naming_file_key_and_fix(tmp_path, capsys, text, line):
    """Through the CLI: exit 2, one `error:` line naming the plan file, the key path and the fix; nothing written."""
    f = tmp_path / "p.yaml"
    f.write_text(text)
    assert cli.main(["validate", "--params", str(f), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {tmp_path}/" if " is empty" in line else "error: "), err
    assert line in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.yaml"]  # nothing written


def test_params_that_is_a_folder_or_a_binary_file(tmp_path, capsys):
    (tmp_path / "d.yaml").mkdir()
    (tmp_path / "b.yaml").write_bytes(bytes(range(256)))
    for name, said in (("d.yaml", "is a folder, not a plan: pass --params with a YAML file (e.g. params/demo.yaml)"),
                       ("b.yaml", "is not a text file (not UTF-8): pass --params with a YAML plan")):
        assert cli.main(["validate", "--params", str(tmp_path / name)]) == 2
        assert capsys.readouterr().err == f"error: {tmp_path / name} {said}\n"


def test_limits_hold_for_every_notebook_default_and_name_declared_parameters():
    """The constraint table agrees with the parameters cells: every default is within it, every name in it is a
    parameter some notebook declares (or a data: key), and each list of choices is the one the help line names."""
    declared = {}
    for st in STAGES.values():
        for k, info in notebook_params(ROOT / "notebooks" / st.notebook).items():
            declared.setdefault(k, []).append(info)
            check_limit(k, ast.literal_eval(info["default"]), st.notebook)  # raises if a default breaks its limit
    assert {k for k in LIMITS if not k.startswith("demo.")} <= set(declared), set(LIMITS) - set(declared)
    for k, rule in LIMITS.items():
        if isinstance(rule, tuple):
            assert any(all(c in info["help"] for c in rule) for info in declared[k]), (k, rule)
