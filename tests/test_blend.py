"""roadtop/blend.py: the metrics (scikit-learn's, clipped as before), greedy and optimised weights, stratified
cross-fitting parts, the method/metric check."""

import warnings

import numpy as np
import pytest
from sklearn import metrics

from roadtop import blend, ensemble
from roadtop.errors import RoadtopError

C = 10  # classes, as in Paddy


def member(y, acc, rng, conf=0.6):
    """Probabilities that put `conf` on the true class for a share `acc` of rows, else on a random wrong class."""
    n = len(y)
    right = rng.random(n) < acc
    top = np.where(right, y, (y + rng.integers(1, C, n)) % C)
    p = np.full((n, C), (1 - conf) / (C - 1))
    p[np.arange(n), top] = conf
    return p


def test_greedy_by_hand():
    y = np.array([0, 1, 2, 0])
    a = np.eye(3)[[0, 1, 1, 0]] * 0.8 + 0.2 / 3  # right on 3 of 4
    b = np.eye(3)[[1, 1, 2, 0]] * 0.8 + 0.2 / 3  # right on 3 of 4, wrong elsewhere
    c = np.eye(3)[[2, 2, 1, 1]] * 0.8 + 0.2 / 3  # right on none
    w = blend.greedy_weights([a, b, c], y, rounds=10)
    assert w[2] == 0 and w[0] > 0 and w[1] > 0 and np.isclose(w.sum(), 1)
    assert blend.log_loss(blend.blend([a, b, c], w), y) < min(blend.log_loss(p, y) for p in (a, b))
    assert blend.greedy_weights([a, b, c], y, metric="accuracy", rounds=1).tolist() == [1, 0, 0]  # ties: first


def test_optimize_weights_minimise_log_loss():
    rng = np.random.default_rng(3)
    y = rng.integers(0, C, 300)
    ps = [member(y, a, rng) for a in (0.5, 0.6, 0.8)]
    w = blend.optimize_weights(ps, y)
    assert (w >= 0).all() and np.isclose(w.sum(), 1)
    best = blend.log_loss(blend.blend(ps, w), y)
    for other in [np.ones(3) / 3, np.eye(3)[2], *rng.dirichlet(np.ones(3), 50)]:  # no other point on the simplex beats it
        assert best <= blend.log_loss(blend.blend(ps, other), y) + 1e-6


def test_cross_fitting_never_sees_the_rows_it_scores():
    rng = np.random.default_rng(4)
    y = rng.integers(0, C, 120)
    ps = [member(y, a, rng) for a in (0.5, 0.6, 0.7)]
    folds = blend.cv_folds(y, 5, seed=0)
    assert sorted(set(folds)) == [0, 1, 2, 3, 4] and np.bincount(folds).min() >= 23
    assert (folds == blend.cv_folds(y, 5, seed=0)).all() and (folds != blend.cv_folds(y, 5, seed=1)).any()
    for c in range(C):  # stratified: each class spread evenly over the parts
        assert np.ptp(np.bincount(folds[y == c], minlength=5)) <= 1
    assert np.allclose(blend.cross_fit("greedy", ps, y, 5, seed=0)[0], blend.cross_fit("greedy", ps, y, folds=folds)[0])
    y2 = y.copy()
    y2[folds == 0] = (y2[folds == 0] + 1) % C  # relabel only the rows of fold 0
    for m in ("greedy", "optimize"):
        p1, w1 = blend.cross_fit(m, ps, y, folds=folds)
        p2, w2 = blend.cross_fit(m, ps, y2, folds=folds)
        assert np.allclose(p1[folds == 0], p2[folds == 0]) and np.allclose(w1[0], w2[0])  # fold 0's own labels unused
        assert not np.allclose(w1[1:], w2[1:])  # ... while the other folds' fits did read them


def test_log_loss_and_accuracy_are_sklearns_with_probabilities_clipped_at_1e_7():
    rng = np.random.default_rng(6)
    y = rng.integers(0, C, 50)
    p = rng.dirichlet(np.ones(C), len(y))
    assert blend.log_loss(p, y) == pytest.approx(metrics.log_loss(y, p, labels=range(C)), rel=1e-12)
    assert blend.accuracy(p, y) == np.mean(p.argmax(1) == y)
    sure_wrong = np.eye(3)[[1, 1]]  # the truth (class 0) given 0: costs -log(1e-7), as before sklearn
    assert blend.log_loss(sure_wrong, [0, 1]) == pytest.approx(-np.log(1e-7) / 2, rel=1e-6)
    assert blend.log_loss(np.eye(3)[[0, 1]], [0, 1]) == pytest.approx(0, abs=1e-6)
    assert blend.log_loss(np.eye(3)[[0, 0]], [0, 0]) == pytest.approx(0, abs=1e-6)  # labels= keeps 3 columns
    stored = (p + rng.normal(0, 1e-7, p.shape)).astype(np.float32)  # rows 1e-7 off 1, as preds.npz stores them
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sklearn's "do not sum to one" would print in the ensemble notebook
        assert blend.log_loss(stored, y) == pytest.approx(blend.log_loss(p, y), rel=1e-5)


def test_method_and_metric_are_checked_in_one_place():
    blend.check_method("optimize", "accuracy")
    blend.check_method("auto", "logloss", ensemble.METHODS)  # the notebook's methods add auto
    with pytest.raises(RoadtopError, match="ensemble method 'auto' is unknown: use one of mean, greedy, optimize"):
        blend.fit_weights("auto", [np.eye(3)], [0, 1, 2])
    with pytest.raises(RoadtopError, match="ensemble metric 'f1' is unknown: use one of logloss, accuracy"):
        ensemble.choose({}, {}, "auto", "f1")


def test_cv_folds_without_a_class_of_k_rows_are_plain_seeded_parts():
    y = np.arange(7)  # every class once: nothing to stratify
    folds = blend.cv_folds(y, 5, seed=0)
    assert sorted(set(folds)) == [0, 1, 2, 3, 4] and (folds == blend.cv_folds(y, 5, seed=0)).all()
    assert sorted(set(blend.cv_folds(y[:3], 5, seed=0))) == [0, 1, 2]  # k capped at the rows
    with pytest.raises(RoadtopError, match="at least 2 folds and 2 rows"):
        blend.cv_folds(y[:1], 5, seed=0)
