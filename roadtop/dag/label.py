"""`pipeline.py predict`: label a folder of new images with the plan's trained ensemble (its saved models)."""

import time
from pathlib import Path

import numpy as np
import pandas as pd

from .. import ensemble
from ..errors import RoadtopError
from ..paths import atomic_write
from .plan import DEFAULT_PLAN, load_plan
from .stages import stage

__all__ = ["label_images", "cmd_predict", "add_subcommand"]


def label_images(plan, images, bs: int = 0, log=print) -> pd.DataFrame:
    """image_id, label, probability for every image in `images`, by the ensemble's weighted mean of its members'
    TTA probabilities; every image and saved model is checked before anything is predicted."""
    from .. import model  # fastai.vision and timm: heavy, and only this command of the CLI needs them

    files = model.image_files(images)
    ens = next((j for j in plan.jobs if stage(j.stage).ensembles), None)
    if ens is None:
        raise RoadtopError(f"{plan.source.name} has no ensemble: section: add one and run the plan, then predict")
    choice = ensemble.load_choice(ens.out_dir)
    members = model.member_dirs(choice, [j.out_dir for j in plan.jobs if stage(j.stage).member])
    vocab = np.array(model.shared_vocab(members))
    probs = []
    for name, dirs in members.items():
        t0 = time.time()
        probs.append(np.mean([model.predict(model.load_model(d), files, bs) for d in dirs], 0))
        log(f"{name}: {len(dirs)} model(s), {len(files)} images in {time.time() - t0:.1f}s")
    avg = ensemble.weighted_mean(probs, np.array([choice["weights"][n] for n in members]))
    idxs = avg.argmax(1)
    return pd.DataFrame({"image_id": [f.name for f in files], "label": vocab[idxs],
                         "probability": avg[np.arange(len(files)), idxs].round(4)})


def cmd_predict(args) -> int:
    """Label --images with the plan's ensemble and write --out (default: <plan out_dir>/labels.csv) atomically."""
    plan = load_plan(args.params)
    out = Path(args.out) if args.out else plan.out_dir / "labels.csv"
    if out.suffix != ".csv":
        raise RoadtopError(f"--out {out}: name a .csv file to write")
    df = label_images(plan, args.images, args.bs)
    with atomic_write(out) as f:
        df.to_csv(f, index=False)
    print(f"{len(df)} image(s) labelled by {plan.name}'s ensemble: {out}")
    return 0


def add_subcommand(sub):
    """The `predict` command on the CLI's subparsers."""
    p = sub.add_parser("predict", help="label a folder of new images with the plan's trained ensemble")
    p.add_argument("--images", required=True, help="folder of images (.jpg/.png) to label")
    p.add_argument("--params", default=str(DEFAULT_PLAN), help="run plan YAML whose trained runs predict")
    p.add_argument("--out", default=None, help="CSV to write: image_id,label,probability (default: <out_dir>/labels.csv)")
    p.add_argument("--bs", type=int, default=0, help="batch size (default: each model's training batch size)")
    p.set_defaults(func=cmd_predict)
