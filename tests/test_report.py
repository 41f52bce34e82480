"""outputs/report.html of `make demo` (conftest's `demo` run): images decode, links resolve, the holdout table is
holdout.csv, a failed job shows its cause."""

import base64
import io
from collections import Counter
from dataclasses import replace

import pandas as pd
import pytest
from bs4 import BeautifulSoup
from PIL import Image

from roadtop.dag.plan import Job
from roadtop.dag.records import record_failure
from roadtop.dag.report import write_report


@pytest.fixture(scope="module")
def report(demo):
    plan, out, r, _ = demo
    page = out / "report.html"
    return plan, r, page, BeautifulSoup(page.read_text(), "html.parser")


def _trains(plan) -> list:
    return [j.name for j in plan.jobs if j.stage == "train"]


def test_report_is_linked_from_the_run(report):
    _, r, page, _ = report
    assert r.stdout.rstrip().endswith(f"report: {page}")


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
    assert all(r[2] == "complete" and float(r[3]) >= 0 for r in rows)


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
    assert [td.text for td in row][:4] == ["train/broken", "train", "failed", "3"]
    assert row[5].text == "RuntimeError: CUDA out of memory" and row[0].find("a") is None
