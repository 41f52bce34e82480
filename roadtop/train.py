"""Plumbing for the training notebook: checks, local weights, Swin's channels-last bodies, the plan's runs, workers.

The lesson's `train()` itself (the DataBlock, gradient accumulation, `vision_learner`, `fine_tune`, TTA) is
written in notebooks/train.ipynb, where the learner reads it.
"""

from pathlib import Path

import torch

from .accum import probe_dirs, read_probes
from .errors import RoadtopError
from .weights import local_pretrained_cfg

__all__ = ["ITEM_METHODS", "channels_first", "check_item_method", "local_weights", "num_workers", "plan_runs"]

ITEM_METHODS = ("squish", "crop", "pad")  # fastai's ResizeMethod values


def check_item_method(method: str) -> str:
    """`method` if fastai's `Resize` knows it (squish | crop | pad); else one line saying which to use."""
    if method not in ITEM_METHODS:
        raise RoadtopError(f"item_method='{method}' is unknown: use one of {sorted(ITEM_METHODS)}")
    return method


def num_workers() -> int:
    """DataLoader worker processes: only worth it when a GPU is waiting for images (0 on CPU)."""
    return min(8, torch.get_num_threads()) if torch.cuda.is_available() else 0


def local_weights(arch: str, weights_dir) -> dict:
    """timm kwargs that load `arch`'s pretrained weights from a local file (internet-off Kaggle kernels)."""
    if not weights_dir:
        return {}
    return {"pretrained_cfg_overlay": local_pretrained_cfg(arch, weights_dir)}


class _ToNCHW(torch.nn.Module):
    """Permute channels-last features (N, H, W, C) to the (N, C, H, W) that fastai's pooling head expects."""

    def forward(self, x):
        return x.permute(0, 3, 1, 2)


def channels_first(model):
    """timm's Swin/SwinV2 bodies return NHWC features; put a permute after the body so fastai's head pools channels."""
    body = model[0]
    if getattr(getattr(body, "model", None), "output_fmt", "NCHW") == "NHWC":
        model[0] = torch.nn.Sequential(body, _ToNCHW())
    return model


def plan_runs(out_dir, search=None) -> dict:
    """The runs {name: {arch, item_method, item_size, size}} of the plan this run belongs to that are trained like it
    (the same stage, as the memory probe recorded it); {} when no probe.json names this run (its folder's name)."""
    for _, probe in read_probes(search if search is not None else probe_dirs(out_dir)):
        runs = probe.get("runs", {})
        me = runs.get(Path(out_dir).name)
        if me is None:
            return {}
        return {name: r["spec"] for name, r in runs.items() if r.get("stage") == me.get("stage")}
    return {}
