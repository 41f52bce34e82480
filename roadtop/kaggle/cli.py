"""`pipeline.py kaggle run | push | status | collect | submit | weights`."""

import argparse
from pathlib import Path

from ..dag.cli import ONLY_HELP
from ..dag.plan import load_plan
from ..errors import RoadtopError
from .datasets import package_weights
from .flow import collect, push, run, status, submit
from .settings import settings

__all__ = ["add_subcommands"]

OVERRIDE = "push even when the probe's estimate exceeds the weekly GPU quota left (Kaggle's quota_view)"
FORCE_RUNNING = ("push a new version of a kernel even while its last one is queued or running (Kaggle does not "
                 "stop that one: both sessions are billed)")


def _plan(args):
    """The plan named by --params (the default plan when none), with --out applied."""
    return load_plan(getattr(args, "params", None), getattr(args, "out", None))


def _cmd_push(args) -> int:
    """`kaggle push` (with --wait --submit: as `kaggle run --submit`)."""
    if args.submit and not args.dry_run:
        if not args.wait:
            raise RoadtopError("push --submit needs --wait (or use `pipeline.py kaggle run --submit`)")
        return run(_plan(args), args.only, force=args.force, submit_it=True, message=args.message,
                   force_running=args.force_running, override=args.override)
    return push(_plan(args), args.only, force=args.force, wait=args.wait, dry_run=args.dry_run,
                force_running=args.force_running, override=args.override)


def _cmd_run(args) -> int:
    """`kaggle run`: the whole plan."""
    return run(_plan(args), args.only, force=args.force, submit_it=args.submit, message=args.message,
               force_running=args.force_running, override=args.override)


def _cmd_status(args) -> int:
    """`kaggle status`."""
    return status(_plan(args), args.only, once=args.once, interval=args.interval)


def _cmd_collect(args) -> int:
    """`kaggle collect`."""
    return collect(_plan(args), args.only, replace=args.replace)


def _cmd_submit(args) -> int:
    """`kaggle submit`."""
    return submit(_plan(args), args.message)


def _cmd_weights(args) -> int:
    """`kaggle weights`: the weights of the plan's pretrained archs (or all found) as a Kaggle dataset."""
    plan = _plan(args)
    dataset = args.dataset or settings(plan).weights_dataset
    if not dataset:
        raise RoadtopError("name the dataset: --dataset owner/slug (or kaggle.weights_dataset in the plan)")
    archs = sorted({j.params["arch"] for j in plan.jobs if j.params.get("pretrained") and "arch" in j.params})
    dest = Path(plan.out_dir) / "kaggle" / "weights" / dataset.split("/")[-1]
    package_weights(args.folder, dataset, archs, upload=not args.no_upload, st=settings(plan), dest=dest)
    return 0


def add_subcommands(parser):
    """Add run/push/status/collect/submit/weights under `parser` (pipeline.py's `kaggle`), each with func(args)
    -> exit code. Failures raise RoadtopError (one line), which pipeline.py prints."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", default=argparse.SUPPRESS, help="plan YAML (default: params/demo.yaml)")
    common.add_argument("--out", default=argparse.SUPPRESS, help="output folder (default: the plan's)")
    runs = argparse.ArgumentParser(add_help=False)
    runs.add_argument("--only", "--runs", nargs="+", dest="only", metavar="JOB", help=ONLY_HELP)
    sub = parser.add_subparsers(dest="kaggle_cmd", metavar="{run,push,status,collect,submit,weights}",
                                required=True)

    p = sub.add_parser("run", parents=[common, runs], help="the whole plan: push under the GPU session cap "
                       "until all end, collect, (--submit) submit; rerun to resume")
    p.add_argument("--force", action="store_true", help="push new versions even if nothing changed")
    p.add_argument("--force-running", action="store_true", help=FORCE_RUNNING)
    p.add_argument("--override", action="store_true", help=OVERRIDE)
    p.add_argument("--submit", action="store_true", help="submit the ensemble once everything is COMPLETE")
    p.add_argument("--message", "-m", help="submission description")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("push", parents=[common, runs], help="push each run as a Kaggle kernel, at most "
                       "kaggle.max_gpu_sessions GPU kernels at once")
    p.add_argument("--force", action="store_true", help="push a new version even if nothing changed")
    p.add_argument("--force-running", action="store_true", help=FORCE_RUNNING)
    p.add_argument("--override", action="store_true", help=OVERRIDE)
    p.add_argument("--wait", action="store_true", help="keep polling and pushing (free GPU sessions, runs "
                   "whose sources COMPLETE) until every kernel has ended")
    p.add_argument("--submit", action="store_true", help="with --wait: collect, then submit the ensemble")
    p.add_argument("--message", "-m", help="submission description (--submit)")
    p.add_argument("--dry-run", action="store_true", help="only build the kernel folders under outputs/")
    p.set_defaults(func=_cmd_push)

    p = sub.add_parser("status", parents=[common, runs], help="poll the pushed kernels, live table")
    p.add_argument("--once", action="store_true", help="one poll, then exit")
    p.add_argument("--interval", type=float, help="seconds between polls (default: kaggle.poll_interval)")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("collect", parents=[common, runs], help="download kernel outputs into outputs/")
    p.add_argument("--replace", action="store_true", help="install over a run's local results")
    p.set_defaults(func=_cmd_collect)

    p = sub.add_parser("submit", parents=[common], help="submit the ensemble (code or file competition)")
    p.add_argument("--message", "-m", help="submission description")
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser("weights", parents=[common], help="the plan's pretrained weights as a Kaggle dataset")
    p.add_argument("folder", help="folder of <arch>.safetensors files (or a Hugging Face cache folder)")
    p.add_argument("--dataset", help="owner/slug (default: kaggle.weights_dataset of the plan)")
    p.add_argument("--no-upload", action="store_true", help="only stage the dataset folder under outputs/")
    p.set_defaults(func=_cmd_weights)
    return parser
