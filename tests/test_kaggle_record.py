"""The push record (roadtop.kaggle.record, kernels.json): empty before any push, written whole, refused in one
line when broken; records written under the old names (status FAILED, key "sha") still read."""

import json
from types import SimpleNamespace

import pytest

from roadtop.errors import RoadtopError
from roadtop.kaggle import kernels, record
from roadtop.kaggle.schedule import KernelState, state_of
from roadtop.kaggle.settings import kaggle_dir


def _plan(tmp_path):
    """What the record needs of a plan: its out_dir and name."""
    return SimpleNamespace(out_dir=tmp_path / "out", name="paddy")


def test_the_record_is_empty_before_any_push_then_round_trips(tmp_path):
    plan = _plan(tmp_path)
    assert record.load_record(plan) == {"kernels": {}, "submissions": []}
    rec = {"kernels": {"train/a": {"ref": "me/roadtop-paddy-train-a", "version": 3, "status": "QUEUED"}},
           "submissions": [], "docker_image": "gcr.io/x"}
    record.save_record(plan, rec)
    f = kaggle_dir(plan) / "kernels.json"
    assert record.load_record(plan) == rec and [p.name for p in f.parent.iterdir()] == ["kernels.json"]
    f.write_text("{half")
    with pytest.raises(RoadtopError, match=r"kernels.json is not valid JSON: fix or delete it \(the kernels on "
                                           r"Kaggle stay\)"):
        record.load_record(plan)


def test_an_entry_written_before_the_renames_still_reads(tmp_path):
    """An entry of an older roadtop: its fingerprint under "sha", a lost source as status FAILED."""
    k = kernels.Kernel([SimpleNamespace(name="train/a")], "s", "me/s", tmp_path, {}, [], "abc123")
    old = json.loads('{"kernels": {"train/a": {"sha": "abc123", "status": "FAILED", "version": 1}}}')
    entry = old["kernels"]["train/a"]
    assert kernels.recorded_fingerprint(entry) == kernels.kernel_fingerprint(k, old) == "abc123"
    assert state_of(entry["status"]) is KernelState.RUN_FAILED and state_of(entry["status"]).bad
    assert kernels.recorded_fingerprint({"fingerprint": "new", "sha": "old"}) == "new"
