"""A revoke or a shutdown flushes its partitions side by side, and a run that ends when caught up
(or a replay) finishes them side by side (consumer.side_by_side.close_all): each flush's S3 round
trips overlap the others', its commit runs on the polling thread (the real client hangs
otherwise; MemoryConsumer fails at once), its decode and encode take the process's encoding lock
(a schema's native decoder is shared), and the pieces in flight together stay within one row
group's worth of bytes, what the memory plan reserves for a flush."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from confluent_kafka import TopicPartition
from structlog.testing import capture_logs
from test_shutdown import _stop_on_second_consume

from consumer.side_by_side import close_all
from consumer.testing import MemoryBroker, MemoryConsumer, MemoryStore, memory_runner, page_view_broker
from consumer.verify import verify

PARTITIONS, PER_PARTITION = 12, 30


class _Overlap:
    """Counts how many of some calls run at once."""

    def __init__(self) -> None:
        self.now = self.most = 0
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def __exit__(self, *_: object) -> None:
        with self._lock:
            self.now -= 1


class _Worker:
    """What close_all uses of a PartitionWorker."""

    positions: Any = None

    def __init__(self, name: int, piece_bytes: int, overlap: _Overlap, log: list[int],
                 error: BaseException | None = None) -> None:
        self.name, self.piece_bytes, self.error = name, piece_bytes, error
        self.overlap, self.log = overlap, log
        self.pending = True

    def close(self) -> None:
        with self.overlap:
            time.sleep(0.05)
            self.log.append(self.name)
            if self.error is not None:
                raise self.error
            self.pending = False


def _workers(sizes: list[int], **errors: BaseException) -> tuple[list[Any], _Overlap, list[int]]:
    overlap, log = _Overlap(), []
    return [_Worker(i, n, overlap, log, errors.get(f"w{i}")) for i, n in enumerate(sizes)], overlap, log


@pytest.mark.parametrize(("sizes", "most"), [([30] * 6, 3), ([60] * 6, 1), ([0] * 12, 8)])
def test_flushes_overlap_while_their_pieces_fit_one_row_group(sizes: list[int], most: int) -> None:
    """At most what fits (or the 8 threads) at once; more than one whenever more fit (how many
    actually overlap depends on how fast the threads start on a busy machine)."""
    workers, overlap, _ = _workers(sizes)
    closed = close_all(workers, piece_bytes=100)
    assert [c.worker for c in closed] == workers and not any(c.error or c.skipped for c in closed)
    assert overlap.most <= most
    assert overlap.most > 1 or most == 1


def test_a_flush_bigger_than_the_reserve_runs_alone() -> None:
    overlap, log = _Overlap(), []
    seen_with_big: list[int] = []

    class Big(_Worker):
        def close(self) -> None:
            with self.overlap:
                seen_with_big.append(self.overlap.now)
                time.sleep(0.05)

    workers = [_Worker(i, 10, overlap, log) for i in range(6)] + [Big(6, 500, overlap, log)]
    close_all(workers, piece_bytes=100)
    assert seen_with_big == [1]  # nothing else was flushing beside it


def test_biggest_first_each_result_in_the_workers_order_and_errors_returned() -> None:
    boom = OSError("S3 kept failing")
    workers, _, log = _workers([10, 50, 30], w1=boom)
    closed = close_all(workers, piece_bytes=100, threads=1)
    assert log == [1, 2, 0]
    assert [c.worker for c in closed] == workers
    assert [c.error for c in closed] == [None, boom, None]


def test_flushes_not_started_by_the_deadline_are_skipped() -> None:
    workers, _, log = _workers([10, 10, 10, 10])
    closed = close_all(workers, piece_bytes=100, threads=1, go_on=lambda: len(log) < 2)
    assert [c.skipped for c in closed] == [False, False, True, True]
    assert [w.pending for w in workers] == [False, False, True, True]


class _Slow:
    """A MemoryStore whose ``method`` calls take 20 ms, as S3's do, counting how many overlap:
    ``create`` (a piece PUT) or ``compose`` (a roll's final file)."""

    def __init__(self, inner: MemoryStore, method: str) -> None:
        self.inner, self.method, self.overlap = inner, method, _Overlap()

    def __getattr__(self, name: str) -> Any:
        call = getattr(self.inner, name)
        if name != self.method:
            return call

        def slow(*args: Any) -> Any:
            with self.overlap:
                time.sleep(0.02)
                return call(*args)

        return slow


def _buffered_runner(broker: MemoryBroker, store: Any, **cfg: Any) -> Any:
    """A runner whose first consume returns every record and flushes nothing."""
    return memory_runner(broker, store, row_group_rows=1000, batch_size=PARTITIONS * PER_PARTITION, **cfg)


def _exactly_once(store: MemoryStore, broker: MemoryBroker) -> None:
    runner = memory_runner(broker, store, until_caught_up=True)
    assert runner.run() == 0
    committed = dict.fromkeys(range(PARTITIONS), PER_PARTITION)
    assert {p: broker.committed_offset("g", "t", p) for p in range(PARTITIONS)} == committed
    assert verify(store, "out", "t", committed=committed, contiguous=True).ok


def test_shutdown_flushes_side_by_side_and_commits_from_the_polling_thread() -> None:
    """Twelve partitions on SIGTERM: their piece PUTs overlap, their commits reach MemoryConsumer
    from the polling thread (any other thread fails), and each decodes its last chunk with the
    schema's one native decoder under the encoding lock."""
    broker, inner = page_view_broker(PARTITIONS, PER_PARTITION), MemoryStore()
    store = _Slow(inner, "create")
    runner = _buffered_runner(broker, store)
    _stop_on_second_consume(runner)
    with capture_logs() as logs:
        assert runner.run() == 0
    assert sum(e["event"] == "row group durable" for e in logs) == PARTITIONS
    assert not [e for e in logs if e["log_level"] == "warning"], logs
    assert store.overlap.most > 1
    assert [broker.committed_offset("g", "t", p) for p in range(PARTITIONS)] == [PER_PARTITION] * PARTITIONS
    _exactly_once(inner, broker)


def test_a_flush_that_fails_on_shutdown_leaves_only_its_partition_uncommitted() -> None:
    broker, inner = page_view_broker(PARTITIONS, PER_PARTITION), MemoryStore()

    def fail_p5(op: str, key: str) -> None:
        if op == "put_object" and "partition=5/" in key and key.endswith(".piece"):
            raise OSError("access denied")

    inner.on_op = fail_p5
    runner = _buffered_runner(broker, _Slow(inner, "create"))
    runner.consumer.on_consume = lambda _c: runner.request_stop()
    with capture_logs() as logs:
        assert runner.run() == 0
    failed = [e for e in logs if e["event"] == "could not flush on shutdown"]
    assert [e["partition"] for e in failed] == [5]
    left = [e for e in logs if str(e["event"]).startswith("shutdown: buffered rows")]
    assert left and left[0]["partitions"] == ["t[5]"]
    committed = [broker.committed_offset("g", "t", p) for p in range(PARTITIONS)]
    assert committed == [None if p == 5 else PER_PARTITION for p in range(PARTITIONS)]
    inner.on_op = None
    _exactly_once(inner, broker)


def test_revoked_partitions_are_flushed_side_by_side_from_the_callback() -> None:
    """A rebalance takes eight partitions away: the revoke callback flushes them side by side and
    commits each from the polling thread, the callback's own."""
    broker, inner = page_view_broker(PARTITIONS, PER_PARTITION), MemoryStore()
    store = _Slow(inner, "create")
    runner = _buffered_runner(broker, store)
    calls = 0

    def revoke_on_second_consume(consumer: MemoryConsumer) -> None:
        """The first consume assigned every partition and returned every record."""
        nonlocal calls
        calls += 1
        if calls == 2:
            runner._on_revoke(consumer, [TopicPartition("t", p) for p in range(8)])
            runner.request_stop()

    runner.consumer.on_consume = revoke_on_second_consume
    with capture_logs() as logs:
        assert runner.run() == 0
    assert runner._callback_error is None
    revoked_at = next(i for i, e in enumerate(logs) if e["event"] == "partitions revoked")
    durable = [e["partition"] for e in logs[:revoked_at] if e["event"] == "row group durable"]
    assert sorted(durable) == list(range(8))
    assert store.overlap.most > 1
    assert [broker.committed_offset("g", "t", p) for p in range(PARTITIONS)] == [PER_PARTITION] * PARTITIONS


def test_a_run_until_caught_up_finishes_its_partitions_side_by_side() -> None:
    """Twelve partitions reach their end in one batch: their last flushes and rolls overlap, each
    roll's commit made on the polling thread; every record is exported exactly once."""
    broker, inner = page_view_broker(PARTITIONS, PER_PARTITION), MemoryStore()
    store = _Slow(inner, "compose")
    runner = _buffered_runner(broker, store, until_caught_up=True)
    with capture_logs() as logs:
        assert runner.run() == 0
    assert sum(e["event"] == "file rolled" for e in logs) == PARTITIONS
    assert store.overlap.most > 1
    committed = dict.fromkeys(range(PARTITIONS), PER_PARTITION)
    assert {p: broker.committed_offset("g", "t", p) for p in range(PARTITIONS)} == committed
    assert verify(inner, "out", "t", committed=committed, contiguous=True).ok


def test_a_replay_finishes_its_partitions_side_by_side() -> None:
    from consumer.config import Config
    from consumer.decoding import Decoder
    from consumer.replay import Bound, ReplayRunner
    from consumer.samples import load_schema

    broker, inner = page_view_broker(PARTITIONS, PER_PARTITION), MemoryStore()
    store = _Slow(inner, "compose")
    config = Config(bootstrap_servers="memory", group_id="consumer-replay", topics=("t",),
                    output="s3://bucket/out", schema="page_view", row_group_rows=1000,
                    batch_size=PARTITIONS * PER_PARTITION)  # fmt: skip
    runner = ReplayRunner(config, store=store, decoder=Decoder("raw", schema=load_schema("page_view")),
                          start=Bound.parse("beginning"), stop=Bound.parse("end"),
                          consumer_factory=broker.consumer_factory())  # fmt: skip
    with capture_logs() as logs:
        assert runner.run() == 0
    assert sum(e["event"] == "file rolled" for e in logs) == PARTITIONS
    assert store.overlap.most > 1
    committed = dict.fromkeys(range(PARTITIONS), PER_PARTITION)
    assert verify(inner, "out", "t", committed=committed, contiguous=True).ok


@pytest.mark.parametrize("threads", [1, 8])
def test_before_each_flush_starts_the_hook_runs_once_and_not_for_one_skipped(threads: int) -> None:
    """The runner's memory relief runs as every flush starts (a failing one too), before that
    flush takes memory, and not for one skipped at the deadline."""
    workers, _, log = _workers([10, 50, 30], w1=OSError("S3 kept failing"))
    started: list[list[int]] = []
    lock = threading.Lock()

    def before() -> None:
        with lock:
            started.append(list(log))

    close_all(workers, piece_bytes=100, threads=threads, before_each=before)
    assert len(started) == 3 and len(log) == 3
    if threads == 1:  # one after another: each before its own flush, after the previous ones
        assert started == [[], [1], [1, 2]]
    for w in workers:
        w.pending = True
    started.clear()
    closed = close_all(workers, piece_bytes=100, threads=threads, go_on=lambda: False, before_each=before)
    assert all(c.skipped for c in closed) and started == []
