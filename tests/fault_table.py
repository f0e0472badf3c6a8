"""The fault table's results file: one file per run of the fault tests (see dev/fault-report).

A session fixture (tests/faults/conftest.py) starts the file with a header naming the run, the
commit and the fault tests selected and left out; each scenario appends a row of what it proved,
each fault test its outcome, and the session a ``finished`` line.

Under xdist each worker is a session of its own, so each writes a file of its own
(``fault-table.gw0.jsonl``, …) and the controller merges them into the one file of the run when
every worker is done (:func:`merge_workers`). The merged file reads as if one process had run
every test, so dev/fault-report needs no notion of workers.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(os.environ.get("FAULT_TABLE", REPO / ".cache" / "fault-table.jsonl"))
_run: dict[str, str] = {}


def _worker_file(worker: str) -> Path:
    return RESULTS.with_name(f"{RESULTS.stem}.{worker}{RESULTS.suffix}")


def _results() -> Path:
    """This process's file: the run's own, or a worker's part of it."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    return _worker_file(worker) if worker else RESULTS


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _append(row: dict[str, Any]) -> None:
    with _results().open("a") as fh:
        fh.write(json.dumps(row, default=str) + "\n")


def _git_describe() -> str:
    """HEAD's short hash, with "+ uncommitted consumer/ changes" when the tested code differs."""

    def git(*args: str) -> str:
        res = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return res.stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--", "consumer")
    return f"{head} + uncommitted consumer/ changes" if dirty else head


def start_run(selected: list[str], deselected: list[str]) -> str:
    """Create the results file afresh for this run (earlier runs' rows are gone), naming the
    fault tests it runs and those it left out."""
    run_id = f"{_now()}-{uuid.uuid4().hex[:8]}"
    commit = os.environ.get("FAULT_RUN_COMMIT") or _git_describe()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    header = {
        "run_id": run_id,
        "started": _now(),
        "commit": commit,
        "selected": selected,
        "deselected": deselected,
    }
    _results().write_text(json.dumps(header) + "\n")
    _run["id"] = run_id
    return run_id


def end_run() -> None:
    if "id" in _run:
        _append({"run_id": _run["id"], "finished": _now()})


def current_test() -> str:
    return os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0]


def record(row: dict[str, Any]) -> None:
    """A scenario row of the fault table, for the current test of the current run. Whether it
    reads "pass" is decided by the test's outcome (:func:`record_outcome`), not here."""
    assert "id" in _run, "no fault-test run started (the session fixture in tests/faults/conftest.py)"
    _append({"run_id": _run["id"], "test": current_test(), **row})


def record_outcome(test: str, outcome: str, detail: str = "") -> None:
    if "id" in _run:
        _append({"run_id": _run["id"], "test": test, "outcome": outcome, "detail": detail[:500]})


def _worker_files() -> list[Path]:
    return sorted(RESULTS.parent.glob(f"{RESULTS.stem}.gw*{RESULTS.suffix}"))


def forget_workers() -> None:
    """Remove workers' files a run left behind (the controller calls this before workers start)."""
    for part in _worker_files():
        part.unlink()


def merge_workers() -> None:
    """Merge the workers' files into the run's one file, under the first worker's run id; the run
    is ``finished`` only when every worker's part is. Nothing happens when no worker ran a fault
    test (the run's file, if any, is left as it was)."""
    parts = _worker_files()
    if not parts:
        return
    rows = [[json.loads(line) for line in p.read_text().splitlines() if line.strip()] for p in parts]
    header = rows[0][0]
    merged = [header]
    for part in rows:
        merged.extend({**row, "run_id": header["run_id"]} for row in part[1:] if "finished" not in row)
    if all(any("finished" in row for row in part) for part in rows):
        merged.append({"run_id": header["run_id"], "finished": _now()})
    RESULTS.write_text("".join(json.dumps(row, default=str) + "\n" for row in merged))
    forget_workers()
