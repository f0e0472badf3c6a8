"""``python -m bench.processes`` cannot rot: one tiny 1-vs-2-member run (figures, not timings)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from bench import processes

# Only its own topics, groups and prefixes, and waits for outcomes: see tests/conftest.py. One worker runs
# every bench test: the harness creates its venvs in .cache on first use.
pytestmark = [pytest.mark.stack, pytest.mark.shares_stack, pytest.mark.xdist_group("bench")]


def test_processes_harness_tiny_run(stack: Any, monkeypatch: Any, capsys: Any) -> None:
    if os.environ.get("TEST_STACK_DIR"):  # the harness finds the stack (and its pids) by STACK_DIR
        monkeypatch.setenv("STACK_DIR", os.environ["TEST_STACK_DIR"])
    assert processes.main(["--records", "4000", "--partitions", "2", "--counts", "1,2"]) == 0
    table = capsys.readouterr().out
    assert table.count("\n| 1 |") == 1 and table.count("\n| 2 |") == 1
    latest = max(processes.RESULTS.glob("processes-*.json"), key=lambda p: p.stat().st_mtime)
    results = json.loads(latest.read_text())["results"]
    assert [r["processes"] for r in results] == [1, 2]
    for r in results:
        assert r["files"]["rows"] == 4000 and r["exit_status"] == 0
        assert len(r["member_cpu_s"]) == r["processes"] and all(c > 0 for c in r["member_cpu_s"])
        assert r["stack_cpu_s"].get("kafka", 0) > 0 and r["machine_cpu_s_available"] > 0
    assert results[1]["supervisor_cpu_s"] > 0
