"""The GPU probe's mechanics (roadtop.probe) and the probe notebook's lesson code: OOM caught and recorded, the
accum loop's stop rule, the 16 GB emulation, the notebook's train() timed on CPU, the split between the two."""

import re

import nbformat
import pytest
import torch
from test_accum import BUDGET, MARGIN, T

from roadtop import probe as probes
from roadtop.nbcode import export_cells, load
from roadtop.paths import NOTEBOOKS, ROOT


def test_oom_is_caught_recorded_and_the_probe_goes_on():
    def boom():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    rec = probes.guarded_trial(boom, 1)
    assert rec["status"] == "oom" and "out of memory" in rec["error"] and rec["bs"] == 64
    assert probes.is_oom(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    assert not probes.is_oom(ValueError("bad size"))
    assert probes.guarded_trial(lambda: 1 / 0, 2)["status"] == "error"


def test_the_accum_loop_stops_at_the_first_fit_once_the_runs_own_accum_is_measured():
    spec = {"arch": "x"}
    assert probes.accums_for(spec, [4, 1, 2]) == [1, 2, 4]
    assert not probes.enough([T(1, "oom")], spec, True, BUDGET, MARGIN)
    assert probes.enough([T(1, "oom"), T(2, peak=12.0)], spec, True, BUDGET, MARGIN)
    assert not probes.enough([T(1, "oom"), T(2, peak=12.0)], spec, False, BUDGET, MARGIN)  # measure every accum
    assert probes.enough([T(1, "error")], spec, False, BUDGET, MARGIN)  # a bad spec: another accum will not help
    own = {"arch": "x", "accum": 4}
    assert probes.accums_for(own, [1, 2]) == [1, 2, 4]  # an explicit accum is always measured
    assert not probes.enough([T(1, peak=3.0)], own, True, BUDGET, MARGIN)
    assert probes.enough([T(1, peak=3.0), T(2, peak=2.0), T(4, peak=1.0)], own, True, BUDGET, MARGIN)


def test_budget_fraction_emulates_16gb_on_bigger_cards():
    assert probes.budget_fraction(16, 80 * 2**30) == pytest.approx(0.2)
    assert probes.budget_fraction(16, 12 * 2**30) == 1.0


def test_runs_with_the_same_spec_are_found():
    """The k folds of a run (same arch, sizes and accum) cost one measurement: the loop finds the earlier record."""
    spec = {"arch": "test_resnet", "item_method": "crop", "item_size": 64, "size": 32}
    results = {"res-fold0": {"spec": dict(spec), "trials": [T(1)], "accum": 1, "reason": "r"}}
    assert probes.probed_as(results, dict(reversed(list(spec.items()))))[0] == "res-fold0"
    assert probes.probed_as(results, {**spec, "arch": "test_convnext"}) is None


def test_the_notebooks_train_is_timed_on_cpu_with_fastais_gradient_accumulation(tiny_data):
    """The probe notebook's own train() (its export cell) at accum 2: fastai's GradientAccumulation(64) attached,
    the meter stops it after a warm-up step and one timed step, memory marked unmeasured on CPU."""
    from fastai.vision.all import GradientAccumulation, Resize

    from roadtop.paddy import split_files

    train = load("probe.ipynb")["train"]
    trn, _ = split_files(tiny_data, 0.1, 42)
    files = trn * 2
    assert len(files) >= probes.images_needed(1)
    meter = probes.StepMeter(1)
    learn = train(tiny_data, files, "test_resnet", 32, Resize(64), accum=2, cbs=meter)
    assert any(isinstance(c, GradientAccumulation) and c.n_acc == 64 for c in learn.cbs)
    assert learn.dls.bs == 32
    speed = meter.speed()
    assert speed["s_per_img"] > 0 and speed["batches"] == 4 and speed["optimiser_steps"] == 2  # 2 warm-up + 2 timed
    assert probes.report_gpu() == {"peak_reserved_gb": None, "peak_allocated_gb": None}
    assert probes.infer_seconds(learn, 1) > 0


def test_the_lessons_probe_code_is_in_the_notebook_and_only_mechanics_in_the_module():
    cells = [c.source for c in nbformat.read(NOTEBOOKS / "probe.ipynb", as_version=4).cells if c.cell_type == "code"]
    code = "\n".join(cells)
    for shown in ("value_counts()", 'nbcode.load("train.ipynb")', "def train(", "learner(dls, arch, accum)",
                  "fit_one_cycle(", "gc.collect()", "torch.cuda.empty_cache()", "report_gpu()", "for accum in "):
        assert shown in code, shown
    assert re.search(r"learn = train\(path, files, ", code)  # the trial runs the notebook's train()
    for copied in ("DataBlock(", "vision_learner(", "GradientAccumulation(", "to_fp16("):  # train.ipynb's, not a copy
        assert copied not in code, copied
    lesson = "\n".join(export_cells("train.ipynb"))
    for defined in ("def dataloaders(", "def learner(", "GradientAccumulation(64)", "vision_learner(", "DataBlock("):
        assert defined in lesson, defined
    module = (ROOT / "roadtop" / "probe.py").read_text()
    for built in ("DataBlock", "dataloaders(", "vision_learner", "Learner(", "CancelBatchException",
                  "GradientAccumulation", "aug_transforms"):
        assert built not in module, built
