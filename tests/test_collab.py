"""The notebook's collab models (loaded from its export cells), the ALS trainer's sweep and fit, the notebook end to end."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import DEMO as DEMO_PLAN

from roadtop.collab import fit_collab, rmse, sample_ratings, split_ratings, sweep_wd
from roadtop.errors import RoadtopError
from roadtop.movielens import load_ratings, make_movielens
from roadtop.nbcode import load

NB = load("collab.ipynb")  # the models exactly as the learner reads them in the notebook
DotProduct, DotProductBias, DotProductBiasCP = NB["DotProduct"], NB["DotProductBias"], NB["DotProductBiasCP"]
sigmoid_range, create_params = NB["sigmoid_range"], NB["create_params"]


def test_embedding_lookup_is_one_hot_matmul():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(30, 5)
    idx = torch.tensor([3, 0, 29, 3, 17])
    one_hot = F.one_hot(idx, 30).float()
    torch.testing.assert_close(emb(idx), one_hot @ emb.weight)
    model = DotProduct(30, 40, 5)
    torch.testing.assert_close(model.user_factors(idx), one_hot @ model.user_factors.weight)
    assert model.user_factors.weight.std() < 0.05  # fastai's Embedding starts small, so training can move it
    p = create_params([300, 40])
    assert p.requires_grad and p.shape == (300, 40) and 0.005 < float(p.detach().std()) < 0.02


def test_sigmoid_range_bounds():
    x = torch.tensor([-1e4, -50.0, -1.0, 0.0, 1.0, 50.0, 1e4])
    y = sigmoid_range(x, 0, 5.5)
    assert (y >= 0).all() and (y <= 5.5).all()
    assert torch.all(y[1:] >= y[:-1])  # monotone
    assert y[3].item() == pytest.approx(2.75)
    assert y[0].item() == pytest.approx(0.0) and y[-1].item() == pytest.approx(5.5)
    assert sigmoid_range(torch.zeros(1), 1, 5).item() == pytest.approx(3.0)


def _set(model, **weights):
    """Overwrite named embedding tables / parameters with given values."""
    with torch.no_grad():
        for name, w in weights.items():
            p = getattr(model, name)
            (p.weight if hasattr(p, "weight") else p).copy_(torch.tensor(w, dtype=torch.float32))
    return model


def test_from_scratch_models_match_hand_computation():
    users, movies = [[1.0, 2.0], [0.0, 1.0]], [[3.0, 1.0], [1.0, -1.0], [0.5, 0.5]]
    x = torch.tensor([[0, 0], [1, 1], [0, 2]])
    # by hand: u0·m0 = 3 + 2 = 5, u1·m1 = 0 - 1 = -1, u0·m2 = 0.5 + 1 = 1.5, then squashed into (0, 5.5)
    squashed = _set(DotProduct(2, 3, 2), user_factors=users, movie_factors=movies)
    expect = [5.5 / (1 + math.exp(-v)) for v in (5.0, -1.0, 1.5)]
    torch.testing.assert_close(squashed(x), torch.tensor(expect))
    wide = _set(DotProduct(2, 3, 2, y_range=(1, 5)), user_factors=users, movie_factors=movies)
    torch.testing.assert_close(wide(x), torch.tensor([1 + 4 / (1 + math.exp(-v)) for v in (5.0, -1.0, 1.5)]))
    biased = _set(DotProductBias(2, 3, 2), user_factors=users, movie_factors=movies,
                  user_bias=[[0.5], [-1.0]], movie_bias=[[0.0], [2.0], [-0.5]])
    expect = [5.5 / (1 + math.exp(-v)) for v in (5.0 + 0.5, -1.0 - 1.0 + 2.0, 1.5 + 0.5 - 0.5)]
    torch.testing.assert_close(biased(x).squeeze(1), torch.tensor(expect))
    cp = _set(DotProductBiasCP(2, 3, 2), user_factors=users, movie_factors=movies,
              user_bias=[0.5, -1.0], movie_bias=[0.0, 2.0, -0.5])
    torch.testing.assert_close(cp(x), biased(x).squeeze(1))


def _tensors(df):
    """(u, i, r) tensors of a frame with integer user/movie indices."""
    return (torch.tensor(df.user.to_numpy()), torch.tensor(df.movie.to_numpy()),
            torch.tensor(df.rating.to_numpy(), dtype=torch.float32))


def _crafted(noise, seed=0, n_users=60, n_items=80, density=0.5):
    """Ratings = exact rank-2 taste (no noise) or pure noise around 3; half of the matrix observed."""
    rng = np.random.default_rng(seed)
    u, i = np.nonzero(rng.random((n_users, n_items)) < density)
    if noise:
        r = 3 + rng.normal(0, 1, len(u))
    else:
        p, q = rng.normal(size=(n_users, 2)), rng.normal(size=(n_items, 2))
        r = 3 + 0.6 * (p[u] * q[i]).sum(1)  # mostly inside 1..5, where RMSE does not clip
    df = pd.DataFrame(dict(user=u, movie=i, rating=r.astype(np.float32)))
    return split_ratings(df, 0.2, seed=seed), n_users, n_items


@pytest.mark.parametrize("noise, expect", [(False, "smallest"), (True, "largest")])
def test_sweep_picks_wd_with_lowest_validation_loss(noise, expect):
    (train, valid), n_users, n_items = _crafted(noise)
    wds = [0.01, 3.0, 300.0]
    table, best = sweep_wd(_tensors(train), _tensors(valid), n_users, n_items, 4, wds, refine=False)
    assert sorted(table.wd) == wds
    chosen = table.wd[table.valid_rmse.idxmin()]
    # noiseless low-rank data wants almost no weight decay; pure noise wants it all (predict the mean)
    assert chosen == (min(wds) if expect == "smallest" else max(wds))
    v = _tensors(valid)
    pred = best.at(v[0], v[1], float(train.rating.mean()))
    assert rmse(pred.numpy(), v[2].numpy(), clip=(1, 5)) == pytest.approx(table.valid_rmse.min(), abs=1e-6)


def test_sweep_extends_past_the_edge_then_refines():
    (train, valid), n_users, n_items = _crafted(False, seed=1)
    table, _ = sweep_wd(_tensors(train), _tensors(valid), n_users, n_items, 4, [1.0, 100.0])
    # noiseless: the smallest wd wins, so the sweep steps one grid ratio down (0.01), then tries the midpoint 0.1
    np.testing.assert_allclose(table.wd, [1.0, 100.0, 0.01, 0.1])
    assert table.valid_rmse.idxmin() in (2, 3)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small generated set (300 users, 400 movies, 20k ratings) and its seeded 80/20 split."""
    folder = make_movielens(tmp_path_factory.mktemp("ml") / "small", seed=5, n_users=300, n_items=400,
                            n_ratings=20_000)
    return folder, split_ratings(load_ratings(folder / "u.data"), 0.2, seed=0)


def test_fit_collab_picks_by_validation_and_beats_baselines(small):
    _, (train, test) = small
    model = fit_collab(train, n_factors=(4, 8), n_samples=20, seed=0)
    sw = model.sweep
    assert set(sw.model.str.split(" ").str[0]) >= {"biases", "MF", "blend:"}
    assert model.choice["valid_rmse"] == pytest.approx(sw.valid_rmse.min())
    got = rmse(model.predict(test), test.rating)
    mean_only = rmse(np.full(len(test), train.rating.mean()), test.rating)
    biases = fit_collab(train, n_factors=(), bayes=False, seed=0)  # biases only: no factor candidates
    assert biases.choice["model"] == "biases only"
    assert got < rmse(biases.predict(test), test.rating) < mean_only
    again = fit_collab(train, n_factors=(4, 8), n_samples=20, seed=0)
    np.testing.assert_allclose(again.predict(test), model.predict(test), atol=1e-4)  # seeded


def test_predict_handles_unseen_users_and_movies(small):
    _, (train, _) = small
    model = fit_collab(train, n_factors=(4,), bayes=False, seed=0)
    known_u, known_m = train.user.iloc[0], train.movie.iloc[0]
    pred = model.predict(pd.DataFrame(dict(user=[known_u, -1, -1, known_u], movie=[known_m, known_m, -7, -7])))
    assert ((pred >= 1) & (pred <= 5)).all()
    assert pred[2] == pytest.approx(model.mu)
    assert pred[1] == pytest.approx(np.clip(model.mu + model.item_bias[known_m], 1, 5))
    assert pred[3] == pytest.approx(np.clip(model.mu + model.user_bias[known_u], 1, 5))


def test_fit_collab_refuses_bad_frames():
    df = pd.DataFrame(dict(user=[1, 2] * 10, item=[1, 2] * 10, rating=[3] * 20))
    with pytest.raises(RoadtopError, match=r"lacks column\(s\) \['movie'\]"):
        fit_collab(df)
    df = df.rename(columns={"item": "movie"}).assign(rating=["x"] * 20)
    with pytest.raises(RoadtopError, match="non-numeric"):
        fit_collab(df)


def _line_pixels(png) -> dict:
    """Pixels of the plot's two line colours (matplotlib's C0 and C1) in a saved PNG: 0 each on empty axes."""
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB"), dtype=int)
    colours = {"C0": (31, 119, 180), "C1": (255, 127, 14)}
    return {k: int((np.abs(rgb - c).sum(-1) < 30).sum()) for k, c in colours.items()}


def test_line_pixels_are_zero_on_an_empty_chart(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(1, 2, figsize=(11, 3.5), sharey=True)
    fig.savefig(tmp_path / "empty.png", dpi=80)
    axs[0].plot([1, 2], [1, 0.5], "o-")
    axs[0].plot([1, 2], [1.2, 0.9], "o-")
    fig.savefig(tmp_path / "lines.png", dpi=80)
    plt.close(fig)
    assert _line_pixels(tmp_path / "empty.png") == {"C0": 0, "C1": 0}
    assert min(_line_pixels(tmp_path / "lines.png").values()) > 50


def test_notebook_runs_with_small_params(small, tmp_path):
    import papermill as pm

    from roadtop.paths import NOTEBOOKS

    folder, _ = small
    out = tmp_path / "out"
    pm.execute_notebook(str(NOTEBOOKS / "collab.ipynb"), str(tmp_path / "collab.ipynb"), cwd=str(NOTEBOOKS),
                        parameters=dict(data=str(folder), out_dir=str(out), sample=1.0, epochs=2, bs=2048,
                                        n_factors=8, nn_layers=[16], wds=[0.1, 1.0]), kernel_name="python3",
                        progress_bar=False)
    table = pd.read_csv(out / "collab_results.csv")
    assert table.model.tolist()[:2] == ["mean rating", "biases only"]
    assert table.model.tolist()[-1].startswith("fit_collab") and len(table) == 10
    assert np.isfinite(table.valid_rmse).all() and (table.valid_rmse > 0.5).all()
    # every row scored the same way: RMSE of clipped predictions, never above the unclipped MSE's root
    assert (table.valid_rmse <= np.sqrt(table.valid_mse) + 1e-9).all()
    t = table.set_index("model")
    assert t.loc["biases only", "valid_mse"] < t.loc["mean rating", "valid_mse"]
    epochs = pd.read_csv(out / "wd_epochs.csv")
    assert sorted(epochs.model.unique()) == ["no weight decay", "wd=0.1"] and len(epochs) == 4  # two epochs each
    # the chart is drawn from those losses: both lines (train, valid) are on it, not empty axes
    assert min(_line_pixels(out / "wd_loss.png").values()) > 50
    assert (out / "movie_pca.png").stat().st_size > 0


WITH_WD = ("DotProductBias, wd=0.1", "create_params version, wd=0.1", "collab_learner")


def assert_collab_story(out):
    """The lesson's claims, from an executed collab notebook's saved tables (`out`): without weight decay the training
    loss keeps falling while the validation loss is lowest at an early epoch and then turns up, clearly; every model
    trained with weight decay beats `biases only` (which beats the mean rating); DotProductBias with wd=0.1 ends
    clearly below the same model without. The margins are about half the smallest measured over 4 seeds (README)."""
    e = pd.read_csv(out / "wd_epochs.csv")
    nowd = e[e.model == "no weight decay"].sort_values("epoch")
    wd = e[e.model == "wd=0.1"].sort_values("epoch").valid_loss.to_numpy()
    valid, train = nowd.valid_loss.to_numpy(), nowd.train_loss.to_numpy()
    assert len(valid) == len(wd) >= 5
    assert (train[1:] < train[:-1]).all(), train  # the training loss keeps falling...
    assert train[-1] < valid[-1] / 4, (train, valid)  # ...far below the validation loss: learned by heart
    assert valid.argmin() + 1 <= len(valid) // 2, valid  # the validation loss is lowest early...
    assert valid[-1] - valid.min() > 0.02, valid  # ...and then turns up (measured: 0.041-0.096)
    assert wd[-1] < valid[-1], (wd, valid)
    t = pd.read_csv(out / "collab_results.csv").set_index("model").valid_mse
    assert {"mean rating", "biases only", "DotProduct, no sigmoid_range", "DotProduct", "DotProductBias",
            *WITH_WD} <= set(t.index)
    assert t["biases only"] < t["mean rating"] - 0.2, t.to_dict()
    for with_wd in WITH_WD:  # measured: every one 0.042 or more below biases only
        assert t[with_wd] < t["biases only"] - 0.02, (with_wd, t.to_dict())
    assert t["DotProductBias, wd=0.1"] < t["DotProductBias"] - 0.03, t.to_dict()  # measured: 0.059-0.090


def test_demo_collab_tells_the_lessons_story(tmp_path):
    """collab.ipynb alone, with the demo plan's collab job (its parameters, the DEMO set at its seed), tells the
    lesson's story: the same assertions as the whole demo's test_demo.py, in about 40 s."""
    import papermill as pm

    from roadtop.dag.plan import load_plan
    from roadtop.movielens import DEMO
    from roadtop.paths import NOTEBOOKS

    (job,) = [j for j in load_plan(DEMO_PLAN, tmp_path / "plan").jobs if j.stage == "collab"]
    assert job.params["data"] == "demo"
    folder = make_movielens(tmp_path / "ml", seed=job.params["seed"], **DEMO)  # what data='demo' makes
    out = tmp_path / "out"
    pm.execute_notebook(str(NOTEBOOKS / "collab.ipynb"), str(tmp_path / "collab.ipynb"), cwd=str(NOTEBOOKS),
                        parameters={**job.params, "data": str(folder), "out_dir": str(out)}, kernel_name="python3",
                        progress_bar=False)
    assert_collab_story(out)


def test_sample_ratings_is_seeded_and_checked():
    df = pd.DataFrame(dict(user=range(100), movie=range(100), rating=[3] * 100))
    a, b = sample_ratings(df, 0.25, seed=1), sample_ratings(df, 0.25, seed=1)
    assert len(a) == 25 and a.equals(b) and not a.equals(sample_ratings(df, 0.25, seed=2))
    assert sample_ratings(df, 1.0) is df
    with pytest.raises(RoadtopError, match="sample=0 is out of range"):
        sample_ratings(df, 0)


def test_repeated_pairs_are_averaged_not_summed():
    from roadtop.collab import _encode

    df = pd.DataFrame({"user": [1, 1, 2, 1] * 3, "title": ["A", "A", "A", "B"] * 3, "rating": [5, 3, 4, 2] * 3})
    users, items, u, i, r = _encode(df, ("user", "title", "rating"))
    got = {(users[a], items[b]): float(x) for a, b, x in zip(u.tolist(), i.tolist(), r.tolist())}
    assert got == {(1, "A"): 4.0, (2, "A"): 4.0, (1, "B"): 2.0}
