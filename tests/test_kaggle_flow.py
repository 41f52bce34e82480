"""roadtop.kaggle against a fake Kaggle API on 127.0.0.1, driven through the real `kaggle` client."""

import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from kaggle.api.kaggle_api_extended import KaggleApi
from kagglesdk import kaggle_env
from slugify import slugify as kaggle_slugify  # the slugify `kaggle kernels push` checks titles with

from roadtop import weights
from roadtop.kaggle import client, datasets, flow, kernels, record, settings
from roadtop.errors import RoadtopError
from roadtop.paths import ROOT
from roadtop.dag.plan import load_plan

sys.path.insert(0, str(Path(__file__).parent))
from fake_kaggle import FakeKaggle  # noqa: E402

USER, KEY, TOKEN = "fake-user", "fake-key-5f3a9c0e1d2b4a6f", "fake-token-KGAT-77e1c2d3"
WEIGHTS = "fake-user/timm-weights"


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """A started FakeKaggle; the kaggle client points at it (every endpoint, prod too), fake credentials."""
    f = FakeKaggle(USER, KEY, TOKEN).start()
    for env in list(kaggle_env._env_to_endpoint):  # nothing leaves 127.0.0.1, whatever env the client picks
        monkeypatch.setitem(kaggle_env._env_to_endpoint, env, f.url)
    monkeypatch.setattr(KaggleApi, "args", ["--local"])  # as KAGGLE_API_ENVIRONMENT=LOCALHOST: /api/v1/...
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    for var in ("KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR", "KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_API_ENVIRONMENT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_USERNAME", USER)
    monkeypatch.setenv("KAGGLE_KEY", KEY)
    yield f
    f.stop()


@pytest.fixture
def plan(tmp_path):
    """A real plan (roadtop.dag.plan.load_plan): two training runs (one pretrained) and the ensemble."""
    p = tmp_path / "kdemo.yaml"
    p.write_text(f"""
name: kdemo
out_dir: {tmp_path / 'outputs'}
train:
  defaults: {{epochs: 1}}
  runs:
    convnext: {{arch: test_convnext, pretrained: true}}
    resnet: {{arch: test_resnet}}
ensemble: {{}}
kaggle:
  weights_dataset: {WEIGHTS}
  retries: 2
  backoff: 0.5
  poll_interval: 7
""")
    return load_plan(p)


class Sleeps(list):
    """A stand-in for time.sleep that records the delays instead of waiting."""

    def __call__(self, s):
        self.append(s)


def ref(run):
    """Kernel ref of a run of the kdemo plan."""
    return f"{USER}/roadtop-kdemo-{run.replace('/', '-')}"


def params_of(text):
    """The injected-parameters cell of a pushed notebook, executed into a dict."""
    nb = nbformat.reads(text, as_version=4)
    nbformat.validate(nb)
    cell = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(cell) == 1
    ns = {}
    exec(cell[0].source, {}, ns)
    return nb, ns


def push_all(plan, fake, **kw):
    """Push the trains, let them COMPLETE, push the ensemble, let it COMPLETE; returns the log lines."""
    lines = []
    kw.setdefault("sleep", Sleeps())
    assert flow.push(plan, log=lines.append, **kw) == 0
    for run in ("train/convnext", "train/resnet"):
        fake.set_statuses(ref(run), "COMPLETE")
    assert flow.push(plan, log=lines.append, **kw) == 0
    fake.set_statuses(ref("ensemble"), "COMPLETE")
    return lines


# ---- push --------------------------------------------------------------------------------------------------
def test_push_sends_training_kernels_then_the_ensemble_that_reads_them(plan, fake):
    lines = []
    assert flow.push(plan, log=lines.append, sleep=Sleeps()) == 0
    saves = fake.calls("SaveKernel")
    assert [s["slug"] for s in saves] == [ref("train/convnext"), ref("train/resnet")]  # ensemble waits
    assert lines[-1].startswith("ensemble: waits for train/convnext (RUNNING), train/resnet (RUNNING) to")

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
    assert "roadtop-bootstrap" in nb.cells[0].metadata["tags"]
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
    state = record.load_state(plan)["kernels"]
    assert state["ensemble"]["version"] == 1 and state["train/convnext"]["status"] == "COMPLETE"


def test_push_wait_polls_until_the_trainings_complete(plan, fake):
    fake.set_statuses(ref("train/convnext"), "QUEUED", "RUNNING", "COMPLETE")
    fake.set_statuses(ref("train/resnet"), "RUNNING", "COMPLETE")
    sleeps = Sleeps()
    assert flow.push(plan, wait=True, log=lambda s: None, sleep=sleeps) == 0
    assert [s["slug"] for s in fake.calls("SaveKernel")][-1] == ref("ensemble")
    assert sleeps == [7, 7]  # poll_interval, until both trainings said COMPLETE


def test_push_does_not_send_the_ensemble_after_a_training_error(plan, fake):
    fake.set_statuses(ref("train/resnet"), "ERROR", failure="CUDA out of memory")
    lines = []
    assert flow.push(plan, wait=True, log=lines.append, sleep=Sleeps()) == 1
    assert ref("ensemble") not in [s["slug"] for s in fake.calls("SaveKernel")]
    assert any(ln.startswith("ensemble: not pushed: train/resnet ended in ERROR") for ln in lines)


def test_bootstrap_cell_brings_roadtop_into_a_bare_python(plan, fake, tmp_path):
    flow.push(plan, log=lambda s: None, sleep=Sleeps())
    nb = nbformat.reads(fake.calls("SaveKernel")[0]["text"], as_version=4)
    boot = nb.cells[0].source
    sent = sorted(m for m in kernels._modules(nb, ROOT / "roadtop"))  # what train.ipynb imports, and their imports
    assert {"train.py", "preds.py", "paddy.py"} <= set(sent)
    code = boot + "\nimport roadtop.paths\nprint(roadtop.paths.__file__)"
    # -I -S: no site-packages, so no installed roadtop: only the inline copy can answer the import
    r = subprocess.run([sys.executable, "-I", "-S", "-"], input=code, capture_output=True, text=True,
                       env={"TMPDIR": str(tmp_path)}, timeout=60, check=False)
    assert r.stdout.strip() == str(tmp_path / "roadtop-src" / "roadtop" / "paths.py"), r.stderr[-2000:]
    written = sorted(p.name for p in (tmp_path / "roadtop-src" / "roadtop").glob("*.py"))
    assert written == sent


def test_ensemble_kernel_runs_as_on_kaggle(plan, tmp_path, monkeypatch):
    """The pushed ensemble notebook, run in a Jupyter kernel that believes it is on Kaggle (/kaggle/ moved
    under tmp_path), inputs mounted the newer way (/kaggle/input/<kind>/<owner>/<slug>): roadtop comes from
    the bootstrap cell, the runs from the training kernels' outputs."""
    import numpy as np
    import pandas as pd
    import papermill as pm

    from roadtop import paddy, preds

    kag = tmp_path / "kaggle"
    data = paddy.make_demo(kag / "input" / "competitions" / settings.COMPETITION, 60, 12, size=(32, 48),
                           progress=False)
    trn, hold = paddy.split_files(data, 0.1, 42)
    tst = paddy.test_files(data)
    vocab = sorted({f.parent.name for f in trn + hold})
    rng = np.random.default_rng(0)
    for run in ("convnext", "resnet"):  # what the two training kernels would have saved
        probs = rng.dirichlet(np.ones(len(vocab)), len(tst)), rng.dirichlet(np.ones(len(vocab)), len(hold))
        p = preds.RunPreds(run, f"test_{run}", vocab, [f.name for f in tst], probs[0], [f.name for f in hold],
                           [f.parent.name for f in hold], probs[1])
        preds.save_preds(kag / "input" / "notebooks" / USER / f"roadtop-kdemo-train-{run}" / run, p)
    ens = kernels.build_kernels(plan, plan.jobs, USER, log=lambda s: None)[-1]
    nb = tmp_path / "ensemble.ipynb"
    nb.write_text((ens.folder / ens.meta["code_file"]).read_text().replace("/kaggle/", f"{kag}/"))
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")  # roadtop.paths.iskaggle() is True in the kernel
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    pm.execute_notebook(str(nb), str(tmp_path / "ensemble.out.ipynb"), cwd=str(tmp_path), progress_bar=False)
    sub = pd.read_csv(kag / "working" / "submission.csv", dtype=str)
    assert list(sub.image_id) == list(paddy.read_sample_submission(data).image_id)
    assert set(sub.label) <= set(vocab)
    assert (tmp_path / "roadtop-src" / "roadtop" / "ensemble.py").exists()


def test_params_are_refused_when_a_kernel_could_not_run(plan, tmp_path):
    st = settings.settings(plan)
    job = plan.job("train/convnext")
    slugs = {j.name: settings.kernel_slug(st.slug_prefix, j.name) for j in plan.jobs}
    with pytest.raises(RoadtopError, match="train/convnext: pretrained=True needs local weights"):
        kernels.kaggle_params(job, slugs, settings.KaggleSettings(), {j.name: j for j in plan.jobs})
    job.params["item_method"] = str(tmp_path)
    with pytest.raises(RoadtopError, match="item_method=.* is a path on this machine"):
        kernels.kaggle_params(job, slugs, st, {j.name: j for j in plan.jobs})
    plan.kaggle["gpu"] = True
    with pytest.raises(RoadtopError, match="kaggle.gpu is unknown"):
        settings.settings(plan)


def test_slugs_are_kaggle_slugs_whose_titles_map_back():
    for run in ("train/convnext_large_in22k-(320,224)", "ensemble", "train/" + "x" * 80):
        s = settings.kernel_slug("roadtop-real", run)
        assert 5 <= len(s) <= 50 and kaggle_slugify(settings.kernel_title(s)) == s


# ---- status ------------------------------------------------------------------------------------------------
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
    assert seen["convnext"] == ["QUEUED", "RUNNING", "RUNNING", "COMPLETE"]
    assert seen["resnet"] == ["QUEUED", "RUNNING", "ERROR", "ERROR"]
    assert sleeps == [3, 3, 3]
    assert lines == [(f"train/resnet: kernel {ref('train/resnet')} ended in ERROR: Exceeded time limit "
                      "(`pipeline.py kaggle collect --runs train/resnet` downloads its log)")]
    assert record.load_state(plan)["kernels"]["train/resnet"]["failure"] == "Exceeded time limit"


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


# ---- collect -----------------------------------------------------------------------------------------------
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


def test_collect_keeps_a_local_run(plan, fake):
    push_all(plan, fake)
    fake.outputs[ref("train/resnet")]["resnet/preds.npz"] = b"kaggle"
    local = plan.job("train/resnet").out_dir
    local.mkdir(parents=True)
    (local / "preds.npz").write_bytes(b"local")
    lines = []
    flow.collect(plan, runs=["train/resnet"], log=lines.append, sleep=Sleeps())
    assert (local / "preds.npz").read_bytes() == b"local" and "kept the local results" in lines[-1]
    flow.collect(plan, runs=["train/resnet"], replace=True, log=lines.append, sleep=Sleeps())
    assert (local / "preds.npz").read_bytes() == b"kaggle"


# ---- submit ------------------------------------------------------------------------------------------------
def test_submit_code_competition_sends_kernel_and_version(plan, fake):
    plan.kaggle["code_competition"] = True
    push_all(plan, fake)
    assert flow.push(plan, runs=["ensemble"], force=True, log=lambda s: None, sleep=Sleeps()) == 0  # version 2
    assert flow.submit(plan, "ensemble of 2", log=lambda s: None, sleep=Sleeps()) == 0
    (sub,) = fake.calls("CreateCodeSubmission")
    assert sub == {"competitionName": "paddy-disease-classification", "kernelOwner": USER,
                   "kernelSlug": "roadtop-kdemo-ensemble", "kernelVersion": 2, "fileName": "submission.csv",
                   "submissionDescription": "ensemble of 2"}
    assert record.load_state(plan)["submissions"][0]["ref"] == 4242


def test_submit_code_competition_refuses_an_unfinished_ensemble(plan, fake):
    plan.kaggle["code_competition"] = True
    push_all(plan, fake)
    fake.set_statuses(ref("ensemble"), "RUNNING")
    with pytest.raises(RoadtopError, match="ensemble: .* is RUNNING"):
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


# ---- errors ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("code,phrase", [(401, "rejected the credentials (401"), (403, "refused access (403"),
                                         (404, "found nothing (404")])
def test_push_errors_name_the_run_and_keep_local_files(plan, fake, code, phrase):
    fake.fail("SaveKernel", code)
    lines = []
    assert flow.push(plan, log=lines.append, sleep=Sleeps()) == 1
    err = [ln for ln in lines if phrase in ln]
    assert len(err) == 1 and err[0].startswith(f"train/convnext: push of {ref('train/convnext')} failed")
    pushed = [s["slug"] for s in fake.calls("SaveKernel")]
    if code == 401:
        assert pushed == [ref("train/convnext")]  # bad credentials: stop, every call would fail
    else:
        assert pushed == [ref("train/convnext"), ref("train/resnet")]  # the other run still goes
        assert list(record.load_state(plan)["kernels"]) == ["train/resnet"]
    assert (settings.kaggle_dir(plan) / "roadtop-kdemo-train-convnext" / "kernel-metadata.json").exists()


@pytest.mark.parametrize("code", [429, 500, 503])
def test_transient_errors_are_retried_with_backoff(plan, fake, code):
    fake.fail("SaveKernel", code, times=2)
    sleeps, lines = Sleeps(), []
    assert flow.push(plan, runs=["train/resnet"], log=lines.append, sleep=sleeps) == 0
    assert sleeps == [0.5, 1.0]  # backoff, doubling
    assert len(fake.calls("SaveKernel")) == 3 and f"Kaggle answered {code}" in lines[0]


def test_retry_after_is_honoured_and_persistent_errors_give_up(plan, fake):
    fake.fail("SaveKernel", 429, times=1, headers={"Retry-After": "4"})
    fake.fail("SaveKernel", 502, times=3)
    sleeps, lines = Sleeps(), []
    assert flow.push(plan, runs=["train/resnet"], log=lines.append, sleep=sleeps) == 1
    assert sleeps == [4.0, 1.0]
    assert lines[-1].startswith(f"train/resnet: push of {ref('train/resnet')} failed: Kaggle still answered")
    assert "answered 502" in lines[-1]
    assert record.load_state(plan)["kernels"] == {}


@pytest.mark.parametrize("code,phrase", [(401, "rejected the credentials"), (403, "refused access"),
                                         (404, "push it first")])
def test_status_errors_name_the_run(plan, fake, code, phrase):
    flow.push(plan, log=lambda s: None, sleep=Sleeps())
    fake.fail("GetKernelSessionStatus", code)
    match = f"^train/convnext: status of {ref('train/convnext')} failed.*{phrase}"
    with pytest.raises(client.KaggleCallError, match=match):
        flow.status(plan, once=True, out=io.StringIO(), log=lambda s: None, sleep=Sleeps())


def test_collect_404_names_the_run(plan, fake):
    push_all(plan, fake)
    fake.fail("ListKernelSessionOutput", 404)
    lines = []
    assert flow.collect(plan, runs=["train/convnext"], log=lines.append, sleep=Sleeps()) == 1
    assert lines[-1].startswith("train/convnext: download of") and "(404" in lines[-1]


def test_no_credentials_is_one_clear_error(fake, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    with pytest.raises(RoadtopError, match="^no Kaggle credentials found: set KAGGLE_USERNAME and KAGGLE_"):
        client.connect()


def test_credentials_from_kaggle_json_and_from_an_api_token(plan, fake, monkeypatch, tmp_path):
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    cfg = tmp_path / "home" / ".kaggle"
    cfg.mkdir()
    (cfg / "kaggle.json").write_text(json.dumps({"username": USER, "key": KEY}))
    (cfg / "kaggle.json").chmod(0o600)
    assert client.api_username(client.connect()) == USER
    (cfg / "kaggle.json").unlink()
    monkeypatch.setenv("KAGGLE_API_TOKEN", TOKEN)
    api = client.connect()
    assert client.api_username(api) == USER and fake.calls("IntrospectToken")[-1]["token"] == TOKEN
    assert flow.push(plan, runs=["train/resnet"], api=api, log=lambda s: None, sleep=Sleeps()) == 0
    assert fake.requests[-1].headers["Authorization"] == f"Bearer {TOKEN}"


def test_credentials_appear_in_no_pushed_text_file_or_log(plan, fake, capsys, tmp_path):
    plan.kaggle["code_competition"] = True
    lines = push_all(plan, fake)
    fake.outputs[ref("ensemble")]["submission.csv"] = b"image_id,label\n"
    flow.collect(plan, log=lines.append, sleep=Sleeps())
    flow.submit(plan, log=lines.append, sleep=Sleeps())
    flow.status(plan, once=True, out=io.StringIO(), log=lines.append, sleep=Sleeps())
    assert len(fake.calls("SaveKernel")) == 3
    texts = [json.dumps(r.payload) if r.payload else r.body.decode("latin-1") for r in fake.requests]
    files = [p for p in tmp_path.rglob("*") if p.is_file() and "home" not in p.parts]
    assert any(p.name == "kernel-metadata.json" for p in files) and any(p.suffix == ".ipynb" for p in files)
    texts += [p.read_bytes().decode("latin-1") for p in files]
    texts += lines + list(capsys.readouterr())
    for secret in (KEY, TOKEN):
        assert not [t for t in texts if secret in t]
    assert all("Authorization" in r.headers for r in fake.requests if r.method)  # sent, in a header only


# ---- pretrained weights ------------------------------------------------------------------------------------
def test_local_pretrained_cfg_loads_weights_without_internet(tmp_path):
    import timm
    import torch
    from safetensors.torch import save_file

    src = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    wdir = tmp_path / "weights"
    wdir.mkdir()
    save_file(src.state_dict(), str(wdir / "test_resnet.r160_in1k.safetensors"))  # named by pretrained tag
    cfg = weights.local_pretrained_cfg("test_resnet", wdir)
    assert cfg == {"file": str(wdir / "test_resnet.r160_in1k.safetensors")}
    torch.manual_seed(1)
    got = timm.create_model("test_resnet", pretrained=True, num_classes=0, pretrained_cfg_overlay=cfg)
    pairs = zip(src.state_dict().values(), got.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    with pytest.raises(RoadtopError, match="no weights for test_convnext in"):
        weights.local_pretrained_cfg("test_convnext", wdir)


def test_weights_command_packages_a_folder_as_a_dataset(plan, fake, tmp_path):
    src = tmp_path / "w"
    hf = src / "models--timm--test_vit.r160_in1k" / "snapshots" / "abc"  # a Hugging Face cache entry
    hf.mkdir(parents=True)
    (hf / "model.safetensors").write_bytes(b"vit")
    (src / "test_resnet.safetensors").write_bytes(b"resnet")
    (src / "test_resnet.pth").write_bytes(b"resnet-pth")  # the .safetensors wins
    (src / "test_convnext.r160_in1k.safetensors").write_bytes(b"convnext")
    lines = []
    folder = datasets.package_weights(src, WEIGHTS, api=client.connect(), st=settings.settings(plan), dest=tmp_path / "all",
                                log=lines.append, sleep=Sleeps())
    assert sorted(p.name for p in folder.iterdir()) == [
        "dataset-metadata.json", "test_convnext.r160_in1k.safetensors", "test_resnet.safetensors",
        "test_vit.r160_in1k.safetensors"]
    assert weights.find_weights("test_vit", folder).read_bytes() == b"vit"
    (created,) = fake.calls("CreateDataset")
    assert (created["ownerSlug"], created["slug"], created["isPrivate"]) == (USER, "timm-weights", True)
    assert sorted(fake.uploads.values()) == [b"convnext", b"resnet", b"vit"]
    assert WEIGHTS in lines[-1]
    # with the plan's pretrained archs: just those, named as the plan names them; the dataset exists now
    folder = datasets.package_weights(src, WEIGHTS, ["test_convnext"], api=client.connect(), dest=tmp_path / "plan",
                                log=lines.append, sleep=Sleeps())
    assert sorted(p.name for p in folder.iterdir()) == ["dataset-metadata.json", "test_convnext.safetensors"]
    assert len(fake.calls("CreateDatasetVersion")) == 1
    with pytest.raises(RoadtopError, match="no weights for vit_base_patch16_224 in"):
        datasets.package_weights(src, WEIGHTS, ["vit_base_patch16_224"], upload=False, dest=tmp_path / "x")


# ---- command line -----------------------------------------------------------------------------------------
def test_pipeline_kaggle_subcommands(plan, fake, capsys, tmp_path):
    spec = importlib.util.spec_from_file_location("pipeline", ROOT / "pipeline.py")
    pipeline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pipeline)

    def run(*args):
        return pipeline.main(["kaggle", *args, "--params", str(plan.source)])

    assert run("push", "--dry-run") == 0
    assert fake.calls("SaveKernel") == []
    assert run("push", "--runs", "train/*") == 0
    assert len(fake.calls("SaveKernel")) == 2
    assert run("status", "--once") == 0
    assert "roadtop-kdemo-train-resnet" in capsys.readouterr().out
    assert run("collect", "--runs", "nope") == 2
    assert capsys.readouterr().err.startswith("error: --runs nope: no such run among those pushed")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "test_convnext.safetensors").write_bytes(b"w")
    assert run("weights", str(tmp_path / "w"), "--no-upload") == 0  # the plan's pretrained archs only
    staged = plan.out_dir / "kaggle" / "weights" / "timm-weights"
    assert sorted(p.name for p in staged.iterdir()) == ["dataset-metadata.json", "test_convnext.safetensors"]


def test_dry_run_of_the_real_plan(tmp_path, monkeypatch):
    real = (ROOT / "params" / "paddy.yaml").read_text().replace("out_dir: outputs/", f"out_dir: {tmp_path}/")
    real += "kaggle: {username: someone, weights_dataset: someone/timm-w}\n"
    (tmp_path / "paddy.yaml").write_text(real)
    plan = load_plan(tmp_path / "paddy.yaml")
    lines = []
    assert flow.push(plan, dry_run=True, log=lines.append) == 0
    folders = sorted(p.parent.name for p in settings.kaggle_dir(plan).glob("*/kernel-metadata.json"))
    trains = [j for j in plan.jobs if j.stage in ("train", "multitarget")]
    assert len(folders) == len(trains) + 1 == 10
    meta = json.loads((settings.kaggle_dir(plan) / "roadtop-paddy-ensemble" / "kernel-metadata.json").read_text())
    assert meta["kernel_sources"] == [f"someone/roadtop-paddy-{settings.slugify(j.name)}" for j in trains]
    text = (settings.kaggle_dir(plan) / "roadtop-paddy-ensemble" / "roadtop-paddy-ensemble.ipynb").read_text()
    _, p = params_of(text)
    assert p["weights"]["vit_large_patch16_224"] == 2 and len(p["run_dirs"]) == len(trains)
