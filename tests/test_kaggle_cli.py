"""`pipeline.py kaggle run | push | status | collect | submit | weights` (roadtop.kaggle.cli) against the fake
Kaggle: each subcommand, its exit codes and one-line errors."""

import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
pytest.register_assert_rewrite("fake_kaggle")  # its helpers assert too
from fake_kaggle import ref  # noqa: E402
from test_kaggle_flow import _probed, _real_plan  # noqa: E402

from roadtop.paths import ROOT  # noqa: E402

pytest_plugins = ["fake_kaggle"]


def test_pipeline_kaggle_subcommands(plan, fake, capsys, tmp_path):
    spec = importlib.util.spec_from_file_location("pipeline", ROOT / "pipeline.py")
    pipeline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pipeline)

    def run(*args):
        return pipeline.main(["kaggle", *args, "--params", str(plan.source)])

    assert run("push", "--dry-run") == 0
    assert fake.calls("SaveKernel") == []
    assert run("push", "--only", "train/*") == 0
    assert len(fake.calls("SaveKernel")) == 2
    assert run("status", "--once") == 0
    assert "roadtop-kdemo-train-resnet" in capsys.readouterr().out
    assert run("collect", "--runs", "nope") == 2
    assert capsys.readouterr().err.startswith("error: --only nope: no such job among those pushed")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "test_convnext.safetensors").write_bytes(b"w")
    assert run("weights", str(tmp_path / "w"), "--no-upload") == 0  # the plan's pretrained archs only
    staged = plan.out_dir / "kaggle" / "weights" / "timm-weights"
    assert sorted(p.name for p in staged.iterdir()) == ["dataset-metadata.json", "test_convnext.safetensors"]
    # `kaggle run --submit`: the rest of the plan, then the submission (a short poll, real time)
    plan.source.write_text(plan.source.read_text().replace("poll_interval: 7", "poll_interval: 0.01"))
    for run_name in ("train/convnext", "train/resnet"):
        fake.set_statuses(ref(run_name), "RUNNING", "COMPLETE")
    fake.set_statuses(ref("ensemble"), "QUEUED", "COMPLETE")
    fake.outputs[ref("ensemble")]["submission.csv"] = b"image_id,label\n200001.jpg,blast\n"
    assert run("push", "--submit") == 2
    assert "push --submit needs --wait" in capsys.readouterr().err
    assert run("run", "--submit", "-m", "from the cli") == 0
    assert [s["slug"] for s in fake.calls("SaveKernel")] == [ref("train/convnext"), ref("train/resnet"),
                                                             ref("ensemble")]
    assert fake.calls("CreateSubmission")[0]["submissionDescription"] == "from the cli"
    assert "complete" in capsys.readouterr().out


def test_the_cli_refuses_over_the_quota_with_exit_2_and_override_goes_ahead(fake, tmp_path, capsys):
    plan = _real_plan(tmp_path)
    _probed(plan, 0.1)
    fake.quota_used_h = 20.0
    spec = importlib.util.spec_from_file_location("pipeline", ROOT / "pipeline.py")
    pipeline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pipeline)
    assert pipeline.main(["kaggle", "push", "--params", str(plan.source)]) == 2
    assert "error: kaggle push refused: the GPU kernels need est." in capsys.readouterr().err
    assert fake.calls("SaveKernel") == []
    assert pipeline.main(["kaggle", "push", "--params", str(plan.source), "--override"]) == 0
    assert len(fake.calls("SaveKernel")) == 2 and "going on (--override)" in capsys.readouterr().out
    assert pipeline.main(["plan", "--params", str(plan.source), "--override"]) == 0
    out = capsys.readouterr().out
    assert "kaggle: weekly GPU quota 10.00 h left of 30 (Kaggle's quota_view; refreshes 2026-12-05 00:00 UTC)" in out
