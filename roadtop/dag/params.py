"""Check run parameters against a notebook's `parameters` cell before anything runs (papermill only warns)."""

import ast
import math
import re
from functools import lru_cache
from pathlib import Path

import papermill as pm
import timm
from timm.models._registry import get_deprecated_models

from .. import blend, ensemble
from ..errors import RoadtopError
from ..train import ITEM_METHODS

__all__ = ["LIMITS", "SET_BY_PIPELINE", "FINGERPRINT_SKIPS", "notebook_params", "notebook_defaults", "check_value", "check_limit", "validate_params",
           "resolve_arch", "check_arch"]

# What a value must be beyond its declared type, by name: for every notebook that declares it, and for the plan's
# data: section (demo.* is data.demo). A range holds for every number in the value (each of a [h, w] size, a list's
# items, a dict's values); a tuple lists the only values allowed. The parameters cells say the rest (name, type).
LIMITS = {
    "epochs": "> 0", "lr": "> 0", "size": "> 0", "item_size": "> 0", "tta_n": "> 0", "bs": "> 0", "steps": "> 0",
    "n_factors": "> 0", "nn_layers": "> 0", "accums": "> 0", "gpu_budget_gb": "> 0", "time_budget_h": "> 0",
    "margin_gb": ">= 0", "wd": ">= 0", "disease_weight": ">= 0", "variety_weight": ">= 0",
    "weights": ">= 0", "folds": ">= 0", "fold": ">= 0", "cv_folds": ">= 2",
    "holdout_pct": "(0, 1)", "valid_pct": "(0, 1)", "sample": "(0, 1]",
    "item_method": ITEM_METHODS, "method": ensemble.METHODS, "metric": blend.METRICS, "fit_on": ensemble.FIT_ON,
    "demo.n_train": "> 0", "demo.n_test": "> 0", "demo.size": "> 0",
}
# Parameters the pipeline sets on every job it runs, so a plan may not: the paths it reads and writes, and the
# probe's `runs` (the plan's training runs).
SET_BY_PIPELINE = frozenset({"out_dir", "data_path", "run_dirs", "ensemble_dir", "runs"})
# What a job's fingerprint leaves out of its parameters: the paths, whose content the data and upstream parts already
# say (so the same plan in another output folder has the same fingerprints). `runs` stays in: the probe measures it.
FINGERPRINT_SKIPS = SET_BY_PIPELINE - {"runs"}
_RANGE = re.compile(r"(?:(>=?) (\S+)|([(\[])(\S+), (\S+)([)\]]))")

_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict, "None": type(None)}


@lru_cache(maxsize=None)
def _inspect(path: str, mtime: float):
    return pm.inspect_notebook(path)


def notebook_params(nb) -> dict:
    """The notebook's declared parameters: name -> {inferred_type_name, default, help} (papermill.inspect_notebook)."""
    nb = Path(nb)
    if not nb.exists():
        raise RoadtopError(f"{nb} does not exist: check the notebook name in the plan")
    return _inspect(str(nb), nb.stat().st_mtime)


def notebook_defaults(nb) -> dict:
    """The parameters cell's default values, as Python values."""
    return {k: ast.literal_eval(v["default"]) for k, v in notebook_params(nb).items()}


def _allowed(type_name, default):
    """The Python types a declared `name: type = value` accepts."""
    if not type_name or type_name == "None":
        return (type(default),) if default is not None else None
    t = type_name.strip()
    if t.startswith("Optional[") and t.endswith("]"):
        t = f"{t[9:-1]} | None"
    elif t.startswith("Union[") and t.endswith("]"):
        t = t[6:-1].replace(",", "|")
    names = [n.strip() for n in t.split("|")]
    out = []
    for n in names:
        if n not in _TYPES:
            return None  # a type we do not police
        out.append(_TYPES[n])
    if float in out:
        out.append(int)
    if list in out:
        out.append(tuple)
    return tuple(out)


def check_value(name, value, info, where, path: str = ""):
    """Raise RoadtopError unless `value` fits the declared type of parameter `name` (set at key `path` of the plan)."""
    default = ast.literal_eval(info["default"])
    allowed = _allowed(info.get("inferred_type_name"), default)
    if allowed is None:
        return
    ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
    if not ok:
        want = info.get("inferred_type_name") or type(default).__name__
        raise RoadtopError(f"{where}: {path or name}={value!r} is {type(value).__name__}, but the notebook declares "
                           f"'{name}: {want}': fix {path or name} in the plan")


def _numbers(value):
    """Every number in `value` (itself, a list's items, a dict's values, nested); bools are not numbers."""
    if isinstance(value, (list, tuple)):
        for v in value:
            yield from _numbers(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


def _within(x, rule: str) -> bool:
    """True if number `x` satisfies a LIMITS range: '> 0', '>= 2', '(0, 1)', '(0, 1]'."""
    op, lo, left, a, b, right = _RANGE.fullmatch(rule).groups()
    if op:
        return x >= float(lo) if op == ">=" else x > float(lo)
    a, b = float(a), float(b)
    return (x >= a if left == "[" else x > a) and (x <= b if right == "]" else x < b)


def check_limit(name: str, value, where: str, path: str = ""):
    """Raise one line naming `where`, the key `path` and the fix unless `value` is finite and within LIMITS[name]."""
    path = path or name
    if any(isinstance(x, float) and not math.isfinite(x) for x in _numbers(value)):
        raise RoadtopError(f"{where}: {path}={value!r} is not a finite number: set {path} to a number")
    rule = LIMITS.get(name)
    if rule is None:
        return
    if isinstance(rule, tuple):
        if value not in rule:
            raise RoadtopError(f"{where}: {path}={value!r} is unknown: set {path} to one of {', '.join(rule)}")
    elif not all(_within(x, rule) for x in _numbers(value)):
        what = "every number in it" if isinstance(value, (list, tuple, dict)) else "it"
        rule = rule if rule.startswith(">") else f"in {rule}"
        raise RoadtopError(f"{where}: {path}={value!r} is out of range: {what} must be {rule}; fix {path} in the plan")


def validate_params(nb, params: dict, where: str, paths=None) -> dict:
    """Every key known to the notebook, of its declared type and within LIMITS; returns defaults updated with
    `params`. `paths` maps a key to its key path in the plan (e.g. epochs -> train.runs.res.epochs)."""
    declared, paths = notebook_params(nb), paths or {}
    for k, v in params.items():
        if k not in declared:
            known = ", ".join(sorted(declared))
            raise RoadtopError(f"{where}: unknown parameter '{k}' for {Path(nb).name} (it takes: {known})")
        check_value(k, v, declared[k], where, paths.get(k, k))
        check_limit(k, v, where, paths.get(k, k))
    return {**notebook_defaults(nb), **params}


def resolve_arch(arch: str) -> str:
    """timm's current name for `arch` (deprecated names like convnext_large_in22k map to name.tag)."""
    new = get_deprecated_models().get(arch)  # checked first: timm still registers the old names as shims
    if new:
        return new
    if timm.is_model(arch):
        return arch
    if "." in arch and timm.is_model(arch.split(".")[0]):
        return arch
    raise RoadtopError(f"unknown timm arch '{arch}': pick one from timm.list_models() (e.g. convnext_small)")


def _hw(size):
    """(height, width) of an int or [h, w] size."""
    return (size, size) if isinstance(size, int) else tuple(size)


def check_arch(arch: str, size, where: str):
    """Refuse an unknown timm arch, or a size that a fixed-input-size model (e.g. ViT 224) cannot take."""
    try:
        name = resolve_arch(arch)
    except RoadtopError as e:
        raise RoadtopError(f"{where}: {e}") from None
    cfg = timm.get_pretrained_cfg(name)
    if cfg is not None and cfg.fixed_input_size and _hw(size) != tuple(cfg.input_size[1:]):
        h, w = cfg.input_size[1:]
        raise RoadtopError(f"{where}: {arch} takes only {h}x{w} images (timm fixed_input_size), not size={size!r}: "
                           f"set size: {h if h == w else [h, w]}")
