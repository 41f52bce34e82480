"""Paddy Doctor data: where it is, a demo generator in the real Kaggle layout, and the fixed holdout."""

import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from fastai.data.transforms import get_image_files
from fastprogress.fastprogress import progress_bar
from PIL import Image, ImageDraw, ImageFilter
from sklearn.model_selection import StratifiedKFold, train_test_split

from .errors import RoadtopError
from .paths import KAGGLE_INPUT, default_out, iskaggle, kaggle_folders

__all__ = [
    "COMPETITION", "LABELS", "LABEL_COUNTS", "VARIETIES", "VARIETY_SHARES",
    "make_demo", "resolve_data", "read_train_csv", "holdout_ids", "fold_ids", "split_files", "test_files",
    "read_sample_submission",
]

COMPETITION = "paddy-disease-classification"

# Real class counts of train_images/ (DATA_FACTS.md); the demo keeps these proportions.
LABEL_COUNTS = {
    "normal": 1764, "blast": 1738, "hispa": 1594, "dead_heart": 1442, "tungro": 1088, "brown_spot": 965,
    "downy_mildew": 620, "bacterial_leaf_blight": 479, "bacterial_leaf_streak": 380, "bacterial_panicle_blight": 337,
}
LABELS = sorted(LABEL_COUNTS)
# ADT45 is by far the most common variety; the rest share what is left.
VARIETY_SHARES = {
    "ADT45": 0.66, "KarnatakaPonni": 0.09, "Ponni": 0.063, "AtchayaPonni": 0.044, "Zonal": 0.044,
    "AndraPonni": 0.036, "Onthanel": 0.021, "IR20": 0.011, "RR": 0.0035, "Surya": 0.0275,
}
VARIETIES = sorted(VARIETY_SHARES)

# The demo's visual signal. Disease: colour, size and number of lesions. Variety: leaf colour and vein spacing.
_LESION = {  # label -> (RGB, radius as a fraction of width, count)
    "normal": (None, 0, 0),
    "blast": ((150, 110, 60), 0.10, 5),
    "hispa": ((235, 235, 215), 0.05, 14),
    "dead_heart": ((120, 70, 30), 0.22, 2),
    "tungro": ((240, 200, 40), 0.16, 4),
    "brown_spot": ((110, 50, 20), 0.06, 10),
    "downy_mildew": ((200, 220, 190), 0.14, 4),
    "bacterial_leaf_blight": ((230, 230, 120), 0.12, 6),
    "bacterial_leaf_streak": ((190, 120, 170), 0.08, 9),
    "bacterial_panicle_blight": ((90, 90, 200), 0.18, 3),
}


def _variety_look(i):
    """Leaf colour and vein spacing for the i-th variety: distinct hues of green, yellow-green and blue-green."""
    greens = [(40, 120, 40), (90, 150, 30), (30, 90, 70), (120, 160, 60), (50, 140, 110),
              (20, 70, 20), (140, 130, 40), (70, 110, 90), (100, 180, 100), (60, 60, 30)]
    return greens[i], 6 + 3 * i


def _draw(rng, label, variety, size):
    """One synthetic leaf photo (PIL image, `size`=(w, h)) whose lesions say the disease and leaf the variety."""
    w, h = size
    base, spacing = _variety_look(VARIETIES.index(variety))
    base = np.clip(np.array(base) + rng.normal(0, 8, 3), 0, 255)
    arr = np.empty((h, w, 3), np.float32)
    arr[:] = base
    arr += rng.normal(0, 10, (h, w, 3))  # sensor noise
    img = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    vein = tuple(int(c) for c in np.clip(base * 1.35 + 20, 0, 255))
    off = rng.integers(0, spacing)
    for x in range(int(off * w / 96), w, max(2, int(spacing * w / 96))):
        draw.line([(x, 0), (x + int(rng.integers(-3, 4) * w / 96), h)], fill=vein, width=max(1, w // 96))
    colour, radius, count = _LESION[label]
    for _ in range(count):
        r = radius * w * rng.uniform(0.7, 1.3)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        jitter = tuple(int(c) for c in np.clip(np.array(colour) + rng.normal(0, 12, 3), 0, 255))
        draw.ellipse([cx - r, cy - r * rng.uniform(0.6, 1.6), cx + r, cy + r * rng.uniform(0.6, 1.6)], fill=jitter)
    return img.filter(ImageFilter.GaussianBlur(radius=w / 320))


def _counts(total, shares, rng, minimum):
    """Split `total` in proportion to `shares`, each at least `minimum`."""
    names = list(shares)
    p = np.array([shares[n] for n in names], float)
    n = np.maximum(minimum, np.round(total * p / p.sum()).astype(int))
    return dict(zip(names, n.tolist()))


def make_demo(path=None, n_train: int = 600, n_test: int = 100, size=(96, 128), seed: int = 42,
              progress: bool = True) -> Path:
    """Write a Paddy-shaped dataset (real layout, labels and varieties) at `path`, unless it is already there.

    Deterministic from `seed`. `size` is (width, height); the real photos are (480, 640). The folder is built under a
    temporary name and renamed, so a half-written demo is never mistaken for a finished one.
    """
    w, h = size
    path = Path(path) if path else default_out("data", f"paddy-demo-{n_train}-{n_test}-{w}x{h}-{seed}")
    if (path / "sample_submission.csv").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        rng = np.random.default_rng(seed)
        per_label = _counts(n_train, LABEL_COUNTS, rng, minimum=8)
        labels = [lab for lab, n in per_label.items() for _ in range(n)]
        p_var = np.array([VARIETY_SHARES[v] for v in VARIETIES]) / sum(VARIETY_SHARES.values())
        varieties = rng.choice(VARIETIES, size=len(labels), p=p_var)
        ids = 100001 + rng.permutation(len(labels))
        rows, jobs = [], []
        for iid, lab, var in zip(ids, labels, varieties):
            rows.append((f"{iid}.jpg", lab, var, int(rng.integers(45, 83))))
            jobs.append((tmp / "train_images" / lab / f"{iid}.jpg", lab, var))
        test_labels = rng.choice(LABELS, size=n_test, p=[LABEL_COUNTS[lab] / sum(LABEL_COUNTS.values()) for lab in LABELS])
        test_vars = rng.choice(VARIETIES, size=n_test, p=p_var)
        for i, (lab, var) in enumerate(zip(test_labels, test_vars)):
            jobs.append((tmp / "test_images" / f"{200001 + i}.jpg", lab, var))
        for dest, lab, var in progress_bar(jobs, display=progress, leave=False):
            dest.parent.mkdir(parents=True, exist_ok=True)
            _draw(np.random.default_rng([seed, int(dest.stem)]), lab, var, (w, h)).save(dest, quality=90)
        rows.sort(key=lambda r: (LABELS.index(r[1]), r[0]))
        pd.DataFrame(rows, columns=["image_id", "label", "variety", "age"]).to_csv(tmp / "train.csv", index=False)
        sub = pd.DataFrame({"image_id": [f"{200001 + i}.jpg" for i in range(n_test)], "label": ""})
        sub.to_csv(tmp / "sample_submission.csv", index=False)
        try:
            os.rename(tmp, path)
        except OSError:  # someone else finished the same demo first: theirs is identical
            if not (path / "sample_submission.csv").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def resolve_data(data_path: str = "", **demo) -> Path:
    """The Paddy folder: `data_path` if given, the competition input on Kaggle (found by its train.csv and
    train_images/ wherever Kaggle mounted it), else the generated demo."""
    if data_path:
        path = Path(data_path).expanduser()
    elif iskaggle():
        path = KAGGLE_INPUT / COMPETITION
    else:
        return make_demo(**demo)
    if not path.exists() and (iskaggle() or str(path).startswith(f"{KAGGLE_INPUT}/")):
        hits = kaggle_folders("train.csv", "train_images", root=KAGGLE_INPUT, prefer=COMPETITION)
        path = hits[0] if hits else path
    for need in ("train_images", "test_images", "train.csv", "sample_submission.csv"):
        if not (path / need).exists():
            raise RoadtopError(f"{path / need} is missing: point data_path at the Paddy folder "
                               f"(kaggle competitions download -c {COMPETITION}, then unzip)")
    return path


def read_train_csv(path) -> pd.DataFrame:
    """train.csv indexed by image_id, checked for the columns the pipeline reads."""
    f = Path(path) / "train.csv"
    df = pd.read_csv(f, dtype={"image_id": str, "label": str, "variety": str})
    missing = {"image_id", "label", "variety"} - set(df.columns)
    if missing:
        raise RoadtopError(f"{f} lacks column(s) {sorted(missing)}: expected image_id,label,variety,age")
    return df.set_index("image_id", drop=False)


def read_sample_submission(path) -> pd.DataFrame:
    """sample_submission.csv: the ids (and their order) a submission must have."""
    f = Path(path) / "sample_submission.csv"
    df = pd.read_csv(f, dtype=str, keep_default_na=False)
    if "image_id" not in df.columns:
        raise RoadtopError(f"{f} has no image_id column: expected image_id,label")
    return df


def _by_id(image_ids, labels):
    """(ids, labels) as arrays sorted by id, so a split depends on the ids and labels, not on their order."""
    ids, labels = np.asarray(list(image_ids), dtype=str), np.asarray(list(labels), dtype=str)
    order = np.argsort(ids, kind="stable")
    return ids[order], labels[order]


def holdout_ids(image_ids, labels, pct: float, seed: int) -> set:
    """A fixed, per-label stratified slice of the training ids that no run trains or validates on.

    scikit-learn's `train_test_split(stratify=)`, seeded: depends only on the ids, `pct` and `seed`, so every run
    (and the ensemble) sees the same holdout.
    """
    if not 0 <= pct < 1:
        raise RoadtopError(f"holdout_pct={pct} is out of range: use a fraction in [0, 1), e.g. 0.1")
    ids, labels = _by_id(image_ids, labels)
    if pct == 0 or not len(ids):
        return set()
    try:
        _, held = train_test_split(ids, test_size=pct, stratify=labels, random_state=seed)
    except ValueError as e:  # a label with one image, or fewer held-out images than labels
        raise RoadtopError(f"holdout_pct={pct} cannot hold out every label of {len(ids)} images ({e}): "
                           f"add images, raise holdout_pct, or set holdout_pct: 0") from None
    return set(held.tolist())


def fold_ids(image_ids, labels, k: int, seed: int = 42) -> dict:
    """id -> fold in range(k): scikit-learn's `StratifiedKFold`, shuffled and seeded, so each id is in exactly one
    fold's validation set.

    Depends only on the ids, their labels, `k` and `seed` (not on their order), so every fold job of a k-fold run
    computes the same folds.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise RoadtopError(f"folds={k!r}: k-fold needs an integer of at least 2 (e.g. folds: 5)")
    ids, labels = _by_id(image_ids, labels)
    if len(ids) < k:
        raise RoadtopError(f"folds={k} but only {len(ids)} training images: use fewer folds")
    dup = ids[1:][ids[1:] == ids[:-1]]
    if len(dup):
        raise RoadtopError(f"fold_ids: duplicate image id {dup[0]}: ids must be unique")
    with warnings.catch_warnings():  # a label with fewer images than folds is spread as far as it goes: say nothing
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        try:
            parts = list(StratifiedKFold(k, shuffle=True, random_state=seed).split(ids, labels))
        except ValueError:  # every label has fewer than k images
            raise RoadtopError(f"folds={k} but no label has {k} training images: use fewer folds") from None
    return {iid: f for f, (_, valid) in enumerate(parts) for iid in ids[valid].tolist()}


def split_files(path, holdout_pct: float, holdout_seed: int, skip=()):
    """(train files, holdout files): the images under train_images/ (less `skip` ids), the holdout taken out, sorted."""
    skip = set(skip)
    files = sorted(f for f in get_image_files(Path(path) / "train_images") if f.name not in skip)
    if not files:
        raise RoadtopError(f"{Path(path) / 'train_images'} holds no images: expected train_images/<label>/<id>.jpg")
    held = holdout_ids([f.name for f in files], [f.parent.name for f in files], holdout_pct, holdout_seed)
    return [f for f in files if f.name not in held], [f for f in files if f.name in held]


def test_files(path):
    """The test images, sorted by name (the order every run saves its predictions in)."""
    files = sorted(get_image_files(Path(path) / "test_images"), key=lambda f: f.name)
    if not files:
        raise RoadtopError(f"{Path(path) / 'test_images'} holds no images: expected test_images/<id>.jpg")
    return files
