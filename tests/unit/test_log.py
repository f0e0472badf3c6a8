"""Log lines stay whole when processes share a stderr (``--processes N`` under PYTHONUNBUFFERED)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from consumer import log as logmod

REPO = Path(__file__).resolve().parents[2]


class _Recorder:
    """A stderr that remembers each write call."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_each_log_line_is_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = _Recorder()
    monkeypatch.setattr(sys, "stderr", recorder)
    before = structlog.get_config()
    logmod.configure("json")
    try:
        log = logmod.get("test", topic="t")
        for i in range(3):
            log.info("row group durable", rows=i)
    finally:
        structlog.configure(**before)
    assert len(recorder.writes) == 3
    for i, text in enumerate(recorder.writes):
        assert text.endswith("\n") and text.count("\n") == 1
        assert json.loads(text)["rows"] == i


_WRITER = """
from consumer import log
log.configure("json")
out = log.get("member")
for i in range(2000):
    out.info("row group durable", member={member}, i=i, pad="x" * 200)
"""


def test_two_unbuffered_processes_sharing_one_log_file_keep_every_line_whole(tmp_path: Path) -> None:
    path = tmp_path / "shared.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with path.open("wb") as fh:  # one file description, as a supervisor's members share it
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _WRITER.format(member=m)], stderr=fh, env=env, cwd=REPO
            )
            for m in (0, 1)
        ]
        assert [p.wait(timeout=60) for p in procs] == [0, 0]
    lines = path.read_text().splitlines()
    events = [json.loads(line) for line in lines]  # a spliced line would not parse
    assert sorted((e["member"], e["i"]) for e in events) == [
        (m, i) for m in (0, 1) for i in range(2000)
    ]
