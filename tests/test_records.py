"""A job's records (roadtop.dag.records): complete / stale (what changed) / failed (cause) / pending."""

import json
from types import SimpleNamespace

from roadtop.dag import records


def job(tmp_path):
    return SimpleNamespace(name="train/a", out_dir=tmp_path / "a")


def write_manifest(j, fp, parts, outputs=("preds.npz",)):
    j.out_dir.mkdir(parents=True, exist_ok=True)
    for o in outputs:
        (j.out_dir / o).write_text("x")
    (j.out_dir / records.MANIFEST).write_text(json.dumps({"fingerprint": fp, "parts": parts, "outputs": outputs}))


def test_states_from_the_records(tmp_path):
    j = job(tmp_path)
    assert records.job_state(j)["state"] == "pending"
    parts = {"notebook": "n", "params": {"epochs": 1}, "data": "d", "upstream": {}}
    write_manifest(j, "F", parts)
    assert records.job_state(j, "F")["state"] == "complete"
    stale = records.job_state(j, "G", {**parts, "params": {"epochs": 2}, "data": "e"})
    assert stale["state"] == "stale" and stale["changed"] == ["params (epochs 1 -> 2)", "data"]
    (j.out_dir / "preds.npz").unlink()  # an output gone: not complete, whatever the manifest says
    assert records.job_state(j, "F")["state"] == "pending"


def test_failure_replaces_the_manifest_with_a_one_line_cause(tmp_path):
    j = job(tmp_path)
    write_manifest(j, "F", {})
    e = RuntimeError("boom\n  at line 3")
    rec = records.record_failure(j, records.cause(e), seconds=1.26)
    assert rec["cause"] == "RuntimeError: boom at line 3" and rec["seconds"] == 1.3
    assert not (j.out_dir / records.MANIFEST).exists()
    s = records.job_state(j, "F")
    assert s["state"] == "failed" and s["cause"] == "RuntimeError: boom at line 3"
    papermill_like = SimpleNamespace(ename="ValueError", evalue="bad " * 200)
    assert records.cause(papermill_like).startswith("ValueError: bad bad") and len(records.cause(papermill_like)) == 300
