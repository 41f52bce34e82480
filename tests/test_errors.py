"""A RoadtopError in a notebook cell shows its one line in Jupyter, not a traceback."""

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def test_a_notebook_with_no_runs_shows_one_line_saying_what_to_run_first(tmp_path):
    """What ensemble.ipynb's first cells do with no saved runs, executed by a real kernel as Jupyter would."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "from roadtop.ensemble import check_runs\ncheck_runs([])")])
    with pytest.raises(CellExecutionError):
        NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    err = next(o for o in nb.cells[0].outputs if o.output_type == "error")
    assert err.ename == "RoadtopError"
    assert len(err.traceback) == 1, err.traceback  # no frames, no arrows: the line is the whole story
    assert err.traceback[0].startswith("RoadtopError: no saved runs to ensemble")
    assert "run train.ipynb first" in err.traceback[0]
