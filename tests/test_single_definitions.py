"""Facts declared once, checked over roadtop/'s source: the `accum: auto` resolution, the probe.json lookup, the
parameters the pipeline sets and the run-spec comparison each have one home (grep finds one definition)."""

import ast

from roadtop.paths import ROOT

SRC = ROOT / "roadtop"


def _functions():
    """(module path, function name, function node) of every function under roadtop/."""
    for f in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield str(f.relative_to(ROOT)), node.name, node


def _calls(fn, name: str) -> bool:
    """True when function node `fn` calls `name` (plain or as an attribute)."""
    return any(isinstance(n, ast.Call) and name in (getattr(n.func, "id", None), getattr(n.func, "attr", None))
               for n in ast.walk(fn))


def _joins(fn, name: str) -> bool:
    """True when function node `fn` builds a path `<folder> / name`."""
    return any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div) and getattr(n.right, "id", None) == name
               for n in ast.walk(fn))


def _module_assigns(pattern):
    """(module path, target name, value node) of every module-level assignment whose target matches `pattern`."""
    for f in sorted(SRC.rglob("*.py")):
        for node in ast.parse(f.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AnnAssign) else []
            for t in targets:
                if isinstance(t, ast.Name) and pattern(t.id):
                    yield str(f.relative_to(ROOT)), t.id, node.value


def test_accum_auto_is_resolved_in_one_function():
    """Only roadtop.accum.auto_accum turns a probe's trials into the accum `auto` means; the pipeline's
    resolve_accum, `pipeline.py plan` and a notebook run alone all call it."""
    deciders = [(m, n) for m, n, fn in _functions() if _calls(fn, "choose_accum")]
    assert deciders == [("roadtop/accum.py", "auto_accum")]
    users = {(m, n) for m, n, fn in _functions() if _calls(fn, "auto_accum")}
    assert users == {("roadtop/accum.py", "notebook_accum"), ("roadtop/dag/budget.py", "resolve_accum"),
                     ("roadtop/dag/budget.py", "plan_rows")}


def test_probe_json_is_found_and_parsed_in_one_function():
    """read_probes is the one reader of probe.json, probe_file its one place in a folder (the probe's save_probe
    writes there); the file name is a string once, in PROBE_JSON."""
    joined = {(m, n) for m, n, fn in _functions() if _joins(fn, "PROBE_JSON")}
    assert joined == {("roadtop/accum.py", "probe_file")}
    assert {(m, n) for m, n, fn in _functions() if _calls(fn, "probe_file")} == {
        ("roadtop/accum.py", "read_probes"), ("roadtop/probe.py", "save_probe"), ("roadtop/dag/budget.py", "load_probe")}
    literals = [(f.relative_to(ROOT), n.lineno) for f in SRC.rglob("*.py") for n in ast.walk(ast.parse(f.read_text()))
                if isinstance(n, ast.Constant) and n.value == "probe.json"]
    assert literals == [(SRC.relative_to(ROOT) / "accum.py", literals[0][1])]
    readers = {(m, n) for m, n, fn in _functions() if _calls(fn, "read_probes")}
    assert readers == {("roadtop/accum.py", "notebook_accum"), ("roadtop/train.py", "plan_runs"),
                       ("roadtop/dag/budget.py", "load_probe")}


def test_the_parameters_the_pipeline_sets_are_listed_once():
    """SET_BY_PIPELINE in roadtop.dag.params; the fingerprint's exclusions are derived from it, and no other
    literal lists out_dir together with data_path."""
    defs = list(_module_assigns(lambda name: name.lstrip("_") == "SET_BY_PIPELINE"))
    assert [(m, n) for m, n, _ in defs] == [("roadtop/dag/params.py", "SET_BY_PIPELINE")]
    lists = []
    for f in sorted(SRC.rglob("*.py")):
        for n in ast.walk(ast.parse(f.read_text())):
            if isinstance(n, (ast.Set, ast.Tuple, ast.List)):
                words = {e.value for e in n.elts if isinstance(e, ast.Constant)}
                if {"out_dir", "data_path"} <= words:
                    lists.append(str(f.relative_to(ROOT)))
    assert lists == ["roadtop/dag/params.py"]
    from roadtop.dag.params import FINGERPRINT_SKIPS, SET_BY_PIPELINE

    assert FINGERPRINT_SKIPS == SET_BY_PIPELINE - {"runs"}  # the probe's `runs` is a real input of its result


def test_the_run_spec_comparison_is_public_and_in_one_place():
    """roadtop.accum.same_spec compares a probe's record with a run; nothing outside accum.py reaches for its
    private helpers."""
    for f in SRC.rglob("*.py"):
        for n in ast.walk(ast.parse(f.read_text())):
            if isinstance(n, ast.ImportFrom) and (n.module or "").endswith("accum"):
                assert not [a.name for a in n.names if a.name.startswith("_")], f
    users = {(m, n) for m, n, fn in _functions() if _calls(fn, "same_spec")}
    assert users == {("roadtop/accum.py", "notebook_accum"), ("roadtop/dag/budget.py", "_entry")}
