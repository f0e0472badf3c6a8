"""A consumer group's bad day, drawn by hypothesis: members join, leave, are killed (kill -9),
expelled by the coordinator, or held in the middle of a recovery, a flush or a roll (before any S3
request) while the others go on — a zombie that wakes up later — or stopped by an S3 call that
keeps failing, and records keep arriving on several partitions. Whatever the order, once the
survivors stop and one member catches up, every offset is in exactly one final file, and no member
stopped with an error other than S3's.

The members are real :class:`~consumer.runner.GroupRunner` loops on the in-memory broker and
store, each on its own thread, taking turns: a member runs until its next ``consume()`` (or its
next S3 request, when the step says so) only when the test lets it, so a drawn history replays
exactly.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from unittest.mock import patch

import pyarrow.parquet as pq
from hypothesis import example, given, settings
from hypothesis import strategies as st

from consumer import side_by_side
from consumer.errors import EXIT_OK, EXIT_STORAGE
from consumer.samples import encode_raw, make_record, parsed_schema
from consumer.storage import TransientStorageError
from consumer.testing import Crash, MemoryBroker, MemoryConsumer, MemoryStore, memory_runner

PARTITIONS = 3
CONFIGS: dict[str, dict[str, Any]] = {
    "plain": {"row_group_rows": 4, "file_rows": 10, "batch_size": 5},
    # Each partition's records spread over three hours, shuffled: up to three files open at once.
    "bucketed": {
        "row_group_rows": 4,
        "file_rows": 6,
        "batch_size": 5,
        "partition_by": "dt={ts:%Y-%m-%d}/hr={ts:%H}",
        "max_open_buckets": 2,
        "bucket_grace": 86400.0,
    },
}
#: How a member may end: on its stop, or on its own when S3 keeps failing (the group goes on).
ENDED_WELL = (EXIT_OK, EXIT_STORAGE)
WAIT = 30.0  # seconds a member may take from one consume() to the next: more is a hang


class Clock:
    """Time stands still: flushes and rolls come from the row budgets only, so a history replays."""

    def __call__(self) -> float:
        return 1000.0


@dataclass
class Member:
    """One runner on its own thread, parked at the start of each ``consume()`` until let go."""

    runner: Any
    go: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    parked: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    killed: bool = False
    status: int | None = None
    thread: threading.Thread | None = None
    pause_in: int | None = None  # park before its n-th S3 request from now (in a flush, a roll)
    threads: dict[int, Member] = field(default_factory=dict)  # every member's thread, shared

    def start(self) -> None:
        def hook(_consumer: MemoryConsumer) -> None:
            self.park()

        def main() -> None:
            self.threads[threading.get_ident()] = self
            try:
                self.status = self.runner.run()
            except Crash:
                pass
            finally:
                self.parked.release()

        self.runner.consumer.on_consume = hook
        self.thread = threading.Thread(target=main, daemon=True)
        self.thread.start()
        self._wait()

    def park(self) -> None:
        self.parked.release()
        self.go.acquire()
        if self.killed:
            raise Crash("killed")  # only once the history is over: the thread may end

    def on_request(self) -> None:
        """Called before each S3 request this member's thread makes."""
        if self.pause_in is not None:
            self.pause_in -= 1
            if self.pause_in == 0:
                self.pause_in = None
                self.park()

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive() and not self.killed

    def turn(self, consumes: int = 1) -> None:
        """Let the member run through ``consumes`` calls of ``consume()`` (or until it exits)."""
        for _ in range(consumes):
            if not self.thread or not self.thread.is_alive():
                return
            self.go.release()
            self._wait()

    def stop(self) -> None:
        """SIGTERM, then let it run to its end."""
        self.runner.request_stop()
        self.run_to_end()

    def run_to_end(self) -> None:
        while self.thread is not None and self.thread.is_alive():
            self.go.release()
            self._wait()
        if self.thread is not None:
            self.thread.join(WAIT)

    def _wait(self) -> None:
        assert self.parked.acquire(timeout=WAIT), "a member did not reach its next consume()"


def _produce(broker: MemoryBroker, produced: list[int], partition: int, n: int) -> None:
    schema = parsed_schema("page_view")
    for _ in range(n):
        i = produced[partition]
        record = make_record("page_view", partition * 1000 + i)
        record["ts"] += timedelta(hours=i * 7 % 3)  # the plain layout ignores it
        broker.produce("t", encode_raw(schema, record), partition=partition, key=b"k")
        produced[partition] += 1


def _final_offsets(store: MemoryStore) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {p: [] for p in range(PARTITIONS)}
    for key, data in store.objects.items():
        if key.endswith(".parquet") and "/_" not in f"/{key}":
            t = pq.read_table(io.BytesIO(data), columns=["kafka_partition", "kafka_offset"])
            for p, o in zip(t.column(0).to_pylist(), t.column(1).to_pylist(), strict=True):
                out[p].append(o)
    return {p: sorted(v) for p, v in out.items()}


produce = st.tuples(st.just("produce"), st.integers(0, PARTITIONS - 1), st.integers(1, 25))
step = st.one_of(
    produce,
    produce,
    st.tuples(st.just("turn"), st.integers(0, 3), st.integers(1, 4)),
    st.tuples(st.just("join"), st.just(0), st.just(0)),
    st.tuples(st.just("stop"), st.integers(0, 3), st.just(0)),
    st.tuples(st.just("kill"), st.integers(0, 3), st.just(0)),
    st.tuples(st.just("expel"), st.integers(0, 3), st.just(0)),
    st.tuples(st.just("pause_at_request"), st.integers(0, 3), st.integers(1, 8)),
    st.tuples(st.just("s3_error"), st.just(0), st.integers(1, 12)),
)


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(step, min_size=4, max_size=50), layout=st.sampled_from(sorted(CONFIGS)))
# Found by this test. A member (1) is paused while it recovers p1, having read the committed
# position 4 (or 5); the group moves on without it, and the other member stages and commits p1 to
# 9 (or rolls it to 10). Member 1 then went on from what it had read: it deleted the new pieces
# as strays past 4 (the next run stopped: "committed 9, staged here, nothing reaches it"), or took
# the final file past 5 for an operator's reset backwards and stopped with status 5. Now it
# confirms that it still owns the partition before it deletes or stops (a commit, fenced here).
@example(
    steps=[
        ("produce", 1, 5),
        ("turn", 0, 1),
        ("join", 0, 0),
        ("expel", 0, 0),
        ("produce", 1, 4),
        ("pause_at_request", 1, 5),
    ],
    layout="plain",
)
@example(
    steps=[
        ("produce", 1, 1),
        ("stop", 0, 0),
        ("join", 0, 0),
        ("produce", 1, 5),
        ("turn", 0, 1),
        ("join", 0, 0),
        ("expel", 0, 0),
        ("produce", 1, 4),
        ("pause_at_request", 1, 5),
    ],
    layout="plain",
)
# A member held in its recovery (it had listed p1's pieces) while another rolled the bucket's file
# and deleted them: reading them ended the run as an unexpected error (FileNotFoundError).
@example(
    steps=[
        ("produce", 0, 3),
        ("produce", 1, 3),
        ("join", 0, 0),
        ("expel", 1, 0),
        ("turn", 0, 1),
        ("join", 0, 0),
        ("join", 0, 0),
        ("stop", 0, 0),
        ("pause_at_request", 2, 4),
        ("stop", 0, 0),
        ("expel", 0, 0),
    ],
    layout="bucketed",
)
# A recovery fenced by its own commit (an adoption) ended the run as an unexpected error.
@example(
    steps=[("join", 0, 0), ("expel", 0, 0), ("produce", 1, 1), ("pause_at_request", 1, 5)], layout="plain"
)
def test_a_group_s_bad_day_exports_every_offset_once(steps: list[tuple[str, int, int]], layout: str) -> None:
    with patch.object(side_by_side, "RECOVERY_THREADS", 1), patch.object(side_by_side, "CLOSE_THREADS", 1):
        _history(steps, CONFIGS[layout])  # one thread per member: each S3 request is known to be its own


def _history(steps: list[tuple[str, int, int]], config: dict[str, Any]) -> None:
    broker, store, clock = MemoryBroker(), MemoryStore(), Clock()
    broker.create_topic("t", PARTITIONS)
    produced = [0] * PARTITIONS
    members: list[Member] = []
    threads: dict[int, Member] = {}
    fail_in: list[int] = []  # the n-th outermost store call from now fails, whoever makes it

    def on_op(op: str, _key: str) -> None:
        if store.inside_a_call():  # a call's own requests: part of it
            return
        m = threads.get(threading.get_ident())
        if m is not None:
            m.on_request()
        if fail_in:
            fail_in[0] -= 1
            if fail_in[0] == 0:
                fail_in.clear()
                raise TransientStorageError(f"injected: S3 kept failing {op} (retries exhausted)")

    store.on_op = on_op

    def join() -> Member:
        m = Member(memory_runner(broker, store, clock=clock, **config), threads=threads)
        members.append(m)
        m.start()
        return m

    def live(i: int) -> Member | None:
        alive = [m for m in members if m.alive]
        return alive[i % len(alive)] if alive else None

    try:
        join()
        for kind, a, b in steps:
            m = live(a)
            if kind == "produce":
                _produce(broker, produced, a, b)
            elif kind == "join":
                join()
            elif m is None:
                continue
            elif kind == "turn":
                m.turn(b)
            elif kind == "stop":
                m.stop()
                assert m.status in ENDED_WELL
            elif kind == "s3_error":  # an S3 outage outlasting the retries, for one call
                fail_in[:] = [b]
            elif kind == "kill":  # kill -9: it never runs again, and the coordinator expels it
                m.killed = True
                broker.expire(m.runner.consumer)
            elif kind == "expel":  # expelled while parked: it finds out at its next consume
                broker.expire(m.runner.consumer)
            elif kind == "pause_at_request":  # park it mid-flush or mid-roll: the others go on
                m.pause_in = b
                m.turn()
        fail_in.clear()
        for m in members:
            m.pause_in = None
        for m in members:
            if m.alive:
                m.stop()
                assert m.status in ENDED_WELL
        assert all(m.status in ENDED_WELL for m in members if not m.killed), [m.status for m in members]
        last = Member(
            memory_runner(broker, store, clock=clock, until_caught_up=True, **config), threads=threads
        )
        last.start()
        last.run_to_end()
        assert last.status == EXIT_OK
        assert _final_offsets(store) == {p: list(range(produced[p])) for p in range(PARTITIONS)}
    finally:
        for m in members:
            if m.thread is not None and m.thread.is_alive():
                m.killed = True
                m.go.release()
                m.thread.join(WAIT)
