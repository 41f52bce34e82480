"""The ensemble on hand-made arrays: weighted mean, fitted ensembles, the choice, k-fold bags, submission order,
refusals (the fitting maths alone: test_blend.py)."""

import json

import numpy as np
import pandas as pd
import papermill as pm
import pytest
from conftest import ROOT, pipeline, tiny_plan
from test_blend import C, member

from roadtop import blend, ensemble, paddy, preds
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
    assert t.run.tolist() == ["r1", "r2", "r3", "mean (plan weights)", "ensemble"]
    assert t.holdout_accuracy.tolist()[:3] == [0.5, 0.5, 1.0]
    mean = ensemble.weighted_mean([r.holdout_probs for r in (r1, r2, r3)], [1, 1, 1])
    assert t.holdout_accuracy.iloc[4] == np.mean(np.array(VOCAB)[mean.argmax(1)] == ["a", "b"])
    assert t.weights.iloc[4] == "r1 0.33, r2 0.33, r3 0.33" and t.weight.tolist()[:3] == [1, 1, 1]


# --- fitted weights on hand-made predictions -------------------------------------------------------------------

def hand_runs(probs, y, names=None):
    """RunPreds whose holdout is `y` (class indices) with the given holdout probabilities."""
    vocab = [f"c{i}" for i in range(C)]
    labels = [vocab[i] for i in y]
    return [preds.RunPreds(name=n, arch=f"arch_{n}", vocab=vocab, test_ids=["t1"], test_probs=np.full((1, C), 1 / C),
                           holdout_ids=[f"h{i}" for i in range(len(y))], holdout_labels=labels, holdout_probs=p)
            for n, p in zip(names or [f"m{i}" for i in range(len(probs))], probs)]


def scores(runs, method, plan_w=None, metric="logloss", **kw):
    """(holdout table indexed by run, the fitted ensembles) with what `method` picks submitted."""
    plan_w = np.ones(len(runs)) if plan_w is None else np.asarray(plan_w, float)
    fitted = ensemble.fit_ensembles(runs, plan_w, method=method, metric=metric, **kw)
    cands = ensemble.candidates(runs, fitted)
    chosen = ensemble.choose(cands, ensemble.held_out_scores(cands, runs, metric), method, metric)
    return ensemble.holdout_table(runs, plan_w, fitted, chosen).set_index("run"), fitted


def test_noise_member_gets_weight_zero_and_greedy_beats_the_mean():
    rng = np.random.default_rng(0)
    y = rng.integers(0, C, 400)
    noise = rng.dirichlet(np.full(C, 0.1), len(y))  # confident and random: it knows nothing
    runs = hand_runs([member(y, 0.7, rng), member(y, 0.7, rng), noise], y, ["good1", "good2", "noise"])
    t, fitted = scores(runs, "greedy")
    g = fitted["greedy"]
    assert g.weights[2] == 0 and (g.fold_weights[:, 2] == 0).all()  # never picked, in any fold
    assert g.weights[:2].min() > 0
    # honest (cross-fitted) accuracy of greedy beats the plain mean, which the noise drags down
    assert t.loc["greedy", "holdout_accuracy"] > t.loc["mean (plan weights)", "holdout_accuracy"] + 0.05
    assert t.loc["ensemble", "holdout_accuracy"] == t.loc["greedy", "holdout_accuracy"]
    assert t.loc["ensemble", "arch"] == "greedy (submission)" and "noise" not in t.loc["greedy", "weights"]
    assert fitted["optimize"].weights[2] < 0.05  # log-loss optimisation all but drops it too


def test_identical_members_keep_stable_weights_and_their_accuracy():
    rng = np.random.default_rng(1)
    y = rng.integers(0, C, 200)
    p = member(y, 0.75, rng)
    runs = hand_runs([p, p.copy(), p.copy()], y)
    t, fitted = scores(runs, "optimize")
    acc = blend.accuracy(p, y)
    for m in ("mean", "greedy", "optimize"):
        f = fitted[m]
        assert np.isclose(f.weights.sum(), 1) and (f.weights >= 0).all()
        assert all(np.allclose(fw, f.weights) for fw in f.fold_weights)  # the same weights on every fold
        assert t.loc[f.name, "holdout_accuracy"] == acc == t.loc["m0", "holdout_accuracy"]
    assert np.allclose(fitted["optimize"].weights, 1 / 3)  # nothing to choose between: stays even


def test_independent_errors_fitted_ensemble_beats_every_member():
    rng = np.random.default_rng(2)
    y = rng.integers(0, C, 300)
    runs = hand_runs([member(y, a, rng) for a in (0.65, 0.7, 0.75)], y)
    t, _ = scores(runs, "optimize")
    best = t.loc[["m0", "m1", "m2"], "holdout_accuracy"].max()
    for m in ("greedy", "optimize"):  # cross-fitted: scored on rows its weights were not fitted on
        assert t.loc[m, "holdout_accuracy"] > best, (m, t.loc[m, "holdout_accuracy"], best)


def test_unknown_method_metric_or_too_small_holdout_is_refused():
    rng = np.random.default_rng(5)
    y = rng.integers(0, C, 40)
    runs = hand_runs([member(y, 0.7, rng), member(y, 0.7, rng)], y)
    with pytest.raises(RoadtopError, match="method 'vote' is unknown"):
        ensemble.fit_ensembles(runs, [1, 1], method="vote")
    with pytest.raises(RoadtopError, match="metric 'f1' is unknown"):
        ensemble.fit_ensembles(runs, [1, 1], method="greedy", metric="f1")
    small = hand_runs([member(y[:6], 0.7, rng)] * 2, y[:6])
    with pytest.raises(RoadtopError, match="6 holdout image.* too few"):
        ensemble.fit_ensembles(small, [1, 1], method="greedy")
    assert list(ensemble.fit_ensembles(small, [1, 1])) == ["mean"]  # the plan's mean needs nothing fitted


# --- method: auto, the candidate with the best held-out score -------------------------------------------------

def auto(runs, plan_w, metric="logloss"):
    """(chosen candidate, its held-out scores, the candidates) as the notebook picks with method auto."""
    fitted = ensemble.fit_ensembles(runs, np.asarray(plan_w, float), method="auto", metric=metric)
    cands = ensemble.candidates(runs, fitted)
    sc = ensemble.held_out_scores(cands, runs, metric)
    return ensemble.choose(cands, sc, "auto", metric), sc, cands


def test_auto_submits_greedy_when_its_cross_fitted_log_loss_is_clearly_best():
    """The decision on hand-made candidates: greedy's honest holdout predictions beat every other candidate's."""
    rng = np.random.default_rng(8)
    y = rng.integers(0, C, 100)
    runs = hand_runs([member(y, 0.6, rng), member(y, 0.6, rng)], y)
    fitted = {"mean": ensemble.Fitted("mean (plan weights)", "mean", np.array([0.5, 0.5]),
                                      blend.blend([r.holdout_probs for r in runs], [1, 1]), "holdout"),
              "greedy": ensemble.Fitted("greedy", "greedy", np.array([0.7, 0.3]), member(y, 0.9, rng, 0.8), "cv"),
              "optimize": ensemble.Fitted("optimize", "optimize", np.array([0.6, 0.4]), member(y, 0.75, rng), "cv")}
    cands = ensemble.candidates(runs, fitted)
    sc = ensemble.held_out_scores(cands, runs)
    assert sc["greedy"] < min(v for k, v in sc.items() if k != "greedy") - 0.2, sc
    assert ensemble.choose(cands, sc) == "greedy"
    assert ensemble.choose(cands, sc, "mean") == "mean (plan weights)"  # an explicit method forces its ensemble
    assert ensemble.choose(cands, {**sc, "optimize": sc["greedy"]}) == "greedy"  # a tie goes to the simpler
    assert ensemble.choose(cands, {**sc, "m1": sc["greedy"]}) == "m1"  # ... and a member alone is simplest
    acc = ensemble.held_out_scores(cands, runs, "accuracy")
    assert ensemble.choose(cands, acc, metric="accuracy") == "greedy"  # accuracy: higher is better
    t = ensemble.holdout_table(runs, [1, 1], fitted, "greedy", "auto, best held-out logloss").set_index("run")
    assert t.loc["ensemble", "arch"] == "greedy: auto, best held-out logloss (submission)"
    assert t.loc["ensemble", "holdout_logloss"] == t.loc["greedy", "holdout_logloss"] == sc["greedy"]


def test_auto_submits_a_fitted_ensemble_when_the_plan_counts_a_noise_member_twice():
    """Fitted for real: two useful members with independent errors and a confident-noise member of plan weight 2."""
    rng = np.random.default_rng(9)
    y = rng.integers(0, C, 300)
    noise = rng.dirichlet(np.full(C, 0.1), len(y))
    runs = hand_runs([member(y, 0.7, rng), member(y, 0.7, rng), noise], y, ["a", "b", "noise"])
    chosen, sc, cands = auto(runs, [1, 1, 2])
    assert chosen in ("greedy", "optimize") and sc[chosen] == min(sc.values()), sc
    assert sc[chosen] < min(sc["a"], sc["b"], sc["mean (plan weights)"]) - 0.1, sc
    assert cands[chosen].weights[2] < 0.05  # the noise member all but dropped


def test_auto_submits_the_one_member_that_learned_when_the_others_are_noise():
    rng = np.random.default_rng(10)
    y = rng.integers(0, C, 200)
    noise = [rng.dirichlet(np.full(C, 0.1), len(y)) for _ in range(2)]
    runs = hand_runs([noise[0], member(y, 0.8, rng), noise[1]], y, ["noise1", "good", "noise2"])
    chosen, sc, cands = auto(runs, [2, 1, 1])
    assert chosen == "good", sc
    assert sc["good"] < sc["mean (plan weights)"] - 0.5, sc  # the plan's mean, noise counted 3 of 4, is far behind
    assert cands["good"].weights.tolist() == [0, 1, 0]
    assert auto(runs, [2, 1, 1], "accuracy")[0] == "good"


def test_auto_submits_the_mean_when_every_candidate_ties():
    rng = np.random.default_rng(11)
    y = rng.integers(0, C, 100)
    p = member(y, 0.7, rng)
    runs = hand_runs([p, p.copy(), p.copy()], y)
    chosen, sc, _ = auto(runs, [1, 2, 1])
    assert np.ptp(list(sc.values())) < 1e-9 and chosen == "mean (plan weights)", sc
    assert auto(runs, [1, 2, 1], "accuracy")[0] == "mean (plan weights)"
    small = hand_runs([member(y[:6], 0.7, rng), member(y[:6], 0.5, rng)], y[:6])  # too few images to fit weights
    chosen, sc, cands = auto(small, [1, 1])
    assert set(cands) == {"m0", "m1", "mean (plan weights)"} and chosen == min(sc, key=sc.get)


def test_choice_file_roundtrip_and_refusals(tmp_path):
    rng = np.random.default_rng(12)
    y_oof, hold_y = rng.integers(0, C, 60), rng.integers(0, C, 30)
    runs = ensemble.bag_folds([*fold_runs("cnx", "convnext", y_oof, 0.7, 2, rng, hold_y),
                               *hand_runs([member(hold_y, 0.6, rng)], hold_y, ["res"])])
    fitted = ensemble.fit_ensembles(runs, [1, 1], fit_on="holdout")
    cands = ensemble.candidates(runs, fitted)
    sc = ensemble.held_out_scores(cands, runs)
    chosen = ensemble.choose(cands, sc)
    f = ensemble.save_choice(tmp_path, runs, cands, chosen, "auto", "logloss", sc)
    assert f.name == ensemble.CHOICE and not list(tmp_path.glob(".*tmp"))
    rec = ensemble.load_choice(tmp_path)
    assert rec["method"] == "auto" and rec["chosen"] == chosen and rec["metric"] == "logloss"
    assert rec["scores"] == pytest.approx(sc) and set(rec["scores"]) == {"cnx", "res", *[c.name for c in fitted.values()]}
    assert rec["weights"] == pytest.approx(dict(zip(["cnx", "res"], cands[chosen].weights)))
    assert rec["runs"] == {"cnx": ["cnx-fold0", "cnx-fold1"], "res": ["res"]}
    ensemble.save_choice(tmp_path, runs, cands, "res", "auto", "logloss", sc)
    assert ensemble.load_choice(tmp_path)["weights"] == {"cnx": 0.0, "res": 1.0}  # a member alone: one-hot
    (tmp_path / ensemble.CHOICE).write_text('{"method": "auto"}')
    with pytest.raises(RoadtopError, match="ensemble.json is unreadable or incomplete: rerun the ensemble"):
        ensemble.load_choice(tmp_path)
    with pytest.raises(RoadtopError, match="ensemble.json is missing"):
        ensemble.load_choice(tmp_path / "nowhere")
    clash = hand_runs([member(hold_y, 0.6, rng)] * 2, hold_y, ["greedy", "res"])
    with pytest.raises(RoadtopError, match=r"run name\(s\) \['greedy'\] are also names of ensemble rows"):
        ensemble.candidates(clash, ensemble.fit_ensembles(clash, [1, 1]))


# --- k-fold runs: bags of folds, out-of-fold predictions ---------------------------------------------------------

def fold_runs(name, arch, y_oof, acc, k, rng, hold_y):
    """A k-fold run's fold RunPreds as the training notebook saves them: fold i predicts its own oof rows."""
    vocab = [f"c{i}" for i in range(C)]
    ids = np.array([f"o{i}" for i in range(len(y_oof))])
    parts = np.arange(len(y_oof)) % k
    out = []
    for i in range(k):
        sel = parts == i
        out.append(preds.RunPreds(
            name=f"{name}-fold{i}", arch=arch, vocab=vocab, test_ids=["t1", "t2"], test_probs=rng.dirichlet(np.ones(C), 2),
            holdout_ids=[f"h{j}" for j in range(len(hold_y))], holdout_labels=[vocab[j] for j in hold_y],
            holdout_probs=member(hold_y, acc, rng), valid_error=0.1 * i, oof_ids=ids[sel].tolist(),
            oof_labels=[vocab[j] for j in y_oof[sel]], oof_probs=member(y_oof[sel], acc, rng)))
    return out


def test_fold_runs_bag_into_one_member_with_all_their_oof(tmp_path):
    rng = np.random.default_rng(6)
    y_oof, hold_y = rng.integers(0, C, 250), rng.integers(0, C, 60)
    folds = fold_runs("cnx", "convnext", y_oof, 0.7, 5, rng, hold_y)
    for r in folds:  # through preds.npz, as the ensemble notebook reads them
        preds.save_preds(tmp_path / r.name, r)
    loaded = [preds.load_preds(tmp_path / r.name) for r in folds]
    plain = hand_runs([member(hold_y, 0.6, rng)], hold_y, ["res"])[0]
    bags = ensemble.bag_folds([*loaded, plain])
    assert [b.name for b in bags] == ["cnx", "res"] and bags[0].meta["folds"] == [f"cnx-fold{i}" for i in range(5)]
    assert sorted(bags[0].oof_ids) == sorted(f"o{i}" for i in range(250))  # every image out of fold exactly once
    assert np.allclose(bags[0].test_probs, np.mean([r.test_probs for r in folds], 0), atol=1e-6)
    assert np.allclose(bags[0].holdout_probs, np.mean([r.holdout_probs for r in folds], 0), atol=1e-6)
    i = bags[0].oof_ids.index("o7")
    assert np.allclose(bags[0].oof_probs[i], folds[7 % 5].oof_probs[list(folds[2].oof_ids).index("o7")], atol=1e-6)
    overlap = fold_runs("x", "convnext", y_oof, 0.7, 2, rng, hold_y)
    overlap[1].oof_ids = overlap[0].oof_ids[: len(overlap[1].oof_ids)]
    with pytest.raises(RoadtopError, match="folds of 'x' share out-of-fold images"):
        ensemble.bag_folds(overlap)


def test_weights_fitted_on_oof_leave_the_holdout_a_pure_test():
    rng = np.random.default_rng(7)
    y_oof, hold_y = rng.integers(0, C, 300), rng.integers(0, C, 50)
    noise = fold_runs("noise", "x", y_oof, 0.1, 3, rng, hold_y)
    for r in noise:
        r.oof_probs = rng.dirichlet(np.full(C, 0.1), len(r.oof_ids))  # confident and random
        r.holdout_probs = rng.dirichlet(np.full(C, 0.1), len(hold_y))
    runs = ensemble.bag_folds([*fold_runs("a", "x", y_oof, 0.7, 3, rng, hold_y),
                               *fold_runs("b", "y", y_oof, 0.7, 3, rng, hold_y), *noise])
    probs, y, ids = ensemble.oof_set(runs)
    assert probs.shape == (3, 300, C) and len(ids) == 300 and (y == y_oof[[int(i[1:]) for i in ids]]).all()
    fitted = ensemble.fit_ensembles(runs, [1, 1, 1], method="greedy")
    g = fitted["greedy"]
    assert g.weights[2] == 0 and g.scored_on == "holdout (weights fitted on 300 out-of-fold images)"
    assert np.allclose(g.holdout_probs, blend.blend([r.holdout_probs for r in runs], g.weights))
    for r in runs:  # other holdout labels: the same weights (they were never read)
        r.holdout_labels = list(np.roll(r.holdout_labels, 1))
    assert np.allclose(ensemble.fit_ensembles(runs, [1, 1, 1], method="greedy")["greedy"].weights, g.weights)
    holdout_only = ensemble.fit_ensembles(runs, [1, 1, 1], fit_on="holdout")["greedy"]
    assert holdout_only.scored_on == "holdout, cross-fitted (5 folds)"
    with pytest.raises(RoadtopError, match="fit_on='oof' needs out-of-fold predictions"):
        ensemble.fit_ensembles([*runs, hand_runs([member(hold_y, 0.6, rng)], hold_y)[0]], [1] * 4, fit_on="oof")


def test_confusion_counts_actual_by_predicted():
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.8, 0.1, 0.1], [0.1, 0.1, 0.8]])
    m = ensemble.confusion(probs, VOCAB, ["a", "b", "b", "c"])
    assert m.loc["b", "a"] == 1 and m.loc["b", "b"] == 1 and m.to_numpy().trace() == 3 and m.to_numpy().sum() == 4


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


def test_notebook_fits_on_out_of_fold_predictions_of_k_fold_runs(tmp_path, tiny_data):
    """The ensemble notebook on two k-fold runs' saved predictions: bagged, weights from oof, one submission."""
    trn, hold = paddy.split_files(tiny_data, 0.1, 42)
    tst = paddy.test_files(tiny_data)
    vocab = sorted(paddy.LABELS)
    fold_of = paddy.fold_ids([f.name for f in trn], [f.parent.name for f in trn], 3, seed=0)
    rng = np.random.default_rng(0)

    def probs(labels, acc):
        return member(np.array([vocab.index(la) for la in labels]), acc, rng)

    dirs = []
    for run, acc in (("cnx", 0.8), ("res", 0.5)):
        for i in range(3):
            oof = [f for f in trn if fold_of[f.name] == i]
            p = preds.RunPreds(f"{run}-fold{i}", f"test_{run}", vocab, [f.name for f in tst],
                               rng.dirichlet(np.ones(C), len(tst)), [f.name for f in hold],
                               [f.parent.name for f in hold], probs([f.parent.name for f in hold], acc),
                               oof_ids=[f.name for f in oof], oof_labels=[f.parent.name for f in oof],
                               oof_probs=probs([f.parent.name for f in oof], acc))
            dirs.append(str(preds.save_preds(tmp_path / p.name, p).parent))
    out = tmp_path / "ens"
    pm.execute_notebook(str(ROOT / "notebooks" / "ensemble.ipynb"), str(tmp_path / "ensemble.ipynb"),
                        parameters={"data_path": str(tiny_data), "out_dir": str(out), "run_dirs": dirs,
                                    "method": "greedy"}, cwd=str(ROOT / "notebooks"), progress_bar=False)
    t = pd.read_csv(out / "holdout.csv").set_index("run")
    assert t.index.tolist() == ["cnx", "res", "mean (plan weights)", "greedy", "optimize", "ensemble"]
    n = len(trn)
    assert t.loc["greedy", "scored_on"] == f"holdout (weights fitted on {n} out-of-fold images)"
    assert t.loc["ensemble", "arch"] == "greedy (submission)"
    w = pd.read_csv(out / "weights.csv").set_index("run")
    assert w.loc["cnx", "greedy"] > w.loc["res", "greedy"] and np.isclose(w["greedy"].sum(), 1)
    sub = pd.read_csv(out / "submission.csv")
    assert sub.image_id.tolist() == paddy.read_sample_submission(tiny_data).image_id.tolist()
    rec = ensemble.load_choice(out)  # what a later notebook reads to predict with the submitted ensemble
    assert rec["method"] == "greedy" and rec["chosen"] == "greedy" and rec["metric"] == "logloss"
    assert rec["weights"] == pytest.approx(w["greedy"].to_dict())
    assert rec["scores"] == pytest.approx(t.holdout_logloss.drop("ensemble").to_dict())
    assert rec["runs"] == {run: [f"{run}-fold{i}" for i in range(3)] for run in ("cnx", "res")}


def test_pipeline_auto_passes_over_a_never_learning_member_counted_twice(tmp_path):
    """Through `pipeline.py run`: run `flat` never learned (it saved the same probabilities, the training labels'
    shares, for every image, as a network that learns nothing from the pixels ends up doing) and the plan weighs it 2.
    auto does not submit the plan's mean, and the submission is within one holdout image of the best member.

    The data are tiny_data's kind with 300 images: on its 120 no tiny model learns in seconds, so every member would
    be as flat as `flat` and the test would show nothing."""
    data = paddy.make_demo(tmp_path / "paddy", n_train=300, n_test=20, size=(48, 64), seed=1, progress=False)
    runs = {"res": {"arch": "test_resnet", "epochs": 8, "lr": 0.01, "accum": 4}, "flat": {"arch": "test_resnet"}}
    plan = tiny_plan(tmp_path, data, runs=runs, ensemble={"weights": {"flat": 2}})
    pipeline("run", "--params", plan, "--only", *[f"train/{r}" for r in runs])
    out = tmp_path / "out"
    flat = preds.load_preds(out / "train" / "flat")
    trn, _ = paddy.split_files(data, 0.1, 42)
    shares = pd.Series([f.parent.name for f in trn]).value_counts(normalize=True).reindex(flat.vocab, fill_value=0)
    flat.test_probs = np.tile(shares.to_numpy(), (len(flat.test_ids), 1))
    flat.holdout_probs = np.tile(shares.to_numpy(), (len(flat.holdout_ids), 1))
    preds.save_preds(out / "train" / "flat", flat)
    r = pipeline("run", "--params", plan)  # the runs are complete: only the ensemble runs
    assert "ensemble: done" in r.stdout and "train/res: done" not in r.stdout, r.stdout
    t = pd.read_csv(out / "ensemble" / "holdout.csv").set_index("run")
    shown = t[["holdout_accuracy", "holdout_logloss"]]
    assert t.loc["res", "holdout_accuracy"] >= 0.6, shown  # the member that trained did learn
    rec = ensemble.load_choice(out / "ensemble")
    assert rec["method"] == "auto" and t.loc["flat", "weight"] == 2
    scored = t.holdout_logloss.drop("ensemble")
    assert rec["chosen"] == scored.idxmin() != "mean (plan weights)", shown
    assert t.loc["ensemble", "arch"] == f"{rec['chosen']}: auto, best held-out logloss (submission)"
    one = 1 / len(flat.holdout_ids)
    best = t.loc[list(runs), "holdout_accuracy"].max()
    assert t.loc["ensemble", "holdout_accuracy"] >= best - one - 1e-9, shown
    manifest = json.loads((out / "ensemble" / "manifest.json").read_text())
    assert {"ensemble.json", "holdout.csv", "weights.csv", "submission.csv"} <= set(manifest["outputs"])
    w = pd.Series(rec["weights"])
    members = [preds.load_preds(out / "train" / n) for n in w.index]
    probs = ensemble.weighted_mean([m.test_probs for m in members], w.to_numpy())
    sub = pd.read_csv(out / "submission.csv")  # written with the chosen candidate's weights
    assert sub.label.tolist() == ensemble.submission(probs, flat.vocab, flat.test_ids, sub).label.tolist()
