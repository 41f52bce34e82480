"""`pipeline.py predict` (roadtop.dag.label): its refusals before any model is loaded. Labelling with the demo's
trained ensemble is played in tests/test_predict.py, on the demo fixture."""

import argparse
from types import SimpleNamespace

import pytest
import yaml
from conftest import tiny_plan
from PIL import Image

from roadtop.dag import label
from roadtop.dag.plan import load_plan
from roadtop.errors import RoadtopError


def test_the_command_takes_images_params_out_and_bs():
    sub = argparse.ArgumentParser().add_subparsers()
    label.add_subcommand(sub)
    args = sub.choices["predict"].parse_args(["--images", "new", "--bs", "8"])
    assert (args.images, args.out, args.bs, args.func) == ("new", None, 8, label.cmd_predict)


def test_an_out_that_is_not_a_csv_and_a_plan_without_an_ensemble_are_one_line(tmp_path, tiny_data):
    f = tiny_plan(tmp_path, tiny_data)
    with pytest.raises(RoadtopError, match=r"^--out .*labels.txt: name a .csv file to write$"):
        label.cmd_predict(SimpleNamespace(params=f, out=str(tmp_path / "labels.txt"), images=tmp_path, bs=0))
    raw = yaml.safe_load(f.read_text())
    del raw["ensemble"]
    f.write_text(yaml.safe_dump(raw))
    (tmp_path / "new").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "new" / "a.jpg")
    with pytest.raises(RoadtopError, match=r"^plan.yaml has no ensemble: section: add one and run the plan"):
        label.label_images(load_plan(f), tmp_path / "new")
    assert not (tmp_path / "out" / "labels.csv").exists()
