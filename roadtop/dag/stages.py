"""The pipeline's stages, declared once: what each one runs, what it needs, and what it is.

Every part that has to know about stages (the planner, the runner, the budget, the Kaggle builder, `status`)
reads this table instead of testing `stage == ...` itself.
"""

from dataclasses import dataclass

__all__ = ["Stage", "STAGES", "ORDER", "stage", "names"]


@dataclass(frozen=True)
class Stage:
    """One stage of the DAG: its notebook, the stages it reads, and what kind of job it is."""

    name: str
    notebook: str  # file name under notebooks/
    upstream: tuple = ()  # stages whose jobs run first and whose outputs it reads (when the plan has them)
    many: bool = False  # the plan's section holds named runs (train: {defaults, runs}), one job each
    trains: bool = False  # trains a model: takes `accum`, is measured by the probe
    models: int = 1  # models a job of it trains, each for the run's epochs (what its expected time counts)
    gpu: bool = False  # wants a GPU (on Kaggle: enable_gpu)
    paddy: bool = False  # reads the Paddy data (the data check runs first)
    member: bool = False  # its saved predictions feed the ensemble
    measures: bool = False  # measures the training stages' runs: gets their specs as `runs`; `accum: auto` reads it
    publishes: tuple = ()  # files copied to the plan's output folder when it completes
    predicts: bool = False  # predicts with its upstream runs' saved models and the ensemble's weights (ensemble_dir)
    csv_columns: tuple = ()  # train.csv columns besides image_id it relies on (the data check requires them)

    @property
    def ensembles(self) -> bool:
        """True when it reads the saved predictions of member stages (its upstream runs are ensemble members)."""
        return not self.predicts and any(STAGES[u].member for u in self.upstream)


# In execution order. The probe sizes the runs, the runs feed the ensemble, whose saved models and weights predict
# the test images present when it runs (a code competition's rerun); collab stands alone.
STAGES = {s.name: s for s in (
    Stage("probe", "probe.ipynb", gpu=True, paddy=True, measures=True),
    Stage("train", "train.ipynb", ("probe",), many=True, trains=True, gpu=True, paddy=True, member=True,
          csv_columns=("label",)),
    Stage("multitarget", "multitarget.ipynb", ("probe",), trains=True, models=2, gpu=True, paddy=True, member=True,
          csv_columns=("label", "variety")),
    Stage("collab", "collab.ipynb"),
    Stage("ensemble", "ensemble.ipynb", ("train", "multitarget"), paddy=True, publishes=("submission.csv",)),
    Stage("predict", "predict.ipynb", ("train", "multitarget", "ensemble"), gpu=True, paddy=True, predicts=True),
)}
ORDER = tuple(STAGES)


def stage(name: str) -> Stage:
    """The stage called `name` (KeyError names the known ones)."""
    try:
        return STAGES[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}: the stages are {', '.join(ORDER)}") from None


def names(**flags) -> tuple:
    """The names of the stages, in order, whose fields equal `flags`, e.g. names(trains=True)."""
    return tuple(n for n, s in STAGES.items() if all(getattr(s, k) == v for k, v in flags.items()))
