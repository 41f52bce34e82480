"""Lesson 7 part 4: one model, two targets (disease and rice variety) — DataBlock, sliced loss, metrics, TTA."""

import json
import math
import random
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from fastai.vision.all import CategoryBlock, ImageBlock, error_rate, parent_label, set_seed

from . import train
from .errors import RoadtopError
from .paddy import read_train_csv
from .paths import atomic_write
from .preds import error

__all__ = [
    "METRICS",
    "Targets",
    "chance_error",
    "check_varieties",
    "dataloaders",
    "error",
    "learner",
    "n_outputs",
    "reference_errors",
    "results_table",
    "save_metrics",
    "summary",
    "tta_target_probs",
    "variety_lookup",
]

METRICS = "metrics.json"
_COLS = ["disease_err_valid", "disease_err_holdout", "variety_err_valid", "variety_err_holdout"]


def variety_lookup(data, source="train.csv"):
    """`variety_of_image(file)`: an image's variety from train.csv by file name; `data` = Paddy folder or its table."""
    if isinstance(data, (str, Path)):
        source = Path(data) / "train.csv"
        train_df = read_train_csv(data)
    else:
        train_df = data
    dup = train_df["image_id"][train_df["image_id"].duplicated()]
    if len(dup):
        raise RoadtopError(f"{source}: image_id {dup.iloc[0]} appears more than once: keep one row per image")
    table = dict(zip(train_df["image_id"].astype(str), train_df["variety"]))

    def variety_of_image(f) -> str:
        """The `variety` cell of train.csv for image file `f`; one clear error if the row or the value is missing."""
        iid = Path(f).name
        if iid not in table:
            raise RoadtopError(f"image {iid} has no row in {source}: add it (image_id,label,variety,age) "
                               f"or remove the image from train_images/")
        v = table[iid]
        if v is None or (isinstance(v, float) and np.isnan(v)) or not str(v).strip():
            raise RoadtopError(f"image {iid} has an empty variety in {source}: fill in its variety")
        return str(v).strip()

    return variety_of_image


def check_varieties(files, variety_of_image) -> list:
    """Every file's variety, looked up now, so a bad row fails before training, naming the image."""
    return [variety_of_image(f) for f in files]


def dataloaders(path, files, item_method="squish", item_size=480, size=224, accum=1, valid_pct=0.2, seed=None,
                variety_of_image=None, **kw):
    """Lesson 7's `DataBlock((ImageBlock, CategoryBlock, CategoryBlock), n_inp=1, get_y=[parent_label, variety])`.

    Both vocabs are fixed from all of `files` (sorted), so a rare variety that lands only in validation still has a
    column, and the disease vocab is the one the single-target runs use.
    """
    variety_of_image = variety_of_image or variety_lookup(path)
    files = list(files)
    diseases = sorted({parent_label(f) for f in files})
    varieties = sorted(set(check_varieties(files, variety_of_image)))
    blocks = (ImageBlock, CategoryBlock(vocab=diseases), CategoryBlock(vocab=varieties))
    return train.dataloaders(path, files, item_method, item_size, size, accum, valid_pct, seed,
                             get_y=[parent_label, variety_of_image], blocks=blocks, n_inp=1, **kw)


def n_outputs(dls) -> tuple:
    """(number of diseases, number of varieties), read from the two target vocabs."""
    vocabs = dls.vocab
    if len(vocabs) != 2 or isinstance(vocabs[0], str):
        raise RoadtopError(f"expected dataloaders with two category targets (disease, variety), got vocab {vocabs!r}: "
                           f"build them with roadtop.multitarget.dataloaders")
    return len(vocabs[0]), len(vocabs[1])


class Targets:
    """The disease/variety slices of one output vector: sliced losses, their weighted sum, metrics, activation.

    Outputs `[:, :n_disease]` are disease logits and `[:, n_disease:]` variety logits. A disease-only head
    (`n_variety=0`) uses the same DataBlock and ignores the variety target.
    """

    def __init__(self, n_disease: int, n_variety: int = 0, disease_weight: float = 1.0, variety_weight: float = 1.0):
        if n_disease < 1 or n_variety < 0:
            raise RoadtopError(f"n_disease={n_disease}, n_variety={n_variety}: need at least one disease class")
        for name, w in (("disease_weight", disease_weight), ("variety_weight", variety_weight)):
            if not w >= 0:
                raise RoadtopError(f"{name}={w} must be >= 0 (a loss weight)")
        if disease_weight + (variety_weight if n_variety else 0) <= 0:
            raise RoadtopError("disease_weight and variety_weight are both 0: the model would learn nothing")
        self.n_disease, self.n_variety = n_disease, n_variety
        self.disease_weight, self.variety_weight = float(disease_weight), float(variety_weight)

    @property
    def n_out(self) -> int:
        """Outputs the head needs: diseases + varieties (10 + 10 = 20 on Paddy)."""
        return self.n_disease + self.n_variety

    def _check(self, inp):
        """`inp` itself, if it is (batch, n_out); else one line saying what the head should output."""
        if inp.ndim != 2 or inp.shape[1] != self.n_out:
            raise RoadtopError(f"model output has shape {tuple(inp.shape)}, expected (batch, {self.n_out}) = "
                               f"{self.n_disease} diseases + {self.n_variety} varieties: build the learner with "
                               f"n_out={self.n_out}")
        return inp

    def disease(self, inp):
        """The disease logits: the first `n_disease` columns."""
        return self._check(inp)[:, :self.n_disease]

    def variety(self, inp):
        """The variety logits: the columns after the diseases."""
        if not self.n_variety:
            raise RoadtopError("this is a disease-only head: it has no variety outputs")
        return self._check(inp)[:, self.n_disease:]

    def disease_loss(self, inp, disease, variety):
        """Cross-entropy of the disease slice."""
        return F.cross_entropy(self.disease(inp).float(), disease)

    def variety_loss(self, inp, disease, variety):
        """Cross-entropy of the variety slice."""
        return F.cross_entropy(self.variety(inp).float(), variety)

    def disease_err(self, inp, disease, variety):
        """Error rate of the disease slice."""
        return error_rate(self.disease(inp), disease)

    def variety_err(self, inp, disease, variety):
        """Error rate of the variety slice."""
        return error_rate(self.variety(inp), variety)

    def __call__(self, inp, disease, variety):
        """The training loss: weighted disease loss + weighted variety loss (disease loss alone for a disease head)."""
        loss = self.disease_weight * self.disease_loss(inp, disease, variety)
        if self.n_variety:
            loss = loss + self.variety_weight * self.variety_loss(inp, disease, variety)
        return loss

    def metrics(self) -> list:
        """disease_err (and variety_err, disease_loss, variety_loss for the two-target head), shown each epoch."""
        if not self.n_variety:
            return [self.disease_err]
        return [self.disease_err, self.variety_err, self.disease_loss, self.variety_loss]

    def activation(self, inp):
        """Softmax over each slice separately (fastai's get_preds/tta call this, so TTA averages probabilities)."""
        parts = [F.softmax(self.disease(inp).float(), dim=1)]
        if self.n_variety:
            parts.append(F.softmax(self.variety(inp).float(), dim=1))
        return torch.cat(parts, dim=1)

    def __repr__(self):
        """What the notebook shows for `learn.loss_func`."""
        return (f"Targets(n_disease={self.n_disease}, n_variety={self.n_variety}, "
                f"disease_weight={self.disease_weight}, variety_weight={self.variety_weight})")


def learner(dls, arch, multi: bool = True, disease_weight=1.0, variety_weight=1.0, seed=None, **kw):
    """`roadtop.train.learner` with a two-target head (`multi`) or a disease-only head, on the same DataLoaders."""
    nd, nv = n_outputs(dls)
    targets = Targets(nd, nv if multi else 0, disease_weight, variety_weight)
    if seed is not None:  # same initial weights and the same batches for both heads
        set_seed(seed, reproducible=True)
        for dl in dls.loaders:
            dl.rng = random.Random(seed)
    return train.learner(dls, arch, metrics=targets.metrics(), loss_func=targets, n_out=targets.n_out, **kw)


def tta_target_probs(learn, files, n: int = 4):
    """(disease probs, variety probs or None) with TTA for `files`, in order; rows of each sum to 1."""
    t = learn.loss_func
    if len(files):
        probs, _ = train.tta_probs(learn, files, n=n)
    else:
        probs = torch.zeros(0, t.n_out)
    dis = probs[:, :t.n_disease]
    var = probs[:, t.n_disease:] if t.n_variety else None
    return dis, var


def chance_error(n_classes: int) -> float:
    """Error of guessing uniformly among `n_classes`: 1 - 1/n."""
    return 1 - 1 / n_classes


def summary(learn, hold_disease, hold_variety, hold_labels, hold_varieties) -> dict:
    """One model's errors: disease/variety on validation (`learn.validate`) and on the holdout (given TTA probs)."""
    names = ["loss"] + [m.name for m in learn.metrics]
    valid = dict(zip(names, (float(v) for v in learn.validate())))
    d_vocab, v_vocab = learn.dls.vocab
    return {"disease_err_valid": valid["disease_err"], "disease_err_holdout": error(hold_disease, d_vocab, hold_labels),
            "variety_err_valid": valid.get("variety_err"),
            "variety_err_holdout": None if hold_variety is None else error(hold_variety, v_vocab, hold_varieties)}


def reference_errors(dls, hold_labels, hold_varieties) -> dict:
    """What no learning gets: a uniform guess (1 - 1/n), and always the training split's most common class."""
    d_vocab, v_vocab = dls.vocab

    def targets(ds):
        """(disease, variety) names of every item of `ds`, without opening an image."""
        return list(zip([d_vocab[int(y)] for y in ds.tls[1]], [v_vocab[int(y)] for y in ds.tls[2]]))

    trn, val = targets(dls.train_ds), targets(dls.valid_ds)

    def top_err(k, labels):
        """Error of always answering the training split's most common value of target `k`."""
        common = pd.Series([t[k] for t in trn]).mode().iloc[0]
        return float(np.mean([lab != common for lab in labels])) if len(labels) else float("nan")

    uniform = {"disease_err_valid": chance_error(len(d_vocab)), "disease_err_holdout": chance_error(len(d_vocab)),
               "variety_err_valid": chance_error(len(v_vocab)), "variety_err_holdout": chance_error(len(v_vocab))}
    common = {"disease_err_valid": top_err(0, [t[0] for t in val]), "disease_err_holdout": top_err(0, hold_labels),
              "variety_err_valid": top_err(1, [t[1] for t in val]), "variety_err_holdout": top_err(1, hold_varieties)}
    return {"uniform_guess": uniform, "most_common_class": common}


def results_table(results: dict) -> pd.DataFrame:
    """Models side by side: one row per model, columns disease/variety error on validation and holdout."""
    return pd.DataFrame.from_dict(results, orient="index").reindex(columns=_COLS).astype(float)


def _jsonable(x):
    """NaN -> None (JSON has no NaN), recursively; numpy scalars -> Python."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


def save_metrics(out_dir, metrics: dict) -> Path:
    """Write `metrics` to out_dir/metrics.json atomically (NaN written as null)."""
    f = Path(out_dir) / METRICS
    with atomic_write(f) as fh:
        json.dump(_jsonable(metrics), fh, indent=1)
    return f
