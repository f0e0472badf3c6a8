"""Finishing the open files no run will finish: ``consumer finish``.

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

An output the group has **moved from** (``--output`` changed, the topic still consumed) is the
same case: its open files hold rows the group committed, and no run of the group will write there
again. Once the group's commits of every staged partition name the other output, this job finishes
them too, each cut where the other output holds the rest of what is staged here
(:func:`cut_at`), so that every row is in one of the two outputs and none in both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from consumer.config import split_output
from consumer.errors import EXIT_OK, UsageError
from consumer.kafka_names import UNKNOWN_TOPIC_OR_PART, not_authorized
from consumer.layout import Layout, PieceRef, Staged, staged_of
from consumer.positions import KafkaGroupPositions, parse_note, same_output
from consumer.recovery import Ranges, cut_at
from consumer.runner import TP, Runner
from consumer.side_by_side import recover_all
from consumer.worker import TOPIC_ID_KEY, footer_metadata, held_ranges


class StagedEndPositions:
    """The positions of the partitions a finish makes final: where their staged objects end (a
    deleted topic), or where they are cut (an output the group moved from, :func:`cut_at`).

    Kafka dropped the group's offsets with a deleted topic. Taking the end of what is staged as
    the committed position makes recovery resume each file as it stands, every staged piece
    counted as committed (the rows past the last commit, written when the run found the topic
    gone, included): with no log to read them from again, that is what they are. Commits go
    nowhere, and no note is read (a moved output's cut is made here, not in recovery)."""

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


def staged_ends(staged: Staged) -> dict[TP, int]:
    """The highest offset each partition's staged objects reach: a piece's end or an unfinished
    roll's."""
    return {tp: max(r.to_pos if isinstance(r, PieceRef) else r.end for r in refs)
            for tp, refs in staged.items()}


class FinishRunner(Runner):
    """Recover and roll every staged partition of the topics (deleted, or whose group moved to
    another output), then exit 0."""

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
        # The files are the group's: what it staged past a position is its own to delete, and the
        # final files name it as their writer, as a run's would.
        self.shared.group_id = config.group_id
        self.shared.output = config.output
        # Positions come from what is staged, not from the group: where the group moved here
        # (_moved/) says nothing of them.
        self.shared.follows_moves = False
        #: the id (KIP-516) of the topic of that name now, if one was created again (the in-memory
        #: doubles give theirs)
        self._current_topic_id = current_topic_id or (lambda topic: self._topic_id_now(topic, True))

    @property
    def bounded(self) -> bool:
        return True

    def _positions(self, topic: str, staged: Staged) -> dict[TP, int]:
        """Where each staged partition of ``topic`` is finished. Only when the cluster says the
        topic does not exist, or that the topic of that name now is another one than the staged
        files were read from (deleted and created again: its id, KIP-516, is not the one every
        staged file names): at the end of what is staged. Or when the group's commits of every
        staged partition name another output (``--output`` was changed): where that one holds the
        rest of what is staged (:meth:`_cut_where_moved`)."""
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
                return staged_ends(staged)
            moved = self._moved_to(staged) if staged else None
            if moved is not None:
                return self._cut_where_moved(topic, staged, moved)
            raise UsageError(
                f"topic {topic!r} exists in the cluster and the group's last commit of it was to this "
                "output: its files are made final by consuming it, with this group and output: "
                f"consumer run --topic {topic} --until-caught-up. `consumer finish` is for a topic "
                "deleted from the cluster, or for files left open in an output the group has since "
                "moved from (--output changed; once the group has committed to the new one)."
            )
        code = error.code() if error is not None else UNKNOWN_TOPIC_OR_PART
        if code != UNKNOWN_TOPIC_OR_PART:
            said = not_authorized(code, topic, self.config.group_id, str(error), self._principal)
            raise UsageError(said or f"topic {topic!r}: the cluster did not say it is deleted ({error}); "
                             "nothing was finished")
        return staged_ends(staged)

    def _moved_to(self, staged: Staged) -> dict[TP, tuple[str, int]] | None:
        """The output and position of the group's last commit of each staged partition, when
        every one of them names another output than this one; None otherwise (a partition the
        group has not committed since, or last committed here)."""
        group = KafkaGroupPositions(self.consumer, group=self.config.group_id, principal=self._principal)
        committed = group.committed_many(sorted(staged))
        out: dict[TP, tuple[str, int]] = {}
        for tp, position in committed.items():
            note = parse_note(group.note(*tp))
            if position is None or note is None or same_output(note.output, self.config.output):
                return None
            out[tp] = (note.output, position)
        return out

    def _cut_where_moved(self, topic: str, staged: Staged, moved: dict[TP, tuple[str, int]]) -> dict[TP, int]:
        """Each partition's position: cut where the output the group moved to holds the rest of
        what is staged here (:func:`cut_at`); all of it is kept when that output cannot be read
        (named in the note by a hash, or in a bucket the CLI gave no store for)."""
        held: dict[TP, Ranges] = {}
        staged_end = staged_ends(staged)
        for output in sorted({o for o, _ in moved.values()}):
            try:
                bucket, prefix = split_output(output)
            except ValueError:
                continue  # a long output named by its hash: its files cannot be listed
            store = self.store
            if bucket != self.config.bucket:
                if self.shared.store_of is None:
                    continue
                store = self.shared.store_of(bucket)
            ends = {tp[1]: staged_end[tp] for tp, (named, _) in moved.items() if named == output}
            ranges = held_ranges(store, Layout(prefix), topic, ends)
            held.update({(topic, p): r for p, r in ranges.items()})
        out: dict[TP, int] = {}
        for tp, refs in staged.items():
            out[tp] = cut_at(refs, held.get(tp, []))
            self.log.warning(
                "the group moved to another output: this one's open file is finished with the staged "
                "rows that output does not hold",
                partition=f"{tp[0]}[{tp[1]}]", moved_to=moved[tp][0], position=out[tp],
                staged_end=staged_end[tp], committed=moved[tp][1],
                **({} if tp in held else {"unread": "that output could not be listed: all is kept"}),
            )
        return out

    def _staged_topic_ids(self, staged: Staged) -> set[str | None]:
        """The topic id each staged partition names in its newest piece's footer (None: a piece
        that names none). One ranged read a partition."""
        newest = (max((r for r in refs if isinstance(r, PieceRef)), key=lambda r: r.to_pos, default=None)
                  for refs in staged.values())
        return {self._topic_id_in(ref) for ref in newest if ref is not None}

    def _topic_id_in(self, piece: PieceRef) -> str | None:
        return footer_metadata(self.store, piece.key, piece.size).get(TOPIC_ID_KEY)

    def _start(self) -> None:
        keys = [(o.key, o.size) for o in self.store.list(self.layout.staging_root())]
        staged = staged_of(self.layout, keys, tuple(self.config.topics))
        for topic in self.config.topics:
            of_topic = {tp: refs for tp, refs in staged.items() if tp[0] == topic}
            self._ends.update(self._positions(topic, of_topic))
            if not of_topic:
                self.log.warning("nothing to finish: this output holds no open file of the topic (check "
                                 "--output and --topic)", topic=topic, staging=self.layout.staging_root())
        tps = sorted(self._ends)
        workers = [self._new_worker(*tp) for tp in tps]
        recover_all(workers)
        self.workers.update(zip(tps, workers, strict=True))
        self.log.info("finishing the open files", topics=list(self.config.topics),
                      partitions=[f"{t}[{p}]" for t, p in tps])

    def _done(self, now: float) -> int | None:
        self._finish_all(list(self.workers.values()))
        self.log.info("finished: every staged file of the topics is final",
                      partitions=len(self.workers))
        return EXIT_OK
