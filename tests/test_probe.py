"""The GPU probe's mechanics (roadtop.probe): OOM caught and recorded, the 16 GB emulation, a real trial on CPU."""

import pytest
import torch
from test_accum import BUDGET, MARGIN, T

from roadtop import accum as accums
from roadtop import probe as probes


def test_oom_is_caught_recorded_and_the_probe_goes_on():
    freed = []

    def boom():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    rec = probes.guarded_trial(boom, 1, cleanup=lambda: freed.append(1))
    assert rec["status"] == "oom" and "out of memory" in rec["error"] and freed == [1]
    assert probes.is_oom(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    assert not probes.is_oom(ValueError("bad size"))
    fake, calls = {1: T(1, "oom"), 2: T(2, peak=12.0), 4: T(4, peak=8.0)}, []
    seen = probes.probe_run({"arch": "x"}, [1, 2, 4, 8], lambda a: (calls.append(a), fake[a])[1],
                            lambda r: accums.trial_fits(r, BUDGET, MARGIN))
    assert [r["accum"] for r in seen] == [1, 2]  # stopped at the first fit
    calls.clear()
    probes.probe_run({"arch": "x", "accum": 4}, [1, 2], lambda a: (calls.append(a), fake[a])[1],
                     lambda r: accums.trial_fits(r, BUDGET, MARGIN))
    assert calls == [1, 2, 4]  # an explicit accum is always measured

def test_budget_fraction_emulates_16gb_on_bigger_cards():
    assert probes.budget_fraction(16, 80 * 2**30) == pytest.approx(0.2)
    assert probes.budget_fraction(16, 12 * 2**30) == 1.0

def test_probe_trial_on_cpu_times_and_marks_memory_unmeasured(tiny_data):
    from roadtop.paddy import split_files

    trn, _ = split_files(tiny_data, 0.1, 42)
    files = probes.probe_files(trn, 0, probes.images_needed(1))
    assert len(files) == len(trn)  # the tiny set's smallest class is topped up with every other image
    rec = probes.probe_trial(tiny_data, files, {"arch": "test_resnet", "item_size": 64, "size": 32}, 2, steps=1)
    assert rec["status"] == "ok", rec["error"]
    assert rec["peak_reserved_gb"] is None and rec["s_per_img"] > 0 and rec["s_per_img_infer"] > 0
    assert rec["bs"] == 32 and rec["batches"] == 4  # warm-up step of 2 batches + 1 timed step of 2


def test_runs_with_the_same_spec_are_measured_once(monkeypatch):
    """The k folds of a run (same arch, sizes and accum) cost one measurement, and every fold gets its record."""
    calls = []
    monkeypatch.setattr(probes, "probe_trial", lambda path, files, spec, a, *rest: (calls.append((spec["arch"], a)),
                                                                                    T(a, peak=4.0))[1])
    spec = {"arch": "test_resnet", "item_method": "crop", "item_size": 64, "size": 32}
    runs = {f"res-fold{i}": dict(spec) for i in range(3)} | {"cnx": {**spec, "arch": "test_convnext"}}
    lines = []
    out = probes.probe_all(None, [], runs, [1, 2], progress=False, log=lines.append)
    assert calls == [("test_resnet", 1), ("test_convnext", 1)]  # stops at the first fit, once per distinct spec
    assert set(out) == set(runs) and out["res-fold2"]["trials"] == out["res-fold0"]["trials"]
    assert out["res-fold2"]["accum"] == out["res-fold0"]["accum"] == 1
    assert "as res-fold0, same spec" in out["res-fold1"]["reason"] and "same spec" not in out["cnx"]["reason"]
    assert len(lines) == 4
