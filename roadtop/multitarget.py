"""Plumbing for the multi-target notebook (lesson 7 part 4): variety checks, reference errors, the results table.

The lesson's code itself (`get_variety`, the two-`CategoryBlock` DataBlock, the loss and metric functions on the
two slices of the output) is written in notebooks/multitarget.ipynb.
"""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import RoadtopError
from .paddy import read_train_csv
from .paths import atomic_write
from .preds import error

__all__ = [
    "METRICS",
    "chance_error",
    "check_varieties",
    "reference_errors",
    "results_table",
    "save_metrics",
    "summary",
]

METRICS = "metrics.json"
_COLS = ["disease_error_valid", "disease_error_holdout", "variety_error_valid", "variety_error_holdout"]


def check_varieties(path, files) -> dict:
    """{image id: variety} for every file, from train.csv; one clear error naming the first bad row or image."""
    source = Path(path) / "train.csv"
    df = read_train_csv(path)
    dup = df["image_id"][df["image_id"].duplicated()]
    if len(dup):
        raise RoadtopError(f"{source}: image_id {dup.iloc[0]} appears more than once: keep one row per image")
    table = dict(zip(df["image_id"].astype(str), df["variety"]))
    out = {}
    for f in files:
        iid = Path(f).name
        if iid not in table:
            raise RoadtopError(f"image {iid} has no row in {source}: add it (image_id,label,variety,age) "
                               f"or remove the image from train_images/")
        v = table[iid]
        if v is None or (isinstance(v, float) and np.isnan(v)) or not str(v).strip():
            raise RoadtopError(f"image {iid} has an empty variety in {source}: fill in its variety")
        out[iid] = str(v).strip()
    return out


def chance_error(n_classes: int) -> float:
    """Error of guessing uniformly among `n_classes`: 1 - 1/n."""
    return 1 - 1 / n_classes


def summary(learn, hold_disease, hold_variety, hold_labels, hold_varieties) -> dict:
    """One model's errors: disease/variety on validation (`learn.validate`, metrics disease error first, then variety
    error) and on the holdout (given TTA probs)."""
    valid = [float(v) for v in learn.validate()]  # loss, then the metrics: disease error (, variety error, ...)
    d_vocab, v_vocab = learn.dls.vocab
    return {"disease_error_valid": valid[1], "disease_error_holdout": error(hold_disease, d_vocab, hold_labels),
            "variety_error_valid": valid[2] if len(valid) > 2 else None,
            "variety_error_holdout": None if hold_variety is None else error(hold_variety, v_vocab, hold_varieties)}


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

    uniform = {"disease_error_valid": chance_error(len(d_vocab)), "disease_error_holdout": chance_error(len(d_vocab)),
               "variety_error_valid": chance_error(len(v_vocab)), "variety_error_holdout": chance_error(len(v_vocab))}
    common = {"disease_error_valid": top_err(0, [t[0] for t in val]), "disease_error_holdout": top_err(0, hold_labels),
              "variety_error_valid": top_err(1, [t[1] for t in val]), "variety_error_holdout": top_err(1, hold_varieties)}
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
