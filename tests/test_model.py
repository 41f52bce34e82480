"""Saved models: fp16 safetensors + model.json, rebuilt in a fresh process with no network and no data."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from offline import offline_env

from conftest import ROOT
from roadtop import model
from roadtop.errors import RoadtopError


def _learner(data, n_out=None):
    """A test_resnet learner built as train.ipynb builds one (Resize item transform, aug_transforms at 32 px)."""
    from fastai.vision.all import (CategoryBlock, DataBlock, ImageBlock, RandomSplitter, Resize, aug_transforms,
                                   get_image_files, parent_label, vision_learner)

    files = sorted(get_image_files(data / "train_images"))
    item = Resize(64, method="squish")
    dls = DataBlock(blocks=(ImageBlock, CategoryBlock), get_items=lambda _: files, get_y=parent_label,
                    splitter=RandomSplitter(0.2, seed=0), item_tfms=item,
                    batch_tfms=aug_transforms(size=32, min_scale=0.75)).dataloaders(data, bs=16, num_workers=0)
    kw = {"n_out": n_out, "loss_func": lambda out, y: out.sum()} if n_out else {}
    return vision_learner(dls, "test_resnet", pretrained=False, **kw), item


@pytest.fixture(scope="module")
def saved(tiny_data, tmp_path_factory):
    """A model saved by save_model, and its in-process prediction of one test image (TTA, seed 0)."""
    learn, item = _learner(tiny_data)
    out = tmp_path_factory.mktemp("run") / "res"
    model.save_model(learn, out, "test_resnet", item, 32, tta_n=2)
    img = sorted((tiny_data / "test_images").iterdir())[0]
    probs = model.predict(model.Model("res", json.loads((out / model.CONFIG).read_text()), learn.model), [img])
    return out, img, probs, list(learn.dls.vocab)


def test_saved_model_is_fp16_safetensors_and_json(saved):
    out, _, _, vocab = saved
    from safetensors.torch import load_file

    assert sorted(p.name for p in out.iterdir()) == [model.CONFIG, model.WEIGHTS]
    weights = load_file(out / model.WEIGHTS)
    floats = {str(v.dtype) for v in weights.values() if v.is_floating_point()}
    assert floats == {"torch.float16"}
    cfg = json.loads((out / model.CONFIG).read_text())
    assert cfg["arch"] == "test_resnet" and cfg["vocab"] == vocab and cfg["n_out"] == len(vocab)
    assert cfg["item"] == {"method": "squish", "size": [64, 64]} and cfg["size"] == 32 and cfg["min_scale"] == 0.75
    assert cfg["tta"] == {"n": 2, "seed": 0, "softmax": "each pass"} and cfg["bs"] == 16 and cfg["normalize"] is None


def test_saved_model_labels_one_image_in_a_fresh_process_offline_without_data(saved, tmp_path):
    out, img, probs, vocab = saved
    moved = tmp_path / "elsewhere" / "res"  # no data folder beside it: the model and one copied image only
    shutil.copytree(out, moved)
    photo = tmp_path / "photo.jpg"
    shutil.copy(img, photo)
    code = f"""
import json, socket, sys
try:
    socket.create_connection(("93.184.216.34", 80), timeout=5)
    sys.exit("the network is reachable: the test would prove nothing")
except OSError as e:
    assert "OFFLINE" in str(e), e
from roadtop import model
m = model.load_model({str(moved)!r})
p = model.predict(m, [{str(photo)!r}])
print(json.dumps({{"label": m.config["vocab"][int(p.argmax())], "probs": p[0].tolist()}}))
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, text=True, capture_output=True,
                       env=offline_env(tmp_path / "site", ROOT), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["label"] in vocab
    # fp16 weights vs the fp32 learner: the same augmentations (seed 0), so only rounding differs
    np.testing.assert_allclose(got["probs"], probs[0], atol=2e-3)
    assert got["label"] == vocab[int(probs[0].argmax())] or np.sort(probs[0])[-2:].ptp() < 2e-3


def test_multitarget_head_predicts_its_first_slice_as_probabilities(tiny_data, tmp_path):
    learn, item = _learner(tiny_data, n_out=13)
    vocab = list(learn.dls.vocab)
    model.save_model(learn, tmp_path / "mt", "test_resnet", item, 32, tta_n=1, vocab=vocab)
    cfg = json.loads((tmp_path / "mt" / model.CONFIG).read_text())
    assert cfg["n_out"] == 13 and cfg["outputs"] == [0, 10] and cfg["tta"]["softmax"] == "after the mean"
    img = sorted((tiny_data / "test_images").iterdir())[:3]
    p = model.predict(model.load_model(tmp_path / "mt"), img)
    assert p.shape == (3, 10)
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)


def test_missing_or_corrupt_model_is_one_line(tmp_path, saved):
    with pytest.raises(RoadtopError, match="holds no saved model"):
        model.load_model(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(saved[0], broken)
    (broken / model.WEIGHTS).write_bytes(b"junk")
    with pytest.raises(RoadtopError, match="unreadable.*rerun its training job"):
        model.load_model(broken)
