"""outputs/report.html: one shareable page with the plan, each job's state, key charts and every executed notebook."""

import re
from pathlib import Path

import jinja2
import nbformat
import pandas as pd
from markupsafe import Markup
from nbconvert import HTMLExporter
from pygments.formatters import HtmlFormatter

from ..clock import hms, utc_now
from ..paths import atomic_write
from .records import job_state
from .stages import stage

__all__ = ["FIGURES", "REPORT", "figures", "notebook_html", "write_report"]

REPORT = "report.html"

# The charts the index page lifts out of the executed notebooks: (title, the tag of the cells that draw it). A
# notebook's chart cell carries the tag in its metadata, so renaming what the cell draws never drops its chart.
FIGURES = (
    ("Memory probe", "report-probe"),
    ("Loss curves", "report-loss"),
    ("Ensemble weights", "report-weights"),
    ("Holdout accuracy", "report-holdout"),
    ("Confusion matrix of the submitted ensemble (holdout)", "report-confusion"),
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

# The page. Autoescaped: every value is escaped unless it is Markup (nbconvert's HTML, the holdout table, the CSS).
_PAGE = """\
<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{{ name }}: run report</title><style>{{ css }}</style></head><body>
<h1>Run report: {{ name }}</h1>
<p>Generated {{ when }} from <code>{{ source }}</code>; outputs in <code>{{ out_dir }}</code>.</p>
<nav><a href="#jobs-h">Jobs</a> · <a href="#holdout-h">Holdout</a> · <a href="#figures-h">Charts</a> · \
<a href="#notebooks-h">Notebooks</a> · <a href="#plan-h">Plan</a></nav>
<h2 id="jobs-h">Jobs</h2>
<table id="jobs"><tr><th>job</th><th>stage</th><th>state</th><th>duration</th><th>finished</th><th>cause</th></tr>
{% for j, s in jobs %}
<tr><td>{% if j.name in notebooks %}<a href="#{{ j.name|slug }}">{{ j.name }}</a>{% else %}{{ j.name }}{% endif %}\
</td><td>{{ j.stage }}</td><td class="state-{{ s.state }}">{{ s.state }}</td><td>{{ s.seconds|duration }}</td>\
<td>{{ s.finished }}</td><td>{{ s.cause }}</td></tr>
{% endfor %}
</table>
<h2 id="holdout-h">Members and ensembles on the holdout</h2>
{{ holdout or "<p>No holdout table: the ensemble has not run.</p>"|safe }}
<h2 id="figures-h">Charts</h2>
{% for title, imgs in charts if imgs %}
<h3>{{ title }}</h3>
{% for caption, b64 in imgs %}
<figure><img src="data:image/png;base64,{{ b64 }}" alt="{{ caption }}"><figcaption>{{ caption }}</figcaption></figure>
{% endfor %}
{% endfor %}
<h2 id="notebooks-h">Executed notebooks</h2>
{% for name, body in notebooks.items() %}
<section class="notebook" id="{{ name|slug }}"><h2>{{ name }}</h2>{{ body }}</section>
{% endfor %}
<h2 id="plan-h">The plan</h2>
<pre id="plan">{{ plan_text }}</pre>
</body></html>
"""


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


def figures(nb, tag: str) -> list:
    """The PNG images (base64, on one line) output by the code cells of `nb` tagged `tag`."""
    return ["".join(o["data"]["image/png"].split()) for c in nb.cells
            if c.cell_type == "code" and tag in c.metadata.get("tags", [])
            for o in c.get("outputs", []) if "image/png" in o.get("data", {})]


def notebook_html(nb, prefix: str) -> str:
    """The notebook as an HTML fragment (nbconvert's basic template, images embedded), its ids made unique by
    `prefix` so that many notebooks share one page."""
    body, _ = HTMLExporter(template_name="basic").from_notebook_node(nb)
    body = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}-{m[1]}"', body)
    return re.sub(r'href="#([^"]+)"', lambda m: f'href="#{prefix}-{m[1]}"', body)


def _holdout_html(plan) -> str:
    """holdout.csv of the (first) ensembling job as an HTML table; empty before the ensemble has run."""
    ens = [j for j in plan.jobs if stage(j.stage).ensembles and (Path(j.out_dir) / "holdout.csv").exists()]
    if not ens:
        return ""
    table = pd.read_csv(Path(ens[0].out_dir) / "holdout.csv", keep_default_na=False, na_values=[""])
    return Markup(table.to_html(index=False, na_rep="", float_format="%.4f", table_id="holdout", border=0))


_ENV = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
_ENV.filters.update(slug=_slug, duration=hms)


def write_report(plan, states=None, path=None) -> Path:
    """Write the plan's report (default <out_dir>/report.html) atomically; returns its path."""
    states = states or {}
    path = Path(path or Path(plan.out_dir) / REPORT)
    nbs = {j.name: nb for j in plan.jobs if (nb := _read(_executed(j))) is not None}
    page = _ENV.from_string(_PAGE).render(
        name=plan.name, when=utc_now(), source=str(plan.source), out_dir=str(plan.out_dir),
        css=Markup(_CSS + HtmlFormatter().get_style_defs(".highlight")),
        jobs=[(j, states.get(j.name) or job_state(j)) for j in plan.jobs],
        holdout=_holdout_html(plan),
        charts=[(title, [(j.name, b64) for j in plan.jobs if j.name in nbs for b64 in figures(nbs[j.name], tag)])
                for title, tag in FIGURES],
        notebooks={name: Markup(notebook_html(nb, _slug(name))) for name, nb in nbs.items()},
        plan_text=Path(plan.source).read_text())
    with atomic_write(path) as f:
        f.write(page)
    return path
