"""Operator actions and fail modes on the real stack (issue 8): each used to lose rows, duplicate
them, or leave a process alive doing nothing. Every test reads the outcome back from S3 and Kafka.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from support import (
    REPO,
    count,
    describe_group,
    download_finals,
    final_keys,
    kafka_conf,
    log_events,
    offsets_by_partition,
    read_table,
    run_consumer,
    staging_keys,
    start_consumer,
    static_member,
    unique,
)

from consumer.faults import FAULT_EXIT_CODE
from consumer.producer import produce
from consumer.samples import encode_raw, make_record, parsed_schema

# Only its own topics, groups and prefixes, and waits for outcomes: see tests/conftest.py.
pytestmark = [pytest.mark.stack, pytest.mark.shares_stack]

SCHEMA = parsed_schema("page_view")


def produce_raw(bootstrap: str, topic: str, values: list[bytes | None]) -> None:
    p = Producer(kafka_conf({"bootstrap.servers": bootstrap, "linger.ms": 5}))
    for v in values:
        p.produce(topic, v, partition=0)
    assert p.flush(30) == 0


def committed(bootstrap: str, group: str, topic: str, partitions: int = 1) -> list[int]:
    c = Consumer(kafka_conf({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}))
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return [tp.offset for tp in tps]
    finally:
        c.close()


def output(stack: Any, prefix: str) -> str:
    return f"s3://{stack.s3_bucket}/{prefix.rstrip('/')}"


def reset_offset(admin: Any, group: str, topic: str, to: int) -> None:
    """kafka-consumer-groups --reset-offsets --to-offset ``to`` (partition 0)."""
    from confluent_kafka import ConsumerGroupTopicPartitions

    admin.alter_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0, to)])]
    )[group].result(timeout=30)


def three_staged_row_groups(
    stack: Any, make_topic: Any, prefix: str, *args: str, spread_hours: int = 0
) -> tuple[str, str, str]:
    """A one-partition topic of 3,000 records whose consumer stopped with row groups [0, 1000),
    [1000, 2000) and [2000, 3000) committed into its open file (or, with ``spread_hours`` and
    ``--partition-by``, into each hour's): (topic, group, output)."""
    topic, group = make_topic(partitions=1), unique("g")
    out = output(stack, prefix)
    produce(stack.kafka_bootstrap, topic, "page_view", 3000, partitions=1, spread_hours=spread_hours)
    run = start_consumer(topic, group, out, "--row-group-rows", "1000", *args)
    run.wait_for(
        lambda ev: any(e.get("event") == "row group durable" and e.get("to_position") == 3000 for e in ev),
        what="3000 rows committed",
    )
    assert run.stop() == 0
    return topic, group, out


def test_fail_mode_commits_exactly_up_to_the_bad_record(
    stack: Any, s3: Any, make_topic: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """Item 1: 3,000 good, one malformed body, 100 good, --on-error fail → exit 3, committed 3000."""
    topic, group = make_topic(partitions=1), unique("g")
    good = [encode_raw(SCHEMA, make_record("page_view", i)) for i in range(3101)]
    values: list[bytes | None] = [*good[:3000], good[3000] + b"\x00\x01", *good[3001:]]
    produce_raw(stack.kafka_bootstrap, topic, values)
    res = run_consumer(topic, group, output(stack, unique_prefix), "--on-error", "fail")
    assert res.returncode == 3, res.stderr[-3000:]
    assert "offset 3000" in res.stderr
    assert committed(stack.kafka_bootstrap, group, topic) == [3000]
    keys = [k for k, _ in _all(s3, stack.s3_bucket, unique_prefix)]
    assert not [k for k in keys if "_dead_letters/" in k]
    # Every committed row is durable (staged or final), and nothing past the bad record is.
    rows = _durable_offsets(s3, stack.s3_bucket, unique_prefix, tmp_path)
    assert rows == list(range(3000))


def test_forward_offset_reset_keeps_the_committed_rows(
    stack: Any, s3: Any, admin: Any, make_topic: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """Item 2: 3,000 rows committed into an open file, group offset moved to the end, restart →
    the 3,000 rows are finished as a final file, and consumption continues from the new end."""
    topic, group, out = three_staged_row_groups(stack, make_topic, unique_prefix)
    assert final_keys(s3, stack.s3_bucket, unique_prefix) == []  # the file is open, rows staged
    produce(stack.kafka_bootstrap, topic, "page_view", 500, partitions=1, start=3000)
    reset_offset(admin, group, topic, 3500)  # --to-latest
    res = run_consumer(topic, group, out)
    assert res.returncode == 0, res.stderr[-3000:]
    assert any("moved forward" in str(e.get("event")) for e in log_events(res.stderr))
    table = read_table(download_finals(s3, stack.s3_bucket, unique_prefix, tmp_path))
    assert sorted(table.column("kafka_offset").to_pylist()) == list(range(3000))
    assert staging_keys(s3, stack.s3_bucket, unique_prefix) == []
    assert committed(stack.kafka_bootstrap, group, topic) == [3500]


BUCKETED = ("--partition-by", "dt={@timestamp:%Y-%m-%d}/hr={@timestamp:%H}")


@pytest.mark.parametrize(
    ("layout", "inside", "row_group", "boundary"),
    [
        ((), 2500, "[2000, 3000)", 2000),
        # Under --partition-by, inside the first row group, where no staged chain ends at or below
        # the position: that run used to take the three hours' files for a fenced member's
        # leftovers, delete them, and go on from 500: offsets 0..499 were in no file, exit 0.
        (BUCKETED, 500, "[0, 1000)", 0),
    ],
    ids=["plain", "bucketed-first-row-group"],
)
def test_backward_offset_reset_inside_a_staged_row_group_stops_then_a_boundary_continues(
    stack: Any, s3: Any, admin: Any, make_topic: Any, unique_prefix: str, tmp_path: Path,
    layout: tuple[str, ...], inside: int, row_group: str, boundary: int,
) -> None:
    """Row groups [0, 1000) [1000, 2000) [2000, 3000) staged (under --partition-by into three
    hours' files), the group reset inside one → status 5 naming its two boundaries, nothing
    changed; reset to a boundary → the rest is read again and every offset is in a file once."""
    topic, group, out = three_staged_row_groups(
        stack, make_topic, unique_prefix, *layout, spread_hours=3 if layout else 0
    )
    staged = staging_keys(s3, stack.s3_bucket, unique_prefix)
    files = {k.rsplit("/", 2)[0] for k in staged if k.endswith(".piece")}
    assert len(files) == (3 if layout else 1), staged
    reset_offset(admin, group, topic, inside)
    res = run_consumer(topic, group, out, "--row-group-rows", "1000", *layout)
    assert res.returncode == 5, res.stderr[-3000:]
    assert f"inside the durable row group {row_group}" in res.stderr
    assert staging_keys(s3, stack.s3_bucket, unique_prefix) == staged
    assert final_keys(s3, stack.s3_bucket, unique_prefix) == []
    reset_offset(admin, group, topic, boundary)
    res = run_consumer(topic, group, out, "--row-group-rows", "1000", *layout)
    assert res.returncode == 0, res.stderr[-3000:]
    table = read_table(download_finals(s3, stack.s3_bucket, unique_prefix, tmp_path))
    assert sorted(table.column("kafka_offset").to_pylist()) == list(range(3000))
    assert committed(stack.kafka_bootstrap, group, topic) == [3000]


def test_a_bucketed_flush_outlives_expired_offsets_and_retention_of_its_records(
    stack: Any, s3: Any, admin: Any, make_topic: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """One flush staged [0, 3000) into three hours' files and committed 3000; the group stayed
    down past offset retention (its offsets are gone) and record retention (offsets below 1500
    deleted). The pieces' rows account for the whole range, so recovery adopts 3000 and keeps
    them. It used to take them for a flush cut short by a crash: it adopted 0, deleted them, and
    stopped with status 5 saying records [0, 1500) were deleted by retention: rows that had been
    durable in S3."""
    bucketed = (*BUCKETED, "--row-group-rows", "3000")
    topic, group, out = three_staged_row_groups(stack, make_topic, unique_prefix, *bucketed, spread_hours=3)
    staged = staging_keys(s3, stack.s3_bucket, unique_prefix)
    assert len([k for k in staged if k.endswith("-00000000000000003000.piece")]) == 3, staged
    admin.delete_consumer_groups([group])[group].result(timeout=30)
    admin.delete_records([TopicPartition(topic, 0, 1500)])[TopicPartition(topic, 0, 1500)].result(timeout=30)
    res = run_consumer(topic, group, out, *bucketed)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "adopting 3000" in res.stderr
    table = read_table(download_finals(s3, stack.s3_bucket, unique_prefix, tmp_path))
    assert sorted(table.column("kafka_offset").to_pylist()) == list(range(3000))
    assert committed(stack.kafka_bootstrap, group, topic) == [3000]


@pytest.mark.parametrize("layout", [(), BUCKETED], ids=["plain", "bucketed"])
def test_a_flush_of_bad_records_only_survives_a_reset_into_it_and_expired_offsets(
    stack: Any, s3: Any, admin: Any, make_topic: Any, unique_prefix: str, tmp_path: Path,
    layout: tuple[str, ...],
) -> None:
    """500 good records rolled, then 300 bad ones: their dead-letter objects are all that holds
    [500, 800) (the file of no rows publishes nothing when it rolls; under --partition-by no
    bucket file is opened), and 800 is committed.
    - An offset moved back inside one of them stops with status 5 naming its range, nothing
      changed. That run used to delete the objects as never committed and read from there: the
      dead letters below the position were lost.
    - The operator undoes it; then the group's offsets expire and retention deletes the records
      below 700. Recovery adopts 800 past the objects, whose lines account for their ranges, and
      keeps them. It used to adopt 500, delete them to read the records again, and stop with
      status 5: [500, 700) were gone from Kafka too."""
    topic, group = make_topic(partitions=1), unique("g")
    out = output(stack, unique_prefix)
    good = [encode_raw(SCHEMA, make_record("page_view", i)) for i in range(800)]
    produce_raw(stack.kafka_bootstrap, topic, list(good[:500]))
    assert (res := run_consumer(topic, group, out, *layout)).returncode == 0, res.stderr[-3000:]
    produce_raw(stack.kafka_bootstrap, topic, [v + b"\x00\x01" for v in good[500:]])
    assert (res := run_consumer(topic, group, out, *layout)).returncode == 0, res.stderr[-3000:]
    assert committed(stack.kafka_bootstrap, group, topic) == [800]
    assert staging_keys(s3, stack.s3_bucket, unique_prefix) == []
    before = dict(_all(s3, stack.s3_bucket, unique_prefix))
    ranges = sorted(tuple(int(x) for x in k.rsplit("/", 1)[1].removesuffix(".jsonl").split("-"))
                    for k in before if "_dead_letters/" in k)
    assert ranges[0][0] == 500 and ranges[-1][1] == 800, ranges
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges)), ranges
    frm, to = next(r for r in ranges if r[1] - r[0] >= 2)

    reset_offset(admin, group, topic, (frm + to) // 2)
    res = run_consumer(topic, group, out, *layout)
    assert res.returncode == 5, res.stderr[-3000:]
    assert f"position {(frm + to) // 2} is inside [{frm}, {to})" in res.stderr
    assert dict(_all(s3, stack.s3_bucket, unique_prefix)) == before
    reset_offset(admin, group, topic, 800)  # the operator undoes it

    admin.delete_consumer_groups([group])[group].result(timeout=30)
    admin.delete_records([TopicPartition(topic, 0, 700)])[TopicPartition(topic, 0, 700)].result(timeout=30)
    res = run_consumer(topic, group, out, *layout)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "adopting 800" in res.stderr
    assert dict(_all(s3, stack.s3_bucket, unique_prefix)) == before
    assert committed(stack.kafka_bootstrap, group, topic) == [800]
    table = read_table(download_finals(s3, stack.s3_bucket, unique_prefix, tmp_path))
    assert sorted(table.column("kafka_offset").to_pylist()) == list(range(500))


def committed_note(bootstrap: str, group: str, topic: str) -> str:
    """The metadata Kafka keeps with the group's offset of partition 0."""
    c = Consumer(kafka_conf({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}))
    try:
        return str(c.committed([TopicPartition(topic, 0)], timeout=10)[0].metadata or "")
    finally:
        c.close()


def test_staged_rows_deleted_by_someone_else_stop_with_status_5_until_the_offset_is_moved_back(
    stack: Any, s3: Any, admin: Any, make_topic: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """Row groups [0, 1000) [1000, 2000) [2000, 3000) staged and committed; an outsider (a
    lifecycle rule on _staging/, a clean-up) deletes the newest piece. The commit's note on the
    real broker says the rows were staged here, so the restart stops with status 5 naming
    [2000, 3000) instead of skipping it as a reset forwards, changing nothing. The operator moves
    the offset back to 2000 (which clears the note, as kafka-consumer-groups does), and the file
    then holds every offset once."""
    topic, group, out = three_staged_row_groups(stack, make_topic, unique_prefix)
    assert committed_note(stack.kafka_bootstrap, group, topic) == f"kafka-parquet-consumer/1 staged {out}"
    staged = staging_keys(s3, stack.s3_bucket, unique_prefix)
    newest = [k for k in staged if k.endswith("-00000000000000003000.piece")]
    assert len(newest) == 1
    s3.delete_object(Bucket=stack.s3_bucket, Key=newest[0])
    res = run_consumer(topic, group, out, "--row-group-rows", "1000")
    assert res.returncode == 5, res.stderr[-3000:]
    assert "the records [2000, 3000) are in no file. Nothing was changed." in res.stderr
    assert staging_keys(s3, stack.s3_bucket, unique_prefix) == [k for k in staged if k != newest[0]]
    assert final_keys(s3, stack.s3_bucket, unique_prefix) == []
    assert committed(stack.kafka_bootstrap, group, topic) == [3000]
    reset_offset(admin, group, topic, 2000)
    assert committed_note(stack.kafka_bootstrap, group, topic) == ""
    res = run_consumer(topic, group, out, "--row-group-rows", "1000")
    assert res.returncode == 0, res.stderr[-3000:]
    table = read_table(download_finals(s3, stack.s3_bucket, unique_prefix, tmp_path))
    assert sorted(table.column("kafka_offset").to_pylist()) == list(range(3000))
    assert committed(stack.kafka_bootstrap, group, topic) == [3000]
    assert committed_note(stack.kafka_bootstrap, group, topic) == f"kafka-parquet-consumer/1 rolled {out}"


def test_staged_pieces_of_bad_records_only_deleted_by_someone_else_lose_nothing_and_the_run_goes_on(
    stack: Any, s3: Any, make_topic: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """Row group [0, 1000) staged, then 300 malformed records: their flush writes a piece of no
    rows into the open file and the dead letters, and commits 1300 with the "staged" note. A
    clean-up deletes that piece. Every record of [1000, 1300) is a dead letter, so nothing is
    lost: the restart goes on (exit 0), the file is made final with [0, 1000), and the dead
    letters stay. It used to stop with status 5, saying [1000, 1300) were in no file."""
    topic, group = make_topic(partitions=1), unique("g")
    out = output(stack, unique_prefix)
    good = [encode_raw(SCHEMA, make_record("page_view", i)) for i in range(1300)]
    produce_raw(stack.kafka_bootstrap, topic, [*good[:1000], *(v + b"\x00\x01" for v in good[1000:])])
    run = start_consumer(topic, group, out, "--row-group-rows", "1000")
    run.wait_for(lambda ev: any(e.get("event") == "row group durable" and e.get("to_position") == 1000
                                for e in ev), what="1000 rows committed")
    assert run.stop() == 0
    assert committed(stack.kafka_bootstrap, group, topic) == [1300]
    assert committed_note(stack.kafka_bootstrap, group, topic) == f"kafka-parquet-consumer/1 staged {out}"
    staged = staging_keys(s3, stack.s3_bucket, unique_prefix)
    of_no_rows = [k for k in staged if k.endswith(".piece") and "/00000000000000001000-" in k]
    assert of_no_rows, staged
    for key in of_no_rows:
        s3.delete_object(Bucket=stack.s3_bucket, Key=key)
    res = run_consumer(topic, group, out, "--row-group-rows", "1000")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "records [1000, 1300) are all in dead letters" in res.stderr
    table = read_table(download_finals(s3, stack.s3_bucket, unique_prefix, tmp_path))
    assert sorted(table.column("kafka_offset").to_pylist()) == list(range(1000))
    letters = [json.loads(line) for key, _ in _all(s3, stack.s3_bucket, unique_prefix)
               if "_dead_letters/" in key
               for line in s3.get_object(Bucket=stack.s3_bucket, Key=key)["Body"].read().splitlines()]
    assert sorted(x["offset"] for x in letters) == list(range(1000, 1300))
    assert committed(stack.kafka_bootstrap, group, topic) == [1300]
    assert committed_note(stack.kafka_bootstrap, group, topic) == f"kafka-parquet-consumer/1 rolled {out}"


def test_a_position_re_set_by_the_operator_gets_its_note_back_at_the_next_recovery(
    stack: Any, s3: Any, admin: Any, make_topic: Any, unique_prefix: str
) -> None:
    """The operator re-sets the offset where it is (--to-offset 3000: Kafka drops the note), and the
    group runs again with nothing new to read: no flush, no commit. A deletion of the newest piece
    then looked like a reset forwards, and the next run went on with [2000, 3000) in no file, exit
    0. The recovery that resumes the pieces now commits 3000 again with its note on the real
    broker, so that deletion stops the next run with status 5, changing nothing."""
    topic, group, out = three_staged_row_groups(stack, make_topic, unique_prefix)
    reset_offset(admin, group, topic, 3000)
    assert committed_note(stack.kafka_bootstrap, group, topic) == ""
    run = start_consumer(topic, group, out, "--row-group-rows", "1000")
    run.wait_for(lambda ev: any(e.get("event") == "partition recovered" for e in ev), what="recovery")
    assert run.stop() == 0
    assert committed_note(stack.kafka_bootstrap, group, topic) == f"kafka-parquet-consumer/1 staged {out}"
    staged = staging_keys(s3, stack.s3_bucket, unique_prefix)
    newest = [k for k in staged if k.endswith("-00000000000000003000.piece")]
    s3.delete_object(Bucket=stack.s3_bucket, Key=newest[0])
    res = run_consumer(topic, group, out, "--row-group-rows", "1000")
    assert res.returncode == 5, res.stderr[-3000:]
    assert "the records [2000, 3000) are in no file. Nothing was changed." in res.stderr
    assert staging_keys(s3, stack.s3_bucket, unique_prefix) == [k for k in staged if k != newest[0]]


def test_a_bucket_file_deleted_whole_stops_with_status_5_until_the_offset_is_moved_to_its_start(
    stack: Any, s3: Any, admin: Any, make_topic: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """Under --partition-by, row groups [0, 1000) [1000, 2000) [2000, 3000) staged into three
    hours' files; an outsider deletes one hour's file whole. The other two still reach 3000, so
    the restart used to go on and that hour's rows were in no file, exit 0. Every piece names the
    files its flush wrote into: the restart stops with status 5 naming it, changing nothing; the
    offset moved back to its start exports every offset once."""
    topic, group, out = three_staged_row_groups(stack, make_topic, unique_prefix, *BUCKETED, spread_hours=3)
    staged = staging_keys(s3, stack.s3_bucket, unique_prefix)
    files = sorted({k.rsplit("/", 2)[0] for k in staged if k.endswith(".piece")})
    assert len(files) == 3, staged
    doomed = [k for k in staged if k.startswith(files[1] + "/")]
    for key in doomed:
        s3.delete_object(Bucket=stack.s3_bucket, Key=key)
    res = run_consumer(topic, group, out, "--row-group-rows", "1000", *BUCKETED)
    assert res.returncode == 5, res.stderr[-3000:]
    assert "deleted by someone else" in res.stderr and "offset back to 0" in res.stderr
    assert staging_keys(s3, stack.s3_bucket, unique_prefix) == [k for k in staged if k not in doomed]
    assert final_keys(s3, stack.s3_bucket, unique_prefix) == []
    reset_offset(admin, group, topic, 0)
    res = run_consumer(topic, group, out, "--row-group-rows", "1000", *BUCKETED)
    assert res.returncode == 0, res.stderr[-3000:]
    table = read_table(download_finals(s3, stack.s3_bucket, unique_prefix, tmp_path))
    assert sorted(table.column("kafka_offset").to_pylist()) == list(range(3000))


@pytest.mark.parametrize("deleted", ["one-open-file", "every-open-file"])
def test_a_bucket_file_deleted_after_another_rolled_stops_with_status_5_until_its_loss_is_accepted(
    stack: Any, s3: Any, admin: Any, make_topic: Any, unique_prefix: str, tmp_path: Path, deleted: str
) -> None:
    """The same three hours at --max-open-buckets 2: each flush rolls the oldest hour's file right
    after it commits, and that roll's re-commit said "rolled", which turned the check off. An
    outsider then deleted one of the two files still open: the restart exited 0 with that hour's
    rows in no file. It says "staged" now while files stay open: status 5, nothing changed; the
    operator, told the hour rolled past the file's start, commits 3000 by hand to go on without
    those rows, and every other offset is in one file. With both open files deleted (a lifecycle
    rule on _staging/), the rolled hour reaching 3000 was taken for all there was: the same stop."""
    bucketed = (*BUCKETED, "--max-open-buckets", "2")
    topic, group, out = three_staged_row_groups(stack, make_topic, unique_prefix, *bucketed, spread_hours=3)
    staged = staging_keys(s3, stack.s3_bucket, unique_prefix)
    files = sorted({k.rsplit("/", 2)[0] for k in staged if k.endswith(".piece")})
    assert len(files) == 2 and final_keys(s3, stack.s3_bucket, unique_prefix), staged
    doomed = [k for k in staged if deleted == "every-open-file" or k.startswith(files[0] + "/")]
    lost: set[int] = set()
    for key in doomed:
        body = s3.get_object(Bucket=stack.s3_bucket, Key=key)["Body"].read()
        if key.endswith(".piece"):
            lost.update(pq.read_table(io.BytesIO(body)).column("kafka_offset").to_pylist())
        s3.delete_object(Bucket=stack.s3_bucket, Key=key)
    assert lost
    res = run_consumer(topic, group, out, "--row-group-rows", "1000", *bucketed)
    assert res.returncode == 5, res.stderr[-3000:]
    assert "deleted by someone else" in res.stderr
    assert staging_keys(s3, stack.s3_bucket, unique_prefix) == [k for k in staged if k not in doomed]
    reset_offset(admin, group, topic, 3000)  # the operator accepts the loss: no note
    res = run_consumer(topic, group, out, "--row-group-rows", "1000", *bucketed)
    assert res.returncode == 0, res.stderr[-3000:]
    offsets = read_table(download_finals(s3, stack.s3_bucket, unique_prefix, tmp_path)).column(
        "kafka_offset").to_pylist()
    assert sorted(offsets) == sorted(set(range(3000)) - lost)


def test_backward_offset_reset_into_final_files_stops_with_status_5(
    stack: Any, s3: Any, admin: Any, make_topic: Any, unique_prefix: str
) -> None:
    """Item 3: roll [0, 500), reset the group to 250 → status 5, nothing written twice."""
    topic, group = make_topic(partitions=1), unique("g")
    out = output(stack, unique_prefix)
    produce(stack.kafka_bootstrap, topic, "page_view", 500, partitions=1)
    assert run_consumer(topic, group, out).returncode == 0
    before = final_keys(s3, stack.s3_bucket, unique_prefix)
    reset_offset(admin, group, topic, 250)
    res = run_consumer(topic, group, out)
    assert res.returncode == 5, res.stderr[-3000:]
    assert "moved backwards" in res.stderr
    assert final_keys(s3, stack.s3_bucket, unique_prefix) == before


def test_missing_topic_is_an_error_with_until_caught_up(stack: Any, unique_prefix: str) -> None:
    """Item 9: a mistyped topic ends at once with status 2, naming it."""
    t0 = time.monotonic()
    res = run_consumer("no-such-topic-x1", unique("g"), output(stack, unique_prefix), timeout=60)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "no-such-topic-x1" in res.stderr and "does not exist" in res.stderr
    assert time.monotonic() - t0 < 45


def test_fatal_client_error_ends_the_process_with_status_5(
    stack: Any, make_topic: Any, unique_prefix: str
) -> None:
    """Item 8: two members with one group.instance.id: the fenced one exits 5 promptly."""
    topic, group = make_topic(partitions=2), unique("g")
    out = output(stack, unique_prefix)
    produce(stack.kafka_bootstrap, topic, "page_view", 200, partitions=2)
    same = ("-X", "group.instance.id=same-id", "-X", "session.timeout.ms=6000")
    first = start_consumer(topic, group, out, *same)
    first.wait_for(lambda ev: any(e.get("event") == "partitions assigned" for e in ev), what="assignment")
    second = start_consumer(topic, group, out, *same)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and first.proc.poll() is None and second.proc.poll() is None:
            time.sleep(0.5)
        codes = {first.proc.poll(), second.proc.poll()}
        assert 5 in codes, (first.log()[-2000:], second.log()[-2000:])
        ended = first if first.proc.poll() == 5 else second
        assert "fatal Kafka client error" in ended.log()
    finally:
        for r in (first, second):
            if r.proc.poll() is None:
                r.stop()


def test_until_caught_up_waits_for_partitions_another_member_holds(
    stack: Any, s3: Any, make_topic: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """Item 16: a member that got only some partitions does not declare the topic exported while
    another member holds the rest with open files: it exits 6 naming them. Two members started
    together with --until-caught-up both finish, with every record exactly once."""
    topic = make_topic(partitions=4)
    out = output(stack, unique_prefix)
    produce(stack.kafka_bootstrap, topic, "page_view", 4000, partitions=4)
    group = unique("g")
    holder = start_consumer(topic, group, out, "-X", "group.instance.id=holder")
    holder.wait_for(lambda ev: any(e.get("event") == "partition recovered" for e in ev), what="recovery")
    try:
        res = run_consumer(topic, group, out, "--caught-up-timeout", "8s", timeout=120)
        assert res.returncode == 6, res.stderr[-3000:]
        assert f"{topic}[" in res.stderr and "not caught up" in res.stderr
    finally:
        holder.stop()

    group2, out2 = unique("g"), output(stack, unique_prefix + "two/")
    a = start_consumer(topic, group2, out2, until_caught_up=True)
    b = start_consumer(topic, group2, out2, until_caught_up=True)
    assert a.proc.wait(timeout=180) == 0, a.log()[-3000:]
    assert b.proc.wait(timeout=180) == 0, b.log()[-3000:]
    table = read_table(download_finals(s3, stack.s3_bucket, unique_prefix + "two/", tmp_path))
    pairs = sorted(
        zip(
            table.column("kafka_partition").to_pylist(), table.column("kafka_offset").to_pylist(), strict=True
        )
    )
    assert pairs == sorted((p, o) for p in range(4) for o in range(1000))


def _all(s3: Any, bucket: str, prefix: str) -> list[tuple[str, int]]:
    from support import list_keys

    return list_keys(s3, bucket, prefix)


def _durable_offsets(s3: Any, bucket: str, prefix: str, tmp_path: Path) -> list[int]:
    import pyarrow.parquet as pq

    out: list[int] = []
    for key, _ in _all(s3, bucket, prefix):
        if key.endswith((".piece", ".parquet")):
            path = tmp_path / key.replace("/", "_")
            s3.download_file(bucket, key, str(path))
            out += pq.read_table(path).column("kafka_offset").to_pylist()
    return sorted(out)


assert REPO.exists()


def test_fenced_partition_resumes_when_assigned_again(
    stack: Any, s3: Any, make_topic: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """Item 7: a member frozen past its session timeout loses its partitions (commits refused:
    fenced, paused, or reported lost); when the group hands them back to it, it must fetch them
    again. Before the fix a partition paused on fencing stayed paused forever."""
    import os
    import signal

    topic, group = make_topic(partitions=2), unique("g")
    out = output(stack, unique_prefix)
    fast = ("--row-group-max-age", "1s", "-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=500")
    produced = 0

    def more(n: int) -> None:
        nonlocal produced
        produce(
            stack.kafka_bootstrap, topic, "page_view", n, partitions=2, start=produced, create_topic=False
        )
        produced += n

    more(400)
    a = start_consumer(topic, group, out, *fast)
    b = None
    try:
        a.wait_for(lambda ev: sum(e.get("event") == "row group durable" for e in ev) >= 2, what="a writing")
        more(200)  # rows buffered in a when it freezes
        os.kill(a.proc.pid, signal.SIGSTOP)
        b = start_consumer(topic, group, out, *fast)
        b.wait_for(
            lambda ev: any(
                e.get("event") == "partitions assigned" and len(e.get("partitions", [])) == 2 for e in ev
            ),
            timeout=60,
            what="b taking both partitions",
        )
        os.kill(a.proc.pid, signal.SIGCONT)
        a.wait_for(
            lambda ev: any(
                e.get("event")
                in (
                    "partition fenced: pausing it until the group settles",
                    "partitions lost: dropped without writing",
                    "partitions revoked",
                )
                for e in ev
            ),
            timeout=60,
            what="a noticing",
        )
        assert b.stop() == 0
        more(300)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if committed(stack.kafka_bootstrap, group, topic, 2) == [produced // 2, produced // 2]:
                break
            time.sleep(1)
        assert committed(stack.kafka_bootstrap, group, topic, 2) == [produced // 2, produced // 2], a.log()[
            -4000:
        ]
    finally:
        for r in (a, b):
            if r is not None and r.proc.poll() is None:
                r.stop()
    res = run_consumer(topic, group, out)
    assert res.returncode == 0, res.stderr[-3000:]
    table = read_table(download_finals(s3, stack.s3_bucket, unique_prefix, tmp_path))
    pairs = sorted(
        zip(
            table.column("kafka_partition").to_pylist(), table.column("kafka_offset").to_pylist(), strict=True
        )
    )
    assert pairs == sorted((p, o) for p in range(2) for o in range(produced // 2))


def _recreate(admin: Any, topic: str) -> None:
    """Delete ``topic`` and create it again under its name, one partition, empty."""
    from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

    admin.delete_topics([topic], operation_timeout=30)[topic].result(timeout=30)
    deadline = time.monotonic() + 60
    while True:  # the deletion completes in the background: creating may be refused a while
        try:
            admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    while True:  # metadata may name the new topic before its partition (or its leader) is known
        partitions = admin.list_topics(topic=topic, timeout=10).topics[topic].partitions
        if 0 in partitions and partitions[0].leader >= 0:
            break
        assert time.monotonic() < deadline, f"{topic}[0] has no leader after its recreation"
        time.sleep(0.2)


def test_a_recreated_topic_stops_with_status_5_and_its_new_records_go_to_a_new_prefix(
    stack: Any, s3: Any, admin: Any, make_topic: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """Deleted and recreated under its name, the topic's new records reuse offsets already written.
    librdkafka's auto.offset.reset used to jump back to 0 and the worker dropped every new record as
    already written, exiting 0: now status 5, nothing read or written, and a new group and prefix
    export the new topic whole."""
    topic, group = make_topic(partitions=1), unique("g")
    out = output(stack, unique_prefix)
    produce(stack.kafka_bootstrap, topic, "page_view", 500, partitions=1)
    assert run_consumer(topic, group, out).returncode == 0
    before = final_keys(s3, stack.s3_bucket, unique_prefix)
    _recreate(admin, topic)
    produce(stack.kafka_bootstrap, topic, "page_view", 200, partitions=1, seed=7)
    res = run_consumer(topic, group, out, timeout=120)
    assert res.returncode == 5, res.stderr[-3000:]
    said = res.stderr[-3000:]
    # recovery compares the topic's id with the one its files name, before the position matters
    assert f"the output here was read from an earlier topic {topic!r} (topic id " in res.stderr, said
    assert "it was deleted and created again under its name" in res.stderr, said
    assert final_keys(s3, stack.s3_bucket, unique_prefix) == before
    assert not staging_keys(s3, stack.s3_bucket, unique_prefix)
    fresh = unique_prefix.rstrip("/") + "-recreated/"
    assert run_consumer(topic, unique("g"), output(stack, fresh)).returncode == 0
    rows = read_table(download_finals(s3, stack.s3_bucket, fresh, tmp_path))
    assert sorted(rows.column("kafka_offset").to_pylist()) == list(range(200))


@pytest.mark.parametrize("output_state", ["final", "staged"])
def test_a_recreated_topic_longer_than_the_output_stops_with_status_5_and_nothing_is_skipped(
    stack: Any, s3: Any, admin: Any, make_topic: Any, unique_prefix: str, tmp_path: Path, output_state: str
) -> None:
    """The new topic already holds more records than the old output: its offsets are all in the
    log, so no position check can see it. The broker dropped the group's offsets with the topic,
    and recovery used to adopt the old output's end (500) and export the new records from 500 on,
    skipping 0..499 and exiting 0. The files name the topic's id: now status 5, nothing committed,
    read or deleted, and a new group and prefix export the new topic whole."""
    topic, group = make_topic(partitions=1), unique("g")
    out = output(stack, unique_prefix)
    produce(stack.kafka_bootstrap, topic, "page_view", 500, partitions=1)
    if output_state == "final":
        assert run_consumer(topic, group, out, "--row-group-rows", "200").returncode == 0
    else:
        running = start_consumer(topic, group, out, "--row-group-rows", "200", "--row-group-max-age", "2s")
        running.wait_for(
            lambda ev: any(e.get("event") == "row group durable" and e.get("to_position") == 500 for e in ev),
            what="500 rows committed",
        )
        assert running.stop() == 0
        assert staging_keys(s3, stack.s3_bucket, unique_prefix)
    finals = final_keys(s3, stack.s3_bucket, unique_prefix)
    staged = staging_keys(s3, stack.s3_bucket, unique_prefix)
    _recreate(admin, topic)
    produce(stack.kafka_bootstrap, topic, "page_view", 800, partitions=1, seed=7)
    kept = committed(stack.kafka_bootstrap, group, topic)
    res = run_consumer(topic, group, out, "--row-group-rows", "200", timeout=120)
    assert res.returncode == 5, res.stderr[-3000:]
    assert f"the output here was read from an earlier topic {topic!r}" in res.stderr, res.stderr[-3000:]
    assert "--accept-topic-id " in res.stderr
    assert committed(stack.kafka_bootstrap, group, topic) == kept
    assert final_keys(s3, stack.s3_bucket, unique_prefix) == finals
    assert staging_keys(s3, stack.s3_bucket, unique_prefix) == staged
    fresh = unique_prefix.rstrip("/") + "-recreated/"
    assert run_consumer(topic, unique("g"), output(stack, fresh)).returncode == 0
    rows = read_table(download_finals(s3, stack.s3_bucket, fresh, tmp_path))
    assert sorted(rows.column("kafka_offset").to_pylist()) == list(range(800))


@pytest.mark.parametrize("layout", [(), BUCKETED], ids=["plain", "bucketed"])
@pytest.mark.parametrize("offsets", ["as_the_broker_left_them", "deleted"])
def test_a_recreated_topic_whose_old_output_is_dead_letters_only_stops_with_status_5(
    stack: Any, s3: Any, admin: Any, make_topic: Any, unique_prefix: str, layout: tuple[str, ...],
    offsets: str,
) -> None:
    """Every record of the old topic was bad: its dead letters were all the output, and nothing
    named the topic's id. Recreated and refilled, the new topic was read from the old position
    (the group's offset kept, or adopted from the dead letters): its first 300 records skipped,
    the rest written beside the old dead letters, exit 0. Dead letters now name the topic id:
    status 5 before anything is committed, written or deleted."""
    topic, group = make_topic(partitions=1), unique("g")
    out = output(stack, unique_prefix)
    produce_raw(stack.kafka_bootstrap, topic,
                [encode_raw(SCHEMA, make_record("page_view", i)) + b"\x00\x01" for i in range(300)])
    assert (res := run_consumer(topic, group, out, *layout)).returncode == 0, res.stderr[-3000:]
    before = dict(_all(s3, stack.s3_bucket, unique_prefix))
    assert before and all("/_dead_letters/" in k for k in before), sorted(before)
    _recreate(admin, topic)
    if offsets == "deleted":  # the broker may have dropped them with the topic already
        with contextlib.suppress(Exception):
            admin.delete_consumer_groups([group])[group].result(timeout=30)
    produce_raw(stack.kafka_bootstrap, topic,
                [encode_raw(SCHEMA, make_record("page_view", i)) for i in range(500)])
    kept = committed(stack.kafka_bootstrap, group, topic)
    res = run_consumer(topic, group, out, *layout, timeout=120)
    assert res.returncode == 5, res.stderr[-3000:]
    assert f"the output here was read from an earlier topic {topic!r}" in res.stderr, res.stderr[-3000:]
    assert committed(stack.kafka_bootstrap, group, topic) == kept
    assert dict(_all(s3, stack.s3_bucket, unique_prefix)) == before


#: librdkafka believes a topic is gone only once ``topic.metadata.propagation.max.ms`` (30 s) has
#: passed since the client first saw it: a member running longer stops within a second of the
#: deletion (0.9 s measured), one deleted under a few seconds after its start stopped some 25 s
#: later. These tests delete a topic seconds after the start, so they shorten that window.
SEES_A_DELETION_AT_ONCE = ("-X", "topic.metadata.propagation.max.ms=1000")


def test_a_topic_recreated_while_the_consumer_runs_stops_it_before_a_new_record_is_written(
    stack: Any, s3: Any, admin: Any, make_topic: Any, unique_prefix: str
) -> None:
    """Deleted and recreated under a running member, refilled at once past the member's position:
    librdkafka fetches on from that position in the new topic. The flush asks for the topic's id
    first and stops the run with status 5; nothing of the new topic reaches S3 or the group's
    offsets. (Whether librdkafka first answers OFFSET_OUT_OF_RANGE, which stops the run too, or
    first says the partition is unknown while the topic is gone, which stops it as a deleted topic,
    depends on when it fetches: all end in status 5 with nothing written.)"""
    topic, group = make_topic(partitions=1), unique("g")
    out = output(stack, unique_prefix)
    produce(stack.kafka_bootstrap, topic, "page_view", 500, partitions=1)
    running = start_consumer(topic, group, out, "--row-group-rows", "200", "--row-group-max-age", "2s",
                             *SEES_A_DELETION_AT_ONCE)
    try:
        running.wait_for(
            lambda ev: any(e.get("event") == "row group durable" and e.get("to_position") == 500 for e in ev),
            what="500 rows committed",
        )
        written = staging_keys(s3, stack.s3_bucket, unique_prefix)
        _recreate(admin, topic)
        produce(stack.kafka_bootstrap, topic, "page_view", 800, partitions=1, seed=7)
        deadline = time.monotonic() + 60
        while running.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        code = running.stop()
    assert code == 5, running.log()[-3000:]
    stopped = [e for e in running.events() if str(e.get("event", "")).startswith("stopped:")]
    assert stopped, running.log()[-3000:]
    assert stopped[0]["event"] in ("stopped: IntegrityError", "stopped: PositionNotInLog",
                                   "stopped: TopicDeleted"), stopped
    assert staging_keys(s3, stack.s3_bucket, unique_prefix) == written
    assert not final_keys(s3, stack.s3_bucket, unique_prefix)
    assert committed(stack.kafka_bootstrap, group, topic)[0] in (500, -1001)


#: How librdkafka learns that a topic it reads was deleted: ``fetch``, a fetch's error (by default,
#: most often); ``metadata``, a metadata refresh, which reports the topic's partitions lost.
HOW_TOLD = {"fetch": SEES_A_DELETION_AT_ONCE,
            "metadata": ("-X", "topic.metadata.refresh.interval.ms=1000", *SEES_A_DELETION_AT_ONCE)}


@pytest.mark.parametrize("told", sorted(HOW_TOLD))
def test_a_topic_deleted_while_the_consumer_runs_stops_it_with_status_5_and_its_held_rows_stay_staged(
    stack: Any, s3: Any, admin: Any, make_topic: Any, unique_prefix: str, told: str
) -> None:
    """Deleted under a running member that holds rows (no row group due for 10 minutes): the
    member used to stay assigned, reading nothing, after one warning, for good. Now it stops with
    status 5 naming the topic; the rows it held are written to staging, which is the only copy
    left, and nothing is committed or made final (the group's offsets went with the topic).
    ``metadata``: the partitions were reported lost and dropped without writing, and the member
    idled with none (the rows held lost without a word); now it stops the same way."""
    topic, group = make_topic(partitions=2), unique("g")
    out = output(stack, unique_prefix)
    produce(stack.kafka_bootstrap, topic, "page_view", 400, partitions=2, create_topic=False)
    running = start_consumer(topic, group, out, "--row-group-max-age", "10m", *HOW_TOLD[told])
    try:
        running.wait_for(lambda ev: any(e.get("event") == "partitions assigned" for e in ev),
                         what="assignment")
        time.sleep(3)  # 400 records read and held
        admin.delete_topics([topic], operation_timeout=30)[topic].result(timeout=30)
        status = running.proc.wait(timeout=90)
    finally:
        running.stop()
    assert status == 5, running.log()[-3000:]
    stopped = [e for e in running.events() if str(e.get("event", "")).startswith("stopped:")]
    assert stopped and stopped[0]["event"] == "stopped: TopicDeleted", running.log()[-3000:]
    assert stopped[0]["error"].startswith(f"topic {topic!r} was deleted while this consumer read it")
    assert staging_keys(s3, stack.s3_bucket, unique_prefix), "the rows held were not staged"
    assert not final_keys(s3, stack.s3_bucket, unique_prefix)
    flushed = [e for e in running.events() if e.get("event") == "could not flush on shutdown"]
    assert {e["partition"] for e in flushed} == {0, 1}, running.log()[-3000:]  # commits refused


def test_records_retention_deleted_unread_stop_with_status_5_until_the_offset_is_moved(
    stack: Any, s3: Any, admin: Any, make_topic: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """The consumer was down while retention deleted records it had not read: status 5 naming the
    lost range, not a silent jump; after the operator moves the offset past them, the run goes on
    and the output holds every record that still existed."""
    topic, group = make_topic(partitions=1), unique("g")
    out = output(stack, unique_prefix)
    produce(stack.kafka_bootstrap, topic, "page_view", 300, partitions=1)
    assert run_consumer(topic, group, out).returncode == 0
    produce(stack.kafka_bootstrap, topic, "page_view", 300, partitions=1, start=300, create_topic=False)
    admin.delete_records([TopicPartition(topic, 0, 450)])[TopicPartition(topic, 0, 450)].result(timeout=30)
    res = run_consumer(topic, group, out, timeout=120)
    assert res.returncode == 5, res.stderr[-3000:]
    assert "records [300, 450) were deleted by retention before they were read" in res.stderr
    assert committed(stack.kafka_bootstrap, group, topic) == [300]
    reset_offset(admin, group, topic, 450)
    assert run_consumer(topic, group, out).returncode == 0
    rows = read_table(download_finals(s3, stack.s3_bucket, unique_prefix, tmp_path))
    assert sorted(rows.column("kafka_offset").to_pylist()) == list(range(300)) + list(range(450, 600))


@pytest.mark.parametrize("layout", [(), BUCKETED], ids=["plain", "bucketed"])
def test_output_expired_by_a_lifecycle_rule_is_neither_written_again_nor_in_the_way(
    stack: Any, s3: Any, admin: Any, make_topic: Any, unique_prefix: str, tmp_path: Path,
    layout: tuple[str, ...],
) -> None:
    """The prefix keeps N days of output: a lifecycle rule on it (but ``_staging/``) expires what
    was written longest ago. A quiet partition's whole output expires (final files, dead
    letters, the names of the newest final and rolled files): the next run goes on from the
    committed position, writing nothing again. Then the group's offsets expire, and retention
    deletes the records below the new file: recovery adopts the newest final file's end (under
    --partition-by, the rolled one's), so nothing is read or written twice. The same sequence,
    any order and layout, is drawn by tests/unit/test_group_history.py."""
    topic, group = make_topic(partitions=1), unique("g")
    out = output(stack, unique_prefix)
    args = ("--row-group-rows", "500", "--file-rows", "1000", *layout)
    good = [encode_raw(SCHEMA, make_record("page_view", i)) for i in range(3000)]
    produce_raw(stack.kafka_bootstrap, topic, [*good[:1990], *(v + b"\x00\x01" for v in good[1990:2000])])
    assert (res := run_consumer(topic, group, out, *args)).returncode == 0, res.stderr[-3000:]
    written = [k for k, _ in _all(s3, stack.s3_bucket, unique_prefix)]
    assert any("_dead_letters/" in k for k in written)
    assert staging_keys(s3, stack.s3_bucket, unique_prefix) == []
    for key in written:  # the rule's days passed with nothing new to read
        s3.delete_object(Bucket=stack.s3_bucket, Key=key)

    time.sleep(0.05)
    kept_from = time.time()  # what the rule keeps: written from here on
    time.sleep(0.05)
    produce_raw(stack.kafka_bootstrap, topic, good[2000:])
    assert (res := run_consumer(topic, group, out, *args)).returncode == 0, res.stderr[-3000:]
    finals = final_keys(s3, stack.s3_bucket, unique_prefix)
    table = read_table(download_finals(s3, stack.s3_bucket, unique_prefix, tmp_path / "a"))
    assert sorted(table.column("kafka_offset").to_pylist()) == list(range(2000, 3000))
    assert committed(stack.kafka_bootstrap, group, topic) == [3000]
    # verify: what Kafka still holds below the kept output is loss, unless told where to start.
    since = f"ts:{int(kept_from * 1000)}"
    verdicts = [subprocess.run(
        [sys.executable, "-m", "consumer", "verify", "--output", out, "--topic", topic,
         "--group-id", group, "--bootstrap-servers", stack.kafka_bootstrap, *layout, *extra],
        capture_output=True, text=True, timeout=120, cwd=REPO) for extra in ([], ["--since", since])]
    assert verdicts[0].returncode == 1 and "MISSING=2000 in 1 range(s): [0, 2000)" in verdicts[0].stdout
    assert verdicts[1].returncode == 0, verdicts[1].stdout + verdicts[1].stderr
    assert "from=2000" in verdicts[1].stdout

    admin.delete_consumer_groups([group])[group].result(timeout=30)
    admin.delete_records([TopicPartition(topic, 0, 2000)])[TopicPartition(topic, 0, 2000)].result(timeout=30)
    res = run_consumer(topic, group, out, *args)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "adopting 3000" in res.stderr
    assert final_keys(s3, stack.s3_bucket, unique_prefix) == finals
    assert committed(stack.kafka_bootstrap, group, topic) == [3000]


@pytest.mark.parametrize("layout", [(), BUCKETED], ids=["plain", "bucketed"])
def test_output_expired_by_the_readmes_rule_is_not_exported_again_when_the_offsets_expire_too(
    stack: Any, s3: Any, admin: Any, make_topic: Any, unique_prefix: str, layout: tuple[str, ...],
) -> None:
    """The README's rule (final files and dead letters) expired a quiet partition's whole output,
    and the group's offsets expired too. What the rule leaves (``_newest_final/``, ``_rolled/``)
    says where that output ended: recovery adopts it, and nothing is exported again. A reset
    backwards into the expired output is refused with status 5, as one into output still there.
    (The plain layout used to start again from the log's start.) Unit tests:
    tests/unit/test_expired_output.py."""
    topic, group = make_topic(partitions=1), unique("g")
    out = output(stack, unique_prefix)
    args = ("--row-group-rows", "500", "--file-rows", "1000", *layout)
    good = [encode_raw(SCHEMA, make_record("page_view", i)) for i in range(2000)]
    produce_raw(stack.kafka_bootstrap, topic, [*good[:1990], *(v + b"\x00\x01" for v in good[1990:])])
    assert (res := run_consumer(topic, group, out, *args)).returncode == 0, res.stderr[-3000:]
    for key, _size in _all(s3, stack.s3_bucket, unique_prefix):
        if key[len(unique_prefix):].lstrip("/").startswith(("topic=", "_dead_letters/")):
            s3.delete_object(Bucket=stack.s3_bucket, Key=key)
    left = sorted(k for k, _ in _all(s3, stack.s3_bucket, unique_prefix))
    assert left and not final_keys(s3, stack.s3_bucket, unique_prefix)

    admin.delete_consumer_groups([group])[group].result(timeout=30)
    res = run_consumer(topic, group, out, *args)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "adopting 2000" in res.stderr
    assert sorted(k for k, _ in _all(s3, stack.s3_bucket, unique_prefix)) == left
    assert committed(stack.kafka_bootstrap, group, topic) == [2000]

    reset_offset(admin, group, topic, 0)
    res = run_consumer(topic, group, out, *args)
    assert res.returncode == 5, res.stderr[-3000:]
    assert "the committed position 0 is below the end 2000" in res.stderr
    assert sorted(k for k, _ in _all(s3, stack.s3_bucket, unique_prefix)) == left


def test_an_eager_assignor_still_starts_where_recovery_says(
    stack: Any, s3: Any, make_topic: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """The assign callback assigns recovery's positions itself, with incremental_assign under the
    cooperative protocols and assign() under an eager assignor (-X partition.assignment.strategy):
    two runs over a growing topic export every record exactly once either way."""
    topic, group = make_topic(partitions=2), unique("g")
    out = output(stack, unique_prefix)
    eager = ("-X", "partition.assignment.strategy=range")
    produce(stack.kafka_bootstrap, topic, "page_view", 600, partitions=2)
    assert run_consumer(topic, group, out, *eager).returncode == 0
    produce(stack.kafka_bootstrap, topic, "page_view", 400, partitions=2, start=600, create_topic=False)
    assert run_consumer(topic, group, out, *eager).returncode == 0
    rows = read_table(download_finals(s3, stack.s3_bucket, unique_prefix, tmp_path))
    assert offsets_by_partition(rows) == {0: list(range(500)), 1: list(range(500))}
    assert committed(stack.kafka_bootstrap, group, topic, partitions=2) == [500, 500]


def test_a_second_group_on_one_prefix_is_named_and_no_offset_reaches_two_files(
    stack: Any, s3: Any, make_topic: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """A second group on the prefix (a deployment copied with a new --group-id and other file
    budgets): it adopts what S3 proves and names the group whose files it continues; when the old
    group comes back behind the new one's files, it stops with status 5 naming the new group
    (it used to suggest an offset reset nobody made). Every offset is in exactly one final file."""
    topic, old, new = make_topic(partitions=1), unique("g-old"), unique("g-new")
    out = output(stack, unique_prefix)
    produce(stack.kafka_bootstrap, topic, "page_view", 3000, partitions=1)
    assert run_consumer(topic, old, out, "--file-rows", "1000", "--row-group-rows", "500").returncode == 0
    produce(stack.kafka_bootstrap, topic, "page_view", 3000, partitions=1, start=3000, create_topic=False)
    res = run_consumer(topic, new, out, "--file-rows", "1500", "--row-group-rows", "500")
    assert res.returncode == 0, res.stderr[-3000:]
    [adopted] = [e["event"] for e in log_events(res.stderr) if "adopting" in e.get("event", "")]
    assert f"adopting 3000 from what S3 holds; the newest final file was written by consumer group {old!r} " \
           f"(this run is group {new!r})" in adopted, adopted

    back = run_consumer(topic, old, out, "--file-rows", "1000", "--row-group-rows", "500")
    assert back.returncode == 5, back.stderr[-3000:]
    assert f"written by consumer group {new!r} (this run is group {old!r}): one output prefix belongs " \
           "to one consumer group" in back.stderr, back.stderr[-3000:]

    rows = read_table(download_finals(s3, stack.s3_bucket, unique_prefix, tmp_path))
    assert sorted(rows.column("kafka_offset").to_pylist()) == list(range(6000))
    groups = {pq.read_metadata(p).metadata[b"kafka.group_id"].decode()
              for p in sorted(tmp_path.rglob("*.parquet"))}
    assert groups == {old, new}


@pytest.mark.parametrize("protocol", ["classic", "consumer"])  # the old group's (KIP-848: Kafka 4.0+)
def test_a_second_group_stops_at_once_while_the_first_still_writes_the_partition(
    stack: Any, s3: Any, make_topic: Any, unique_prefix: str, tmp_path: Path, protocol: str
) -> None:
    """A deployment copied with a new --group-id while the old one still runs: the new group has
    no committed position, and recovery would adopt the old group's staged rows. It asks the
    coordinator first, finds the old group's member owning the partition, and stops with status 5
    naming it, committing and deleting nothing; a replay pointed at the prefix stops the same way.
    Once the old group has stopped, the new one adopts and finishes the file: every offset in one
    final file."""
    topic, old, new = make_topic(partitions=1), unique("g-old"), unique("g-new")
    out = output(stack, unique_prefix)
    produce(stack.kafka_bootstrap, topic, "page_view", 2000, partitions=1)
    running = start_consumer(topic, old, out, "--row-group-rows", "500", "-X", f"group.protocol={protocol}")
    try:
        running.wait_for(
            lambda ev: any(e.get("event") == "row group durable" and e.get("to_position") == 2000
                           for e in ev),
            what="2000 rows committed",
        )
        staged_before = staging_keys(s3, stack.s3_bucket, unique_prefix)
        res = run_consumer(topic, new, out, timeout=120)
        assert res.returncode == 5, res.stderr[-3000:]
        assert f"was last written by consumer group {old!r}, which still runs: it has 1 member, and one of " \
               "them owns this partition" in res.stderr, res.stderr[-3000:]
        assert committed(stack.kafka_bootstrap, new, topic) == [-1001]  # nothing committed
        replay = subprocess.run(  # a replay pointed at the prefix by mistake: the same
            [sys.executable, "-m", "consumer", "replay", "--topic", topic, "--schema", "page_view",
             "--output", out, "--log-format", "json"],
            capture_output=True, text=True, timeout=120, cwd=REPO,
        )
        assert replay.returncode == 5, replay.stderr[-3000:]
        assert "this replay has no position of its own here" in replay.stderr, replay.stderr[-3000:]
        assert staging_keys(s3, stack.s3_bucket, unique_prefix) == staged_before
    finally:
        assert running.stop() == 0, running.log()[-3000:]
    res = run_consumer(topic, new, out)  # the old group has left: adopt its position and finish
    assert res.returncode == 0, res.stderr[-3000:]
    assert any("adopting 2000 from what S3 holds" in e.get("event", "") for e in log_events(res.stderr))
    rows = read_table(download_finals(s3, stack.s3_bucket, unique_prefix, tmp_path))
    assert sorted(rows.column("kafka_offset").to_pylist()) == list(range(2000))


def test_under_partition_by_a_second_group_stops_while_the_first_runs_past_a_roll(
    stack: Any, s3: Any, make_topic: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """The same copied deployment under --partition-by, at the moment the old group has just
    rolled its whole file: no staged piece is left to name the writer, only the rolled marker.
    Its S3 metadata names the old group, so the new one asks the coordinator and stops with
    status 5, committing nothing (it used to adopt the marker's end and write beside the old
    group). Once the old group has stopped, the new one adopts and goes on."""
    topic, old, new = make_topic(partitions=1), unique("g-old"), unique("g-new")
    out = output(stack, unique_prefix)
    produce(stack.kafka_bootstrap, topic, "page_view", 2000, partitions=1)
    flags = ("--partition-by", "y={ts:%Y}", "--file-rows", "2000", "--row-group-rows", "500")
    running = start_consumer(topic, old, out, *flags)
    try:
        running.wait_for(
            lambda ev: any(e.get("event") == "file rolled" and e.get("to_position") == 2000 for e in ev),
            what="the file of 2000 rows rolled",
        )
        assert staging_keys(s3, stack.s3_bucket, unique_prefix) == []
        res = run_consumer(topic, new, out, *flags, timeout=120)
        assert res.returncode == 5, res.stderr[-3000:]
        assert f"was last written by consumer group {old!r}, which still runs: it has 1 member, and one of " \
               "them owns this partition" in res.stderr, res.stderr[-3000:]
        assert committed(stack.kafka_bootstrap, new, topic) == [-1001]  # nothing committed
    finally:
        assert running.stop() == 0, running.log()[-3000:]
    produce(stack.kafka_bootstrap, topic, "page_view", 500, partitions=1, start=2000, create_topic=False)
    res = run_consumer(topic, new, out, *flags)  # the old group has left: adopt its position
    assert res.returncode == 0, res.stderr[-3000:]
    assert any("adopting 2000 from what S3 holds (the end of the newest rolled bucket file); the newest "
               f"rolled bucket file was written by consumer group {old!r} (this run is group {new!r})"
               in e.get("event", "") for e in log_events(res.stderr)), res.stderr[-3000:]
    rows = read_table(download_finals(s3, stack.s3_bucket, unique_prefix, tmp_path))
    assert sorted(rows.column("kafka_offset").to_pylist()) == list(range(2500))


def test_a_second_group_waits_out_a_stopped_static_member_of_the_first(
    stack: Any, s3: Any, admin: Any, make_topic: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """A static member (``group.instance.id``) stops without leaving its group: the coordinator
    keeps it as a member, owning its partitions, until its session times out. A new group that
    would adopt its output exits 5 until then, saying why; after the session expires it adopts."""
    topic, old, new = make_topic(partitions=1), unique("g-old"), unique("g-new")
    out = output(stack, unique_prefix)
    produce(stack.kafka_bootstrap, topic, "page_view", 1000, partitions=1)
    running = start_consumer(topic, old, out, "--row-group-rows", "500",
                             "-X", f"group.instance.id={old}-1", "-X", "session.timeout.ms=6000")
    running.wait_for(
        lambda ev: any(e.get("event") == "row group durable" and e.get("to_position") == 1000
                       for e in ev),
        what="1000 rows committed",
    )
    assert running.stop() == 0, running.log()[-3000:]
    stopped_at = time.monotonic()
    res = run_consumer(topic, new, out, timeout=120)
    assert res.returncode == 5, res.stderr[-3000:]
    assert "its static members, and any member that crashed, leave the group when their session " \
           "times out" in res.stderr
    while describe_group(admin, old).members:
        assert time.monotonic() - stopped_at < 60, "the static member's session did not expire"
        time.sleep(1)
    res = run_consumer(topic, new, out)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = read_table(download_finals(s3, stack.s3_bucket, unique_prefix, tmp_path))
    assert sorted(rows.column("kafka_offset").to_pylist()) == list(range(1000))


def test_a_second_group_waits_out_a_crashed_member_of_the_first(
    stack: Any, s3: Any, admin: Any, make_topic: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """A dynamic member killed with SIGKILL never sends its LeaveGroup: the coordinator keeps it,
    owning its partition, until its session times out, exactly as a stopped static member. A new
    group that would adopt its output exits 5 until then, committing nothing and saying that a
    crashed member stays until its session times out; after that it adopts and finishes."""
    topic, old, new = make_topic(partitions=1), unique("g-old"), unique("g-new")
    out = output(stack, unique_prefix)
    produce(stack.kafka_bootstrap, topic, "page_view", 1000, partitions=1)
    running = start_consumer(topic, old, out, "--row-group-rows", "500", "-X", "session.timeout.ms=10000")
    running.wait_for(
        lambda ev: any(e.get("event") == "row group durable" and e.get("to_position") == 1000
                       for e in ev),
        what="1000 rows committed",
    )
    running.stop(signal.SIGKILL)
    killed_at = time.monotonic()
    assert describe_group(admin, old).members, "no member left behind"
    staged_before = staging_keys(s3, stack.s3_bucket, unique_prefix)
    res = run_consumer(topic, new, out, timeout=120)
    assert res.returncode == 5, res.stderr[-3000:]
    assert "and one of them owns this partition" in res.stderr, res.stderr[-3000:]
    assert "any member that crashed, leave the group when their session times out" in res.stderr
    assert committed(stack.kafka_bootstrap, new, topic) == [-1001]
    assert staging_keys(s3, stack.s3_bucket, unique_prefix) == staged_before
    while describe_group(admin, old).members:
        assert time.monotonic() - killed_at < 60, "the crashed member's session did not expire"
        time.sleep(1)
    res = run_consumer(topic, new, out)
    assert res.returncode == 0, res.stderr[-3000:]
    assert any("adopting 1000 from what S3 holds" in e.get("event", "") for e in log_events(res.stderr))
    rows = read_table(download_finals(s3, stack.s3_bucket, unique_prefix, tmp_path))
    assert sorted(rows.column("kafka_offset").to_pylist()) == list(range(1000))


def test_recovery_does_not_delete_the_staged_rows_of_another_group(
    stack: Any, s3: Any, admin: Any, make_topic: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """Group "b" stands at 1000 on a prefix whose open file group "a" has staged and committed up
    to 3000. Its recovery would delete [1000, 3000) as its own uncommitted work, and group "a"
    would have lost committed rows: it stops with status 5 naming "a", and deletes nothing."""
    topic, group, out = three_staged_row_groups(stack, make_topic, unique_prefix)
    other = unique("g-other")
    reset_offset(admin, other, topic, 1000)
    staged_before = staging_keys(s3, stack.s3_bucket, unique_prefix)
    res = run_consumer(topic, other, out)
    assert res.returncode == 5, res.stderr[-3000:]
    said = (f"would delete the staged piece [1000, 2000) past this run's position 1000, but it was "
            f"written by consumer group {group!r} (this run is group {other!r})")
    assert said in res.stderr, res.stderr[-3000:]
    assert staging_keys(s3, stack.s3_bucket, unique_prefix) == staged_before
    assert run_consumer(topic, group, out).returncode == 0  # the owner finishes its file
    rows = read_table(download_finals(s3, stack.s3_bucket, unique_prefix, tmp_path))
    assert sorted(rows.column("kafka_offset").to_pylist()) == list(range(3000))


def test_partitions_added_to_a_topic_while_a_member_runs_are_exported_from_their_start(
    stack: Any, s3: Any, admin: Any, make_topic: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """``kafka-topics --alter --partitions``: the member learns of the new partitions at its next
    metadata refresh (5 min by default; 1 s here), the group rebalances, and the new partitions
    start at their first offset (nothing in S3, no committed offset) while the old ones go on
    where they were. Every record of all four partitions ends up exactly once."""
    from confluent_kafka.admin import NewPartitions  # type: ignore[attr-defined]

    topic, group, out = make_topic(partitions=2), unique("g"), output(stack, unique_prefix)
    produce(stack.kafka_bootstrap, topic, "page_view", 2000, partitions=2, create_topic=False)
    refresh = ("-X", "topic.metadata.refresh.interval.ms=1000")
    run = start_consumer(topic, group, out, "--row-group-rows", "500", *refresh)
    try:
        run.wait_for(lambda ev: count(ev, "row group durable") == 4, what="2,000 rows durable")
        admin.create_partitions([NewPartitions(topic, 4)])[topic].result(timeout=30)
        # records 2000..5999: record i to partition i % 4, so 1,000 more in each partition
        produce(stack.kafka_bootstrap, topic, "page_view", 4000, partitions=4, create_topic=False, start=2000)
        run.wait_for(
            lambda ev: count(ev, "row group durable") == 12, timeout=90,
            what="the new partitions' rows durable",
        )
    finally:
        assert run.stop() == 0, run.log()[-3000:]
    assigned = [sorted(e["partitions"]) for e in run.events() if e.get("event") == "partitions assigned"]
    assert assigned[0] == [f"{topic}[0]", f"{topic}[1]"], assigned
    assert [f"{topic}[2]", f"{topic}[3]"] in assigned, assigned  # added to the assignment, the rest kept
    done = run_consumer(topic, group, out, "--row-group-rows", "500")
    assert done.returncode == 0, done.stderr[-3000:]
    table = read_table(download_finals(s3, stack.s3_bucket, unique_prefix, tmp_path))
    got = offsets_by_partition(table)
    assert {p: sorted(o) for p, o in got.items()} == {0: list(range(2000)), 1: list(range(2000)),
                                                      2: list(range(1000)), 3: list(range(1000))}
    assert staging_keys(s3, stack.s3_bucket, unique_prefix) == []


def committed_into_open_files(topic: str, group: str, out: str, rows: int, *extra: str) -> None:
    """Run a member until ``rows`` rows are durable in row groups of 100, then SIGTERM it: every
    row committed into staged pieces, every file left open for the next owner."""
    run = start_consumer(topic, group, out, "--row-group-rows", "100", *extra)
    try:
        run.wait_for(lambda ev: sum(e.get("rows", 0) for e in ev if e.get("event") == "row group durable")
                     == rows, what=f"{rows} rows durable")
    finally:
        assert run.stop() == 0, run.log()[-3000:]


def test_a_topic_taken_out_of_the_subscription_is_named_at_start_and_one_bounded_run_finishes_its_files(
    stack: Any, s3: Any, make_topic: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """An operator stops exporting a topic by taking it out of ``--topic``. The revoke of the last
    run that consumed it staged and committed its rows and left its files open for the next owner,
    and there is none: those committed rows sat in staged pieces, which no query reads, with no
    word. Now every start (and ``consumer check``'s s3 line) names the topic, and the remedy it
    names, one ``--until-caught-up`` run of that topic with the same group and output, makes its
    files final with every offset once."""
    kept, dropped = make_topic(partitions=1), make_topic(partitions=2)
    group, out = unique("g"), output(stack, unique_prefix)
    produce(stack.kafka_bootstrap, kept, "page_view", 300, partitions=1, create_topic=False)
    produce(stack.kafka_bootstrap, dropped, "page_view", 400, partitions=2, create_topic=False)
    committed_into_open_files(kept, group, out, 700, "--topic", dropped)
    staged = staging_keys(s3, stack.s3_bucket, unique_prefix)
    assert any(f"/topic={dropped}/" in k for k in staged) and any(f"/topic={kept}/" in k for k in staged)
    assert not final_keys(s3, stack.s3_bucket, unique_prefix)

    checked = subprocess.run(
        [sys.executable, "-m", "consumer", "check", "--group-id", group, "--topic", kept, "--schema",
         "page_view", "--output", out], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"warning: open files of topics not in --topic: {dropped} " in checked.stdout + checked.stderr

    alone = run_consumer(kept, group, out)
    assert alone.returncode == 0, alone.stderr[-3000:]
    named = [e for e in log_events(alone.stderr) if str(e.get("event", "")).startswith(
        "this output holds open files of a topic this run does not consume")]
    assert [(e["topic"], e["partitions"]) for e in named] == [(dropped, [0, 1])], alone.stderr[-3000:]
    assert f"consumer run --topic {dropped} --until-caught-up" in named[0]["hint"]
    assert all(f"/topic={dropped}/" in k for k in staging_keys(s3, stack.s3_bucket, unique_prefix))

    finish = run_consumer(dropped, group, out)
    assert finish.returncode == 0, finish.stderr[-3000:]
    assert not [e for e in log_events(finish.stderr) if str(e.get("event", "")).startswith(
        "this output holds open files")]
    assert staging_keys(s3, stack.s3_bucket, unique_prefix) == []
    prefix = unique_prefix.rstrip("/")
    every = {kept: {0: list(range(300))}, dropped: {0: list(range(200)), 1: list(range(200))}}
    for topic, expected in every.items():
        table = read_table(download_finals(s3, stack.s3_bucket, f"{prefix}/topic={topic}", tmp_path / topic))
        assert {p: sorted(o) for p, o in offsets_by_partition(table).items()} == expected, topic


def finish_files(topic: str, group: str, out: str) -> subprocess.CompletedProcess[str]:
    """``consumer finish`` of ``topic``, with the runs' group and output."""
    cmd = [sys.executable, "-m", "consumer", "finish", "--group-id", group, "--topic", topic, "--output", out,
           "--schema", "page_view", "--log-format", "json"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=REPO)


def verify_files(topic: str, out: str) -> subprocess.CompletedProcess[str]:
    """``consumer verify`` of the files alone (no Kafka: the topic is gone)."""
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    return subprocess.run([sys.executable, "-m", "consumer", "verify", "--output", out, "--topic", topic],
                          capture_output=True, text=True, timeout=120, cwd=REPO, env=env)


def test_a_deleted_topic_s_open_files_are_made_final_by_consumer_finish_with_every_staged_row(
    stack: Any, s3: Any, admin: Any, make_topic: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """An operator stops the export of a topic and deletes the topic. The last run left its files
    open (a stop commits into staged pieces), and a run the deletion stopped staged the rows it
    held, uncommitted: the only copy. No run can consume the topic to finish them, so they sat in
    staged pieces, which no query reads, for good. ``consumer finish`` makes them final, every
    staged row once; while the topic exists it refuses and names the run that finishes it."""
    topic, group = make_topic(partitions=2), unique("g")
    out = output(stack, unique_prefix)
    produce(stack.kafka_bootstrap, topic, "page_view", 400, partitions=2, create_topic=False)
    committed_into_open_files(topic, group, out, 400)

    refused = finish_files(topic, group, out)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert f"consumer run --topic {topic} --until-caught-up" in refused.stderr
    assert not final_keys(s3, stack.s3_bucket, unique_prefix)

    # records 400..599, 100 more a partition, held by a run when the topic is deleted
    produce(stack.kafka_bootstrap, topic, "page_view", 200, partitions=2, create_topic=False, start=400)
    running = start_consumer(topic, group, out, "--row-group-max-age", "10m", *HOW_TOLD["metadata"])
    try:
        running.wait_for(lambda ev: any(e.get("event") == "partitions assigned" for e in ev),
                         what="assignment")
        time.sleep(3)  # the 200 records read and held
        admin.delete_topics([topic], operation_timeout=30)[topic].result(timeout=30)
        assert running.proc.wait(timeout=90) == 5, running.log()[-3000:]
    finally:
        running.stop()
    assert not final_keys(s3, stack.s3_bucket, unique_prefix)
    assert verify_files(topic, out).returncode == 1  # stray staging: rows in no final file

    done = finish_files(topic, group, out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert staging_keys(s3, stack.s3_bucket, unique_prefix) == []
    checked = verify_files(topic, out)  # the files alone: the topic is gone
    assert checked.returncode == 0, checked.stdout + checked.stderr
    table = read_table(download_finals(s3, stack.s3_bucket, unique_prefix, tmp_path / "finals"))
    assert {p: sorted(o) for p, o in offsets_by_partition(table).items()} == {0: list(range(300)),
                                                                              1: list(range(300))}
    finals = final_keys(s3, stack.s3_bucket, unique_prefix)
    again = finish_files(topic, group, out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert final_keys(s3, stack.s3_bucket, unique_prefix) == finals


def test_the_open_files_of_a_topic_deleted_and_created_again_are_made_final_by_consumer_finish(
    stack: Any, s3: Any, admin: Any, make_topic: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """Deleted and created again under its name (a purge): a run of the old prefix stops with
    status 5 and the new topic goes to a new prefix, but the old topic's open files stayed staged.
    The topic of that name exists, yet its id is not the one the files name: ``consumer finish``
    makes them final, and reads nothing of the new topic."""
    topic, group = make_topic(partitions=1), unique("g")
    out = output(stack, unique_prefix)
    produce(stack.kafka_bootstrap, topic, "page_view", 300, partitions=1, create_topic=False)
    committed_into_open_files(topic, group, out, 300)
    _recreate(admin, topic)
    produce(stack.kafka_bootstrap, topic, "page_view", 50, partitions=1, create_topic=False, seed=7)

    done = finish_files(topic, group, out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert any(str(e.get("event", "")).startswith("the topic was deleted and created again")
               for e in log_events(done.stderr)), done.stderr[-3000:]
    assert staging_keys(s3, stack.s3_bucket, unique_prefix) == []
    table = read_table(download_finals(s3, stack.s3_bucket, unique_prefix, tmp_path))
    assert sorted(table.column("kafka_offset").to_pylist()) == list(range(300))


@pytest.fixture
def another_bucket(stack: Any, s3: Any) -> str:
    """A second bucket on the stack's S3 server (same endpoint and credentials), made once."""
    bucket = f"{stack.s3_bucket}-moved"
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
        s3.create_bucket(Bucket=bucket)
    return bucket


def moved_at_a_quiet_time(stack: Any, make_topic: Any, unique_prefix: str) -> tuple[str, str, str, str]:
    """300 records of one partition committed into open files of ``<prefix>old``, then a run of
    the group into ``<prefix>new`` with nothing more to read: (topic, group, old, new)."""
    topic, group = make_topic(partitions=1), unique("g")
    old, new = output(stack, unique_prefix + "old"), output(stack, unique_prefix + "new")
    produce(stack.kafka_bootstrap, topic, "page_view", 300, partitions=1, create_topic=False)
    committed_into_open_files(topic, group, old, 300)
    moved = run_consumer(topic, group, new)
    assert moved.returncode == 0, moved.stderr[-3000:]
    return topic, group, old, new


def test_files_left_open_in_an_output_the_group_moved_from_at_a_quiet_time_are_made_final(
    stack: Any, s3: Any, make_topic: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """``--output`` moved when nothing more was coming: the new output's run reads nothing, so no
    flush of it commits. The group's last commit named the old output for ever, and ``consumer
    finish`` of it refused. The new output's recovery commits the position again with a note
    naming the new output (on the real broker's offset metadata), and the finish goes on."""
    topic, group, old, new = moved_at_a_quiet_time(stack, make_topic, unique_prefix)
    assert committed_note(stack.kafka_bootstrap, group, topic) == f"kafka-parquet-consumer/1 unstaged {new}"
    done = finish_files(topic, group, old)
    assert done.returncode == 0, done.stderr[-3000:]
    assert staging_keys(s3, stack.s3_bucket, unique_prefix + "old") == []
    assert offsets_in_both(s3, stack.s3_bucket, unique_prefix, tmp_path) == {0: list(range(300))}


def test_staged_pieces_deleted_after_a_move_stop_the_run_back_and_the_finish_until_restored(
    stack: Any, s3: Any, make_topic: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """After a move at a quiet time, a clean-up deletes the old output's newest staged piece. A
    run back to the old output (a rolled-back deployment) and its finish took what was left and
    lost those rows without a word; both now stop with status 5 and change nothing, naming where
    the group left (``.away``, which keeps the note's "staged"). Restored, the finish makes every
    offset final in exactly one of the two outputs."""
    topic, group, old, _new = moved_at_a_quiet_time(stack, make_topic, unique_prefix)
    staged = staging_keys(s3, stack.s3_bucket, unique_prefix + "old")
    pieces = sorted(staged, key=lambda k: k.rsplit("/", 1)[1])
    newest = pieces[-1]
    assert newest.endswith(f"-{300:020d}.piece"), pieces
    data = s3.get_object(Bucket=stack.s3_bucket, Key=newest)["Body"].read()
    s3.delete_object(Bucket=stack.s3_bucket, Key=newest)
    before = _all(s3, stack.s3_bucket, unique_prefix + "old/_staging/")

    back = run_consumer(topic, group, old)
    assert back.returncode == 5, back.stderr[-3000:]
    assert "The group comes back to this output, which it left at 300" in back.stderr, back.stderr[-3000:]
    refused = finish_files(topic, group, old)
    assert refused.returncode == 5, refused.stderr[-3000:]
    assert "This is `consumer finish` of an output the group left" in refused.stderr, refused.stderr[-3000:]
    assert _all(s3, stack.s3_bucket, unique_prefix + "old/_staging/") == before

    s3.put_object(Bucket=stack.s3_bucket, Key=newest, Body=data)  # restored
    done = finish_files(topic, group, old)
    assert done.returncode == 0, done.stderr[-3000:]
    assert offsets_in_both(s3, stack.s3_bucket, unique_prefix, tmp_path) == {0: list(range(300))}


def test_a_reset_below_where_the_group_moved_stops_and_expired_offsets_go_on_from_there(
    stack: Any, s3: Any, admin: Any, make_topic: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """After a move at a quiet time the new output holds nothing of its own, only where the group
    moved (``_moved/``). An operator's ``--reset-offsets --to-offset 0`` then made its run export
    the old output's records there again; now it stops with status 5, changes nothing, and goes on
    once the offset is moved back as it says. With the group deleted (offsets expired), the run
    adopts where the group moved instead of starting from auto.offset.reset, and a run of the old
    output stops with status 5 naming the new one (``.away``). The old output's finish then leaves
    every offset in exactly one of the two."""
    topic, group, old, new = moved_at_a_quiet_time(stack, make_topic, unique_prefix)
    marker = f"{unique_prefix}new/_moved/topic={topic}/partition=0/{300:020d}"
    assert json.loads(s3.get_object(Bucket=stack.s3_bucket, Key=marker)["Body"].read())["from"] == old

    reset_offset(admin, group, topic, 0)
    refused = run_consumer(topic, group, new)
    assert refused.returncode == 5, refused.stderr[-3000:]
    assert "below 300, where the group moved to this output" in refused.stderr, refused.stderr[-3000:]
    assert [k for k, _ in _all(s3, stack.s3_bucket, unique_prefix + "new/")] == [marker]
    reset_offset(admin, group, topic, 300)
    produce(stack.kafka_bootstrap, topic, "page_view", 20, partitions=1, create_topic=False, seed=3)
    assert run_consumer(topic, group, new).returncode == 0

    admin.delete_consumer_groups([group])[group].result(timeout=30)
    produce(stack.kafka_bootstrap, topic, "page_view", 30, partitions=1, create_topic=False, seed=5)
    back = run_consumer(topic, group, old)  # a rolled-back deployment: the old output's run
    assert back.returncode == 5, back.stderr[-3000:]
    assert f"moved from this output to {new} at 300" in back.stderr, back.stderr[-3000:]
    adopted = run_consumer(topic, group, new)
    assert adopted.returncode == 0, adopted.stderr[-3000:]
    done = finish_files(topic, group, old)
    assert done.returncode == 0, done.stderr[-3000:]
    assert offsets_in_both(s3, stack.s3_bucket, unique_prefix, tmp_path) == {0: list(range(350))}


def offsets_in_both(s3: Any, bucket: str, prefix: str, tmp_path: Path,
                    new_bucket: str | None = None) -> dict[int, list[int]]:
    """The offsets of each partition in the final files of ``<prefix>old`` and ``<prefix>new``
    (in ``new_bucket`` if given), sorted, repeats kept."""
    both: dict[int, list[int]] = {}
    for name in ("old", "new"):
        in_bucket = new_bucket if name == "new" and new_bucket else bucket
        finals = download_finals(s3, in_bucket, prefix + name, tmp_path / name)
        for p, offsets in (offsets_by_partition(read_table(finals)) if finals else {}).items():
            both.setdefault(p, []).extend(offsets)
    return {p: sorted(o) for p, o in both.items()}


@pytest.mark.parametrize(("lost_commit", "where"), [(False, "same-bucket"), (True, "same-bucket"),
                                                     (True, "another-bucket")],
                         ids=["committed", "a-piece-whose-commit-was-lost", "lost-commit-another-bucket"])
def test_files_left_open_in_an_output_the_group_moved_from_are_made_final_by_consumer_finish(
    stack: Any, s3: Any, admin: Any, make_topic: Any, unique_prefix: str, tmp_path: Path, lost_commit: bool,
    request: pytest.FixtureRequest, where: str,
) -> None:
    """An operator moves a group's export to a new ``--output`` (a new prefix, a new bucket). The
    last run of the old one left its files open, their rows committed: the group reads on past
    them into the new output, and no run of it writes the old one again. Those rows sat in staged
    pieces, which no query reads, and the message said they were "in that output". Now the first
    run of the new output names `consumer finish` of the old one, which makes the old files final
    up to where the new output holds the rest: every offset in exactly one of the two outputs.
    With partition 0's last piece uncommitted (its commit lost; here the offset is moved back to
    the piece's start), the new output reads its records again and the finish leaves it out,
    also when the new output is in another bucket."""
    topic, group = make_topic(partitions=2), unique("g")
    new_bucket = request.getfixturevalue("another_bucket") if where == "another-bucket" else stack.s3_bucket
    old, new = output(stack, unique_prefix + "old"), f"s3://{new_bucket}/{unique_prefix}new"
    produce(stack.kafka_bootstrap, topic, "page_view", 400, partitions=2, create_topic=False)
    committed_into_open_files(topic, group, old, 400)
    if lost_commit:
        assert committed(stack.kafka_bootstrap, group, topic, 2) == [200, 200]
        reset_offset(admin, group, topic, 100)
    produce(stack.kafka_bootstrap, topic, "page_view", 200, partitions=2, create_topic=False, start=400)

    moved = run_consumer(topic, group, new)
    assert moved.returncode == 0, moved.stderr[-3000:]
    hints = [e.get("hint") for e in log_events(moved.stderr)
             if str(e.get("event", "")).startswith("the committed position was committed while writing")]
    remedy = f"consumer finish --group-id {group} --topic {topic} --output {old}"
    assert hints == [remedy] * (1 if lost_commit else 2), moved.stderr[-3000:]  # a reset writes no note

    done = finish_files(topic, group, old)
    assert done.returncode == 0, done.stderr[-3000:]
    assert staging_keys(s3, stack.s3_bucket, unique_prefix + "old") == []
    every = {0: list(range(300)), 1: list(range(300))}
    assert offsets_in_both(s3, stack.s3_bucket, unique_prefix, tmp_path, new_bucket) == every
    assert verify_files(topic, old).returncode == 0
    # verify against the group's offsets: the new output alone misses what the old one holds;
    # given the old one (--with-output), every offset is in exactly one of them
    verdicts = [subprocess.run(
        [sys.executable, "-m", "consumer", "verify", "--output", new, "--topic", topic, "--group-id", group,
         "--bootstrap-servers", stack.kafka_bootstrap, *extra],
        capture_output=True, text=True, timeout=120, cwd=REPO) for extra in ([], ["--with-output", old])]
    assert verdicts[0].returncode == 1 and "MISSING=" in verdicts[0].stdout, verdicts[0].stdout
    assert f"Check both as one with --with-output {old}" in verdicts[0].stdout, verdicts[0].stdout
    assert verdicts[1].returncode == 0, verdicts[1].stdout + verdicts[1].stderr


def moved_with_a_lost_commit(stack: Any, admin: Any, topic: str, group: str, old: str, new: str) -> None:
    """400 records committed into open files of ``old`` (2 partitions, row groups of 100), the
    commit of partition 0's last piece, [100, 200), lost (the offset moved back to its start), then
    200 more records and a run of the group into ``new`` that catches up."""
    produce(stack.kafka_bootstrap, topic, "page_view", 400, partitions=2, create_topic=False)
    committed_into_open_files(topic, group, old, 400)
    reset_offset(admin, group, topic, 100)
    produce(stack.kafka_bootstrap, topic, "page_view", 200, partitions=2, create_topic=False, start=400)
    moved = run_consumer(topic, group, new)
    assert moved.returncode == 0, moved.stderr[-3000:]


def test_a_run_back_killed_after_finishing_the_bucket_files_left_staged_goes_on_when_run_again(
    stack: Any, s3: Any, make_topic: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """Under --partition-by the group leaves an output with two bucket files open (staged), moves
    to a new one, and comes back past them: the run back finishes them as a reset forwards. Killed
    after both are final and their pieces deleted, before its commit, it left the old output's
    ``.away`` saying "staged"; the next run back found every file rolled where the group left and
    none open, and stopped (status 5), saying they were deleted. It says "finishing" first now,
    naming the files, and the run again goes on: every offset in exactly one of the two outputs."""
    topic, group = make_topic(partitions=1), unique("g")
    old, new = output(stack, unique_prefix + "old"), output(stack, unique_prefix + "new")
    flags = (*BUCKETED, "--max-open-buckets", "3", "--bucket-grace", "2h")
    produce(stack.kafka_bootstrap, topic, "page_view", 300, partitions=1, create_topic=False, spread_hours=2)
    committed_into_open_files(topic, group, old, 300, *flags)
    staged = staging_keys(s3, stack.s3_bucket, unique_prefix + "old")
    assert len({k.split("/hr=")[1].split("/")[0] for k in staged if "/hr=" in k}) == 2, staged
    produce(stack.kafka_bootstrap, topic, "page_view", 100, partitions=1, create_topic=False, start=300,
            spread_hours=2)
    moved = run_consumer(topic, group, new, *flags)
    assert moved.returncode == 0, moved.stderr[-3000:]

    member = static_member()
    killed = run_consumer(topic, group, old, *flags, *member, env={"CONSUMER_FAULT": "after_piece_delete:2"})
    assert killed.returncode == FAULT_EXIT_CODE, killed.stderr[-3000:]
    assert f"the group wrote [300, 400) to {new} before it came back here" in killed.stderr, \
        killed.stderr[-3000:]
    assert "were skipped" not in killed.stderr, killed.stderr[-3000:]
    assert staging_keys(s3, stack.s3_bucket, unique_prefix + "old") == []
    produce(stack.kafka_bootstrap, topic, "page_view", 100, partitions=1, create_topic=False, start=400,
            spread_hours=2)  # something to read: the run again recovers the partition
    again = run_consumer(topic, group, old, *flags, *member)  # static: it replaces the killed one at once
    assert again.returncode == 0, again.stderr[-3000:]
    assert offsets_in_both(s3, stack.s3_bucket, unique_prefix, tmp_path) == {0: list(range(500))}


@pytest.mark.parametrize("where", ["same-bucket", "another-bucket"])
def test_a_group_moved_to_another_output_and_back_leaves_out_what_the_other_holds(
    stack: Any, s3: Any, admin: Any, make_topic: Any, unique_prefix: str, tmp_path: Path,
    request: pytest.FixtureRequest, where: str,
) -> None:
    """A move undone: the group writes to a new ``--output``, then goes back to the old one (a
    rollout reverted). The old output's open file holds a piece whose commit was lost before the
    move (here: the offset moved back to its start), and the new output read those records again.
    The run back used to finish that piece as a reset forwards finishes what is staged: its
    records were in both outputs. It reads where the new output's files begin and leaves it out,
    in the same bucket or in another (through a store of that bucket, same credentials)."""
    topic, group = make_topic(partitions=2), unique("g")
    new_bucket = request.getfixturevalue("another_bucket") if where == "another-bucket" else stack.s3_bucket
    old = output(stack, unique_prefix + "old")
    new = f"s3://{new_bucket}/{unique_prefix}new"
    moved_with_a_lost_commit(stack, admin, topic, group, old, new)
    produce(stack.kafka_bootstrap, topic, "page_view", 100, partitions=2, create_topic=False, start=600)

    back = run_consumer(topic, group, old)
    assert back.returncode == 0, back.stderr[-3000:]
    left_out = [e for e in log_events(back.stderr) if str(e.get("event", "")).startswith(
        "staged rows here are in the output the group moved to as well")]
    assert [(e["partition"], e["from_position"], e["to_position"]) for e in left_out] == [(0, 100, 200)], \
        back.stderr[-3000:]
    assert staging_keys(s3, stack.s3_bucket, unique_prefix + "old") == []
    every = {0: list(range(350)), 1: list(range(350))}
    assert offsets_in_both(s3, stack.s3_bucket, unique_prefix, tmp_path, new_bucket) == every


def test_a_run_back_past_an_uncommitted_dead_letter_object_leaves_it_out_and_goes_on(
    stack: Any, s3: Any, make_topic: Any, unique_prefix: str
) -> None:
    """300 malformed records. In the old output their flush (row groups of 300) makes its dead
    letters [0, 300) durable and dies before its commit. The group moves to a new output (row
    groups of 100), which writes [0, 100) to its dead letters, commits 100 and dies. The group
    comes back: the committed 100 is inside the old output's uncommitted object [0, 300), and the
    run back took it for a reset backwards and stopped with status 5, changing nothing. It now
    leaves that object out as the new output holds [0, 100) (and deletes it), reads from 100, and
    every record is a dead letter in exactly one of the two outputs."""
    topic, group = make_topic(partitions=1), unique("g")
    old, new = output(stack, unique_prefix + "old"), output(stack, unique_prefix + "new")
    good = [encode_raw(SCHEMA, make_record("page_view", i)) for i in range(300)]
    produce_raw(stack.kafka_bootstrap, topic, [v + b"\x00\x01" for v in good])
    member = static_member()
    died = run_consumer(topic, group, old, "--row-group-rows", "300", *member,
                        env={"CONSUMER_FAULT": "after_dead_letter_put:1"})
    assert died.returncode == FAULT_EXIT_CODE, died.stderr[-3000:]
    moved = run_consumer(topic, group, new, "--row-group-rows", "100", *member,
                         env={"CONSUMER_FAULT": "after_commit:1"})
    assert moved.returncode == FAULT_EXIT_CODE, moved.stderr[-3000:]
    assert committed(stack.kafka_bootstrap, group, topic) == [100]

    def letters(prefix: str) -> dict[str, list[int]]:
        return {key.rsplit("/", 1)[-1]: sorted(json.loads(line)["offset"] for line in s3.get_object(
                    Bucket=stack.s3_bucket, Key=key)["Body"].read().splitlines())
                for key, _ in _all(s3, stack.s3_bucket, prefix) if "/_dead_letters/" in key}

    assert [sorted(set(o)) for o in letters(unique_prefix + "old").values()] == [list(range(300))]
    back = run_consumer(topic, group, old, "--row-group-rows", "300", *member)
    assert back.returncode == 0, back.stderr[-3000:]
    left_out = [e for e in log_events(back.stderr) if str(e.get("event", "")).startswith(
        "staged rows here are in the output the group moved to as well")]
    assert [(e["from_position"], e["to_position"], e["dead_letter_objects"]) for e in left_out] == [
        (0, 100, 1)], back.stderr[-3000:]
    there, here = letters(unique_prefix + "new"), letters(unique_prefix + "old")
    assert sorted(o for offsets in there.values() for o in offsets) == list(range(100)), there
    assert sorted(o for offsets in here.values() for o in offsets) == list(range(100, 300)), here
    assert committed(stack.kafka_bootstrap, group, topic) == [300]


def test_a_run_back_whose_other_bucket_is_gone_keeps_every_staged_row_and_says_why(
    stack: Any, s3: Any, admin: Any, make_topic: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """A move undone the hard way: the group wrote to a new bucket, and the operator deleted that
    bucket before going back to the old output. The run back cannot read what the group wrote
    there (S3 says NoSuchBucket): it says so, naming the output and the error, and keeps every
    row staged in the old output, the piece whose commit was lost included. What only the deleted
    bucket held is the operator's deletion; nothing the old output held is lost."""
    topic, group = make_topic(partitions=2), unique("g")
    gone = f"{stack.s3_bucket}-gone-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=gone)
    old, new = output(stack, unique_prefix + "old"), f"s3://{gone}/{unique_prefix}new"
    moved_with_a_lost_commit(stack, admin, topic, group, old, new)
    for key in [o["Key"] for o in s3.list_objects_v2(Bucket=gone).get("Contents", [])]:
        s3.delete_object(Bucket=gone, Key=key)
    s3.delete_bucket(Bucket=gone)
    produce(stack.kafka_bootstrap, topic, "page_view", 100, partitions=2, create_topic=False, start=600)

    back = run_consumer(topic, group, old)
    assert back.returncode == 0, back.stderr[-3000:]
    said = [e for e in log_events(back.stderr)
            if str(e.get("event", "")).startswith("the output the group moved to could not be read")]
    assert sorted(e["partition"] for e in said) == [0, 1], back.stderr[-3000:]
    assert all(e["moved_to"] == new and "NoSuchBucket" in e["error"] for e in said), said
    assert staging_keys(s3, stack.s3_bucket, unique_prefix + "old") == []
    table = read_table(download_finals(s3, stack.s3_bucket, unique_prefix + "old", tmp_path))
    held = {p: sorted(o) for p, o in offsets_by_partition(table).items()}
    assert held == {0: [*range(200), *range(300, 350)], 1: [*range(200), *range(300, 350)]}, held

