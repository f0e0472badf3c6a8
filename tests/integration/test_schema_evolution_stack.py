"""Schema evolution on the real stack: the local Confluent-compatible registry (dev/registry.py),
Kafka and S3, with the consumer killed (SIGKILL) in the middle.

Three compatible versions of a subject are registered one after another while producers
interleave their ids (v1; then v1/v2; then v1/v2/v3). Each partition must end with exactly one
file per reader version — the file changes once per upgrade, at the first record of the new
version, never per flip — and every record exactly once with every value right: the older
writers' records read as the file's reader schema (defaults filled, ints promoted, removed fields
gone, an alias followed). The restarted consumer first finds the registry unreachable (a proxy
resetting every connection): its partitions pause and retry, and nothing is dead-lettered.
Small: 1,200 records over two partitions.
"""

from __future__ import annotations

import io
import json
import signal
from pathlib import Path
from typing import Any

import fastavro
import pyarrow.parquet as pq
import pytest
from faults.faultproxy import FaultProxy
from support import (
    FAST_EVICTION,
    download_finals,
    kafka_conf,
    list_keys,
    read_footer_metadata,
    start_consumer,
    unique,
)

from consumer.registry import SchemaRegistryClient

# Only its own topics, groups and prefixes, and waits for outcomes: see tests/conftest.py.
pytestmark = pytest.mark.shares_stack

V1: dict[str, Any] = {
    "type": "record", "name": "Evt", "namespace": "ex",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "n", "type": "int"},
        {"name": "old", "type": "string"},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
    ],
}
V2: dict[str, Any] = {
    "type": "record", "name": "Evt", "namespace": "ex",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "n", "type": "long"},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "country", "type": "string", "default": "zz"},
    ],
}
V3: dict[str, Any] = {
    "type": "record", "name": "Evt", "namespace": "ex",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "n", "type": "double"},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "land", "type": "string", "default": "zz", "aliases": ["country"]},
        {"name": "geo", "type": ["null", {"type": "record", "name": "Geo",
                                          "fields": [{"name": "lat", "type": "float"}]}], "default": None},
    ],
}
VERSIONS = {1: V1, 2: V2, 3: V3}
PARTITIONS = 2


def record(version: int, i: int) -> dict[str, Any]:
    full = {"id": i, "n": i * 3, "old": f"o{i}", "tags": [f"t{i}"], "country": f"c{i}", "land": f"c{i}",
            "geo": {"lat": 1.5}}
    return {f["name"]: full[f["name"]] for f in VERSIONS[version]["fields"]}


def expected(reader: int, writer: int, i: int) -> dict[str, Any]:
    """Record ``i`` written with version ``writer`` as the reader version shows it."""
    if reader == 1:
        return {"id": i, "n": i * 3, "old": f"o{i}", "tags": [f"t{i}"]}
    if reader == 2:
        return {"id": i, "n": i * 3, "tags": [f"t{i}"], "country": f"c{i}" if writer >= 2 else "zz"}
    return {"id": i, "n": float(i * 3), "tags": [f"t{i}"], "land": f"c{i}" if writer >= 2 else "zz",
            "geo": {"lat": 1.5} if writer == 3 else None}


def durable_from(events: list[dict[str, Any]], starts: dict[int, int]) -> bool:
    """Every partition p made a row group durable that starts at or after ``starts[p]``."""
    return all(
        any(e.get("event") == "row group durable" and e.get("partition") == p and e.get("rows", 0) > 0
            and e.get("from_position", -1) >= start for e in events)
        for p, start in starts.items()
    )


def produce(bootstrap: str, topic: str, ids: dict[int, int], plan: list[tuple[int, int]],
            written: dict[tuple[int, int], tuple[int, int]]) -> None:
    """Produce (version, i) records, record i to partition i % 2; note (partition, offset) → (version, i)."""
    from confluent_kafka import Producer

    p = Producer(kafka_conf({"bootstrap.servers": bootstrap, "enable.idempotence": True}))
    parsed = {v: fastavro.parse_schema(s) for v, s in VERSIONS.items()}

    def done(err: Any, msg: Any, version: int, i: int) -> None:
        assert err is None, err
        written[(msg.partition(), msg.offset())] = (version, i)

    for version, i in plan:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed[version], record(version, i))
        value = b"\x00" + ids[version].to_bytes(4, "big") + buf.getvalue()
        p.produce(topic, value, partition=i % PARTITIONS, key=str(i).encode(),
                  on_delivery=lambda err, msg, v=version, i=i: done(err, msg, v, i))
    assert p.flush(30) == 0


def test_interleaved_versions_one_file_per_upgrade_exactly_once_across_a_kill(
    stack: Any, s3: Any, unique_prefix: str, tmp_path: Path, make_topic: Any
) -> None:
    topic = make_topic(partitions=PARTITIONS)
    subject = f"{topic}-value"
    registry = SchemaRegistryClient(stack.schema_registry_url)
    out = f"s3://{stack.s3_bucket}/{unique_prefix}"
    flags = ("--framing", "confluent", "--schema-registry-url", stack.schema_registry_url,
             "--row-group-rows", "60", "--row-group-max-age", "1s", "--file-max-age", "none", *FAST_EVICTION)
    group = unique("g")
    written: dict[tuple[int, int], tuple[int, int]] = {}
    ids = {1: registry.register(subject, V1)}

    # Stage 1: v1 only; a consumer runs in the background from here on.
    produce(stack.kafka_bootstrap, topic, ids, [(1, i) for i in range(300)], written)
    first = start_consumer(topic, group, out, *flags)
    try:
        first.wait_for(lambda ev: durable_from(ev, {p: 100 for p in range(PARTITIONS)}), timeout=120,
                       what="stage 1 durable")
        # Stage 2: v2 registered, producers upgrade one by one: ids alternate.
        ids[2] = registry.register(subject, V2)
        produce(stack.kafka_bootstrap, topic, ids, [(1 + (i // 2) % 2, i) for i in range(300, 700)], written)
        first_v2 = {p: min(o for (q, o), (v, _) in written.items() if q == p and v == 2)
                    for p in range(PARTITIONS)}
        # … until each partition rolled its v1 file and staged a piece of its v2 file
        first.wait_for(lambda ev: durable_from(ev, first_v2), timeout=120, what="v2 files staged")
    finally:
        rc = first.stop(signal.SIGKILL)  # mid-run: open files staged, rows buffered, nothing flushed
    assert rc == -signal.SIGKILL

    # Stage 3: v3 registered while the consumer is down; v1, v2 and v3 interleave.
    ids[3] = registry.register(subject, V3)
    produce(stack.kafka_bootstrap, topic, ids, [(1 + (i // 2) % 3, i) for i in range(700, 1200)], written)
    # The restarted consumer meets a registry outage: every schema id is unseen in the new process,
    # so its partitions pause and retry; nothing may be dead-lettered for it.
    with FaultProxy(int(stack.schema_registry_url.rsplit(":", 1)[1]), fault_rate=1.0, faults=("reset",),
                    max_lifetime_s=240) as proxy:
        outage_flags = tuple(proxy.url if f == stack.schema_registry_url else f for f in flags)
        second = start_consumer(topic, group, out, *outage_flags, "--registry-timeout", "3m",
                                until_caught_up=True)
        try:
            second.wait_for(lambda ev: any(e.get("event") == "schema registry unavailable: partition paused, "
                                           "retrying" and e.get("retry_in_s", 0) >= 2 for e in ev),
                            timeout=120, what="a second retry during the registry outage")
            proxy.fault_rate = 0.0
            rc = second.proc.wait(timeout=180)
        finally:
            second.stop()
    assert rc == 0, second.log()[-4000:]
    events = second.events()
    assert any(e.get("event") == "schema registry reachable again: partition resumed" for e in events)
    recovered = [e for e in events if e.get("event") == "partition recovered"]
    assert sorted(e["partition"] for e in recovered if e.get("resumed_pieces", 0) > 0) == [0, 1], recovered

    keys = [k for k, _ in list_keys(s3, stack.s3_bucket, unique_prefix)]
    assert not [k for k in keys if "/_staging/" in k or "/_dead_letters/" in k], keys
    seen: dict[tuple[int, int], dict[str, Any]] = {}
    all_paths = download_finals(s3, stack.s3_bucket, unique_prefix, tmp_path)
    for p in range(PARTITIONS):
        first_v3 = min(o for (q, o), (v, _) in written.items() if q == p and v == 3)
        end = max(o for (q, o) in written if q == p) + 1
        paths = [path for path in all_paths if read_footer_metadata(path)["kafka.partition"] == str(p)]
        ranges, readers = [], []
        for path in paths:
            meta = read_footer_metadata(path)
            ranges.append((int(meta["kafka.from_position"]), int(meta["kafka.to_position"])))
            readers.append(next(v for v, s in VERSIONS.items() if s == json.loads(meta["avro.schema"])))
            reader = readers[-1]
            for row in pq.read_table(path).to_pylist():
                key = (p, row["kafka_offset"])
                assert key not in seen, f"duplicate {key}"
                writer, i = written[key]
                values = {k: v for k, v in row.items() if not k.startswith("kafka_")}
                assert values == expected(reader, writer, i), (key, reader, writer)
                assert row["kafka_key"] == str(i).encode()
                seen[key] = row
        # one file per reader version, changing exactly at the first record of the new version
        files = sorted(zip(ranges, readers, strict=True))
        assert files == [((0, first_v2[p]), 1), ((first_v2[p], first_v3), 2), ((first_v3, end), 3)], files
    assert sorted(seen) == sorted(written)  # every record exactly once
