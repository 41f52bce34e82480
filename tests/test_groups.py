"""The suite's own grouping under pytest-xdist (`make test`): the tests of one costly shared fixture run on one
worker, so it is built once (it silently stopped when pytest 9.2 changed node ids: pytest-dev/pytest-xdist#1386)."""

import re
import subprocess
import sys
import textwrap

from conftest import ROOT

HOOK = ROOT / "tests" / "conftest.py"


def test_the_users_of_the_demo_fixture_and_of_one_module_fixture_run_on_one_worker(tmp_path):
    (tmp_path / "conftest.py").write_text(textwrap.dedent(f"""
        import importlib.util, pytest
        spec = importlib.util.spec_from_file_location("suite_conftest", {str(HOOK)!r})
        suite = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(suite)
        pytest_itemcollected = suite.pytest_itemcollected

        @pytest.fixture(scope="session")
        def demo():
            return 1
        """))
    users = "".join(f"def test_demo_{i}(demo): pass\n" for i in range(6))
    module = "import pytest\n@pytest.fixture(scope='module')\ndef costly(): return 1\n" + "".join(
        f"def test_mod_{i}(costly): pass\n" for i in range(4))
    alone = "".join(f"def test_free_{i}(): pass\n" for i in range(6))
    (tmp_path / "test_a.py").write_text(users + alone)
    (tmp_path / "test_b.py").write_text(users.replace("test_demo_", "test_demo_b") + module)
    r = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-v", "-p", "no:cacheprovider",
                        "-p", "no:randomly"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:]
    ran = re.findall(r"\[(gw\d)\].*PASSED (\S+)", r.stdout)
    where = {}
    for worker, test in ran:
        group = "demo" if "::test_demo" in test else "module" if "::test_mod" in test else test
        where.setdefault(group, set()).add(worker)
    assert len(ran) == 22
    assert len(where["demo"]) == 1 and len(where["module"]) == 1
    assert len({w for w, _ in ran}) == 2  # and the rest is shared out
