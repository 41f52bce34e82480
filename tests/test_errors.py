"""A RoadtopError in a notebook cell shows its one line in Jupyter, not a traceback."""

import nbformat
import pytest
from conftest import ROOT
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def test_ensemble_notebook_with_no_runs_shows_one_line_saying_what_to_run_first(tmp_path):
    """ensemble.ipynb as a learner opens it in Jupyter, with its defaults, before any run was saved: its outputs/
    folder (roadtop.paths.ROOT / "outputs") is pointed at an empty folder by a cell added in front."""
    nb = nbformat.read(ROOT / "notebooks" / "ensemble.ipynb", as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(
        f"import pathlib, roadtop.paths\nroadtop.paths.ROOT = pathlib.Path({str(tmp_path)!r})"))
    with pytest.raises(CellExecutionError):
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    errors = [(i, o) for i, c in enumerate(nb.cells) if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert len(errors) == 1
    i, err = errors[0]
    assert "ensemble.check_runs" in nb.cells[i].source  # the first cell that needs a run
    assert err.ename == "RoadtopError"
    assert len(err.traceback) == 1, err.traceback  # no frames, no arrows: the line is the whole story
    assert err.traceback[0].startswith("RoadtopError: no saved runs to ensemble")
    assert "run train.ipynb first" in err.traceback[0]
    assert not (tmp_path / "outputs" / "data").exists()  # it said so before generating any demo data
