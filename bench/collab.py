"""Collab bench: Surprise SVD() vs the fastai book recipe vs roadtop's `fit_collab`, on one seeded 80/20 split.

    python bench/collab.py DATA_DIR [--seed N] [--threads N] [--models surprise,fastai,roadtop] [--out results.csv]

DATA_DIR is any folder holding MovieLens `u.data` (a real ml-100k folder, or one made by
`roadtop.movielens.make_movielens`), or `demo` (the notebook's small generated set, `movielens.DEMO`, made if absent)
or `download` (fastai's copy). RMSE is on the held-out 20 %, predictions clipped to 1..5 for all three;
"fit s" is wall time of the training call (data preparation included for Surprise and roadtop, as each needs its
own; for fastai the DataLoaders are built outside the timer).
"""

import argparse
import os
import platform
import sys
import time

import pandas as pd
import torch

from roadtop.collab import collab_dls, fit_collab, rmse, split_ratings
from roadtop.movielens import load_ratings, resolve_data


def bench_surprise(train, test, seed, threads):
    """Surprise `SVD()` with its defaults (random_state fixed for repeatability)."""
    from surprise import SVD, Dataset, Reader

    t = time.perf_counter()
    trainset = Dataset.load_from_df(train[["user", "movie", "rating"]], Reader(rating_scale=(1, 5))).build_full_trainset()
    algo = SVD(random_state=seed)
    algo.fit(trainset)
    secs = time.perf_counter() - t
    pred = [algo.predict(u, i).est for u, i in zip(test.user, test.movie)]
    return rmse(pred, test.rating), secs, "SVD() defaults: 100 factors, 20 epochs, lr 0.005, reg 0.02"


def bench_fastai(train, test, seed, threads):
    """The fastai book recipe: collab_learner(n_factors=50, y_range=(0, 5.5)), fit_one_cycle(5, 5e-3, wd=0.1)."""
    from fastai.collab import collab_learner

    dls = collab_dls(train, test, bs=64, seed=seed)
    learn = collab_learner(dls, n_factors=50, y_range=(0, 5.5))
    t = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(5, 5e-3, wd=0.1)
        secs = time.perf_counter() - t
        pred, targ = learn.get_preds(dl=dls.valid)
    return rmse(pred.squeeze(-1).numpy(), targ.squeeze(-1).numpy()), secs, "bs 64, 5 epochs one-cycle"


def bench_roadtop(train, test, seed, threads):
    """roadtop's trainer with its defaults (1 torch thread unless --threads says otherwise)."""
    t = time.perf_counter()
    model = fit_collab(train, seed=seed, threads=threads or 1)
    secs = time.perf_counter() - t
    c = model.choice
    return rmse(model.predict(test), test.rating), secs, f"chose {c['model']} (internal valid RMSE {c['valid_rmse']:.4f})"


def main(argv=None):
    """Parse args, run the three, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", help="folder holding u.data (real ml-100k or generated), or 'demo' / 'download'")
    ap.add_argument("--seed", type=int, default=42, help="seed of the 80/20 split and of the models")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads for all (0: each its default: torch's for fastai, 1 for fit_collab)")
    ap.add_argument("--models", default="surprise,fastai,roadtop", help="comma-separated subset to run")
    ap.add_argument("--out", default="", help="also write the table to this CSV")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    benches = {"surprise": ("Surprise SVD()", bench_surprise), "fastai": ("fastai book recipe", bench_fastai),
               "roadtop": ("roadtop fit_collab", bench_roadtop)}
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(wanted) - set(benches))
    if unknown:
        ap.error(f"--models: unknown {unknown}; pick from {sorted(benches)}")
    folder = resolve_data(args.data_dir)
    ratings = load_ratings(folder / "u.data")
    train, test = split_ratings(ratings, 0.2, seed=args.seed)
    print(f"{folder}: {len(ratings):,} ratings; train {len(train):,} / test {len(test):,} (seed {args.seed}); "
          f"torch threads: fastai {torch.get_num_threads()}, fit_collab {args.threads or 1}; "
          f"{os.cpu_count()} CPUs ({platform.machine()})", flush=True)
    rows = []
    for name, fn in (benches[m] for m in wanted):
        score, secs, note = fn(train, test, args.seed, args.threads)
        rows.append({"model": name, "rmse": round(score, 4), "fit_s": round(secs, 2), "note": note})
        print(f"  {name:<20} RMSE {score:.4f}  fit {secs:6.2f} s   {note}", flush=True)
    table = pd.DataFrame(rows)
    print("\n" + table.to_markdown(index=False) if _has_tabulate() else table.to_string(index=False))
    if args.out:
        from roadtop.paths import atomic_write

        with atomic_write(args.out) as f:
            table.to_csv(f, index=False)
    return table


def _has_tabulate():
    """pandas' to_markdown needs the optional `tabulate` package."""
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
