"""Kaggle kernels from a plan: kernel folders, parameters, the bootstrap cell, internet by competition kind."""

import ast
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from roadtop.dag.plan import load_plan
from roadtop.errors import RoadtopError
from roadtop.kaggle import flow, kernels, settings
from roadtop.paths import ROOT

sys.path.insert(0, str(Path(__file__).parent))
pytest.register_assert_rewrite("fake_kaggle")  # its helpers assert too
from fake_kaggle import USER, Sleeps, code_competition, params_of

pytest_plugins = ["fake_kaggle"]


def test_bootstrap_cell_brings_roadtop_into_a_bare_python(plan, fake, tmp_path):
    flow.push(plan, log=lambda s: None, sleep=Sleeps(), out=io.StringIO())
    nb = nbformat.reads(fake.calls("SaveKernel")[0]["text"], as_version=4)
    boot = nb.cells[1].source
    sent = sorted(m for m in kernels._modules(nb, ROOT / "roadtop"))  # what train.ipynb imports, and their imports
    assert {"train.py", "preds.py", "paddy.py"} <= set(sent)
    code = boot + "\nimport roadtop.paths\nprint(roadtop.paths.__file__)"
    # -I -S: no site-packages, so no installed roadtop: only the inline copy can answer the import
    r = subprocess.run([sys.executable, "-I", "-S", "-"], input=code, capture_output=True, text=True,
                       env={"TMPDIR": str(tmp_path)}, timeout=60, check=False)
    assert r.stdout.strip() == str(tmp_path / "roadtop-src" / "roadtop" / "paths.py"), r.stderr[-2000:]
    written = sorted(p.name for p in (tmp_path / "roadtop-src" / "roadtop").glob("*.py"))
    assert written == sent


def test_ensemble_kernel_runs_as_on_kaggle(plan, tmp_path, monkeypatch):
    """The pushed ensemble notebook, run in a Jupyter kernel that believes it is on Kaggle (/kaggle/ moved
    under tmp_path), inputs mounted the newer way (/kaggle/input/<kind>/<owner>/<slug>): roadtop comes from
    the bootstrap cell, the runs from the training kernels' outputs."""
    import numpy as np
    import pandas as pd
    import papermill as pm

    from roadtop import paddy, preds

    kag = tmp_path / "kaggle"
    data = paddy.make_demo(kag / "input" / "competitions" / settings.COMPETITION, 120, 12, size=(32, 48),
                           progress=False)
    trn, hold = paddy.split_files(data, 0.1, 42)
    tst = paddy.test_files(data)
    vocab = sorted({f.parent.name for f in trn + hold})
    rng = np.random.default_rng(0)
    for run in ("convnext", "resnet"):  # what the two training kernels would have saved
        probs = rng.dirichlet(np.ones(len(vocab)), len(tst)), rng.dirichlet(np.ones(len(vocab)), len(hold))
        p = preds.RunPreds(run, f"test_{run}", vocab, [f.name for f in tst], probs[0], [f.name for f in hold],
                           [f.parent.name for f in hold], probs[1])
        preds.save_preds(kag / "input" / "notebooks" / USER / f"roadtop-kdemo-train-{run}" / run, p)
    ens = kernels.build_kernels(plan, plan.jobs, USER, log=lambda s: None)[-1]
    nb = tmp_path / "ensemble.ipynb"
    nb.write_text((ens.folder / ens.meta["code_file"]).read_text().replace("/kaggle/", f"{kag}/"))
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")  # roadtop.paths.iskaggle() is True in the kernel
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    pm.execute_notebook(str(nb), str(tmp_path / "ensemble.out.ipynb"), cwd=str(tmp_path), progress_bar=False)
    sub = pd.read_csv(kag / "working" / "submission.csv", dtype=str)
    assert list(sub.image_id) == list(paddy.read_sample_submission(data).image_id)
    assert set(sub.label) <= set(vocab)
    assert (tmp_path / "roadtop-src" / "roadtop" / "ensemble.py").exists()


def test_params_are_refused_when_a_kernel_could_not_run(plan, tmp_path):
    st = settings.settings(plan)
    job = plan.job("train/convnext")
    slugs = {j.name: settings.kernel_slug(st.slug_prefix, j.name) for j in plan.jobs}
    with pytest.raises(RoadtopError, match="train/convnext: pretrained test_convnext on an internet-off kernel"):
        kernels.kaggle_params(job, slugs, settings.KaggleSettings(internet=False), {j.name: j for j in plan.jobs})
    job = job.with_params(item_method=str(tmp_path))
    with pytest.raises(RoadtopError, match="item_method=.* is a path on this machine"):
        kernels.kaggle_params(job, slugs, st, {j.name: j for j in plan.jobs})
    plan.kaggle["gpu"] = True
    with pytest.raises(RoadtopError, match="kaggle.gpu is unknown"):
        settings.settings(plan)


def test_dry_run_of_the_real_plan(tmp_path):
    plan = _real_plan(tmp_path, "  username: someone\n")
    lines = []
    assert flow.push(plan, dry_run=True, log=lines.append) == 0
    folders = sorted(p.parent.name for p in settings.kaggle_dir(plan).glob("*/kernel-metadata.json"))
    trains = [j for j in plan.jobs if j.stage in ("train", "multitarget")]
    assert len(folders) == len(trains) + 1 == 10
    meta = json.loads((settings.kaggle_dir(plan) / "roadtop-paddy-ensemble" / "kernel-metadata.json").read_text())
    assert meta["kernel_sources"] == [f"someone/roadtop-paddy-{settings.slugify(j.name)}" for j in trains]
    assert meta["enable_gpu"] is False and "machine_shape" not in meta
    text = (settings.kaggle_dir(plan) / "roadtop-paddy-ensemble" / "roadtop-paddy-ensemble.ipynb").read_text()
    _, p = params_of(text)
    assert p["weights"]["vit_large_patch16_224"] == 2 and len(p["run_dirs"]) == len(trains)


def _real_plan(tmp_path, extra="", packs=False):
    """params/paddy.yaml with its outputs under tmp_path (and `extra` YAML appended to its kaggle section)."""
    text = (ROOT / "params" / "paddy.yaml").read_text().replace("out_dir: outputs/", f"out_dir: {tmp_path}/")
    (tmp_path / "paddy.yaml").write_text(text + extra + ("" if packs else "  gpus_per_session: 1\n"))
    return load_plan(tmp_path / "paddy.yaml")


def test_training_kernel_is_readable_and_ships_only_what_it_imports(plan, fake):
    """The pushed training notebook opens on a one-line note, then a hidden cell of readable source: only
    the roadtop/*.py modules train.ipynb imports (never the pipeline's dag/ or the Kaggle kaggle/ code)."""
    flow.push(plan, runs=["train/resnet"], log=lambda s: None, sleep=Sleeps(), out=io.StringIO())
    nb = nbformat.reads(fake.calls("SaveKernel")[0]["text"], as_version=4)
    note, boot = nb.cells[0], nb.cells[1]
    assert note.cell_type == "markdown" and note.source == kernels.BOOTSTRAP_NOTE and "\n" not in note.source
    assert boot.metadata["_kg_hide-input"] is True and "roadtop-bootstrap" in boot.metadata["tags"]
    lines = boot.source.splitlines()
    assert len(lines) <= 1500, len(lines)
    shipped = set(re.findall(r"^_roadtop_src\['(\w+\.py)'\] = ", boot.source, re.MULTILINE))
    assert {"train.py", "paddy.py", "preds.py", "paths.py"} <= shipped
    assert not shipped & {"runner.py", "plan.py", "flow.py", "cli.py", "kernels.py", "budget.py"}
    assert all((ROOT / "roadtop" / m).exists() for m in shipped)  # the floor only: no dag/ or kaggle/ file
    train_src = (ROOT / "roadtop" / "train.py").read_text()
    assert train_src.splitlines()[5] in lines  # the module's own lines, readable, not an escaped one-liner
    assert "from .dag" not in boot.source and "roadtop.kaggle" not in boot.source


def _names(node, literal_names=frozenset()) -> bool:
    """True when `node` writes stage names out: a string, a tuple/list/set of strings (or set(...) / frozenset(...)
    of one), or a module-level name bound to such a literal."""
    if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("set", "frozenset", "tuple") and node.args:
        node = node.args[0]
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return bool(node.elts) and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts)
    return isinstance(node, ast.Name) and node.id in literal_names


def stage_name_tests(source: str) -> list:
    """Lines of `source` that compare a stage with names written out (`j.stage == "train"`, `"ensemble" == j.stage`,
    `j.stage in ("a", "b")`, `j.stage in SET` with SET = {"a", ...} at module level), in either order."""
    tree = ast.parse(source)
    literal_names = frozenset(t.id for n in tree.body if isinstance(n, ast.Assign) and _names(n.value)
                              for t in n.targets if isinstance(t, ast.Name))

    def is_stage(node):
        """`stage` or `<x>.stage`."""
        return getattr(node, "attr", None) == "stage" or getattr(node, "id", None) == "stage"

    hits = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Compare):
            sides = [n.left, *n.comparators]
            if any((is_stage(a) and _names(b, literal_names)) or (is_stage(b) and _names(a, literal_names))
                   for a, b in zip(sides, sides[1:])):
                hits.append(n.lineno)
    return hits


def test_the_stage_name_checker_catches_every_spelling():
    for bad in ('j.stage == "train"', '"ensemble" == j.stage', "ok = job.stage != 'probe'",
                'j.stage in ("train", "multitarget")', 'SET = {"train", "ensemble"}\nx = [j for j in js if j.stage in SET]',
                'GPU = frozenset({"train"})\nif stage not in GPU:\n    pass', 'x = 1 < 2 and "collab" != j.stage'):
        assert stage_name_tests(bad), bad
    for fine in ("stage(j.stage).gpu", 'predict = [n for n, s in STAGES.items() if s.predicts]\nx = j.stage in predict',
                 'j.name == "ensemble"', "j.stage == k.stage"):
        assert stage_name_tests(fine) == [], fine


def test_no_stage_names_are_tested_in_the_kaggle_code():
    """The Kaggle builder reads the stage facts (gpu, member, paddy, publishes) from roadtop.dag.stages."""
    for f in (ROOT / "roadtop" / "kaggle").glob("*.py"):
        assert stage_name_tests(f.read_text()) == [], f.name


def test_dry_run_of_the_real_plan_uses_the_hub_for_a_file_competition(tmp_path, monkeypatch):
    """params/paddy.yaml as shipped (no weights dataset): Paddy is a file competition, so its kernels have
    internet and timm fetches the pretrained weights; the owner comes from kaggle.json, offline."""
    plan = _real_plan(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_CONFIG_DIR", raising=False)
    with pytest.raises(RoadtopError, match="push --dry-run needs the owner"):
        flow.push(plan, dry_run=True, log=lambda s: None)
    (tmp_path / ".kaggle").mkdir()
    (tmp_path / ".kaggle" / "kaggle.json").write_text(json.dumps({"username": "someone", "key": "k"}))
    lines = []
    assert flow.push(plan, dry_run=True, log=lines.append) == 0
    assert "kaggle: internet on (file competition" in "\n".join(lines)
    kdir = settings.kaggle_dir(plan)
    meta = json.loads((kdir / "roadtop-paddy-train-vit-res-224" / "kernel-metadata.json").read_text())
    assert meta["id"] == "someone/roadtop-paddy-train-vit-res-224"
    assert meta["enable_internet"] is True and meta["dataset_sources"] == [] and meta["enable_gpu"] is True
    assert meta["machine_shape"] == "NvidiaTeslaT4"
    _, p = params_of((kdir / "roadtop-paddy-train-vit-res-224" / "roadtop-paddy-train-vit-res-224.ipynb").read_text())
    assert p["pretrained"] is True and p["weights_dir"] == ""  # "": timm downloads the weights
    (tmp_path / ".kaggle" / "kaggle.json").unlink()
    (tmp_path / ".kaggle" / "credentials.json").write_text(json.dumps({"username": "oauth-user"}))
    assert flow.push(plan, dry_run=True, log=lines.append) == 0  # `kaggle auth login`'s stored username
    assert json.loads((kdir / "roadtop-paddy-ensemble" / "kernel-metadata.json").read_text())["id"] == \
        "oauth-user/roadtop-paddy-ensemble"


def test_dry_run_of_a_code_competition_needs_the_weights_dataset(tmp_path):
    plan = code_competition(_real_plan(tmp_path, "  username: someone\n"))
    with pytest.raises(RoadtopError, match=r"^train/convnext_res_224: pretrained convnext_large_in22k on an "
                                           r"internet-off kernel \(code competition.*kaggle.weights_dataset is "
                                           r"not set: run `pipeline.py kaggle weights FOLDER --dataset "
                                           r"<you>/roadtop-timm-weights`"):
        flow.push(plan, dry_run=True, log=lambda s: None)
    plan = code_competition(_real_plan(tmp_path, "  username: someone\n  weights_dataset: someone/tw\n"))
    lines = []
    assert flow.push(plan, dry_run=True, log=lines.append) == 0
    assert "kaggle: internet off (code competition" in "\n".join(lines)
    meta = json.loads((settings.kaggle_dir(plan) / "roadtop-paddy-train-swin-res-224" / "kernel-metadata.json"
                       ).read_text())
    assert meta["enable_internet"] is False and meta["dataset_sources"] == ["someone/tw"]


def test_environment_yml_installs_the_pinned_torch_from_pip():
    """No pytorch/nvidia conda channel (nothing after 2.5.1 there): the env pip-installs requirements.txt."""
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"]
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    assert not [d for d in conda if d.split("=")[0] in ("pytorch", "torchvision", "pytorch-cuda")]
    (pip,) = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
    assert pip == ["-r requirements.txt", "-e ."]
    reqs = (ROOT / "requirements.txt").read_text()
    assert re.search(r"^torch==\d", reqs, re.MULTILINE) and re.search(r"^torchvision==\d", reqs, re.MULTILINE)


def test_dry_run_of_a_code_competition_writes_the_predict_kernel_kaggle_reruns(tmp_path):
    """The submission kernel of a code competition (params/paddy.yaml as shipped, its runs in GPU packs):
    predict.ipynb, offline, on a GPU, reading every training kernel's saved models and the ensemble kernel's
    weights, carrying only roadtop's notebook-floor modules."""
    plan = code_competition(_real_plan(tmp_path, "  username: someone\n  weights_dataset: someone/tw\n", packs=True))
    assert flow.push(plan, dry_run=True, log=lambda s: None) == 0
    kdir = settings.kaggle_dir(plan)
    meta = json.loads((kdir / "roadtop-paddy-predict" / "kernel-metadata.json").read_text())
    trains = sorted(f"someone/{p.parent.name}" for p in kdir.glob("*/kernel-metadata.json")
                    if json.loads(p.read_text())["enable_gpu"] and p.parent.name != "roadtop-paddy-predict")
    assert len(trains) == 5  # the 8 runs and the multi-target model, two runs a T4 x2 kernel
    assert meta["enable_internet"] is False and meta["enable_gpu"] is True
    assert meta["kernel_sources"] == trains + ["someone/roadtop-paddy-ensemble"]
    assert meta["competition_sources"] == ["paddy-disease-classification"]
    nb, p = params_of((kdir / "roadtop-paddy-predict" / "roadtop-paddy-predict.ipynb").read_text())
    assert p["out_dir"] == "/kaggle/working" and p["ensemble_dir"] == "/kaggle/input/roadtop-paddy-ensemble"
    runs = [j.out_dir.name for j in plan.jobs if j.stage in ("train", "multitarget")]
    assert [d.rsplit("/", 1)[1] for d in p["run_dirs"]] == runs and len(runs) == 9
    assert {d.rsplit("/", 2)[1] for d in p["run_dirs"]} == {t.split("/")[1] for t in trains}
    boot = nb.cells[1].source
    shipped = re.findall(r"_roadtop_src\['([\w.]+)'\]", boot)
    assert "model.py" in shipped and "ensemble.py" in shipped
    assert "roadtop.dag" not in boot and "roadtop.kaggle" not in boot and "from .dag" not in boot
    assert all((ROOT / "roadtop" / n).is_file() for n in shipped)  # the notebook floor only


def test_the_probe_kernel_carries_the_training_code_it_runs(tmp_path):
    """probe.ipynb trains with train.ipynb's export cells (roadtop.nbcode.load): its kernel's bootstrap writes them
    to notebooks/ beside the package, where nbcode looks, with the modules those cells import."""
    from roadtop.nbcode import export_cells
    from roadtop.paths import NOTEBOOKS

    nb = kernels.kernel_notebook(NOTEBOOKS / "probe.ipynb", {})
    boot = nb.cells[1].source
    assert "train.ipynb" in boot.splitlines()[0]  # the header says what it carries
    r = subprocess.run([sys.executable, "-I", "-S", "-"], input=boot, capture_output=True, text=True,
                       env={"TMPDIR": str(tmp_path)}, timeout=60, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    src = tmp_path / "roadtop-src"
    shipped = json.loads((src / "notebooks" / "train.ipynb").read_text())
    assert ["".join(c["source"]) for c in shipped["cells"]] == export_cells("train.ipynb")
    assert export_cells("train.ipynb", src / "notebooks") == export_cells("train.ipynb")  # what nbcode.load runs
    written = {p.name for p in (src / "roadtop").glob("*.py")}
    assert {"nbcode.py", "probe.py", "train.py", "preds.py", "accum.py"} <= written  # preds: train.ipynb's import
    assert kernels.kernel_notebook(NOTEBOOKS / "probe.ipynb", {}).cells[1].source == boot  # same text every push
