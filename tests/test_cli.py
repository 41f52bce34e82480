"""The local pipeline's CLI (roadtop.dag.cli): `status` lines and one `error:` line on bad input."""

import json

from conftest import tiny_plan

from roadtop.dag import cli
from roadtop.dag.records import FAILED


def rows(out: str) -> dict:
    """status output as {job: (state, rest)}."""
    got = {}
    for ln in out.splitlines():
        if ln.startswith(("train/", "ensemble")):
            name, state, *rest = ln.split(None, 2)
            got[name] = (state, rest[0] if rest else "")
    return got


def test_status_pending_failed_and_waiting(tmp_path, tiny_data, capsys):
    plan = tiny_plan(tmp_path, tiny_data)
    assert cli.main(["status", "--params", str(plan)]) == 0
    assert rows(capsys.readouterr().out) == {"train/res": ("pending", ""), "train/cnx": ("pending", ""),
                                             "ensemble": ("pending", "")}
    (tmp_path / "out" / "train" / "res").mkdir(parents=True)
    (tmp_path / "out" / "train" / "res" / FAILED).write_text(json.dumps({"cause": "NameError: x"}))
    cli.main(["status", "--params", str(plan)])
    got = rows(capsys.readouterr().out)
    assert got["train/res"] == ("failed", "NameError: x")
    assert got["ensemble"] == ("pending", ("waits: 1 run(s) not complete (train/res); --allow-partial ensembles "
                                          "the 1 complete run(s)"))
    cli.main(["status", "--params", str(plan), "--allow-partial"])
    assert rows(capsys.readouterr().out)["ensemble"] == ("pending", "(left out of the ensemble: train/res)")


def test_bad_plan_is_one_error_line_and_exit_2(tmp_path, capsys):
    assert cli.main(["validate", "--params", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "nope.yaml does not exist" in err


def test_pipeline_checks_the_kaggle_section_before_anything(tmp_path, capsys):
    """`validate` (and every command) through pipeline.py checks the kaggle: section: one line, exit 2."""
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("pipeline", ROOT / "pipeline.py")
    pipeline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pipeline)
    text = (ROOT / "params" / "paddy.yaml").read_text()
    for bad, said in (("max_gpu_sessions: 0", "kaggle.max_gpu_sessions=0 should be 1 or more"),
                      ("weekly_gpu_hours: lots", "kaggle.weekly_gpu_hours='lots' should be float")):
        key = bad.split(":")[0]
        f = tmp_path / "plan.yaml"
        f.write_text("\n".join(f"  {bad}" if ln.strip().startswith(f"{key}:") else ln for ln in text.splitlines()))
        assert pipeline.main(["validate", "--params", str(f)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and said in err[0], err


def test_a_bad_gpus_value_is_one_line_exit_2_and_nothing_written(tmp_path, tiny_data, capsys, monkeypatch):
    plan = tiny_plan(tmp_path, tiny_data)
    monkeypatch.setattr(cli.torch.cuda, "device_count", lambda: 0)  # this machine: no CUDA
    for gpus, said in (("0,x", "--gpus 0,x: 'x' is not a card number"),
                       ("auto", "--gpus auto: no GPU is visible")):
        assert cli.main(["run", "--params", str(plan), "--gpus", gpus]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {said}") and err.count("\n") == 1
    monkeypatch.setattr(cli.torch.cuda, "device_count", lambda: 1)  # CUDA with one card
    assert cli.main(["run", "--params", str(plan), "--gpus", "0,1"]) == 2
    assert capsys.readouterr().err.startswith("error: --gpus 0,1: card 1 is not visible (torch sees 1: 0..0)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.yaml"]  # no out folder, no lock


def test_jobs_and_gpus_together_or_a_bad_jobs_value_is_one_line_exit_2_and_nothing_written(tmp_path, tiny_data,
                                                                                             capsys):
    plan = tiny_plan(tmp_path, tiny_data)
    for args, said in ((["--jobs", "2", "--gpus", "0,1"], "--gpus 0,1 and --jobs 2: give one of them"),
                       (["--jobs", "two"], "--jobs two: not a number of jobs (1 or more)")):
        assert cli.main(["run", "--params", str(plan), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {said}") and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.yaml"]  # no out folder, no lock
