"""Calls to Kaggle: credentials, one-line errors, retries with backoff, no duplicate version after a lost answer."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from roadtop.errors import RoadtopError
from roadtop.kaggle import client, flow, record, settings
from roadtop.paths import ROOT

sys.path.insert(0, str(Path(__file__).parent))
pytest.register_assert_rewrite("fake_kaggle")  # its helpers assert too
from fake_kaggle import KEY, TOKEN, USER, Sleeps, code_competition, push_all, ref

pytest_plugins = ["fake_kaggle"]


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
        assert list(record.load_record(plan)["kernels"]) == ["train/resnet"]
    assert (settings.kaggle_dir(plan) / "roadtop-kdemo-train-convnext" / "kernel-metadata.json").exists()


@pytest.mark.parametrize("code", [429, 500, 503])
def test_transient_errors_are_retried_with_backoff(plan, fake, code):
    fake.fail("SaveKernel", code, times=2)
    sleeps, lines = Sleeps(), []
    assert flow.push(plan, runs=["train/resnet"], log=lines.append, sleep=sleeps) == 0
    assert sleeps == [0.5, 1.0]  # backoff, doubling
    assert len(fake.calls("SaveKernel")) == 3
    assert next(ln for ln in lines if "Kaggle answered" in ln).startswith(f"train/resnet: Kaggle answered {code}")


def test_retry_after_is_honoured_and_persistent_errors_give_up(plan, fake):
    fake.fail("SaveKernel", 429, times=1, headers={"Retry-After": "4"})
    fake.fail("SaveKernel", 502, times=3)
    sleeps, lines = Sleeps(), []
    assert flow.push(plan, runs=["train/resnet"], log=lines.append, sleep=sleeps) == 1
    assert sleeps == [4.0, 1.0]
    assert lines[-1].startswith(f"train/resnet: push of {ref('train/resnet')} failed: Kaggle still answered")
    assert "answered 502" in lines[-1]
    assert record.load_record(plan)["kernels"] == {}


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
    assert lines[-2].startswith("train/convnext: download of") and "(404" in lines[-2]
    assert lines[-1].startswith("report: ")  # written all the same: what was collected so far


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
    plan = code_competition(plan)
    lines = push_all(plan, fake)
    flow.push(plan, log=lines.append, sleep=Sleeps(), out=io.StringIO())
    fake.set_statuses(ref("predict"), "COMPLETE")
    fake.outputs[ref("predict")]["submission.csv"] = b"image_id,label\n"
    flow.collect(plan, log=lines.append, sleep=Sleeps())
    flow.submit(plan, log=lines.append, sleep=Sleeps())
    flow.status(plan, once=True, out=io.StringIO(), log=lines.append, sleep=Sleeps())
    assert len(fake.calls("SaveKernel")) == 4
    texts = [json.dumps(r.payload) if r.payload else r.body.decode("latin-1") for r in fake.requests]
    files = [p for p in tmp_path.rglob("*") if p.is_file() and "home" not in p.parts]
    assert any(p.name == "kernel-metadata.json" for p in files) and any(p.suffix == ".ipynb" for p in files)
    texts += [p.read_bytes().decode("latin-1") for p in files]
    texts += lines + list(capsys.readouterr())
    for secret in (KEY, TOKEN):
        assert not [t for t in texts if secret in t]
    assert all("Authorization" in r.headers for r in fake.requests if r.method)  # sent, in a header only


# ---- SaveKernel after a 5xx; retries of status, download and submit --------------------------------------------
def test_a_5xx_after_the_version_was_made_pushes_no_duplicate(plan, fake):
    fake.fail("SaveKernel", 502, after=True)  # Kaggle made version 1, the answer was lost
    lines = []
    assert flow.push(plan, runs=["train/resnet"], log=lines.append, sleep=Sleeps(), out=io.StringIO()) == 0
    assert len(fake.calls("SaveKernel")) == 1 and fake.versions[ref("train/resnet")] == 1
    assert fake.calls("GetKernel")[-1] == {"userName": USER, "kernelSlug": "roadtop-kdemo-train-resnet"}
    assert any("answered 502 to the push, but" in ln and "new version 1" in ln for ln in lines)
    assert record.load_record(plan)["kernels"]["train/resnet"]["version"] == 1
    # a 5xx that made nothing is retried; a 5xx on a re-push that made version 2 is not
    fake.set_statuses(ref("train/resnet"), "COMPLETE")  # re-pushing a running kernel is refused
    fake.fail("SaveKernel", 503)
    fake.fail("SaveKernel", 500, after=True)
    assert flow.push(plan, runs=["train/resnet"], force=True, log=lines.append, sleep=Sleeps(),
                     out=io.StringIO()) == 0
    assert len(fake.calls("SaveKernel")) == 3 and fake.versions[ref("train/resnet")] == 2
    assert record.load_record(plan)["kernels"]["train/resnet"]["version"] == 2


@pytest.mark.parametrize("code", [429, 503])
def test_status_download_and_submit_are_retried_then_fail_in_one_line(plan, fake, code):
    plan.kaggle["code_competition"] = False
    push_all(plan, fake)
    fake.outputs[ref("ensemble")]["submission.csv"] = b"image_id,label\n200001.jpg,blast\n"
    quiet = {"log": lambda s: None, "sleep": Sleeps()}
    fake.fail("GetKernelSessionStatus", code, times=2)
    assert flow.status(plan, once=True, out=io.StringIO(), **quiet) == 0
    fake.fail("download", code, times=2)
    assert flow.collect(plan, runs=["ensemble"], **quiet) == 0
    fake.fail("CreateSubmission", code, times=2)
    assert flow.submit(plan, "retried", **quiet) == 0 and len(fake.calls("CreateSubmission")) == 3
    # past the retries (2 here): one line naming the run, what failed and what to do
    fake.fail("GetKernelSessionStatus", code, times=3)
    with pytest.raises(client.KaggleCallError, match=rf"^ensemble: status of {ref('ensemble')} failed: "
                                                     rf"Kaggle still answered {code} .* after 3 tries: rerun"):
        flow.status(plan, once=True, out=io.StringIO(), **quiet)
    fake.fail("download", code, times=3)
    lines = []
    assert flow.collect(plan, runs=["ensemble"], log=lines.append, sleep=Sleeps()) == 1
    assert lines[-2].startswith(f"ensemble: download of {ref('ensemble')} output failed: Kaggle still answered "
                                f"{code}") and "\n" not in lines[-2]
    fake.fail("CreateSubmission", code, times=3)
    with pytest.raises(client.KaggleCallError, match=rf"^ensemble: submission of submission.csv failed: Kaggle "
                                                     rf"still answered {code}"):
        flow.submit(plan, **quiet)


def test_missing_credentials_is_one_line_without_the_clients_banner(plan, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update(HOME=str(tmp_path), PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, str(ROOT / "pipeline.py"), "kaggle", "push", "--params",
                        str(plan.source)], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert r.returncode != 0 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [f"error: {client.NO_CREDENTIALS}"], r.stderr


def test_offline_username(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("KAGGLE_USERNAME", "KAGGLE_CONFIG_DIR", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    assert client.offline_username() == ""
    (tmp_path / ".config" / "kaggle").mkdir(parents=True)  # the client's XDG place, when ~/.kaggle is absent
    (tmp_path / ".config" / "kaggle" / "kaggle.json").write_text(json.dumps({"username": "xdg", "key": "k"}))
    assert client.offline_username() == "xdg"
    monkeypatch.setenv("KAGGLE_USERNAME", "env")
    assert client.offline_username() == "env"


def test_a_lost_answer_without_a_local_record_is_pushed_again_not_taken_for_the_old_version(plan, fake):
    """outputs/ wiped (no kernels.json): a 5xx that made nothing must not record Kaggle's existing version."""
    quiet = {"log": lambda s: None, "sleep": Sleeps(), "out": io.StringIO()}
    assert flow.push(plan, runs=["train/resnet"], **quiet) == 0 and fake.versions[ref("train/resnet")] == 1
    (settings.kaggle_dir(plan) / "kernels.json").unlink()
    fake.fail("SaveKernel", 503)  # the new push is lost before Kaggle made anything
    assert flow.push(plan, runs=["train/resnet"], force=True, **quiet) == 0
    assert len(fake.calls("SaveKernel")) == 3 and fake.versions[ref("train/resnet")] == 2
    assert record.load_record(plan)["kernels"]["train/resnet"]["version"] == 2


@pytest.mark.parametrize("text, why", [("{not json", "cannot be read (not valid JSON)"),
                                       ('["u", "k"]', "is not a JSON object with username and key"),
                                       ('{"username": "u"}', "has no key"),
                                       ('{"key": ""}', "has no username and no key")])
def test_a_broken_kaggle_json_is_named_as_such(fake, monkeypatch, tmp_path, text, why):
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    cfg = tmp_path / "home" / ".kaggle"
    cfg.mkdir(parents=True, exist_ok=True)
    (cfg / "kaggle.json").write_text(text)
    (cfg / "kaggle.json").chmod(0o600)
    with pytest.raises(RoadtopError) as e:
        client.connect()
    assert str(e.value) == (f"{cfg / 'kaggle.json'} is there but {why}: download a new one from kaggle.com > "
                            f"Settings > API (Create New Token) and put it there, chmod 600")
