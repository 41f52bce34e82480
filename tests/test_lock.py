"""One run per output folder (roadtop.dag.lock): a second holder stops in one line, a dead holder's lock is
taken over. (tests/test_faults.py plays it with two real `pipeline.py run` processes.)"""

import json
import os
import re
from datetime import datetime, timedelta

import pytest

from roadtop.dag.lock import LOCK, run_lock
from roadtop.errors import RoadtopError


def test_a_second_holder_stops_naming_the_first_and_the_lock_goes_when_the_run_ends(tmp_path):
    out = tmp_path / "out"  # made if missing
    with run_lock(out, log=lambda s: None) as f:
        assert f == out / LOCK
        me = json.loads(f.read_text())
        assert me["pid"] == os.getpid() and me["command"].startswith("pipeline.py")
        assert datetime.fromisoformat(me["started"]).utcoffset() == timedelta(0)  # in UTC, as every timestamp
        with pytest.raises(RoadtopError, match=rf"^{re.escape(str(out))} is in use by another run \(pid {os.getpid()}, "
                                               rf"started {re.escape(me['started'])} \(pipeline.py.*\)\): wait for it to end, or pass "
                                               r"another --out$"):
            with run_lock(out):
                pass
    assert not (out / LOCK).exists()


def test_the_lock_of_a_run_that_died_is_taken_over_and_said_so(tmp_path):
    (tmp_path / LOCK).write_text(json.dumps({"pid": 999999, "started": "2026-12-01 22:10:05"}))  # no flock held
    lines = []
    with run_lock(tmp_path, log=lines.append):
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    assert lines == [f"took over the lock of a run that ended without letting go (pid 999999, started "
                     f"2026-12-01 22:10:05): {tmp_path / LOCK}"]
