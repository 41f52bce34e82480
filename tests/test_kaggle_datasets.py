"""The pretrained-weights dataset: packaging, creation of a new dataset (403), kernels that wait until it is ready."""

import io
import sys
from pathlib import Path

import pytest

from roadtop import weights
from roadtop.errors import RoadtopError
from roadtop.kaggle import client, datasets, flow, record, settings

sys.path.insert(0, str(Path(__file__).parent))
pytest.register_assert_rewrite("fake_kaggle")  # its helpers assert too
from fake_kaggle import USER, WEIGHTS, Sleeps, ref

pytest_plugins = ["fake_kaggle"]


def test_weights_command_packages_a_folder_as_a_dataset(plan, fake, tmp_path):
    src = tmp_path / "w"
    hf = src / "models--timm--test_vit.r160_in1k" / "snapshots" / "abc"  # a Hugging Face cache entry
    hf.mkdir(parents=True)
    (hf / "model.safetensors").write_bytes(b"vit")
    (src / "test_resnet.safetensors").write_bytes(b"resnet")
    (src / "test_resnet.pth").write_bytes(b"resnet-pth")  # the .safetensors wins
    (src / "test_convnext.r160_in1k.safetensors").write_bytes(b"convnext")
    del fake.datasets[WEIGHTS]  # a new dataset
    lines = []
    folder = datasets.package_weights(src, WEIGHTS, api=client.connect(), st=settings.settings(plan), dest=tmp_path / "all",
                                log=lines.append, sleep=Sleeps())
    assert sorted(p.name for p in folder.iterdir()) == [
        "dataset-metadata.json", "test_convnext.r160_in1k.safetensors", "test_resnet.safetensors",
        "test_vit.r160_in1k.safetensors"]
    assert weights.find_weights("test_vit", folder).read_bytes() == b"vit"
    (created,) = fake.calls("CreateDataset")
    assert (created["ownerSlug"], created["slug"], created["isPrivate"]) == (USER, "timm-weights", True)
    assert sorted(fake.uploads.values()) == [b"convnext", b"resnet", b"vit"]
    assert WEIGHTS in lines[-1]
    # with the plan's pretrained archs: just those, named as the plan names them; the dataset exists now
    folder = datasets.package_weights(src, WEIGHTS, ["test_convnext"], api=client.connect(), dest=tmp_path / "plan",
                                log=lines.append, sleep=Sleeps())
    assert sorted(p.name for p in folder.iterdir()) == ["dataset-metadata.json", "test_convnext.safetensors"]
    assert len(fake.calls("CreateDatasetVersion")) == 1
    with pytest.raises(RoadtopError, match="no weights for vit_base_patch16_224 in"):
        datasets.package_weights(src, WEIGHTS, ["vit_base_patch16_224"], upload=False, dest=tmp_path / "x")


# ---- a dataset that does not exist yet (403), one still processing -------------------------------------------
NEW = f"{USER}/roadtop-timm-weights"


def test_weights_on_a_new_dataset_are_created_waited_for_then_used(plan, fake, tmp_path):
    """GetDatasetStatus answers 403 for a dataset that does not exist: create it, poll until Kaggle has
    processed it, and only then push the kernels that read it."""
    plan.kaggle["weights_dataset"] = NEW
    fake.dataset_processing_s = 300
    src = tmp_path / "w"
    src.mkdir()
    (src / "test_convnext.safetensors").write_bytes(b"w")
    lines, sleeps = [], Sleeps()
    datasets.package_weights(src, NEW, ["test_convnext"], api=client.connect(), st=settings.settings(plan),
                             dest=tmp_path / "stage", log=lines.append, sleep=sleeps)
    methods = [r.method for r in fake.requests if r.method]
    assert methods[0] == "GetDatasetStatus" and "CreateDataset" in methods and "CreateDatasetVersion" not in methods
    assert sum(sleeps) >= 300 and f"weights: dataset {NEW} is ready" in lines[-1]
    assert flow.push(plan, runs=["train/convnext"], log=lines.append, sleep=Sleeps(), out=io.StringIO()) == 0
    (save,) = fake.calls("SaveKernel")
    assert save["datasetDataSources"] == [NEW]
    assert record.load_record(plan)["kernels"]["train/convnext"]["status"] == "QUEUED"
    last_status = max(i for i, r in enumerate(fake.requests) if r.method == "GetDatasetStatus")
    assert last_status < [r.method for r in fake.requests].index("SaveKernel")


def test_push_waits_for_a_dataset_still_processing_and_refuses_a_missing_one(plan, fake):
    plan.kaggle["weights_dataset"] = NEW
    lines = []
    assert flow.push(plan, runs=["train/*"], log=lines.append, sleep=Sleeps(), out=io.StringIO()) == 1
    assert any(ln.startswith(f"train/convnext: not pushed: dataset {NEW} does not exist on Kaggle: create it "
                             "with `pipeline.py kaggle weights FOLDER") for ln in lines)
    assert [s["slug"] for s in fake.calls("SaveKernel")] == [ref("train/resnet")]  # the run without it goes
    fake.add_dataset(NEW, ready_in=100)  # being processed
    fake.use_clock(run_s=50, queue_s=5)
    sleeps = Sleeps()
    assert flow.push(plan, runs=["train/convnext"], wait=True, log=lines.append, sleep=sleeps,
                     out=io.StringIO()) == 0
    t_push = next(t for t, r, _ in fake.pushes if r == ref("train/convnext"))
    assert t_push >= 100 and fake.calls("SaveKernel")[-1]["datasetDataSources"] == [NEW]


def test_a_kernel_that_lost_a_processing_dataset_is_failed_not_pushed(plan, fake):
    """SaveKernel drops a source that is still processing and runs the version anyway (invalidDatasetSources):
    that run is recorded as failed with the cause, so the next push sends it again."""
    plan.kaggle["datasets"] = ["someone-else/extra-images"]  # not ours: its status cannot be asked beforehand
    fake.add_dataset("someone-else/extra-images", ready_in=600)
    lines, out = [], io.StringIO()
    assert flow.push(plan, runs=["train/resnet"], log=lines.append, sleep=Sleeps(), out=out) == 1
    err = [ln for ln in lines if "not counted as pushed" in ln]
    assert len(err) == 1 and err[0].startswith(f"train/resnet: {ref('train/resnet')} v1 not counted as pushed: "
                                               "Kaggle could not attach someone-else/extra-images")
    rec = record.load_record(plan)["kernels"]["train/resnet"]
    assert rec["status"] == "RUN_FAILED" and "someone-else/extra-images" in rec["failure"]
    assert "failed (Kaggle could not attach" in out.getvalue()
    out = io.StringIO()
    assert flow.status(plan, once=True, out=out, log=lambda s: None, sleep=Sleeps()) == 1
    assert "failed (Kaggle could not attach" in out.getvalue()  # Kaggle's RUNNING does not hide it
    fake.tick(600)
    lines.clear()
    assert flow.push(plan, runs=["train/resnet"], log=lines.append, sleep=Sleeps(), out=io.StringIO()) == 0
    assert not any("already pushed" in ln for ln in lines)
    rec = record.load_record(plan)["kernels"]["train/resnet"]
    assert (rec["version"], rec["status"]) == (2, "QUEUED")
