"""Ensembling saved runs: agreement checks, weighted mean of TTA probabilities, submission, holdout table."""

import numpy as np
import pandas as pd

from .errors import RoadtopError
from .paths import atomic_write
from .preds import error

__all__ = ["check_runs", "run_weights", "weighted_mean", "submission", "holdout_table", "write_csv"]


def check_runs(runs):
    """Refuse runs whose vocab, test ids or holdout ids differ from the first run's, naming the run."""
    if not runs:
        raise RoadtopError("no runs to ensemble: train at least one run first (pipeline.py run)")
    ref = runs[0]
    for r in runs[1:]:
        for what in ("vocab", "test_ids", "holdout_ids"):
            a, b = getattr(ref, what), getattr(r, what)
            if list(a) != list(b):
                diff = "order" if sorted(a) == sorted(b) else "content"
                raise RoadtopError(f"run '{r.name}' has a different {what} ({diff}) than run '{ref.name}': "
                                   f"rerun it on the same data (and holdout_pct/holdout_seed)")
    return runs


def run_weights(runs, weights: dict) -> np.ndarray:
    """Each run's weight: `weights[run name]`, else `weights[arch]`, else 1 (the lesson counts ViT twice)."""
    known = {r.name for r in runs} | {r.arch for r in runs}
    unknown = sorted(set(weights) - known)
    if unknown:
        raise RoadtopError(f"ensemble weights name {unknown}, which match no run name or arch: "
                           f"use one of {sorted(known)}")
    w = np.array([float(weights.get(r.name, weights.get(r.arch, 1.0))) for r in runs])
    if (w < 0).any() or w.sum() <= 0:
        raise RoadtopError(f"ensemble weights {dict(zip([r.name for r in runs], w))} must be >= 0 and not all 0")
    return w


def weighted_mean(probs, w) -> np.ndarray:
    """Weighted mean of a list of (n, c) probability arrays: sum_i w_i p_i / sum_i w_i."""
    w = np.asarray(w, dtype=np.float64)
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in probs])
    return np.tensordot(w, stack, axes=1) / w.sum()


def submission(probs, vocab, test_ids, sample: pd.DataFrame) -> pd.DataFrame:
    """argmax labels as a DataFrame with exactly sample_submission's ids, in its order."""
    ids = list(sample["image_id"])
    if sorted(ids) != sorted(test_ids):
        missing = sorted(set(ids) - set(test_ids))[:3]
        extra = sorted(set(test_ids) - set(ids))[:3]
        raise RoadtopError(f"predicted test ids differ from sample_submission.csv (missing {missing}, extra {extra}): "
                           f"check test_images/ against sample_submission.csv")
    labels = pd.Series(np.asarray(vocab)[np.asarray(probs).argmax(1)], index=list(test_ids))
    return pd.DataFrame({"image_id": ids, "label": labels.loc[ids].to_numpy()})


def holdout_table(runs, w) -> pd.DataFrame:
    """Accuracy on the fixed holdout of each member and of the weighted ensemble, side by side."""
    def acc(p):
        return 1 - error(p, runs[0].vocab, runs[0].holdout_labels)

    rows = [dict(run=r.name, arch=r.arch, weight=wi, valid_error=r.valid_error, holdout_accuracy=acc(r.holdout_probs))
            for r, wi in zip(runs, w)]
    ens = weighted_mean([r.holdout_probs for r in runs], w)
    rows.append(dict(run="ensemble", arch="weighted mean", weight=float(np.sum(w)), valid_error=float("nan"),
                     holdout_accuracy=acc(ens)))
    return pd.DataFrame(rows)


def write_csv(df: pd.DataFrame, path):
    """Write a CSV atomically."""
    with atomic_write(path) as f:
        df.to_csv(f, index=False)
    return path
