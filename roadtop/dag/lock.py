"""One `run` at a time per output folder: a lock file naming its holder (pid, start time, command)."""

import fcntl
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from ..clock import utc_now
from ..errors import RoadtopError

__all__ = ["LOCK", "run_lock"]

LOCK = ".run.lock"  # in the plan's out_dir, while a run holds it


def _holder(fd) -> dict:
    """What the lock file open at `fd` says about its holder ({} if empty or unreadable)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 4096) or b"{}")
    except (OSError, ValueError):
        return {}


def _said(h: dict) -> str:
    """A holder as 'pid 123, started 2026-12-01 22:10:05 (pipeline.py run ...)'."""
    said = f"pid {h.get('pid', '?')}, started {h.get('started', '?')}"
    return f"{said} ({h['command']})" if h.get("command") else said


@contextmanager
def run_lock(folder, log=print):
    """Hold <folder>/.run.lock while the block runs; a second holder stops with one line naming the first.

    The lock is an flock on the file, which the system lets go when its process ends however it ends (even kill -9),
    so a lock whose holder died is free: it is taken over, and said so. The file holds the holder's pid, start time
    and command, for the line that the next run prints.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    f = folder / LOCK
    while True:
        fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            h = _holder(fd)
            os.close(fd)
            raise RoadtopError(f"{folder} is in use by another run ({_said(h)}): wait for it to end, or pass "
                               f"another --out") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(f).st_ino
        except FileNotFoundError:  # the last holder removed it as we opened it
            same = False
        if same:
            break
        os.close(fd)  # we locked a file the last holder had just removed: lock the one there now
    try:
        old = _holder(fd)
        if old.get("pid") and old.get("pid") != os.getpid():
            log(f"took over the lock of a run that ended without letting go ({_said(old)}): {f}")
        me = {"pid": os.getpid(), "started": utc_now(),
              "command": " ".join(["pipeline.py", *sys.argv[1:]])[:200]}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(me).encode())
        yield f
    finally:
        f.unlink(missing_ok=True)  # still locked: no one else can hold it between these two lines
        os.close(fd)
