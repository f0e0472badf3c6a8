"""Topics written by transactional producers (Kafka Streams, Flink's exactly-once Kafka sink,
Debezium with transactions): every commit or abort writes a marker that takes an offset no record
has, and under ``read_committed`` the records of an aborted transaction are never delivered. So
the offsets the consumer sees have gaps, between row groups, inside them, and after a partition's
last record. Every committed record must still be exported exactly once and no aborted one, also
when the process is killed at the protocol's points, and ``verify`` (which reads the log) must
agree.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from support import (
    REPO,
    assert_values_as_produced,
    download_finals,
    kafka_conf,
    offsets_by_partition,
    pick_server_port,
    read_table,
    run_consumer,
    staging_keys,
    start_consumer,
    unique,
)

from consumer.samples import encode_raw, key_for, make_record, parsed_schema, timestamp_ms_for

# Only its own topics, groups and prefixes, and waits for outcomes: see tests/conftest.py.
pytestmark = [pytest.mark.stack, pytest.mark.shares_stack]

PARTITIONS = 2
TRANSACTIONS = 7  # every third one (the 2nd, the 5th) aborted
PER_TRANSACTION = 300
ABORTED_BASE = 10_000_000  # aborted records are built from other indices: none may show up
ARGS = ("--row-group-rows", "100", "--file-rows", "400")


def produce_in_transactions(bootstrap: str, topic: str) -> dict[tuple[int, int], int]:
    """Records 0..n-1 of ``page_view`` (record i to partition i % 2) in committed transactions,
    with two aborted transactions of other records between them; the last transaction commits, so
    every partition ends with a marker. Returns (partition, offset) → i of every committed record."""
    schema = parsed_schema("page_view")
    producer = Producer(
        kafka_conf({"bootstrap.servers": bootstrap, "transactional.id": f"tx-{topic}", "linger.ms": 5})
    )
    producer.init_transactions(30)
    landed: dict[tuple[int, int], int] = {}
    failed: list[str] = []

    def delivered(i: int) -> Any:
        def cb(err: Any, msg: Any) -> None:
            if err is not None:
                failed.append(str(err))
            elif i >= 0:
                landed[(msg.partition(), msg.offset())] = i

        return cb

    i = 0
    for t in range(TRANSACTIONS):
        abort = t % 3 == 1
        producer.begin_transaction()
        for n in range(PER_TRANSACTION):
            index = ABORTED_BASE + t * PER_TRANSACTION + n if abort else i
            record = make_record("page_view", index)
            producer.produce(
                topic,
                value=encode_raw(schema, record),
                key=key_for("page_view", record),
                timestamp=timestamp_ms_for("page_view", record),
                partition=(n if abort else i) % PARTITIONS,
                on_delivery=delivered(-1 if abort else i),
            )
            producer.poll(0)
            i += 0 if abort else 1
        assert producer.flush(30) == 0
        if abort:
            producer.abort_transaction(30)
        else:
            producer.commit_transaction(30)
    assert not failed, failed[:3]
    return landed


def assert_exported(s3: Any, bucket: str, prefix: str, tmp: Path, landed: dict[tuple[int, int], int]) -> None:
    """The final files hold exactly the committed records, each once, with their values."""
    assert staging_keys(s3, bucket, prefix) == []
    table = read_table(download_finals(s3, bucket, prefix, tmp))
    got = offsets_by_partition(table)
    want: dict[int, list[int]] = {}
    for p, o in landed:
        want.setdefault(p, []).append(o)
    for p in range(PARTITIONS):
        assert sorted(got.get(p, [])) == sorted(want[p]), (
            f"partition {p}: {len(got.get(p, []))} rows for {len(want[p])} committed records"
        )
    assert table.num_rows == len(landed)
    checked = assert_values_as_produced(table, "page_view", PARTITIONS, index=lambda p, o: landed[(p, o)])
    assert checked == len(landed)


def assert_verified(out: str, topic: str, group: str) -> None:
    """``consumer verify`` (which reads the log) agrees with the group's offsets and the files."""
    checked = subprocess.run(
        [sys.executable, "-m", "consumer", "verify", "--output", out, "--topic", topic, "--group-id", group],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert checked.returncode == 0 and "OK:" in checked.stdout, checked.stdout[-3000:] + checked.stderr[-900:]


@pytest.fixture(scope="module")
def tx_topic(stack: Any, admin: Any) -> tuple[str, dict[tuple[int, int], int]]:
    from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

    topic = unique("tx")
    for fut in admin.create_topics([NewTopic(topic, PARTITIONS, 1)], operation_timeout=30).values():
        fut.result(timeout=30)
    return topic, produce_in_transactions(stack.kafka_bootstrap, topic)


@pytest.mark.parametrize("fault", ["", "after_piece_put:3", "after_commit:5", "after_marker_put:1"])
def test_a_transactional_topic_is_exported_exactly_once_without_its_aborted_records(
    stack: Any, s3: Any, tx_topic: tuple[str, dict[tuple[int, int], int]], unique_prefix: str, tmp_path: Path,
    fault: str,
) -> None:
    topic, landed = tx_topic
    assert len(landed) == (TRANSACTIONS - 2) * PER_TRANSACTION
    group, out = unique("g"), f"s3://{stack.s3_bucket}/{unique_prefix.rstrip('/')}"
    # static membership: the run after a kill takes the partitions back at once
    args = (*ARGS, "-X", f"group.instance.id={unique('member')}", "-X", "session.timeout.ms=10000")
    if fault:
        killed = run_consumer(topic, group, out, *args, env={"CONSUMER_FAULT": fault})
        assert killed.returncode == 97, f"not killed at {fault}:\n{killed.stderr[-3000:]}"
    done = run_consumer(topic, group, out, *args)
    assert done.returncode == 0, done.stderr[-4000:]
    assert_exported(s3, stack.s3_bucket, unique_prefix, tmp_path, landed)
    assert_verified(out, topic, group)


def test_two_member_processes_prove_each_others_partitions_done_past_the_last_markers(
    stack: Any, s3: Any, tx_topic: tuple[str, dict[tuple[int, int], int]], unique_prefix: str, tmp_path: Path,
) -> None:
    """Each member's committed offset stops before its partition's last marker. A member that is
    done reads the group's offsets from outside it and on past the other's committed offset
    (consumer.tail_probe), finds nothing left below the end, and ends. Before, depending on who
    joined first, both waited for each other until --caught-up-timeout and exited 6, or the one
    left learnt nothing until the first one's static session expired (45 s by default, which this
    test keeps): a --caught-up-timeout of 20 s failed either way."""
    topic, landed = tx_topic
    group, out = unique("g"), f"s3://{stack.s3_bucket}/{unique_prefix.rstrip('/')}"
    done = run_consumer(topic, group, out, *ARGS, "--processes", "2", "--caught-up-timeout", "20s")
    assert done.returncode == 0, done.stderr[-4000:]
    assert "nothing left to read between its committed offset and the end offset" in done.stderr
    assert_exported(s3, stack.s3_bucket, unique_prefix, tmp_path, landed)
    assert_verified(out, topic, group)


def _gauges(port: int, name: str) -> dict[int, float]:
    """One gauge of a member's scrape, by partition (empty before the member serves it or has
    partitions)."""
    import urllib.error
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        # Prometheus gives up on a scrape after 10 s by default. A scrape read the Kafka client, and
        # confluent-kafka held that back while the loop sat in consume(): 1-12 s on an idle member.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except urllib.error.URLError:  # not serving yet (a timeout is not a URLError: it fails the test)
        return {}
    return {
        int(s.labels["partition"]): s.value
        for fam in text_string_to_metric_families(text) for s in fam.samples if s.name == name
    }


def test_a_caught_up_member_reports_no_lag_past_the_last_markers(
    stack: Any, tx_topic: tuple[str, dict[tuple[int, int], int]], unique_prefix: str,
) -> None:
    """Kafka's lag (log end minus committed offset) never reaches 0 on a transactional topic: the
    last marker stays after the committed offset. The lag gauge counts from where the member has
    read past it with nothing buffered, so an alert on it clears once the member is caught up.
    And every scrape of the idle member answers at once."""
    topic, _ = tx_topic
    group, out, port = unique("g"), f"s3://{stack.s3_bucket}/{unique_prefix.rstrip('/')}", pick_server_port()
    run = start_consumer(topic, group, out, *ARGS, "--row-group-max-age", "1s", "--metrics-port", str(port))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            committed = _gauges(port, "kafka_parquet_committed_offset")
            end = _gauges(port, "kafka_parquet_log_end_offset")
            lag = _gauges(port, "kafka_parquet_lag_offsets")
            if len(lag) == PARTITIONS and set(lag.values()) == {0}:
                break
            time.sleep(0.5)
        assert lag == dict.fromkeys(range(PARTITIONS), 0), (lag, committed, end, run.log()[-3000:])
        assert all(committed[p] < end[p] for p in range(PARTITIONS)), (committed, end)  # the markers
        for _ in range(10):
            assert _gauges(port, "kafka_parquet_lag_offsets") == lag
            time.sleep(0.3)
    finally:
        assert run.stop() == 0, run.log()[-3000:]
