"""Replay jobs: re-export a bounded slice of a topic's history, then exit.

A replay must not disturb the live consumer group, so it joins no group: partitions are assigned
manually and each partition's committed position lives in a small ``_state/…`` object beside the
output (:class:`~consumer.positions.S3StatePositions`, replaced with If-Match). Everything else is
the same partition worker and the same durable-row-group protocol, so a replay that is killed
resumes where it stopped, and re-running a finished replay writes the same keys (idempotent).

Start positions: the beginning, explicit offsets, or a timestamp (``offsets_for_times``). Stop
positions: the end offsets seen at start, explicit offsets, or a timestamp. Exit 0 when every
partition reached its stop position and every file is final.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from consumer.positions import S3StatePositions
from consumer.runner import EXIT_OK, TP, GroupRunner


@dataclass(frozen=True)
class Bound:
    """A start or stop position: ``kind`` is 'edge' (beginning / end), 'offsets' or 'timestamp'."""

    kind: str = "edge"
    offsets: dict[int, int] | None = None
    timestamp_ms: int | None = None

    @classmethod
    def parse(cls, text: str | None) -> Bound:
        """``None``/'beginning'/'end' · ``0=100,1=250`` · ``ts:1700000000000`` or an ISO time."""
        if text is None or text in ("beginning", "end", ""):
            return cls()
        if "=" in text:
            pairs = (item.split("=", 1) for item in text.split(",") if item.strip())
            return cls("offsets", offsets={int(p): int(o) for p, o in pairs})
        if text.startswith("ts:"):
            return cls("timestamp", timestamp_ms=int(text[3:]))
        from datetime import UTC, datetime

        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"position {text!r} not understood: use beginning/end, 0=100,1=250, ts:<ms> or an ISO time"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return cls("timestamp", timestamp_ms=int(moment.timestamp() * 1000))


class ReplayRunner(GroupRunner):
    """Manual assignment + S3-kept positions + stop positions; otherwise the group runner's loop."""

    def __init__(
        self, config: Any, *, store: Any, decoder: Any, start: Bound, stop: Bound, progress_every: float = 5.0
    ) -> None:
        super().__init__(
            config,
            store=store,
            decoder=decoder,
            positions_factory=lambda _consumer: S3StatePositions(store, self.layout),
        )
        self.start_bound = start
        self.stop_bound = stop
        self.progress_every = progress_every
        self.stops: dict[TP, int] = {}
        self.starts: dict[TP, int] = {}
        self.done: set[TP] = set()

    def _resolve(self, bound: Bound, tps: list[TP], *, edge_is_end: bool) -> dict[TP, int]:
        out: dict[TP, int] = {}
        watermarks = {
            tp: self.consumer.get_watermark_offsets(TopicPartition(*tp), timeout=10.0, cached=False)
            for tp in tps
        }
        for tp in tps:
            low, high = watermarks[tp]
            if bound.kind == "offsets":
                out[tp] = min(max((bound.offsets or {}).get(tp[1], high if edge_is_end else low), low), high)
            elif bound.kind == "timestamp":
                (found,) = self.consumer.offsets_for_times(
                    [TopicPartition(tp[0], tp[1], bound.timestamp_ms or 0)], timeout=10.0
                )
                out[tp] = high if found.offset < 0 else found.offset
            else:
                out[tp] = high if edge_is_end else low
        return out

    def run(self) -> int:
        tps: list[TP] = []
        metadata = self.consumer.list_topics(timeout=10.0)
        for topic in self.config.topics:
            info = metadata.topics.get(topic)
            if info is None or info.error is not None:
                self.log.error("topic not found", topic=topic)
                return 2
            tps += [(topic, p) for p in sorted(info.partitions)]
        self.starts = self._resolve(self.start_bound, tps, edge_is_end=False)
        self.stops = self._resolve(self.stop_bound, tps, edge_is_end=True)
        assignment = []
        for tp in tps:
            worker = self._new_worker(*tp)
            resumed = worker.recover()
            self.workers[tp] = worker
            begin = resumed if resumed is not None else self.starts[tp]
            self.starts[tp] = begin
            assignment.append(TopicPartition(tp[0], tp[1], begin if begin >= 0 else OFFSET_BEGINNING))
            if begin >= self.stops[tp]:
                self.done.add(tp)
        self.log.info(
            "replay starting",
            partitions=len(tps),
            todo=sum(max(0, self.stops[t] - self.starts[t]) for t in tps),
        )
        self.consumer.assign(assignment)
        code = EXIT_OK
        try:
            code = self._replay_loop()
        finally:
            self._shutdown(clean=code == EXIT_OK)
        return code

    def _replay_loop(self) -> int:
        cfg = self.config
        t0 = last = time.monotonic()
        todo = sum(max(0, self.stops[t] - self.starts[t]) for t in self.stops)
        while not self.stop_requested:
            for tp in [t for t in self.workers if t not in self.done]:
                w = self.workers[tp]
                fetched = self.consumer.position([TopicPartition(*tp)])[0].offset
                if (w.next_pos is not None and w.next_pos >= self.stops[tp]) or fetched >= self.stops[tp]:
                    self._guard(w, w.finish)
                    self.done.add(tp)
                    self.consumer.pause([TopicPartition(*tp)])
            if len(self.done) == len(self.workers):
                self.log.info(
                    "replay finished: every partition reached its stop position",
                    records=self.stats.records,
                    seconds=round(time.monotonic() - t0, 1),
                )
                return EXIT_OK
            for msg in self.consumer.consume(num_messages=cfg.batch_size, timeout=cfg.poll_timeout):
                if msg.error() is not None:
                    continue
                tp = (str(msg.topic()), int(msg.partition() or 0))
                worker = self.workers.get(tp)
                offset = int(msg.offset() or 0)
                if worker is None or tp in self.done or offset >= self.stops[tp]:
                    continue
                self.stats.records += 1
                self.stats.bytes_in += len(msg.value() or b"")
                self._guard(worker, worker.append, msg)
            now = time.monotonic()
            for worker in self.workers.values():
                if worker.flush_due(now):
                    self._guard(worker, worker.flush)
            self._enforce_memory_budget()
            if now - last >= self.progress_every:
                last = now
                done_offsets = sum(
                    max(0, min(w.next_pos or self.starts[t], self.stops[t]) - self.starts[t])
                    for t, w in self.workers.items()
                )
                rate = self.stats.records / max(now - t0, 1e-9)
                self.log.info(
                    "replay progress",
                    offsets_done=done_offsets,
                    offsets_todo=todo,
                    partitions_done=len(self.done),
                    partitions=len(self.workers),
                    records_per_s=round(rate),
                    eta_s=round((todo - done_offsets) / rate) if rate > 0 else None,
                )
        return EXIT_OK
