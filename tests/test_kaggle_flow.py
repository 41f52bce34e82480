"""The Kaggle flow against a fake Kaggle on 127.0.0.1, through the real `kaggle` client: push under the GPU session
cap, status, collect, submit, `kaggle run`, and the command line."""

import io
import json
import sys
from pathlib import Path

import nbformat
import pytest
from bs4 import BeautifulSoup
from slugify import slugify as kaggle_slugify  # the slugify `kaggle kernels push` checks titles with

from roadtop import probe
from roadtop.dag.budget import expected_seconds
from roadtop.dag.plan import load_plan
from roadtop.errors import RoadtopError
from roadtop.kaggle import flow, record, settings
from roadtop.paths import ROOT

sys.path.insert(0, str(Path(__file__).parent))
pytest.register_assert_rewrite("fake_kaggle")  # its helpers assert too
from fake_kaggle import USER, WEIGHTS, Sleeps, code_competition, params_of, push_all, ref

pytest_plugins = ["fake_kaggle"]


def test_push_sends_training_kernels_then_the_ensemble_that_reads_them(plan, fake):
    lines = []
    assert flow.push(plan, log=lines.append, sleep=Sleeps()) == 0
    saves = fake.calls("SaveKernel")
    assert [s["slug"] for s in saves] == [ref("train/convnext"), ref("train/resnet")]  # ensemble waits
    assert lines[-1].startswith("ensemble: waits (needs train/convnext, train/resnet); rerun")

    t = saves[0]
    assert kaggle_slugify(t["newTitle"]) == t["slug"].split("/")[1]
    assert (t["language"], t["kernelType"]) == ("python", "notebook")
    assert t["enableInternet"] is False and t["enableGpu"] is True
    assert t["competitionDataSources"] == ["paddy-disease-classification"]
    assert t["datasetDataSources"] == [WEIGHTS]  # pretrained run gets the weights dataset
    assert "datasetDataSources" not in saves[1] and not saves[1].get("kernelDataSources")
    nb, p = params_of(t["text"])
    assert p["out_dir"] == "/kaggle/working/convnext"
    assert p["data_path"] == "/kaggle/input/paddy-disease-classification"
    assert p["arch"] == "test_convnext" and p["pretrained"] is True and p["epochs"] == 1
    assert p["weights_dir"] == "/kaggle/input/timm-weights"
    assert "roadtop-bootstrap" in nb.cells[1].metadata["tags"]
    assert all(c.outputs == [] and c.execution_count is None for c in nb.cells if c.cell_type == "code")

    folder = settings.kaggle_dir(plan) / "roadtop-kdemo-train-convnext"
    meta = json.loads((folder / "kernel-metadata.json").read_text())
    assert meta["id"] == ref("train/convnext") and meta["kernel_type"] == "notebook"
    assert meta["enable_internet"] is False and (folder / meta["code_file"]).exists()

    for run in ("train/convnext", "train/resnet"):
        fake.set_statuses(ref(run), "COMPLETE")
    assert flow.push(plan, log=lines.append, sleep=Sleeps()) == 0
    saves = fake.calls("SaveKernel")
    assert len(saves) == 3  # trains unchanged: not pushed again
    e = saves[2]
    assert e["slug"] == ref("ensemble") and e["enableInternet"] is False and e["enableGpu"] is False
    assert e["kernelDataSources"] == [ref("train/convnext"), ref("train/resnet")]
    assert e["competitionDataSources"] == ["paddy-disease-classification"]
    _, p = params_of(e["text"])
    assert p["run_dirs"] == ["/kaggle/input/roadtop-kdemo-train-convnext/convnext",
                             "/kaggle/input/roadtop-kdemo-train-resnet/resnet"]
    assert p["out_dir"] == "/kaggle/working"
    state = record.load_record(plan)["kernels"]
    assert state["ensemble"]["version"] == 1 and state["train/convnext"]["status"] == "COMPLETE"


def test_push_wait_polls_until_every_kernel_ended(plan, fake):
    fake.set_statuses(ref("train/convnext"), "QUEUED", "RUNNING", "COMPLETE")
    fake.set_statuses(ref("train/resnet"), "RUNNING", "COMPLETE")
    fake.set_statuses(ref("ensemble"), "RUNNING", "COMPLETE")
    sleeps = Sleeps()
    assert flow.push(plan, wait=True, log=lambda s: None, sleep=sleeps, out=io.StringIO()) == 0
    assert [s["slug"] for s in fake.calls("SaveKernel")][-1] == ref("ensemble")
    assert sleeps == [7] * 5  # poll_interval: 3 polls until both trainings COMPLETE, 2 for the ensemble


def test_push_does_not_send_the_ensemble_after_a_training_error(plan, fake):
    fake.set_statuses(ref("train/resnet"), "ERROR", failure="CUDA out of memory")
    fake.set_statuses(ref("train/convnext"), "RUNNING", "COMPLETE")
    lines, out = [], io.StringIO()
    assert flow.push(plan, wait=True, log=lines.append, sleep=Sleeps(), out=out) == 1
    assert "error (CUDA out of memory)" in out.getvalue() and "failed (train/resnet ended in ERROR" in out.getvalue()
    assert ref("ensemble") not in [s["slug"] for s in fake.calls("SaveKernel")]
    assert any(ln.startswith("ensemble: not pushed: train/resnet ended in ERROR") for ln in lines)


def test_status_polls_through_queued_running_to_complete_and_error(plan, fake):
    flow.push(plan, log=lambda s: None, sleep=Sleeps())
    fake.set_statuses(ref("train/convnext"), "QUEUED", "RUNNING", "RUNNING", "COMPLETE")
    fake.set_statuses(ref("train/resnet"), "QUEUED", "RUNNING", "ERROR", failure="Exceeded time limit")
    out, lines, sleeps = io.StringIO(), [], Sleeps()
    rc = flow.status(plan, interval=3, out=out, log=lines.append, sleep=sleeps)
    assert rc == 1  # one kernel ended in ERROR
    seen = {"convnext": [], "resnet": []}
    for block in out.getvalue().split("[")[1:]:
        for row in block.splitlines()[2:]:
            name = row.split()[0].split("/")[1]
            seen[name].append(row.split()[3])
    assert seen["convnext"] == ["queued", "running", "running", "complete"]
    assert seen["resnet"] == ["queued", "running", "error", "error"]
    assert sleeps == [3, 3, 3]
    assert lines[1:] == [(f"train/resnet: kernel {ref('train/resnet')} ended in ERROR: Exceeded time limit "
                          "(`pipeline.py kaggle collect --only train/resnet` downloads its log)")]
    assert lines[0].startswith("kaggle: the kernels of kdemo run on gcr.io/kaggle-gpu-images/python@sha256:")
    assert record.load_record(plan)["kernels"]["train/resnet"]["failure"] == "Exceeded time limit"


def test_status_redraws_in_place_on_a_terminal(plan, fake):
    flow.push(plan, log=lambda s: None, sleep=Sleeps())
    fake.set_statuses(ref("train/convnext"), "RUNNING", "COMPLETE")
    fake.set_statuses(ref("train/resnet"), "COMPLETE")

    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    assert flow.status(plan, out=out, log=lambda s: None, sleep=Sleeps()) == 0
    assert out.getvalue().count("\x1b[3F\x1b[J") == 1  # header + 2 rows moved over once


def test_collect_downloads_outputs_into_outputs(plan, fake):
    push_all(plan, fake)
    fake.outputs[ref("train/convnext")].update({"convnext/preds.npz": b"\x93NUMPY" + bytes(range(256)) * 40,
                                                "convnext/manifest.json": b'{"done": true}'})
    fake.logs[ref("train/convnext")] = "[1/1] epoch 0 ... done"
    fake.outputs[ref("ensemble")].update({"submission.csv": b"image_id,label\n200001.jpg,normal\n"})
    fake.set_statuses(ref("train/resnet"), "ERROR", failure="boom")
    lines = []
    assert flow.collect(plan, log=lines.append, sleep=Sleeps()) == 1  # resnet ended in ERROR
    conv = plan.job("train/convnext").out_dir
    assert (conv / "preds.npz").read_bytes() == fake.outputs[ref("train/convnext")]["convnext/preds.npz"]
    assert json.loads((conv / flow.MARKER).read_text())["ref"] == ref("train/convnext")
    kdir = settings.kaggle_dir(plan)
    assert (kdir / "roadtop-kdemo-train-convnext/output/roadtop-kdemo-train-convnext.log").read_text() == \
        "[1/1] epoch 0 ... done"
    assert (plan.job("ensemble").out_dir / "submission.csv").read_bytes().startswith(b"image_id,label")
    assert any(ln.startswith("train/resnet:") and "ended in ERROR (boom)" in ln for ln in lines)
    assert not plan.job("train/resnet").out_dir.exists()
    page = plan.out_dir / "report.html"  # the run's report, as after a local run: collected, failed, not yet there
    assert lines[-1] == f"report: {page}"
    table = BeautifulSoup(page.read_text(), "html.parser").find(id="jobs")
    rows = {r[0]: r for r in ([td.text for td in tr.find_all("td")] for tr in table.find_all("tr")[1:])}
    assert rows["train/convnext"][2] == "complete"
    assert rows["train/resnet"][2] == "failed" and "Kaggle kernel ERROR: boom" in rows["train/resnet"][5]


def test_collect_keeps_a_local_run(plan, fake):
    push_all(plan, fake)
    fake.outputs[ref("train/resnet")]["resnet/preds.npz"] = b"kaggle"
    local = plan.job("train/resnet").out_dir
    local.mkdir(parents=True)
    (local / "preds.npz").write_bytes(b"local")
    lines = []
    flow.collect(plan, runs=["train/resnet"], log=lines.append, sleep=Sleeps())
    assert (local / "preds.npz").read_bytes() == b"local"
    assert any(ln.startswith("train/resnet: kept the local results") for ln in lines)
    flow.collect(plan, runs=["train/resnet"], replace=True, log=lines.append, sleep=Sleeps())
    assert (local / "preds.npz").read_bytes() == b"kaggle"


def test_submit_code_competition_sends_the_predict_kernel_and_version(plan, fake):
    plan = code_competition(plan)
    push_all(plan, fake)
    assert flow.push(plan, log=lambda s: None, sleep=Sleeps()) == 0  # the predict kernel, once the ensemble is done
    fake.set_statuses(ref("predict"), "COMPLETE")
    assert flow.push(plan, runs=["predict"], force=True, log=lambda s: None, sleep=Sleeps()) == 0  # version 2
    assert flow.submit(plan, "ensemble of 2", log=lambda s: None, sleep=Sleeps()) == 0
    (sub,) = fake.calls("CreateCodeSubmission")
    assert sub == {"competitionName": "paddy-disease-classification", "kernelOwner": USER,
                   "kernelSlug": "roadtop-kdemo-predict", "kernelVersion": 2, "fileName": "submission.csv",
                   "submissionDescription": "ensemble of 2"}
    assert record.load_record(plan)["submissions"][0]["ref"] == 4242


def test_submit_code_competition_refuses_an_unfinished_predict_kernel(plan, fake):
    plan = code_competition(plan)
    push_all(plan, fake)
    flow.push(plan, log=lambda s: None, sleep=Sleeps())
    fake.set_statuses(ref("predict"), "RUNNING")
    with pytest.raises(RoadtopError, match="predict: .* is RUNNING"):
        flow.submit(plan, log=lambda s: None, sleep=Sleeps())
    assert fake.calls("CreateCodeSubmission") == []


def test_submit_file_competition_uploads_the_kernels_csv(plan, fake):
    push_all(plan, fake)
    csv = b"image_id,label\n200001.jpg,blast\n"
    fake.outputs[ref("ensemble")]["submission.csv"] = csv
    flow.collect(plan, runs=["ensemble"], log=lambda s: None, sleep=Sleeps())
    assert flow.submit(plan, "file", log=lambda s: None, sleep=Sleeps()) == 0
    assert fake.calls("StartSubmissionUpload")[0]["fileName"] == "submission.csv"
    assert fake.uploads["sub-token-1"] == csv
    assert fake.calls("CreateSubmission")[0]["blobFileTokens"] == "sub-token-1"


# ---- the scheduler: the real plan's fan-out under Kaggle's GPU session cap ---------------------------------------
def _real_plan(tmp_path, extra="", packs=False):
    """params/paddy.yaml with its outputs under tmp_path, polling every 60 s (the default), `extra` appended."""
    text = (ROOT / "params" / "paddy.yaml").read_text().replace("out_dir: outputs/", f"out_dir: {tmp_path}/")
    extra += "" if packs else "  gpus_per_session: 1\n"
    given = {line.split(":")[0].strip() for line in extra.splitlines()}  # the plan loader refuses a key given twice
    text = "".join(line for line in text.splitlines(True) if line.split(":")[0].strip() not in given)
    (tmp_path / "paddy.yaml").write_text(text + extra)
    return load_plan(tmp_path / "paddy.yaml")


def _pref(run):
    """Kernel ref of a run of the real plan."""
    return ref(run, "roadtop-paddy")


@pytest.mark.parametrize("cap", [2, 3])
def test_run_fans_out_nine_gpu_kernels_under_the_session_cap_then_submits(fake, tmp_path, cap):
    """8 runs + multitarget (GPU) and the ensemble: never more than 2 GPU sessions at once, the next pushed as
    one ends; with max_gpu_sessions 3 Kaggle refuses the third ("Maximum batch GPU session count of 2"),
    which only means "wait". The ensemble goes once every source is COMPLETE, then the submission."""
    plan = _real_plan(tmp_path, f"  max_gpu_sessions: {cap}\n")
    trains = [j.name for j in plan.jobs if j.stage in ("train", "multitarget")]
    fake.use_clock(run_s=3600, queue_s=120, run_s_of={_pref(trains[0]): 9000, _pref("ensemble"): 600})
    fake.outputs[_pref("ensemble")]["submission.csv"] = b"image_id,label\n200001.jpg,blast\n"
    out, lines, sleeps = io.StringIO(), [], Sleeps()
    assert flow.run(plan, submit_it=True, message="rtt", log=lines.append, sleep=sleeps, out=out) == 0

    saves = fake.calls("SaveKernel")
    made = [r for _, r, _ in fake.pushes]
    assert sorted(made) == sorted(map(_pref, [*trains, "ensemble"])) and len(made) == 10  # each once
    assert sum(s["enableGpu"] for s in saves if s["slug"] in made) >= 9 and fake.max_gpu_active == 2
    assert bool(fake.refused) == (cap == 3)  # refused only when we asked for more than the account runs
    if cap == 3:
        assert any("Maximum batch GPU session count of 2 reached" in ln for ln in lines)
    t_ens = next(t for t, r, _ in fake.pushes if r == _pref("ensemble"))
    assert t_ens >= max(fake.sessions[_pref(n)][1] for n in trains)  # after every source ended
    assert made[-1] == _pref("ensemble") and not saves[-1]["enableGpu"]
    (sub,) = fake.calls("CreateSubmission")
    assert sub["submissionDescription"] == "rtt"
    methods = [r.method for r in fake.requests if r.method]
    assert methods.index("CreateSubmission") > max(i for i, m in enumerate(methods) if m == "SaveKernel")
    table = out.getvalue()
    for word in ("GPU sessions busy", "queued", "running", "complete"):
        assert word in table, word
    gpu_s = 9120 + 8 * 3720  # 2 at a time: half of it, give or take a run, then the ensemble
    assert gpu_s / 2 + 720 < fake.clock < gpu_s / 2 + 720 + 3720 + 20 * 60
    state = record.load_record(plan)
    assert all(state["kernels"][n]["status"] == "COMPLETE" for n in [*trains, "ensemble"])


class Interrupt(Sleeps):
    """Sleeps, until the `at`-th sleep, which raises KeyboardInterrupt (Ctrl-C while it waits)."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def __call__(self, s):
        super().__call__(s)
        if len(self) == self.at:
            raise KeyboardInterrupt


def test_an_interrupted_run_resumes_without_pushing_anything_twice(fake, tmp_path):
    plan = _real_plan(tmp_path)
    fake.use_clock(run_s=100, queue_s=10)
    with pytest.raises(KeyboardInterrupt):
        flow.run(plan, log=lambda s: None, sleep=Interrupt(3), out=io.StringIO())
    first = [r for _, r, _ in fake.pushes]
    assert 2 <= len(first) < 9
    state = record.load_record(plan)["kernels"]
    assert sorted(state) == sorted(n for n in state if _pref(n) in first) and len(state) == len(first)
    lines = []
    assert flow.run(plan, log=lines.append, sleep=Sleeps(), out=io.StringIO()) == 0
    made = [r for _, r, _ in fake.pushes]
    assert len(made) == len(set(made)) == 10 and made[:len(first)] == first
    assert fake.max_gpu_active == 2
    assert sum("is already pushed with these parameters" in ln for ln in lines) >= 1


def test_a_re_pushed_run_makes_the_ensemble_stale_and_the_scheduler_re_pushes_it(plan, fake):
    fake.use_clock(run_s=100, queue_s=10)
    kw = {"log": lambda s: None, "sleep": Sleeps(), "out": io.StringIO()}
    assert flow.push(plan, wait=True, **kw) == 0
    assert [v for _, r, v in fake.pushes if r == ref("ensemble")] == [1]
    assert flow.push(plan, runs=["train/resnet"], force=True, **kw) == 0  # resnet v2
    state = record.load_record(plan)
    assert flow.stale_sources(state, "ensemble") == ["train/resnet"]
    out, lines = io.StringIO(), []
    flow.status(plan, once=True, out=out, log=lines.append, sleep=Sleeps())
    ens_row = next(ln for ln in out.getvalue().splitlines() if ln.lstrip().startswith("ensemble"))
    assert "stale: train/resnet pushed anew since" in ens_row
    assert any(ln.startswith("ensemble: stale: train/resnet") for ln in lines)
    assert flow.push(plan, wait=True, **kw) == 0
    assert [(r, v) for _, r, v in fake.pushes][-2:] == [(ref("train/resnet"), 2), (ref("ensemble"), 2)]
    t_ens = fake.pushes[-1][0]
    assert t_ens >= fake.sessions[ref("train/resnet")][1]  # after resnet v2 was COMPLETE
    state = record.load_record(plan)
    assert state["kernels"]["ensemble"]["sources"] == {"train/convnext": 1, "train/resnet": 2}
    assert flow.stale_sources(state, "ensemble") == []
    assert flow.push(plan, wait=True, **kw) == 0 and len(fake.pushes) == 5  # nothing more to do


def test_push_without_wait_fills_the_free_sessions_and_says_who_waits(fake, tmp_path):
    plan = _real_plan(tmp_path)
    lines = []
    assert flow.push(plan, log=lines.append, sleep=Sleeps(), out=io.StringIO()) == 0
    assert len(fake.calls("SaveKernel")) == 2
    waits = [ln for ln in lines if "waits (" in ln]
    assert len(waits) == 8 and "waits (GPU sessions busy (2 of 2))" in waits[0]
    assert waits[-1].startswith("ensemble: waits (needs train/convnext_res_224")


# ---- `pipeline.py plan`: weekly GPU quota and the fan-out's wall clock ------------------------------------------
def _probed(plan, s_per_img):
    """A probe.json for `plan`: every run fits at accum 2 and trains at `s_per_img` seconds an image (a number, or
    probe run name -> seconds, 0.1 for the others)."""
    pj = plan.job("probe")
    speed = s_per_img if isinstance(s_per_img, dict) else {}

    def trials(n):
        return [{"accum": a, "bs": 64 // a, "status": "ok", "peak_reserved_gb": 10.0, "peak_allocated_gb": None,
                 "s_per_img": speed.get(n, 0.1) if speed else s_per_img, "s_per_img_infer": None, "seconds": 1.0,
                 "error": ""} for a in (1, 2)]
    runs = {n: {"spec": spec, "trials": trials(n), "accum": 1, "reason": ""} for n, spec in pj.params["runs"].items()}
    res = probe.probe_result(runs, {"device": "Tesla T4", "gpu_measured": True},
                             {"n_train": 9367, "n_holdout": 1040, "n_test": 3469},
                             {k: pj.params[k] for k in ("gpu_budget_gb", "margin_gb", "time_budget_h")}, 60.0)
    probe.save_probe(pj.out_dir, res)


def test_a_run_whose_sources_are_not_on_kaggle_is_refused_before_any_push(plan, fake):
    with pytest.raises(RoadtopError, match="^ensemble: none of the runs it reads is sent to Kaggle"):
        flow.push(plan, runs=["ensemble"], wait=True, log=lambda s: None, sleep=Sleeps(), out=io.StringIO())
    assert fake.calls("SaveKernel") == []


def test_the_live_table_is_redrawn_below_a_log_line_not_over_it(plan, fake):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    fake.set_statuses(ref("train/convnext"), "RUNNING", "COMPLETE")
    fake.set_statuses(ref("train/resnet"), "RUNNING", "COMPLETE")
    fake.set_statuses(ref("ensemble"), "COMPLETE")
    out = Tty()
    assert flow.push(plan, wait=True, log=lambda s: out.write(s + "\n"), sleep=Sleeps(), out=out) == 0
    text = out.getvalue()
    pushed = text.index("ensemble: pushed")
    assert "\x1b[" not in text[pushed:text.index("\n", pushed) + 40]  # the next table does not move over it
    assert text.count("\x1b[4F\x1b[J") >= 1  # between polls without news it redraws in place


def test_a_status_outage_during_the_fan_out_is_waited_out(fake, tmp_path):
    """Kaggle answers 503 to every retry of one status poll: `kaggle run` says so and goes on at the next poll."""
    plan = _real_plan(tmp_path)
    fake.use_clock(run_s=3600, queue_s=120)
    fake.outputs[_pref("ensemble")]["submission.csv"] = b"image_id,label\n200001.jpg,blast\n"
    fake.fail("GetKernelSessionStatus", 503, times=settings.settings(plan).retries + 1)
    lines = []
    assert flow.run(plan, submit_it=True, log=lines.append, sleep=Sleeps(), out=io.StringIO()) == 0
    assert any("after 6 tries" in ln and ln.endswith("the next poll tries again") for ln in lines), lines[:20]
    assert len(fake.calls("CreateSubmission")) == 1


# ---- states and versions: NEW_SCRIPT, cancellations, re-pushes of a running kernel, the recorded version -------
def test_new_script_waits_like_queued_and_cancel_requested_holds_its_session(plan, fake):
    """One GPU session: convnext goes NEW_SCRIPT -> CANCEL_REQUESTED (still running) -> CANCEL_ACKNOWLEDGED;
    resnet is pushed only after that, and the ensemble is not pushed: a source was cancelled."""
    plan.kaggle["max_gpu_sessions"] = 1
    fake.set_statuses(ref("train/convnext"), "NEW_SCRIPT", "NEW_SCRIPT", "CANCEL_REQUESTED", "CANCEL_ACKNOWLEDGED")
    fake.set_statuses(ref("train/resnet"), "RUNNING", "COMPLETE")
    out, lines = io.StringIO(), []
    assert flow.push(plan, wait=True, log=lines.append, sleep=Sleeps(), out=out) == 1
    saves = [s["slug"] for s in fake.calls("SaveKernel")]
    assert saves == [ref("train/convnext"), ref("train/resnet")]
    polls = [r for r, _ in fake.status_versions]
    first_resnet = next(i for i, r in enumerate(fake.requests) if r.method == "SaveKernel"
                        and r.payload["slug"] == ref("train/resnet"))
    acks = [i for i, r in enumerate(fake.requests) if r.method == "GetKernelSessionStatus"
            and r.payload["kernelSlug"] == "roadtop-kdemo-train-convnext"]
    assert polls.count(ref("train/convnext")) == 4 and first_resnet > acks[3]  # after CANCEL_ACKNOWLEDGED
    table = out.getvalue()
    assert "queued (new version)" in table and "cancelling (still holds its session)" in table
    assert "cancelled (cancelled on Kaggle)" in table
    assert any(ln.startswith("ensemble: not pushed: train/convnext ended in CANCEL_ACKNOWLEDGED on Kaggle")
               for ln in lines)
    assert record.load_record(plan)["kernels"]["train/convnext"]["failure"] == "cancelled on Kaggle"


def test_a_re_push_of_a_running_kernel_is_refused_unless_force_running(plan, fake):
    fake.use_clock(run_s=100, queue_s=10)
    kw = {"sleep": Sleeps(), "out": io.StringIO()}
    assert flow.push(plan, runs=["train/resnet"], log=lambda s: None, **kw) == 0
    with pytest.raises(RoadtopError, match=r"^train/resnet: fake-user/roadtop-kdemo-train-resnet v1 is QUEUED on "
                       r"Kaggle: a new version would not stop it and both sessions would be billed"):
        flow.push(plan, runs=["train/resnet"], force=True, log=lambda s: None, **kw)
    assert len(fake.pushes) == 1
    lines = []
    assert flow.push(plan, runs=["train/resnet"], force=True, force_running=True, log=lines.append, **kw) == 0
    assert any("--force-running" in ln and "bills both sessions" in ln for ln in lines)
    assert fake.active_gpu() == 2  # v1 still runs beside v2 (Kaggle/kaggle-cli#388)
    fake.tick(200)
    assert flow.push(plan, runs=["train/resnet"], force=True, log=lambda s: None, **kw) == 0  # v2 ended: fine
    assert [v for _, _, v in fake.pushes] == [1, 2, 3]


def test_status_and_collect_ask_for_the_recorded_version(plan, fake):
    """Someone pushed convnext v2 elsewhere (a notebook edit on kaggle.com): status and collect still read v1,
    the version this plan pushed."""
    push_all(plan, fake)
    r = ref("train/convnext")
    fake.versions[r] += 1  # v2, not ours
    fake.set_statuses(f"{r}/v2", "RUNNING")
    fake.set_statuses(f"{r}/v1", "COMPLETE")
    fake.version_outputs[(r, 1)] = {"convnext/preds.npz": b"v1 preds"}
    fake.outputs[r] = {"convnext/preds.npz": b"v2 preds"}
    assert flow.collect(plan, runs=["train/convnext"], log=lambda s: None, sleep=Sleeps()) == 0
    assert (plan.job("train/convnext").out_dir / "preds.npz").read_bytes() == b"v1 preds"
    assert (r, "v1") in fake.status_versions and (r, "v2") not in fake.status_versions
    outs = [p for p in fake.calls("ListKernelSessionOutput") if p["kernelSlug"] == r.split("/")[1]]
    assert outs and all(p["versionLabel"] == "v1" for p in outs)


def test_a_failed_dataset_ends_in_one_line_without_waiting(plan, fake):
    fake.datasets[WEIGHTS] = float("inf")
    fake._dataset_status = lambda d: "FAILED" if d == WEIGHTS else "READY"  # its processing failed for good
    lines, sleeps = [], Sleeps()
    assert flow.push(plan, runs=["train/convnext"], wait=True, log=lines.append, sleep=sleeps,
                     out=io.StringIO()) == 1
    assert fake.calls("SaveKernel") == [] and sleeps == []
    (line,) = [ln for ln in lines if "not pushed" in ln]
    assert line == (f"train/convnext: not pushed: dataset {WEIGHTS} is FAILED on Kaggle: upload it again with "
                    f"`pipeline.py kaggle weights FOLDER --dataset {WEIGHTS}`")


def test_dry_run_finds_the_owner_from_an_access_token_file(plan, fake, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    token = Path.home() / ".kaggle" / "access_token"
    lines = []
    with pytest.raises(RoadtopError, match="push --dry-run needs the owner"):
        flow.push(plan, dry_run=True, log=lines.append)
    token.parent.mkdir()
    token.write_text(fake.token)
    assert flow.push(plan, dry_run=True, log=lines.append) == 0
    meta = json.loads((settings.kaggle_dir(plan) / "roadtop-kdemo-ensemble" / "kernel-metadata.json").read_text())
    assert meta["id"] == f"{USER}/roadtop-kdemo-ensemble" and fake.calls("SaveKernel") == []


# ---- the real weekly GPU quota (quota_view) ------------------------------------------------------------------
@pytest.mark.parametrize("left_h", [10, 40])
def test_kaggle_run_reads_the_quota_left_and_refuses_a_plan_that_does_not_fit(fake, tmp_path, left_h):
    """The real plan, probed at 0.1 s an image (~27 GPU h): with 10 h left `kaggle run` is refused before any
    push, naming hours needed, hours left and the refresh; with 40 h left it runs."""
    plan = _real_plan(tmp_path)
    _probed(plan, 0.1)
    fake.quota_total_h, fake.quota_used_h = 40.0 if left_h == 40 else 30.0, 0.0 if left_h == 40 else 20.0
    fake.use_clock(run_s=3600, queue_s=60)
    fake.outputs[_pref("ensemble")]["submission.csv"] = b"image_id,label\n200001.jpg,blast\n"
    needed = sum(budget_secs for budget_secs in kaggle_budget_secs(plan)) / 3600
    lines = []
    if left_h == 10:
        with pytest.raises(RoadtopError) as e:
            flow.run(plan, submit_it=True, log=lines.append, sleep=Sleeps(), out=io.StringIO())
        assert str(e.value) == (f"kaggle push refused: the GPU kernels need est. {needed:.2f} GPU h, the weekly GPU "
                                "quota has 10.00 h left (of 30 h; it refreshes 2026-12-05 00:00 UTC); push fewer "
                                "jobs (--only), wait for the refresh, or --override")
        assert fake.calls("SaveKernel") == [] and len(fake.calls("GetAcceleratorQuotaStatistics")) == 1
        return
    assert flow.run(plan, submit_it=True, log=lines.append, sleep=Sleeps(), out=io.StringIO()) == 0
    assert f"kaggle: the GPU kernels need est. {needed:.2f} GPU h of the 40.00 h left this week" in lines
    assert len(fake.calls("CreateSubmission")) == 1


def kaggle_budget_secs(plan):
    """The probe's estimate of each GPU job of `plan` (seconds)."""
    from roadtop.kaggle.budget import gpu_seconds

    return list(gpu_seconds(plan).values())


# ---- one Docker image per sweep ----------------------------------------------------------------------------------
def test_every_kernel_after_the_first_is_pinned_to_its_image(fake, tmp_path):
    """Kaggle moves its newest image during the sweep: the first kernel's image (GetKernel) is recorded and every
    later kernel of the plan is pushed pinned to it; `status` says which."""
    plan = _real_plan(tmp_path)
    first = fake.latest_image
    fake.use_clock(run_s=3600, queue_s=60)

    class NewImage(Sleeps):
        def __call__(self, s):
            super().__call__(s)
            fake.latest_image = "gcr.io/kaggle-gpu-images/python@sha256:" + "2" * 64  # a docker-python release

    lines = []
    assert flow.push(plan, wait=True, log=lines.append, sleep=NewImage(), out=io.StringIO()) == 0
    saves = fake.calls("SaveKernel")
    assert len(saves) == 10 and "dockerImage" not in saves[0]
    assert all(s["dockerImage"] == first and s["dockerImagePinningType"] == "original" for s in saves[1:])
    assert set(fake.images.values()) == {first}
    state = record.load_record(plan)
    assert state["docker_image"] == first
    assert any(ln.startswith(f"kaggle: {_pref(plan.jobs[1].name)} runs on {first}: every later kernel") for ln in lines)
    flow.status(plan, once=True, out=io.StringIO(), log=lines.append, sleep=Sleeps())
    assert f"kaggle: the kernels of paddy run on {first} (pinned after the first push)" in lines
    # the hash of a kernel leaves the pin out: nothing is pushed again
    assert flow.push(plan, log=lines.append, sleep=Sleeps(), out=io.StringIO()) == 0 and len(fake.calls("SaveKernel")) == 10


def test_kaggle_docker_image_pins_every_kernel(plan, fake):
    plan.kaggle["docker_image"] = "gcr.io/kaggle-gpu-images/python@sha256:" + "3" * 64
    flow.push(plan, log=lambda s: None, sleep=Sleeps(), out=io.StringIO())
    saves = fake.calls("SaveKernel")
    assert len(saves) == 2 and {s["dockerImage"] for s in saves} == {plan.kaggle["docker_image"]}
    assert record.load_record(plan)["docker_image"] == plan.kaggle["docker_image"]


# ---- GPU packs: two runs per kernel, one per T4 --------------------------------------------------------------
def _pack_runs_of(payload):
    """The RUNS a pushed pack notebook carries (its hidden data cell), [] for a one-run kernel."""
    nb = nbformat.reads(payload["text"], as_version=4)
    cell = [c for c in nb.cells if "pack-runs" in c.metadata.get("tags", [])]
    if not cell:
        return []
    ns = {}
    exec(cell[0].source, ns)  # noqa: S102 - the data cell the pack notebook holds
    return ns["RUNS"]


def _pack_outputs(fail=None):
    """What a pack kernel writes, as its driver would: per run preds.npz and manifest.json under its folder (or,
    for run `fail`, its executed notebook only), and pack.json."""
    def outputs(ref, payload):
        runs, files, results = _pack_runs_of(payload), {}, {}
        if not runs:
            return {"submission.csv": b"image_id,label\n200001.jpg,blast\n"} if "ensemble" in ref else {}
        for gpu, r in enumerate(runs):
            d = r["out"].removeprefix("/kaggle/working/")
            files[f"{d}/{r['notebook_name']}"] = r["notebook"].encode()
            if r["run"] == fail:
                results[r["run"]] = {"state": "failed", "gpu": gpu, "cause": "OutOfMemoryError: CUDA out of memory"}
                continue
            files[f"{d}/preds.npz"] = f"preds of {r['run']}".encode()
            files[f"{d}/manifest.json"] = b'{"done": true}'
            results[r["run"]] = {"state": "complete", "gpu": gpu, "cause": ""}
        files["pack.json"] = json.dumps(results).encode()
        return files
    return outputs


# the probe's seconds an image per run of the real plan: every run another speed, so only the estimates can pair them
SPEEDS = {"convnext_res_224": 0.11, "convnext_res_320x224": 0.15, "vit_squish_224": 0.12, "vit_res_224": 0.17,
          "swinv2_squish_192": 0.09, "swinv2_res_192": 0.18, "swin_squish_224": 0.14, "swin_res_224": 0.10}


def test_the_real_plan_runs_in_packs_of_two_under_two_sessions_then_the_ensemble_and_submission(fake, tmp_path):
    """9 GPU jobs, 2 sessions of 2 T4s: 5 GPU kernels (longest with longest), never more than 2 sessions, every
    run COMPLETE and collected into its own folder, then the ensemble and the submission."""
    plan = _real_plan(tmp_path, packs=True)
    _probed(plan, SPEEDS)
    fake.use_clock(run_s=3600, queue_s=60)
    fake.outputs_of = _pack_outputs()
    out, lines = io.StringIO(), []
    assert flow.run(plan, submit_it=True, log=lines.append, sleep=Sleeps(), out=out) == 0
    saves = fake.calls("SaveKernel")
    gpu = [s for s in saves if s["enableGpu"]]
    assert len(gpu) == 5 and fake.max_gpu_active == 2 and fake.refused == []
    packed = [[r["run"] for r in _pack_runs_of(s)] for s in gpu]
    trains = [j.name for j in plan.jobs if j.stage in ("train", "multitarget")]
    assert sorted(r for p in packed for r in p) == sorted(trains) and [len(p) for p in packed] == [2, 2, 2, 2, 1]
    # longest with longest, by the probe's estimates (multitarget's counts its two models): the pairs follow the
    # speeds, not the plan's order, and the shortest run goes alone, last
    secs = expected_seconds(plan)
    order = sorted(trains, key=secs.get, reverse=True)
    assert order[:2] == ["train/swinv2_res_192", "train/vit_res_224"] and order != trains  # the speeds decide
    assert [set(p) for p in packed] == [set(order[i:i + 2]) for i in range(0, len(order), 2)]
    assert packed[-1] == [order[-1]]
    for s in gpu:  # each run's notebook is the one it would be alone: its outputs under /kaggle/working/<run>
        for r in _pack_runs_of(s):
            _, p = params_of(r["notebook"])
            assert p["out_dir"] == r["out"] == f"/kaggle/working/{plan.job(r['run']).out_dir.name}"
    ens = saves[-1]
    assert ens["slug"] == _pref("ensemble") and len(ens["kernelDataSources"]) == 5
    _, p = params_of(ens["text"])
    assert len(p["run_dirs"]) == 9 and all(d.startswith("/kaggle/input/roadtop-paddy-pack") for d in p["run_dirs"])
    state = record.load_record(plan)
    assert all(state["kernels"][f"pack{i}"]["status"] == "COMPLETE" for i in range(1, 6))
    assert flow.run_states(state)["train/vit_res_224"] is flow.KernelState.COMPLETE
    for n in trains:  # collected, each into its own folder
        d = plan.job(n).out_dir
        assert (d / "preds.npz").read_bytes() == f"preds of {n}".encode() and (d / flow.MARKER).exists()
    assert len(fake.calls("CreateSubmission")) == 1
    table = out.getvalue().split("[")[-1]
    assert sum(" complete" in ln and "roadtop-paddy-pack" in ln for ln in table.splitlines()) == 9


def test_one_failed_run_of_a_pack_fails_alone(fake, tmp_path):
    plan = _real_plan(tmp_path, packs=True)
    _probed(plan, 0.1)
    fake.use_clock(run_s=3600, queue_s=60)
    fake.outputs_of = _pack_outputs(fail="train/vit_squish_224")
    lines, out = [], io.StringIO()
    assert flow.run(plan, log=lines.append, sleep=Sleeps(), out=out) == 1
    state = record.load_record(plan)
    pack = next(n for n, r in state["kernels"].items() if "train/vit_squish_224" in r.get("runs", []))
    mate = next(r for r in state["kernels"][pack]["runs"] if r != "train/vit_squish_224")
    assert state["kernels"][pack]["status"] == "COMPLETE"
    assert any(ln.startswith("ensemble: not pushed: train/vit_squish_224 ended in RUN_FAILED on Kaggle") for ln in lines)
    assert flow.collect(plan, log=lines.append, sleep=Sleeps()) == 1
    assert (plan.job(mate).out_dir / "preds.npz").read_bytes() == f"preds of {mate}".encode()
    assert not (plan.job("train/vit_squish_224").out_dir / "preds.npz").exists()
    (why,) = [ln for ln in lines if ln.startswith("train/vit_squish_224: failed in pack")]
    assert "OutOfMemoryError: CUDA out of memory; its executed notebook is in" in why
    nb = Path(why.rsplit(" is in ", 1)[1]) / "train.ipynb"
    assert nb.exists()
    out = io.StringIO()
    assert flow.status(plan, once=True, out=out, log=lines.append, sleep=Sleeps()) == 1
    row = next(ln for ln in out.getvalue().splitlines() if ln.lstrip().startswith("train/vit_squish_224"))
    assert "failed (OutOfMemoryError: CUDA out of memory)" in row and pack.replace("pack", "roadtop-paddy-pack") in row
    mate_row = next(ln for ln in out.getvalue().splitlines() if ln.lstrip().startswith(mate + " "))
    assert mate_row.endswith("complete")




def test_pushing_one_run_of_a_pack_again_sends_its_whole_pack_and_leaves_the_other_packs_as_they_were(fake, tmp_path):
    """`push --only train/x --force` after a sweep: the packs are the plan's, whatever --only picks, so the run's own
    pack goes again (its pack-mate with it, said so), under its name; no other pack's record changes."""
    plan = _real_plan(tmp_path, packs=True)
    _probed(plan, SPEEDS)
    fake.use_clock(run_s=3600, queue_s=60)
    fake.outputs_of = _pack_outputs()
    assert flow.push(plan, wait=True, log=lambda s: None, sleep=Sleeps(), out=io.StringIO()) == 0
    before = record.load_record(plan)["kernels"]
    home = next(n for n, r in before.items() if "train/swin_res_224" in (r.get("runs") or []))
    mate = next(r for r in before[home]["runs"] if r != "train/swin_res_224")
    lines = []
    assert flow.push(plan, runs=["train/swin_res_224"], force=True, wait=True, log=lines.append, sleep=Sleeps(),
                     out=io.StringIO()) == 0
    after = record.load_record(plan)["kernels"]
    assert {n: r.get("runs") for n, r in after.items()} == {n: r.get("runs") for n, r in before.items()}
    assert after[home]["version"] == before[home]["version"] + 1
    assert all(after[n] == before[n] for n in before if n != home)  # the other packs and the ensemble untouched
    assert f"{home}: {mate} goes again with train/swin_res_224, its pack-mate (one kernel trains both)" in lines


def test_a_pack_longer_than_one_session_is_refused_before_any_push_unless_overridden(fake, tmp_path):
    plan = _real_plan(tmp_path, packs=True)
    _probed(plan, {**SPEEDS, "swinv2_res_192": 2.0})  # about 19 h at 2 s an image: Kaggle stops a session at 12
    with pytest.raises(RoadtopError, match=r"^kaggle push refused: pack1 needs est\. \d+\.\d\d h, more than one "
                                           r"12 h session \(kaggle\.session_hours\); give that run fewer epochs"):
        flow.push(plan, log=lambda s: None, sleep=Sleeps(), out=io.StringIO())
    assert fake.calls("SaveKernel") == []
    lines = []
    flow.push(plan, override=True, log=lines.append, sleep=Sleeps(), out=io.StringIO())
    assert any(ln.startswith("kaggle: pack1 needs est.") and ln.endswith("going on (--override)") for ln in lines)
    assert fake.calls("SaveKernel")
