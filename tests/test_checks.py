"""The data check: one line per problem, naming the file or id and what to do; saved runs named as data."""

import shutil

import numpy as np
import pandas as pd
import pytest

from roadtop import paddy
from roadtop.dag.checks import cached_check, check_image, check_paddy, check_runs_dirs


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
    assert "holds NaN" in str(probs[0]) and "nan" in probs[0].where and probs[0].run == str(tmp_path / "nan")
    assert "run 'order' has a different test_ids (order)" in str(probs[1])
    assert probs[1].run == str(tmp_path / "order")


# ---- the six cases: each gives exactly one line, naming the file or id and what to do ------------------------
def test_check_label_in_train_csv_disagrees_with_the_folder(broken):
    df = pd.read_csv(broken / "train.csv", dtype=str)
    row = df.iloc[3]
    other = next(lab for lab in paddy.LABELS if lab != row.label)
    df.loc[3, "label"] = other
    df.to_csv(broken / "train.csv", index=False)
    probs = check_paddy(broken)
    assert [str(p) for p in probs] == [
        (f"{broken / 'train.csv'}: row {row.image_id} says '{other}' but the image is in '{row.label}/': "
        f"fix the row or move the image (or use --skip-bad)")]
    assert probs[0].image == row.image_id


def test_check_image_nested_one_folder_too_deep(broken):
    f = next((broken / "train_images" / "blast").iterdir())
    (broken / "train_images" / "blast" / "more").mkdir()
    g = broken / "train_images" / "blast" / "more" / f.name
    shutil.move(f, g)
    probs = check_paddy(broken)
    assert [str(p) for p in probs] == [(f"{g}: image nested too deep (not directly in a label folder): "
                                       f"move it to {broken / 'train_images' / 'blast'}/ or use --skip-bad")]


def test_check_image_outside_any_label_folder(broken):
    f = next((broken / "train_images" / "blast").iterdir())
    shutil.move(f, broken / "train_images" / f.name)
    assert [str(p) for p in check_paddy(broken)] == [
        (f"{broken / 'train_images' / f.name}: image not in a label folder: "
        f"move it to {broken / 'train_images' / '<label>'}/ or use --skip-bad")]


def test_check_test_id_that_is_also_a_training_id(broken):
    t = next((broken / "test_images").iterdir())
    shutil.copy(t, broken / "train_images" / "blast" / t.name)
    df = pd.read_csv(broken / "train.csv", dtype=str)
    row = pd.DataFrame([{"image_id": t.name, "label": "blast", "variety": "ADT45", "age": "60"}])
    pd.concat([df, row]).to_csv(broken / "train.csv", index=False)
    probs = check_paddy(broken)
    assert [str(p) for p in probs] == [
        (f"{t}: test image id also a training image ({broken / 'train_images' / 'blast' / t.name}): "
        f"a test image must not be in train_images/: download the competition data again")]


def test_check_duplicate_ids_in_sample_submission(broken):
    sub = pd.read_csv(broken / "sample_submission.csv", dtype=str, keep_default_na=False)
    pd.concat([sub, sub.iloc[[2]]]).to_csv(broken / "sample_submission.csv", index=False)
    assert [str(p) for p in check_paddy(broken)] == [
        (f"{broken / 'sample_submission.csv'}: duplicate image id(s) {sub.image_id[2]}: keep one row per test image "
        f"(or use the competition's sample_submission.csv)")]


@pytest.mark.parametrize("name", ["train.csv", "sample_submission.csv"])
def test_check_missing_csv(broken, name):
    (broken / name).unlink()
    assert [str(p) for p in check_paddy(broken)] == [
        f"{broken / name}: missing: copy {name} from the competition data"]


@pytest.mark.parametrize("name, header", [("train.csv", "image_id,label,variety,age"),
                                          ("sample_submission.csv", "image_id,label")])
def test_check_missing_image_id_column(broken, name, header):
    df = pd.read_csv(broken / name, dtype=str, keep_default_na=False)
    df.rename(columns={"image_id": "id"}).to_csv(broken / name, index=False)
    cols = ",".join(["id", *df.columns[1:]])
    assert [str(p) for p in check_paddy(broken)] == [
        f"{broken / name}: no image_id column (header: {cols}): the header must be {header}"]


def test_check_unreadable_csv(broken):
    (broken / "train.csv").write_bytes(b"")
    assert [str(p) for p in check_paddy(broken)] == [
        f"{broken / 'train.csv'}: not a readable CSV (EmptyDataError): copy train.csv again"]


# ---- the cache: keyed on the data's content ------------------------------------------------------------------
def test_cached_check_is_reused_for_the_same_fingerprint_only(broken, tmp_path, monkeypatch):
    from roadtop.dag import checks

    calls = []
    real = checks.check_paddy
    monkeypatch.setattr(checks, "check_paddy", lambda *a: (calls.append(1), real(*a))[1])
    assert cached_check(broken, "fp1", tmp_path / "c") == [] and len(calls) == 1
    assert cached_check(broken, "fp1", tmp_path / "c") == [] and len(calls) == 1  # remembered
    f = next((broken / "train_images" / "blast").iterdir())
    f.write_bytes(f.read_bytes()[:100])
    probs = cached_check(broken, "fp2", tmp_path / "c")
    assert len(calls) == 2 and [p.image for p in probs] == [f.name]
    assert cached_check(broken, "fp2", tmp_path / "c") == probs  # read back as Problems


def test_check_runs_dirs_names_runs_by_key_and_blames_the_odd_one(tmp_path):
    from test_ensemble import run

    from roadtop.preds import save_preds

    for name in ("a", "b", "c"):
        save_preds(tmp_path / name, run(name, "x", [[1, 0, 0], [0, 1, 0]]))
    save_preds(tmp_path / "odd", run("odd", "x", [[1, 0, 0], [0, 1, 0]], test_ids=("t2", "t1")))
    dirs = {"train/odd": tmp_path / "odd", "train/a": tmp_path / "a", "train/b": tmp_path / "b",
            "multitarget": tmp_path / "c"}
    probs = check_runs_dirs(dirs)  # the odd run comes first, yet the order most runs share is the reference
    assert [p.run for p in probs] == ["train/odd"] and "run 'odd' has a different test_ids" in probs[0].what
    np.savez(tmp_path / "b" / "preds.npz", junk=np.zeros(1))
    assert sorted(p.run for p in check_runs_dirs(dirs)) == ["train/b", "train/odd"]
