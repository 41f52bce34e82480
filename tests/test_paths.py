"""Where things live (roadtop.paths): Kaggle detection, default output folders, atomic writes, Kaggle's mounts."""

import os

import pytest
from fake_kaggle import USER

from roadtop import accum, paddy, paths


def test_kaggle_is_told_by_its_run_type_and_outputs_go_to_working_there(monkeypatch):
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    assert not paths.iskaggle() and paths.default_out("probe") == paths.ROOT / "outputs" / "probe"
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    assert paths.iskaggle() and paths.default_out("train", "res") == paths.KAGGLE_WORKING / "train" / "res"


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    f = tmp_path / "sub" / "table.csv"
    with paths.atomic_write(f) as fh:  # the folder is made
        fh.write("old\n")
    with pytest.raises(ZeroDivisionError), paths.atomic_write(f) as fh:
        fh.write("half")
        1 / 0
    assert f.read_text() == "old\n" and [p.name for p in f.parent.iterdir()] == ["table.csv"]  # no temp left
    with paths.atomic_write(f, "wb") as fh:
        fh.write(b"new")
    umask = os.umask(0)
    os.umask(umask)
    assert f.read_bytes() == b"new" and f.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would make it


@pytest.mark.parametrize("layout", ["paddy-disease-classification", "competitions/paddy-disease-classification",
                                    "datasets/someone/paddy-copy"])
def test_kaggle_inputs_are_found_whatever_the_mount_layout(tmp_path, monkeypatch, layout):
    """On Kaggle an empty data_path finds the competition by its train.csv + train_images/, the probe's results
    by probe.json, wherever the session mounted them."""
    root = tmp_path / "input"
    data = paddy.make_demo(root / layout, 24, 4, size=(16, 16), progress=False)
    (root / "notebooks" / USER / "roadtop-x-probe" / "probe").mkdir(parents=True)
    (root / "notebooks" / USER / "roadtop-x-probe" / "probe" / "probe.json").write_text("{}")
    (root / "other" / "train_images").mkdir(parents=True)  # no train.csv: not the competition
    monkeypatch.setattr(paddy, "KAGGLE_INPUT", root)
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    assert paddy.resolve_data("") == data
    assert paddy.resolve_data(f"/kaggle/input/{paddy.COMPETITION}") == data  # as a pushed kernel names it
    assert paths.kaggle_folders("train.csv", "train_images", root=root) == [data]
    assert paths.kaggle_folders(accum.PROBE_JSON, root=root) == [root / "notebooks" / USER / "roadtop-x-probe" / "probe"]
    # a pushed kernel's /kaggle/input/<slug>/... parameters, moved to where the session mounted them
    assert paths.mounted(root / "roadtop-x-probe" / "probe", root) == str(root / "notebooks" / USER / "roadtop-x-probe" / "probe")
    assert paths.mounted(root / data.name, root) == str(data)
    assert paths.mounted(root / "nowhere", root) == str(root / "nowhere")  # not mounted: as the plan named it
