"""Log lines stay whole when processes share a stderr (``--processes N``, PYTHONUNBUFFERED or long lines)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
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

    def isatty(self) -> bool:
        return False


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


def test_a_console_line_with_a_stack_below_it_is_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """The console renderer writes a traceback, or a thread dump (consumer.signals), below its line:
    one write, under the members' line lock, so no other member's line lands inside it."""
    recorder = _Recorder()
    monkeypatch.setattr(sys, "stderr", recorder)
    before = structlog.get_config()
    logmod.configure("console")
    try:
        assert logmod.for_a_terminal()
        logmod.get("test").warning("stacks of every thread", stack="thread a:\n  x.py:1 in f")
    finally:
        structlog.configure(**before)
        logmod.configure("json")
        structlog.configure(**before)
    assert not logmod.for_a_terminal()
    (text,) = [w for w in recorder.writes if w]  # print() flushes too
    assert text.endswith("thread a:\n  x.py:1 in f\n") and "stacks of every thread" in text


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


# A member that logs long lines, as an error with its traceback rendered into JSON is: far above
# PIPE_BUF (4,096 bytes), which is as much as one write into a pipe is guaranteed to keep whole.
_LONG_WRITER = """
from consumer import log
log.configure("json")
out = log.get("member")
for i in range(150):
    out.info("long line", member={member}, i=i, pad="x" * 40_000)
"""

_SUPERVISOR = """
import sys
from consumer import log
from consumer.supervisor import Supervisor
log.configure("json")
writer = sys.argv[1]
sup = Supervisor(lambda m: [sys.executable, "-c", writer.format(member=m.index)], ["a", "b", "c"],
                 shutdown_timeout=5.0)
sys.exit(sup.run())
"""


def test_members_of_a_supervisor_never_splice_lines_longer_than_a_pipe_keeps_whole() -> None:
    # The supervisor's stderr is a pipe, as under Docker or systemd; its three members inherit it
    # and write 40 KB lines at once. Without the shared lock (tried: members started without
    # CONSUMER_LOG_LOCK_FD) lines came out spliced and did not parse.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop(logmod.LINE_LOCK_FD_ENV, None)
    proc = subprocess.run(
        [sys.executable, "-c", _SUPERVISOR, _LONG_WRITER], stderr=subprocess.PIPE, env=env, cwd=REPO,
        timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = [json.loads(line) for line in proc.stderr.decode().splitlines()]  # spliced: no parse
    longs = sorted((e["member"], e["i"]) for e in events if e["event"] == "long line")
    assert longs == [(m, i) for m in range(3) for i in range(150)]
    assert sum(e["event"] == "member finished" for e in events) == 3  # the supervisor's own lines


_HOLDER = """
import fcntl, os, sys, time
fd = int(sys.argv[1])
fcntl.lockf(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""


def test_a_member_frozen_while_holding_the_line_lock_delays_the_others_only_briefly(tmp_path: Path) -> None:
    # A member stopped (SIGSTOP) between taking and releasing the lock must not stop every other
    # member's logging, and with it their work: after `patience` the line goes out unlocked.
    with (tmp_path / "lock").open("w+b") as lock:
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(lock.fileno())], stdout=subprocess.PIPE,
            pass_fds=(lock.fileno(),),
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
            line_lock = logmod.LineLock(lock.fileno(), patience=0.2)
            started = time.monotonic()
            with line_lock.held():
                waited = time.monotonic() - started
            assert 0.2 <= waited < 10
        finally:
            holder.kill()
            holder.wait()
        with line_lock.held():  # the holder is gone (its lock with it): taken at once
            pass


def test_without_a_shared_lock_file_lines_are_written_unlocked() -> None:
    line_lock = logmod.LineLock(None)
    with line_lock.held():
        pass
    closed = logmod.LineLock(10_000, patience=5.0)  # not an open descriptor: no wait, no error
    started = time.monotonic()
    with closed.held():
        pass
    assert time.monotonic() - started < 1


_NOT_OURS = """
import logging, warnings
from consumer import log
log.configure("json")
warnings.warn("a library's warning", FutureWarning)
logging.getLogger("botocore.credentials").warning("Found credentials in %s", "environment variables")
logging.getLogger("s3fs").info("not shown: a library's info")
try:
    1 / 0
except ZeroDivisionError:
    logging.getLogger("aiohttp.client").error("request failed", exc_info=True)
"""


def test_python_warnings_and_library_log_records_are_lines_of_the_log_too() -> None:
    """Python would write a warning as two lines of text, and a library's warning through
    ``logging.lastResort`` as bare text: lines a log shipper cannot parse among the JSON ones."""
    res = subprocess.run(
        [sys.executable, "-c", _NOT_OURS], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert res.returncode == 0, res.stderr
    events = [json.loads(line) for line in res.stderr.splitlines()]  # every line is JSON
    assert [(e["event"], e["level"]) for e in events] == [
        ("python warning", "warning"),
        ("Found credentials in environment variables", "warning"),
        ("request failed", "error"),
    ]
    assert events[0]["category"] == "FutureWarning" and events[0]["message"] == "a library's warning"
    assert events[0]["where"].endswith(":5")
    assert events[1]["logger"] == "botocore.credentials"
    assert events[2]["logger"] == "aiohttp.client" and "ZeroDivisionError" in events[2]["exception"]
