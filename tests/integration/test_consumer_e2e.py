"""The consumer end to end against the real local stack (Apache Kafka + SeaweedFS S3 + registry).

Each test produces seeded sample records (record i → partition i % P, so offset = i // P), runs the
real ``consumer run`` process, downloads every final file and checks the invariants: every
(partition, offset) exactly once, values equal to what was produced, nothing left in staging.
"""

from __future__ import annotations

import os
import signal
import struct
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from support import (
    assert_exactly_once,
    assert_values_as_produced,
    count,
    download_finals,
    duckdb_counts,
    final_keys,
    kafka_conf,
    list_keys,
    log_events,
    read_footer_metadata,
    read_table,
    run_consumer,
    staging_keys,
    start_consumer,
    unique,
)

from consumer.producer import produce

# Only its own topics, groups and prefixes, and waits for outcomes: see tests/conftest.py.
pytestmark = pytest.mark.shares_stack

E2E_RECORDS = int(os.environ.get("E2E_RECORDS", "50000"))  # the benchmarks cover millions
# Value comparison is Python-heavy; wide records are compared on a deterministic subset.
VALUE_STRIDE = {"page_view": 1, "order": 2, "metrics": 5}


def _out(stack: Any, prefix: str) -> str:
    return f"s3://{stack.s3_bucket}/{prefix.rstrip('/')}"


@pytest.mark.parametrize("schema", ["page_view", "metrics", "order"])
def test_every_record_exactly_once_with_values(
    stack: Any, s3: Any, unique_prefix: str, tmp_path: Path, schema: str
) -> None:
    topic = unique(f"e2e-{schema}")
    res = produce(stack.kafka_bootstrap, topic, schema, E2E_RECORDS, partitions=4, seed=7)
    assert res.count == E2E_RECORDS
    # ~10 row groups and ~2.5 files per partition, whatever E2E_RECORDS is
    rows_per_group = max(100, E2E_RECORDS // (40 if schema != "metrics" else 100))
    run = run_consumer(
        topic,
        unique("g"),
        _out(stack, unique_prefix),
        "--row-group-rows",
        str(rows_per_group),
        "--file-rows",
        str(rows_per_group * 4),
        "--row-group-bytes",
        "4MiB",
        schema=schema,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert staging_keys(s3, stack.s3_bucket, unique_prefix) == []
    paths = download_finals(s3, stack.s3_bucket, unique_prefix, tmp_path)
    table = read_table(paths)
    assert table.num_rows == E2E_RECORDS
    assert_exactly_once(table, res.partition_counts)
    assert duckdb_counts(paths) == (E2E_RECORDS, E2E_RECORDS)
    assert_values_as_produced(table, schema, partitions=4, seed=7, every=VALUE_STRIDE[schema])
    # Maps are real Parquet MAP columns; every file says which positions it holds.
    md = pq.ParquetFile(paths[0])
    assert "MAP" in str(md.schema) or "map" in str(md.schema_arrow)
    for p in paths:
        kv = read_footer_metadata(p)
        offs = pq.read_table(p, columns=["kafka_offset"]).column(0).to_pylist()
        assert int(kv["kafka.from_position"]) <= min(offs) and max(offs) < int(kv["kafka.to_position"])


def test_files_roll_at_the_row_budget(stack: Any, s3: Any, unique_prefix: str, tmp_path: Path) -> None:
    topic = unique("roll-rows")
    res = produce(stack.kafka_bootstrap, topic, "page_view", 4 * 2_500, partitions=4)
    run = run_consumer(
        topic, unique("g"), _out(stack, unique_prefix), "--row-group-rows", "250", "--file-rows", "1000"
    )
    assert run.returncode == 0, run.stderr[-4000:]
    paths = download_finals(s3, stack.s3_bucket, unique_prefix, tmp_path)
    by_partition: dict[str, list[Path]] = {}
    for p in paths:
        by_partition.setdefault(p.parent.name, []).append(p)
    assert len(by_partition) == 4
    for files in by_partition.values():
        files.sort()
        sizes = [pq.ParquetFile(f).metadata.num_rows for f in files]
        groups = [pq.ParquetFile(f).metadata.num_row_groups for f in files]
        # 2500 rows → 1000 + 1000 + 500 (the last is finalised by --until-caught-up)
        assert sizes == [1000, 1000, 500], sizes
        assert groups == [4, 4, 2], groups
        # names carry the first offset of each file
        assert [int(f.stem.rsplit("+", 1)[1]) for f in files] == [0, 1000, 2000]
    assert_exactly_once(read_table(paths), res.partition_counts)


def test_files_roll_near_the_byte_budget(stack: Any, s3: Any, unique_prefix: str, tmp_path: Path) -> None:
    """Byte-budgeted files land within ± half a row group (+ footer) of the target."""
    topic = unique("roll-bytes")
    res = produce(stack.kafka_bootstrap, topic, "metrics", 12_000, partitions=2)
    target, row_group = 400_000, 50_000
    run = run_consumer(
        topic,
        unique("g"),
        _out(stack, unique_prefix),
        "--row-group-bytes",
        str(row_group),
        "--file-bytes",
        str(target),
        "--row-group-rows",
        "1000000",
        schema="metrics",
    )
    assert run.returncode == 0, run.stderr[-4000:]
    paths = download_finals(s3, stack.s3_bucket, unique_prefix, tmp_path)
    for part in {p.parent for p in paths}:
        files = sorted(part.glob("*.parquet"))
        assert len(files) >= 3
        for f in files[:-1]:  # the last one is cut short by --until-caught-up
            size = f.stat().st_size
            groups = pq.ParquetFile(f).metadata.num_row_groups
            mean_group = size / groups
            assert abs(size - target) <= mean_group / 2 + 64 * 1024, (size, target, mean_group)
            # row groups land near their byte target too (predicted from running ratios)
            assert 0.4 * row_group <= mean_group <= 2.0 * row_group, mean_group
    assert_exactly_once(read_table(paths), res.partition_counts)


def _committed(stack: Any, group: str, topic: str, partitions: int) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    conf = {"bootstrap.servers": stack.kafka_bootstrap, "group.id": group, "enable.auto.commit": False}
    c = Consumer(kafka_conf(conf))
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        c.close()


def test_quiet_partition_commits_by_age(stack: Any, s3: Any, unique_prefix: str) -> None:
    topic = unique("age")
    group = unique("g")
    produce(stack.kafka_bootstrap, topic, "page_view", 10, partitions=2)
    running = start_consumer(
        topic, group, _out(stack, unique_prefix), "--row-group-max-age", "1s", "--row-group-rows", "100000"
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _committed(stack, group, topic, 2) != {0: 5, 1: 5}:
            time.sleep(0.5)
        assert _committed(stack, group, topic, 2) == {0: 5, 1: 5}, running.log()[-3000:]
        # committed only because the pieces are durable
        assert len([k for k in staging_keys(s3, stack.s3_bucket, unique_prefix) if k.endswith(".piece")]) == 2
    finally:
        assert running.stop() == 0, running.log()[-3000:]


def test_every_commit_is_covered_by_durable_objects(stack: Any, s3: Any, unique_prefix: str) -> None:
    """Observe each commit as it happens (in-process hook) and check S3 at that moment."""
    from consumer.cli import make_store
    from consumer.config import load
    from consumer.decoding import Decoder
    from consumer.layout import Layout
    from consumer.runner import GroupRunner
    from consumer.samples import load_schema

    topic = unique("discipline")
    res = produce(stack.kafka_bootstrap, topic, "page_view", 6_000, partitions=2)
    cfg = load(
        {
            "bootstrap_servers": stack.kafka_bootstrap,
            "group_id": unique("g"),
            "topics": topic,
            "output": _out(stack, unique_prefix),
            "schema": "page_view",
            "row_group_rows": 700,
            "file_rows": 2100,
            "until_caught_up": True,
        }
    ).validated()
    store = make_store(cfg.bucket, stack.s3_endpoint)
    runner = GroupRunner(cfg, store=store, decoder=Decoder("raw", schema=load_schema("page_view")))
    layout = Layout(cfg.prefix)
    violations: list[str] = []
    checked: list[int] = []

    def covered(t: str, p: int, position: int) -> None:
        # Every position below `position` must be in a staged piece or a final file right now.
        ranges = []
        for key, _ in list_keys(s3, stack.s3_bucket, layout.staging_dir(t, p)):
            ref = layout.parse_staging_key(t, p, key)
            if ref is not None and hasattr(ref, "from_pos"):
                ranges.append((ref.from_pos, ref.to_pos))
        for key in final_keys(s3, stack.s3_bucket, layout.partition_dir(t, p)):
            meta = read_footer_metadata_s3(s3, stack.s3_bucket, key)
            ranges.append((int(meta["kafka.from_position"]), int(meta["kafka.to_position"])))
        pos = 0
        for a, b in sorted(ranges):
            if a <= pos < b:
                pos = b
        if pos < position:
            violations.append(f"{t}[{p}] committed {position} but durable only up to {pos}")
        checked.append(position)

    runner.positions.on_commit.append(covered)  # type: ignore[attr-defined]
    assert runner.run() == 0
    assert not violations, violations
    assert len(checked) >= 2 * (3000 // 700)
    assert sum(res.partition_counts.values()) == 6_000


def read_footer_metadata_s3(s3: Any, bucket: str, key: str) -> dict[str, str]:
    size = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
    tail = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={max(0, size - 65536)}-{size - 1}")[
        "Body"
    ].read()
    from consumer.parquet_merge import read_key_value_metadata, read_piece_layout

    return read_key_value_metadata(read_piece_layout(tail, size).footer)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_stop_signal_then_restart_continues_the_same_file(
    stack: Any, s3: Any, unique_prefix: str, tmp_path: Path, stop: signal.Signals
) -> None:
    """SIGTERM, or SIGHUP (the terminal it ran in closed): the rows held are made durable and
    committed, the files stay open, and the next run continues them."""
    topic = unique("restart")
    group = unique("g")
    out = _out(stack, unique_prefix)
    res = produce(stack.kafka_bootstrap, topic, "page_view", 8_000, partitions=2)
    running = start_consumer(  # as from a terminal: SIGHUP at its default, whatever the suite has
        topic, group, out, "--row-group-rows", "500", "--file-rows", "100000", "--batch-size", "200",
        new_session=True,
    )
    # Partitions arrive in per-partition runs, so wait until both have a durable row group (an
    # open file each) before stopping.
    running.wait_for(
        lambda ev: {e.get("partition") for e in ev if e.get("event") == "row group durable"} >= {0, 1},
        what="a durable row group in both partitions",
    )
    assert running.stop(stop) == 0, running.log()[-3000:]
    assert [e for e in running.events() if e["event"] == "stopped"], running.log()[-3000:]  # by its handler
    assert final_keys(s3, stack.s3_bucket, unique_prefix) == []  # a clean stop does not close files
    before = [k for k in staging_keys(s3, stack.s3_bucket, unique_prefix) if k.endswith(".piece")]
    assert before
    run = run_consumer(topic, group, out, "--row-group-rows", "500", "--file-rows", "100000")
    assert run.returncode == 0, run.stderr[-4000:]
    recovered = {
        e["partition"]: e["resumed_file"]
        for e in log_events(run.stderr)
        if e.get("event") == "partition recovered"
    }
    assert recovered == {0: 0, 1: 0}, f"expected both partitions to resume their file at 0: {recovered}"
    paths = download_finals(s3, stack.s3_bucket, unique_prefix, tmp_path)
    assert len(paths) == 2  # one file per partition: the same file continued, not a small one
    assert all(p.name.endswith("+00000000000000000000.parquet") for p in paths)
    # every piece staged before the stop is a row group of the continued files
    assert sum(pq.ParquetFile(p).metadata.num_row_groups for p in paths) >= len(before)
    assert_exactly_once(read_table(paths), res.partition_counts)


def test_sigusr1_shows_where_every_thread_is_and_the_run_goes_on(stack: Any, unique_prefix: str) -> None:
    """``kill -USR1`` on a consumer that seems stuck: every thread's stack in one warning (the loop,
    the S3 client's event loop), and the run goes on to a clean stop. The dump was once
    :mod:`faulthandler`'s, read without the GIL, and this test's consumer died of it (SIGSEGV) in
    CI: consumer.signals and tests/unit/test_signals.py say why."""
    topic, group = unique("usr1"), unique("g")
    produce(stack.kafka_bootstrap, topic, "page_view", 2_000, partitions=1)
    running = start_consumer(topic, group, _out(stack, unique_prefix), "--row-group-rows", "500")
    running.wait_for(lambda ev: any(e.get("event") == "row group durable" for e in ev),
                     what="a durable row group")
    running.proc.send_signal(signal.SIGUSR1)
    running.wait_for(lambda ev: any(e.get("event") == "stacks of every thread" for e in ev), timeout=10,
                     what="the stacks")
    (stacks,) = [e for e in running.events() if e.get("event") == "stacks of every thread"]
    threads = {t["thread"]: t["stack"] for t in stacks["threads"]}
    assert any("consumer/runner.py" in line for line in threads["MainThread"]), threads
    assert "signal-arrivals" in threads and len(threads) >= 3, threads.keys()
    assert running.proc.poll() is None, running.log()[-3000:]
    assert running.stop(signal.SIGTERM) == 0, running.log()[-3000:]


def test_two_members_split_partitions_and_one_leaves(
    stack: Any, s3: Any, unique_prefix: str, tmp_path: Path
) -> None:
    topic = unique("two")
    group = unique("g")
    out = _out(stack, unique_prefix)
    produce(stack.kafka_bootstrap, topic, "page_view", 4_000, partitions=4, seed=3)
    args = (
        "--row-group-rows",
        "300",
        "--file-rows",
        "1200",
        "--row-group-max-age",
        "1s",
        "--batch-size",
        "100",
    )
    a = start_consumer(topic, group, out, *args)
    b = start_consumer(topic, group, out, *args)
    try:
        for m in (a, b):
            m.wait_for(
                lambda ev: any(e.get("event") == "partitions assigned" and e.get("partitions") for e in ev),
                what="an assignment",
            )
        produce(
            stack.kafka_bootstrap,
            topic,
            "page_view",
            4_000,
            partitions=4,
            seed=3,
            start=4_000,
            create_topic=False,
        )
        b.wait_for(lambda ev: count(ev, "row group durable") >= 2, what="b writes")
        assert b.stop(signal.SIGTERM) == 0, b.log()[-3000:]
        produce(
            stack.kafka_bootstrap,
            topic,
            "page_view",
            4_000,
            partitions=4,
            seed=3,
            start=8_000,
            create_topic=False,
        )
    finally:
        assert a.stop(signal.SIGTERM) == 0, a.log()[-3000:]
        if b.proc.poll() is None:
            b.stop()
    run = run_consumer(topic, group, out, "--row-group-rows", "300", "--file-rows", "1200")
    assert run.returncode == 0, run.stderr[-4000:]
    paths = download_finals(s3, stack.s3_bucket, unique_prefix, tmp_path)
    table = read_table(paths)
    assert_exactly_once(table, {p: 3_000 for p in range(4)})
    assert_values_as_produced(table, "page_view", partitions=4, seed=3)
    assert staging_keys(s3, stack.s3_bucket, unique_prefix) == []


def test_confluent_wire_format_through_the_registry(
    stack: Any, s3: Any, unique_prefix: str, tmp_path: Path
) -> None:
    assert stack.schema_registry_url, "the local stack runs a schema registry"
    topic = unique("confluent")
    res = produce(
        stack.kafka_bootstrap,
        topic,
        "order",
        3_000,
        partitions=2,
        framing="confluent",
        registry_url=stack.schema_registry_url,
        seed=11,
    )
    assert res.schema_id is not None
    run = run_consumer(
        topic,
        unique("g"),
        _out(stack, unique_prefix),
        "--framing",
        "confluent",
        "--schema-registry-url",
        stack.schema_registry_url,
        "--row-group-rows",
        "400",
    )
    assert run.returncode == 0, run.stderr[-4000:]
    paths = download_finals(s3, stack.s3_bucket, unique_prefix, tmp_path)
    table = read_table(paths)
    assert_exactly_once(table, res.partition_counts)
    assert_values_as_produced(table, "order", partitions=2, seed=11)


def _produce_values(stack: Any, topic: str, values: list[bytes], partition: int = 0) -> None:
    from confluent_kafka import Producer

    p = Producer(kafka_conf({"bootstrap.servers": stack.kafka_bootstrap}))
    for v in values:
        p.produce(topic, v, partition=partition)
    assert p.flush(30) == 0


def test_unknown_schema_id_goes_to_dead_letters(
    stack: Any, s3: Any, unique_prefix: str, tmp_path: Path, make_topic: Any
) -> None:
    """A record naming an unregistered schema id is a clear dead letter, not a crash loop."""
    topic = make_topic(partitions=1)
    res = produce(
        stack.kafka_bootstrap,
        topic,
        "page_view",
        50,
        partitions=1,
        framing="confluent",
        registry_url=stack.schema_registry_url,
        create_topic=False,
    )
    _produce_values(stack, topic, [b"\x00" + struct.pack(">I", 987654321) + b"\x02abc", b"not avro at all"])
    produce(
        stack.kafka_bootstrap,
        topic,
        "page_view",
        50,
        partitions=1,
        framing="confluent",
        registry_url=stack.schema_registry_url,
        create_topic=False,
        start=50,
    )
    assert res.schema_id is not None
    out = _out(stack, unique_prefix)
    run = run_consumer(
        topic, unique("g"), out, "--framing", "confluent", "--schema-registry-url", stack.schema_registry_url
    )
    assert run.returncode == 0, run.stderr[-4000:]
    dead = [k for k, _ in list_keys(s3, stack.s3_bucket, unique_prefix) if "/_dead_letters/" in k]
    assert len(dead) == 1
    lines = s3.get_object(Bucket=stack.s3_bucket, Key=dead[0])["Body"].read().decode().splitlines()
    import json

    letters = [json.loads(line) for line in lines]
    assert [d["offset"] for d in letters] == [50, 51]
    assert "unknown schema id 987654321" in letters[0]["reason"]
    assert "not Confluent wire format" in letters[1]["reason"]
    table = read_table(download_finals(s3, stack.s3_bucket, unique_prefix, tmp_path))
    assert sorted(table.column("kafka_offset").to_pylist()) == list(range(50)) + list(range(52, 102))

    # The same input with --on-error fail: stops with a clear message and exit status 3, having
    # committed everything before the bad record.
    group = unique("g")
    fail = run_consumer(
        topic,
        group,
        _out(stack, unique_prefix + "fail/"),
        "--framing",
        "confluent",
        "--schema-registry-url",
        stack.schema_registry_url,
        "--on-error",
        "fail",
    )
    assert fail.returncode == 3, fail.stderr[-3000:]
    assert "offset 50: unknown schema id 987654321" in fail.stderr
    assert _committed(stack, group, topic, 1) == {0: 50}


def test_permanent_s3_errors_stop_with_a_clear_message_and_commit_nothing(stack: Any) -> None:
    topic = unique("perm")
    produce(stack.kafka_bootstrap, topic, "page_view", 500, partitions=1)
    for name, out, env, expected in [
        ("missing bucket", "s3://no-such-bucket-here/x", {}, "bucket does not exist"),
        (
            "bad secret",
            f"s3://{stack.s3_bucket}/x",
            {"AWS_SECRET_ACCESS_KEY": "wrong"},
            "check AWS_SECRET_ACCESS_KEY",
        ),
    ]:
        group = unique("g")
        res = run_consumer(topic, group, out, "--row-group-rows", "100", env=env, timeout=120)
        assert res.returncode == 4, (name, res.stderr[-3000:])
        assert expected in res.stderr, (name, res.stderr[-3000:])
        assert "Traceback" not in res.stderr
        assert _committed(stack, group, topic, 1) == {0: -1001}, name  # nothing committed
