"""consumer.metrics on the in-memory doubles: what a scrape shows, health, the stall alarm.

Fast (no stack). The real-stack scrape, promtool and a real Prometheus server are in
tests/stack/test_metrics_stack.py.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from consumer import config as cfgmod
from consumer.errors import EXIT_STALLED
from consumer.metrics import REASONS, Observer, PartitionCounters, reason_class
from consumer.storage import RetryPolicy, StoreStats
from consumer.testing import (
    MemoryBroker,
    MemoryConsumer,
    MemoryStore,
    at_consume,
    memory_runner,
    page_view_broker,
)
from consumer.worker import PartitionState


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _broker(partitions: int, per_partition: int, *, bad: int = 0) -> MemoryBroker:
    broker = page_view_broker(partitions, per_partition)
    for p in range(partitions):
        for _ in range(bad):
            broker.produce("t", b"\x99not avro", partition=p, key=b"k")
            broker.produce("t", None, partition=p, key=b"k")  # tombstone
    return broker


def _runner(broker: MemoryBroker, store: MemoryStore, clock: Any = time.monotonic, **cfg: Any) -> Any:
    return memory_runner(broker, store, clock=clock, decoder="python", **cfg)


def _values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _get(values: dict[Any, float], name: str, **labels: str) -> float:
    return values[(name, tuple(sorted(labels.items())))]


def test_reason_classes_cover_the_reasons_the_code_writes() -> None:
    assert reason_class("null value (tombstone): nothing to decode") == "tombstone"
    assert reason_class("malformed Avro: EOFError: …") == "malformed"
    assert reason_class("malformed Avro: 3 trailing bytes after the record (wrong schema?)") == "malformed"
    assert reason_class("top-level Avro value is not a record") == "malformed"
    assert reason_class("not Confluent wire format (first byte 7, expected magic 0x00 + …)") == "bad_framing"
    assert reason_class("unknown schema id 42: the registry has no such schema") == "unknown_schema"
    assert reason_class("schema id 3 is not an Avro record schema") == "unmappable_schema"
    assert reason_class("schema id 3 cannot be used: ValueError: x") == "unmappable_schema"
    assert reason_class("writer schema id 3 cannot be mapped to columns: X") == "unmappable_schema"
    assert reason_class("value not representable in the column types: ArrowInvalid: x") == (
        "unrepresentable_value"
    )
    assert reason_class("something new") == "other"
    assert set(REASONS) >= {reason_class(r) for r in ("a", "tombstone", "malformed")}


def test_a_run_is_visible_in_the_scrape_with_plausible_values() -> None:
    broker, store = _broker(2, 25, bad=1), MemoryStore()
    runner = _runner(broker, store, row_group_rows=10, until_caught_up=True, batch_size=4)
    observer = Observer(runner, registry=CollectorRegistry(auto_describe=True), exit=lambda code: None)
    mid: list[str] = []

    def scrape_mid_run(_c: MemoryConsumer) -> None:
        if runner.workers and not mid:
            mid.append(observer.scrape().decode())

    runner.consumer.on_consume = scrape_mid_run
    assert runner.run() == 0
    v = _values(observer.scrape().decode())
    for p in ("0", "1"):
        assert _get(v, "kafka_parquet_records_consumed_total", topic="t", partition=p) == 27
        assert _get(v, "kafka_parquet_rows_durable_total", topic="t", partition=p) == 25
        assert _get(v, "kafka_parquet_row_groups_durable_total", topic="t", partition=p) == 3
        assert _get(v, "kafka_parquet_files_rolled_total", topic="t", partition=p) == 1
        assert _get(v, "kafka_parquet_file_bytes_total", topic="t", partition=p) > 1000
        assert _get(v, "kafka_parquet_consumed_bytes_total", topic="t", partition=p) > 25 * 50
        assert _get(v, "kafka_parquet_commits_total", topic="t", partition=p) >= 3
        assert _get(v, "kafka_parquet_dead_letters_total", topic="t", partition=p, reason="malformed") == 1
        assert _get(v, "kafka_parquet_dead_letters_total", topic="t", partition=p, reason="tombstone") == 1
    assert _get(v, "kafka_parquet_commit_latency_seconds_count", topic="t") >= 6
    assert _get(v, "kafka_parquet_s3_requests_total", op="put_object") > 6
    assert _get(v, "kafka_parquet_rebalances_total") >= 1
    assert _get(v, "kafka_parquet_memory_budget_bytes") == runner.config.memory_bytes
    # mid-run: per-partition gauges of the live workers
    m = _values(mid[0])
    assert _get(m, "kafka_parquet_assigned_partitions") == 2
    assert _get(m, "kafka_parquet_log_end_offset", topic="t", partition="0") == 27
    assert _get(m, "kafka_parquet_lag_offsets", topic="t", partition="0") == 27  # nothing committed yet
    assert 0 < _get(m, "kafka_parquet_freshness_seconds", topic="t", partition="0") < 60
    assert _get(m, "kafka_parquet_open_files") == 0


def _scrapes_of_partition_0(
    broker: MemoryBroker, when: Callable[[Any], bool], **cfg: Any
) -> list[dict[Any, float]]:
    """Eight scrapes of a member of ``broker``, one per poll once ``when(worker of t[0])`` holds,
    its clock a second further at every poll (the loop notes Kafka's view every second)."""
    clock = FakeClock()
    runner = _runner(broker, MemoryStore(), clock=clock, **cfg)
    observer = Observer(runner, registry=CollectorRegistry(auto_describe=True), exit=lambda code: None)
    scrapes: list[dict[Any, float]] = []

    def step(_c: MemoryConsumer) -> None:
        clock.t += 1.0
        if runner.workers and when(runner.workers[("t", 0)]):
            scrapes.append(_values(observer.scrape().decode()))
        if len(scrapes) == 8:
            runner.request_stop()

    runner.consumer.on_consume = step
    assert runner.run() == 0
    return scrapes


def test_lag_reaches_zero_past_transaction_markers_and_aborted_records() -> None:
    """A transactional topic's partition ends with markers (and here an aborted transaction): its
    committed offset stops at 10 of 15 for good. Counted from there, the lag gauge said 5 forever
    and a lag alert never cleared; once the member has read past them with nothing buffered, it
    says 0. The committed offset stays what Kafka holds."""
    broker = _broker(1, 10)
    broker.end_transaction("t", 0, aborted=[b"x", b"y", b"z"])
    broker.end_transaction("t", 0)
    last = _scrapes_of_partition_0(broker, lambda w: w.committed == 10, row_group_rows=10)[-1]
    assert _get(last, "kafka_parquet_lag_offsets", topic="t", partition="0") == 0
    assert _get(last, "kafka_parquet_committed_offset", topic="t", partition="0") == 10
    assert _get(last, "kafka_parquet_log_end_offset", topic="t", partition="0") == 15


def test_lag_counts_buffered_records_from_the_committed_offset() -> None:
    """Records consumed but not yet durable are still lag, markers or not after them."""
    broker = _broker(1, 10)
    broker.end_transaction("t", 0)
    scrapes = _scrapes_of_partition_0(broker, lambda w: w.next_pos == 10, row_group_rows=100)
    assert {_get(v, "kafka_parquet_lag_offsets", topic="t", partition="0") for v in scrapes} == {11}


def test_counters_survive_a_partition_being_revoked_and_assigned_again() -> None:
    broker, store = _broker(1, 25), MemoryStore()
    first = _runner(broker, store, row_group_rows=10, batch_size=12)
    observer = Observer(first, registry=CollectorRegistry(auto_describe=True), exit=lambda code: None)
    at_consume(first.consumer, {2: first.request_stop})
    assert first.run() == 0
    v = _values(observer.scrape().decode())
    assert _get(v, "kafka_parquet_records_consumed_total", topic="t", partition="0") == 24
    assert _get(v, "kafka_parquet_rows_durable_total", topic="t", partition="0") == 24  # flushed at stop
    # The workers are retired, their counts are not: a new worker of the partition (assigned
    # again) continues the same counters.
    assert first._new_worker("t", 0).counters is first.shared.counters[("t", 0)]
    assert first.shared.counters[("t", 0)].records == 24


def test_promtool_accepts_the_exposition() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (dev/prometheus installs it)")
    broker, store = _broker(2, 25, bad=1), MemoryStore()
    runner = _runner(broker, store, row_group_rows=10, until_caught_up=True)
    observer = Observer(runner, registry=CollectorRegistry(auto_describe=True), exit=lambda code: None)
    texts: list[bytes] = []
    runner.consumer.on_consume = lambda _c: texts.append(observer.scrape()) if runner.workers else None
    assert runner.run() == 0
    texts.append(observer.scrape())
    for text in (texts[0], texts[-1]):
        r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
        assert r.returncode == 0, (r.stdout + r.stderr).decode()


def test_health_states_follow_the_loop_s3_and_commits() -> None:
    clock = FakeClock()
    broker, store = _broker(1, 5), MemoryStore()
    runner = _runner(broker, store, clock=clock)
    observer = Observer(runner, registry=CollectorRegistry(auto_describe=True), exit=lambda code: None)
    h = observer.health()
    assert h.alive and not h.ready and "starting" in h.reasons[0]
    runner.heartbeat = clock()
    assert observer.health().ready
    clock.t += 45  # the loop is blocked (in a flush, say)
    h = observer.health()
    assert h.alive and not h.ready and "poll loop busy" in h.reasons[0]
    clock.t += 200
    store.stats.last_request_at = time.monotonic() - 500
    assert not observer.health().alive
    store.stats.last_request_at = time.monotonic()  # … but S3 requests are being retried: alive
    assert observer.health().alive
    runner.heartbeat = clock()
    store.stats.failing_since = time.monotonic() - 30
    h = observer.health()
    assert not h.ready and "S3 requests failing" in h.reasons[0]
    store.stats.failing_since = None

    class Refusing:
        def commit(self, topic: str, partition: int, position: int, note: str = "") -> None:
            raise RuntimeError("coordinator unavailable")

    observer2 = Observer(runner, registry=CollectorRegistry(auto_describe=True), exit=lambda code: None)
    runner.positions._inner = Refusing()  # under observer2's wrapper sits observer's wrapper
    with pytest.raises(RuntimeError):
        runner.positions.commit("t", 0, 1)
    assert "last commit attempt failed" in observer2.health().reasons[0]


def test_readyz_names_a_registry_hold_back_and_a_missing_topic() -> None:
    clock = FakeClock()
    broker, store = _broker(1, 5), MemoryStore()
    runner = _runner(broker, store, clock=clock)
    observer = Observer(runner, registry=CollectorRegistry(auto_describe=True), exit=lambda code: None)
    runner.heartbeat = clock()
    assert observer.health().ready

    class Worker:  # what the observer reads of a partition worker holding records back
        where, state, pending, first_append_at = "t[0]", PartitionState.READY, False, None
        waiting = (object(), object())

    runner.workers[("t", 0)] = Worker()
    h = observer.health()
    assert not h.ready and "t[0] holds 2 records back: the schema registry is unreachable" in h.reasons[0]
    del runner.workers[("t", 0)]
    runner._missing_topics = ["orders"]
    h = observer.health()
    assert not h.ready and "subscribed topic 'orders' does not exist" in h.reasons[0]
    runner.assigned_once = True  # it exists now and partitions were assigned
    assert observer.health().ready


def test_stall_alarm_logs_turns_not_ready_and_exits_with_status_7() -> None:
    clock = FakeClock()
    broker, store = _broker(2, 30), MemoryStore()
    runner = _runner(broker, store, clock=clock, row_group_rows=1000, row_group_max_age=60.0,
                     stall_timeout=10.0, stall_exit=20.0)
    exits: list[int] = []
    observer = Observer(runner, registry=CollectorRegistry(auto_describe=True), exit=exits.append)
    seen: list[Any] = []
    calls = 0

    def tick(_c: MemoryConsumer) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:  # records of both partitions are buffered, nothing committed
            seen.append(observer.check())
            clock.t += 75  # waited 75 s > 60 + 10: stalled, not past the exit bound yet
            seen.append(observer.check())
            assert not exits
            v = _values(observer.scrape().decode())
            seen.append(v)
            clock.t += 10  # 85 s > 60 + 20: exit
            seen.append(observer.check())
            runner.request_stop()

    runner.consumer.on_consume = tick
    runner.run()
    first, stalled, values, _ = seen
    assert not first.stalled and first.ready
    assert stalled.stalled and not stalled.ready and any("stalled" in r for r in stalled.reasons)
    assert _get(values, "kafka_parquet_stalled") == 1
    assert _get(values, "kafka_parquet_freshness_seconds", topic="t", partition="0") >= 75
    assert exits == [EXIT_STALLED]


def test_http_endpoints() -> None:
    broker, store = _broker(1, 5), MemoryStore()
    runner = _runner(broker, store)
    observer = Observer(runner, registry=CollectorRegistry(auto_describe=True), port=0, host="127.0.0.1",
                        exit=lambda code: None)
    observer.start()
    try:
        base = f"http://127.0.0.1:{observer.port}"
        with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
            assert r.status == 200 and b"kafka_parquet_memory_budget_bytes" in r.read()
            assert r.headers["Content-Type"].startswith("text/plain")
        with urllib.request.urlopen(base + "/healthz", timeout=10) as r:
            assert r.status == 200
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + "/readyz", timeout=10)
        assert e.value.code == 503 and b"starting" in e.value.read()
        runner.heartbeat = runner.clock()
        with urllib.request.urlopen(base + "/readyz", timeout=10) as r:
            assert r.status == 200
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + "/nope", timeout=10)
        assert e.value.code == 404
    finally:
        observer.stop()


def test_store_stats_count_errors_retries_and_failing_since() -> None:
    pytest.importorskip("s3fs")
    from consumer.storage import S3Store, TransientStorageError

    store = S3Store("bucket", endpoint_url="http://127.0.0.1:9", retry=RetryPolicy(0.001, 0.001, 5.0))
    attempts = 0

    def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts <= 2:
            raise ConnectionError("reset")
        return "ok"

    assert store._retrying("put_object", flaky) == "ok"
    s = store.stats
    assert (s.requests["put_object"], s.errors["put_object"], s.retries_by_op["put_object"]) == (3, 2, 2)
    assert s.retries == 2 and s.failing_since is None and s.last_request_at is not None

    def down() -> str:
        raise ConnectionError("refused")

    store.retry = RetryPolicy(0.001, 0.001, 0.0)
    with pytest.raises(TransientStorageError):
        store._retrying("head_object", down)
    assert s.errors["head_object"] == 1 and "head_object" not in s.retries_by_op
    assert s.failing_since is not None


def test_partition_counters_and_store_stats_defaults() -> None:
    c = PartitionCounters()
    c.durable(10, 100)
    c.rolled(1000)
    c.dead(["null value (tombstone): nothing to decode", "malformed Avro: x"])
    assert (c.rows, c.row_groups, c.row_group_bytes, c.files, c.file_bytes) == (10, 1, 100, 1, 1000)
    assert dict(c.dead_letters) == {"tombstone": 1, "malformed": 1}
    assert StoreStats().failing_since is None


def test_config_flags_and_validation() -> None:
    c = cfgmod.load({"metrics_port": "9108", "stall_timeout": "2m", "stall_exit": "none"}, env={})
    assert (c.metrics_port, c.stall_timeout, c.stall_exit) == (9108, 120.0, None)
    c = cfgmod.load({}, env={"CONSUMER_METRICS_PORT": "0", "CONSUMER_STALL_EXIT": "10m"})
    assert (c.metrics_port, c.stall_exit) == (0, 600.0)
    d = cfgmod.load({}, env={})
    assert (d.metrics_port, d.stall_timeout, d.stall_exit) == (None, 300.0, 900.0)
    bad = cfgmod.Config(metrics_port=70000, stall_timeout=60, stall_exit=30).problems()
    assert any("metrics-port" in p for p in bad) and any("stall-exit" in p for p in bad)


def test_run_with_a_metrics_port_in_use_is_a_configuration_error(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    from consumer.cli import main

    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc = main(["run", "--bootstrap-servers", "127.0.0.1:1", "--group-id", "g", "--topic", "t",
                   "--output", "s3://bucket/out", "--schema", "page_view", "--s3-endpoint-url",
                   "http://127.0.0.1:9", "--metrics-port", str(port), "--log-format", "json"])
    assert rc == 2
    assert f"metrics port {port}" in capsys.readouterr().err


def test_replays_are_observed_too() -> None:
    """`consumer replay` gets the same Observer: positions kept in _state objects, wrapped."""
    from consumer.decoding import Decoder
    from consumer.replay import Bound, ReplayRunner
    from consumer.samples import load_schema

    broker, store = _broker(2, 25), MemoryStore()
    runner = ReplayRunner(
        cfgmod.Config(bootstrap_servers="memory", group_id="consumer-replay", topics=("t",),
                      output="s3://bucket/out", schema="page_view", row_group_rows=10, decoder="python"),
        store=store, decoder=Decoder("raw", schema=load_schema("page_view")),
        start=Bound.parse("beginning"), stop=Bound.parse("end"), consumer_factory=broker.consumer_factory(),
    )
    observer = Observer(runner, registry=CollectorRegistry(auto_describe=True), exit=lambda code: None)
    assert runner.run() == 0
    v = _values(observer.scrape().decode())
    for p in ("0", "1"):
        assert _get(v, "kafka_parquet_rows_durable_total", topic="t", partition=p) == 25
        assert _get(v, "kafka_parquet_files_rolled_total", topic="t", partition=p) == 1
    assert _get(v, "kafka_parquet_commit_latency_seconds_count", topic="t") >= 6
    assert observer.commit_failing_since is None and observer.last_commit_at is not None
