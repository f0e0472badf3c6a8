"""Replay progress on the real stack: a progress bar when stderr is a terminal (run on a
pseudo-terminal), JSON ``replay progress`` events when it is not."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import time
from typing import Any

import pytest
from support import REPO, log_events, unique

from consumer.producer import produce

# Only its own topics, groups and prefixes, and waits for outcomes: see tests/conftest.py.
pytestmark = pytest.mark.shares_stack

RECORDS = 120_000


def _cmd(topic: str, out: str) -> list[str]:
    return [
        sys.executable, "-m", "consumer", "replay",
        "--topic", topic, "--schema", "page_view", "--output", out,
        "--row-group-rows", "20000",
    ]  # fmt: skip


def test_replay_progress_bar_on_a_terminal(stack: Any, unique_prefix: str) -> None:
    topic = unique("progress-tty")
    produce(stack.kafka_bootstrap, topic, "page_view", RECORDS, partitions=2)
    out = f"s3://{stack.s3_bucket}/{unique_prefix.rstrip('/')}"
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    proc = subprocess.Popen(
        _cmd(topic, out), stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, cwd=REPO,
        env={**os.environ, "TERM": "xterm"},
    )  # fmt: skip
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    code = proc.wait(timeout=30)
    screen = b"".join(chunks).decode(errors="replace")
    assert code == 0, screen[-3000:]
    assert "replay: 100%" in screen, screen[-3000:]
    assert "120k/120k offsets" in screen and "offsets/s, ETA" in screen and "2/2 partitions" in screen
    assert "\r" in screen  # redrawn in place
    assert '"replay progress"' not in screen and "replay finished" in screen  # console log lines


def test_replay_progress_as_json_events_when_not_a_terminal(stack: Any, unique_prefix: str) -> None:
    topic = unique("progress-json")
    produce(stack.kafka_bootstrap, topic, "page_view", RECORDS, partitions=2)
    out = f"s3://{stack.s3_bucket}/{unique_prefix.rstrip('/')}"
    res = subprocess.run(_cmd(topic, out), capture_output=True, text=True, timeout=240, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    progress = [e for e in log_events(res.stderr) if e.get("event") == "replay progress"]
    assert len(progress) >= 2, res.stderr[-3000:]  # at least the first and the last state
    for e in progress:
        assert {"offsets_done", "offsets_todo", "percent", "offsets_per_s", "eta_s", "partitions_done",
                "partitions", "timestamp", "level"} <= set(e), e
        assert e["offsets_todo"] == RECORDS and e["partitions"] == 2
    done = [e["offsets_done"] for e in progress]
    assert done == sorted(done) and done[0] == 0
    last = progress[-1]
    final = (last["offsets_done"], last["percent"], last["eta_s"], last["partitions_done"])
    assert final == (RECORDS, 100.0, 0, 2)
    assert "\r" not in res.stderr  # no bar drawn into a log
