"""The prediction step: predict.ipynb in the demo, Kaggle's rerun of it on a hidden test set, pipeline.py predict."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import DEMO, ROOT, pipeline
from offline import offline_env, offline_marker

from roadtop import ensemble, paddy
from roadtop.dag import cli
from roadtop.dag.plan import load_plan
from roadtop.kaggle import flow, kernels, settings

# TTA draws random augmentations (flips, rotations, zooms, lighting) for each pass, so two TTA predictions of the
# same image by the same models differ a little, and an image whose two likeliest classes are nearly tied can flip.
# On the demo's 100 test images that is at most 2 of them; more would mean the models or the weights differ.
AGREE = 0.98


def agreement(a: pd.DataFrame, b: pd.DataFrame) -> float:
    """Share of image ids given the same label by two submissions with the same ids."""
    assert sorted(a.image_id) == sorted(b.image_id)
    return float((a.set_index("image_id").label == b.set_index("image_id").label.loc[a.image_id].values).mean())


def test_predict_notebook_agrees_with_the_ensembles_submission(demo):
    """The demo's predict job re-predicts the public test images from the saved models: the same submission up
    to TTA's randomness, in sample_submission.csv's order; the submitted file stays the ensemble's."""
    plan, out, r, data = demo
    assert "predict: done" in r.stdout
    ens = pd.read_csv(out / "submission.csv", dtype=str)
    pred = pd.read_csv(out / "predict" / "submission.csv", dtype=str)
    assert list(pred.image_id) == list(paddy.read_sample_submission(data).image_id)
    assert ens.equals(pd.read_csv(out / "ensemble" / "submission.csv", dtype=str))  # published: the ensemble's
    assert agreement(pred, ens) >= AGREE
    text = (out / "predict" / "predict.ipynb").read_text()
    choice = ensemble.load_choice(out / "ensemble")
    members = [n for n in choice["runs"] if choice["weights"][n] > 0]  # a weight-0 member is not predicted
    assert members
    for name in members:  # a progress line per member
        assert f"{name}: 1 model(s), {len(pred)} images in" in text


def _hidden_test_set(comp, n: int, seed: int):
    """A competition folder with a different test set: new images from the generator (another seed), new ids,
    a new sample_submission.csv; returns its true labels by id."""
    src = paddy.make_demo(comp.parent / "gen", n_train=n, n_test=10, size=(96, 128), seed=seed, progress=False)
    shutil.copytree(src, comp)
    shutil.rmtree(comp / "test_images")
    (comp / "test_images").mkdir()
    files = sorted((src / "train_images").glob("*/*.jpg"))
    order = np.random.default_rng(seed).permutation(len(files))
    labels = {}
    for k, i in enumerate(order):  # ids the public set never had, listed in no sorted order
        iid = f"{700001 + 7 * k}.jpg"
        shutil.copy(files[i], comp / "test_images" / iid)
        labels[iid] = files[i].parent.name
    ids = list(labels)[::-1]
    pd.DataFrame({"image_id": ids, "label": "blast"}).to_csv(comp / "sample_submission.csv", index=False)
    return labels


def test_kaggle_rerun_of_the_code_competition_kernel_on_a_hidden_test_set(demo, tmp_path, monkeypatch):
    """The submission kernel exactly as `kaggle push` writes it, run with papermill as Kaggle's rerun does:
    offline (any non-loopback socket raises), inputs mounted the newer way, a competition folder whose test set
    is another one: its submission has the hidden ids in order and the ensemble's accuracy."""
    import papermill as pm

    plan, out, _, _ = demo
    yaml_text = DEMO.read_text() + "kaggle: {code_competition: true, username: someone}\n"
    (tmp_path / "demo.yaml").write_text(yaml_text)
    kplan = load_plan(tmp_path / "demo.yaml", tmp_path / "push")
    assert flow.push(kplan, dry_run=True, log=lambda s: None) == 0
    st = settings.settings(kplan)
    kdir = settings.kaggle_dir(kplan) / settings.kernel_slug(st.slug_prefix, "predict")
    meta = json.loads((kdir / "kernel-metadata.json").read_text())
    assert meta["enable_internet"] is False and meta["enable_gpu"] is True

    kag = tmp_path / "kaggle"
    labels = _hidden_test_set(kag / "input" / "competitions" / paddy.COMPETITION, 300, seed=7)
    built = {k.slug: k for k in kernels.build_kernels(kplan, kernels.select_jobs(kplan, None, st), "someone", st, {},
                                                        write=False, log=lambda s: None,
                                                        seconds=flow.gpu_seconds(kplan))}
    for src in meta["kernel_sources"]:  # each source kernel's output, where a newer session mounts it
        owner, slug = src.split("/")
        dest = kag / "input" / "notebooks" / owner / slug
        for job in built[slug].jobs:  # a GPU pack's kernel holds each of its runs in a folder of its own
            local = out / job.out_dir.relative_to(kplan.out_dir)
            if job.stage == "ensemble":
                shutil.copytree(local, dest)
            else:
                shutil.copytree(local, dest / local.name, ignore=shutil.ignore_patterns("preds.npz", "*.ipynb"))
    nb = tmp_path / "rerun.ipynb"
    nb.write_text((kdir / meta["code_file"]).read_text().replace("/kaggle/", f"{kag}/"))
    env = offline_marker(offline_env(tmp_path / "site", tmp_path / "no-roadtop-here"), tmp_path / "offline.pids")
    for k in ("PYTHONPATH", "ROADTOP_OFFLINE_MARK"):
        monkeypatch.setenv(k, env[k])
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    pm.execute_notebook(str(nb), str(tmp_path / "rerun.out.ipynb"), cwd=str(tmp_path), progress_bar=False)
    assert (tmp_path / "offline.pids").read_text().strip()  # the kernel ran with the network guard
    assert (tmp_path / "roadtop-src" / "roadtop" / "model.py").exists()  # roadtop came from the bootstrap cell

    sub = pd.read_csv(kag / "working" / "submission.csv", dtype=str)
    hidden = pd.read_csv(kag / "input" / "competitions" / paddy.COMPETITION / "sample_submission.csv", dtype=str)
    assert list(sub.image_id) == list(hidden.image_id)
    acc = float((sub.label == sub.image_id.map(labels)).mean())
    table = pd.read_csv(out / "ensemble" / "holdout.csv")
    holdout_acc = float(table.loc[table.run == "ensemble", "holdout_accuracy"].iloc[0])
    assert abs(acc - holdout_acc) <= 0.05, (acc, holdout_acc)


def _copies(data, folder, n=12):
    """`n` demo test images copied under new names into `folder`; returns {new name: original id}."""
    folder.mkdir(parents=True)
    names = {}
    for k, f in enumerate(sorted((data / "test_images").iterdir())[:n]):
        names[f"leaf-{k:02d}.jpg"] = f.name
        shutil.copy(f, folder / f"leaf-{k:02d}.jpg")
    return names


def _demo_plan(out, tmp_path):
    """The demo plan with its outputs at `out` (where the demo fixture ran)."""
    f = tmp_path / "demo-here.yaml"
    f.write_text(DEMO.read_text() + f"out_dir: {out}\n")
    return f


def test_pipeline_predict_labels_a_folder_of_new_images(demo, tmp_path):
    plan, out, _, data = demo
    names = _copies(data, tmp_path / "photos")
    csv = tmp_path / "labels.csv"
    r = pipeline("predict", "--images", tmp_path / "photos", "--params", _demo_plan(out, tmp_path), "--out", csv)
    assert f"12 image(s) labelled by demo's ensemble: {csv}" in r.stdout
    got = pd.read_csv(csv, dtype={"image_id": str, "label": str})
    assert list(got.columns) == ["image_id", "label", "probability"]
    assert list(got.image_id) == sorted(names)  # one row per image
    vocab = json.loads((out / "train" / "vit_squish" / "model.json").read_text())["vocab"]
    assert set(got.label) <= set(vocab) and got.probability.between(1 / len(vocab), 1).all()
    ens = pd.read_csv(out / "submission.csv", dtype=str).set_index("image_id").label
    same = (got.label.to_numpy() == ens.loc[[names[i] for i in got.image_id]].to_numpy()).mean()
    assert same >= 11 / 12  # TTA's randomness may flip a near tie (see AGREE)


@pytest.mark.parametrize("case", ["corrupt", "not an image", "empty", "no runs"])
def test_pipeline_predict_bad_input_is_one_line_and_writes_nothing(demo, tmp_path, capsys, case):
    plan, out, _, data = demo
    photos = tmp_path / "photos"
    _copies(data, photos, n=3)
    params = _demo_plan(out, tmp_path)
    if case == "corrupt":
        bad = photos / "leaf-01.jpg"
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # truncated
        want = f"error: {bad} is not a readable image (corrupt or truncated): replace or remove it"
    elif case == "not an image":
        (photos / "notes.txt").write_text("hello")
        want = f"error: {photos / 'notes.txt'} is not an image (.jpg/.png ...): move it out of {photos}"
    elif case == "empty":
        shutil.rmtree(photos)
        photos.mkdir()
        want = f"error: {photos} holds no images: put the .jpg/.png photos to label in it"
    else:
        params = _demo_plan(tmp_path / "never-ran", tmp_path)
        want = (f"error: {tmp_path / 'never-ran' / 'ensemble' / 'ensemble.json'} is missing: run the ensemble "
                f"notebook (or `python pipeline.py run`) first")
    csv = tmp_path / "labels.csv"
    assert cli.main(["predict", "--images", str(photos), "--params", str(params), "--out", str(csv)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == want and err.count("\n") == 1
    assert not csv.exists() and not list(tmp_path.glob(".labels.csv*"))
