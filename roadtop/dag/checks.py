"""Data checks that run before any GPU time is spent: one line per problem, naming the file or id and the fix."""

import hashlib
import json
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

__all__ = ["Problem", "check_image", "check_paddy", "check_runs_dirs", "raise_problems", "cached_check"]

IMAGE_EXTS = {".jpg", ".jpeg", ".png"}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data. `image` is set when leaving that image out would fix it."""

    where: str
    what: str
    fix: str
    image: str = ""

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


def _images(folder: Path):
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def check_paddy(path, labels=None, threads: int = 4) -> list:
    """Every problem in a Paddy folder: bad JPEGs, unknown label folders, train.csv vs images, duplicates, test ids."""
    path, labels = Path(path), set(labels or LABELS)
    probs = []
    trn = _images(path / "train_images")
    tst = _images(path / "test_images")
    with ThreadPoolExecutor(threads) as ex:
        for f, why in zip(trn + tst, ex.map(check_image, trn + tst)):
            if why and f in trn:
                probs.append(Problem(str(f), f"unreadable image ({why})", "replace the file or use --skip-bad",
                                     image=f.name))
            elif why:  # a test image cannot be skipped: the submission needs a row for it
                probs.append(Problem(str(f), f"unreadable image ({why})", "restore it from the competition data"))
    seen = {}
    for f in trn:
        if f.parent.parent != path / "train_images":
            probs.append(Problem(str(f), "image not directly in a label folder",
                                 "move it to train_images/<label>/", image=f.name))
            continue
        if f.parent.name not in labels:
            probs.append(Problem(str(f), f"label folder '{f.parent.name}' is not in the plan's labels",
                                 "rename the folder, add the label to data.labels, or use --skip-bad", image=f.name))
        if f.name in seen:
            probs.append(Problem(str(f), f"duplicate image id (also {seen[f.name]})", "keep one of the two files",
                                 image=f.name))
        seen.setdefault(f.name, str(f))
    csv = path / "train.csv"
    if csv.exists():
        df = pd.read_csv(csv, dtype=str, keep_default_na=False)
        if "image_id" not in df.columns:
            probs.append(Problem(str(csv), "no image_id column", "the header must be image_id,label,variety,age"))
        else:
            for iid in df.loc[df["image_id"].duplicated(), "image_id"].unique():
                probs.append(Problem(str(csv), f"duplicate image id {iid}", "remove the repeated row"))
            rows = set(df["image_id"])
            for f in trn:
                if f.name not in rows:
                    probs.append(Problem(str(f), "no train.csv row for this image",
                                         "add its row (image_id,label,variety,age) or use --skip-bad", image=f.name))
            for iid in sorted(rows - set(seen)):
                probs.append(Problem(str(csv), f"row {iid} has no image under train_images/",
                                     "restore the image or delete the row"))
            if "label" in df.columns:
                where = {f.name: f.parent.name for f in trn}
                for iid, lab in zip(df["image_id"], df["label"]):
                    if iid in where and where[iid] != lab:
                        probs.append(Problem(str(csv), f"row {iid} says '{lab}' but the image is in '{where[iid]}/'",
                                             "fix the row or move the image", image=iid))
    else:
        probs.append(Problem(str(csv), "missing", "copy train.csv from the competition data"))
    for f in tst:
        if f.name in seen:
            probs.append(Problem(str(f), "test image id also used in train_images/", "check the data download"))
    sample = path / "sample_submission.csv"
    if sample.exists():
        ids = list(pd.read_csv(sample, dtype=str, keep_default_na=False).get("image_id", []))
        have = {f.name for f in tst}
        for iid in sorted(set(ids) - have)[:20]:
            probs.append(Problem(str(sample), f"id {iid} has no image in test_images/", "restore the test image"))
        for iid in sorted(have - set(ids))[:20]:
            probs.append(Problem(str(path / "test_images" / iid), "test image not in sample_submission.csv",
                                 "remove it or use the competition's sample_submission.csv"))
        if len(ids) != len(set(ids)):
            probs.append(Problem(str(sample), "duplicate image ids", "use the competition's sample_submission.csv"))
    else:
        probs.append(Problem(str(sample), "missing", "copy sample_submission.csv from the competition data"))
    return probs


def check_runs_dirs(run_dirs) -> list:
    """Problems in saved predictions: unreadable, NaN, not probabilities, or disagreeing vocab / test-id order."""
    probs, runs = [], []
    for d in run_dirs:
        try:
            runs.append(load_preds(d))
        except RoadtopError as e:
            probs.append(Problem(str(d), str(e), "rerun that run (pipeline.py run --only NAME --force)"))
    if len(runs) > 1:
        try:
            check_runs(runs)
        except RoadtopError as e:
            probs.append(Problem("ensemble", str(e), "rerun the named run"))
    return probs


def raise_problems(probs, what: str, limit: int = 20):
    """Print nothing; raise one RoadtopError whose message lists the problems one per line (first `limit`)."""
    if probs:
        shown = "\n".join(f"  {p}" for p in probs[:limit])
        more = f"\n  ... and {len(probs) - limit} more" if len(probs) > limit else ""
        raise RoadtopError(f"{what}: {len(probs)} problem(s) found, nothing was run:\n{shown}{more}")


def cached_check(path, fingerprint: str, cache_dir, labels=None) -> list:
    """check_paddy, remembered per data fingerprint so an unchanged dataset is decoded only once."""
    key = hashlib.sha256(f"{fingerprint}{sorted(labels or [])}".encode()).hexdigest()[:16]
    f = Path(cache_dir) / f"data-check-{key}.json"
    if f.exists():
        return [Problem(**p) for p in json.loads(f.read_text())]
    probs = check_paddy(path, labels)
    with atomic_write(f) as fh:
        json.dump([p.__dict__ for p in probs], fh)
    return probs
