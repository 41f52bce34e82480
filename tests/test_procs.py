"""`run --gpus 0,1` on CPU: three tiny runs, at most two at once, each process seeing only its own card, the same
seeded results as one job at a time; SIGKILL mid-way, then a rerun finishes only what is missing. And the job
process itself: its record comes back, or a one-line failure when it dies without one."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, pipeline, tiny_plan

from roadtop.dag import procs
from roadtop.dag.render import Job
from roadtop.preds import load_preds

RUNS = ("train/a", "train/b", "train/c")
JOBS = (*RUNS, "ensemble")
STARTED = re.compile(r"\] (\S+): running .* on card (\S+) \(")
ENDED = re.compile(r"\] (\S+): (?:done in|FAILED after) .* on card (\S+)")


@pytest.fixture(scope="module")
def plan(tmp_path_factory, tiny_data):
    """Three one-epoch runs of the smallest timm model, each with its own seed, and their ensemble."""
    d = tmp_path_factory.mktemp("gpus")
    return tiny_plan(d, tiny_data, runs={r.split("/")[1]: {"arch": "test_resnet", "seed": k}
                                         for k, r in enumerate(RUNS)})


@pytest.fixture(scope="module")
def sequential(plan, tmp_path_factory):
    """The plan run one job at a time (no --gpus): the reference."""
    out = tmp_path_factory.mktemp("seq") / "out"
    pipeline("run", "--params", plan, "--out", out)
    return out


def manifests(out) -> set:
    return {j for j in JOBS if (out / j / "manifest.json").exists()}


@pytest.fixture(scope="module")
def interrupted(plan, tmp_path_factory):
    """`run --gpus 0,1` killed (SIGKILL, the whole process group) once a run is complete and the third is running,
    then run again: (out, first run's log, the jobs complete when it was killed, the rerun's log)."""
    out = tmp_path_factory.mktemp("par") / "out"
    log = out.parent / "first.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, str(ROOT / "pipeline.py"), "run", "--params", str(plan), "--out",
                                 str(out), "--gpus", "0,1"], cwd=ROOT, stdout=f, stderr=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.time() + 300
        while not (manifests(out) & {"train/a", "train/b"} and (out / "train/c/train.running.ipynb").exists()):
            assert proc.poll() is None and time.time() < deadline, f"it ended before it could be killed: " \
                                                                   f"{log.read_text()}"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = manifests(out)
    rerun = pipeline("run", "--params", plan, "--out", out, "--gpus", "0,1")
    return out, log.read_text(), done, rerun.stdout


def most_at_once(events) -> int:
    """The most jobs running at once, from (time, +1 start / -1 end) events (an end before a start at one time)."""
    now = top = 0
    for _, step in sorted(events):
        now += step
        top = max(top, now)
    return top


def log_events(log: str) -> list:
    """(line number, +1/-1) for each job start and end the pipeline logged."""
    return [(k, +1 if STARTED.search(ln) else -1) for k, ln in enumerate(log.splitlines())
            if STARTED.search(ln) or ENDED.search(ln)]


def notebook_span(nb: Path) -> tuple:
    """(start, end) of an executed notebook, as papermill recorded them."""
    meta = json.loads(nb.read_text())["metadata"]["papermill"]
    return tuple(datetime.fromisoformat(meta[k]).timestamp() for k in ("start_time", "end_time"))


def test_never_more_than_two_jobs_at_once_and_two_do_run_at_once(interrupted):
    out, first, _, rerun = interrupted
    assert most_at_once(log_events(first)) == 2  # a and b started together, c when a card came free
    assert most_at_once(log_events(rerun)) <= 2
    spans = {j: notebook_span(out / j / f"{j.split('/')[0]}.ipynb") for j in JOBS}
    assert most_at_once([(s, 1) for s, _ in spans.values()] + [(e, -1) for _, e in spans.values()]) <= 2
    assert spans["ensemble"][0] >= max(spans[r][1] for r in RUNS)  # the ensemble ran after all its members


def test_each_job_saw_only_its_own_card(interrupted):
    out, first, done, rerun = interrupted
    cards = {}
    for log, ran in ((first, done), (rerun, set(JOBS) - done)):
        cards |= {m[1]: m[2] for m in map(STARTED.search, log.splitlines()) if m and m[1] in ran}
    assert set(cards) == set(JOBS) and set(cards.values()) == {"0", "1"}
    for r in RUNS:  # what the notebook's own process saw, from its saved predictions
        assert load_preds(out / r).meta["cuda_visible_devices"] == cards[r], r


def test_the_seeded_results_equal_a_sequential_run(interrupted, sequential):
    out = interrupted[0]
    for r in RUNS:
        a, b = load_preds(out / r), load_preds(sequential / r)
        assert np.array_equal(a.test_probs, b.test_probs) and np.array_equal(a.holdout_probs, b.holdout_probs), r
        assert b.meta["cuda_visible_devices"] == os.environ.get("CUDA_VISIBLE_DEVICES")  # one slot: env unchanged
    for j in JOBS:
        fp = [json.loads((o / j / "manifest.json").read_text())["fingerprint"] for o in (out, sequential)]
        assert fp[0] == fp[1], j
    assert (out / "submission.csv").read_bytes() == (sequential / "submission.csv").read_bytes()


def test_after_sigkill_the_rerun_finishes_only_what_is_missing(interrupted):
    out, _, done, rerun = interrupted
    assert done and "train/c" not in done and "ensemble" not in done  # killed mid-way
    for j in JOBS:
        assert (f"{j}: up to date, skipped" in rerun) == (j in done), j
        assert (f"{j}: running" in rerun) == (j not in done), j
    assert manifests(out) == set(JOBS)


def test_a_job_process_hands_back_its_record(tmp_path):
    job = Job("train/x", "train", tmp_path / "missing.ipynb", {}, tmp_path / "x").spec()
    with procs.JobProcs(("3",)) as jp:
        jp.start(job, "fp", {}, "3")
        name, rec = jp.next()
    assert name == "train/x" and rec["state"] == "failed" and "missing.ipynb" in rec["cause"]
    assert json.loads((tmp_path / "x" / "failed.json").read_text())["cause"] == rec["cause"]


def test_a_job_process_that_ends_without_a_record_fails_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(procs, "CHILD", "this_module_does_not_exist")
    job = Job("train/x", "train", tmp_path / "train.ipynb", {}, tmp_path / "x").spec()
    with procs.JobProcs(("0", "1")) as jp:
        jp.start(job, "fp", {}, "1")
        _, rec = jp.next()
    assert rec["state"] == "failed"
    assert rec["cause"] == "its process ended with exit code 1 before recording how the job ended"


def gone(pid: int) -> bool:
    """True when process `pid` has ended (a zombie waiting for its parent to reap it counts as ended)."""
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def test_a_job_process_and_its_kernel_end_with_the_pipeline_that_started_them(tmp_path):
    """The pipeline killed alone (not its process group), its lock let go: its job must not write on."""
    import nbformat

    pids = tmp_path / "pids"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        f"import os, time\nopen({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{os.getppid()}}')\ntime.sleep(300)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "sleepy.ipynb")
    script = (f"from pathlib import Path\nfrom roadtop.dag import procs\nfrom roadtop.dag.render import Job\n"
              f"job = Job('x', 'train', Path({str(tmp_path / 'sleepy.ipynb')!r}), {{}}, Path({str(tmp_path / 'x')!r})).spec()\n"
              f"with procs.JobProcs(('0',)) as jp:\n    jp.start(job, 'fp', {{}}, '0')\n    jp.next()\n")
    pipe = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, start_new_session=True)
    kernel = job = None
    try:
        deadline = time.time() + 120
        while not (pids.exists() and len(pids.read_text().split()) == 2):
            assert pipe.poll() is None and time.time() < deadline, "the job's kernel never started"
            time.sleep(0.1)
        kernel, job = map(int, pids.read_text().split())
        os.kill(pipe.pid, signal.SIGKILL)  # the pipeline alone
        pipe.wait()
        deadline = time.time() + 60
        while not (gone(job) and gone(kernel)) and time.time() < deadline:
            time.sleep(0.2)
        assert gone(job) and gone(kernel)
        assert not (tmp_path / "x" / "failed.json").exists()  # it ended, writing nothing more
    finally:
        for pid in (pipe.pid, job, kernel):
            if pid and not gone(pid):
                os.kill(pid, signal.SIGKILL)
