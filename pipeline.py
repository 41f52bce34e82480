#!/usr/bin/env python
"""roadtop's command line: run the notebook DAG with papermill (roadtop.dag.cli), push it to Kaggle (roadtop.kaggle.cli).

    python pipeline.py run | validate | status | check | plan   [--params params/demo.yaml] ...
    python pipeline.py kaggle push | status | collect | submit | weights
"""

import sys

try:  # torch, fastai and timm take seconds to import: a Ctrl-C then is one line too
    from roadtop.dag import cli
    from roadtop.kaggle.budget import kaggle_budget
    from roadtop.kaggle.cli import add_subcommands
    from roadtop.kaggle.settings import settings
except KeyboardInterrupt:
    print("interrupted while starting; nothing was run", file=sys.stderr)
    sys.exit(130)


def _kaggle(sub):
    """The `kaggle` command and its subcommands."""
    add_subcommands(sub.add_parser("kaggle", help="push runs as Kaggle kernels, poll, collect, submit"))


def main(argv=None) -> int:
    """`pipeline.py ARGS`: the local pipeline's commands plus `kaggle`."""
    # the kaggle: section is checked by every command, and `plan` adds the Kaggle fan-out to its budget
    return cli.main(argv, extra=[_kaggle], plan_checks=[settings], budget_checks=[kaggle_budget])


if __name__ == "__main__":
    sys.exit(main())
