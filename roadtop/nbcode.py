"""One notebook running another's code: the `export`-tagged cells of a notebook, executed into a namespace.

The probe trains with the training notebook's own `dataloaders()` and `learner()` this way, so the lesson's code is
written once, in the notebook where the learner reads it, and the probe measures that code, not a copy.
"""

import ast
from pathlib import Path

import nbformat

from .errors import RoadtopError
from .paths import NOTEBOOKS

__all__ = ["EXPORT", "export_cells", "load", "uses"]

EXPORT = "export"  # the cell tag of the code another notebook (or a test) may run


def export_cells(notebook, folder=None) -> list:
    """The sources of `notebook`'s code cells tagged `export`, in order (one clear error if there are none)."""
    path = Path(folder or NOTEBOOKS) / notebook
    try:
        nb = nbformat.read(path, as_version=4)
    except FileNotFoundError:
        raise RoadtopError(f"{path}: no such notebook: its code is needed here; restore it from the repository") from None
    cells = [c.source for c in nb.cells if c.cell_type == "code" and EXPORT in c.metadata.get("tags", [])]
    if not cells:
        raise RoadtopError(f"{path} has no code cell tagged '{EXPORT}': nothing to run from it")
    return cells


def load(notebook: str, folder=None, **names) -> dict:
    """Run `notebook`'s export cells in a fresh namespace (pre-filled with `names`) and return it: its functions."""
    ns = {"__name__": f"nb_{Path(notebook).stem}", **names}
    for i, src in enumerate(export_cells(notebook, folder)):
        exec(compile(src, f"{notebook}[export {i}]", "exec"), ns)  # noqa: S102 - the project's own notebook
    return ns


def uses(sources) -> tuple:
    """The notebooks whose code these cell sources run (each `nbcode.load("name.ipynb")`), in order, once each."""
    found = []
    for src in sources:
        try:
            tree = ast.parse(src)
        except SyntaxError:  # IPython magics: not a load
            continue
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "nbcode" and node.args
                    and isinstance(node.args[0], ast.Constant) and node.args[0].value not in found):
                found.append(node.args[0].value)
    return tuple(found)
