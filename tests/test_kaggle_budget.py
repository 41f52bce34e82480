"""The plan's Kaggle fan-out against Kaggle's limits (roadtop.kaggle.budget): GPU hours against the weekly quota,
the wall clock under the session cap, packs, a code competition's rerun; what `pipeline.py plan` prints."""

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
pytest.register_assert_rewrite("fake_kaggle")  # its helpers assert too
from fake_kaggle import code_competition  # noqa: E402
from test_kaggle_flow import _probed, _real_plan, kaggle_budget_secs  # noqa: E402

from roadtop.dag import budget  # noqa: E402
from roadtop.errors import RoadtopError  # noqa: E402
from roadtop.kaggle.budget import fan_out_hours, kaggle_budget, quota_problem  # noqa: E402
from roadtop.kaggle.client import Quota  # noqa: E402

pytest_plugins = ["fake_kaggle"]


def test_fan_out_starts_each_kernel_when_a_session_frees_and_the_quota_check_says_what_is_left():
    assert fan_out_hours([3600.0, 7200.0, 3600.0], 2) == (4.0, 2.0)  # the third starts when the first ends
    assert fan_out_hours([3600.0, 7200.0, 3600.0], 1) == (4.0, 4.0)
    assert fan_out_hours([], 2) == (0.0, 0.0)
    q = Quota(left_h=5.0, total_h=30.0)
    assert quota_problem(5.0, q) == ""
    assert quota_problem(5.5, q) == ("the GPU kernels need est. 5.50 GPU h, the weekly GPU quota has 5.00 h left "
                                     f"(of 30 h; it refreshes {q.refresh_text()})")


def test_plan_checks_the_weekly_gpu_quota_and_prints_the_fan_out_wall_clock(tmp_path, monkeypatch):
    """The real plan: 9 GPU kernels, each in a Kaggle session of its own: the session limit is per run, the weekly
    quota (kaggle.weekly_gpu_hours without credentials) for the total."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    plan = _real_plan(tmp_path)
    _probed(plan, 0.1)
    lines = []
    assert budget.check_plan(plan, log=lines.append, checks=[kaggle_budget]) == 0  # 27 GPU h in all, but no run near 9 h: not refused
    assert lines[-1] == "within budget: OK"
    assert any(ln.startswith("total ") and "h on one GPU, one Kaggle session per GPU kernel (kaggle.session_hours"
               in ln for ln in lines)
    rows, _, _ = budget.plan_rows(plan)
    total, longest = sum(r["seconds"] for r in rows), max(r["seconds"] for r in rows)
    assert len(rows) == 9 and 20 * 3600 < total < 30 * 3600
    assert any(ln.startswith("kaggle: internet on (file competition: timm fetches pretrained weights from its hub")
               for ln in lines)
    (fan,) = [ln for ln in lines if ln.startswith("kaggle: 9 GPU kernels")]
    gpu_h, wall_h = re.fullmatch(r"kaggle: 9 GPU kernels, ([\d.]+) GPU h; ([\d.]+) h wall "
                                 r"clock at 2 at once \(max_gpu_sessions\), then the ensemble", fan).groups()
    assert "kaggle: weekly GPU quota 30.00 h left of 30 (kaggle.weekly_gpu_hours, no credentials to ask; " \
           "refreshes unknown)" in lines
    assert float(gpu_h) == round(total / 3600, 2)
    assert total / 2 / 3600 - 0.01 <= float(wall_h) <= (total / 2 + longest) / 3600
    _probed(plan, 0.15)  # ~40 GPU hours: more than a week's quota
    with pytest.raises(RoadtopError, match=r"the GPU kernels need est. [\d.]+ GPU h, the weekly GPU quota has 30.00 h "
                       r"left \(of 30 h; it refreshes unknown\)"):
        budget.check_plan(plan, log=lambda s: None, checks=[kaggle_budget])
    plan.kaggle["max_gpu_sessions"] = 1
    plan.kaggle["weekly_gpu_hours"] = 50
    lines.clear()
    assert budget.check_plan(plan, override=True, log=lines.append, checks=[kaggle_budget]) == 0
    assert lines[-1] == "within budget: OK"  # 40 GPU h of 50
    (fan,) = [ln for ln in lines if ln.startswith("kaggle: 9 GPU kernels")]
    assert fan.endswith("h wall clock at 1 at once (max_gpu_sessions), then the ensemble")
    assert f"{budget.plan_rows(plan)[0][-1]['cumulative'] / 3600 - 60 / 3600:.2f} h wall clock" in fan


def test_plan_prints_packs_and_one_run_per_kernel_and_packs_need_at_most_60_percent(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    plan = _real_plan(tmp_path, packs=True)
    _probed(plan, 0.1)
    lines = []
    assert budget.check_plan(plan, log=lines.append, checks=[kaggle_budget]) == 0
    (one,) = [ln for ln in lines if ln.startswith("kaggle: one run per kernel would be")]
    (packs,) = [ln for ln in lines if ln.startswith("kaggle: 5 GPU kernels (packs of up to 2 runs")]
    num = r"([\d.]+) GPU h; ([\d.]+) h wall clock at 2 at once"
    one_gpu, one_wall = map(float, re.search(num, one).groups())
    pack_gpu, pack_wall = map(float, re.search(num, packs).groups())
    assert one.startswith("kaggle: one run per kernel would be 9 GPU kernels")
    assert pack_gpu <= 0.6 * one_gpu and pack_wall < one_wall
    secs = sorted(kaggle_budget_secs(plan), reverse=True)
    assert pack_gpu == round(sum(secs[0::2]) / 3600, 2)  # longest with longest: each pack costs its first run


def test_plan_estimates_the_code_competitions_rerun_and_refuses_one_over_its_limit(tmp_path):
    """The rerun predicts the hidden test set with every member: the probe's inference seconds an image x TTA
    passes x test images x hidden_test_factor, summed over the members, against kaggle.rerun_limit_h."""
    plan = code_competition(_real_plan(tmp_path, "  weights_dataset: someone/tw\n"))
    _probed(plan, 0.1)  # no inference timing: a forward pass is taken as a third of a training step
    lines = []
    assert budget.check_plan(plan, log=lines.append, checks=[kaggle_budget]) == 0
    runs = [j for j in plan.jobs if j.stage in ("train", "multitarget")]
    want = sum((j.params["tta_n"] + 1) * 3469 * 0.1 * budget.INFER_RATIO for j in runs) / 3600
    (rerun,) = [ln for ln in lines if "the code competition's rerun" in ln]
    assert rerun == (f"kaggle: the code competition's rerun predicts the test set with 9 models: est. {want:.2f} h "
                     f"(x hidden_test_factor 1) of rerun_limit_h 9")
    plan.kaggle["hidden_test_factor"] = 9 / want + 0.5  # a hidden set that many times larger: over 9 h
    with pytest.raises(RoadtopError, match=r"plan paddy refused: the rerun's est. [\d.]+ h > kaggle.rerun_limit_h 9 "
                                           r"\(fewer members or tta_n"):
        budget.check_plan(plan, log=lambda s: None, checks=[kaggle_budget])
    plan.kaggle["rerun_limit_h"] = 100.0
    assert budget.check_plan(plan, log=lambda s: None, checks=[kaggle_budget]) == 0
