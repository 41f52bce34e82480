"""Fingerprints: data by content (hashes cached per file on size and mtime), job parts, and what changed."""

import dataclasses
import json
import os
import shutil

from conftest import tiny_plan

from roadtop.dag import fingerprint as fpr
from roadtop.dag.plan import load_plan


def test_file_hashes_are_read_once_then_reused_while_size_and_mtime_hold(tmp_path, tiny_data, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    cache = tmp_path / "cache" / "hashes.json"
    read = []
    real = fpr._file_sha
    monkeypatch.setattr(fpr, "_file_sha", lambda f: (read.append(f.name), real(f))[1])
    first = fpr.file_hashes(data, cache)
    n_files = sum(1 for p in data.rglob("*") if p.is_file())
    assert len(first) == n_files == len(read) and cache.exists()
    read.clear()
    assert fpr.file_hashes(data, cache) == first and read == []  # nothing re-read
    f = next((data / "train_images" / "blast").iterdir())
    rel = f.relative_to(data).as_posix()
    f.write_bytes(b"\xff" * f.stat().st_size)  # same size, other bytes
    again = fpr.file_hashes(data, cache)
    assert read == [f.name] and again[rel] != first[rel]
    assert {k: v for k, v in again.items() if k != rel} == {k: v for k, v in first.items() if k != rel}


def test_data_fingerprint_follows_content_not_names_and_sizes(tmp_path, tiny_data):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    cache = tmp_path / "checks"
    a = fpr.data_fingerprint(data, cache)
    assert fpr.data_fingerprint(data, cache) == a == fpr.data_fingerprint(data)  # cached or not: same value
    f = next((data / "test_images").iterdir())
    st = f.stat()
    f.write_bytes(bytes(reversed(f.read_bytes())))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as cached: the cache is trusted (documented)
    assert f.stat().st_size == st.st_size and fpr.data_fingerprint(data, cache) == a
    assert fpr.data_fingerprint(data) != a  # without the cache, the content decides
    os.utime(f)  # a write moves the mtime: the file is read again
    assert fpr.data_fingerprint(data, cache) != a


def test_job_parts_leave_out_pipeline_paths_and_name_what_changed(tmp_path, tiny_data):
    plan = load_plan(tiny_plan(tmp_path, tiny_data))
    job = plan.job("train/cnx")
    parts = fpr.job_parts(job, "D", {})
    assert set(parts) == set(fpr.PART_NAMES) and "out_dir" not in parts["params"]
    moved = load_plan(tiny_plan(tmp_path, tiny_data), out_dir=tmp_path / "elsewhere").job("train/cnx")
    assert fpr.fingerprint(fpr.job_parts(moved, "D", {})) == fpr.fingerprint(parts)
    new = fpr.job_parts(job.with_params(epochs=3), "E", {})
    assert fpr.fingerprint(new) != fpr.fingerprint(parts)
    assert fpr.what_changed(parts, new) == ["params (epochs 1 -> 3)", "data"]
    ens = plan.job("ensemble")
    old = fpr.job_parts(ens, "D", {"train/res": "r1", "train/cnx": "c1"})
    now = fpr.job_parts(ens, "D", {"train/res": "r1", "train/cnx": "c2"})
    assert fpr.what_changed(old, now) == ["upstream (train/cnx)"]
    assert fpr.what_changed(None, now) == ["fingerprint (recorded before its parts were)"]


def test_a_notebook_edit_changes_the_notebook_part_only(tmp_path, tiny_data):
    job = load_plan(tiny_plan(tmp_path, tiny_data)).job("train/res")
    before = fpr.job_parts(job, "D", {})
    nb = json.loads(job.notebook.read_text())
    nb["cells"][0]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "ran"}]  # outputs don't count
    job = dataclasses.replace(job, notebook=tmp_path / "train.ipynb")
    job.notebook.write_text(json.dumps(nb))
    assert fpr.job_parts(job, "D", {}) == before
    nb["cells"][-1]["source"] = "".join(nb["cells"][-1]["source"]) + "\nprint('one more line')"
    job.notebook.write_text(json.dumps(nb))
    assert fpr.what_changed(before, fpr.job_parts(job, "D", {})) == ["notebook"]


def test_the_probe_is_stale_when_the_training_code_it_runs_changes(tmp_path, tiny_data):
    """probe.ipynb trains with train.ipynb's export cells (nbcode.load): editing them changes the probe's notebook
    part; editing a train.ipynb cell the probe does not run leaves it as it was."""
    job = load_plan(tiny_plan(tmp_path, tiny_data, probe={})).job("probe")
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    for name in ("probe.ipynb", "train.ipynb"):
        shutil.copy(job.notebook.parent / name, nbs / name)
    job = dataclasses.replace(job, notebook=nbs / "probe.ipynb")
    before = fpr.job_parts(job, "D", {})
    train = json.loads((nbs / "train.ipynb").read_text())
    plain = next(c for c in train["cells"] if c["cell_type"] == "code" and "export" not in c["metadata"].get("tags", []))
    plain["source"] = "".join(plain["source"]) + "\nprint('not run by the probe')"
    (nbs / "train.ipynb").write_text(json.dumps(train))
    assert fpr.job_parts(job, "D", {}) == before
    learner = next(c for c in train["cells"] if "def learner(" in "".join(c["source"]))
    learner["source"] = "".join(learner["source"]).replace("GradientAccumulation(64)", "GradientAccumulation(32)")
    (nbs / "train.ipynb").write_text(json.dumps(train))
    assert fpr.what_changed(before, fpr.job_parts(job, "D", {})) == ["notebook"]
