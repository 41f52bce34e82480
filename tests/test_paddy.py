"""The demo generator's layout and determinism, the fixed holdout and the k folds (scikit-learn's, seeded), and a
missing data folder."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from roadtop import paddy
from roadtop.dag.checks import check_paddy
from roadtop.errors import RoadtopError


def test_demo_has_the_kaggle_layout(tiny_data):
    df = pd.read_csv(tiny_data / "train.csv")
    assert list(df.columns) == ["image_id", "label", "variety", "age"]
    assert set(df.label) == set(paddy.LABELS) and set(df.variety) <= set(paddy.VARIETIES)
    assert df.age.between(45, 82).all() and df.image_id.is_unique
    for iid, lab in zip(df.image_id, df.label):
        assert (tiny_data / "train_images" / lab / iid).exists()
    sub = pd.read_csv(tiny_data / "sample_submission.csv", keep_default_na=False)
    assert list(sub.columns) == ["image_id", "label"]
    assert sorted(sub.image_id) == sorted(f.name for f in (tiny_data / "test_images").iterdir())
    im = Image.open(next((tiny_data / "test_images").iterdir()))
    assert im.format == "JPEG" and im.size == (48, 64)  # portrait 3:4, like the real 480x640
    counts = df.label.value_counts()
    assert counts["normal"] > counts["bacterial_panicle_blight"]  # the real imbalance, scaled
    assert df.variety.value_counts().index[0] == "ADT45"
    assert check_paddy(tiny_data) == []


def test_demo_is_deterministic_from_its_seed(tmp_path, tiny_data):
    again = paddy.make_demo(tmp_path / "again", n_train=120, n_test=20, size=(48, 64), seed=1, progress=False)
    for rel in ["train.csv", "sample_submission.csv", "test_images/200001.jpg"]:
        assert (again / rel).read_bytes() == (tiny_data / rel).read_bytes()
    other = paddy.make_demo(tmp_path / "other", n_train=120, n_test=20, size=(48, 64), seed=2, progress=False)
    assert (other / "train.csv").read_bytes() != (tiny_data / "train.csv").read_bytes()


def test_holdout_is_fixed_stratified_and_disjoint(tiny_data):
    trn, hold = paddy.split_files(tiny_data, 0.1, 42)
    trn2, hold2 = paddy.split_files(tiny_data, 0.1, 42)
    assert hold == hold2 and not set(trn) & set(hold)
    assert {f.parent.name for f in hold} == set(paddy.LABELS)  # every class represented
    assert len(hold) == pytest.approx(12, abs=3)
    _, hold3 = paddy.split_files(tiny_data, 0.1, 7)
    assert hold3 != hold
    with pytest.raises(RoadtopError, match="holdout_pct=1.5 is out of range"):
        paddy.holdout_ids(["a"], ["x"], 1.5, 0)
    ids, labels = [f.name for f in trn + hold], [f.parent.name for f in trn + hold]
    assert paddy.holdout_ids(ids[::-1], labels[::-1], 0.1, 42) == {f.name for f in hold}  # the order does not matter
    assert paddy.holdout_ids(ids, labels, 0, 42) == set()
    with pytest.raises(RoadtopError, match=r"holdout_pct=0.05 cannot hold out every label of 131 images .*: add images"):
        paddy.holdout_ids(ids, labels, 0.05, 42)  # 7 images for 10 labels


def test_missing_data_folder_is_named(tmp_path):
    with pytest.raises(RoadtopError, match="train_images is missing: point data_path at the Paddy folder"):
        paddy.resolve_data(str(tmp_path))


def test_fold_ids_partition_stratified_and_seeded():
    rng = np.random.default_rng(0)
    ids = [f"{100000 + i}.jpg" for i in range(203)]
    labels = rng.choice(["a", "b", "c"], size=len(ids), p=[0.6, 0.3, 0.1]).tolist()
    folds = paddy.fold_ids(ids, labels, 5, seed=7)
    assert set(folds) == set(ids) and set(folds.values()) == set(range(5))
    sizes = np.bincount(list(folds.values()))
    assert sizes.max() - sizes.min() <= 1  # 203 images: folds of 40 or 41
    for lab in "abc":  # each label spread evenly over the folds
        per = np.bincount([folds[i] for i, la in zip(ids, labels) if la == lab], minlength=5)
        assert per.max() - per.min() <= 1
    shuffled = list(zip(ids, labels))[::-1]
    assert paddy.fold_ids([i for i, _ in shuffled], [la for _, la in shuffled], 5, seed=7) == folds  # order-free
    assert paddy.fold_ids(ids, labels, 5, seed=8) != folds
    with pytest.raises(RoadtopError, match="at least 2"):
        paddy.fold_ids(ids, labels, 1, seed=0)
    with pytest.raises(RoadtopError, match="folds=3 but no label has 3 training images: use fewer folds"):
        paddy.fold_ids(["1.jpg", "2.jpg", "3.jpg"], ["a", "b", "c"], 3)
    with pytest.raises(RoadtopError, match="duplicate image id 1.jpg"):
        paddy.fold_ids(["1.jpg", "1.jpg", "2.jpg"], ["a", "a", "a"], 2)
