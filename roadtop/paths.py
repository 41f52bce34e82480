"""Where things live: repo root, Kaggle detection, default output folders, atomic writes."""

import glob
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

__all__ = ["ROOT", "NOTEBOOKS", "iskaggle", "KAGGLE_INPUT", "KAGGLE_WORKING", "default_out", "atomic_write", "kaggle_folders",
           "mounted"]

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
KAGGLE_INPUT = Path("/kaggle/input")
KAGGLE_WORKING = Path("/kaggle/working")


def iskaggle() -> bool:
    """True inside a Kaggle kernel (as fastkaggle does it: `KAGGLE_KERNEL_RUN_TYPE` is set there)."""
    return bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE", ""))


def default_out(*parts) -> Path:
    """Default output folder: /kaggle/working/... on Kaggle, else <repo>/outputs/..."""
    base = KAGGLE_WORKING if iskaggle() else ROOT / "outputs"
    return base.joinpath(*map(str, parts))


@contextmanager
def atomic_write(path, mode="w", **kw):
    """Open a temp file beside `path`; on success rename it over `path`, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the mode open() would have
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def kaggle_folders(*markers, root=KAGGLE_INPUT, depth: int = 4, prefer: str = "") -> list:
    """Folders under /kaggle/input holding all of `markers` (file or folder names), whatever the mount layout:
    /kaggle/input/<slug> as in the lesson, or competitions/<slug>, datasets/<owner>/<slug>, notebooks/<owner>/<slug>
    as in newer sessions, and their subfolders (`depth` levels); shallowest first, a folder named `prefer` first
    among equals."""
    root, found = Path(root), []
    if not root.is_dir():
        return found
    for here, dirs, files in os.walk(root):
        level = len(Path(here).relative_to(root).parts)
        if level and all(m in dirs or m in files for m in markers):
            found.append(Path(here))
            dirs[:] = []  # its own subfolders (e.g. 10,000 images) are not searched
        elif level >= depth:
            dirs[:] = []
        dirs.sort()
    return sorted(found, key=lambda p: (len(p.parts), p.name != prefer, str(p)))


def mounted(p, root=KAGGLE_INPUT) -> str:
    """`p`, a path under /kaggle/input/<slug>/... as a plan names it, where this session mounted it: as is when it
    exists, else under <kind>/<slug>/ or <kind>/<owner>/<slug>/ (newer sessions), shallowest first; else `p`."""
    p, root = str(p), str(root).rstrip("/") + "/"
    if os.path.exists(p) or not p.startswith(root):
        return p
    rest = p[len(root):]
    hits = sorted(glob.glob(root + "*/" + rest)) + sorted(glob.glob(root + "*/*/" + rest))
    return hits[0] if hits else p
