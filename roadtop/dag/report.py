"""outputs/report.html: one shareable page with the plan, each job's state, key charts and every executed notebook."""

import html
import re
import time
from pathlib import Path

import nbformat
import pandas as pd
from nbconvert import HTMLExporter
from pygments.formatters import HtmlFormatter

from ..paths import atomic_write
from .records import job_state
from .stages import STAGES, names, stage

__all__ = ["FIGURES", "REPORT", "figures", "notebook_html", "write_report"]

REPORT = "report.html"

# The charts the index page lifts out of the executed notebooks: (title, stages, text in the cell that draws it).
_ENSEMBLING = tuple(n for n, s in STAGES.items() if s.ensembles)
FIGURES = (
    ("Memory probe", names(measures=True), "plot_probe"),
    ("Loss curves", names(trains=True), "plot_loss"),
    ("Ensemble weights", _ENSEMBLING, "wf.T.plot"),
    ("Holdout accuracy", _ENSEMBLING, 'y="holdout_accuracy"'),
    ("Confusion matrix of the submitted ensemble (holdout)", _ENSEMBLING, "ensemble.confusion"),
)

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
img { max-width: 100%; }
figure { display: inline-block; margin: 0.5em 1em 1em 0; vertical-align: top; }
figcaption { font-size: 0.85em; color: #555; }
.state-complete { color: #1a7f37; } .state-failed { color: #cf222e; } .state-pending, .state-stale { color: #9a6700; }
section.notebook { border-top: 3px solid #ddd; margin-top: 2em; }
.prompt { display: none; } .anchor-link { display: none; }
.output_area pre, .output_subarea pre { background: none; }
"""


_SECTIONS = (("jobs-h", "Jobs"), ("holdout-h", "Holdout"), ("figures-h", "Charts"), ("notebooks-h", "Notebooks"),
             ("plan-h", "Plan"))


def _read(f: Path):
    """The executed notebook at `f`, or None if it is missing or half-written (a killed run)."""
    try:
        return nbformat.read(f, as_version=4)
    except (OSError, ValueError, nbformat.reader.NotJSONError):
        return None


def _slug(name: str) -> str:
    """An HTML id made from a job name (train/convnext_crop -> nb-train-convnext_crop)."""
    return "nb-" + re.sub(r"[^A-Za-z0-9_-]+", "-", name)


def _executed(job) -> Path:
    """The executed copy of the job's notebook (papermill's output)."""
    return Path(job.out_dir) / f"{job.stage}.ipynb"


def figures(nb, marker: str) -> list:
    """The PNG images (base64) output by the code cells of `nb` whose source contains `marker`."""
    return [o["data"]["image/png"] for c in nb.cells if c.cell_type == "code" and marker in c.source
            for o in c.get("outputs", []) if "image/png" in o.get("data", {})]


def notebook_html(nb, prefix: str) -> str:
    """The notebook as an HTML fragment (nbconvert's basic template, images embedded), its ids made unique by
    `prefix` so that many notebooks share one page."""
    body, _ = HTMLExporter(template_name="basic").from_notebook_node(nb)
    body = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}-{m[1]}"', body)
    return re.sub(r'href="#([^"]+)"', lambda m: f'href="#{prefix}-{m[1]}"', body)


def _img(b64: str, caption: str) -> str:
    """A figure with an embedded PNG."""
    b64 = "".join(b64.split()) if isinstance(b64, str) else "".join(b64)
    return (f'<figure><img src="data:image/png;base64,{b64}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _jobs_table(plan, states, have_nb) -> str:
    """One row per job: state, seconds, when, cause, and a link to its notebook below."""
    rows = []
    for j in plan.jobs:
        s = states.get(j.name) or job_state(j)
        link = f'<a href="#{_slug(j.name)}">{html.escape(j.name)}</a>' if j.name in have_nb else html.escape(j.name)
        secs = f"{s['seconds']:.0f}" if isinstance(s.get("seconds"), (int, float)) else ""
        rows.append(f"<tr><td>{link}</td><td>{j.stage}</td><td class=\"state-{s['state']}\">{s['state']}</td>"
                    f"<td>{secs}</td><td>{html.escape(str(s.get('finished', '')))}</td>"
                    f"<td>{html.escape(str(s.get('cause', '')))}</td></tr>")
    head = "<tr><th>job</th><th>stage</th><th>state</th><th>seconds</th><th>finished</th><th>cause</th></tr>"
    return f'<table id="jobs">{head}{"".join(rows)}</table>'


def write_report(plan, states=None, path=None) -> Path:
    """Write the plan's report (default <out_dir>/report.html) atomically; returns its path."""
    states = states or {}
    path = Path(path or Path(plan.out_dir) / REPORT)
    nbs = {j.name: nb for j in plan.jobs if (nb := _read(_executed(j))) is not None}
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    nav = " · ".join(f'<a href="#{i}">{t}</a>' for i, t in _SECTIONS)
    where = f"from <code>{html.escape(str(plan.source))}</code>; outputs in <code>{html.escape(str(plan.out_dir))}</code>"
    parts = [f"<h1>Run report: {html.escape(plan.name)}</h1>", f"<p>Generated {when} {where}.</p>",
             f"<nav>{nav}</nav>", '<h2 id="jobs-h">Jobs</h2>', _jobs_table(plan, states, nbs)]
    ens = [j for j in plan.jobs if stage(j.stage).ensembles and (Path(j.out_dir) / "holdout.csv").exists()]
    parts.append('<h2 id="holdout-h">Members and ensembles on the holdout</h2>')
    if ens:
        table = pd.read_csv(Path(ens[0].out_dir) / "holdout.csv", keep_default_na=False, na_values=[""])
        parts.append(table.to_html(index=False, na_rep="", float_format="%.4f", table_id="holdout", border=0))
    else:
        parts.append("<p>No holdout table: the ensemble has not run.</p>")
    parts.append('<h2 id="figures-h">Charts</h2>')
    for title, stages, marker in FIGURES:
        imgs = [_img(b64, j.name) for j in plan.jobs if j.stage in stages and j.name in nbs
                for b64 in figures(nbs[j.name], marker)]
        if imgs:
            parts += [f"<h3>{html.escape(title)}</h3>", *imgs]
    parts.append('<h2 id="notebooks-h">Executed notebooks</h2>')
    for name, nb in nbs.items():
        parts.append(f'<section class="notebook" id="{_slug(name)}"><h2>{html.escape(name)}</h2>'
                     f"{notebook_html(nb, _slug(name))}</section>")
    parts += ['<h2 id="plan-h">The plan</h2>', f"<pre>{html.escape(Path(plan.source).read_text())}</pre>"]
    page = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(plan.name)}: run report</title>"
            f"<style>{_CSS}{HtmlFormatter().get_style_defs('.highlight')}</style></head>"
            f"<body>{''.join(parts)}</body></html>\n")
    with atomic_write(path) as f:
        f.write(page)
    return path
