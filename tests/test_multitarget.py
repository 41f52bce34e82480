"""Multi-target (disease + variety): the notebook's sliced loss and metrics, bad rows, the notebook end to end."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from roadtop import multitarget as mt
from roadtop.errors import RoadtopError
from roadtop.nbcode import load

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
    nb = load("multitarget.ipynb", n_disease=3, disease_weight=1.0, variety_weight=1.0)
    want = F.cross_entropy(LOGITS[:, :3], DISEASE) + F.cross_entropy(LOGITS[:, 3:], VARIETY)
    assert torch.allclose(nb["combine_loss"](LOGITS, DISEASE, VARIETY), want)
    nb.update(disease_weight=0.5, variety_weight=2.0)  # the notebook's weights parameters
    want_w = 0.5 * F.cross_entropy(LOGITS[:, :3], DISEASE) + 2.0 * F.cross_entropy(LOGITS[:, 3:], VARIETY)
    assert torch.allclose(nb["combine_loss"](LOGITS, DISEASE, VARIETY), want_w)
    assert not torch.allclose(want_w, want)
    # the disease-only head (n_disease outputs) uses disease_loss on the same batches: the variety is ignored
    assert torch.allclose(nb["disease_loss"](LOGITS[:, :3], DISEASE, VARIETY), F.cross_entropy(LOGITS[:, :3], DISEASE))


def test_metrics_pick_the_right_slices():
    nb = load("multitarget.ipynb", n_disease=3, disease_weight=1.0, variety_weight=1.0)
    assert [m.__name__ for m in nb["all_metrics"]] == ["disease_err", "variety_err", "disease_loss", "variety_loss"]
    assert float(nb["disease_err"](LOGITS, DISEASE, VARIETY)) == pytest.approx(1 / 4)
    assert float(nb["variety_err"](LOGITS, DISEASE, VARIETY)) == pytest.approx(2 / 4)
    assert torch.allclose(nb["variety_loss"](LOGITS, DISEASE, VARIETY), F.cross_entropy(LOGITS[:, 3:], VARIETY))
    flipped = LOGITS.clone()
    flipped[:, 3:] = -flipped[:, 3:]  # change only the variety slice: only the variety metrics move
    assert float(nb["disease_err"](flipped, DISEASE, VARIETY)) == pytest.approx(1 / 4)
    assert float(nb["variety_err"](flipped, DISEASE, VARIETY)) == pytest.approx(1.0)
    assert torch.allclose(nb["disease_loss"](flipped, DISEASE, VARIETY), nb["disease_loss"](LOGITS, DISEASE, VARIETY))


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


def test_missing_row_or_empty_variety_names_the_image(tmp_path):
    from roadtop.paddy import split_files

    path = make_data(tmp_path)
    files, _ = split_files(path, 0, 0)
    assert mt.check_varieties(path, files)["100002.jpg"] == "IR20"
    df = pd.read_csv(path / "train.csv")
    df.loc[df.image_id == "100003.jpg", "variety"] = ""
    df[df.image_id != "100005.jpg"].to_csv(path / "train.csv", index=False)
    with pytest.raises(RoadtopError, match=r"image 100003\.jpg has an empty variety in .*train\.csv"):
        mt.check_varieties(path, files[:4])
    with pytest.raises(RoadtopError, match=r"image 100005\.jpg has no row in .*train\.csv"):
        mt.check_varieties(path, [f for f in files if f.name != "100003.jpg"])
    pd.concat([df, df.head(1)]).to_csv(path / "train.csv", index=False)
    with pytest.raises(RoadtopError, match=r"image_id 100001\.jpg appears more than once"):
        mt.check_varieties(path, files)


def test_notebook_trains_both_heads_on_a_tiny_folder(tmp_path):
    """The notebook end to end on 12 images: both heads, 7 = 3 + 4 outputs, probabilities saved for the ensemble."""
    import papermill as pm

    from roadtop.paths import NOTEBOOKS
    from roadtop.preds import load_preds

    path, out = make_data(tmp_path / "data", per=8), tmp_path / "out"
    pm.execute_notebook(str(NOTEBOOKS / "multitarget.ipynb"), str(tmp_path / "mt.ipynb"), cwd=str(NOTEBOOKS),
                        parameters=dict(data_path=str(path), out_dir=str(out), arch="test_resnet", item_size=32,
                                        size=32, accum=4, epochs=1, tta_n=1, valid_pct=0.25),
                        kernel_name="python3", progress_bar=False)
    m = json.loads((out / "metrics.json").read_text())
    assert m["vocab_sizes"] == {"disease": 3, "variety": 4}
    assert m["multitarget"]["variety_error_valid"] is not None and m["disease_only"]["variety_error_valid"] is None
    p = load_preds(out)
    assert p.vocab == ["blast", "hispa", "normal"] and p.holdout_probs.shape == (len(p.holdout_ids), 3)
    from roadtop import model  # its saved model: 7 outputs, the first 3 the disease vocab's

    cfg = json.loads((out / model.CONFIG).read_text())
    assert cfg["n_out"] == 7 and cfg["outputs"] == [0, 3] and cfg["vocab"] == p.vocab
    probs = model.predict(model.load_model(out), sorted((path / "test_images").iterdir()))
    assert probs.shape == (len(p.test_ids), 3) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_metrics_json_has_no_nan(tmp_path):
    f = mt.save_metrics(tmp_path, {"m": {"a": float("nan"), "b": np.float32(0.5)}})
    assert json.loads(f.read_text()) == {"m": {"a": None, "b": 0.5}}
    assert mt.chance_error(10) == pytest.approx(0.9)
