"""Check run parameters against a notebook's `parameters` cell before anything runs (papermill only warns)."""

import ast
from functools import lru_cache
from pathlib import Path

import papermill as pm
import timm
from timm.models._registry import get_deprecated_models

from ..errors import RoadtopError

__all__ = ["notebook_params", "notebook_defaults", "check_value", "validate_params", "resolve_arch", "check_arch"]

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


def check_value(name, value, info, where):
    """Raise RoadtopError unless `value` fits the declared type of parameter `name`."""
    default = ast.literal_eval(info["default"])
    allowed = _allowed(info.get("inferred_type_name"), default)
    if allowed is None:
        return
    ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
    if not ok:
        want = info.get("inferred_type_name") or type(default).__name__
        raise RoadtopError(f"{where}: {name}={value!r} is {type(value).__name__}, but the notebook declares "
                           f"'{name}: {want}': fix the value in the plan")


def validate_params(nb, params: dict, where: str) -> dict:
    """Every key known to the notebook and of its declared type; returns defaults updated with `params`."""
    declared = notebook_params(nb)
    for k, v in params.items():
        if k not in declared:
            known = ", ".join(sorted(declared))
            raise RoadtopError(f"{where}: unknown parameter '{k}' for {Path(nb).name} (it takes: {known})")
        check_value(k, v, declared[k], where)
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
