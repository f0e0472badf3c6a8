"""Replay jobs against the real stack: a bounded slice, resumable after kill -9, idempotent, and
invisible to the live consumer group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support import (
    REPO,
    download_finals,
    final_keys,
    kafka_conf,
    list_keys,
    read_table,
    staging_keys,
    stop_reason,
    unique,
)

from consumer.faults import FAULT_EXIT_CODE
from consumer.producer import produce

# Only its own topics, groups and prefixes, and waits for outcomes: see tests/conftest.py.
pytestmark = pytest.mark.shares_stack


def replay(
    topic: str, out: str, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-m",
        "consumer",
        "replay",
        "--topic",
        topic,
        "--schema",
        "page_view",
        "--output",
        out,
        "--row-group-rows",
        "300",
        "--log-format",
        "json",
        *extra,
    ]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=180, env={**os.environ, **(env or {})}, cwd=REPO
    )


def test_replay_slice_resumes_after_kill_and_is_idempotent(
    stack: Any, s3: Any, unique_prefix: str, tmp_path: Path
) -> None:
    topic = unique("replay")
    produce(stack.kafka_bootstrap, topic, "page_view", 6_000, partitions=2)
    out = f"s3://{stack.s3_bucket}/{unique_prefix.rstrip('/')}"
    bounds = ("--from", "0=500,1=1000", "--to", "0=2500")  # partition 1 runs to the end (3000)
    killed = replay(topic, out, *bounds, env={"CONSUMER_FAULT": "after_commit:4"})
    assert killed.returncode == FAULT_EXIT_CODE, killed.stderr[-3000:]
    state = [k for k, _ in list_keys(s3, stack.s3_bucket, unique_prefix) if "/_state/" in k]
    assert state, "replay positions are kept beside the output"
    # The files the killed replay left open: (partition, first position) from the staged pieces.
    staged = {
        (int(k.split("/partition=")[1].split("/")[0]), int(k.rsplit("/", 2)[1]))
        for k in staging_keys(s3, stack.s3_bucket, unique_prefix)
        if k.endswith(".piece")
    }
    assert staged, "the killed replay left committed pieces of open files"
    done = replay(topic, out, *bounds)
    assert done.returncode == 0, done.stderr[-3000:]
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    resumed = {
        (e["partition"], e["resumed_file"])
        for e in events
        if e.get("event") == "partition recovered" and e.get("resumed_file") is not None
    }
    assert resumed == staged, f"resumed {sorted(resumed)}, but the open files were {sorted(staged)}"
    finished = [e for e in events if str(e.get("event")).startswith("replay finished")]
    assert len(finished) == 1, done.stderr[-3000:]
    assert staging_keys(s3, stack.s3_bucket, unique_prefix) == []
    table = read_table(download_finals(s3, stack.s3_bucket, unique_prefix, tmp_path / "a"))
    got: dict[int, list[int]] = {}
    for p, o in zip(
        table.column("kafka_partition").to_pylist(), table.column("kafka_offset").to_pylist(), strict=True
    ):
        got.setdefault(p, []).append(o)
    assert sorted(got[0]) == list(range(500, 2500))
    assert sorted(got[1]) == list(range(1000, 3000))

    # Running the finished replay again changes nothing: same keys, same bytes.
    def contents() -> dict[str, bytes]:
        return {
            k: s3.get_object(Bucket=stack.s3_bucket, Key=k)["Body"].read()
            for k, _ in list_keys(s3, stack.s3_bucket, unique_prefix)
        }

    before = contents()
    assert any(k.endswith(".parquet") for k in before)
    again = replay(topic, out, *bounds)
    assert again.returncode == 0, again.stderr[-3000:]
    after = contents()
    assert sorted(after) == sorted(before), "the re-run changed the set of keys"
    changed = [k for k in before if after[k] != before[k]]
    assert not changed, f"the re-run rewrote {changed[:5]} with other bytes"

    # A replay joins no group: the live group's committed offsets are untouched.
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(kafka_conf({"bootstrap.servers": stack.kafka_bootstrap, "group.id": "consumer-replay"}))
    try:
        committed = c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)
    finally:
        c.close()
    assert all(tp.offset < 0 for tp in committed)


def test_replay_from_a_timestamp(stack: Any, s3: Any, unique_prefix: str, tmp_path: Path) -> None:
    from consumer.samples import make_record, timestamp_ms_for

    topic = unique("replay-ts")
    produce(stack.kafka_bootstrap, topic, "page_view", 2_000, partitions=1)
    ts = timestamp_ms_for("page_view", make_record("page_view", 1_200))
    out = f"s3://{stack.s3_bucket}/{unique_prefix.rstrip('/')}"
    done = replay(topic, out, "--from", f"ts:{ts}")
    assert done.returncode == 0, done.stderr[-3000:]
    offsets = read_table(download_finals(s3, stack.s3_bucket, unique_prefix, tmp_path)).column("kafka_offset")
    # Kafka starts at the first offset whose timestamp is >= ts (one partition: offset = index);
    # timestamps grow with the index plus jitter, so that may be before 1,200, but it is exact.
    first = next(o for o in range(2_000) if timestamp_ms_for("page_view", make_record("page_view", o)) >= ts)
    assert first <= 1_200
    assert sorted(offsets.to_pylist()) == list(range(first, 2_000))


def test_a_slice_whose_from_lies_past_its_to_is_refused_before_anything_is_written(
    stack: Any, s3: Any, unique_prefix: str
) -> None:
    """Swapped --from and --to (or a time range backwards) made those partitions export nothing,
    reported done with the rest: a replay that exited 0 with a slice missing. Now refused (exit
    2), naming the partitions, as Kafka resolved the positions; an empty slice is no error."""
    from consumer.samples import make_record, timestamp_ms_for

    topic = unique("replay-inverted")
    produce(stack.kafka_bootstrap, topic, "page_view", 1_000, partitions=2)
    out = f"s3://{stack.s3_bucket}/{unique_prefix.rstrip('/')}"
    late, early = (timestamp_ms_for("page_view", make_record("page_view", i)) for i in (800, 200))
    for bounds, named in (
        (("--from", "0=300", "--to", "0=100"), f"{topic}[0] from 300 to 100"),
        (("--from", f"ts:{late}", "--to", f"ts:{early}"), f"{topic}[0] from "),
    ):
        done = replay(topic, out, *bounds)
        assert done.returncode == 2, done.stderr[-3000:]
        said = stop_reason(done.stderr)
        assert said.startswith(f"--from lies past --to for {named}"), said
        assert "Swap --from and --to" in said
        assert not final_keys(s3, stack.s3_bucket, unique_prefix)
    empty = replay(topic, out, "--from", "0=100,1=100", "--to", "0=100,1=100")
    assert empty.returncode == 0, empty.stderr[-3000:]


def _stopped(pid: int) -> bool:
    """Whether the process is stopped (SIGSTOP: state T in /proc/<pid>/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "T"
    except FileNotFoundError:
        return False


def test_a_second_replay_of_the_prefix_fences_the_first_which_says_so(
    stack: Any, s3: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """A replay job started twice (a retried Kubernetes Job whose first pod was thought dead): the
    first freezes after its second commit, the second runs the whole slice, then the first wakes
    up. Its next commit finds the `_state` object changed (If-Match): status 5, saying another
    replay writes the prefix; before, "unexpected error … restart me". A replay run again then
    completes nothing new and leaves the slice whole: every offset in one final file."""
    import signal
    import time

    topic = unique("replay-twice")
    produce(stack.kafka_bootstrap, topic, "page_view", 3_000, partitions=1)
    out = f"s3://{stack.s3_bucket}/{unique_prefix.rstrip('/')}"
    cmd = [sys.executable, "-m", "consumer", "replay", "--topic", topic, "--schema", "page_view",
           "--output", out, "--row-group-rows", "300", "--log-format", "json"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                             env={**os.environ, "CONSUMER_FAULT": "after_commit:2:freeze"})
    try:
        deadline = time.monotonic() + 60
        while not _stopped(first.pid):
            assert first.poll() is None and time.monotonic() < deadline, "the first replay never froze"
            time.sleep(0.1)
        second = replay(topic, out)
        assert second.returncode == 0, second.stderr[-3000:]
        first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 5, err[-3000:]
    assert "another replay writes this output prefix" in err, err[-3000:]
    assert "unexpected error" not in err, err[-3000:]
    again = replay(topic, out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert staging_keys(s3, stack.s3_bucket, unique_prefix) == []
    offsets = read_table(download_finals(s3, stack.s3_bucket, unique_prefix, tmp_path)).column("kafka_offset")
    assert sorted(offsets.to_pylist()) == list(range(3_000))


@pytest.mark.parametrize("job", ["replay", "until-caught-up"])
def test_a_bounded_job_stopped_by_sigterm_before_its_end_exits_143_and_a_rerun_finishes_it(
    stack: Any, s3: Any, unique_prefix: str, tmp_path: Path, job: str
) -> None:
    """A replay or a ``run --until-caught-up`` is a job: status 0 tells a Kubernetes Job, an
    Airflow task or a ``&&`` chain that the slice is exported. SIGTERMed half-way (a node drained,
    a spot instance reclaimed) it used to exit 0 too, and the scheduler took the half for the
    whole. Now it commits what it holds, as any stop does, and exits 143 (128 + SIGTERM); run
    again, it finishes the job: every offset in exactly one final file."""
    import signal
    import time

    from support import consumer_cmd

    topic, group = unique(f"bounded-{job}"), unique("g")
    produce(stack.kafka_bootstrap, topic, "page_view", 3_000, partitions=1)
    out = f"s3://{stack.s3_bucket}/{unique_prefix.rstrip('/')}"
    if job == "replay":
        cmd = [sys.executable, "-m", "consumer", "replay", "--topic", topic, "--schema", "page_view",
               "--output", out, "--row-group-rows", "300", "--batch-size", "500", "--log-format", "json"]
    else:
        cmd = consumer_cmd(topic, group, out, "--until-caught-up", "--row-group-rows", "300",
                           "--batch-size", "500")  # records left to read after the thaw
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                             env={**os.environ, "CONSUMER_FAULT": "after_commit:2:freeze"})
    try:
        deadline = time.monotonic() + 60
        while not _stopped(first.pid):  # frozen after its second commit: half-way, for sure
            assert first.poll() is None and time.monotonic() < deadline, "the job never froze"
            time.sleep(0.1)
        first.send_signal(signal.SIGTERM)
        first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "stopped by a signal before the job finished" in err, err[-3000:]
    assert not any(k.endswith(".parquet") for k, _ in list_keys(s3, stack.s3_bucket, unique_prefix))

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=REPO)
    assert again.returncode == 0, again.stderr[-3000:]
    assert staging_keys(s3, stack.s3_bucket, unique_prefix) == []
    offsets = read_table(download_finals(s3, stack.s3_bucket, unique_prefix, tmp_path)).column("kafka_offset")
    assert sorted(offsets.to_pylist()) == list(range(3_000))
