"""The stack tests' report of a crashed process (support.crash_lines, tests/conftest.py): the lines
that tell of a crash are found wherever they are in a log, so that an abort's own line is not lost
behind the interpreter's dump of every thread's stack."""

from __future__ import annotations

import subprocess
import sys

import support
from support import REPO, crash_lines


def test_an_abort_s_own_line_is_found_before_a_long_stack_dump() -> None:
    log = "\n".join(
        ['{"event": "partitions revoked", "level": "info"}']
        + ["python3: ../src/rdkafka_cgrp.c:2977: rd_kafka_cgrp_op: Assertion `rkcg' failed.",
           "Fatal Python error: Aborted", "", "Thread 0x00007f (most recent call first):"]
        + [f'  File "/x/consumer/runner.py", line {n} in _close_consumer' for n in range(400)]
    )
    lines = crash_lines(log)
    assert lines[:3] == [
        "2: python3: ../src/rdkafka_cgrp.c:2977: rd_kafka_cgrp_op: Assertion `rkcg' failed.",
        "3: Fatal Python error: Aborted",
        "4: ",
    ]
    assert len(lines) == 3


def test_the_consumer_s_own_events_are_not_taken_for_a_crash() -> None:
    log = "\n".join([
        '{"event": "aborted records skipped", "error": "Traceback (most recent call last)"}',
        '{"event": "ValueError: in a field"}',
    ])
    assert crash_lines(log) == []


def test_a_python_traceback_and_a_rust_panic_are_told_with_the_line_after() -> None:
    log = "\n".join([
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in <module>',
        "thread '<unnamed>' panicked at src/lib.rs:10:5:",
        "index out of bounds",
        "RuntimeError: boom",
    ])
    assert crash_lines(log) == [
        "1: Traceback (most recent call last):",
        '2:   File "x.py", line 1, in <module>',
        "3: thread '<unnamed>' panicked at src/lib.rs:10:5:",
        "4: index out of bounds",
        "5: RuntimeError: boom",
    ]


def test_what_a_consumer_run_to_its_end_printed_is_noted_for_the_report() -> None:
    """Tests that run the consumer with ``subprocess.run`` keep its output in memory; the suite's
    ``subprocess.run`` notes it (tests/conftest.py), so a crash there is reported as well."""
    subprocess.run([sys.executable, "-c", "print('Fatal Python error: not the consumer')"],
                   capture_output=True, text=True, check=True)
    assert support.CAPTURED_OUTPUTS == []
    done = subprocess.run([sys.executable, "-m", "consumer", "run", "--no-such-flag"],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2
    [(what, text)] = support.CAPTURED_OUTPUTS
    assert what == "run 1 of this test: python -m consumer run"
    assert "--no-such-flag" in text
