"""One walk of the data folder for the check and the fingerprint: symlink loops, dangling links and names that are
not UTF-8 are problem lines (the same in `check`, `status` and `run`); links that resolve are data."""

import os
import shutil

import pandas as pd
import pytest
from conftest import tiny_plan

from roadtop.dag import cli
from roadtop.dag.checks import check_paddy
from roadtop.dag.datafiles import scan
from roadtop.dag.fingerprint import data_fingerprint

ODD = os.fsdecode(b"\xff\xfe.jpg")  # a name that is not UTF-8, as os.fsdecode keeps it


@pytest.fixture
def data(tmp_path, tiny_data):
    d = tmp_path / "paddy"
    shutil.copytree(tiny_data, d)
    return d


def _break(d):
    """A folder link back to its parent, a dangling link and a non-UTF-8 name under train_images/."""
    t = d / "train_images"
    os.symlink("..", t / "blast" / "loop")
    os.symlink("gone.jpg", t / "blast" / "dangling.jpg")
    with open(os.fsencode(t / "normal") + b"/\xff\xfe.jpg", "wb") as f:
        f.write(b"not even an image")
    return [f"{t / 'blast' / 'dangling.jpg'}: dangling symlink (to gone.jpg): remove the link or restore the file "
            f"it points to",
            f"{t / 'blast' / 'loop'}: symlink loop (to .., a folder it is in): remove the link (it points back into "
            f"itself)",
            f"{t / 'normal'}/\\xff\\xfe.jpg: file name is not UTF-8: rename it (an image id is a plain name such as "
            f"100330.jpg)"]


def test_loops_dangling_links_and_odd_names_are_problems_and_hashed(data):
    want = _break(data)
    os.symlink("self", data / "train_images" / "self")  # a link to itself: ELOOP
    files = scan(data)
    assert f"train_images/normal/{ODD}" in files.files  # hashed like any file (its name as bytes)
    assert files.broken["train_images/self"].startswith("symlink loop")
    probs = [str(p) for p in check_paddy(data, files=files)]
    assert probs == want + [f"{data / 'train_images' / 'self'}: symlink loop (to self): remove the link (it points "
                            f"back into itself)"]
    a = data_fingerprint(data, data / ".." / "cache", files)
    assert a == data_fingerprint(data, data / ".." / "cache") == data_fingerprint(data)  # cached or not
    os.unlink(data / "train_images" / "blast" / "dangling.jpg")
    assert data_fingerprint(data) != a  # a broken entry is part of the data's fingerprint


def test_symlinked_label_folder_and_file_that_resolve_are_data(data, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.move(data / "train_images" / "blast", moved)
    os.symlink(moved, data / "train_images" / "blast")  # a label folder that is a link
    f = next((data / "test_images").iterdir())
    shutil.move(f, tmp_path / f.name)
    os.symlink(tmp_path / f.name, f)  # an image that is a link
    assert check_paddy(data) == []
    assert len(scan(data).files) == sum(1 for p in data.rglob("*") if p.is_file()) + len(list(moved.iterdir()))


def test_check_status_and_run_say_the_same_lines_without_a_traceback(data, tmp_path, capsys):
    want = _break(data)
    plan = tiny_plan(tmp_path, data)
    assert cli.main(["check", "--params", str(plan)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == want + [f"{data}: 3 problem(s); 0 saved run(s) checked"]
    for cmd in ("status", "run"):
        assert cli.main([cmd, "--params", str(plan)]) == 2
        err = capsys.readouterr().err.splitlines()
        assert err == [f"error: data check of {data}: 3 problem(s) found, nothing was run:", *(f"  {w}" for w in want)]
    assert not (tmp_path / "out" / "train").exists()  # no job started


def test_required_csv_columns_follow_the_plans_stages(data, tmp_path, capsys):
    df = pd.read_csv(data / "train.csv", dtype=str)
    df.drop(columns=["variety"]).to_csv(data / "train.csv", index=False)
    line = (f"{data / 'train.csv'}: no variety column (header: image_id,label,age), which this plan's stages read: "
            f"the header must have label,variety")
    mt = tiny_plan(tmp_path, data, multitarget={"arch": "test_resnet", "size": 32, "item_size": 64})
    assert cli.main(["check", "--params", str(mt)]) == 1
    assert capsys.readouterr().out.splitlines()[0] == line
    assert cli.main(["check", "--params", str(tiny_plan(tmp_path, data))]) == 0  # train alone does not read it
    df.drop(columns=["label"]).to_csv(data / "train.csv", index=False)
    assert [str(p) for p in check_paddy(data, columns=("label",))] == [
        f"{data / 'train.csv'}: no label column (header: image_id,variety,age), which this plan's stages read: "
        f"the header must have label"]


def test_the_problem_count_is_the_true_one_and_the_first_20_are_listed(data, tmp_path, capsys):
    sub = pd.read_csv(data / "sample_submission.csv", dtype=str, keep_default_na=False)
    extra = pd.DataFrame({"image_id": [f"9{i:05d}.jpg" for i in range(25)], "label": "normal"})
    pd.concat([sub, extra]).to_csv(data / "sample_submission.csv", index=False)
    plan = tiny_plan(tmp_path, data)
    assert cli.main(["check", "--params", str(plan)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 21 and out[-1] == f"{data}: 25 problem(s), the first 20 listed; 0 saved run(s) checked"
    assert cli.main(["run", "--params", str(plan)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith(": 25 problem(s) found, nothing was run:") and len(err) == 22
    assert err[-1] == "  ... and 5 more"
