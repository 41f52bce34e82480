"""The push record of a plan (kernels.json): each run's kernel ref, version and last known status."""

import json

from ..errors import RoadtopError
from ..paths import atomic_write
from .settings import kaggle_dir

__all__ = ["load_record", "save_record"]


def load_record(plan) -> dict:
    """The push record of `plan` (kernels.json): run -> ref, version, status, ...; empty before any push."""
    p = kaggle_dir(plan) / "kernels.json"
    if not p.exists():
        return {"kernels": {}, "submissions": []}
    try:
        return json.loads(p.read_text())
    except ValueError:
        raise RoadtopError(f"{p} is not valid JSON: fix or delete it (the kernels on Kaggle stay)") from None


def save_record(plan, record: dict):
    """Write the push record atomically, after every change, so a later error loses nothing."""
    with atomic_write(kaggle_dir(plan) / "kernels.json") as f:
        json.dump(record, f, indent=2, sort_keys=True)
