"""A trained model saved for prediction, and predicting with it: fp16 safetensors weights plus model.json.

A run folder's `model.safetensors` holds the network's weights (floats in fp16, as the GPU trains them) and
`model.json` what rebuilding and predicting need (arch, vocab, item transform, training size, normalisation, TTA,
batch size, which outputs are the vocab's). Loading needs no network, no training data and no pickle: the network
is rebuilt from timm's architecture with random weights, then the saved weights are put in.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from fastai.vision.all import (CategoryBlock, CrossEntropyLossFlat, DataBlock, ImageBlock, Learner, Normalize,
                               RandomResizedCropGPU, Resize, aug_transforms, create_timm_model, default_device,
                               get_image_files, set_seed)
from PIL import Image, UnidentifiedImageError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .errors import RoadtopError
from .paths import KAGGLE_INPUT, atomic_write, default_out, iskaggle, kaggle_folders
from .train import channels_first

__all__ = ["WEIGHTS", "CONFIG", "CHOICE", "Model", "save_model", "load_model", "predict", "run_folders", "ensemble_folder",
           "member_dirs", "shared_vocab", "image_files"]

WEIGHTS = "model.safetensors"
CONFIG = "model.json"
FORMAT = 1  # model.json's layout version
CHOICE = "ensemble.json"  # the ensemble notebook's choice: weights per member and the runs making each


@dataclass
class Model:
    """A rebuilt network (eval mode, on CPU) and its model.json settings."""

    name: str
    config: dict
    net: torch.nn.Module


def _normalize(dls):
    """The (mean, std) lists of the DataLoaders' Normalize transform, or None (a model trained from scratch)."""
    for t in dls.after_batch.fs:
        if isinstance(t, Normalize):
            return {"mean": t.mean.flatten().tolist(), "std": t.std.flatten().tolist()}
    return None


def _min_scale(dls) -> float:
    """The smallest crop share of the batch augmentation (aug_transforms' min_scale), 1.0 without a random crop."""
    return next((float(t.min_scale) for t in dls.after_batch.fs if isinstance(t, RandomResizedCropGPU)), 1.0)


def save_model(learn, out_dir, arch: str, item, size, tta_n: int, tta_seed: int = 0, vocab=None) -> Path:
    """Write out_dir/model.safetensors (fp16) and model.json for `learn`'s network, atomically; returns model.json.

    `item` is the Resize item transform, `size` the training size, `tta_seed` the seed its TTA augmentations were
    drawn from (set just before `learn.tta`); `vocab` the classes its first outputs mean
    (default: the DataLoaders' vocab; a multi-target model passes the disease vocab, its first slice).
    """
    out = Path(out_dir)
    vocab = [str(v) for v in (vocab if vocab is not None else learn.dls.vocab)]
    state = {k: (v.half() if v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in learn.model.state_dict().items()}
    n_out = [m for m in learn.model.modules() if isinstance(m, torch.nn.Linear)][-1].out_features  # the head's
    cfg = {"format": FORMAT, "name": out.name, "arch": arch, "n_out": int(n_out), "vocab": vocab,
           "outputs": [0, len(vocab)],  # the columns that are `vocab`'s scores (a multi-target head has more)
           "item": {"method": str(item.method), "size": list(item.size)}, "size": size,
           "min_scale": _min_scale(learn.dls), "normalize": _normalize(learn.dls),
           "tta": {"n": int(tta_n), "seed": int(tta_seed),
                   "softmax": "each pass" if n_out == len(vocab) else "after the mean"},
           "bs": int(learn.dls.bs)}  # it trained at this batch size, with gradients: inference at it fits
    with atomic_write(out / WEIGHTS, "wb") as f:
        f.write(save_safetensors(state, metadata={"arch": arch}))
    with atomic_write(out / CONFIG) as f:
        json.dump(cfg, f, indent=1)
    return out / CONFIG


def load_model(run_dir) -> Model:
    """Rebuild the network saved in `run_dir` (timm arch, fastai head, saved weights); one line if it cannot."""
    d = Path(run_dir)
    if not (d / CONFIG).exists() or not (d / WEIGHTS).exists():
        raise RoadtopError(f"{d} holds no saved model ({CONFIG} + {WEIGHTS}): run its training job first")
    try:
        cfg = json.loads((d / CONFIG).read_text())
        state = load_safetensors((d / WEIGHTS).read_bytes())
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise RoadtopError(f"{d}: the saved model is unreadable ({type(e).__name__}): rerun its training job") from None
    net, _ = create_timm_model(cfg["arch"], cfg["n_out"], pretrained=False)
    channels_first(net)
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return Model(cfg.get("name", d.name), cfg, net.eval())


def predict(m: Model, files, bs: int = 0, tta_n=None, seed=None) -> np.ndarray:
    """Probabilities (len(files) x len(vocab)) of `files` with TTA as the model was trained to see them; fp16 on GPU.

    `bs` 0 is the training batch size; `tta_n` and `seed` None: the saved number of augmented passes and their
    seed, so the images the run predicted get the same augmentations again.
    """
    c = m.config
    files = [Path(f) for f in files]
    vocab = c["vocab"]
    norm = [Normalize.from_stats(c["normalize"]["mean"], c["normalize"]["std"])] if c["normalize"] else []
    block = DataBlock(blocks=(ImageBlock, CategoryBlock(vocab=vocab)), get_items=lambda _: files[:1],
                      get_y=lambda _: vocab[0], splitter=lambda items: ([0], [0]),
                      item_tfms=Resize(c["item"]["size"], method=c["item"]["method"]),
                      batch_tfms=[*aug_transforms(size=c["size"], min_scale=c["min_scale"]), *norm])
    dls = block.dataloaders(files[0].parent, bs=bs or c["bs"], num_workers=0, device=default_device())
    each_pass = c["tta"]["softmax"] == "each pass"
    learn = Learner(dls, m.net.to(dls.device), loss_func=CrossEntropyLossFlat() if each_pass else _raw)
    if dls.device.type == "cuda":
        learn = learn.to_fp16()
    dl = dls.test_dl(files)
    set_seed(c["tta"].get("seed", 0) if seed is None else seed)  # after the loader is made, as in training
    with learn.no_bar(), learn.no_logging():
        out, _ = learn.tta(dl=dl, n=c["tta"]["n"] if tta_n is None else tta_n)
    lo, hi = c["outputs"]
    out = out.float()[:, lo:hi]
    return (out if each_pass else out.softmax(1)).cpu().numpy()


def _raw(out, *ys):
    """The loss of a model used only to predict: never called; a plain function has no activation, so TTA
    averages the raw outputs (a multi-target head is softmaxed per slice after the mean)."""
    raise RoadtopError("a loaded model only predicts: train it in its notebook")


def run_folders(run_dirs=()) -> list:
    """The folders that may hold saved models: `run_dirs`, else every Kaggle input holding a model.json on Kaggle,
    else outputs/train/* and outputs/multitarget."""
    if run_dirs:
        return [Path(d) for d in run_dirs]
    if iskaggle():
        return kaggle_folders(CONFIG)
    return [*sorted(default_out("train").glob("*/")), default_out("multitarget")]


def ensemble_folder(ensemble_dir: str = "") -> Path:
    """The folder holding the ensemble's ensemble.json: `ensemble_dir`, else the Kaggle input holding it on Kaggle,
    else outputs/ensemble."""
    if ensemble_dir:
        return Path(ensemble_dir)
    if iskaggle():
        found = kaggle_folders(CHOICE)
        if not found:
            raise RoadtopError(f"no {CHOICE} under {KAGGLE_INPUT}: add the ensemble kernel to kernel_sources")
        return found[0]
    return default_out("ensemble")


def member_dirs(choice: dict, run_dirs) -> dict:
    """{member: [its run folders]} for the members the ensemble gave weight (ensemble.json's weights and runs),
    found by name among `run_dirs`; one line naming a member whose model is missing."""
    by_name = {Path(d).name: Path(d) for d in run_dirs}
    out = {}
    for member, names in choice["runs"].items():
        if not choice["weights"].get(member):
            continue  # weight 0: the ensemble left it out
        missing = [n for n in names if n not in by_name or not (by_name[n] / CONFIG).exists()]
        if missing:
            raise RoadtopError(f"no saved model ({CONFIG}) for run(s) {missing} of ensemble member '{member}' in "
                               f"{sorted(by_name) or 'no folder'}: train them again (this version saves its model)")
        out[member] = [by_name[n] for n in names]
    return out


def shared_vocab(members: dict) -> list:
    """The vocab every saved model of `members` predicts (their columns); one line if two disagree."""
    vocabs = {str(d): json.loads((Path(d) / CONFIG).read_text())["vocab"] for ds in members.values() for d in ds}
    first = next(iter(vocabs.values()))
    for d, v in vocabs.items():
        if v != first:
            raise RoadtopError(f"{d}/{CONFIG}: its vocab differs from the other members': retrain it on the same labels")
    return first


def image_files(folder) -> list:
    """The images in `folder`, sorted by name, each checked readable; one line naming a bad one and the fix."""
    d = Path(folder)
    if not d.is_dir():
        raise RoadtopError(f"{d} is not a folder: pass --images a folder of JPEG/PNG images")
    files = sorted(get_image_files(d, recurse=False), key=lambda f: f.name)
    others = sorted(f.name for f in d.iterdir() if f.is_file() and not f.name.startswith(".") and f not in files)
    if others:
        raise RoadtopError(f"{d / others[0]} is not an image (.jpg/.png ...): move it out of {d}")
    if not files:
        raise RoadtopError(f"{d} holds no images: put the .jpg/.png photos to label in it")
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
            raise RoadtopError(f"{f} is not a readable image (corrupt or truncated): replace or remove it") from None
    return files
