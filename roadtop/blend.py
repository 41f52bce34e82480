"""Ensemble weights fitted on held-out predictions: greedy selection, optimised weights, honest cross-fitting."""

import warnings

import numpy as np
from scipy.optimize import minimize
from sklearn import metrics
from sklearn.model_selection import KFold, StratifiedKFold

from .errors import RoadtopError

__all__ = [
    "METHODS",
    "METRICS",
    "accuracy",
    "blend",
    "check_method",
    "cross_fit",
    "cv_folds",
    "fit_weights",
    "greedy_weights",
    "log_loss",
    "optimize_weights",
]

METHODS = ("mean", "greedy", "optimize")
METRICS = ("logloss", "accuracy")
_EPS = 1e-7


def _stack(probs) -> np.ndarray:
    """(members, rows, classes) float64 array from a list of (rows, classes) probability arrays."""
    s = np.stack([np.asarray(p, dtype=np.float64) for p in probs])
    if s.ndim != 3:
        raise RoadtopError(f"expected a list of (rows, classes) probability arrays, got shape {s.shape}")
    return s


def check_method(method: str, metric: str, methods=METHODS):
    """Refuse an ensemble method not in `methods` or an unknown metric, naming the known ones."""
    if method not in methods:
        raise RoadtopError(f"ensemble method '{method}' is unknown: use one of {', '.join(methods)}")
    if metric not in METRICS:
        raise RoadtopError(f"ensemble metric '{metric}' is unknown: use one of {', '.join(METRICS)}")


def log_loss(probs, y) -> float:
    """Mean negative log probability of the true class (`y`: class indices), each probability at least 1e-7.

    scikit-learn's, given rows clipped at 1e-7 and renormalised: its own clip is float64's eps (a zero would cost 36,
    not 16) and it warns on the rows float32 storage leaves 1e-7 off summing to 1.
    """
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1)
    return float(metrics.log_loss(y, p / p.sum(1, keepdims=True), labels=np.arange(p.shape[1])))


def accuracy(probs, y) -> float:
    """Share of rows whose argmax is the true class index."""
    return float(metrics.accuracy_score(y, np.asarray(probs).argmax(1)))


def blend(probs, w) -> np.ndarray:
    """Weighted mean of the members' probabilities: sum_i w_i p_i / sum_i w_i."""
    w = np.asarray(w, dtype=np.float64)
    return np.tensordot(w, _stack(probs), axes=1) / w.sum()


def _score(probs, y, metric) -> float:
    """Lower is better: log-loss, or error for `accuracy` (ties broken by log-loss, so they are rare)."""
    if metric == "logloss":
        return log_loss(probs, y)
    return (1 - accuracy(probs, y)) + 1e-6 * log_loss(probs, y)


def greedy_weights(probs, y, metric: str = "logloss", rounds: int = 20) -> np.ndarray:
    """Caruana et al. (2004): add, with replacement, the member that most improves the running average; weights are
    how often each was picked, from the best ensemble seen in `rounds` rounds (normalised to sum to 1)."""
    s = _stack(probs)
    counts, total = np.zeros(len(s)), np.zeros(s.shape[1:])
    best, best_counts = np.inf, None
    for r in range(1, rounds + 1):
        scores = [_score((total + s[i]) / r, y, metric) for i in range(len(s))]
        i = int(np.argmin(scores))  # ties: the first member
        counts[i] += 1
        total += s[i]
        if scores[i] < best - 1e-12:
            best, best_counts = scores[i], counts.copy()
    return best_counts / best_counts.sum()


def optimize_weights(probs, y) -> np.ndarray:
    """Non-negative weights summing to 1 that minimise the log-loss of the blend (SLSQP, analytic gradient)."""
    s = _stack(probs)
    m = len(s)
    p_true = s[:, np.arange(len(y)), np.asarray(y)].T  # (rows, members): each member's probability of the truth

    def loss(w):  # by hand, not sklearn's log_loss: SLSQP wants it cheap and with its gradient beside it
        """Log-loss of the blend with weights `w`."""
        return -np.log(np.clip(p_true @ w, _EPS, None)).mean()

    def grad(w):
        """d loss / d w."""
        return -(p_true / np.clip(p_true @ w, _EPS, None)[:, None]).mean(0)

    res = minimize(loss, np.full(m, 1 / m), jac=grad, method="SLSQP", bounds=[(0, 1)] * m,
                   constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1, "jac": lambda w: np.ones(m)}],
                   options={"maxiter": 200, "ftol": 1e-10})
    w = np.clip(res.x, 0, None)
    w[w < 1e-4] = 0  # SLSQP lands within rounding of the bound: call those members unused
    return w / w.sum()


def fit_weights(method: str, probs, y, plan_weights=None, metric: str = "logloss", rounds: int = 20) -> np.ndarray:
    """Weights (summing to 1) of ensemble `method`: `mean` (the plan's weights), `greedy` or `optimize`."""
    check_method(method, metric)
    if method == "mean":
        w = np.ones(len(probs)) if plan_weights is None else np.asarray(plan_weights, dtype=np.float64)
        return w / w.sum()
    if method == "greedy":
        return greedy_weights(probs, y, metric, rounds)
    return optimize_weights(probs, y)


def cv_folds(y, k: int, seed: int) -> np.ndarray:
    """Fold index (0..k-1) of each row: scikit-learn's `StratifiedKFold`, shuffled and seeded; k is capped at the
    number of rows (and when no class has k rows, the parts are plain shuffled `KFold` ones)."""
    y = np.asarray(y)
    if k < 2 or len(y) < 2:
        raise RoadtopError(f"cross-fitting needs at least 2 folds and 2 rows (got k={k}, {len(y)} rows)")
    k = min(k, len(y))
    cut = StratifiedKFold if np.unique(y, return_counts=True)[1].max() >= k else KFold
    fold = np.empty(len(y), int)
    with warnings.catch_warnings():  # a holdout's rare classes have fewer rows than parts: spread as far as they go
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        for f, (_, held) in enumerate(cut(k, shuffle=True, random_state=seed).split(y, y)):
            fold[held] = f
    return fold


def cross_fit(method: str, probs, y, k: int = 5, seed: int = 0, folds=None, **kw):
    """Honest scores: fit weights on k-1 parts of the rows, blend the held part with them, for each part.

    `folds` (each row's part) defaults to cv_folds(y, k, seed). Returns (blended probabilities of every row from
    weights not fitted on it, weights of each part).
    """
    s = _stack(probs)
    y = np.asarray(y)
    fold = cv_folds(y, k, seed) if folds is None else np.asarray(folds)
    out, ws = np.zeros(s.shape[1:]), []
    for f in range(fold.max() + 1):
        fit, held = fold != f, fold == f
        w = fit_weights(method, s[:, fit], y[fit], **kw)
        out[held] = blend(s[:, held], w)
        ws.append(w)
    return out, np.array(ws)
