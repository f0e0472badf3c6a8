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

from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from consumer.errors import EXIT_OK, IntegrityError, UsageError
from consumer.kafka_names import NOT_AUTHORIZED
from consumer.positions import PartitionFenced, S3StatePositions
from consumer.progress import Progress, ProgressReporter, compute
from consumer.runner import TP, Runner
from consumer.side_by_side import recover_all


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


class ReplayRunner(Runner):
    """Manual assignment + S3-kept positions + stop positions, on the shared loop of
    :class:`~consumer.runner.Runner`."""

    replaying = True

    def __init__(
        self,
        config: Any,
        *,
        store: Any,
        decoder: Any,
        start: Bound,
        stop: Bound,
        progress_every: float = 5.0,
        progress_bar: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            config,
            store=store,
            decoder=decoder,
            positions_factory=lambda _consumer: S3StatePositions(store, self.layout),
            **kwargs,
        )
        self.start_bound = start
        self.stop_bound = stop
        self.progress_every = progress_every
        self.stops: dict[TP, int] = {}
        self.starts: dict[TP, int] = {}
        self.done: set[TP] = set()
        self._t0 = 0.0
        self._todo = 0
        # A bar on a terminal, JSON "replay progress" events otherwise (consumer/progress.py).
        bar = ProgressReporter.want_bar(config.log_format) if progress_bar is None else progress_bar
        self.progress = ProgressReporter(self.log, bar=bar, every=progress_every)
        self._group_refusal_noted = False

    def _of_a_group_not_used(self, err: Any) -> bool:
        """A replay joins no group and commits to none (its positions are objects beside its
        output), but librdkafka's consumer looks up the coordinator of the group it is configured
        with (``consumer-replay``, or --group-id): the cluster refusing this client that group is
        no reason to stop and no ACL to ask for. A principal granted only the topic used to be
        stopped with status 2 asking for the group. Noted once."""
        if NOT_AUTHORIZED.get(err.code()) != "group":
            return False
        if not self._group_refusal_noted:
            self._group_refusal_noted = True
            self.log.info("the cluster refuses this client the consumer group librdkafka looks up; "
                          "a replay uses no group, so it goes on", kafka=str(err))
        return True

    def _fenced(self, worker: Any, exc: PartitionFenced) -> None:
        """The partition's ``_state`` object changed under this replay: another replay writes this
        prefix (a job started twice, a pod thought dead). Nothing past the other's position was
        committed by this one. A restart would race it again, so say who to stop (status 5)."""
        raise IntegrityError(
            f"{worker.where}: another replay writes this output prefix ({exc}). This replay "
            "committed nothing past the other's position and stops. Let one of them finish (or stop "
            "both): a replay run again afterwards resumes from what S3 holds and completes the "
            "slice; two replays of one slice need two --output prefixes."
        ) from exc

    def _resolve(self, bound: Bound, tps: list[TP], *, edge_is_end: bool) -> dict[TP, int]:
        out: dict[TP, int] = {}
        watermarks = {
            tp: self.consumer.get_watermark_offsets(TopicPartition(*tp), timeout=10.0, cached=False)
            for tp in tps
        }
        for tp in tps:
            low, high = watermarks[tp]
            if bound.kind == "offsets":
                asked = (bound.offsets or {}).get(tp[1])
                out[tp] = min(max(asked if asked is not None else (high if edge_is_end else low), low), high)
                if asked is not None and asked < low:
                    self.log.warning(
                        "replay bound before the log start: those records no longer exist",
                        topic=tp[0], partition=tp[1], asked=asked, log_start=low,
                    )  # fmt: skip
            elif bound.kind == "timestamp":
                (found,) = self.consumer.offsets_for_times(
                    [TopicPartition(tp[0], tp[1], bound.timestamp_ms or 0)], timeout=10.0
                )
                out[tp] = high if found.offset < 0 else found.offset
            else:
                out[tp] = high if edge_is_end else low
        return out

    def _start(self) -> None:
        tps: list[TP] = []
        metadata = self._first_metadata()
        for topic in self.config.topics:
            info = metadata.topics.get(topic)
            if info is None or info.error is not None:
                raise self._topic_not_found([topic])
            tps += [(topic, p) for p in sorted(info.partitions)]
        self.starts = self._resolve(self.start_bound, tps, edge_is_end=False)
        self.stops = self._resolve(self.stop_bound, tps, edge_is_end=True)
        self._refuse_inverted_slices()
        assignment = []
        workers = [self._new_worker(*tp) for tp in tps]
        for tp, worker, resumed in zip(tps, workers, recover_all(workers), strict=True):
            self.workers[tp] = worker
            begin = resumed if resumed is not None else self.starts[tp]
            self.starts[tp] = begin
            assignment.append(TopicPartition(tp[0], tp[1], begin if begin >= 0 else OFFSET_BEGINNING))
            if begin >= self.stops[tp]:
                self.done.add(tp)
        self._todo = sum(max(0, self.stops[t] - self.starts[t]) for t in tps)
        self.log.info("replay starting", partitions=len(tps), todo=self._todo)
        self.consumer.assign(assignment)
        self._t0 = self.clock()
        self.progress.start(self._progress(self._t0), self._t0)

    def _refuse_inverted_slices(self) -> None:
        """A partition whose --from lies past its --to (swapped bounds, or a time range backwards)
        would export nothing and be reported done with the rest: a slice silently missing from an
        export that exits 0. Refused before anything is read or written (exit 2). An empty slice
        (from = to) is not an error."""
        inverted = [f"{t}[{p}] from {self.starts[(t, p)]} to {self.stops[(t, p)]}"
                    for t, p in sorted(self.starts) if self.starts[(t, p)] > self.stops[(t, p)]]
        if inverted:
            raise UsageError(
                f"--from lies past --to for {', '.join(inverted)} (offsets, as Kafka resolved the "
                "positions given): those partitions would export nothing. Swap --from and --to, or "
                "fix the positions; nothing was read or written."
            )

    def _accept(self, tp: TP, batch: list[Any]) -> list[Any]:
        if tp in self.done:
            return []
        stop = self.stops[tp]
        if batch[-1].offset() < stop:
            return batch
        return [m for m in batch if m.offset() < stop]

    def _progress(self, now: float) -> Progress:
        return compute(
            self.starts,
            self.stops,
            {t: w.next_pos for t, w in self.workers.items()},
            now - self._t0,
            partitions_done=len(self.done),
        )

    def _shutdown(self, *, status: int) -> None:
        self.progress.close()
        super()._shutdown(status=status)

    def _done(self, now: float) -> int | None:
        reached = []
        for tp in [t for t in self.workers if t not in self.done]:
            w = self.workers[tp]
            if w.waiting:  # records held back for the registry are fetched but not written yet
                continue
            fetched = self.consumer.position([TopicPartition(*tp)])[0].offset
            if (w.next_pos is not None and w.next_pos >= self.stops[tp]) or fetched >= self.stops[tp]:
                reached.append(tp)
        self._finish_all([self.workers[tp] for tp in reached])
        for tp in reached:
            self.done.add(tp)
            self.consumer.pause([TopicPartition(*tp)])
        if len(self.done) == len(self.workers):
            # Partitions that started done still need their staged files finished.
            self._finish_all(list(self.workers.values()))
            self.progress.finish(self._progress(now))
            self.log.info(
                "replay finished: every partition reached its stop position",
                records=self.stats.records,
                seconds=round(now - self._t0, 1),
            )
            return EXIT_OK
        self.progress.update(self._progress(now), now)
        return None
