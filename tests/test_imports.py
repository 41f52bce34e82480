"""The package's import graph, read from the source (AST): no cycle, and the floors hold.

roadtop/*.py is what a notebook and a Kaggle kernel import: it never imports roadtop.dag or roadtop.kaggle.
roadtop.dag is the local pipeline: it never imports roadtop.kaggle. roadtop.kaggle may import both.
"""

import ast

from conftest import ROOT

PKG = ROOT / "roadtop"


def module_name(f) -> str:
    """roadtop/dag/plan.py -> roadtop.dag.plan; roadtop/dag/__init__.py -> roadtop.dag."""
    parts = list(f.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(f, modules: set) -> set:
    """The roadtop modules that file `f` imports, anywhere in it (top level or inside functions)."""
    me = module_name(f)
    package = me if f.name == "__init__.py" else me.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = [mod] + [f"{mod}.{a.name}" for a in node.names]  # `from . import x` imports module x
        else:
            continue
        for n in names:
            while n and n not in modules:  # roadtop.dag.plan.load_plan -> roadtop.dag.plan
                n = n.rpartition(".")[0]
            if n and n != me:
                found.add(n)
    return found


def graph() -> dict:
    """module -> the roadtop modules it imports."""
    files = sorted(PKG.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imports_of(f, modules) for f in files}


def find_cycle(g: dict):
    """One import cycle as a list of modules, or None."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(g.get(m, ())):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)):
                return c
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(g):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_the_graph_is_read_from_the_source():
    g = graph()
    assert {"roadtop.dag.runner", "roadtop.dag.stages", "roadtop.kaggle.cli", "roadtop.train"} <= set(g)
    assert "roadtop.dag.plan" in g["roadtop.dag.runner"] and "roadtop.dag.stages" in g["roadtop.dag.plan"]
    assert "roadtop.dag.plan" in g["roadtop.kaggle.cli"] and "roadtop.errors" in g["roadtop.train"]


def test_cycle_finder_finds_a_planted_loop():
    g = graph()
    assert find_cycle({**g, "roadtop.errors": {"roadtop.dag.runner"}}) is not None


def test_no_import_cycle():
    assert find_cycle(graph()) is None


def floor_violations(g: dict) -> list:
    """'a imports b' for every import that goes up a floor: roadtop/*.py -> dag or kaggle, dag -> kaggle."""
    wrong = []
    for m, deps in g.items():
        sub = m.split(".")[1] if "." in m else ""
        for d in sorted(deps):
            up = d.startswith(("roadtop.dag", "roadtop.kaggle")) if sub not in ("dag", "kaggle") else \
                sub == "dag" and d.startswith("roadtop.kaggle")
            if up:
                wrong.append(f"{m} imports {d}")
    return wrong


def test_floor_check_finds_planted_violations():
    g = graph()
    planted = {**g, "roadtop.train": g["roadtop.train"] | {"roadtop.dag.plan"},
               "roadtop.dag.runner": g["roadtop.dag.runner"] | {"roadtop.kaggle.flow"}}
    assert floor_violations(planted) == ["roadtop.dag.runner imports roadtop.kaggle.flow",
                                         "roadtop.train imports roadtop.dag.plan"]


def test_floors_kernel_code_never_imports_the_pipeline_and_the_pipeline_never_imports_kaggle():
    assert floor_violations(graph()) == []
