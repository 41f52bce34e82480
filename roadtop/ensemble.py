"""Ensembling saved runs: agreement checks, k-fold bags, fitted weights, the choice, submission, holdout table."""

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import blend
from .errors import RoadtopError
from .paths import atomic_write
from .preds import RunPreds

__all__ = [
    "CHOICE",
    "FIT_ON",
    "FOLD_RE",
    "METHODS",
    "Fitted",
    "bag_folds",
    "candidates",
    "check_runs",
    "choose",
    "class_index",
    "confusion",
    "fit_ensembles",
    "fold_name",
    "held_out_scores",
    "holdout_table",
    "load_choice",
    "oof_set",
    "run_weights",
    "save_choice",
    "submission",
    "weighted_mean",
    "weights_frame",
    "write_csv",
]

METHODS = ("auto", *blend.METHODS)  # what the notebook's `method` may be: auto picks by the holdout
FIT_ON = ("auto", "oof", "holdout")  # what fitted weights are fitted on: auto takes oof when every member has it
CHOICE = "ensemble.json"  # the submitted ensemble, its weights and the scores it was chosen on

FOLD_RE = re.compile(r"^(?P<run>.+)-fold(?P<fold>\d+)$")  # a k-fold job's run name: <run>-fold<i>


def fold_name(run: str, fold: int) -> str:
    """The name of fold `fold` of k-fold run `run` (its job is train/<run>-fold<i>)."""
    return f"{run}-fold{fold}"


def check_runs(runs):
    """Refuse runs whose vocab, test ids or holdout ids differ from the first run's, naming the run."""
    if not runs:
        raise RoadtopError("no saved runs to ensemble (no preds.npz found): run train.ipynb first "
                           "(or `python pipeline.py run`), or list the run folders in run_dirs")
    ref = runs[0]
    for r in runs[1:]:
        for what in ("vocab", "test_ids", "holdout_ids"):
            a, b = getattr(ref, what), getattr(r, what)
            if list(a) != list(b):
                diff = "order" if sorted(a) == sorted(b) else "content"
                raise RoadtopError(f"run '{r.name}' has a different {what} ({diff}) than run '{ref.name}': "
                                   f"rerun it on the same data (and holdout_pct/holdout_seed)")
    return runs


@dataclass
class Fitted:
    """One ensemble: its final weights (sum 1) and its holdout predictions from weights not fitted on those images."""

    name: str  # its row in the holdout table
    method: str  # member (one run alone) | mean | greedy | optimize
    weights: np.ndarray
    holdout_probs: np.ndarray
    scored_on: str  # how holdout_probs were made honest
    fold_weights: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # per cross-fitting fold


_DESC = {"member": "member alone", "mean": "plan-weighted mean (the lesson's ensemble)",
         "greedy": "greedy selection", "optimize": "optimised weights"}
_SIMPLER = ("mean", "greedy", "optimize")  # after a member alone, the order ties go in: fewest fitted weights first
_TIE = 1e-9  # scores this close are equal (a blend of identical members differs from them in the last bits)


def bag_folds(runs) -> list:
    """The fold runs of one k-fold run (<run>-fold<i>) become one member: test and holdout probabilities averaged,
    out-of-fold predictions joined. Other runs stay as they are, in their order."""
    groups = {}
    for r in runs:
        m = FOLD_RE.match(r.name)
        groups.setdefault(m["run"] if m else r.name, []).append(r)
    out = []
    for name, rs in groups.items():
        folds = [r for r in rs if FOLD_RE.match(r.name)]
        if not folds:
            out.extend(rs)
            continue
        if len(folds) != len(rs) or len({r.arch for r in rs}) > 1:
            raise RoadtopError(f"runs {[r.name for r in rs]} look like folds of one k-fold run '{name}' but mix "
                               f"archs or plain runs: rename the plain run")
        oof_ids = [i for r in rs for i in r.oof_ids]
        if len(set(oof_ids)) != len(oof_ids):
            raise RoadtopError(f"the folds of '{name}' share out-of-fold images: their folds overlap; rerun them "
                               f"with the same folds and seed")
        ref = rs[0]
        out.append(RunPreds(
            name=name, arch=ref.arch, vocab=ref.vocab, test_ids=ref.test_ids,
            test_probs=np.mean([r.test_probs for r in rs], 0), holdout_ids=ref.holdout_ids,
            holdout_labels=ref.holdout_labels, holdout_probs=np.mean([r.holdout_probs for r in rs], 0),
            valid_error=float(np.mean([r.valid_error for r in rs])), meta={"folds": [r.name for r in rs]},
            oof_ids=oof_ids, oof_labels=[la for r in rs for la in r.oof_labels],
            oof_probs=np.concatenate([np.asarray(r.oof_probs).reshape(len(r.oof_ids), len(ref.vocab)) for r in rs])))
    return out


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
    return blend.blend(probs, w)


def class_index(vocab, labels) -> np.ndarray:
    """Each label's column in `vocab` (one clear error for a label the runs never saw)."""
    pos = {v: i for i, v in enumerate(vocab)}
    unknown = sorted(set(labels) - set(pos))
    if unknown:
        raise RoadtopError(f"labels {unknown[:3]} are not in the runs' vocab {list(vocab)[:5]}...: rerun the runs "
                           f"on the same data")
    return np.array([pos[la] for la in labels], dtype=int)


def oof_set(members):
    """(probabilities (members, rows, classes), true class indices, ids) on the out-of-fold images every member has;
    None unless every member carries out-of-fold predictions (k-fold runs) with images in common."""
    if not members or any(not len(r.oof_ids) for r in members):
        return None
    common = set(members[0].oof_ids).intersection(*(r.oof_ids for r in members[1:]))
    if not common:
        return None
    ids = sorted(common)
    rows = [{i: k for k, i in enumerate(r.oof_ids)} for r in members]
    probs = np.stack([np.asarray(r.oof_probs)[[row[i] for i in ids]] for r, row in zip(members, rows)])
    labels = dict(zip(members[0].oof_ids, members[0].oof_labels))
    return probs, class_index(members[0].vocab, [labels[i] for i in ids]), ids


def _plan_mean(members, plan_w) -> Fitted:
    """The lesson's ensemble: the plan's weights, nothing fitted, so the whole holdout scores it."""
    w = np.asarray(plan_w, dtype=np.float64)
    return Fitted("mean (plan weights)", "mean", w / w.sum(), weighted_mean([r.holdout_probs for r in members], w),
                  "holdout")


def fit_ensembles(members, plan_w, method: str = "auto", metric: str = "logloss", cv_folds: int = 5,
                  cv_seed: int = 0, fit_on: str = "auto", rounds: int = 20) -> dict:
    """Every ensemble, keyed by method: `mean` (the plan's weights) and, where there is data to fit on, `greedy`
    and `optimize` (an explicit `method` that cannot be fitted is refused; `auto` takes what there is).

    Fitted weights come from the members' out-of-fold predictions (fit_on oof, or auto when every member has them;
    the whole holdout is then a pure test), else from the holdout by k-fold cross-fitting (scored on the part left
    out of each fit, then refitted on the whole holdout for the submission).
    """
    blend.check_method(method, metric, METHODS)
    if fit_on not in FIT_ON:
        raise RoadtopError(f"fit_on='{fit_on}' is unknown: use {', '.join(FIT_ON)}")
    hold = [r.holdout_probs for r in members]
    y = class_index(members[0].vocab, members[0].holdout_labels)
    out = {"mean": _plan_mean(members, plan_w)}
    oof = oof_set(members) if fit_on != "holdout" else None
    if fit_on == "oof" and oof is None:
        raise RoadtopError("fit_on='oof' needs out-of-fold predictions from every member: train each run with "
                           "folds: k, or use fit_on='holdout'")
    kw = {"metric": metric, "rounds": rounds}
    for m in ("greedy", "optimize"):
        if oof is not None:
            wm = blend.fit_weights(m, oof[0], oof[1], **kw)
            out[m] = Fitted(m, m, wm, blend.blend(hold, wm),
                            f"holdout (weights fitted on {len(oof[2])} out-of-fold images)")
        elif len(y) >= 2 * max(2, cv_folds):
            probs, fw = blend.cross_fit(m, hold, y, cv_folds, cv_seed, **kw)
            out[m] = Fitted(m, m, blend.fit_weights(m, hold, y, **kw), probs,
                            f"holdout, cross-fitted ({cv_folds} folds)", fw)
    if method != "auto" and method not in out:
        raise RoadtopError(f"method '{method}' needs images to fit weights on: {len(y)} holdout image(s) is too few "
                           f"for {cv_folds}-fold cross-fitting: raise holdout_pct, train with folds: k, or use mean")
    return out


def weights_frame(members, fitted) -> pd.DataFrame:
    """Members x ensembles: each ensemble's final weight of each member (columns sum to 1)."""
    return pd.DataFrame({f.name: f.weights for f in fitted.values()}, index=[r.name for r in members])


def confusion(probs, vocab, labels) -> pd.DataFrame:
    """Counts of (actual label, predicted label): rows actual, columns predicted, both in vocab order."""
    class_index(vocab, labels)  # one clear error for a label the runs never saw
    actual = pd.Categorical(list(labels), categories=list(vocab))
    predicted = pd.Categorical(np.asarray(vocab)[np.asarray(probs).argmax(1)] if len(labels) else [],
                               categories=list(vocab))
    return pd.crosstab(actual, predicted, rownames=["actual"], colnames=["predicted"], dropna=False)


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


def candidates(members, fitted) -> dict:
    """Every candidate for the submission, keyed by its row in the holdout table: each member alone (one-hot
    weights), then the ensembles of `fitted`."""
    ens = {f.name: f for f in fitted.values()}
    clash = sorted({r.name for r in members} & {*ens, "ensemble"})
    if clash:
        raise RoadtopError(f"run name(s) {clash} are also names of ensemble rows: rename the run(s)")
    one = np.eye(len(members))
    alone = {r.name: Fitted(r.name, "member", one[i], np.asarray(r.holdout_probs, np.float64), "holdout")
             for i, r in enumerate(members)}
    return {**alone, **ens}


def held_out_scores(cands, members, metric: str = "logloss") -> dict:
    """Each candidate's `metric` (logloss or accuracy) on its honest holdout predictions (NaN without a holdout)."""
    y = class_index(members[0].vocab, members[0].holdout_labels)
    score = blend.log_loss if metric == "logloss" else blend.accuracy
    return {n: score(c.holdout_probs, y) if len(y) else float("nan") for n, c in cands.items()}


def choose(cands, scores: dict, method: str = "auto", metric: str = "logloss") -> str:
    """The candidate to submit: the ensemble `method` names, or (auto) the best held-out score by `metric`.

    Ties go to the simpler: a member alone when it is the only member among the tied; else the mean, greedy, then
    optimize (several identical members tie with their mean); else the first tied member in plan order. Without a
    holdout to judge by, auto submits the plan's mean.
    """
    blend.check_method(method, metric, METHODS)
    by = {c.method: n for n, c in cands.items() if c.method != "member"}
    if method != "auto":
        if method not in by:
            raise RoadtopError(f"ensemble method '{method}' was not fitted: pick one of {sorted(by)}")
        return by[method]
    sign = 1 if metric == "logloss" else -1  # lower is better
    ok = {n: sign * s for n, s in scores.items() if n in cands and not math.isnan(s)}
    if not ok:
        return by["mean"]
    best = min(ok.values())
    tied = [n for n, s in ok.items() if s <= best + _TIE]
    alone = [n for n in tied if cands[n].method == "member"]
    if len(alone) == 1:
        return alone[0]
    return next((by[m] for m in _SIMPLER if by.get(m) in tied), alone[0] if alone else tied[0])


def holdout_table(members, plan_w, fitted=None, chosen: str = "mean (plan weights)", note: str = "") -> pd.DataFrame:
    """Each member, then each ensemble (with its weights), then the `ensemble` row: candidate `chosen` (a member or
    an ensemble row's name), submitted; `note` says how it was chosen.

    Members are scored on the whole holdout; an ensemble on its honest holdout predictions (see fit_ensembles).
    """
    vocab, labels = members[0].vocab, members[0].holdout_labels
    y = class_index(vocab, labels)
    fitted = fitted or {"mean": _plan_mean(members, plan_w)}
    cands = candidates(members, fitted)
    if chosen not in cands:
        raise RoadtopError(f"'{chosen}' is not a candidate for the submission: pick one of {sorted(cands)}")

    def scores(p):
        """Accuracy and log-loss on the holdout (NaN when there is none)."""
        if not len(y):
            return float("nan"), float("nan")
        return blend.accuracy(p, y), blend.log_loss(p, y)

    rows = []
    for r, wi in zip(members, plan_w):
        acc, ll = scores(r.holdout_probs)
        rows.append({"run": r.name, "arch": r.arch, "weight": float(wi), "valid_error": r.valid_error,
                     "holdout_accuracy": acc, "holdout_logloss": ll, "scored_on": "holdout", "weights": ""})
    names = [r.name for r in members]
    c = cands[chosen]
    shown = [(f.name, _DESC[f.method], f) for f in fitted.values()]
    for run, arch, f in [*shown, ("ensemble", f"{c.name}{': ' + note if note else ''} (submission)", c)]:
        acc, ll = scores(f.holdout_probs)
        rows.append({"run": run, "arch": arch, "weight": float("nan"), "valid_error": float("nan"),
                     "holdout_accuracy": acc, "holdout_logloss": ll, "scored_on": f.scored_on,
                     "weights": ", ".join(f"{n} {w:.2f}" for n, w in zip(names, f.weights) if round(w, 2) > 0)})
    return pd.DataFrame(rows)


def save_choice(out_dir, members, cands, chosen: str, method: str, metric: str, scores: dict) -> Path:
    """Write ensemble.json atomically: method, chosen candidate, scores, its weights, each member's runs."""
    rec = {"method": method, "chosen": chosen, "metric": metric,
           "scores": {n: None if math.isnan(s) else float(s) for n, s in scores.items()},
           "weights": {r.name: float(w) for r, w in zip(members, cands[chosen].weights)},
           "runs": {r.name: list(r.meta.get("folds") or [r.name]) for r in members}}
    f = Path(out_dir) / CHOICE
    with atomic_write(f) as fh:
        json.dump(rec, fh, indent=1)
    return f


def load_choice(out_dir) -> dict:
    """Read ensemble.json (see save_choice); one clear error if it is missing or not what save_choice writes."""
    f = Path(out_dir) / CHOICE
    if not f.exists():
        raise RoadtopError(f"{f} is missing: run the ensemble notebook (or `python pipeline.py run`) first")
    try:
        rec = json.loads(f.read_text())
        ok = (isinstance(rec, dict) and {"method", "chosen", "metric", "scores", "weights", "runs"} <= set(rec)
              and rec["chosen"] in rec["scores"] and set(rec["weights"]) == set(rec["runs"])
              and all(isinstance(w, (int, float)) and w >= 0 for w in rec["weights"].values())
              and all(isinstance(v, list) and v for v in rec["runs"].values()))
    except (OSError, ValueError):
        ok = False
    if not ok:
        raise RoadtopError(f"{f} is unreadable or incomplete: rerun the ensemble notebook to rewrite it")
    return rec


def write_csv(df: pd.DataFrame, path):
    """Write a CSV atomically."""
    with atomic_write(path) as f:
        df.to_csv(f, index=False)
    return path

