"""roadtop.nbcode: a notebook's export-tagged cells, run into a namespace; which notebooks a cell's code loads."""

import nbformat
import pytest

from roadtop.errors import RoadtopError
from roadtop.nbcode import EXPORT, export_cells, load, uses


def _notebook(folder, name, cells):
    """Write a notebook of (source, tags) code cells and markdown strings into folder."""
    nb = nbformat.v4.new_notebook()
    for c in cells:
        if isinstance(c, str):
            nb.cells.append(nbformat.v4.new_markdown_cell(c))
        else:
            src, tags = c
            nb.cells.append(nbformat.v4.new_code_cell(src, metadata={"tags": list(tags)}))
    nbformat.write(nb, folder / name)


def test_only_the_export_cells_run_in_order_and_the_names_given_are_there(tmp_path):
    _notebook(tmp_path, "a.ipynb", [
        ("def double(x):\n    return 2 * x", [EXPORT]),
        ("raise SystemExit('a cell that is not exported must not run')", []),
        "# prose",
        ("def quad(x):\n    return double(double(x)) + offset", [EXPORT, "other"]),
    ])
    assert export_cells("a.ipynb", tmp_path) == ["def double(x):\n    return 2 * x",
                                                  "def quad(x):\n    return double(double(x)) + offset"]
    ns = load("a.ipynb", tmp_path, offset=1)
    assert ns["quad"](3) == 13
    assert load("a.ipynb", tmp_path, offset=0)["quad"](3) == 12  # a fresh namespace each time


def test_a_missing_notebook_or_one_without_export_cells_is_one_clear_error(tmp_path):
    with pytest.raises(RoadtopError, match=r"gone\.ipynb: no such notebook.*restore it"):
        export_cells("gone.ipynb", tmp_path)
    _notebook(tmp_path, "plain.ipynb", [("x = 1", [])])
    with pytest.raises(RoadtopError, match=r"plain\.ipynb has no code cell tagged 'export'"):
        load("plain.ipynb", tmp_path)


def test_uses_finds_each_loaded_notebook_once_in_order_and_ignores_magics_and_other_loads():
    sources = [
        "%matplotlib inline",
        'from roadtop import nbcode\nlesson = nbcode.load("train.ipynb")',
        'json.load(f)\nyaml.load("x.ipynb")\nnbcode.load(name)',  # not a literal nbcode.load
        'again = nbcode.load("train.ipynb"); other = nbcode.load("collab.ipynb", folder=".")',
    ]
    assert uses(sources) == ("train.ipynb", "collab.ipynb")
    assert uses(["x = 1"]) == ()


def test_the_training_notebook_exports_what_the_probe_loads():
    ns = load("train.ipynb")
    assert callable(ns["dataloaders"]) and callable(ns["learner"])
