"""The fault table's results file under xdist: each worker writes its part, the controller merges
them into the one file of the run that dev/fault-report reads (tests/fault_table.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import fault_table
import pytest

REPO = Path(__file__).resolve().parents[2]


def _worker(monkeypatch: pytest.MonkeyPatch, name: str, tests: list[str], finish: bool) -> None:
    """What one worker's session writes: its header, a scenario row and an outcome per test."""
    monkeypatch.setenv("PYTEST_XDIST_WORKER", name)
    monkeypatch.setattr(fault_table, "_run", {})
    fault_table.start_run(["a", "b", "c"], ["d"])
    for test in tests:
        monkeypatch.setenv("PYTEST_CURRENT_TEST", f"{test} (call)")
        proof = {"records": 10, "rows": 9, "dead_letters": 1, "final_files": 2, "values_compared": 9}
        fault_table.record({"fault": f"{test}:1", "kind": "kill at point", **proof})
        fault_table.record_outcome(test, "passed")
    if finish:
        fault_table.end_run()


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "fault-table.jsonl"
    monkeypatch.setattr(fault_table, "RESULTS", path)
    return path


def test_workers_parts_merge_into_one_run(results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _worker(monkeypatch, "gw0", ["a", "c"], finish=True)
    _worker(monkeypatch, "gw1", ["b"], finish=True)
    assert not results.exists()
    fault_table.merge_workers()
    rows = _rows(results)
    run_id = rows[0]["run_id"]
    assert rows[0]["selected"] == ["a", "b", "c"] and rows[0]["deselected"] == ["d"]
    assert {r["run_id"] for r in rows} == {run_id}
    assert sorted(r["test"] for r in rows if "outcome" in r) == ["a", "b", "c"]
    assert sorted(r["fault"] for r in rows if "fault" in r) == ["a:1", "b:1", "c:1"]
    assert [r for r in rows if "finished" in r] == [rows[-1]]
    assert list(results.parent.iterdir()) == [results]  # the workers' parts are gone


def test_a_run_is_finished_only_when_every_worker_finished(
    results: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _worker(monkeypatch, "gw0", ["a"], finish=True)
    _worker(monkeypatch, "gw1", ["b"], finish=False)  # interrupted
    fault_table.merge_workers()
    assert not any("finished" in r for r in _rows(results))


def _report(results: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "dev" / "fault-report"), "--check", "--partial"],
        env={"FAULT_TABLE": str(results), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("interrupted", [False, True])
def test_dev_fault_report_reads_the_merged_file(
    results: Path, monkeypatch: pytest.MonkeyPatch, interrupted: bool
) -> None:
    _worker(monkeypatch, "gw0", ["a", "c"], finish=True)
    _worker(monkeypatch, "gw1", ["b"], finish=not interrupted)
    fault_table.merge_workers()
    res = _report(results)
    if interrupted:
        assert res.returncode == 1 and "did not finish" in res.stderr, res.stderr
    else:
        assert res.returncode == 0, res.stderr
        assert "3 fault tests (3 passed), 1 left out." in res.stdout


def test_no_worker_part_leaves_the_runs_file_alone(results: Path) -> None:
    results.write_text('{"run_id": "earlier"}\n')
    fault_table.merge_workers()
    assert results.read_text() == '{"run_id": "earlier"}\n'
