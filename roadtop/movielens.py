"""MovieLens 100k: a generator of look-alike data in the real `u.data`/`u.item` layout, a checked loader, a resolver."""

import codecs
import errno
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd

from .errors import RoadtopError
from .paths import KAGGLE_INPUT, default_out

__all__ = [
    "GENRES",
    "RATING_SHARES",
    "make_movielens",
    "load_ratings",
    "load_movies",
    "load_movielens",
    "find_ml100k",
    "resolve_data",
    "DEMO",
]

GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]
RATING_SHARES = (0.061, 0.114, 0.271, 0.342, 0.212)  # shares of ratings 1..5 in the real set (DATA_FACTS.md)
_GENRE_SHARES = [0.001, 0.149, 0.080, 0.025, 0.073, 0.300, 0.065, 0.030, 0.431, 0.013, 0.014, 0.054, 0.033, 0.036,
                 0.146, 0.060, 0.150, 0.042, 0.016]
# Ratings per movie, as a quantile function through the real set's facts: 333 movies < 5, quartiles 6/27/80,
# max 583; the 0.90/0.99 knots make the total 100k with the top 10 % of movies holding 42.7 % of ratings.
_MOVIE_KNOTS = ([0, 0.198, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0], [1, 4.5, 6, 27, 80, 164, 320, 583])
# The demo set: 150 users and 300 movies, each rated about as often as in the real set (133 and 67 ratings on average;
# real: 106 and 59), so every model trains in seconds on a CPU, and a stronger taste signal than the real set's: the
# lesson's story shows on it as on the real ratings (without weight decay the models overfit and end level with biases
# only; with wd=0.1 they beat both; figures in the README).
DEMO = dict(n_users=150, n_items=300, n_ratings=20_000, taste=0.7, noise=0.86)
_T0, _T1 = 874724710, 893286638  # first and last timestamp of the real u.data
_ADJ = ["Silent", "Lost", "Last", "Dark", "Golden", "Wild", "Little", "Secret", "Broken", "Crimson", "Frozen", "Hidden",
        "Endless", "Midnight", "Burning", "Quiet", "Electric", "Savage", "Sweet", "Distant", "Final", "Hollow", "Lucky",
        "Restless", "Strange", "Velvet", "Wicked", "Young", "Iron", "Paper"]
_NOUN = ["River", "Heart", "City", "Night", "Summer", "Stranger", "Kingdom", "Road", "Garden", "Mirror", "Empire",
         "Shadow", "Island", "Promise", "Storm", "Dream", "Hunter", "Winter", "Journey", "Letter", "Planet", "Circus",
         "Harbor", "Machine", "Café", "Señorita", "Frontier", "Detective", "Valley", "Orchestra"]


def _largest_remainder(x, total):
    """Round non-negative floats `x` to ints that sum exactly to `total`."""
    if total <= 0 or x.sum() <= 0:
        return np.zeros(len(x), dtype=int)
    x = x * total / x.sum()
    n = np.floor(x).astype(int)
    n[np.argsort(n - x)[: total - n.sum()]] += 1
    return n


def _user_counts(rng, n_users, n_ratings, n_items):
    """Ratings per user: 20 + a capped log-normal (min 20, median ≈ 65, max ≈ 737), summing to `n_ratings`."""
    extra = np.maximum(rng.lognormal(np.log(40), 1.15, n_users) - 4, 0)  # a few dozen users at exactly 20
    cap = min(717, n_items - 20)
    for _ in range(20):  # rescale to the total, cap the heaviest raters, repeat
        extra = np.minimum(extra * (n_ratings - 20 * n_users) / max(extra.sum(), 1e-9), cap)
    return 20 + _largest_remainder(extra, n_ratings - 20 * n_users)


def _movie_weights(rng, n_items, n_ratings):
    """Target ratings per movie (long tail, see `_MOVIE_KNOTS`), in random movie-id order."""
    q = (np.arange(n_items) + 0.5) / n_items
    target = np.exp(np.interp(q, _MOVIE_KNOTS[0], np.log(_MOVIE_KNOTS[1])))
    return rng.permutation(target * n_ratings / target.sum())


def _pick_movies(rng, n_per_user, target, iters=6):
    """Boolean (users × movies) matrix: user u rates n_per_user[u] distinct movies, movie totals ≈ `target`."""
    n_users, n_items = len(n_per_user), len(target)
    gumbel = rng.gumbel(size=(n_users, n_items))
    logw = np.log(target)
    rows = np.arange(n_users)[:, None]
    for _ in range(iters):  # Gumbel top-k = weighted sampling without replacement; rescale weights toward targets
        order = np.argsort(-(logw + gumbel), axis=1)
        rank = np.empty_like(order)
        rank[rows, order] = np.arange(n_items)
        mask = rank < n_per_user[:, None]
        got = mask.sum(0)
        logw += 0.8 * (np.log(target) - np.log(np.maximum(got, 0.5)))
    for m in np.flatnonzero(mask.sum(0) == 0):  # every movie gets ≥ 1 rating: swap it in for a popular one
        u = rng.choice(np.argsort(-n_per_user)[: max(1, n_users // 10)])  # one of the most active users
        rated = np.flatnonzero(mask[u])
        mask[u, rated[np.argmax(mask.sum(0)[rated])]] = False
        mask[u, m] = True
    return mask


def _titles(rng, n_items):
    """Unique made-up titles 'Adjective Noun (year)' with release years leaning to the 1990s, as in the real set."""
    years = np.where(rng.random(n_items) < 0.75, rng.integers(1990, 1999, n_items), rng.integers(1926, 1990, n_items))
    out, seen = [], set()
    for i in range(n_items):
        base = f"The {_ADJ[rng.integers(len(_ADJ))]} {_NOUN[rng.integers(len(_NOUN))]}"
        name, k = base, 2
        while (name, years[i]) in seen:
            name, k = f"{base} {k}", k + 1
        seen.add((name, years[i]))
        out.append(f"{name} ({years[i]})")
    return out, years


def _write_item(f, rng, q, n_items):
    """Write u.item: id|title|release date|video release date|IMDb URL|19 genre flags (flags follow taste factors)."""
    titles, years = _titles(rng, n_items)
    dirs = rng.normal(size=(q.shape[1], len(GENRES)))
    score = (q / q.std(0)) @ dirs / np.sqrt(q.shape[1]) + rng.normal(size=(n_items, len(GENRES)))
    cut = np.array([np.quantile(score[:, g], 1 - share) for g, share in enumerate(_GENRE_SHARES)])
    flags = score > cut
    flags[flags.sum(1) == 0, 0] = True  # the real set marks genre-less movies 'unknown'
    months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    for i in range(n_items):
        date = f"{rng.integers(1, 29):02d}-{months[rng.integers(12)]}-{years[i]}"
        url = "http://us.imdb.com/M/title-exact?" + quote(titles[i], safe="()")
        f.write("|".join([str(i + 1), titles[i], date, "", url, *map(str, flags[i].astype(int))]) + "\n")


def _ratings(rng, mask, popularity, k=10, taste=0.36, noise=0.86):
    """Integer ratings for the True cells of `mask`: biases + low-rank taste + noise, cut at the real rating shares."""
    n_users, n_items = mask.shape
    scale = 1 / np.sqrt(np.arange(1, k + 1))  # a few strong taste dimensions, then weaker ones
    p = rng.normal(size=(n_users, k)) * scale
    q = rng.normal(size=(n_items, k)) * scale
    b_user = rng.normal(0, 0.52, n_users)
    pop = np.log(popularity)
    pop = (pop - pop.mean()) / pop.std()
    b_item = 0.35 * pop + rng.normal(0, 0.65, n_items) * np.exp(-0.2 * pop)  # popular: higher, rare: more extreme
    u, i = np.nonzero(mask)
    z = b_user[u] + b_item[i] + taste * (p[u] * q[i]).sum(1) + rng.normal(0, noise, len(u))
    cuts = np.quantile(z, np.cumsum(RATING_SHARES)[:-1])
    return u, i, 1 + np.searchsorted(cuts, z), q


def make_movielens(dest, seed: int = 42, n_users: int = 943, n_items: int = 1682, n_ratings: int = 100_000,
                   taste: float = 0.36, noise: float = 0.86) -> Path:
    """Write a MovieLens-100k look-alike (`u.data`, `u.item`) to `dest` unless it is there; deterministic in `seed`."""
    dest = Path(dest)
    if (dest / "u.data").is_file() and (dest / "u.item").is_file():
        return dest
    if n_items < 40 or not max(20 * n_users, n_items) <= n_ratings <= n_users * n_items // 2:
        raise RoadtopError(f"make_movielens({dest}): need n_items >= 40 and max(20*n_users, n_items) <= n_ratings "
                           f"<= n_users*n_items/2; got {n_users=}, {n_items=}, {n_ratings=}")
    rng = np.random.default_rng(seed)
    per_user = _user_counts(rng, n_users, n_ratings, n_items)
    target = _movie_weights(rng, n_items, n_ratings)
    mask = _pick_movies(rng, per_user, target)
    u, i, r, q = _ratings(rng, mask, target, taste=taste, noise=noise)
    start = rng.integers(_T0, _T1 - 86400 * 30, n_users)
    span = np.minimum(rng.exponential(86400 * 40, n_users), _T1 - start)
    ts = start[u] + (rng.random(len(u)) * span[u]).astype(np.int64)
    order = rng.permutation(len(u))  # the real file is in no particular order
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        frame = pd.DataFrame({"user": u[order] + 1, "movie": i[order] + 1, "rating": r[order], "timestamp": ts[order]})
        frame.to_csv(tmp / "u.data", sep="\t", header=False, index=False)
        with open(tmp / "u.item", "w", encoding="latin-1", newline="\n") as f:
            _write_item(f, rng, q, n_items)
        (tmp / "README").write_text(f"MovieLens-100k look-alike generated by roadtop.movielens (seed={seed}); "
                                    "not real ratings.\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        if dest.exists():  # a half-finished earlier folder without both files
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not (dest / "u.data").is_file():
            raise
        # another process finished first: keep theirs
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def load_ratings(path, rating_range=(1, 5)) -> pd.DataFrame:
    """Read a tab-separated `u.data` into columns user, movie, rating, timestamp; refuse malformed files."""
    path = Path(path)
    if not path.is_file():
        raise RoadtopError(f"{path}: no such file; point `data` at a folder holding MovieLens u.data and u.item")
    head = path.read_bytes()[:4096]
    if b"\x00" in head or head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise RoadtopError(f"{path}: looks UTF-16 encoded; MovieLens u.data is plain ASCII text, re-save it as such")
    try:
        df = pd.read_csv(path, sep="\t", header=None, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise RoadtopError(f"{path}: cannot parse as tab-separated user/movie/rating/timestamp ({type(e).__name__})")
    if df.shape[1] != 4:
        raise RoadtopError(f"{path}: expected 4 tab-separated columns (user, movie, rating, timestamp), "
                           f"found {df.shape[1]}")
    df.columns = ["user", "movie", "rating", "timestamp"]
    try:
        df = df.apply(lambda col: pd.to_numeric(col.str.strip()))
    except ValueError as e:
        raise RoadtopError(f"{path}: non-numeric value ({e}); every column of u.data must be a number")
    if df.isna().any().any():
        raise RoadtopError(f"{path}: empty fields in row {int(df.isna().any(axis=1).idxmax()) + 1}; "
                           "every row needs user, movie, rating, timestamp")
    lo, hi = rating_range
    bad = (df.rating < lo) | (df.rating > hi)
    if bad.any():
        raise RoadtopError(f"{path}: {int(bad.sum())} ratings outside {lo}..{hi} (first: {df.rating[bad].iloc[0]} "
                           f"in row {int(bad.idxmax()) + 1}); fix the file or pass rating_range")
    return df.astype({"user": "int64", "movie": "int64", "timestamp": "int64"})


def load_movies(path, encoding: str = "latin-1") -> pd.DataFrame:
    """Read `u.item` ('|'-separated, latin-1) into columns movie, title and the 19 genre flags."""
    path = Path(path)
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise RoadtopError(f"{path}: unknown encoding {encoding!r}; MovieLens u.item is 'latin-1'") from None
    if not path.is_file():
        raise RoadtopError(f"{path}: no such file; point `data` at a folder holding MovieLens u.data and u.item")
    raw = path.read_bytes()
    if b"\x00" in raw[:4096] or raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise RoadtopError(f"{path}: looks UTF-16 encoded; MovieLens u.item is latin-1, re-save it as latin-1")
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        raise RoadtopError(f"{path}: not valid {encoding} at byte {e.start}; MovieLens u.item is 'latin-1'") from None
    rows = [line.split("|") for line in text.splitlines() if line.strip()]
    widths = {len(r) for r in rows}
    if widths != {5 + len(GENRES)}:
        raise RoadtopError(f"{path}: expected {5 + len(GENRES)} '|'-separated fields per line "
                           f"(id|title|date|video date|url|19 genres), found {sorted(widths)}")
    df = pd.DataFrame(rows, columns=["movie", "title", "release_date", "video_release_date", "url", *GENRES])
    try:
        df = df.astype({"movie": "int64", **{g: "int64" for g in GENRES}})
    except ValueError:
        raise RoadtopError(f"{path}: movie ids and genre flags must be integers") from None
    return df.drop(columns=["video_release_date", "url"])


def load_movielens(folder, rating_range=(1, 5)) -> pd.DataFrame:
    """Ratings of `folder`/u.data merged with titles from `folder`/u.item (the lesson's `ratings.merge(movies)`)."""
    folder = Path(folder)
    ratings = load_ratings(folder / "u.data", rating_range)
    movies = load_movies(folder / "u.item")
    unknown = ~ratings.movie.isin(movies.movie)
    if unknown.any():
        raise RoadtopError(f"{folder / 'u.data'}: {int(unknown.sum())} ratings of movie ids missing from u.item "
                           f"(e.g. {ratings.movie[unknown].iloc[0]})")
    return ratings.merge(movies[["movie", "title"]], on="movie")


def find_ml100k(folder) -> Path:
    """The folder holding u.data: `folder` itself or the shallowest one below it (Kaggle inputs nest it)."""
    folder = Path(folder)
    if (folder / "u.data").is_file():
        return folder
    if folder.is_dir():
        hits = sorted(folder.rglob("u.data"), key=lambda p: (len(p.parts), str(p)))
        if hits:
            return hits[0].parent
    where = "folder" if folder.is_dir() else "path (it does not exist)"
    raise RoadtopError(f"{folder}: no u.data in this {where}; use data='demo', 'download' or an ml-100k folder")


def _find(data: str, seed: int) -> Path:
    """The folder `data` names: the generated demo (made if absent), fastai's download, or a path."""
    if data == "demo":
        spec = "-".join(f"{v:g}" for v in DEMO.values())
        return make_movielens(default_out("data", f"movielens-demo-{seed}-{spec}"), seed=seed, **DEMO)
    if data == "download":
        from fastai.data.external import URLs, untar_data

        return find_ml100k(untar_data(URLs.ML_100k))
    path = Path(data).expanduser()
    if not path.exists() and not path.is_absolute() and (KAGGLE_INPUT / path).exists():
        path = KAGGLE_INPUT / path  # a Kaggle dataset slug such as 'movielens-100k-dataset'
    return find_ml100k(path)


def resolve_data(data: str = "demo", seed: int = 42) -> Path:
    """The notebook's `data` param → an ml-100k folder whose u.data and u.item pass `load_movielens`'s checks:
    'demo' (generated), 'download' (fastai), or a path."""
    folder = _find(data, seed)
    load_movielens(folder)
    return folder
