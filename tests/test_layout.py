"""The test layout the README promises: every module under roadtop/ with a function of its own has its test file,
tests/test_<module>.py (roadtop/kaggle/<module>.py: test_kaggle_<module>.py), and no two modules share one."""

import ast

from roadtop.paths import ROOT

SRC = ROOT / "roadtop"


def expected_test_file(module) -> str:
    """The test file a module's tests live in: test_<name>.py, test_kaggle_<name>.py under roadtop/kaggle/."""
    rel = module.relative_to(SRC)
    return f"test_{'kaggle_' if rel.parts[0] == 'kaggle' else ''}{module.stem}.py"


def _has_function(f) -> bool:
    """True when the module defines a function (or method) of its own."""
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(ast.parse(f.read_text())))


def test_every_module_with_logic_has_its_own_test_file():
    modules = [f for f in sorted(SRC.rglob("*.py")) if f.name != "__init__.py" and _has_function(f)]
    names = [expected_test_file(f) for f in modules]
    assert len(set(names)) == len(names), "two modules map to one test file: rename one"
    missing = [f"{f.relative_to(ROOT)} -> tests/{n}" for f, n in zip(modules, names, strict=True)
               if not (ROOT / "tests" / n).exists()]
    assert missing == []


def test_the_naming_tells_the_two_budgets_and_the_two_clis_apart():
    assert expected_test_file(SRC / "dag" / "budget.py") == "test_budget.py"
    assert expected_test_file(SRC / "kaggle" / "budget.py") == "test_kaggle_budget.py"
    assert expected_test_file(SRC / "dag" / "cli.py") == "test_cli.py" != expected_test_file(SRC / "kaggle" / "cli.py")
    assert expected_test_file(SRC / "accum.py") == "test_accum.py"
