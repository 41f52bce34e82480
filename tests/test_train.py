"""The training steps: batch size from accum, item transforms, Swin's channels-last bodies, skipping bad images."""

import pytest
import torch
from torch import nn

from roadtop import paddy, train
from roadtop.errors import RoadtopError


def test_batch_size_is_64_over_accum():
    assert [train.batch_size(a) for a in (1, 2, 4, 8)] == [64, 32, 16, 8]
    with pytest.raises(RoadtopError, match="accum=3 must be a positive divisor of 64"):
        train.batch_size(3)


def test_item_transform_methods():
    assert train.item_tfm("squish", 480).size == (480, 480)
    assert train.item_tfm("crop", [640, 480]).size == (480, 640)  # fastai keeps (w, h): 480 wide, 640 tall
    with pytest.raises(RoadtopError, match="item_method='stretch' is unknown"):
        train.item_tfm("stretch", 224)


class _Body(nn.Module):
    def __init__(self, fmt):
        super().__init__()
        self.model = nn.Identity()
        self.model.output_fmt = fmt

    def forward(self, x):
        return x.permute(0, 2, 3, 1) if self.model.output_fmt == "NHWC" else x


def test_channels_last_bodies_get_a_permute_before_the_head():
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    x = torch.randn(2, 8, 5, 5)
    swin = train.channels_first(nn.Sequential(_Body("NHWC"), head))
    assert swin(x).shape == (2, 2)
    assert torch.allclose(swin[0](x), x)  # the permute undoes the body's NHWC
    cnn = nn.Sequential(_Body("NCHW"), head)
    assert train.channels_first(cnn)[0].__class__ is _Body


def test_skipped_images_leave_training_and_holdout(tiny_data):
    trn, hold = paddy.split_files(tiny_data, 0.1, 42)
    bad = {trn[0].name, hold[0].name}
    trn2, hold2 = paddy.split_files(tiny_data, 0.1, 42, skip=bad)
    assert not bad & {f.name for f in trn2 + hold2}
    assert len(trn2) + len(hold2) == len(trn) + len(hold) - 2
