"""dev/test keeps a module's stack tests on one xdist worker (``--dist loadgroup`` and the
``xdist_group`` marks of tests/conftest.py), so a module-scoped fixture (a wheel build, a private
stack) runs once, never on both workers at once. That depends on pytest-xdist and pytest agreeing
on node ids: with pytest 9.2 and pytest-xdist 3.8 the groups were silently ignored and two wheel
builds raced in one cargo target folder. This checks the mechanism itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

_GROUPED = '''
import os, time, pytest

pytestmark = pytest.mark.xdist_group("together")

@pytest.mark.parametrize("i", range(4))
def test_grouped(i):
    time.sleep(0.2)
    with open(os.environ["WHERE"], "a") as f:
        f.write(f"grouped {os.environ['PYTEST_XDIST_WORKER']}\\n")
'''

_FREE = '''
import os, time, pytest

@pytest.mark.parametrize("i", range(4))
def test_free(i):
    time.sleep(0.2)
    with open(os.environ["WHERE"], "a") as f:
        f.write(f"free {os.environ['PYTEST_XDIST_WORKER']}\\n")
'''


def test_tests_of_one_xdist_group_run_on_one_worker(tmp_path: Path) -> None:
    (tmp_path / "test_grouped.py").write_text(_GROUPED)
    (tmp_path / "test_free.py").write_text(_FREE)
    where = tmp_path / "where.txt"
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2", "--dist", "loadgroup", "-q",
         str(tmp_path)],
        cwd=tmp_path, env={**os.environ, "WHERE": str(where)}, capture_output=True, text=True, timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    runs = [line.split() for line in where.read_text().splitlines()]
    grouped = {worker for kind, worker in runs if kind == "grouped"}
    assert len(runs) == 8
    assert len(grouped) == 1, f"the group's tests ran on {sorted(grouped)}: xdist ignored the group"
