"""Collaborative filtering plumbing: the seeded split, fastai DataLoaders on it, RMSE, and `fit_collab` (beyond the
lesson). The lesson's models, built from scratch, are written in notebooks/collab.ipynb.

`fit_collab` fits biased matrix factorisation r̂ = μ + b_user + b_movie + p_user·q_movie to all the ratings at
once: MovieLens' 80k training ratings are a 943 × 1682 sparse matrix, so every step solves for all users (then
all movies) together with a couple of sparse matrix products and a batch of small Cholesky solves.

1. hold out `valid_pct` of the training ratings (the caller's test split is never seen);
2. sweep, scoring every candidate on that held-out part: the biases-only model over a few bias weight decays;
   for each n_factors, MAP fits by alternating least squares along a weight-decay path (smallest first, each
   warm-starting the next, refined around the best); the Bayesian version of the same model (Gibbs sampling with
   per-factor prior precisions and the noise precision sampled too, i.e. weight decay learned from the data,
   predictions averaged over the samples); and the 50/50 blend of the two best factor models;
3. refit the winner on all the training ratings.
"""
import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .errors import RoadtopError

# fastai's TabularPandas turns pandas 3's read-only (copy-on-write) columns into tensors, and torch warns once that
# writing to them would be undefined; fastai never writes to them. Narrowly: only this message.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)

__all__ = [
    "sample_ratings",
    "rmse",
    "split_ratings",
    "collab_dls",
    "CollabModel",
    "sweep_wd",
    "fit_collab",
]


# ---------------------------------------------------------------- helpers


def rmse(pred, target, clip=(1, 5)) -> float:
    """Root mean squared error after clipping predictions to the rating scale."""
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if clip is not None:
        pred = np.clip(pred, *clip)
    return float(np.sqrt(np.mean((pred - target) ** 2)))


def sample_ratings(df: pd.DataFrame, frac: float = 1.0, seed: int = 42) -> pd.DataFrame:
    """A seeded random `frac` of the rows of `df` (all of them, in order, for frac 1)."""
    if not 0 < frac <= 1:
        raise RoadtopError(f"sample={frac} is out of range: use a share of the ratings in (0, 1], e.g. 0.25")
    return df if frac == 1 else df.sample(frac=frac, random_state=seed).reset_index(drop=True)


def split_ratings(df: pd.DataFrame, valid_pct: float = 0.2, seed: int = 42):
    """Seeded random split of the rows of `df` → (train, valid) frames."""
    idx = np.random.default_rng(seed).permutation(len(df))
    n_valid = int(round(len(df) * valid_pct))
    return df.iloc[idx[n_valid:]], df.iloc[idx[:n_valid]]


def _csr(rows, cols, vals, shape):
    """A sparse CSR matrix (mask @ F is ~4x faster this way than dense at MovieLens' 6 % density)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, shape).coalesce().to_sparse_csr()


def collab_dls(train: pd.DataFrame, valid: pd.DataFrame, bs: int = 64, user_name="user", item_name="movie",
               rating_name="rating", seed: int | None = None):
    """fastai `DataLoaders` for collab on a split we chose (what `CollabDataLoaders.from_df` builds, minus its
    random split), so fastai models and `fit_collab` are scored on the very same ratings."""
    from fastai.collab import (  # lazy: fastai takes seconds to import
        Categorify,
        TabularCollab,
        TransformBlock,
    )

    cols = [user_name, item_name, rating_name]
    df = pd.concat([train[cols], valid[cols]], ignore_index=True)
    splits = (list(range(len(train))), list(range(len(train), len(df))))
    to = TabularCollab(df, [Categorify], [user_name, item_name], y_names=[rating_name], y_block=TransformBlock(),
                       splits=splits)
    if seed is not None:
        torch.manual_seed(seed)
    return to.dataloaders(bs=bs)


class _Ratings:
    """Ratings as index tensors plus the sparse masked matrices the solvers multiply."""

    def __init__(self, u, i, r, n_users, n_items, mu):
        """u, i: long tensors of indices (no repeated pairs); r: float ratings; mu: the global mean."""
        self.u, self.i, self.r, self.mu = u, i, r, mu
        ones = torch.ones(len(r))
        self.mask = _csr(u, i, ones, (n_users, n_items))
        self.resid = _csr(u, i, r - mu, (n_users, n_items))
        self.mask_t = _csr(i, u, ones, (n_items, n_users))
        self.resid_t = _csr(i, u, r - mu, (n_items, n_users))
        self.n_user = torch.bincount(u, minlength=n_users).float()
        self.n_item = torch.bincount(i, minlength=n_items).float()
        self.sum_user = torch.zeros(n_users).index_add_(0, u, r - mu)
        self.sum_item = torch.zeros(n_items).index_add_(0, i, r - mu)
        self.sum_sq = float(((r - mu).double() ** 2).sum())


@dataclass
class _Params:
    """One biased-MF model: user/item factors and biases (μ is kept in `_Ratings`)."""

    P: torch.Tensor
    Q: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor

    def at(self, u, i, mu):
        """Predictions for index tensors u, i."""
        return mu + self.b[u] + self.c[i] + (self.P[u] * self.Q[i]).sum(1)

    def dense(self, mu):
        """Predictions for every (user, item) pair."""
        return mu + self.b[:, None] + self.c[None, :] + self.P @ self.Q.T


def _gram(mask, F):
    """Per-row Gram matrices Σ_j mask[r, j] F_j F_jᵀ for all rows at once: one sparse × dense matmul."""
    n, k = F.shape
    return (mask @ (F[:, :, None] * F[:, None, :]).reshape(n, k * k)).reshape(-1, k, k)


def _solve_side(mask, resid, other_bias, F, prec, noise=None, gen=None, alpha=1.0):
    """Ridge solutions (or, with `noise`, posterior samples) for all rows of one side at once.

    Row r's target is resid[r, j] - other_bias[j] on its rated j, features F_j = [q_j, 1], ridge diag(`prec`).
    Returns (x, G0, rhs0): the solutions and the unscaled Gram matrices and right-hand sides (for the SSE).
    """
    G0 = _gram(mask, F)
    rhs0 = resid @ F - mask @ (F * other_bias[:, None])
    L = torch.linalg.cholesky(alpha * G0 + torch.diag(prec))
    x = torch.cholesky_solve(alpha * rhs0[:, :, None], L)[:, :, 0]
    if noise:
        z = torch.randn(x.shape[0], x.shape[1], 1, generator=gen)
        x = x + torch.linalg.solve_triangular(L.mT, z, upper=True)[:, :, 0]
    return x, G0, rhs0


def _prec(k, wd, wd_bias):
    """Ridge diagonal for [factors, bias]: `wd` on the k factors, `wd_bias` on the bias."""
    return torch.tensor([float(wd)] * k + [float(wd_bias)], dtype=torch.float32)


def _als_step(d: _Ratings, p: _Params, prec_u, prec_i, **sample):
    """One alternating sweep: all users given the movies, then all movies given the users.

    Returns (new params, training SSE of the new params), the SSE read off the last solve's normal equations:
    Σ (t - Fᵀy)² = Σ t² - 2 yᵀ(Σ t F) + yᵀ(Σ F Fᵀ)y per movie, which spares a pass over every rating.
    """
    k = p.P.shape[1]
    x, _, _ = _solve_side(d.mask, d.resid, p.c, torch.cat([p.Q, torch.ones(len(p.Q), 1)], 1), prec_u, **sample)
    P, b = x[:, :k], x[:, k]
    y, G0, rhs0 = _solve_side(d.mask_t, d.resid_t, b, torch.cat([P, torch.ones(len(P), 1)], 1), prec_i, **sample)
    b64 = b.double()
    t2 = d.sum_sq - 2 * float(b64 @ d.sum_user.double()) + float(d.n_user.double() @ b64**2)
    sse = t2 - 2 * float((y * rhs0).double().sum()) + float(torch.einsum("rk,rkl,rl->", y, G0, y))
    return _Params(P, y[:, :k], b, y[:, k]), sse


def _init(n_users, n_items, k, gen):
    """Small random factors, zero biases."""
    return _Params(torch.randn(n_users, k, generator=gen) * 0.1, torch.randn(n_items, k, generator=gen) * 0.1,
                   torch.zeros(n_users), torch.zeros(n_items))


def _fit_bias_only(d: _Ratings, wd_bias, iters=8):
    """μ + b_user + b_item by alternating ridge means (the 'biases only' baseline)."""
    c = torch.zeros(len(d.n_item))
    for _ in range(iters):
        b = (d.sum_user - (d.mask @ c[:, None])[:, 0]) / (d.n_user + wd_bias)
        c = (d.sum_item - (d.mask_t @ b[:, None])[:, 0]) / (d.n_item + wd_bias)
    return _Params(torch.zeros(len(b), 0), torch.zeros(len(c), 0), b, c)


def _als(d: _Ratings, p: _Params, wd, wd_bias, iters, valid=None, tol=2e-4):
    """Alternating least squares from `p`; stops early once the valid RMSE (if given) stops moving."""
    last, prec = math.inf, _prec(p.P.shape[1], wd, wd_bias)
    for _ in range(iters):
        p, _ = _als_step(d, p, prec, prec)
        if valid is not None:
            score = _score(p, valid, d.mu)
            if abs(last - score) < tol:
                break
            last = score
    return p


def _score(p: _Params, v, mu):
    """RMSE of model `p` on a (u, i, r) triple of tensors, predictions clipped to 1..5."""
    return rmse(p.at(v[0], v[1], mu).numpy(), v[2].numpy())


def _gibbs(d: _Ratings, p: _Params, n_burn, n_samples, seed, on=None, a0=1.0, b0=1.0):
    """Bayesian biased MF: Gibbs-sample factors, biases, per-factor precisions and noise; average the predictions.

    Returns (mean predictions at `on`=(u, i) or for all pairs if None, mean user bias, mean item bias, last sample).
    """
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = len(d.r)

    def gamma(shape, rate):
        """Gamma(shape, rate) draws as float32 tensor."""
        return torch.as_tensor(rng.gamma(shape, 1.0 / np.asarray(rate, dtype=np.float64)), dtype=torch.float32)

    def precisions(x, bias, n_rows):
        """Per-factor precision of `x` (ARD) and the bias precision, sampled given the current values."""
        lam = gamma(a0 + n_rows / 2, b0 + (x.double() ** 2).sum(0).numpy() / 2)
        return torch.cat([lam, gamma(a0 + n_rows / 2, b0 + float((bias.double() ** 2).sum()) / 2).reshape(1)])

    acc, bsum, csum, Ps, Qs = 0, 0, 0, [], []
    seen_u, seen_i = (d.n_user > 0).float()[:, None], (d.n_item > 0).float()[:, None]
    n_seen_u, n_seen_i = float(seen_u.sum()), float(seen_i.sum())
    sse = float(((d.r - p.at(d.u, d.i, d.mu)) ** 2).sum())
    for it in range(n_burn + n_samples):
        alpha = float(gamma(a0 + n / 2, b0 + sse / 2))
        prec_u, prec_i = precisions(p.P, p.b, n_seen_u), precisions(p.Q, p.c, n_seen_i)
        p, sse = _als_step(d, p, prec_u, prec_i, noise=True, gen=gen, alpha=alpha)
        p = _Params(p.P * seen_u, p.Q * seen_i, p.b * seen_u[:, 0], p.c * seen_i[:, 0])  # no ratings: no prior draw
        if it >= n_burn:
            bsum, csum = bsum + p.b, csum + p.c
            if on is None:  # all pairs: keep the factors, multiply once at the end
                Ps.append(p.P)
                Qs.append(p.Q)
            else:
                acc = acc + p.at(on[0], on[1], d.mu)
    b_mean, c_mean = bsum / n_samples, csum / n_samples
    if on is None:
        acc = d.mu + b_mean[:, None] + c_mean[None, :] + torch.cat(Ps, 1) @ torch.cat(Qs, 1).T / n_samples
        return acc, b_mean, c_mean, p
    return acc / n_samples, b_mean, c_mean, p


# ---------------------------------------------------------------- the trainer


@dataclass
class CollabModel:
    """A fitted `fit_collab` model: mean predictions for every known (user, item) and what was chosen, and why."""

    users: pd.Index
    items: pd.Index
    mu: float
    pred_matrix: torch.Tensor
    user_bias: pd.Series
    item_bias: pd.Series
    item_factors: pd.DataFrame
    sweep: pd.DataFrame
    choice: dict
    seconds: float = 0.0
    columns: tuple = ("user", "movie", "rating")

    def predict(self, df_or_users, items=None) -> np.ndarray:
        """Predicted ratings (clipped to 1..5) for a frame with user/item columns, or two id sequences."""
        if items is None:
            df_or_users, items = df_or_users[self.columns[0]], df_or_users[self.columns[1]]
        u = self.users.get_indexer(pd.Index(df_or_users))
        i = self.items.get_indexer(pd.Index(items))
        out = np.full(len(u), self.mu, dtype=np.float64)
        both, only_u, only_i = (u >= 0) & (i >= 0), (u >= 0) & (i < 0), (u < 0) & (i >= 0)
        out[both] = self.pred_matrix[torch.as_tensor(u[both]), torch.as_tensor(i[both])].numpy()
        out[only_u] += self.user_bias.to_numpy()[u[only_u]]  # unseen movie: user's bias only
        out[only_i] += self.item_bias.to_numpy()[i[only_i]]  # unseen user: movie's bias only
        return np.clip(out, 1, 5)


def _encode(df, columns):
    """Check `df`, average repeated (user, item) pairs, map ids to 0-based indices → (users, items, u, i, r)."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise RoadtopError(f"fit_collab: ratings frame lacks column(s) {missing}; it has {list(df.columns)}")
    if len(df) < 10:
        raise RoadtopError(f"fit_collab: only {len(df)} ratings; need at least 10")
    user, item, rating = columns
    df = df[list(columns)].assign(**{rating: pd.to_numeric(df[rating], errors="coerce")})
    if df[rating].isna().any():
        raise RoadtopError(f"fit_collab: column {rating!r} has non-numeric or missing ratings")
    if df.duplicated([user, item]).any():  # e.g. items keyed by title: ml-100k has a few titles listed twice
        df = df.groupby([user, item], as_index=False, sort=False)[rating].mean()
    users, items = pd.Index(df[user].unique()), pd.Index(df[item].unique())
    u = torch.as_tensor(users.get_indexer(df[user]), dtype=torch.long)
    i = torch.as_tensor(items.get_indexer(df[item]), dtype=torch.long)
    return users, items, u, i, torch.as_tensor(df[rating].to_numpy(np.float32))


def sweep_wd(train, valid, n_users, n_items, n_factors, wds, wd_bias=1.0, iters=10, refine=True, seed=0, mu=None):
    """Fit MAP biased MF for each wd in `wds` and score it on `valid`; then, with `refine`, one more grid step past
    the best if it sits on the edge of the grid, and the geometric midpoints either side of the best.

    The path runs from the smallest wd up, each fit warm-starting the next (starting from a large wd instead would
    shrink the factors to zero, a saddle point ALS cannot leave). train/valid: (u, i, r) tensors.
    Returns (table with columns n_factors/wd/valid_rmse/seconds, params of the best).
    """
    mu = float(train[2].mean()) if mu is None else mu
    d = _Ratings(*train, n_users, n_items, mu)
    p = _init(n_users, n_items, n_factors, torch.Generator().manual_seed(seed))
    rows, fits = [], {}

    def run(wd, start):
        """Fit at `wd` from `start`, record it."""
        t = time.perf_counter()
        fits[wd] = _als(d, start, wd, wd_bias, iters, valid=valid)
        rows.append({"n_factors": n_factors, "wd": wd, "valid_rmse": _score(fits[wd], valid, mu),
                     "seconds": time.perf_counter() - t})

    def best():
        """The wd with the lowest validation RMSE so far."""
        return min(rows, key=lambda r: r["valid_rmse"])["wd"]

    grid = sorted({float(w) for w in wds})
    for wd in grid:
        run(wd, fits[max(fits)] if fits else p)
    if refine and len(grid) > 1:
        if best() == grid[-1]:  # still improving at the top: one more step up
            grid.append(grid[-1] ** 2 / grid[-2])
            run(grid[-1], fits[grid[-2]])
        elif best() == grid[0]:  # ... or at the bottom: one step down, from a fresh start
            grid.insert(0, grid[0] ** 2 / grid[1])
            run(grid[0], p)
        j = grid.index(best())
        for other in grid[max(j - 1, 0):j] + grid[j + 1:j + 2]:  # the neighbours of the best
            run(float(np.sqrt(other * grid[j])), fits[min(other, grid[j])])
    table = pd.DataFrame(rows)
    return table, fits[best()]


def fit_collab(ratings: pd.DataFrame, n_factors=(10, 20), wds=(3, 10, 30, 100), wd_biases=(0.3, 1, 3, 10, 30, 100),
               valid_pct: float = 0.1, bayes: bool = True, n_burn: int = 10, n_samples: int = 40, seed: int = 42,
               columns=("user", "movie", "rating"), threads: int | None = 1) -> CollabModel:
    """Fit biased MF, choosing n_factors, weight decay and MAP vs Bayesian by a held-out part of `ratings`; refit.

    wd is the L2 weight per parameter in units of one squared rating error: the objective is
    Σ (r - r̂)² + wd·Σ (p² + q²) + wd_bias·Σ (b²). `ratings` holds only training data; it is split internally.
    `threads` (torch threads while fitting; None: leave torch's setting): 1 by default because the work is many
    small ops: a second thread was 1.5x faster on an idle 2-core machine but several times slower on 2 busy cores.
    """
    t0 = time.perf_counter()
    if not 0 < valid_pct < 1 or n_samples < 1 or n_burn < 0 or any(k < 1 for k in n_factors) or not wds:
        raise RoadtopError(f"fit_collab: need 0 < valid_pct < 1, n_samples >= 1, n_burn >= 0, n_factors >= 1 and "
                           f"some wds; got {valid_pct=}, {n_samples=}, {n_burn=}, {n_factors=}, {wds=}")
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _fit_collab(ratings, tuple(n_factors), tuple(wds), tuple(wd_biases), valid_pct, bayes, n_burn,
                           n_samples, seed, tuple(columns), t0)
    finally:
        torch.set_num_threads(old_threads)


def _fit_collab(ratings, n_factors, wds, wd_biases, valid_pct, bayes, n_burn, n_samples, seed, columns, t0):
    """The body of `fit_collab` (see there)."""
    users, items, u, i, r = _encode(ratings, columns)
    nU, nI = len(users), len(items)
    perm = torch.randperm(len(r), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(len(r) * valid_pct))
    vi, ti = perm[:n_val], perm[n_val:]
    train, valid = (u[ti], i[ti], r[ti]), (u[vi], i[vi], r[vi])
    mu = float(train[2].mean())
    d = _Ratings(*train, nU, nI, mu)
    rows, cands = [], {}  # cands: name -> (valid predictions, how to refit)

    # biases only: pick their own weight decay first; it is reused by every factor model
    best_b = None
    for wdb in wd_biases:
        t = time.perf_counter()
        p = _fit_bias_only(d, wdb)
        s = _score(p, valid, mu)
        rows.append(dict(model="biases only", n_factors=0, wd=np.nan, wd_bias=wdb, valid_rmse=s,
                         seconds=time.perf_counter() - t))
        if best_b is None or s < best_b[0]:
            best_b = (s, wdb)
    wd_bias = best_b[1]
    cands["biases only"] = (None, dict(kind="bias", wd_bias=wd_bias))

    for k in n_factors:
        table, p = sweep_wd(train, valid, nU, nI, k, wds, wd_bias, seed=seed, mu=mu)
        for row in table.to_dict("records"):
            rows.append(dict(model="MF (MAP)", wd_bias=wd_bias, **row))
        wd = float(table.wd[table.valid_rmse.idxmin()])
        name = f"MF (MAP) k={k} wd={wd:g}"
        cands[name] = (p.at(valid[0], valid[1], mu), dict(kind="map", k=k, wd=wd, wd_bias=wd_bias, init=p))
        if bayes:
            t = time.perf_counter()
            pred, *_ = _gibbs(d, p, n_burn, max(10, n_samples // 2), seed, on=valid[:2])  # enough to rank
            rows.append(dict(model="MF (Bayes)", n_factors=k, wd=np.nan, wd_bias=np.nan,
                             valid_rmse=rmse(pred.numpy(), valid[2].numpy()), seconds=time.perf_counter() - t))
            cands[f"MF (Bayes) k={k}"] = (pred, dict(kind="bayes", k=k, wd=wd, wd_bias=wd_bias, init=p))
    # the 50/50 blend of the two best factor models
    scored = sorted((rmse(v[0].numpy(), valid[2].numpy()), n) for n, v in cands.items() if v[0] is not None)
    if len(scored) >= 2:
        (_, n1), (_, n2) = scored[:2]
        blend = (cands[n1][0] + cands[n2][0]) / 2
        rows.append(dict(model=f"blend: {n1} + {n2}", n_factors=np.nan, wd=np.nan, wd_bias=np.nan,
                         valid_rmse=rmse(blend.numpy(), valid[2].numpy()), seconds=0.0))
        cands["blend"] = (blend, dict(kind="blend", parts=[cands[n1][1], cands[n2][1]]))
    sweep = pd.DataFrame(rows)
    final = {"biases only": best_b[0], **{n: rmse(v[0].numpy(), valid[2].numpy()) for n, v in cands.items()
                                           if v[0] is not None}}
    winner = min(final, key=final.get)
    spec = cands[winner][1]

    # refit the winner on every training rating
    full = _Ratings(u, i, r, nU, nI, float(r.mean()))
    parts = spec["parts"] if spec["kind"] == "blend" else [spec]
    preds, interp = [], None
    for part in parts:
        pred, b, c, p = _refit(full, part, n_burn, n_samples, seed)
        preds.append(pred)
        interp = interp or (b, c, p)
    b, c, p = interp
    choice = dict(model=winner, valid_rmse=final[winner], **{k: v for k, v in spec.items() if k in
                                                            ("k", "wd", "wd_bias")})
    if spec["kind"] == "blend":
        choice["parts"] = [n1, n2]
    return CollabModel(users=users, items=items, mu=full.mu, pred_matrix=sum(preds) / len(preds),
                       user_bias=pd.Series(b.numpy(), index=users), item_bias=pd.Series(c.numpy(), index=items),
                       item_factors=pd.DataFrame(p.Q.numpy(), index=items), sweep=sweep, choice=choice,
                       seconds=time.perf_counter() - t0, columns=columns)


def _refit(full: _Ratings, spec, n_burn, n_samples, seed):
    """Fit one chosen candidate on all training ratings → (dense predictions, user bias, item bias, MAP params).

    A Bayesian candidate starts its chain from the MAP refit, whose factors are also the ones returned (a single
    posterior sample is noisier to interpret); its biases are the posterior means.
    """
    if spec["kind"] == "bias":
        p = _fit_bias_only(full, spec["wd_bias"])
        return p.dense(full.mu), p.b, p.c, p
    p = _als(full, spec["init"], spec["wd"], spec["wd_bias"], iters=8)
    if spec["kind"] == "map":
        return p.dense(full.mu), p.b, p.c, p
    pred, b, c, _ = _gibbs(full, p, n_burn, n_samples, seed + 1)
    return pred, b, c, p
