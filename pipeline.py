#!/usr/bin/env python
"""roadtop's command line: run the notebook DAG with papermill (roadtop.dag.cli), push it to Kaggle (roadtop.kaggle.cli).

    python pipeline.py run | validate | status | check | plan   [--params params/demo.yaml] ...
    python pipeline.py kaggle push | status | collect | submit | weights
"""

import sys

from roadtop.dag import cli
from roadtop.kaggle.cli import add_subcommands
from roadtop.kaggle.settings import settings


def _kaggle(sub):
    """The `kaggle` command and its subcommands."""
    add_subcommands(sub.add_parser("kaggle", help="push runs as Kaggle kernels, poll, collect, submit"))


def main(argv=None) -> int:
    """`pipeline.py ARGS`: the local pipeline's commands plus `kaggle`."""
    return cli.main(argv, extra=[_kaggle], plan_checks=[settings])  # the kaggle: section is checked too


if __name__ == "__main__":
    sys.exit(main())
