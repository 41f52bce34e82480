"""Lesson 7's `train()`: DataBlock, item transform, gradient accumulation, fine_tune, TTA — split into steps."""

from pathlib import Path

import torch
from fastai.vision.all import (
    CategoryBlock,
    DataBlock,
    GradientAccumulation,
    ImageBlock,
    RandomSplitter,
    Resize,
    ResizeMethod,
    aug_transforms,
    error_rate,
    parent_label,
    set_seed,
    vision_learner,
)

from .errors import RoadtopError
from .weights import local_pretrained_cfg

__all__ = ["ITEM_METHODS", "item_tfm", "batch_size", "dataloaders", "local_weights", "learner", "channels_first", "fit", "tta_probs"]

ITEM_METHODS = {"squish": ResizeMethod.Squish, "crop": ResizeMethod.Crop, "pad": ResizeMethod.Pad}


def item_tfm(method: str, size):
    """The per-image Resize: `squish` (whole image, distorted), `crop` (random crop), `pad` (letterbox)."""
    if method not in ITEM_METHODS:
        raise RoadtopError(f"item_method='{method}' is unknown: use one of {sorted(ITEM_METHODS)}")
    return Resize(size if isinstance(size, int) else tuple(size), method=ITEM_METHODS[method])


def batch_size(accum: int, effective: int = 64) -> int:
    """Lesson 7: `bs = 64 // accum`, so accum batches make one effective batch of 64."""
    if accum < 1 or effective % accum:
        raise RoadtopError(f"accum={accum} must be a positive divisor of {effective} (1, 2, 4, 8, ...)")
    return effective // accum


def dataloaders(path, files, item_method="squish", item_size=480, size=224, accum=1, valid_pct=0.2, seed=None,
                get_y=parent_label, blocks=(ImageBlock, CategoryBlock), n_inp=None, num_workers=None):
    """DataLoaders over `files` (holdout already removed): random valid split, item resize, aug_transforms."""
    if seed is not None:
        set_seed(seed, reproducible=True)
    size = size if isinstance(size, int) else tuple(size)
    dblock = DataBlock(blocks=blocks, n_inp=n_inp, get_items=lambda _: list(files), get_y=get_y,
                       splitter=RandomSplitter(valid_pct, seed=seed), item_tfms=item_tfm(item_method, item_size),
                       batch_tfms=aug_transforms(size=size, min_scale=0.75))
    if num_workers is None:  # worker processes only pay off when a GPU is waiting for images
        num_workers = min(8, torch.get_num_threads()) if torch.cuda.is_available() else 0
    return dblock.dataloaders(Path(path), bs=batch_size(accum), num_workers=num_workers)


def local_weights(arch: str, weights_dir) -> dict:
    """timm kwargs that load `arch`'s pretrained weights from a local file (internet-off Kaggle kernels)."""
    if not weights_dir:
        return {}
    return {"pretrained_cfg_overlay": local_pretrained_cfg(arch, weights_dir)}


def learner(dls, arch, pretrained=True, accum=1, metrics=error_rate, weights_dir="", **kw):
    """`vision_learner` on a timm arch with `GradientAccumulation(64)` and fp16 when a GPU is there."""
    cbs = [GradientAccumulation(64)] if accum > 1 else []
    if pretrained:
        kw.update(local_weights(arch, weights_dir))
    learn = vision_learner(dls, arch, pretrained=pretrained, metrics=metrics, cbs=cbs, **kw)
    channels_first(learn.model)
    return learn.to_fp16() if torch.cuda.is_available() else learn


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


def fit(learn, epochs: int, lr: float, finetune: bool = True):
    """`fine_tune` for pretrained bodies (head first, then all); `fit_one_cycle` when training from scratch."""
    if finetune:
        learn.fine_tune(epochs, lr)
    else:
        learn.fit_one_cycle(epochs, lr)
    return learn


def tta_probs(learn, files, n: int = 4, with_labels: bool = False):
    """TTA probabilities (mean over `n` augmented passes, blended with the plain pass) for `files`, in order."""
    if not len(files):
        return torch.zeros(0, len(learn.dls.vocab)), None
    dl = learn.dls.test_dl(files, with_labels=with_labels)
    probs, targs = learn.tta(dl=dl, n=n)
    return probs.float(), targs
