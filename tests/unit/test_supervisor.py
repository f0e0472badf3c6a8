"""The supervisor of ``consumer run --processes N`` with stand-in members (tiny Python scripts that
exit with a chosen status, crash, or wait for SIGTERM): restart policy, stop statuses, signal
forwarding, the kill after the grace period and the command's exit status. The real members on
the real stack: tests/integration/test_processes.py."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from consumer.supervisor import (
    Backoff,
    Member,
    Supervisor,
    child_command,
    exit_status,
    instance_ids,
    overall_status,
    severity,
)

FAST = Backoff(base=0.05, cap=0.2, stable_after=60.0)
WAIT_FOR_TERM = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
    "time.sleep(60)\n"
)


def script(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def supervisor(command: Callable[[Member], list[str]], n: int = 2, **kw: Any) -> Supervisor:
    kw.setdefault("backoff", FAST)
    kw.setdefault("shutdown_timeout", 5.0)
    return Supervisor(command, instance_ids("host", n), **kw)


def stop_after(sup: Supervisor, seconds: float) -> threading.Timer:
    t = threading.Timer(seconds, sup.request_stop)
    t.start()
    return t


def test_status_ranking_and_overall_status() -> None:
    assert overall_status([0, 0]) == 0
    assert overall_status([0, 3]) == 3
    assert overall_status([2, 3]) == 3
    assert overall_status([6, 2]) == 2
    assert overall_status([3, 137]) == 137  # a crash (death by SIGKILL) outranks a bad record
    assert overall_status([137, 4]) == 4
    assert overall_status([4, 5, 3]) == 5
    assert sorted([0, 2, 3, 4, 5, 6, 97], key=severity) == [5, 4, 97, 3, 2, 6, 0]
    assert exit_status(-9) == 137 and exit_status(4) == 4


def test_backoff_doubles_up_to_the_cap_and_ids_derive_from_the_host() -> None:
    b = Backoff(base=1.0, cap=30.0)
    assert [b.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert instance_ids("web-7", 3) == ["web-7-0", "web-7-1", "web-7-2"]
    assert instance_ids("", 1)[0].endswith("-0")  # the hostname by default


def test_child_command_appends_processes_1_and_the_static_instance_id() -> None:
    m = Member(1, "h-1")
    argv = child_command(["--topic", "t", "--processes", "2", "-X", "a=b"], m, metrics_port=9100)
    assert argv[1:4] == ["-m", "consumer", "run"]
    assert argv[4:] == [
        "--topic", "t", "--processes", "2", "-X", "a=b",
        "--processes", "1", "-X", "group.instance.id=h-1", "--metrics-port", "9102",
    ]  # fmt: skip
    from consumer.cli import build_parser

    args = build_parser().parse_args(argv[3:])
    assert args.processes == "1" and args.kafka_properties[-1] == "group.instance.id=h-1"


def test_all_members_exit_0_and_a_crashed_member_is_restarted() -> None:
    def command(m: Member) -> list[str]:
        crash = m.index == 1 and m.starts < 2  # member 1 crashes twice (status 4), then succeeds
        return script(f"import sys; sys.exit({4 if crash else 0})")

    sup = supervisor(command)
    assert sup.run() == 0
    assert [m.starts for m in sup.members] == [1, 3]
    assert [m.failures for m in sup.members] == [0, 2]


def test_a_member_killed_by_a_signal_is_restarted() -> None:
    def command(m: Member) -> list[str]:
        if m.starts == 0:
            return script("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
        return script("pass")

    sup = supervisor(command, n=1)
    assert sup.run() == 0
    assert sup.members[0].starts == 2


@pytest.mark.parametrize("status", [2, 3])
def test_a_stop_status_is_not_restarted_and_stops_the_others(status: int) -> None:
    def command(m: Member) -> list[str]:
        return script(f"import sys; sys.exit({status})") if m.index == 0 else script(WAIT_FOR_TERM)

    sup = supervisor(command)
    assert sup.run() == status
    assert [m.starts for m in sup.members] == [1, 1]
    assert [m.last_status for m in sup.members] == [status, 0]  # the other was stopped cleanly


def test_sigterm_reaches_every_member_and_the_command_exits_0() -> None:
    sup = supervisor(lambda m: script(WAIT_FOR_TERM), n=3)
    timer = stop_after(sup, 1.0)
    try:
        assert sup.run() == 0
    finally:
        timer.cancel()
    assert [m.last_status for m in sup.members] == [0, 0, 0]


def test_a_member_dying_of_the_stop_signal_counts_as_stopped_and_the_line_says_so() -> None:
    """A member that had not installed its handler yet dies of the SIGTERM it is sent. That is a
    clean stop (it consumed nothing), but the line names the signal: a member that ran a while and
    still died of it did not stop by its handler, and an operator should be able to see that."""
    no_handler = "import time\ntime.sleep(60)\n"

    def command(m: Member) -> list[str]:
        return script(no_handler) if m.index == 0 else script(WAIT_FOR_TERM)

    sup = supervisor(command)
    timer = stop_after(sup, 1.0)
    try:
        with capture_logs() as logs:
            assert sup.run() == 0
    finally:
        timer.cancel()
    stopped = {e["member"]: e for e in logs if e["event"] == "member stopped"}
    assert stopped[0]["status"] == 0 and stopped[0]["died_of"] == "SIGTERM"
    assert stopped[1]["status"] == 0 and "died_of" not in stopped[1]


INTERRUPTED_BY_TERM = (  # a member of a bounded job: its handler exits 128 + 15 (errors.interrupted)
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))\n"
    "time.sleep(60)\n"
)


def test_until_caught_up_stopped_by_a_signal_before_every_member_finished_exits_128_plus_it() -> None:
    """With --until-caught-up the command is a job: a signal that stops it before every member
    finished makes it exit 128 + N, like each member, whether a member stopped by its handler or
    died of the signal; 0 would say the export is complete. One whose members had all finished
    exits 0; a member's stop status still wins over the interruption it causes."""
    def command(m: Member) -> list[str]:
        return script("import sys; sys.exit(0)") if m.index == 0 else script(INTERRUPTED_BY_TERM)

    for signum, status in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        sup = supervisor(command, bounded=True)
        timer = threading.Timer(1.0, sup.request_stop, args=(signum,))
        timer.start()
        try:
            with capture_logs() as logs:
                assert sup.run() == status
        finally:
            timer.cancel()
        assert [m.last_status for m in sup.members] == [0, 0]
        (stopped,) = [e for e in logs if e["event"] == "member stopped"]
        assert stopped["unfinished_by"] == "SIGTERM" and "died_of" not in stopped  # by its handler
    sup = supervisor(lambda m: script("import time\ntime.sleep(60)\n"), bounded=True)  # no handler
    timer = stop_after(sup, 1.0)
    try:
        assert sup.run() == 143
    finally:
        timer.cancel()

    sup = supervisor(lambda m: script("import sys; sys.exit(0)"), bounded=True)
    assert sup.run() == 0
    sup = supervisor(lambda m: script("import sys; sys.exit(3)" if m.index == 0 else INTERRUPTED_BY_TERM),
                     bounded=True)
    assert sup.run() == 3  # the supervisor stopped the other itself: no signal stopped the job
    sup = supervisor(lambda m: script(INTERRUPTED_BY_TERM), bounded=False)
    timer = stop_after(sup, 1.0)
    try:
        assert sup.run() == 0  # a long-running group: stopping is its normal end
    finally:
        timer.cancel()


def test_a_closed_terminal_s_sighup_to_every_process_stops_the_job_and_no_member_crashed() -> None:
    """A closed terminal sends SIGHUP to the whole process group: each member stops by its own
    handler (a bounded job's member exits 129) while the supervisor stops too. The members'
    statuses are stops, not crashes, and the job exits 129."""
    by_hup = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGHUP, lambda *a: sys.exit(129))\n"
        "time.sleep(60)\n"
    )
    sup = supervisor(lambda m: script(by_hup), bounded=True)
    sup.stop_signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # started from a terminal, not nohup

    def hang_up() -> None:
        for m in sup.members:
            if m.proc is not None:
                m.proc.send_signal(signal.SIGHUP)
        sup.request_stop(signal.SIGHUP)

    timer = threading.Timer(1.0, hang_up)
    timer.start()
    try:
        with capture_logs() as logs:
            assert sup.run() == 129
    finally:
        timer.cancel()
    stopped = [e for e in logs if e["event"] == "member stopped"]
    assert [e["unfinished_by"] for e in stopped] == ["SIGHUP", "SIGHUP"], logs
    assert not [e for e in logs if "crashed" in e["event"]]


def test_a_member_that_gave_up_catching_up_is_not_restarted_and_the_others_go_on() -> None:
    def command(m: Member) -> list[str]:
        done_later = "import time, sys; time.sleep(1); sys.exit(0)"
        return script("import sys; sys.exit(6)") if m.index == 0 else script(done_later)

    sup = supervisor(command)
    assert sup.run() == 6
    assert [m.starts for m in sup.members] == [1, 1]
    assert [m.last_status for m in sup.members] == [6, 0]  # the other finished its own work


def test_stop_while_a_restart_is_pending_reports_the_crash() -> None:
    slow = Backoff(base=30.0, cap=30.0)

    def command(m: Member) -> list[str]:
        return script("import sys; sys.exit(5)") if m.index == 0 else script(WAIT_FOR_TERM)

    sup = supervisor(command, backoff=slow)
    timer = stop_after(sup, 1.5)
    try:
        assert sup.run() == 5
    finally:
        timer.cancel()
    assert sup.members[0].starts == 1  # not restarted once the stop was requested


def test_a_member_ignoring_sigterm_is_killed_after_the_grace_period() -> None:
    stubborn = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)\n"
    sup = supervisor(lambda m: script(stubborn), n=1, shutdown_timeout=0.5, kill_grace=0.5)
    timer = stop_after(sup, 0.5)
    try:
        assert sup.run() == 128 + signal.SIGKILL
    finally:
        timer.cancel()
