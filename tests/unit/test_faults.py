"""Unit tests for consumer.faults: arming named crash points and dying like kill -9.

Exits happen only in subprocesses; in-process tests never reach an armed count.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from consumer import faults

SCRIPT = textwrap.dedent(
    """
    import atexit, sys
    atexit.register(lambda: sys.stderr.write("ATEXIT RAN\\n"))
    from consumer import faults
    for i in range(1, 7):
        print("reach", i, flush=True)
        faults.point("x")
        faults.point("other")
    sys.stdout.write("unflushed tail")  # lost on a hard exit, like kill -9
    print("survived", flush=True)
    """
)


def run(spec: str | None, script: str = SCRIPT) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CONSUMER_FAULT"}
    if spec is not None:
        env["CONSUMER_FAULT"] = spec
    return subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60,
    )


@pytest.fixture
def disarmed() -> Iterator[None]:
    faults.arm(None)
    yield
    faults.arm(None)


def test_arm_parses_names_and_counts(disarmed: None) -> None:
    faults.arm("a:2,b")
    assert faults._armed == {"a": 2, "b": 1}
    faults.arm(" after_piece_put:3 , ,mid_merge:1,")
    assert faults._armed == {"after_piece_put": 3, "mid_merge": 1}


def test_arm_resets_previous_state(disarmed: None) -> None:
    faults.arm("a:3")
    faults.point("a")
    assert faults._seen == {"a": 1}
    faults.arm("b:2")
    assert faults._armed == {"b": 2}
    assert faults._seen == {}
    faults.arm(None)
    assert faults._armed == {} and faults._seen == {}
    faults.arm("")
    assert faults._armed == {}


def test_arm_rejects_bad_count(disarmed: None) -> None:
    with pytest.raises(ValueError):
        faults.arm("a:often")


def test_unarmed_points_are_free(disarmed: None) -> None:
    for _ in range(1000):
        faults.point("after_piece_put")
    assert faults._seen == {}
    faults.arm("a:5")
    for _ in range(10):
        faults.point("b")  # another point: not counted
    for _ in range(4):
        faults.point("a")  # below the armed count: no exit
    assert faults._seen == {"a": 4}


def test_point_exits_on_the_armed_occurrence() -> None:
    proc = run("x:3")
    assert proc.returncode == faults.FAULT_EXIT_CODE, proc.stderr
    assert proc.stdout.splitlines() == ["reach 1", "reach 2", "reach 3"]  # not earlier, not later
    assert "FAULT x:3" in proc.stderr
    assert "ATEXIT RAN" not in proc.stderr  # os._exit: no cleanup
    assert "unflushed" not in proc.stdout


def test_point_exits_on_first_occurrence_by_default() -> None:
    proc = run("x")
    assert proc.returncode == faults.FAULT_EXIT_CODE
    assert proc.stdout.splitlines() == ["reach 1"]


def test_several_points_armed_first_reached_wins() -> None:
    proc = run("x:5,other:2")
    assert proc.returncode == faults.FAULT_EXIT_CODE
    assert proc.stdout.splitlines() == ["reach 1", "reach 2"]
    assert "FAULT other:2" in proc.stderr


def test_no_fault_when_unset_or_unreached() -> None:
    for spec in (None, "", "x:7", "never_reached:1"):
        proc = run(spec)
        assert proc.returncode == 0, (spec, proc.stderr)
        assert proc.stdout.splitlines()[-1] == "unflushed tailsurvived"
        assert "ATEXIT RAN" in proc.stderr


def test_a_freeze_stops_the_process_at_the_point_until_sigcont_then_it_goes_on() -> None:
    import signal
    import time

    env = {k: v for k, v in os.environ.items() if k != "CONSUMER_FAULT"}
    env["CONSUMER_FAULT"] = "x:2:freeze"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        state = ""
        for _ in range(300):  # the process stops itself ('T' in /proc/<pid>/stat)
            with open(f"/proc/{proc.pid}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
            if state == "T":
                break
            time.sleep(0.05)
        assert state == "T"
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out.splitlines()[:2] == ["reach 1", "reach 2"]  # frozen at the 2nd, then on: once only
    assert out.splitlines()[-1] == "unflushed tailsurvived"
    assert "FAULT x:2 — freezing now (SIGSTOP)" in err


def test_arm_rejects_an_unknown_action(disarmed: None) -> None:
    faults.arm("a:1:freeze")
    assert faults._armed == {"a": 1} and faults._frozen == {"a"}
    with pytest.raises(ValueError, match="unknown action 'pause'"):
        faults.arm("a:1:pause")
