"""Data checks that run before any GPU time is spent: one line per problem, naming the file or id and the fix."""

import hashlib
import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image

from ..ensemble import check_runs
from ..errors import RoadtopError
from ..paddy import LABELS
from ..paths import atomic_write
from ..preds import load_preds
from .datafiles import scan, shown

__all__ = ["SHOWN", "Problem", "check_image", "walk_problems", "check_paddy", "check_runs_dirs", "raise_problems",
           "cached_check"]

IMAGE_EXTS = {".jpg", ".jpeg", ".png"}
SHOWN = 20  # problems listed in full; the count before them is the true one


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data or a saved run. `image` is set when leaving that image out would fix it;
    `run` names the run whose saved predictions are at fault."""

    where: str
    what: str
    fix: str
    image: str = ""
    run: str = ""

    def __str__(self):
        return f"{self.where}: {self.what}: {self.fix}"


def check_image(f: Path) -> str:
    """'' if the image decodes completely, else why not (truncated, not an image, ...)."""
    try:
        with Image.open(f) as im:
            im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))  # decode at 1/8 scale: fast, still whole
            im.load()
        return ""
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds for bad files
        return " ".join(f"{type(e).__name__}: {e}".split())[:160]


def _images(files, sub: str) -> list:
    """The images under `sub`/ in a scan (sorted), leaving out what the scan found broken (said by walk_problems)."""
    return [files.root / rel for rel in sorted(files.files) if rel.startswith(f"{sub}/") and rel not in files.broken
            and Path(rel).suffix.lower() in IMAGE_EXTS]


_BROKEN_FIX = {"symlink loop": "remove the link (it points back into itself)",
               "dangling symlink": "remove the link or restore the file it points to",
               "file name is not UTF-8": "rename it (an image id is a plain name such as 100330.jpg)"}


def walk_problems(files) -> list:
    """One Problem per entry of a data folder's scan that is not data: symlink loops, dangling links, odd names."""
    return [Problem(shown(files.root / rel), why,
                    next((fix for k, fix in _BROKEN_FIX.items() if why.startswith(k)), "fix or remove it"))
            for rel, why in sorted(files.broken.items())]


def _missing_columns(df, f: Path, columns) -> list:
    """One Problem naming the columns of `columns` that `df` (read from `f`) lacks."""
    lack = [c for c in columns if c not in df.columns]
    return [Problem(str(f), f"no {', '.join(lack)} column{'s' if len(lack) > 1 else ''} (header: "
                            f"{','.join(map(str, df.columns))[:80]}), which this plan's stages read",
                    f"the header must have {','.join(columns)}")] if lack else []


def _read_csv(f: Path, probs: list, header: str):
    """The CSV as strings, or None after adding one problem: missing, unreadable, or without an image_id column."""
    if not f.exists():
        probs.append(Problem(str(f), "missing", f"copy {f.name} from the competition data"))
        return None
    try:
        df = pd.read_csv(f, dtype=str, keep_default_na=False)
    except Exception as e:  # noqa: BLE001 - pandas raises several kinds for a broken CSV
        probs.append(Problem(str(f), f"not a readable CSV ({type(e).__name__})", f"copy {f.name} again"))
        return None
    if "image_id" not in df.columns:
        probs.append(Problem(str(f), f"no image_id column (header: {','.join(map(str, df.columns))[:80]})",
                             f"the header must be {header}"))
        return None
    return df


def check_paddy(path, labels=None, threads: int = 4, columns=(), files=None) -> list:
    """Every problem in a Paddy folder: broken links and odd names, bad JPEGs, unknown label folders, train.csv vs
    images (and its `columns`, the ones the plan's stages read), duplicates, test ids. `files`: the folder's scan
    (the one the fingerprint hashed), else scanned here."""
    path, labels = Path(path), set(labels or LABELS)
    files = files or scan(path)
    probs = walk_problems(files)
    trn = _images(files, "train_images")
    tst = _images(files, "test_images")
    trn_set = set(trn)
    with ThreadPoolExecutor(threads) as ex:
        for f, why in zip(trn + tst, ex.map(check_image, trn + tst)):
            if why and f in trn_set:
                probs.append(Problem(str(f), f"unreadable image ({why})", "replace the file or use --skip-bad",
                                     image=f.name))
            elif why:  # a test image cannot be skipped: the submission needs a row for it
                probs.append(Problem(str(f), f"unreadable image ({why})", "restore it from the competition data"))
    seen, nested = {}, set()
    for f in trn:
        if f.parent.parent != path / "train_images":
            root = path / "train_images"
            if f.parent == root:
                what, up = "image not in a label folder", root / "<label>"
            else:
                what = "image nested too deep (not directly in a label folder)"
                up = f.parent.parent if f.parent.parent.parent == root else root / "<label>"
            probs.append(Problem(str(f), what, f"move it to {up}/ or use --skip-bad", image=f.name))
            nested.add(f.name)
            continue
        if f.parent.name not in labels:
            probs.append(Problem(str(f), f"label folder '{f.parent.name}' is not in the plan's labels",
                                 "rename the folder, add the label to data.labels, or use --skip-bad", image=f.name))
        if f.name in seen:
            probs.append(Problem(str(f), f"duplicate image id (also {seen[f.name]})", "keep one of the two files",
                                 image=f.name))
        seen.setdefault(f.name, str(f))
    csv = path / "train.csv"
    df = _read_csv(csv, probs, "image_id,label,variety,age")
    if df is not None:
        probs += _missing_columns(df, csv, columns)
        for iid in df.loc[df["image_id"].duplicated(), "image_id"].unique():
            probs.append(Problem(str(csv), f"duplicate image id {iid}", "remove the repeated row"))
        rows = set(df["image_id"])
        for f in trn:
            if f.name not in rows and f.name not in nested:
                probs.append(Problem(str(f), "no train.csv row for this image",
                                     "add its row (image_id,label,variety,age) or use --skip-bad", image=f.name))
        for iid in sorted(rows - set(seen) - nested):
            probs.append(Problem(str(csv), f"row {iid} has no image under train_images/",
                                 "restore the image or delete the row"))
        if "label" in df.columns:
            folder = {f.name: f.parent.name for f in trn if f.name not in nested}
            for iid, lab in zip(df["image_id"], df["label"]):
                if iid in folder and folder[iid] != lab:
                    probs.append(Problem(str(csv), f"row {iid} says '{lab}' but the image is in '{folder[iid]}/'",
                                         "fix the row or move the image (or use --skip-bad)", image=iid))
    for f in tst:
        if f.name in seen:
            probs.append(Problem(str(f), f"test image id also a training image ({seen[f.name]})",
                                 "a test image must not be in train_images/: download the competition data again"))
    sample = path / "sample_submission.csv"
    sub = _read_csv(sample, probs, "image_id,label")
    if sub is not None:
        ids = list(sub["image_id"])
        have = {f.name for f in tst}
        for iid in sorted(set(ids) - have):
            probs.append(Problem(str(sample), f"id {iid} has no image in test_images/", "restore the test image"))
        for iid in sorted(have - set(ids)):
            probs.append(Problem(str(path / "test_images" / iid), "test image not in sample_submission.csv",
                                 "remove it or use the competition's sample_submission.csv"))
        dups = sorted(sub.loc[sub["image_id"].duplicated(), "image_id"].unique())
        if dups:
            probs.append(Problem(str(sample), f"duplicate image id(s) {', '.join(dups[:5])}"
                                              f"{' ...' if len(dups) > 5 else ''}",
                                 "keep one row per test image (or use the competition's sample_submission.csv)"))
    return probs


def _signature(r) -> tuple:
    """What runs must share to be ensembled: vocab, test ids and holdout ids, in order."""
    return tuple(map(tuple, (r.vocab, r.test_ids, r.holdout_ids)))


def check_runs_dirs(run_dirs) -> list:
    """Problems in saved predictions: unreadable, NaN, not probabilities, or disagreeing vocab / test-id order.

    `run_dirs` maps run name -> folder (a list of folders names each run by its folder). Each problem names its
    run in `run`; runs that disagree are measured against the order most runs share (the first on a tie).
    """
    named = dict(run_dirs) if isinstance(run_dirs, dict) else {str(d): d for d in run_dirs}
    probs, runs = [], {}
    for name, d in named.items():
        try:
            runs[name] = load_preds(d)
        except RoadtopError as e:
            probs.append(Problem(str(d), str(e), "rerun that run (pipeline.py run --only NAME --force)", run=name))
    if len(runs) > 1:
        common = Counter(map(_signature, runs.values())).most_common(1)[0][0]
        ref = next(r for r in runs.values() if _signature(r) == common)
        for name, r in runs.items():
            try:
                check_runs([ref, r])
            except RoadtopError as e:
                probs.append(Problem(str(named[name]), str(e), "rerun it on the same data", run=name))
    return probs


def raise_problems(probs, what: str, limit: int = SHOWN):
    """Print nothing; raise one RoadtopError whose message lists the problems one per line (first `limit`)."""
    if probs:
        lines = "\n".join(f"  {p}" for p in probs[:limit])
        more = f"\n  ... and {len(probs) - limit} more" if len(probs) > limit else ""
        raise RoadtopError(f"{what}: {len(probs)} problem(s) found, nothing was run:\n{lines}{more}")


def cached_check(path, fingerprint: str, cache_dir, labels=None, columns=(), files=None) -> list:
    """check_paddy, remembered per data fingerprint so an unchanged dataset is decoded only once."""
    cols = list(columns) if columns else ""  # no columns: the key of a check made before they were checked
    key = hashlib.sha256(f"{fingerprint}{sorted(labels or [])}{cols}".encode()).hexdigest()[:16]
    f = Path(cache_dir) / f"data-check-{key}.json"
    if f.exists():
        return [Problem(**p) for p in json.loads(f.read_text())]
    probs = check_paddy(path, labels, 4, columns, files)
    with atomic_write(f) as fh:
        json.dump([p.__dict__ for p in probs], fh)
    return probs
