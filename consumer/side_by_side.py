"""Many partitions at once: recovery on assignment, flushes on revoke and on shutdown, and the
last flush and roll of a run that ends when caught up (``--until-caught-up``, ``replay``).

One partition's recovery or flush is a few S3 round trips, one after another, and partitions share
no state that those round trips change. Done one partition after another, an assignment or a
SIGTERM over hundreds of partitions waits for the *sum* of their round trips: 200 partitions
behind a 25 ms S3 round trip took 43 s to recover and 17 s to flush on SIGTERM, against the 30 s
Kubernetes grants a pod to stop. Here they run in a few threads, and wait for the slowest few.

What stays serial, and why:

* **Kafka calls.** The client's group calls must come from the thread that polls: a
  ``committed()`` from another thread, while the polling thread was inside the assign callback,
  hung for minutes past its own timeout (confluent-kafka 2.12, Kafka 4.1). The workers' position
  reads and commits are handed to the calling thread (:class:`~consumer.positions.OwnerThreadPositions`),
  which runs them while it waits.
* **Decoding and encoding.** A flush's CPU work (decoding the last chunk, encoding the piece) takes
  the process's one encoding lock (:attr:`~consumer.worker.SharedState.encoding`): the native
  decoder of a schema is shared by every partition and serves one call at a time, and two cores
  gain little from two encodes.
* **Memory.** A flush holds its piece until the upload is done. Flushes run side by side only while
  their pieces together fit one row group's worth of bytes (``piece_bytes``), which is what the
  memory plan reserves for a flush (:mod:`consumer.budget`); a flush bigger than that runs alone.

Nothing here decides what a worker does: each one's recovery and flush are its own, step by step
and state checked, exactly as when it runs alone.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from consumer.positions import OwnerThreadPositions
from consumer.worker import PartitionWorker

__all__ = [
    "CLOSE_THREADS", "RECOVERY_THREADS", "Closed", "Recovered", "close_all", "recover_all", "recover_each",
]

#: Recoveries run side by side at most this many at a time (s3fs keeps 10 connections a client).
RECOVERY_THREADS = 8
#: Flushes of a revoke or a shutdown run side by side at most this many at a time (as above).
CLOSE_THREADS = 8

_R = TypeVar("_R")


@dataclass(frozen=True)
class Recovered:
    """How one worker's :meth:`~consumer.worker.PartitionWorker.recover` went."""

    worker: PartitionWorker
    #: where the partition reads from (None: nothing committed or found, the fresh start)
    position: int | None = None
    #: what it raised (a fenced one: the member lost the partition while recovering it)
    error: BaseException | None = None


def recover_each(workers: Sequence[PartitionWorker], threads: int | None = None) -> list[Recovered]:
    """``worker.recover()`` of each of ``workers``, side by side: how each went, in order.

    The committed offsets are read for all of them at once, on this thread, before the recoveries
    start. Every recovery runs to its end even when another fails: each leaves its partition
    consistent either way, and the caller decides per partition (a fenced one waits for the group
    to settle, any other failure stops the run)."""
    threads = RECOVERY_THREADS if threads is None else threads
    if len(workers) <= 1 or threads <= 1:
        return [_recovered(w) for w in workers]
    with _positions_on_this_thread(workers) as calls:
        calls.prefetch([(w.topic, w.partition) for w in workers])
        futures = _run_in_threads(calls, threads, [partial(_recovered, w) for w in workers])
    return [f.result() for f in futures]


def _recovered(worker: PartitionWorker) -> Recovered:
    try:
        return Recovered(worker, position=worker.recover())
    except Exception as exc:  # a crash (BaseException) is not an outcome: it ends the process
        return Recovered(worker, error=exc)


def recover_all(workers: Sequence[PartitionWorker], threads: int | None = None) -> list[int | None]:
    """:func:`recover_each`, for callers that stop at any failure: the positions, in order, or
    the failure of the first partition in ``workers``' order, raised once every recovery ran."""
    outcomes = recover_each(workers, threads)
    for r in outcomes:
        if r.error is not None:
            raise r.error
    return [r.position for r in outcomes]


@dataclass(frozen=True)
class Closed:
    """How one worker's :meth:`~consumer.worker.PartitionWorker.close` (or ``finish``) went."""

    worker: PartitionWorker
    #: what it raised (its worker is then BROKEN or FENCED, and its rows uncommitted)
    error: BaseException | None = None
    #: not started: ``go_on`` said stop first (the shutdown deadline had passed)
    skipped: bool = False


def close_all(
    workers: Sequence[PartitionWorker],
    *,
    piece_bytes: int,
    go_on: Callable[[], bool] = lambda: True,
    threads: int | None = None,
    finish: bool = False,
    before_each: Callable[[], None] = lambda: None,
) -> list[Closed]:
    """``worker.close()`` of each of ``workers`` (flush and commit), side by side: how each went,
    in ``workers``' order. Nothing is raised: every flush runs to its end or its error. With
    ``finish``, ``worker.finish()`` instead (flush, then roll every open file: the end of an
    ``--until-caught-up`` run or a replay), its rolls' buffers counted with its piece.

    ``go_on()`` is asked before each flush starts (and again once the memory gate lets it in); a
    flush it refuses is skipped and its rows stay uncommitted for the partition's next owner. The
    biggest arenas start first, so when the shutdown deadline cuts the drain short the most rows
    are already durable. ``piece_bytes``: what the pieces of flushes running together may add up
    to (the row-group byte target); a single bigger one runs alone. ``before_each()`` is called
    (on the flush's thread) as a flush starts: the runner hands memory that is free (what the
    flushes before it let go of, what the poll loop left) back to the system there when the
    process is over its plan's soft limit, because no poll loop does it while the last flushes
    of a run go on.
    """
    threads = CLOSE_THREADS if threads is None else threads
    gate = _PieceGate(piece_bytes)
    sizes = [w.finish_bytes if finish else w.piece_bytes for w in workers]
    order = sorted(range(len(workers)), key=lambda i: -sizes[i])

    def close(i: int) -> Closed:
        w = workers[i]
        if not go_on():
            return Closed(w, skipped=True)
        with gate.admit(sizes[i]):
            if not go_on():
                return Closed(w, skipped=True)
            try:
                before_each()
                if finish:
                    w.finish()
                else:
                    w.close()
            except BaseException as exc:  # the caller reports it; the other flushes go on
                return Closed(w, error=exc)
        return Closed(w)

    if len(workers) <= 1 or threads <= 1:
        done = {i: close(i) for i in order}
    else:
        with _positions_on_this_thread(workers) as calls:
            futures = _run_in_threads(calls, threads, [partial(close, i) for i in order])
        done = {i: f.result() for i, f in zip(order, futures, strict=True)}
    return [done[i] for i in range(len(workers))]


@contextlib.contextmanager
def _positions_on_this_thread(workers: Sequence[PartitionWorker]) -> Iterator[OwnerThreadPositions]:
    """The workers' shared position store, its calls run on this thread while the block lasts."""
    shared = workers[0].positions
    if any(w.positions is not shared for w in workers):
        raise ValueError("side by side: the workers do not share one position store")
    calls = OwnerThreadPositions(shared)
    for w in workers:
        w.positions = calls
    try:
        yield calls
    finally:
        for w in workers:
            w.positions = shared


def _run_in_threads(
    calls: OwnerThreadPositions, threads: int, jobs: list[Callable[[], _R]]
) -> list[Future[_R]]:
    """Run ``jobs`` in a pool of at most ``threads``, serving their position calls here meanwhile."""
    with ThreadPoolExecutor(max_workers=min(threads, len(jobs)), thread_name_prefix="side-by-side") as pool:
        futures = [pool.submit(job) for job in jobs]
        for f in futures:
            f.add_done_callback(lambda _: calls.wake())
        calls.serve(lambda: all(f.done() for f in futures))
    return futures


class _PieceGate:
    """Lets flushes in while the pieces they hold add up to at most ``capacity`` bytes, or when
    none is in: the memory plan's flush reserve covers one full row group, not eight."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._held = 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def admit(self, size: int) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: self._held == 0 or self._held + size <= self._capacity)
            self._held += size
        try:
            yield
        finally:
            with self._changed:
                self._held -= size
                self._changed.notify_all()
