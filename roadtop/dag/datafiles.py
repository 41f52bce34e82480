"""The data folder walked once, for the data check and the fingerprint alike: symlinks followed safely, any name."""

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DataFiles", "scan", "shown"]


@dataclass(frozen=True)
class DataFiles:
    """What one walk of a data folder found: its regular files (symlinks resolved) and what could not be read.

    `files` maps each file's path relative to `root` (a str; a name that is not UTF-8 keeps its bytes as
    surrogates, os.fsdecode) to (size, mtime_ns) of what it resolves to. `broken` maps a relative path to why it is
    not data: a symlink loop, a dangling link, a name that is not UTF-8 (that file is in `files` too, so it is
    hashed), a folder that cannot be read, something that is not a regular file.
    """

    root: Path
    files: dict = field(default_factory=dict)
    broken: dict = field(default_factory=dict)


def shown(s) -> str:
    """A path as printable text: bytes that are not UTF-8 as \\x escapes (what `ls -b` shows)."""
    return os.fsencode(str(s)).decode("utf-8", "backslashreplace")


def _target(p: bytes) -> str:
    """Where a symlink points, printable ('' if it is not a link)."""
    try:
        return shown(os.fsdecode(os.readlink(p)))
    except OSError:
        return ""


def _walk(folder: bytes, rel: str, ancestors: frozenset, out: DataFiles):
    """Add the files under `folder` (`rel` from the root) to `out`; a folder link back to an ancestor is a loop."""
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        out.broken[rel or "."] = f"folder cannot be read ({e.strerror})"
        return
    for e in entries:
        r = f"{rel}/{os.fsdecode(e.name)}" if rel else os.fsdecode(e.name)
        try:
            st = os.stat(e.path)  # follows the link, if it is one
        except OSError as err:
            to = _target(e.path)
            loop = err.errno == errno.ELOOP
            out.broken[r] = (f"symlink loop (to {to})" if loop else f"dangling symlink (to {to})" if to
                             else f"cannot be read ({err.strerror})")
            continue
        if stat.S_ISDIR(st.st_mode):
            if (st.st_dev, st.st_ino) in ancestors:
                out.broken[r] = f"symlink loop (to {_target(e.path)}, a folder it is in)"
            else:
                _walk(e.path, r, ancestors | {(st.st_dev, st.st_ino)}, out)
            continue
        if not stat.S_ISREG(st.st_mode):
            out.broken[r] = "not a regular file"
            continue
        out.files[r] = (st.st_size, st.st_mtime_ns)
        try:
            e.name.decode("utf-8")
        except UnicodeDecodeError:
            out.broken[r] = "file name is not UTF-8"


def scan(path) -> DataFiles:
    """Walk `path` once (sorted, following symlinks that resolve) into a DataFiles."""
    root = Path(path)
    out = DataFiles(root)
    top = os.fsencode(root)
    try:
        st = os.stat(top)
    except OSError as e:
        out.broken["."] = f"cannot be read ({e.strerror})"
        return out
    _walk(top, "", frozenset({(st.st_dev, st.st_ino)}), out)
    return out
