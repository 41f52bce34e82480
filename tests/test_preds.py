"""The saved-predictions file (roadtop.preds): what a run writes, what the ensemble reads back, the error rate."""

import numpy as np
import pytest

from roadtop import preds
from roadtop.errors import RoadtopError

VOCAB = ["blast", "normal", "tungro"]


def _run(**kw):
    """A k-fold run's predictions: 2 test rows, 1 holdout row, 2 out-of-fold rows."""
    p = {"name": "cnx-fold0", "arch": "convnext_atto", "vocab": VOCAB, "test_ids": ["t1.jpg", "t2.jpg"],
         "test_probs": np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]), "holdout_ids": ["h1.jpg"],
         "holdout_labels": ["normal"], "holdout_probs": np.array([[0.2, 0.7, 0.1]]), "valid_error": 0.25,
         "meta": {"fold": 0}, "oof_ids": ["o1.jpg", "o2.jpg"], "oof_labels": ["blast", "tungro"],
         "oof_probs": np.array([[0.6, 0.3, 0.1], [0.5, 0.3, 0.2]])}
    return preds.RunPreds(**{**p, **kw})


def test_error_is_the_share_of_wrong_argmaxes():
    probs = [[0.6, 0.3, 0.1], [0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]
    assert preds.error(probs, VOCAB, ["blast", "tungro", "tungro"]) == pytest.approx(1 / 3)
    assert np.isnan(preds.error(np.zeros((0, 3)), VOCAB, []))


def test_a_k_fold_runs_out_of_fold_rows_and_meta_come_back(tmp_path):
    f = preds.save_preds(tmp_path / "cnx-fold0", _run())
    assert f == tmp_path / "cnx-fold0" / preds.PREDS
    back = preds.load_preds(tmp_path / "cnx-fold0")
    assert (back.name, back.arch, back.valid_error, back.meta) == ("cnx-fold0", "convnext_atto", 0.25, {"fold": 0})
    assert back.oof_ids == ["o1.jpg", "o2.jpg"] and back.oof_labels == ["blast", "tungro"]
    assert back.oof_probs.dtype == np.float32 and np.allclose(back.oof_probs, _run().oof_probs)
    assert preds.error(back.oof_probs, back.vocab, back.oof_labels) == 0.5
    plain = preds.load_preds(preds.save_preds(tmp_path / "plain", _run(oof_ids=[], oof_labels=[],
                                                                       oof_probs=np.zeros((0, 0)))).parent)
    assert plain.oof_probs.shape == (0, 3)  # a random-split run: no out-of-fold rows, the vocab's width


def test_probabilities_that_do_not_match_their_ids_or_vocab_are_refused(tmp_path):
    preds.save_preds(tmp_path / "short", _run(holdout_ids=["h1.jpg", "h2.jpg"], holdout_labels=["a", "b"]))
    with pytest.raises(RoadtopError, match=r"short/preds.npz: holdout_probs has shape \(1, 3\), expected \(2, 3\): "
                                           r"rerun that run"):
        preds.load_preds(tmp_path / "short")
