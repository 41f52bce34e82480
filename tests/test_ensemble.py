"""The ensemble on hand-made arrays: weighted mean, submission order, and refusing runs that disagree."""

import numpy as np
import pandas as pd
import pytest

from roadtop import ensemble, preds
from roadtop.errors import RoadtopError

VOCAB = ["a", "b", "c"]


def run(name, arch, test_probs, hold_probs=None, vocab=VOCAB, test_ids=("t1", "t2"), hold=("h1", "h2")):
    hp = np.array(hold_probs if hold_probs is not None else [[1, 0, 0], [0, 1, 0]], float)
    return preds.RunPreds(name=name, arch=arch, vocab=list(vocab), test_ids=list(test_ids),
                          test_probs=np.array(test_probs, float), holdout_ids=list(hold), holdout_labels=["a", "b"],
                          holdout_probs=hp, valid_error=0.1)


def test_weighted_mean_by_hand():
    p1 = np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    p2 = np.array([[0.0, 0.9, 0.1], [0.3, 0.7, 0.0]])
    got = ensemble.weighted_mean([p1, p2], [1, 2])
    want = (1 * p1 + 2 * p2) / 3
    assert np.allclose(got, want) and np.allclose(got.sum(1), 1)
    # the heavier member flips row 0 from 'a' to 'b'
    assert np.array(VOCAB)[got.argmax(1)].tolist() == ["b", "b"]


def test_weights_by_arch_and_name():
    runs = [run("vit1", "vit", [[1, 0, 0]] * 2), run("vit2", "vit", [[1, 0, 0]] * 2), run("cnx", "convnext", [[1, 0, 0]] * 2)]
    assert ensemble.run_weights(runs, {"vit": 2}).tolist() == [2, 2, 1]
    assert ensemble.run_weights(runs, {"vit": 2, "vit2": 0.5}).tolist() == [2, 0.5, 1]
    with pytest.raises(RoadtopError, match=r"match no run name or arch"):
        ensemble.run_weights(runs, {"swin": 2})
    with pytest.raises(RoadtopError, match="must be >= 0"):
        ensemble.run_weights(runs, {"vit": -1})


@pytest.mark.parametrize("field, other, msg", [
    ("vocab", ["a", "c", "b"], "run 'bad' has a different vocab (order)"),
    ("vocab", ["a", "b", "x"], "run 'bad' has a different vocab (content)"),
    ("test_ids", ("t2", "t1"), "run 'bad' has a different test_ids (order)"),
    ("hold", ("h1", "h9"), "run 'bad' has a different holdout_ids (content)"),
])
def test_disagreeing_runs_are_refused_by_name(field, other, msg):
    good = run("good", "x", [[1, 0, 0]] * 2)
    bad = run("bad", "y", [[1, 0, 0]] * 2, **{field: other})
    with pytest.raises(RoadtopError) as e:
        ensemble.check_runs([good, bad])
    assert msg in str(e.value)


def test_submission_follows_sample_order_and_ids():
    probs = np.array([[0.1, 0.8, 0.1], [0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    sample = pd.DataFrame({"image_id": ["t3", "t1", "t2"], "label": ""})
    sub = ensemble.submission(probs, VOCAB, ["t1", "t2", "t3"], sample)
    assert sub.image_id.tolist() == ["t3", "t1", "t2"] and sub.label.tolist() == ["c", "b", "a"]
    with pytest.raises(RoadtopError, match=r"missing \['t4'\]"):
        ensemble.submission(probs, VOCAB, ["t1", "t2", "t3"], pd.DataFrame({"image_id": ["t1", "t2", "t4"]}))


def test_holdout_table_members_and_ensemble():
    r1 = run("r1", "x", [[1, 0, 0]] * 2, hold_probs=[[0.9, 0.1, 0], [0.9, 0.1, 0]])  # 1 of 2 right
    r2 = run("r2", "y", [[1, 0, 0]] * 2, hold_probs=[[0.0, 1.0, 0], [0.0, 1.0, 0]])  # 1 of 2 right
    r3 = run("r3", "z", [[1, 0, 0]] * 2, hold_probs=[[0.6, 0.4, 0], [0.0, 0.6, 0.4]])  # 2 of 2
    t = ensemble.holdout_table([r1, r2, r3], np.array([1, 1, 1]))
    assert t.run.tolist() == ["r1", "r2", "r3", "ensemble"]
    assert t.holdout_accuracy.tolist()[:3] == [0.5, 0.5, 1.0]
    mean = ensemble.weighted_mean([r.holdout_probs for r in (r1, r2, r3)], [1, 1, 1])
    assert t.holdout_accuracy.iloc[3] == np.mean(np.array(VOCAB)[mean.argmax(1)] == ["a", "b"])


def test_preds_roundtrip_and_refusals(tmp_path):
    r = run("r", "x", [[0.2, 0.3, 0.5], [1, 0, 0]])
    preds.save_preds(tmp_path / "r", r)
    back = preds.load_preds(tmp_path / "r")
    assert back.vocab == VOCAB and back.test_ids == ["t1", "t2"] and np.allclose(back.test_probs, r.test_probs)
    assert not list((tmp_path / "r").glob(".*tmp"))  # the atomic write left no temp file
    preds.save_preds(tmp_path / "nan", run("n", "x", [[np.nan, 0.5, 0.5], [1, 0, 0]]))
    with pytest.raises(RoadtopError, match="holds NaN"):
        preds.load_preds(tmp_path / "nan")
    preds.save_preds(tmp_path / "logits", run("l", "x", [[2.0, -1, 0.5], [1, 0, 0]]))
    with pytest.raises(RoadtopError, match="do not sum to 1"):
        preds.load_preds(tmp_path / "logits")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "preds.npz").write_bytes(b"not a zip")
    with pytest.raises(RoadtopError, match="unreadable"):
        preds.load_preds(tmp_path / "junk")
    with pytest.raises(RoadtopError, match="missing"):
        preds.load_preds(tmp_path / "nothing")
