"""Finishing the open files of a deleted topic: ``consumer finish``.

A stop, a revoke or a rebalance commits what a partition holds into its open file's staged pieces
and leaves the file open for the partition's next owner; a topic deleted under a run leaves the
rows it held staged too, the only copy left (:class:`~consumer.errors.TopicDeleted`). For a topic
that still exists, one ``consumer run --until-caught-up`` of it makes every file final. For a
deleted one nothing could: there is no log to consume and no group offset (Kafka deletes a
topic's committed offsets with it), so its last rows stayed in staged pieces, which no query
reads, for good.

This job makes them final without Kafka's records. It runs only once the cluster says the topic
does not exist (asked by name: a topic this principal may not describe is refused, not taken for
deleted), or that the topic of that name now is another one (deleted and created again: an id,
KIP-516, that no staged file names). Every partition with staged objects is recovered as a run
would recover it, with the end of what S3 holds as its position (:class:`StagedEndPositions`: the
rows staged are the ones to keep, since no one can read them again), then rolled to its final
file. Nothing is consumed and nothing is committed to Kafka. The same worker and the same roll as
a run: a finish killed half-way finishes when run again, and a finished one run again does nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from consumer.errors import EXIT_OK, UsageError
from consumer.kafka_names import UNKNOWN_TOPIC_OR_PART, not_authorized
from consumer.layout import Layout, PieceRef, RollMarker
from consumer.parquet_merge import read_key_value_metadata, read_layout
from consumer.runner import TP, Runner
from consumer.side_by_side import recover_all
from consumer.worker import TOPIC_ID_KEY


class StagedEndPositions:
    """The positions of a deleted topic's partitions: where their staged objects end.

    Kafka dropped the group's offsets with the topic. Taking the end of what is staged as the
    committed position makes recovery resume each file as it stands, every staged piece counted
    as committed (the rows past the last commit, written when the run found the topic gone,
    included): with no log to read them from again, that is what they are. Commits go nowhere."""

    #: no Kafka call: any thread may ask (consumer.positions.OwnerThreadPositions)
    any_thread = True

    def __init__(self, ends: dict[TP, int]) -> None:
        self.ends = ends  # the runner's: filled once the listing is read

    def committed(self, topic: str, partition: int) -> int | None:
        return self.ends.get((topic, partition))

    def note(self, topic: str, partition: int) -> str:
        return ""

    def commit(self, topic: str, partition: int, position: int, note: str = "") -> None:
        self.ends[(topic, partition)] = position


Staged = dict[TP, list[PieceRef | RollMarker]]


def staged_of(layout: Layout, keys: list[tuple[str, int]], topics: tuple[str, ...]) -> Staged:
    """The pieces and roll markers among ``keys`` ((key, size) listed under the staging folder)
    of each partition of ``topics`` that has any."""
    out: Staged = {}
    for key, size in keys:
        where = layout.staged_partition(key)
        if where is not None and where[0] in topics:
            ref = layout.parse_staging_key(*where, key, size)
            if ref is not None:
                out.setdefault(where, []).append(ref)
    return out


def staged_ends(staged: Staged) -> dict[TP, int]:
    """The highest offset each partition's staged objects reach: a piece's end or an unfinished
    roll's."""
    return {tp: max(r.to_pos if isinstance(r, PieceRef) else r.end for r in refs)
            for tp, refs in staged.items()}


class FinishRunner(Runner):
    """Recover and roll every staged partition of the (deleted) topics, then exit 0."""

    def __init__(
        self, config: Any, *, store: Any, decoder: Any,
        current_topic_id: Callable[[str], str | None] | None = None, **kwargs: Any,
    ) -> None:
        self._ends: dict[TP, int] = {}
        super().__init__(
            config, store=store, decoder=decoder,
            positions_factory=lambda _consumer: StagedEndPositions(self._ends),
            # the topic the files were read from is gone: no id of it to compare with
            topic_id=lambda _topic, _fresh: None,
            **kwargs,
        )
        #: the id (KIP-516) of the topic of that name now, if one was created again (the in-memory
        #: doubles give theirs)
        self._current_topic_id = current_topic_id or (lambda topic: self._topic_id_now(topic, True))

    @property
    def bounded(self) -> bool:
        return True

    def _refuse_unless_deleted(self, topic: str, staged: Staged) -> None:
        """Go on only when the cluster says ``topic`` does not exist, or that the topic of that
        name now is another one than the staged files were read from (deleted and created again:
        its id, KIP-516, is not the one every staged file names)."""
        info = self.consumer.list_topics(topic=topic, timeout=10.0).topics.get(topic)
        error = None if info is None else info.error
        if info is not None and error is None:
            now, named = self._current_topic_id(topic), self._staged_topic_ids(staged)
            if now is not None and named and None not in named and now not in named:
                self.log.warning(
                    "the topic was deleted and created again: the open files here are of the earlier "
                    "one, and are finished; export the new one to another --output with a new group",
                    topic=topic, topic_id_in_s3=sorted(i for i in named if i), topic_id=now,
                )
                return
            raise UsageError(
                f"topic {topic!r} exists in the cluster: its files are made final by consuming it, "
                f"with this group and output: consumer run --topic {topic} --until-caught-up. "
                "`consumer finish` is for a topic deleted from the cluster."
            )
        code = error.code() if error is not None else UNKNOWN_TOPIC_OR_PART
        if code != UNKNOWN_TOPIC_OR_PART:
            said = not_authorized(code, topic, self.config.group_id, str(error), self._principal)
            raise UsageError(said or f"topic {topic!r}: the cluster did not say it is deleted ({error}); "
                             "nothing was finished")

    def _staged_topic_ids(self, staged: Staged) -> set[str | None]:
        """The topic id each staged partition names in its newest piece's footer (None: a piece
        that names none). One ranged read a partition."""
        newest = (max((r for r in refs if isinstance(r, PieceRef)), key=lambda r: r.to_pos, default=None)
                  for refs in staged.values())
        return {self._topic_id_in(ref) for ref in newest if ref is not None}

    def _topic_id_in(self, piece: PieceRef) -> str | None:
        def fetch(start: int, end: int) -> bytes:
            data: bytes = self.store.get(piece.key, start, end)
            return data

        return read_key_value_metadata(read_layout(fetch, piece.size).footer).get(TOPIC_ID_KEY)

    def _start(self) -> None:
        keys = [(o.key, o.size) for o in self.store.list(self.layout.staging_root())]
        staged = staged_of(self.layout, keys, tuple(self.config.topics))
        for topic in self.config.topics:
            of_topic = {tp: refs for tp, refs in staged.items() if tp[0] == topic}
            self._refuse_unless_deleted(topic, of_topic)
            if not of_topic:
                self.log.warning("nothing to finish: this output holds no open file of the topic (check "
                                 "--output and --topic)", topic=topic, staging=self.layout.staging_root())
        self._ends.update(staged_ends(staged))
        tps = sorted(self._ends)
        workers = [self._new_worker(*tp) for tp in tps]
        recover_all(workers)
        self.workers.update(zip(tps, workers, strict=True))
        self.log.info("finishing the open files of deleted topics", topics=list(self.config.topics),
                      partitions=[f"{t}[{p}]" for t, p in tps])

    def _done(self, now: float) -> int | None:
        self._finish_all(list(self.workers.values()))
        self.log.info("finished: every staged file of the deleted topics is final",
                      partitions=len(self.workers))
        return EXIT_OK
