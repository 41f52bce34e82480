"""Faults while writing: a full disk mid-job, an out_dir that cannot be written, two runs on one out_dir. One line
each, nothing good lost, and a rerun finishes what is missing."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import papermill.iorw
import pytest
from conftest import ROOT, tiny_plan

from roadtop.dag import cli, records
from roadtop.dag.lock import LOCK


@pytest.fixture(scope="module")
def done(tmp_path_factory, tiny_data):
    """A one-run tiny plan, run to the end: (plan file, out folder)."""
    d = tmp_path_factory.mktemp("faults")
    plan = tiny_plan(d, tiny_data, runs={"res": {"arch": "test_resnet"}})
    assert cli.main(["run", "--params", str(plan)]) == 0
    return plan, d / "out"


def _full_disk(monkeypatch, after: int = 1):
    """papermill's notebook writes fill the disk after `after` good saves: half the bytes land, then ENOSPC."""
    real, calls = papermill.iorw.papermill_io.write, []

    def write(buf, path, *a, **kw):
        calls.append(path)
        if len(calls) <= after:
            return real(buf, path, *a, **kw)
        with open(path, "w") as f:
            f.write(buf[: len(buf) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(papermill.iorw.papermill_io, "write", write)
    return calls


def test_full_disk_mid_job_fails_it_in_one_line_keeps_the_good_outputs_and_a_rerun_completes(done, monkeypatch,
                                                                                              capsys):
    plan, out = done
    good_nb, good_sub = (out / "ensemble" / "ensemble.ipynb").read_bytes(), (out / "submission.csv").read_bytes()
    capsys.readouterr()
    calls = _full_disk(monkeypatch)
    assert cli.main(["run", "--params", str(plan), "--force", "--only", "ensemble"]) == 1
    lines = capsys.readouterr().out.splitlines()
    running = out / "ensemble" / "ensemble.running.ipynb"
    assert calls and all(c == str(running) for c in calls)  # papermill wrote only to the temp name
    failed = [ln for ln in lines if "FAILED" in ln]
    assert failed == [f"[2/2] ensemble: FAILED after {failed[0].split('after ')[1].split('s:')[0]}s: OSError: "
                      f"[Errno 28] No space left on device: '{running}' (see {out / 'ensemble' / 'ensemble.ipynb'})"]
    assert lines[-1].startswith("to resume: fix the cause above (e.g. free disk space), then run the same command")
    assert not running.exists()  # the half-written copy is gone
    assert (out / "ensemble" / "ensemble.ipynb").read_bytes() == good_nb  # the last good one stays
    assert (out / "submission.csv").read_bytes() == good_sub
    cause = json.loads((out / "ensemble" / "failed.json").read_text())["cause"]
    assert cause == f"OSError: [Errno 28] No space left on device: '{running}'"

    def no_space(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(records, "atomic_write", no_space)  # failed.json does not fit either: the line says so
    assert cli.main(["run", "--params", str(plan), "--only", "ensemble"]) == 1
    failed = [ln for ln in capsys.readouterr().out.splitlines() if "FAILED" in ln]
    assert len(failed) == 1 and failed[0].endswith("(failed.json not written: No space left on device)")
    monkeypatch.undo()  # space freed
    assert cli.main(["run", "--params", str(plan)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "[1/2] train/res: up to date, skipped" in lines[1] and "[2/2] ensemble: running" in lines[2]
    assert json.loads((out / "ensemble" / "manifest.json").read_text())["outputs"]
    assert (out / "submission.csv").read_bytes() == good_sub  # same inputs, same submission


@pytest.mark.parametrize("cmd", ["validate", "check", "status", "run"])
def test_an_out_dir_that_is_a_file_is_one_line_before_anything(tmp_path, tiny_data, capsys, cmd):
    plan = tiny_plan(tmp_path, tiny_data)
    (tmp_path / "out").write_text("a file where the outputs would go")
    assert cli.main([cmd, "--params", str(plan)]) == 2
    assert capsys.readouterr().err == (f"error: out_dir {tmp_path / 'out'}: {tmp_path / 'out'} is a file, not a "
                                       f"folder: pick another --out (or out_dir in the plan)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "plan.yaml"]  # nothing written


def test_a_second_run_on_the_same_out_dir_stops_at_once_naming_the_holder_and_a_killed_ones_lock_is_taken_over(
        tmp_path, tiny_data, capsys):
    plan = tiny_plan(tmp_path, tiny_data, runs={"res": {"arch": "test_resnet", "epochs": 30}})
    out, lock = tmp_path / "out", tmp_path / "out" / LOCK
    first = subprocess.Popen([sys.executable, str(ROOT / "pipeline.py"), "run", "--params", str(plan)], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not (lock.exists() and lock.read_text()):
            assert first.poll() is None and time.time() < deadline, "the first run ended or never took the lock"
            time.sleep(0.1)
        holder = json.loads(lock.read_text())
        assert holder["pid"] == first.pid and holder["command"].startswith("pipeline.py run --params")
        t0 = time.time()
        assert cli.main(["run", "--params", str(plan)]) == 2
        assert time.time() - t0 < 5  # at once: no data check, no job
        assert capsys.readouterr().err == (
            f"error: {out} is in use by another run (pid {first.pid}, started {holder['started']} "
            f"({holder['command']})): wait for it to end, or pass another --out\n")
        assert not (out / "train" / "res" / "manifest.json").exists()
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the first run dies holding the lock: its file stays behind
        first.wait()
    assert json.loads(lock.read_text())["pid"] == first.pid
    assert cli.main(["run", "--params", str(plan), "--only", "nothing"]) == 2  # it takes the lock, then refuses
    out_lines = capsys.readouterr().out.splitlines()
    assert out_lines[0] == (f"took over the lock of a run that ended without letting go (pid {first.pid}, started "
                            f"{holder['started']} ({holder['command']})): {lock}")
    assert not lock.exists()  # let go when the run ended
