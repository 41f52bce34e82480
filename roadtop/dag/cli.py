"""The local pipeline's command line: run the notebook DAG with papermill, inspect it (`pipeline.py` adds `kaggle`).

    python pipeline.py run [--params params/demo.yaml] [--force] [--only JOB ...] [--allow-partial]
        [--gpus 0,1|auto]                            up to one job per card at once (default: one at a time)
        [--jobs N]                                   up to N jobs at once sharing this machine (e.g. CPU cores)
    python pipeline.py validate [--params FILE]      check a plan without running anything
    python pipeline.py status [--params FILE] [--allow-partial] [--skip-bad]
        each job: complete / stale (what changed) / failed (cause) / pending, as `run` would see it
    python pipeline.py check [--params FILE]         check the data and saved predictions, run nothing
    python pipeline.py plan [--params FILE] [--override]   accum, est. peak GiB and time per run vs the budget
    python pipeline.py predict --images DIR [--params FILE] [--out FILE.csv]   label new images with the ensemble
"""

import argparse
import os
import sys
import time

import torch

from .. import QUIET
from ..errors import RoadtopError
from .budget import check_plan
from .checks import SHOWN, check_paddy, check_runs_dirs
from .lock import run_lock
from .label import add_subcommand as add_predict
from .plan import DEFAULT_PLAN, load_plan, resolve_plan_data
from .records import MANIFEST, State
from .datafiles import scan
from .runner import check_out_dir, csv_columns, prepare_data, run_plan, walk
from .slots import parse_gpus, parse_jobs
from .stages import stage

__all__ = ["GPUS_HELP", "JOBS_HELP", "ONLY_HELP", "parser", "main"]

GPUS_HELP = ("run up to one job per card at once, each in its own process that sees only its card: 0,1 or auto "
             "(every visible card); without CUDA the numbers are slots, each job still told its card "
             "(default: one job at a time)")
JOBS_HELP = ("run up to N jobs at once, each in its own process with its share of the CPU threads, all seeing this "
             "machine's cards (e.g. --jobs 2 on a 2-core machine without a GPU; default: 1)")
ONLY_HELP = "just these jobs: names or globs, whole or after the stage (e.g. convnext_crop 'train/*' ensemble)"


def _plan(args):
    """The plan named by --params (with --out), checked by every check the entry point added."""
    plan = load_plan(args.params, getattr(args, "out", None))
    check_out_dir(plan.out_dir)
    for check in getattr(args, "plan_checks", ()):  # e.g. the kaggle: section's settings, from pipeline.py
        check(plan)
    return plan


def cmd_run(args) -> int:
    """Run the plan (only what is missing or changed, unless --force), one run at a time per output folder: one
    job at a time, one per card of --gpus, or --jobs at once."""
    if args.gpus and args.jobs:
        raise RoadtopError(f"--gpus {args.gpus} and --jobs {args.jobs}: give one of them (--gpus: one job per card; "
                           f"--jobs N: N jobs sharing this machine)")
    cards = (parse_jobs(args.jobs) if args.jobs else
             parse_gpus(args.gpus, torch.cuda.device_count() if args.gpus else None,
                        os.environ.get("CUDA_VISIBLE_DEVICES")))
    plan = _plan(args)
    with run_lock(plan.out_dir):
        return run_plan(plan, force=args.force, only=args.only, allow_partial=args.allow_partial,
                        skip_bad=args.skip_bad, cards=cards)


def cmd_check(args) -> int:
    """Check the plan's data (images, train.csv, test ids) and any saved runs, before GPU time is spent."""
    plan = _plan(args)
    data = resolve_plan_data(plan)
    probs = check_paddy(data, plan.data.get("labels"), columns=csv_columns(plan), files=scan(data))
    runs = {j.name: j.out_dir for j in plan.jobs if stage(j.stage).member and (j.out_dir / MANIFEST).exists()}
    probs += check_runs_dirs(runs)
    for p in probs[:SHOWN]:
        print(p)
    more = f", the first {SHOWN} listed" if len(probs) > SHOWN else ""
    print(f"{data}: {len(probs)} problem(s){more}; {len(runs)} saved run(s) checked")
    return 1 if probs else 0


def cmd_validate(args) -> int:
    """Check the plan and list its jobs."""
    plan = _plan(args)
    for j in plan.jobs:
        shown = {k: v for k, v in j.params.items() if k in ("arch", "item_method", "item_size", "size", "accum", "epochs")}
        print(f"{j.name:32s} {j.notebook.name:18s} {shown if shown else ''}")
    print(f"{plan.source}: OK, {len(plan.jobs)} jobs -> {plan.out_dir}")
    return 0


def cmd_plan(args) -> int:
    """Per run: accum, est. peak GPU memory and time from the probe; refuse a plan over budget unless --override."""
    return check_plan(_plan(args), override=args.override, checks=args.budget_checks)


def _status_line(step) -> tuple:
    """(state word, the rest) that `status` says of a step: when it finished, what changed, why it failed or
    waits (a waiting job, or one that cannot start yet, is pending)."""
    s, note = step.record, f" ({step.note})" if step.note else ""
    if s["state"] == State.FAILED:
        return "failed", s.get("cause", "") + note
    if step.state is State.CANNOT_START:
        return "pending", f"cannot start: {step.detail}"
    if step.state is State.WAITS:
        return "pending", f"waits: {step.detail}"
    if step.state is State.COMPLETE:
        return "complete", f"{s.get('seconds', 0):.0f}s, {s.get('finished', '')}{note}"
    if step.state is State.STALE:
        return "stale", f"changed: {'; '.join(s.get('changed') or ['?'])} (ran {s.get('finished', '')}){note}"
    return str(step.state), s.get("cause", "") + note


def cmd_status(args) -> int:
    """Each job: complete / stale (what changed) / failed (cause) / pending, from the fingerprints `run` computes."""
    plan = _plan(args)
    plan, _, data_fp = prepare_data(plan, skip_bad=args.skip_bad, check=False)
    steps = list(walk(plan, data_fp, allow_partial=args.allow_partial, projected=True))
    marked = {d: why for step in steps for d, why in step.bad.items()}  # the ensemble's check, after their own step
    for step in steps:
        word, extra = ("failed", marked[step.job.name]) if step.job.name in marked else _status_line(step)
        print(f"{step.job.name:32s} {word:9s} {extra}".rstrip())
    return 0


def parser(extra=(), plan_checks=(), budget_checks=()) -> argparse.ArgumentParser:
    """The CLI's argument parser; each of `extra` adds commands to its subparsers, each of `plan_checks(plan)`
    checks a loaded plan further (raising RoadtopError), each of `budget_checks` adds to `plan`'s budget check
    (see roadtop.dag.budget.check_plan)."""
    p = argparse.ArgumentParser(prog="pipeline.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def add(name, func, help):
        sp = sub.add_parser(name, help=help)
        sp.add_argument("--params", default=str(DEFAULT_PLAN), help="run plan YAML (default: params/demo.yaml)")
        sp.add_argument("--out", default=None, help="output folder (default: the plan's out_dir, else outputs/)")
        sp.set_defaults(func=func)
        return sp

    r = add("run", cmd_run, "run the plan's notebooks with papermill, then the ensemble")
    r.add_argument("--force", action="store_true", help="rerun jobs even when up to date")
    r.add_argument("--only", nargs="+", metavar="JOB", help=ONLY_HELP)
    r.add_argument("--allow-partial", action="store_true", help="ensemble the complete runs even if some failed")
    r.add_argument("--skip-bad", action="store_true", help="leave out bad images instead of stopping")
    r.add_argument("--gpus", metavar="CARDS", help=GPUS_HELP)
    r.add_argument("--jobs", metavar="N", help=JOBS_HELP)
    add("check", cmd_check, "check the data and saved runs, run nothing")
    add("validate", cmd_validate, "check the plan, run nothing")
    st = add("status", cmd_status, "each job: complete / stale (what changed) / failed (cause) / pending")
    st.add_argument("--allow-partial", action="store_true", help="as `run --allow-partial` would see the ensemble")
    st.add_argument("--skip-bad", action="store_true", help="as `run --skip-bad` would see the runs")
    pl = add("plan", cmd_plan, "from the memory probe: accum, est. peak GiB and time per run against the budget")
    pl.add_argument("--override", action="store_true", help="accept a plan over the time or memory budget")
    add_predict(sub)
    for add_more in extra:  # e.g. roadtop.kaggle.cli.add_subcommands, from pipeline.py
        add_more(sub)
    p.set_defaults(plan_checks=tuple(plan_checks), budget_checks=tuple(budget_checks))
    return p


def main(argv=None, extra=(), plan_checks=(), budget_checks=()) -> int:
    """Entry point: one clear line and exit code 2 on bad input."""
    # the notebook kernels papermill starts inherit this: the same narrow filters as this process (roadtop.QUIET),
    # a PYTHONWARNINGS the user set coming after them, so it wins
    os.environ["PYTHONWARNINGS"] = ",".join([*QUIET, *filter(None, [os.environ.get("PYTHONWARNINGS")])])
    args = parser(extra, plan_checks, budget_checks).parse_args(argv)
    t0 = time.time()
    try:
        return args.func(args)
    except RoadtopError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a write outside any job failed (the data check's cache on a full disk, ...)
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}: free space or fix permissions, then rerun (complete jobs are "
              f"skipped)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted after {time.time() - t0:.0f}s; rerun to finish what is missing", file=sys.stderr)
        return 130

