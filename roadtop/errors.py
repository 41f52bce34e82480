"""The one exception roadtop raises for bad input: its message is a single line naming the thing and the fix."""

__all__ = ["RoadtopError"]


class RoadtopError(Exception):
    """Bad input or state: `str(err)` is one line that names the file/thing and says what to do."""

    def _render_traceback_(self) -> list:
        """What Jupyter (IPython) shows instead of a traceback: the one line already says what to do."""
        return [f"{type(self).__name__}: {self}"]
