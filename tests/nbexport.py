"""Load a notebook's `export`-tagged cells into a namespace, so tests check the functions the learner reads."""

import nbformat

from roadtop.paths import NOTEBOOKS

__all__ = ["EXPORT", "export_cells", "load"]

EXPORT = "export"


def export_cells(notebook: str) -> list:
    """The sources of `notebook`'s code cells tagged `export`, in order (one clear error if there are none)."""
    nb = nbformat.read(NOTEBOOKS / notebook, as_version=4)
    cells = [c.source for c in nb.cells if c.cell_type == "code" and EXPORT in c.metadata.get("tags", [])]
    if not cells:
        raise LookupError(f"{notebook} has no code cell tagged '{EXPORT}'")
    return cells


def load(notebook: str, **names) -> dict:
    """Execute `notebook`'s export cells in a fresh namespace (pre-filled with `names`); return the namespace."""
    ns = {"__name__": f"nb_{notebook.split('.')[0]}", **names}
    for i, src in enumerate(export_cells(notebook)):
        exec(compile(src, f"{notebook}[export {i}]", "exec"), ns)  # noqa: S102 - our own notebook's cells
    return ns
