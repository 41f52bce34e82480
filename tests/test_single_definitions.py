"""Facts declared once, checked over roadtop/'s source: the `accum: auto` resolution, the probe.json lookup, the
parameters the pipeline sets and the run-spec comparison each have one home. Each check is a function of the
sources, run on the tree as it is and on the tree with a second definition planted, which it must catch. They
read the shapes such copies take (a comparison with `x - margin`, the PROBE_JSON name, a literal list): a copy
rephrased past them (`limit = budget - margin` first) is for review to catch."""

import ast
import textwrap

import pytest

from roadtop.dag.params import SET_BY_PIPELINE
from roadtop.paths import ROOT

SRC = ROOT / "roadtop"
TREE = {str(f.relative_to(ROOT)): ast.parse(f.read_text()) for f in sorted(SRC.rglob("*.py"))}


def _functions(tree):
    """(module path, function name, function node) of every function of `tree` (path -> parsed module)."""
    for m, mod in tree.items():
        for node in ast.walk(mod):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield m, node.name, node


def _name(n):
    """The name a Name or an Attribute node says ('x' of x and of a.x), else None."""
    return getattr(n, "id", None) or getattr(n, "attr", None)


def _calls(fn, name: str) -> bool:
    """True when node `fn` calls `name` (plain or as an attribute)."""
    return any(isinstance(n, ast.Call) and _name(n.func) == name for n in ast.walk(fn))


def _mentions(fn, name: str) -> bool:
    """True when node `fn` reads `name` (plain or as an attribute), e.g. folder / PROBE_JSON, p.joinpath(PROBE_JSON)."""
    return any(isinstance(n, (ast.Name, ast.Attribute)) and _name(n) == name for n in ast.walk(fn))


def fit_decisions(tree) -> set:
    """Functions that decide whether a trial fits: they compare a value with something minus a margin."""
    def minus_margin(side):
        return isinstance(side, ast.BinOp) and isinstance(side.op, ast.Sub) and any(
            "margin" in (_name(x) or "") for x in ast.walk(side))
    return {(m, n) for m, n, fn in _functions(tree) if any(
        isinstance(c, ast.Compare) and any(minus_margin(s) for s in (c.left, *c.comparators)) for c in ast.walk(fn))}


def accum_deciders(tree) -> set:
    """Functions that turn trials into an accum: callers of choose_accum."""
    return {(m, n) for m, n, fn in _functions(tree) if _calls(fn, "choose_accum")}


def probe_json_places(tree) -> tuple:
    """(functions that name PROBE_JSON, modules with the literal 'probe.json', callers of probe_file)."""
    named = {(m, n) for m, n, fn in _functions(tree) if _mentions(fn, "PROBE_JSON")}
    literal = {m for m, mod in tree.items() for n in ast.walk(mod) if isinstance(n, ast.Constant) and n.value == "probe.json"}
    callers = {(m, n) for m, n, fn in _functions(tree) if _calls(fn, "probe_file")}
    return named, literal, callers


def pipeline_param_lists(tree) -> set:
    """Modules with a literal set/list/tuple of two or more of the parameters the pipeline sets."""
    return {m for m, mod in tree.items() for n in ast.walk(mod) if isinstance(n, (ast.Set, ast.Tuple, ast.List))
            and len({e.value for e in n.elts if isinstance(e, ast.Constant)} & SET_BY_PIPELINE) >= 2}


def spec_comparers(tree) -> set:
    """Functions that compare run specs: callers of same_spec, and any that compare two run_spec(...) results."""
    out = {(m, n) for m, n, fn in _functions(tree) if _calls(fn, "same_spec")}
    for m, n, fn in _functions(tree):
        for c in ast.walk(fn):
            if isinstance(c, ast.Compare) and sum(_calls(s, "run_spec") for s in (c.left, *c.comparators)) >= 2:
                out.add((m, n))
    return out


def _planted(code: str, where="roadtop/dag/planted.py") -> dict:
    return {**TREE, where: ast.parse(textwrap.dedent(code))}


def test_accum_auto_is_resolved_in_one_function():
    """Only accum.trial_fits says whether a trial fits and only accum.auto_accum turns trials into the accum `auto`
    means (through choose_accum); the pipeline's resolve_accum, `pipeline.py plan` and a notebook run alone call it."""
    assert fit_decisions(TREE) == {("roadtop/accum.py", "trial_fits")}
    assert accum_deciders(TREE) == {("roadtop/accum.py", "auto_accum")}
    users = {(m, n) for m, n, fn in _functions(TREE) if _calls(fn, "auto_accum")}
    assert users == {("roadtop/accum.py", "notebook_accum"), ("roadtop/dag/budget.py", "resolve_accum"),
                     ("roadtop/dag/budget.py", "plan_rows")}


def test_probe_json_is_found_and_parsed_in_one_function():
    """probe_file is probe.json's one place in a folder (the name said once, in PROBE_JSON), read_probes its one
    reader; save_probe writes there and budget's load_probe reads through read_probes."""
    named, literal, callers = probe_json_places(TREE)
    assert named == {("roadtop/accum.py", "probe_file"), ("roadtop/accum.py", "probe_dirs")}
    assert literal == {"roadtop/accum.py"}
    assert callers == {("roadtop/accum.py", "read_probes"), ("roadtop/probe.py", "save_probe"),
                       ("roadtop/dag/budget.py", "load_probe")}
    readers = {(m, n) for m, n, fn in _functions(TREE) if _calls(fn, "read_probes")}
    assert readers == {("roadtop/accum.py", "notebook_accum"), ("roadtop/train.py", "plan_runs"),
                       ("roadtop/dag/budget.py", "load_probe")}


def test_the_parameters_the_pipeline_sets_are_listed_once():
    """SET_BY_PIPELINE in roadtop.dag.params; the fingerprint's exclusions are derived from it, and no other
    literal lists two of them."""
    assert pipeline_param_lists(TREE) == {"roadtop/dag/params.py"}
    from roadtop.dag.params import FINGERPRINT_SKIPS

    assert FINGERPRINT_SKIPS == SET_BY_PIPELINE - {"runs"}  # the probe's `runs` is a real input of its result


def test_the_run_spec_comparison_is_public_and_in_one_place():
    """roadtop.accum.same_spec compares a probe's record with a run; nothing outside accum.py reaches for its
    private helpers or compares two run_spec results itself."""
    for m, mod in TREE.items():
        for n in ast.walk(mod):
            if isinstance(n, ast.ImportFrom) and (n.module or "").endswith("accum"):
                assert not [a.name for a in n.names if a.name.startswith("_")], m
    assert spec_comparers(TREE) == {("roadtop/accum.py", "same_spec"), ("roadtop/accum.py", "notebook_accum"), ("roadtop/dag/budget.py", "_entry"),
                                    ("roadtop/probe.py", "probed_as")}


@pytest.mark.parametrize("check, code, caught", [
    (fit_decisions, """
        def pick(trials, budget, margin):  # an inline accum: auto loop
            for t in sorted(trials, key=lambda t: t["accum"]):
                if t["status"] == "ok" and (t["peak_reserved_gb"] or 0) <= budget - margin:
                    return t["accum"]
        """, ("roadtop/dag/planted.py", "pick")),
    (accum_deciders, """
        def pick(probe, e):
            return choose_accum(e["trials"], probe["gpu_budget_gb"], probe["margin_gb"])[0]
        """, ("roadtop/dag/planted.py", "pick")),
    (lambda t: probe_json_places(t)[0], """
        import json
        def load(folder):
            return json.loads(folder.joinpath(PROBE_JSON).read_text())
        """, ("roadtop/dag/planted.py", "load")),
    (lambda t: probe_json_places(t)[1], """
        def load(folder):
            return (folder / "probe.json").read_text()
        """, "roadtop/dag/planted.py"),
    (pipeline_param_lists, """
        _PARAMS_WE_SET = {"out_dir", "run_dirs"}
        """, "roadtop/dag/planted.py"),
    (spec_comparers, """
        def twin(a, b):
            return run_spec(a) == run_spec(b)
        """, ("roadtop/dag/planted.py", "twin")),
])
def test_each_check_catches_a_planted_second_definition(check, code, caught):
    assert caught not in check(TREE) and caught in check(_planted(code))


CLOCK_CALLS = {"now", "utcnow", "today", "localtime", "gmtime", "ctime", "asctime", "strftime", "fromtimestamp"}


def clock_readers(tree) -> set:
    """Functions outside roadtop/clock.py that read the wall clock or format a time themselves."""
    return {(m, n) for m, n, fn in _functions(tree) if m != "roadtop/clock.py"
            and any(isinstance(c, ast.Call) and _name(c.func) in CLOCK_CALLS for c in ast.walk(fn))}


def test_timestamps_are_made_in_roadtop_clock_only():
    """Every timestamp is clock.utc_now / utc_clock / utc_text (UTC): no module reads the clock or formats a time."""
    assert clock_readers(TREE) == set()
    planted = _planted("""
        from datetime import datetime
        def finished():
            return datetime.now().isoformat()
        """)
    assert clock_readers(planted) == {("roadtop/dag/planted.py", "finished")}
