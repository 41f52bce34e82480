"""The pack kernel's notebook (roadtop.kaggle.packnb): its driver, executed here by papermill as Kaggle would, runs
the pack's notebooks at once, one per GPU, and one failing run fails alone."""

import json
from types import SimpleNamespace

import nbformat
import papermill

from roadtop.kaggle.packnb import pack_notebook


def _child(tmp_path, name, body):
    """A tiny run notebook that records the card it was given, then runs `body`."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import os, pathlib\n"
        f"out = pathlib.Path({str(tmp_path / 'working' / name)!r})\n"
        "(out / 'cuda.txt').write_text(os.environ['CUDA_VISIBLE_DEVICES'] + ' ' + os.environ['OMP_NUM_THREADS'])\n"
        + body)])
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    return nbformat.writes(nb)


def test_the_driver_runs_each_notebook_on_its_own_card_and_a_failure_stays_alone(tmp_path):
    jobs = [SimpleNamespace(name="train/a", notebook="notebooks/train.ipynb"),
            SimpleNamespace(name="train/b", notebook="notebooks/train.ipynb")]
    texts = [_child(tmp_path, "a", "(out / 'preds.txt').write_text('a')\n"),
             _child(tmp_path, "b", "raise ValueError('CUDA out of memory in run b')\n")]
    nb = pack_notebook(jobs, texts, ["a", "b"], gpus=2, working=tmp_path / "working")
    assert [c.metadata["tags"][0] for c in nb.cells] == ["pack-intro", "pack-runs", "pack-driver"]
    assert nb.cells[1].metadata["_kg_hide-input"] is True and len(nb.cells[2].source.splitlines()) <= 30
    src = tmp_path / "pack.ipynb"
    src.write_text(nbformat.writes(nb))
    papermill.execute_notebook(str(src), str(tmp_path / "pack.out.ipynb"), cwd=str(tmp_path), progress_bar=False)
    work = tmp_path / "working"
    result = json.loads((work / "pack.json").read_text())
    assert result["train/a"] == {"state": "complete", "gpu": 0, "cause": ""}
    assert result["train/b"]["state"] == "failed" and result["train/b"]["gpu"] == 1
    assert "ValueError: CUDA out of memory in run b" in result["train/b"]["cause"]
    assert (work / "a" / "preds.txt").read_text() == "a"
    assert (work / "a" / "cuda.txt").read_text().split()[0] == "0"  # each process saw only its card
    assert (work / "b" / "cuda.txt").read_text().split()[0] == "1"
    for run in ("a", "b"):  # each run's executed notebook lands in its own folder
        executed = nbformat.read(work / run / "train.ipynb", as_version=4)
        assert [c.execution_count for c in executed.cells if c.cell_type == "code"] == [1]
