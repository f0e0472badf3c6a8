"""An assignment of many partitions recovers them side by side (consumer.side_by_side.recover_all): the
S3 work of each recovery runs in a thread, while every Kafka call (the committed offset, the
commits a recovery makes) stays on the thread that polls, because the real client hangs when its
group calls come from another thread during a rebalance callback. MemoryConsumer fails such a call
at once, so these tests would see one."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from structlog.testing import capture_logs

from consumer.positions import OwnerThreadPositions
from consumer.testing import MemoryBroker, MemoryConsumer, MemoryStore, memory_runner, page_view_broker
from consumer.verify import verify

PARTITIONS = 12


class _SlowListings:
    """A MemoryStore whose listings take 20 ms, as S3's do, counting how many overlap."""

    def __init__(self, inner: MemoryStore, fail_prefix: str | None = None) -> None:
        self.inner = inner
        self.fail_prefix = fail_prefix
        self.in_flight = 0
        self.most = 0
        self._lock = threading.Lock()

    def list(self, prefix: str, start_after: str = "") -> Any:
        if self.fail_prefix is not None and prefix.startswith(self.fail_prefix):
            raise OSError(f"listing {prefix} failed")
        with self._lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        try:
            time.sleep(0.02)
            return self.inner.list(prefix, start_after)
        finally:
            with self._lock:
                self.in_flight -= 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _run(broker: MemoryBroker, store: Any) -> tuple[int, list[dict[str, Any]]]:
    runner = memory_runner(broker, store, row_group_rows=10, until_caught_up=True)
    with capture_logs() as logs:
        code = runner.run()
    return code, logs


def _exactly_once(store: MemoryStore, broker: MemoryBroker, per_partition: int) -> None:
    offsets = {p: broker.committed_offset("g", "t", p) for p in range(PARTITIONS)}
    assert offsets == dict.fromkeys(range(PARTITIONS), per_partition)
    committed = dict.fromkeys(range(PARTITIONS), per_partition)
    assert verify(store, "out", "t", committed=committed, contiguous=True).ok


def test_many_partitions_recover_side_by_side_with_kafka_calls_on_the_polling_thread() -> None:
    broker, store = page_view_broker(PARTITIONS, 25), MemoryStore()
    assert _run(broker, store)[0] == 0
    slow = _SlowListings(store)
    code, logs = _run(broker, slow)
    assert code == 0
    assert sum(e["event"] == "partition recovered" for e in logs) == PARTITIONS
    assert slow.most > 1  # the listings overlapped
    _exactly_once(store, broker, 25)


def test_commits_a_recovery_makes_reach_kafka_through_the_polling_thread() -> None:
    """With the group's offsets deleted, every recovery adopts the end of its final files and
    commits it: twelve commits from twelve recovery threads, each made on the polling thread."""
    broker, store = page_view_broker(PARTITIONS, 25), MemoryStore()
    assert _run(broker, store)[0] == 0
    for p in range(PARTITIONS):
        broker.reset_offsets("g", "t", p, None)
    code, logs = _run(broker, _SlowListings(store))
    assert code == 0
    recovered = [e for e in logs if e["event"] == "partition recovered"]
    assert sorted(e["position"] for e in recovered) == [25] * PARTITIONS
    _exactly_once(store, broker, 25)


def test_an_assignment_reads_its_committed_offsets_in_one_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """One OffsetFetch for the assignment, not one round trip per partition, each waiting its turn
    on the polling thread."""
    broker, store = page_view_broker(PARTITIONS, 25), MemoryStore()
    assert _run(broker, store)[0] == 0
    sizes: list[int] = []
    real = MemoryConsumer.committed

    def counted(self: MemoryConsumer, partitions: Any, timeout: float | None = None) -> list[Any]:
        sizes.append(len(partitions))
        return real(self, partitions, timeout)

    monkeypatch.setattr(MemoryConsumer, "committed", counted)
    assert _run(broker, _SlowListings(store))[0] == 0
    assert sizes[0] == PARTITIONS and len(sizes) < PARTITIONS
    _exactly_once(store, broker, 25)


def test_a_failed_recovery_is_raised_once_the_others_have_finished() -> None:
    broker, store = page_view_broker(PARTITIONS, 25), MemoryStore()
    assert _run(broker, store)[0] == 0
    written = dict(store.objects)
    code, logs = _run(broker, _SlowListings(store, fail_prefix="out/_staging/topic=t/partition=5/"))
    assert code != 0
    assert sum(e["event"] == "partition recovered" for e in logs) == PARTITIONS - 1
    stopped = [e for e in logs if str(e["event"]).startswith("stopped")]
    assert stopped and "partition=5" in str(stopped[0])
    assert store.objects == written  # nothing of the finished recoveries was undone


def test_owner_thread_positions_runs_other_threads_calls_on_the_owner() -> None:
    seen: list[tuple[str, int]] = []

    class Inner:
        def committed(self, topic: str, partition: int) -> int | None:
            seen.append(("committed", threading.get_ident()))
            if partition == 9:
                raise RuntimeError("refused")
            return partition * 10

        def commit(self, topic: str, partition: int, position: int, note: str = "") -> None:
            seen.append(("commit", threading.get_ident()))

    calls = OwnerThreadPositions(Inner())
    results: dict[int, Any] = {}

    def ask(p: int) -> None:
        try:
            results[p] = calls.committed("t", p)
            calls.commit("t", p, 1)
        except RuntimeError as exc:
            results[p] = str(exc)
        finally:
            calls.wake()

    threads = [threading.Thread(target=ask, args=(p,)) for p in (1, 2, 9)]
    for t in threads:
        t.start()
    calls.serve(lambda: len(results) == 3 and not any(t.is_alive() for t in threads))
    assert results == {1: 10, 2: 20, 9: "refused"}
    assert {ident for _, ident in seen} == {threading.get_ident()}
    assert calls.committed("t", 3) == 30  # on the owner itself: a plain call


@pytest.mark.parametrize("threads", [1, 8])
def test_recover_all_returns_positions_in_the_workers_order(threads: int) -> None:
    from consumer.side_by_side import recover_all

    class Worker:
        def __init__(self, pos: int) -> None:
            self.pos, self.positions = pos, positions
            self.topic, self.partition = "t", pos

        def recover(self) -> int:
            time.sleep(0.001 * (10 - self.pos))
            return self.pos

    positions = object()
    assert recover_all([Worker(p) for p in range(10)], threads=threads) == list(range(10))  # type: ignore[list-item]


def test_prefetched_offsets_are_handed_out_once_then_read_again() -> None:
    reads: list[list[tuple[str, int]]] = []

    class Inner:
        def committed(self, topic: str, partition: int) -> int | None:
            reads.append([(topic, partition)])
            return 7

        def committed_many(self, keys: list[tuple[str, int]]) -> dict[tuple[str, int], int | None]:
            reads.append(list(keys))
            return {k: None if k[1] == 1 else k[1] for k in keys}

        def commit(self, topic: str, partition: int, position: int, note: str = "") -> None:
            raise AssertionError("not called")

    calls = OwnerThreadPositions(Inner())
    calls.prefetch([("t", 0), ("t", 1), ("t", 2)])
    assert [calls.committed("t", p) for p in (0, 1, 2)] == [0, None, 2]
    assert calls.committed("t", 2) == 7  # read again, not the prefetched value twice
    assert reads == [[("t", 0), ("t", 1), ("t", 2)], [("t", 2)]]


def test_owner_thread_positions_calls_a_store_that_allows_any_thread_from_the_asking_thread() -> None:
    """Replay's positions are S3 objects: their round trips overlap instead of queueing."""
    seen: list[int] = []

    class Inner:
        any_thread = True

        def committed(self, topic: str, partition: int) -> int | None:
            seen.append(threading.get_ident())
            return partition

        def commit(self, topic: str, partition: int, position: int, note: str = "") -> None:
            seen.append(threading.get_ident())

    calls = OwnerThreadPositions(Inner())
    asker = threading.Thread(target=lambda: (calls.committed("t", 1), calls.commit("t", 1, 5)))
    asker.start()
    asker.join(5)  # nothing serves the owner's queue: a hand-off would never return
    assert not asker.is_alive()
    assert seen == [asker.ident, asker.ident]
