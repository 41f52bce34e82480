"""The saved-predictions file every training run writes and the ensemble reads (`preds.npz`)."""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.metrics import zero_one_loss

from .errors import RoadtopError
from .paths import atomic_write

__all__ = ["PREDS", "RunPreds", "save_preds", "load_preds", "error"]

PREDS = "preds.npz"


@dataclass
class RunPreds:
    """One run's TTA probabilities on the test set and on the fixed holdout, with what they mean."""

    name: str
    arch: str
    vocab: list
    test_ids: list
    test_probs: np.ndarray  # (n_test, n_classes), rows sum to 1
    holdout_ids: list
    holdout_labels: list
    holdout_probs: np.ndarray  # (n_holdout, n_classes)
    valid_error: float = float("nan")
    meta: dict = field(default_factory=dict)
    # out-of-fold predictions of a k-fold run (its validation fold): empty for a random-split run
    oof_ids: list = field(default_factory=list)
    oof_labels: list = field(default_factory=list)
    oof_probs: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))


def error(probs, vocab, labels) -> float:
    """Share of rows whose argmax class (a name from `vocab`) differs from `labels`; NaN for no rows."""
    if not len(labels):
        return float("nan")
    misses = zero_one_loss(list(labels), np.asarray(vocab)[np.asarray(probs).argmax(1)], normalize=False)
    return float(misses / len(labels))  # a count over n: 0.1, where 1 - accuracy gives 0.0999...


def save_preds(out_dir, p: RunPreds) -> Path:
    """Write `p` to out_dir/preds.npz atomically (temp file, then rename)."""
    f = Path(out_dir) / PREDS
    with atomic_write(f, "wb") as fh:
        np.savez(fh, vocab=np.array(p.vocab, dtype=str), test_ids=np.array(p.test_ids, dtype=str),
                 test_probs=np.asarray(p.test_probs, np.float32), holdout_ids=np.array(p.holdout_ids, dtype=str),
                 holdout_labels=np.array(p.holdout_labels, dtype=str),
                 holdout_probs=np.asarray(p.holdout_probs, np.float32),
                 oof_ids=np.array(p.oof_ids, dtype=str), oof_labels=np.array(p.oof_labels, dtype=str),
                 oof_probs=np.asarray(p.oof_probs, np.float32).reshape(len(p.oof_ids), -1 if len(p.oof_ids) else 0),
                 meta=np.array(json.dumps({"name": p.name, "arch": p.arch, "valid_error": float(p.valid_error),
                                           **p.meta})))
    return f


def load_preds(run_dir) -> RunPreds:
    """Read a run's preds.npz; one clear error if it is missing, unreadable or not probabilities."""
    f = Path(run_dir) / PREDS
    if not f.exists():
        raise RoadtopError(f"{f} is missing: run the training notebook for {Path(run_dir).name} first")
    try:
        with np.load(f, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
        meta = json.loads(str(d.pop("meta")))
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise RoadtopError(f"{f} is unreadable ({type(e).__name__}): delete it and rerun that run") from None
    p = RunPreds(name=meta.pop("name", Path(run_dir).name), arch=meta.pop("arch", "?"),
                 valid_error=meta.pop("valid_error", float("nan")), meta=meta,
                 vocab=d["vocab"].tolist(), test_ids=d["test_ids"].tolist(), test_probs=d["test_probs"],
                 holdout_ids=d["holdout_ids"].tolist(), holdout_labels=d["holdout_labels"].tolist(),
                 holdout_probs=d["holdout_probs"], oof_ids=d.get("oof_ids", np.zeros(0, str)).tolist(),
                 oof_labels=d.get("oof_labels", np.zeros(0, str)).tolist(),
                 oof_probs=d.get("oof_probs", np.zeros((0, len(d["vocab"])), np.float32)))
    if not len(p.oof_ids):
        p.oof_probs = p.oof_probs.reshape(0, len(p.vocab))
    for what, ids in (("test_probs", p.test_ids), ("holdout_probs", p.holdout_ids), ("oof_probs", p.oof_ids)):
        a = getattr(p, what)
        n_rows = len(ids)
        if a.ndim != 2 or a.shape != (n_rows, len(p.vocab)):
            raise RoadtopError(f"{f}: {what} has shape {a.shape}, expected ({n_rows}, {len(p.vocab)}): rerun that run")
        if len(a) and not np.isfinite(a).all():
            raise RoadtopError(f"{f}: {what} holds NaN/inf: rerun that run (lower lr, or fp32)")
        if len(a) and not np.allclose(a.sum(1), 1, atol=1e-3):
            raise RoadtopError(f"{f}: {what} rows do not sum to 1 (not probabilities): save softmaxed TTA outputs")
    return p
