"""Pretrained weights from local files (roadtop.weights): which model a file is for, the search, timm's overlay."""

import pytest

from roadtop import weights
from roadtop.errors import RoadtopError


def test_weight_name_reads_plain_hugging_face_and_hub_cache_layouts():
    assert weights.weight_name("w/convnext_tiny.safetensors") == "convnext_tiny"
    assert weights.weight_name("w/convnext_tiny.fb_in22k/model.safetensors") == "convnext_tiny.fb_in22k"
    assert weights.weight_name("hub/models--timm--vit_small_patch16_224.augreg_in21k/snapshots/abc/model.safetensors") \
        == "vit_small_patch16_224.augreg_in21k"
    assert weights.weight_name("w/resnet18") == "resnet18"


def test_find_weights_prefers_safetensors_and_names_what_it_looked_for(tmp_path):
    (tmp_path / "deep" / "er").mkdir(parents=True)
    for name in ("deep/er/test_resnet.safetensors", "test_resnet.pth", "other.safetensors"):
        (tmp_path / name).write_bytes(b"w")
    assert weights.find_weights("test_resnet", tmp_path) == tmp_path / "deep" / "er" / "test_resnet.safetensors"
    with pytest.raises(RoadtopError, match=r"no weights for nothing_like_it in .* \(looked for "
                                           r"nothing_like_it.safetensors\): save them there"):
        weights.find_weights("nothing_like_it", tmp_path)
    with pytest.raises(RoadtopError, match=r"weights_dir .*missing is not a folder: on Kaggle attach"):
        weights.find_weights("test_resnet", tmp_path / "missing")


def test_local_pretrained_cfg_loads_weights_without_internet(tmp_path):
    import timm
    import torch
    from safetensors.torch import save_file

    src = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    wdir = tmp_path / "weights"
    wdir.mkdir()
    save_file(src.state_dict(), str(wdir / "test_resnet.r160_in1k.safetensors"))  # named by pretrained tag
    cfg = weights.local_pretrained_cfg("test_resnet", wdir)
    assert cfg == {"file": str(wdir / "test_resnet.r160_in1k.safetensors")}
    torch.manual_seed(1)
    got = timm.create_model("test_resnet", pretrained=True, num_classes=0, pretrained_cfg_overlay=cfg)
    pairs = zip(src.state_dict().values(), got.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    with pytest.raises(RoadtopError, match="no weights for test_convnext in"):
        weights.local_pretrained_cfg("test_convnext", wdir)
