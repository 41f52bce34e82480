"""outputs/report.html of `make demo` (conftest's `demo` run): what it contains, images decode, links resolve, the
holdout table is holdout.csv, a failed job shows its cause; and, without the demo, charts picked by cell tags."""

import base64
import io
import json
from collections import Counter
from dataclasses import replace
from types import SimpleNamespace

import nbformat
import pandas as pd
import pytest
from bs4 import BeautifulSoup
from conftest import ROOT
from PIL import Image

from roadtop.dag.plan import Job
from roadtop.dag.records import record_failure
from roadtop.clock import hms
from roadtop.dag.report import FIGURES, figures, write_report


@pytest.fixture(scope="module")
def report(demo):
    plan, out, r, _ = demo
    page = out / "report.html"
    return plan, r, page, BeautifulSoup(page.read_text(), "html.parser")


def _trains(plan) -> list:
    return [j.name for j in plan.jobs if j.stage == "train"]


def test_report_is_linked_from_the_run_and_holds_every_part(report):
    plan, r, page, soup = report
    assert r.stdout.rstrip().endswith(f"report: {page}")
    assert soup.title.text == f"{plan.name}: run report" and soup.h1.text == f"Run report: {plan.name}"
    own = [h.text for h in soup.find_all("h2", id=True) if "\u00b6" not in h.text]  # not the notebooks' headings
    assert own == [
        "Jobs", "Members and ensembles on the holdout", "Charts", "Executed notebooks", "The plan"]
    assert soup.find("pre", id="plan").text == plan.source.read_text()  # the plan, verbatim (escaped, so it reads back as is)
    sections = {s["id"]: s for s in soup.find_all("section", class_="notebook")}
    for job in plan.jobs:  # every job's executed notebook, its cells' source included
        sec = sections[f"nb-{job.name.replace('/', '-')}"]
        assert sec.h2.text == job.name and "# Parameters" in sec.text  # papermill's injected cell, as executed


def test_every_image_is_embedded_and_decodes(report):
    plan, _, _, soup = report
    imgs = soup.find_all("img")
    for img in imgs:
        head, _, data = img["src"].partition(",")
        assert head == "data:image/png;base64", img["src"][:40]
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            im.verify()
            assert im.size[0] > 50 and im.size[1] > 50
    charts = {h.text: h for h in soup.find_all("h3")}
    for title in ("Memory probe", "Loss curves", "Ensemble weights", "Holdout accuracy",
                  "Confusion matrix of the submitted ensemble (holdout)"):
        assert title in charts, title
    captions = [c.text for c in soup.find_all("figcaption")]
    assert set(_trains(plan)) <= set(captions) and captions.count("probe") == 1
    assert len(imgs) > len(captions)  # the notebooks below carry their own figures too


def test_every_link_resolves_and_ids_are_unique(report):
    plan, _, page, soup = report
    ids = [t["id"] for t in soup.find_all(id=True)]
    assert not [i for i, n in Counter(ids).items() if n > 1]
    links = [a["href"] for a in soup.find_all("a", href=True)]
    assert links
    for href in links:
        if href.startswith("#"):
            assert href[1:] in ids, href
        else:
            assert (page.parent / href).exists(), href
    for job in plan.jobs:  # each job's row links to its executed notebook, rendered below
        assert soup.find(id="jobs").find("a", string=job.name)["href"] == f"#nb-{job.name.replace('/', '-')}"


def test_jobs_table_shows_state_and_time(report):
    plan, _, _, soup = report
    rows = [[td.text for td in tr.find_all("td")] for tr in soup.find(id="jobs").find_all("tr")[1:]]
    assert [r[0] for r in rows] == [j.name for j in plan.jobs]
    assert rows[0][0] == "probe" and rows[-2:] == [r for r in rows if r[0] in ("ensemble", "predict")] and len(_trains(plan)) >= 3
    took = [json.loads((j.out_dir / "manifest.json").read_text())["seconds"] for j in plan.jobs]
    assert [r[2] for r in rows] == ["complete"] * len(rows) and [r[3] for r in rows] == [hms(t) for t in took]


def test_holdout_table_matches_holdout_csv(report):
    plan, _, _, soup = report
    csv = pd.read_csv(plan.job("ensemble").out_dir / "holdout.csv", keep_default_na=False, na_values=[""])
    table = soup.find("table", id="holdout")
    head = [th.text for th in table.find("thead").find_all("th")]
    rows = [[td.text for td in tr.find_all("td")] for tr in table.find("tbody").find_all("tr")]
    assert head == list(csv.columns) and len(rows) == len(csv)
    for row, (_, want) in zip(rows, csv.iterrows()):
        for got, col in zip(row, csv.columns):
            if pd.api.types.is_numeric_dtype(csv[col]):
                assert (got == "" and pd.isna(want[col])) or abs(float(got) - want[col]) < 5e-5, (col, got, want[col])
            else:
                assert got == ("" if pd.isna(want[col]) else str(want[col])), (col, got, want[col])
    assert list(csv.run).count("ensemble") == 1
    assert [a for a in csv.arch if a.endswith("(submission)")] == [csv.set_index("run").loc["ensemble", "arch"]]


def test_a_failed_job_shows_its_cause_without_a_link(report, tmp_path):
    plan, _, _, _ = report
    bad = Job("train/broken", "train", plan.job(_trains(plan)[0]).notebook, {}, tmp_path / "broken")
    record_failure(bad, "RuntimeError: CUDA out of memory", seconds=3.2)
    page = write_report(replace(plan, jobs=[*plan.jobs, bad]), path=tmp_path / "report.html")
    soup = BeautifulSoup(page.read_text(), "html.parser")
    row = [td for td in soup.find(id="jobs").find_all("tr")[-1].find_all("td")]
    assert [td.text for td in row][:4] == ["train/broken", "train", "failed", "0:00:03"]
    assert row[5].text == "RuntimeError: CUDA out of memory" and row[0].find("a") is None


# --- charts picked by cell tags, on tiny executed notebooks (no demo run) --------------------------------------------


def _png(colour) -> str:
    """A 60x60 PNG, base64, as a notebook output stores it."""
    buf = io.BytesIO()
    Image.new("RGB", (60, 60), colour).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode() + "\n"


def _executed_nb(tags) -> nbformat.NotebookNode:
    """An executed notebook: one code cell per tag (None: untagged), each with one PNG output."""
    cells = []
    for i, tag in enumerate(tags):
        out = nbformat.v4.new_output("display_data", data={"image/png": _png((40 * i, 90, 160)), "text/plain": "fig"})
        cells.append(nbformat.v4.new_code_cell(f"ax = chart_{i}()", outputs=[out],
                                               metadata={"tags": [tag]} if tag else {}))
    return nbformat.v4.new_notebook(cells=cells)


def _tiny_report(tmp_path, notebooks: dict) -> BeautifulSoup:
    """The report of a plan whose jobs (name -> (stage, tags of its chart cells)) ran those executed notebooks."""
    jobs, states = [], {}
    for name, (stage, tags) in notebooks.items():
        out = tmp_path / name.replace("/", "-")
        out.mkdir()
        nbformat.write(_executed_nb(tags), out / f"{stage}.ipynb")
        jobs.append(SimpleNamespace(name=name, stage=stage, out_dir=out))
        states[name] = {"state": "complete", "seconds": 75.4, "finished": "2024-01-01 00:00:00"}
    source = tmp_path / "plan.yaml"
    source.write_text("name: tiny\n")
    plan = SimpleNamespace(name="tiny", source=source, out_dir=tmp_path, jobs=jobs)
    return BeautifulSoup(write_report(plan, states).read_text(), "html.parser")


def _charts(soup) -> dict:
    """Chart title -> the captions (job names) of its figures, from the page's Charts section."""
    out, title = {}, None
    for el in soup.find(id="figures-h").find_all_next(["h2", "h3", "figure"]):
        if el.name == "h2":
            break
        if el.name == "h3":
            title = out.setdefault(el.text, [])
        else:
            title.append(el.figcaption.text)
    return out


def test_each_tagged_chart_cell_is_in_the_report_and_only_those(tmp_path):
    tag = dict((t, title) for title, t in FIGURES)
    soup = _tiny_report(tmp_path, {
        "probe": ("probe", ["report-probe", None]),
        "train/a": ("train", [None, "report-loss"]),
        "multitarget": ("multitarget", ["report-loss"]),
        "ensemble": ("ensemble", ["report-weights", "report-holdout", None, "report-confusion"]),
    })
    assert _charts(soup) == {tag["report-probe"]: ["probe"], tag["report-loss"]: ["train/a", "multitarget"],
                             tag["report-weights"]: ["ensemble"], tag["report-holdout"]: ["ensemble"],
                             tag["report-confusion"]: ["ensemble"]}
    nb = _executed_nb(["report-loss", None])
    assert figures(nb, "report-loss") == ["".join(nb.cells[0].outputs[0].data["image/png"].split())]
    row = [td.text for td in soup.find(id="jobs").find_all("tr")[1].find_all("td")]
    assert row[:5] == ["probe", "probe", "complete", "0:01:15", "2024-01-01 00:00:00"]


def test_a_chart_cell_that_loses_its_tag_is_missing_from_the_report(tmp_path):
    soup = _tiny_report(tmp_path, {"train/a": ("train", [None]), "train/b": ("train", ["report-loss"])})
    assert _charts(soup) == {"Loss curves": ["train/b"]}


def test_every_chart_of_the_report_is_a_tagged_cell_of_a_committed_notebook():
    """Each FIGURES tag is on a code cell that draws (plot/imshow) in a notebook; no notebook uses an unknown one."""
    tagged = {}
    for f in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(f, as_version=4)
        for c in nb.cells:
            for t in c.metadata.get("tags", []):
                if t.startswith("report-"):
                    assert c.cell_type == "code" and ("plot" in c.source or "imshow" in c.source), (f.name, t)
                    tagged.setdefault(t, []).append(f.stem)
    assert tagged == {"report-probe": ["probe"], "report-loss": ["multitarget", "train"],
                      "report-weights": ["ensemble"], "report-holdout": ["ensemble"], "report-confusion": ["ensemble"]}
    assert set(tagged) == {t for _, t in FIGURES}
