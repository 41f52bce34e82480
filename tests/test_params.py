"""Plan and parameter checks: every bad value is refused before anything runs, in one clear line."""

import json

import nbformat
import papermill as pm
import pytest
import yaml
from conftest import ROOT, pipeline

from roadtop.dag.params import check_arch, notebook_params, validate_params
from roadtop.dag.plan import load_plan
from roadtop.errors import RoadtopError

TRAIN = ROOT / "notebooks" / "train.ipynb"


def test_parameters_cell_lists_names_types_and_help():
    p = notebook_params(TRAIN)
    assert p["epochs"]["inferred_type_name"] == "int"
    assert p["size"]["inferred_type_name"] == "Union[int, list]"
    assert all(v["help"] for v in p.values()), [k for k, v in p.items() if not v["help"]]


def test_papermill_injects_plan_params(tmp_path):
    """prepare_only: papermill writes the injected-parameters cell without starting a kernel."""
    plan = load_plan(ROOT / "params" / "paddy.yaml", out_dir=tmp_path)
    job = plan.job("train/vit_squish_224")
    out = tmp_path / "prepared.ipynb"
    pm.execute_notebook(str(TRAIN), str(out), parameters=job.params, prepare_only=True, progress_bar=False)
    nb = nbformat.read(out, as_version=4)
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    i = next(i for i, t in enumerate(tags) if "injected-parameters" in t)
    assert "parameters" in tags[i - 1]
    ns = {}
    exec(nb.cells[i].source, ns)
    assert ns["arch"] == "vit_large_patch16_224" and ns["accum"] == 2 and ns["size"] == 224
    assert ns["item_method"] == "squish" and ns["item_size"] == 480 and ns["pretrained"] is True
    assert ns["out_dir"] == str(tmp_path / "train" / "vit_squish_224")
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


def _plan(tmp_path, **runs):
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump({"train": {"runs": runs}}))
    return f


@pytest.mark.parametrize("run, message", [
    ({"arch": "test_resnet", "epoch": 3}, "unknown parameter 'epoch' for train.ipynb"),
    ({"arch": "test_resnet", "epochs": "3"}, "epochs='3' is str, but the notebook declares 'epochs: int'"),
    ({"arch": "test_resnet", "lr": True}, "lr=True is bool"),
    ({"arch": "test_resnet", "size": "big"}, "size='big' is str"),
    ({"arch": "convnext_gigantic"}, "unknown timm arch 'convnext_gigantic'"),
    ({"arch": "test_vit", "size": 128}, "test_vit takes only 160x160 images (timm fixed_input_size), not size=128"),
    ({"arch": "vit_large_patch16_224", "size": [320, 224]}, "set size: 224"),
    ({"arch": "test_resnet", "out_dir": "/tmp/x"}, "'out_dir' is set by the pipeline"),
])
def test_bad_run_params_refused(tmp_path, run, message):
    with pytest.raises(RoadtopError, match=None) as e:
        load_plan(_plan(tmp_path, r1=run))
    assert message in str(e.value) and "run 'r1'" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text, message", [
    ("train: {runs: {a: {arch: test_resnet}}}\nbogus: 1\n", "unknown section(s) ['bogus']"),
    ("train: {runs: {a: [1, 2]}}\n", "a run is a mapping"),
    ("train: {runs: {}}\n", "train.runs is empty"),
    ("train: {runs: {a: {arch: test_resnet}}}\ndata: {pth: x}\n", "unknown data key(s) ['pth']"),
    ("train: {runs: {a: {arch: test_resnet}\n", "not valid YAML"),
    ("ensemble: {weight: {a: 1}}\n", "unknown parameter 'weight' for ensemble.ipynb"),
])
def test_bad_plans_refused(tmp_path, text, message):
    f = tmp_path / "p.yaml"
    f.write_text(text)
    with pytest.raises(RoadtopError) as e:
        load_plan(f)
    assert message in str(e.value)


def test_cli_prints_one_error_line_and_exits_nonzero(tmp_path):
    f = _plan(tmp_path, r1={"arch": "test_vit", "size": 64})
    r = pipeline("run", "--params", f, "--out", tmp_path / "out", check=False)
    assert r.returncode == 2
    err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "test_vit takes only 160x160" in err[0]
    assert not (tmp_path / "out").exists()  # nothing ran, nothing written


def test_deprecated_timm_names_and_fixed_sizes_of_the_real_plan():
    check_arch("convnext_large_in22k", [320, 224], "x")  # not fixed-size: any size
    check_arch("swinv2_large_window12_192_22k", 192, "x")
    with pytest.raises(RoadtopError, match="takes only 192x192"):
        check_arch("swinv2_large_window12_192_22k", 224, "x")


def test_real_plan_is_jeremys_final_plan():
    plan = load_plan(ROOT / "params" / "paddy.yaml")
    runs = {j.name: j.params for j in plan.jobs if j.stage == "train"}
    assert {p["arch"] for p in runs.values()} == {"convnext_large_in22k", "vit_large_patch16_224",
                                                  "swinv2_large_window12_192_22k", "swin_large_patch4_window7_224"}
    assert len(runs) == 8 and all(p["epochs"] == 12 and p["pretrained"] for p in runs.values())
    assert plan.job("ensemble").params["weights"]["vit_large_patch16_224"] == 2


def test_validate_params_returns_defaults_plus_overrides():
    p = validate_params(TRAIN, {"epochs": 7}, "x")
    assert p["epochs"] == 7 and p["arch"] == json.loads(notebook_params(TRAIN)["arch"]["default"])
