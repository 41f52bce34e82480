"""A plan's jobs as frozen values: rendered once by the planner, then only read; a value known later is a new job.

ploomber renders its DAG once into tasks with read-only params (`tasks/_params.py`); so does roadtop: `load_plan`
builds every `Job`, and what is only known once something ran (the data folder, the images left out, `accum: auto`
after the probe, the ensemble's members) makes a new job with `with_params` instead of changing the old one.
"""

from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType

from .execute import JobSpec
from .params import notebook_params

__all__ = ["FrozenDict", "FrozenList", "Job", "freeze", "thaw", "with_data"]


def _refuse(self, *args, **kwargs):
    """Any change to a rendered value: make a new job with Job.with_params instead."""
    raise TypeError(f"{type(self).__name__} is read-only: make a new job with Job.with_params(...)")


class FrozenDict(dict):
    """A dict that refuses changes: still a dict for json, papermill's parameter cell and comparisons."""

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _refuse

    def __hash__(self):
        """Hashable, as a frozen value may be."""
        return hash(tuple(sorted(self.items(), key=repr)))

    def __reduce__(self):
        """Copy and pickle as a FrozenDict of its items (dict's default would set the items one by one)."""
        return FrozenDict, (dict(self),)


class FrozenList(list):
    """A list that refuses changes: still a list for json, papermill's parameter cell and comparisons."""

    __setitem__ = __delitem__ = append = extend = insert = pop = remove = clear = sort = reverse = _refuse
    __iadd__ = __imul__ = _refuse

    def __hash__(self):
        """Hashable, as a frozen value may be."""
        return hash(tuple(self))

    def __reduce__(self):
        """Copy and pickle as a FrozenList of its items."""
        return FrozenList, (list(self),)


def freeze(value):
    """`value` with every dict and list in it (nested) made read-only; other values as they are."""
    if isinstance(value, dict) or isinstance(value, MappingProxyType):
        return FrozenDict({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)) and not isinstance(value, FrozenList):
        return FrozenList(freeze(v) for v in value) if isinstance(value, list) else tuple(map(freeze, value))
    return value


def thaw(value):
    """A plain, changeable copy of a frozen value (dicts and lists all the way down)."""
    if isinstance(value, dict):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list):
        return [thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class Job:
    """One notebook execution, as rendered: its stage (= notebook stem), final parameters (read-only), the jobs it
    needs (upstream), and its output folder (its products: manifest.json and what the notebook writes)."""

    name: str
    stage: str
    notebook: Path
    params: dict
    out_dir: Path
    needs: tuple = ()

    def __post_init__(self):
        """Freeze what was passed in, so nothing shares (or changes) a rendered job's values."""
        object.__setattr__(self, "params", freeze(dict(self.params)))
        object.__setattr__(self, "needs", tuple(self.needs))

    def with_params(self, **changes) -> "Job":
        """A new job: this one with `changes` on top of its parameters."""
        return replace(self, params={**self.params, **changes})

    def spec(self) -> JobSpec:
        """What running it takes (roadtop.dag.execute): its name, stage, notebook, plain parameters, output folder."""
        return JobSpec(self.name, self.stage, self.notebook, thaw(self.params), self.out_dir)

    def takes(self, name: str) -> bool:
        """True if its notebook declares parameter `name` (e.g. data_path: it reads the data folder)."""
        return name in notebook_params(self.notebook)


def with_data(plan, data_path, skip_images=()):
    """A new plan whose jobs read the data folder `data_path` and leave out `skip_images` (the notebooks that
    declare those parameters); `plan` stays as it was."""
    def job(j):
        """`j` with the data settings its notebook takes."""
        new = {k: v for k, v in (("data_path", str(data_path)), ("skip_images", list(skip_images)))
               if j.takes(k) and (k == "data_path" or skip_images)}
        return j.with_params(**new) if new else j

    return replace(plan, jobs=tuple(job(j) for j in plan.jobs))
