"""The MovieLens look-alike generator, the checked loader and the `data` resolver."""

import numpy as np
import pandas as pd
import pytest

from roadtop.errors import RoadtopError
from roadtop.movielens import (
    GENRES,
    RATING_SHARES,
    find_ml100k,
    load_movielens,
    load_movies,
    load_ratings,
    make_movielens,
    resolve_data,
)


@pytest.fixture(scope="module")
def ml(tmp_path_factory):
    """A full-size generated set (about 0.3 s)."""
    return make_movielens(tmp_path_factory.mktemp("ml") / "ml-100k", seed=42)


def test_sizes_and_per_user_minimum(ml):
    df = load_ratings(ml / "u.data")
    assert len(df) == 100_000
    assert df.user.nunique() == 943 and df.movie.nunique() == 1682
    assert not df.duplicated(["user", "movie"]).any()
    per_user = df.groupby("user").size()
    assert per_user.min() == 20
    assert 55 <= per_user.median() <= 75 and 600 <= per_user.max() <= 737


def test_rating_statistics_look_like_movielens(ml):
    df = load_ratings(ml / "u.data")
    shares = df.rating.value_counts(normalize=True).sort_index().to_numpy()
    np.testing.assert_allclose(shares, RATING_SHARES, atol=0.005)
    assert abs(df.rating.mean() - 3.53) < 0.02 and abs(df.rating.std() - 1.13) < 0.02
    per_movie = df.groupby("movie").size()
    assert per_movie.min() >= 1 and 15 <= per_movie.median() <= 40 and 250 <= (per_movie < 5).sum() <= 420
    top10 = per_movie.sort_values(ascending=False).iloc[: len(per_movie) // 10].sum() / len(df)
    assert 0.38 <= top10 <= 0.47  # long tail: real 42.7 %
    assert 0.35 <= df.groupby("user").rating.mean().std() <= 0.55  # real 0.45
    assert 0.65 <= df.groupby("movie").rating.mean().std() <= 0.9  # real 0.78


def test_deterministic_in_seed(tmp_path):
    a, b, c = (make_movielens(tmp_path / n, seed=s, n_users=100, n_items=200, n_ratings=4000)
               for n, s in [("a", 1), ("b", 1), ("c", 2)])
    assert (a / "u.data").read_bytes() == (b / "u.data").read_bytes()
    assert (a / "u.item").read_bytes() == (b / "u.item").read_bytes()
    assert (a / "u.data").read_bytes() != (c / "u.data").read_bytes()


def test_generated_only_when_absent_and_atomically(tmp_path):
    dest = make_movielens(tmp_path / "ml", seed=3, n_users=50, n_items=80, n_ratings=1500)
    stamp = (dest / "u.data").stat().st_mtime_ns
    assert make_movielens(dest, seed=99) == dest  # present: left alone, whatever the seed
    assert (dest / "u.data").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ml"]  # no temp folder left behind


def test_real_formats_round_trip(ml):
    lines = (ml / "u.data").read_text().splitlines()
    assert all(len(line.split("\t")) == 4 for line in lines[:100])
    raw = (ml / "u.item").read_bytes()
    fields = raw.decode("latin-1").splitlines()[0].split("|")
    assert len(fields) == 5 + len(GENRES) == 24
    assert b"\xe9" in raw  # 'é' as one latin-1 byte, as in the real file ('Café' titles)
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    movies = load_movies(ml / "u.item")
    assert len(movies) == 1682 and movies.title.str.contains("é").any()
    assert movies[GENRES].sum(axis=1).min() >= 1
    merged = load_movielens(ml)
    assert len(merged) == 100_000 and merged.title.notna().all()


def _write(path, text, encoding="ascii"):
    path.write_bytes(text.encode(encoding))
    return path


def _one_line(fn):
    """Call fn, expect RoadtopError, return its (single-line) message."""
    with pytest.raises(RoadtopError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_missing_column_is_refused(tmp_path):
    f = _write(tmp_path / "u.data", "1\t2\t3\n4\t5\t4\n")
    msg = _one_line(lambda: load_ratings(f))
    assert str(f) in msg and "expected 4" in msg and "found 3" in msg


def test_rating_out_of_range_is_refused(tmp_path):
    f = _write(tmp_path / "u.data", "1\t2\t3\t881250949\n4\t5\t6\t881250950\n")
    msg = _one_line(lambda: load_ratings(f))
    assert str(f) in msg and "outside 1..5" in msg and "row 2" in msg
    assert len(load_ratings(f, rating_range=(1, 10))) == 2


def test_non_numeric_and_empty_fields_are_refused(tmp_path):
    f = _write(tmp_path / "u.data", "1\t2\tfive\t881250949\n")
    assert str(f) in _one_line(lambda: load_ratings(f))
    g = _write(tmp_path / "v.data", "1\t2\t\t881250949\n")
    assert "empty fields" in _one_line(lambda: load_ratings(g))


def test_wrong_encodings_are_refused(tmp_path):
    item = "1|Café Noir (1995)|01-Jan-1995||http://x|" + "|".join(["0"] * 19) + "\n"
    utf16 = _write(tmp_path / "u16.item", item, "utf-16")
    assert "UTF-16" in _one_line(lambda: load_movies(utf16)) and str(utf16) in _one_line(lambda: load_movies(utf16))
    latin = _write(tmp_path / "u.item", item, "latin-1")
    assert load_movies(latin).title[0] == "Café Noir (1995)"
    msg = _one_line(lambda: load_movies(latin, encoding="utf-8"))
    assert str(latin) in msg and "not valid utf-8" in msg and "latin-1" in msg
    assert "unknown encoding 'latin-9x'" in _one_line(lambda: load_movies(latin, encoding="latin-9x"))
    data16 = _write(tmp_path / "u.data", "1\t2\t3\t4\n", "utf-16")
    assert "UTF-16" in _one_line(lambda: load_ratings(data16))


def test_wrong_item_fields_are_refused(tmp_path):
    f = _write(tmp_path / "u.item", "1|Toy Story (1995)|01-Jan-1995\n")
    msg = _one_line(lambda: load_movies(f))
    assert str(f) in msg and "expected 24" in msg


def test_ratings_of_unknown_movies_are_refused(tmp_path):
    _write(tmp_path / "u.data", "1\t7\t3\t881250949\n")
    _write(tmp_path / "u.item", "1|A (1995)|01-Jan-1995||http://x|" + "|".join(["0"] * 19) + "\n")
    assert "missing from u.item" in _one_line(lambda: load_movielens(tmp_path))


def test_resolver_finds_nested_folders_and_names_bad_ones(tmp_path, ml):
    assert resolve_data(str(ml)) == ml
    nested = tmp_path / "kaggle-input" / "movielens-100k" / "ml-100k"
    nested.mkdir(parents=True)
    for name in ("u.data", "u.item"):
        (nested / name).write_bytes((ml / name).read_bytes())
    assert find_ml100k(tmp_path / "kaggle-input") == nested
    msg = _one_line(lambda: resolve_data(str(tmp_path / "nowhere")))
    assert "nowhere" in msg and "does not exist" in msg
    (tmp_path / "empty").mkdir()
    assert "no u.data" in _one_line(lambda: resolve_data(str(tmp_path / "empty")))


def test_loaded_types(ml):
    df = load_ratings(ml / "u.data")
    assert list(df.columns) == ["user", "movie", "rating", "timestamp"]
    assert all(pd.api.types.is_integer_dtype(df[c]) for c in df.columns)


def test_resolver_checks_the_files_it_returns(tmp_path, ml):
    """The notebook reads u.data/u.item with the lesson's pd.read_csv, so the resolver checks them first."""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "u.item").write_bytes((ml / "u.item").read_bytes())
    (bad / "u.data").write_text("1\t1\t7\t874724710\n")
    msg = _one_line(lambda: resolve_data(str(bad)))
    assert "u.data" in msg and "outside 1..5" in msg


def test_demo_set_is_small_with_the_real_formats(monkeypatch, tmp_path):
    """data='demo': the DEMO sizes (seconds per model on a CPU), one folder per seed and generator setting."""
    from roadtop import movielens

    monkeypatch.setattr(movielens, "default_out", lambda *parts: tmp_path.joinpath(*parts))
    a, b = resolve_data("demo", seed=1), resolve_data("demo", seed=2)
    assert a != b and a.parent == b.parent == tmp_path / "data"
    df = load_movielens(a)
    assert len(df) == movielens.DEMO["n_ratings"] and df.user.nunique() == movielens.DEMO["n_users"]
    assert df.groupby("user").size().min() >= 20
