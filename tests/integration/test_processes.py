"""``consumer run --processes N`` on the real stack: several members from one command, each with
its own static group.instance.id, supervised (restart after a crash, SIGTERM reaches all)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from support import (
    REPO,
    assert_exported_exactly_once,
    consumer_cmd,
    log_events,
    member_starts,
    note_log,
    start_two_members_writing,
    unique,
)

from consumer.producer import produce

RECORDS = 120_000
FLAGS = ("--row-group-rows", "5000", "--file-rows", "40000", "-X", "session.timeout.ms=10000")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for a reaper (an orphan is reparented to whoever reaps)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _instance_ids(events: list[dict[str, Any]]) -> set[str]:
    return {
        e["config"]["kafka_properties"].get("group.instance.id")
        for e in events
        if e.get("event") == "starting" and isinstance(e.get("config"), dict)
    }


def _run_until_caught_up(topic: str, group: str, out: str, host: str) -> subprocess.CompletedProcess[str]:
    cmd = consumer_cmd(topic, group, out, *FLAGS, "--processes", "2", "--host-id", host, "--until-caught-up")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=REPO)


def test_two_processes_until_caught_up_export_every_record_exactly_once(
    stack: Any, s3: Any, unique_prefix: str, tmp_path: Path
) -> None:
    topic, group, host = unique("procs"), unique("g"), unique("h")
    out = f"s3://{stack.s3_bucket}/{unique_prefix.rstrip('/')}"
    res = produce(stack.kafka_bootstrap, topic, "page_view", RECORDS, partitions=4, seed=11)
    run = _run_until_caught_up(topic, group, out, host)
    events = log_events(run.stderr + run.stdout)
    assert run.returncode == 0, run.stderr[-4000:]
    assert [e["member"] for e in member_starts(events)] == [0, 1]  # each once: nothing crashed
    assert _instance_ids(events) == {f"{host}-0", f"{host}-1"}
    assert sum(1 for e in events if e.get("event", "").startswith("caught up")) == 2  # both members
    assert next(e for e in events if e.get("event") == "members exited")["statuses"] == [0, 0]
    assert_exported_exactly_once(s3, stack.s3_bucket, unique_prefix, tmp_path, res.partition_counts)


def test_a_killed_member_restarts_sigterm_stops_all_and_a_restart_finishes_exactly_once(
    stack: Any, s3: Any, unique_prefix: str, tmp_path: Path
) -> None:
    topic, group, host = unique("procs-kill"), unique("g"), unique("h")
    out = f"s3://{stack.s3_bucket}/{unique_prefix.rstrip('/')}"
    res = produce(stack.kafka_bootstrap, topic, "page_view", RECORDS, partitions=4, seed=12)
    sup = start_two_members_writing(topic, group, out, *FLAGS, host=host)
    try:
        victim = member_starts(sup.events())[1]["pid"]
        os.kill(victim, signal.SIGKILL)
        sup.wait_for(
            lambda ev: any(e["member"] == 1 and e["run"] == 2 for e in member_starts(ev)),
            timeout=60,
            what="member 1 restarted",
        )
        crashed = [e for e in sup.events() if e.get("event") == "member crashed: restarting after backoff"]
        assert [(e["member"], e["status"]) for e in crashed] == [(1, 128 + signal.SIGKILL)]
        sup.wait_for(
            lambda ev: sum(1 for e in ev if e.get("event") == "starting") == 3,
            timeout=60,
            what="the restarted member running",
        )
        pids = [e["pid"] for e in member_starts(sup.events())]
        t0 = time.monotonic()
        code = sup.stop(signal.SIGTERM, timeout=25 + 15)
        took = time.monotonic() - t0
    finally:
        if sup.proc.poll() is None:
            sup.proc.kill()
    events = sup.events()
    assert code == 0, sup.log()[-4000:]
    print(f"supervisor stopped 2 members in {took:.1f}s")
    assert not [p for p in pids if _alive(p)], "a member outlived its supervisor"
    assert next(e for e in events if e.get("event") == "members exited")["statuses"] == [0, 0]
    stopped = sum(1 for e in events if e.get("event") == "stopped")
    assert stopped == 2, sup.log()[-6000:]  # the SIGKILLed run logs nothing

    # The same host id again: the static members take their partitions back and finish the topic.
    again = _run_until_caught_up(topic, group, out, host)
    assert again.returncode == 0, again.stderr[-4000:]
    assert_exported_exactly_once(s3, stack.s3_bucket, unique_prefix, tmp_path, res.partition_counts)


def test_a_closed_terminal_stops_the_supervisor_and_every_member_cleanly_and_a_rerun_exports_once(
    stack: Any, s3: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """Closing the terminal or SSH session a command runs in sends SIGHUP to its whole process
    group: the supervisor and every member at once. Left at its default, SIGHUP ended each process
    mid-flush (safe, but a restart's work). Now each stops as on SIGTERM: it flushes, commits and
    exits 0, and nothing is taken for a crash. A rerun then exports every offset once."""
    topic, group, host = unique("procs-hup"), unique("g"), unique("h")
    out = f"s3://{stack.s3_bucket}/{unique_prefix.rstrip('/')}"
    res = produce(stack.kafka_bootstrap, topic, "page_view", RECORDS, partitions=4, seed=14)
    sup = start_two_members_writing(topic, group, out, *FLAGS, host=host, new_session=True)
    try:
        pids = [e["pid"] for e in member_starts(sup.events())]
        os.killpg(sup.proc.pid, signal.SIGHUP)
        code = sup.proc.wait(timeout=25 + 15)
    finally:
        if sup.proc.poll() is None:
            os.killpg(sup.proc.pid, signal.SIGKILL)
            sup.proc.wait()
    events = sup.events()
    assert code == 0, sup.log()[-4000:]
    assert not [p for p in pids if _alive(p)], "a member outlived its supervisor"
    assert next(e for e in events if e.get("event") == "members exited")["statuses"] == [0, 0]
    assert sum(1 for e in events if e.get("event") == "stopped") == 2, sup.log()[-6000:]  # by their handlers
    assert not [e for e in events if "crashed" in e.get("event", "")], sup.log()[-6000:]
    assert [e["member"] for e in member_starts(events)] == [0, 1]  # none restarted

    again = _run_until_caught_up(topic, group, out, host)
    assert again.returncode == 0, again.stderr[-4000:]
    assert_exported_exactly_once(s3, stack.s3_bucket, unique_prefix, tmp_path, res.partition_counts)


def test_a_member_of_a_bounded_job_sigtermed_alone_is_restarted_and_the_job_finishes_exactly_once(
    stack: Any, s3: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """``--until-caught-up --processes 2``, and something other than the supervisor SIGTERMs one
    member (an operator's ``kill``, a tool cleaning up): the member commits what it holds and
    exits 143, not done. The job is not stopping, so the supervisor restarts it, and the command
    exits 0 once every member has caught up, every offset once."""
    topic, group, host = unique("procs-term"), unique("g"), unique("h")
    out = f"s3://{stack.s3_bucket}/{unique_prefix.rstrip('/')}"
    res = produce(stack.kafka_bootstrap, topic, "page_view", RECORDS, partitions=4, seed=13)
    cmd = consumer_cmd(topic, group, out, *FLAGS, "--processes", "2", "--host-id", host, "--until-caught-up")
    log_path = note_log(tmp_path / "supervisor.log")
    with open(log_path, "wb") as log:
        sup = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while True:  # both members started, the group formed: far from caught up
            events = log_events(log_path.read_text(errors="replace"))
            starts = member_starts(events)
            if len(starts) == 2 and any(e.get("event") == "partitions assigned" for e in events):
                break
            assert sup.poll() is None and time.monotonic() < deadline, log_path.read_text()[-4000:]
            time.sleep(0.05)
        os.kill(starts[1]["pid"], signal.SIGTERM)
        code = sup.wait(timeout=300)
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait()
    events = log_events(log_path.read_text(errors="replace"))
    assert code == 0, log_path.read_text()[-4000:]
    crashed = [e for e in events if e.get("event") == "member crashed: restarting after backoff"]
    assert [(e["member"], e["status"]) for e in crashed] == [(1, 128 + signal.SIGTERM)], crashed
    assert [e["member"] for e in member_starts(events)] == [0, 1, 1]
    assert next(e for e in events if e.get("event") == "members exited")["statuses"] == [0, 0]
    assert_exported_exactly_once(s3, stack.s3_bucket, unique_prefix, tmp_path, res.partition_counts)


def test_a_supervisor_killed_by_sigkill_takes_its_members_down_cleanly(
    stack: Any, s3: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """No handler runs in a SIGKILLed supervisor: the kernel SIGTERMs the members
    (PR_SET_PDEATHSIG), and each stops as after a forwarded SIGTERM, within its shutdown bound.
    A member that outlived its supervisor would hold its partitions and static id while a new
    supervisor started new members with the same ids."""
    topic, group, host = unique("procs-orphan"), unique("g"), unique("h")
    out = f"s3://{stack.s3_bucket}/{unique_prefix.rstrip('/')}"
    res = produce(stack.kafka_bootstrap, topic, "page_view", RECORDS, partitions=4, seed=13)
    sup = start_two_members_writing(topic, group, out, *FLAGS, host=host)
    pids = [e["pid"] for e in member_starts(sup.events())]
    try:
        sup.proc.kill()
        sup.proc.wait(timeout=10)
        deadline = time.monotonic() + 25 + 15  # --shutdown-timeout + close + margin
        while any(_running(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.5)
        survivors = [p for p in pids if _running(p)]
    finally:
        for p in pids:
            if _running(p):
                os.kill(p, signal.SIGKILL)
    assert not survivors, f"members outlived their SIGKILLed supervisor:\n{sup.log()[-4000:]}"
    stopped = [e for e in sup.events() if e.get("event") == "stopped"]
    assert len(stopped) == 2 and all(e["clean"] for e in stopped), sup.log()[-6000:]

    again = _run_until_caught_up(topic, group, out, host)
    assert again.returncode == 0, again.stderr[-4000:]
    assert_exported_exactly_once(s3, stack.s3_bucket, unique_prefix, tmp_path, res.partition_counts)


def test_fewer_processes_than_before_take_over_the_stopped_ids_partitions_and_export_once(
    stack: Any, s3: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """An operator scales ``--processes 2`` down to 1: the static members ``<host>-0`` and
    ``<host>-1`` never left the group, so their partitions wait for their sessions to expire
    (README, *Fewer processes than before*); then the one member takes all four and finishes the
    topic, every offset once."""
    topic, group, host = unique("procs-down"), unique("g"), unique("h")
    out = f"s3://{stack.s3_bucket}/{unique_prefix.rstrip('/')}"
    res = produce(stack.kafka_bootstrap, topic, "page_view", RECORDS, partitions=4, seed=14)
    sup = start_two_members_writing(topic, group, out, *FLAGS, host=host)
    try:
        assert sup.stop(signal.SIGTERM, timeout=25 + 15) == 0, sup.log()[-4000:]
    finally:
        if sup.proc.poll() is None:
            sup.proc.kill()
    cmd = consumer_cmd(topic, group, out, *FLAGS, "--processes", "1", "--host-id", host, "--until-caught-up")
    one = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=REPO)
    events = log_events(one.stderr + one.stdout)
    assert one.returncode == 0, one.stderr[-4000:]
    assert _instance_ids(events) == {None}  # one process is the member itself, not static
    assigned = {p for e in events if e.get("event") == "partitions assigned" for p in e["partitions"]}
    assert assigned == {f"{topic}[{p}]" for p in range(4)}
    assert_exported_exactly_once(s3, stack.s3_bucket, unique_prefix, tmp_path, res.partition_counts)
