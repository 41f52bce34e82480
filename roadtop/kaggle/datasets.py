"""The pretrained-weights dataset: stage weight files as <arch>.<ext> and create or version it on Kaggle."""

import json
import os
import re
import shutil
import time
from pathlib import Path

from ..errors import RoadtopError
from ..paths import atomic_write, default_out
from ..weights import WEIGHT_EXTS, find_weights, weight_name
from .client import KaggleCallError, call_kaggle, connect
from .settings import KaggleSettings, kernel_title

__all__ = ["package_weights", "wait_ready"]


def package_weights(src, dataset: str, archs=None, upload: bool = True, api=None, st=None, dest=None,
                    log=print, sleep=time.sleep) -> Path:
    """Stage the weights of `archs` found under `src` as <arch>.<ext> (all weight files when no archs; hard
    links) + dataset-metadata.json in `dest` (default outputs/kaggle/weights/<slug>), then create (or
    version) the Kaggle dataset `dataset` (owner/slug) from that folder."""
    src, st = Path(src).expanduser(), st or KaggleSettings()
    if not src.is_dir():
        raise RoadtopError(f"{src} is not a folder of weight files")
    if not re.fullmatch(r"[\w.-]+/[\w-]{6,50}", dataset or ""):
        raise RoadtopError(f"dataset '{dataset}' should be owner/slug, the slug 6-50 letters, digits or '-'")
    picked = {a: find_weights(a, src) for a in archs or []}  # named as the plan names the arch
    for p in [] if archs else sorted(src.rglob("*"), key=lambda p: (p.suffix not in WEIGHT_EXTS or
                                                                     WEIGHT_EXTS.index(p.suffix), str(p))):
        if p.suffix in WEIGHT_EXTS and p.is_file():
            picked.setdefault(weight_name(p), p)  # one file per model, .safetensors preferred
    if not picked:
        raise RoadtopError(f"{src} holds no weight files ({', '.join(WEIGHT_EXTS)}): save each model's "
                           "state_dict there as <arch>.safetensors (README: Kaggle)")
    slug = dataset.split("/")[1]
    folder = Path(dest) if dest else default_out("kaggle", "weights", slug)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name, p in picked.items():
        try:
            os.link(p.resolve(), folder / f"{name}{p.suffix}")
        except OSError:
            shutil.copy2(p.resolve(), folder / f"{name}{p.suffix}")
    files = sorted(t.name for t in folder.iterdir())
    meta = {"title": kernel_title(slug), "id": dataset, "licenses": [{"name": "other"}],
            "description": "Pretrained timm weights for roadtop's internet-off kernels; each model card "
                           "gives its license. Files: " + ", ".join(files)}
    with atomic_write(folder / "dataset-metadata.json") as f:
        json.dump(meta, f, indent=2)
    log(f"weights: {len(files)} files staged in {folder}: {', '.join(files)}")
    if not upload:
        return folder
    api = api or connect()
    kw = {"run": "weights", "st": st, "log": log, "sleep": sleep}
    exists = _status(api, dataset, kw) is not None
    if exists:
        resp = call_kaggle(api.dataset_create_version, str(folder), "roadtop weights", quiet=True,
                           what=f"new version of dataset {dataset}", **kw)
    else:
        resp = call_kaggle(api.dataset_create_new, str(folder), public=False, quiet=True,
                           what=f"creation of dataset {dataset}", **kw)
    if getattr(resp, "error", None):
        raise KaggleCallError(f"weights: Kaggle refused dataset {dataset}: {resp.error}")
    log(f"weights: dataset {dataset} {'updated' if exists else 'created'} ({getattr(resp, 'url', '')}); "
        f"waiting until Kaggle has processed it")
    wait_ready(api, dataset, st, log=log, sleep=sleep)
    log(f"weights: dataset {dataset} is ready; set kaggle.weights_dataset: {dataset} in the plan")
    return folder


def _status(api, dataset: str, kw: dict):
    """Kaggle's processing status of your dataset (lower case, e.g. 'ready'), None when it does not exist.
    GetDatasetStatus answers a dataset that does not exist with 403 "Permission 'datasets.get' was denied" (the
    message format of Kaggle/kaggle-cli#642), or 404 (Kaggle/kaggle-cli#368): both mean "create it"."""
    try:
        return str(call_kaggle(api.dataset_status, dataset, what=f"status of dataset {dataset}", **kw)).lower()
    except KaggleCallError as e:
        if e.code in (403, 404):
            return None
        raise


def wait_ready(api, dataset: str, st=None, log=print, sleep=time.sleep, polls: int = 120) -> None:
    """Poll your dataset until Kaggle has processed it (status 'ready'): a kernel pushed before then runs
    without it. A brand-new dataset may still answer 403/404 at first."""
    st = st or KaggleSettings()
    kw = {"run": "weights", "st": st, "log": log, "sleep": sleep}
    delay = max(1.0, min(st.poll_interval, 30.0))
    for _ in range(polls):
        s = _status(api, dataset, kw)
        if s == "ready":
            return
        if s in ("failed", "deleted"):
            raise KaggleCallError(f"weights: Kaggle could not process dataset {dataset} ({s}): run "
                                  "`pipeline.py kaggle weights` again")
        sleep(delay)
    raise KaggleCallError(f"weights: dataset {dataset} is still processing after {polls} polls: `pipeline.py "
                          "kaggle push` waits for it before pushing the kernels that read it")
