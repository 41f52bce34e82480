"""Multi-target (disease + variety): the sliced loss and metrics, n_out from the vocabs, bad rows, the demo notebook."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from roadtop import multitarget as mt
from roadtop.errors import RoadtopError

# Three diseases, four varieties: 7 outputs per image.
LOGITS = torch.tensor([
    # disease logits      | variety logits
    [2.0, 0.5, -1.0,        0.1, 3.0, -2.0, 0.0],
    [-0.5, 1.5, 0.0,        1.0, 0.0, 2.5, -1.0],
    [0.0, 0.2, 4.0,         -3.0, 0.5, 0.5, 1.0],
    [1.0, -2.0, 0.5,        2.0, 1.0, 0.0, -0.5],
])
DISEASE = torch.tensor([0, 1, 2, 1])  # argmax of the disease slice: 0, 1, 2, 0 -> one wrong
VARIETY = torch.tensor([1, 0, 3, 2])  # argmax of the variety slice: 1, 2, 3, 0 -> two wrong


def test_loss_is_the_sum_of_the_two_slice_cross_entropies():
    t = mt.Targets(3, 4)
    want = F.cross_entropy(LOGITS[:, :3], DISEASE) + F.cross_entropy(LOGITS[:, 3:], VARIETY)
    assert t.n_out == 7
    assert torch.allclose(t(LOGITS, DISEASE, VARIETY), want)
    weighted = mt.Targets(3, 4, disease_weight=0.5, variety_weight=2.0)
    want_w = 0.5 * F.cross_entropy(LOGITS[:, :3], DISEASE) + 2.0 * F.cross_entropy(LOGITS[:, 3:], VARIETY)
    assert torch.allclose(weighted(LOGITS, DISEASE, VARIETY), want_w)
    assert not torch.allclose(want_w, want)
    head = mt.Targets(3)  # disease-only head on the same batches: the variety target is ignored
    assert torch.allclose(head(LOGITS[:, :3], DISEASE, VARIETY), F.cross_entropy(LOGITS[:, :3], DISEASE))


def test_metrics_pick_the_right_slices():
    t = mt.Targets(3, 4)
    assert [m.__name__ for m in t.metrics()] == ["disease_err", "variety_err", "disease_loss", "variety_loss"]
    assert float(t.disease_err(LOGITS, DISEASE, VARIETY)) == pytest.approx(1 / 4)
    assert float(t.variety_err(LOGITS, DISEASE, VARIETY)) == pytest.approx(2 / 4)
    assert torch.allclose(t.disease_loss(LOGITS, DISEASE, VARIETY), F.cross_entropy(LOGITS[:, :3], DISEASE))
    assert torch.allclose(t.variety_loss(LOGITS, DISEASE, VARIETY), F.cross_entropy(LOGITS[:, 3:], VARIETY))
    flipped = LOGITS.clone()
    flipped[:, 3:] = -flipped[:, 3:]  # change only the variety slice: only the variety metrics move
    assert float(t.disease_err(flipped, DISEASE, VARIETY)) == pytest.approx(1 / 4)
    assert float(t.variety_err(flipped, DISEASE, VARIETY)) == pytest.approx(1.0)
    assert torch.allclose(t.disease_loss(flipped, DISEASE, VARIETY), t.disease_loss(LOGITS, DISEASE, VARIETY))
    probs = t.activation(LOGITS)
    assert torch.allclose(probs[:, :3], F.softmax(LOGITS[:, :3], 1)) and torch.allclose(probs[:, 3:].sum(1), torch.ones(4))
    assert [m.__name__ for m in mt.Targets(3).metrics()] == ["disease_err"]


def test_bad_targets_and_outputs_are_refused():
    with pytest.raises(RoadtopError, match=r"output has shape \(4, 7\), expected \(batch, 9\)"):
        mt.Targets(3, 6)(LOGITS, DISEASE, VARIETY)
    with pytest.raises(RoadtopError, match="disease-only head"):
        mt.Targets(3).variety(LOGITS[:, :3])
    with pytest.raises(RoadtopError, match="variety_weight=-1"):
        mt.Targets(3, 4, variety_weight=-1)
    with pytest.raises(RoadtopError, match="both 0"):
        mt.Targets(3, 4, disease_weight=0, variety_weight=0)


def make_data(root, diseases=("blast", "hispa", "normal"), varieties=("ADT45", "IR20", "Ponni", "RR"), per=4):
    """A tiny Paddy folder: `per` 32x32 images per disease, varieties assigned round-robin."""
    rows, k = [], 0
    for d in diseases:
        (root / "train_images" / d).mkdir(parents=True)
        for _ in range(per):
            iid = f"{100001 + k}.jpg"
            Image.new("RGB", (32, 32), (40 * k % 255, 120, 40)).save(root / "train_images" / d / iid)
            rows.append((iid, d, varieties[k % len(varieties)], 50))
            k += 1
    (root / "test_images").mkdir()
    Image.new("RGB", (32, 32)).save(root / "test_images" / "200001.jpg")
    pd.DataFrame(rows, columns=["image_id", "label", "variety", "age"]).to_csv(root / "train.csv", index=False)
    pd.DataFrame({"image_id": ["200001.jpg"], "label": [""]}).to_csv(root / "sample_submission.csv", index=False)
    return root


def test_n_out_follows_the_vocabs(tmp_path):
    from roadtop.paddy import split_files

    path = make_data(tmp_path)
    files, _ = split_files(path, 0, 0)
    dls = mt.dataloaders(path, files, "squish", 32, 32, valid_pct=0.25, seed=0)
    assert [list(v) for v in dls.vocab] == [["blast", "hispa", "normal"], ["ADT45", "IR20", "Ponni", "RR"]]
    assert mt.n_outputs(dls) == (3, 4)
    learn = mt.learner(dls, "test_resnet", pretrained=False, seed=0)
    x, yd, yv = dls.valid.one_batch()  # 12 images: the train loader (bs 64, drop_last) has no full batch
    assert learn.loss_func.n_out == 7 and learn.model.eval()(x).shape[1] == 7
    assert yd.max() < 3 and yv.max() < 4
    assert mt.learner(dls, "test_resnet", multi=False, pretrained=False).model.eval()(x).shape[1] == 3
    d, v = mt.tta_target_probs(learn, files[:2], n=1)
    assert d.shape == (2, 3) and v.shape == (2, 4) and torch.allclose(d.sum(1), torch.ones(2))
    assert mt.tta_target_probs(learn, [], n=1)[0].shape == (0, 3)


def test_missing_row_or_empty_variety_names_the_image(tmp_path):
    from roadtop.paddy import split_files

    path = make_data(tmp_path)
    df = pd.read_csv(path / "train.csv")
    df.loc[df.image_id == "100003.jpg", "variety"] = ""
    df[df.image_id != "100005.jpg"].to_csv(path / "train.csv", index=False)
    files, _ = split_files(path, 0, 0)
    lookup = mt.variety_lookup(path)
    with pytest.raises(RoadtopError, match=r"image 100003\.jpg has an empty variety in .*train\.csv"):
        lookup(path / "train_images" / "blast" / "100003.jpg")
    with pytest.raises(RoadtopError, match=r"image 100005\.jpg has no row in .*train\.csv"):
        lookup(path / "train_images" / "hispa" / "100005.jpg")
    with pytest.raises(RoadtopError, match=r"image 100003\.jpg"):  # before any training starts
        mt.dataloaders(path, files, "squish", 32, 32, seed=0)
    pd.concat([df, df.head(1)]).to_csv(path / "train.csv", index=False)
    with pytest.raises(RoadtopError, match=r"image_id 100001\.jpg appears more than once"):
        mt.variety_lookup(path)


def test_metrics_json_has_no_nan(tmp_path):
    f = mt.save_metrics(tmp_path, {"m": {"a": float("nan"), "b": np.float32(0.5)}})
    assert json.loads(f.read_text()) == {"m": {"a": None, "b": 0.5}}
    assert mt.chance_error(10) == pytest.approx(0.9)
