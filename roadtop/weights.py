"""Pretrained weights from local files: find an arch's weight file and hand it to timm (internet-off kernels)."""

from pathlib import Path

import timm
from timm.models._registry import get_deprecated_models

from .errors import RoadtopError

__all__ = ["WEIGHT_EXTS", "weight_name", "find_weights", "local_pretrained_cfg"]


WEIGHT_EXTS = (".safetensors", ".pth", ".pt", ".bin")  # in order of preference


_HF_STEMS = ("model", "pytorch_model", "open_clip_pytorch_model")


def weight_name(p) -> str:
    """The model a weight file is for: <name>.<ext>, <name>/model.safetensors, models--timm--<name>/..."""
    p = Path(p)
    for part in reversed(p.parts[:-1]):
        if part.startswith("models--"):
            return part.split("--")[-1]
    stem = p.name[: -len(p.suffix)] if p.suffix else p.name
    return p.parent.name if stem in _HF_STEMS else stem


def _candidates(arch: str) -> list:
    """Names `arch`'s weights may be saved under: itself, timm's current name, its pretrained tag."""
    names = [arch]
    try:
        new = get_deprecated_models().get(arch, arch)
        cfg = timm.get_pretrained_cfg(new)
        names += [new, cfg.hf_hub_id.split("/")[-1]] if cfg is not None and cfg.hf_hub_id else [new]
    except (ImportError, RuntimeError, KeyError, AttributeError):
        pass  # no timm, or an arch timm does not know: its plain name only
    return list(dict.fromkeys(names))


def find_weights(arch: str, weights_dir) -> Path:
    """The weight file for timm `arch` in `weights_dir`, searched recursively, .safetensors first."""
    d = Path(weights_dir)
    names = _candidates(arch)
    if not d.is_dir():
        raise RoadtopError(f"weights_dir {d} is not a folder: on Kaggle attach the weights dataset "
                           "(kaggle.weights_dataset); elsewhere point weights_dir at the weight files")
    files = sorted((p for p in d.rglob("*") if p.suffix in WEIGHT_EXTS and p.is_file()),
                   key=lambda p: (WEIGHT_EXTS.index(p.suffix), len(p.parts), str(p)))
    for name in names:
        for p in files:
            if weight_name(p) == name:
                return p
    looked = " or ".join(f"{n}.safetensors" for n in names)
    raise RoadtopError(f"no weights for {arch} in {d} (looked for {looked}): save them there, or package a "
                       "folder with `pipeline.py kaggle weights FOLDER`")


def local_pretrained_cfg(arch: str, weights_dir) -> dict:
    """timm's `pretrained_cfg_overlay` loading `arch`'s pretrained weights from a local file (internet off):
    `timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=local_pretrained_cfg(arch, d))`."""
    return {"file": str(find_weights(arch, weights_dir))}
