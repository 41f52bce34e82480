"""The demo generator's layout and determinism, the fixed holdout, and every bad-data case of the data check."""

import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from roadtop import paddy
from roadtop.dag.checks import check_image, check_paddy, check_runs_dirs
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


def test_missing_data_folder_is_named(tmp_path):
    with pytest.raises(RoadtopError, match="train_images is missing: point data_path at the Paddy folder"):
        paddy.resolve_data(str(tmp_path))


@pytest.fixture
def broken(tmp_path, tiny_data):
    d = tmp_path / "broken"
    shutil.copytree(tiny_data, d)
    return d


def _one(probs, needle):
    hits = [str(p) for p in probs if needle in str(p)]
    assert len(hits) == 1, (needle, [str(p) for p in probs])
    return hits[0]


def test_check_finds_truncated_and_non_images(broken):
    f = next((broken / "train_images" / "blast").iterdir())
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 3])  # truncated JPEG
    g = next((broken / "test_images").iterdir())
    g.write_text("<html>not an image</html>")
    assert check_image(f) and check_image(g)
    probs = check_paddy(broken)
    line = _one(probs, f.name)
    assert "unreadable image" in line and "--skip-bad" in line
    assert "unreadable image" in _one(probs, g.name)


def test_check_unknown_label_folder(broken):
    src = next((broken / "train_images" / "blast").iterdir())
    (broken / "train_images" / "rust").mkdir()
    shutil.move(src, broken / "train_images" / "rust" / src.name)
    probs = check_paddy(broken)
    assert "label folder 'rust' is not in the plan's labels" in " ".join(map(str, probs))
    assert check_paddy(broken, labels=paddy.LABELS + ["rust"]) != probs


def test_check_rows_vs_images_and_duplicates(broken):
    df = pd.read_csv(broken / "train.csv", dtype=str)
    gone = df.iloc[0]
    (broken / "train_images" / gone.label / gone.image_id).unlink()  # a row without its image
    orphan = df.iloc[1]
    df.iloc[2:].to_csv(broken / "train.csv", index=False)  # an image without its row (and the first row gone)
    df2 = pd.concat([df.iloc[2:], df.iloc[[5]]])
    probs = check_paddy(broken)
    assert "no train.csv row for this image" in _one(probs, orphan.image_id)
    df2.to_csv(broken / "train.csv", index=False)
    assert f"duplicate image id {df.iloc[5].image_id}" in " ".join(map(str, check_paddy(broken)))
    dup = df.iloc[6]
    other = next(lab for lab in paddy.LABELS if lab != dup.label)
    shutil.copy(broken / "train_images" / dup.label / dup.image_id, broken / "train_images" / other / dup.image_id)
    assert "duplicate image id (also" in " ".join(map(str, check_paddy(broken)))


def test_check_row_without_image(broken):
    df = pd.read_csv(broken / "train.csv", dtype=str)
    (broken / "train_images" / df.label[0] / df.image_id[0]).unlink()
    line = _one(check_paddy(broken), f"row {df.image_id[0]} has no image")
    assert "restore the image or delete the row" in line


def test_check_test_images_vs_sample_submission(broken):
    (broken / "test_images" / "200001.jpg").unlink()
    shutil.copy(broken / "test_images" / "200002.jpg", broken / "test_images" / "299999.jpg")
    probs = " ".join(map(str, check_paddy(broken)))
    assert "id 200001.jpg has no image in test_images/" in probs
    assert "299999.jpg: test image not in sample_submission.csv" in probs


def test_check_saved_runs(tmp_path):
    from test_ensemble import run
    from roadtop.preds import save_preds

    save_preds(tmp_path / "ok", run("ok", "x", [[1, 0, 0], [0, 1, 0]]))
    save_preds(tmp_path / "nan", run("nan", "x", [[np.nan, 0, 1], [0, 1, 0]]))
    save_preds(tmp_path / "order", run("order", "x", [[1, 0, 0], [0, 1, 0]], test_ids=("t2", "t1")))
    probs = check_runs_dirs([tmp_path / "ok", tmp_path / "nan", tmp_path / "order"])
    assert len(probs) == 2
    assert "holds NaN" in str(probs[0]) and "nan" in probs[0].where
    assert "run 'order' has a different test_ids (order)" in str(probs[1])


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
