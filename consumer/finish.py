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
from consumer.errors import EXIT_OK, IntegrityError, UsageError
from consumer.kafka_names import UNKNOWN_TOPIC_OR_PART, not_authorized
from consumer.layout import AWAY, Layout, PieceRef, Staged, staged_of
from consumer.positions import ROLLED, STAGED, KafkaGroupPositions, commit_note, parse_note, same_output
from consumer.recovery import Ranges, cut_at
from consumer.runner import TP, Runner
from consumer.side_by_side import recover_all
from consumer.worker import (
    FINISHING,
    TOPIC_ID_KEY,
    away_body,
    bucket_file_final,
    final_end,
    footer_metadata,
    held_ranges,
    held_when_left,
    left_staged,
    mark_held,
    warn_held_in_both,
)


class StagedEndPositions:
    """The positions of the partitions a finish makes final: where their staged objects end (a
    deleted topic), or where they are cut (an output the group moved from, :func:`cut_at`).

    Kafka dropped the group's offsets with a deleted topic. Taking the end of what is staged as
    the committed position makes recovery resume each file as it stands, every staged piece
    counted as committed (the rows past the last commit, written when the run found the topic
    gone, included): with no log to read them from again, that is what they are. Commits go
    nowhere. No note is read from Kafka (a moved output's cut is made here, not in recovery); an
    output the group moved from is given the note the group's commit had when it left
    (``notes``, :meth:`FinishRunner._where_left`), so that recovery checks its open files as
    the group's own recovery would have."""

    #: no Kafka call: any thread may ask (consumer.positions.OwnerThreadPositions)
    any_thread = True

    def __init__(self, ends: dict[TP, int], notes: dict[TP, str] | None = None) -> None:
        self.ends = ends  # the runner's: filled once the listing is read
        self.notes = {} if notes is None else notes  # ... and once the cuts are made

    def committed(self, topic: str, partition: int) -> int | None:
        return self.ends.get((topic, partition))

    def note(self, topic: str, partition: int) -> str:
        return self.notes.get((topic, partition), "")

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

    refused_connection_is_an_answer = True  # run by an operator, who waits for its answer

    def __init__(
        self, config: Any, *, store: Any, decoder: Any,
        current_topic_id: Callable[[str], str | None] | None = None, **kwargs: Any,
    ) -> None:
        self._ends: dict[TP, int] = {}
        self._notes: dict[TP, str] = {}
        #: where the group left each partition this finish makes final with its "staged" note, or
        #: found made final by one before (:meth:`_mark_made_final`)
        self._left: dict[TP, int] = {}
        super().__init__(
            config, store=store, decoder=decoder,
            positions_factory=lambda _consumer: StagedEndPositions(self._ends, self._notes),
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
        self.shared.finishing = True
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
        info = self._first_metadata(topic).topics.get(topic)
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
            away = self._newest_away(topic)
            left = self._left_with_nothing_staged(topic, staged, away)
            if not staged and not left:
                return {}  # said by the caller: nothing to finish
            moved = self._moved_to([*staged, *left])
            if not isinstance(moved, str):
                cut = self._cut_where_moved(topic, staged, moved, away)
                return {**cut, **self._checked_where_left(left, moved)}
            raise UsageError(
                f"topic {topic!r} exists in the cluster and {moved}: its files are made final by "
                "consuming it, with this group and output: "
                f"consumer run --topic {topic} --until-caught-up --output {self.config.output}. "
                "`consumer finish` is for a topic "
                "deleted from the cluster, or for files left open in an output the group has since "
                "moved from (--output changed; once the group has committed to the new one)."
            )
        code = error.code() if error is not None else UNKNOWN_TOPIC_OR_PART
        if code != UNKNOWN_TOPIC_OR_PART:
            said = not_authorized(code, topic, self.config.group_id, str(error), self._principal)
            raise UsageError(said or f"topic {topic!r}: the cluster did not say it is deleted ({error}); "
                             "nothing was finished")
        return staged_ends(staged)

    def _moved_to(self, staged: list[TP]) -> dict[TP, tuple[str, int]] | str:
        """The output and position of the group's last commit of each staged partition, when
        every one of them names another output than this one; otherwise why not, for the first
        partition that does not (one the group has no position of, or no note, or last committed
        here)."""
        group = KafkaGroupPositions(self.consumer, group=self.config.group_id, principal=self._principal)
        committed = group.committed_many(sorted(staged))
        out: dict[TP, tuple[str, int]] = {}
        for tp, position in sorted(committed.items()):
            note = parse_note(group.note(*tp))
            where = f"{tp[0]}[{tp[1]}]"
            if position is None:
                return (f"the group has no committed position of {where} (it never committed one, or "
                        "its offsets expired), so no run of it is known to have moved on from here")
            if note is None:
                return (f"the group's position of {where} has no note of this consumer (an operator's "
                        "reset): where its rows are is not known")
            if same_output(note.output, self.config.output):
                return f"the group's last commit of {where} was to this output"
            out[tp] = (note.output, position)
        return out

    def _cut_where_moved(self, topic: str, staged: Staged, moved: dict[TP, tuple[str, int]],
                         away: dict[int, int]) -> dict[TP, int]:
        """Each partition's position: cut where the output the group moved to holds the rest of
        what is staged here (:func:`cut_at`); all of it is kept when that output cannot be read
        (named in the note by a hash, or in a bucket the CLI gave no store for). Or where the
        group left this output, when that is higher (:meth:`_where_left`; ``away``: the newest
        ``.away`` position of each partition, :meth:`_newest_away`)."""
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
            ends = {tp[1]: staged_end[tp] for tp, (named, _) in moved.items()
                    if named == output and tp in staged}
            ranges = held_ranges(store, Layout(prefix), topic, ends)
            held.update({(topic, p): r for p, r in ranges.items()})
        out: dict[TP, int] = {}
        for tp, refs in staged.items():
            out[tp] = self._where_left(tp, cut_at(refs, held.get(tp, [])), away.get(tp[1]))
            warn_held_in_both(self.log, refs, held.get(tp, []), out[tp],
                              partition=f"{tp[0]}[{tp[1]}]", moved_to=moved[tp][0])
            self.log.warning(
                "the group moved to another output: this one's open file is finished with the staged "
                "rows that output does not hold",
                partition=f"{tp[0]}[{tp[1]}]", moved_to=moved[tp][0], position=out[tp],
                staged_end=staged_end[tp], committed=moved[tp][1],
                **({} if tp in held else {"unread": "that output could not be listed: all is kept"}),
            )
        return out

    def _newest_away(self, topic: str) -> dict[int, int]:
        """The newest position each partition of ``topic`` has a move away from this output at
        (``_moved/<M>.away``, written by the other output's first recovery). One LIST."""
        newest: dict[int, int] = {}
        for o in self.store.list(self.layout.moved_topic_dir(topic)):
            moved = self.layout.parse_moved_of_topic(topic, o.key)
            if moved is not None and moved[2] == AWAY:
                newest[moved[0]] = max(newest.get(moved[0], moved[1]), moved[1])
        return newest

    def _left_with_nothing_staged(self, topic: str, staged: Staged, away: dict[int, int]) -> dict[TP, int]:
        """The partitions of ``topic`` that nothing is staged of here, which the group left at M
        (``away``, :meth:`_newest_away`) with rows staged below it (:meth:`_where_left`), and
        that no finish made final: a clean-up deleted every staged object of such a partition.
        One GET for each partition with a move away there. An earlier finish cut short after its
        rolls says so (FINISHING, written before its first roll) and is checked against the final
        files (:meth:`_final_up_to`); one that still says STAGED is not. Under --partition-by the
        final files could not tell them apart: a bucket file the run rolled exactly at M, while
        others stayed open, was taken for all of them made final, and the rows of the others,
        deleted, were lost without a word (found by tests/unit/test_group_history.py)."""
        left: dict[TP, int] = {}
        for p, at in sorted(away.items()):
            body = self._away_body((topic, p), at) if (topic, p) not in staged else {}
            said = body.get("held")
            held = said if isinstance(said, str) else None
            if held == FINISHING and self._final_up_to((topic, p), at, body.get("files")):
                # an earlier finish, cut short after its rolls
                self._mark_made_final((topic, p), at)
            elif left_staged(held):
                left[(topic, p)] = at
        return left

    def _final_up_to(self, tp: TP, at: int, files: object = None) -> bool:
        """Whether this output's final files of ``tp`` reach ``at`` (a finish made them final).
        Under --partition-by: each bucket file the finish was to roll (``files``, [bucket, start]
        pairs its FINISHING wrote) is final (a HEAD and a footer read each). The rolled
        high-water is written before a roll's final file, and a roll makes one bucket's file
        only: a finish killed after it, whose staged objects a clean-up then deleted, was taken
        for done, and the rows of every file not final yet were in no file (found by
        tests/unit/test_finish.py). The ``_rolled/`` high-water (one LIST) is the check only for
        a FINISHING that names no files (an earlier version's). The plain layout: the end of the
        newest final file (``_newest_final/``: one LIST, a HEAD and a footer read)."""
        if self.config.partition_by and isinstance(files, list):
            return all(self._final_at(tp, f) for f in files)
        if self.config.partition_by:
            ends = (Layout.parse_rolled(o.key) for o in self.store.list(self.layout.rolled_dir(*tp)))
            return max((e for e in ends if e is not None), default=at - 1) >= at
        named = (Layout.parse_newest_final(o.key) for o in self.store.list(self.layout.newest_final_dir(*tp)))
        start = max((s for s in named if s is not None), default=None)
        key = self.layout.final_key(*tp, start) if start is not None else None
        info = self.store.head(key) if key is not None else None
        end = final_end(self.store, info.key, info.size) if info is not None else None
        return end is not None and end >= at

    def _checked_where_left(self, left: dict[TP, int], moved: dict[TP, tuple[str, int]]) -> dict[TP, int]:
        """Each partition of :meth:`_left_with_nothing_staged` is recovered at the position the
        group left it, with the note it had then: the finish stops (status 5) on rows deleted from
        ``_staging/``."""
        for tp, at in left.items():
            self._notes[tp] = commit_note(STAGED, self.config.output)
            self._left[tp] = at
            self.log.warning(
                "the group left this output with rows staged here of which nothing is staged now: "
                "checked against the final files", partition=f"{tp[0]}[{tp[1]}]", moved_to=moved[tp][0],
                position=at,
            )
        return left

    def _final_at(self, tp: TP, file: object) -> bool:
        """Whether the bucket file ``file`` ([bucket, start], as FINISHING names it) of ``tp``
        is final here (:func:`~consumer.worker.bucket_file_final`)."""
        return bucket_file_final(self.store, self.layout, *tp, file)

    def _mark_made_final(self, tp: TP, at: int) -> None:
        """Say in the ``.away`` object of ``tp`` at ``at`` that the rows below are in final files
        now ("rolled"): a run of the group back to this output then finds no staged rows to check
        (consumer.worker.PartitionWorker._keep_a_move_once_checked), and a finish run again nothing to do."""
        self._mark_held(tp, at, ROLLED)

    def _mark_held(self, tp: TP, at: int, held: str, **more: object) -> None:
        """Set ``held`` (and ``more``) in the ``.away`` object of ``tp`` at ``at``
        (:func:`~consumer.worker.mark_held`)."""
        mark_held(self.store, self.layout.moved_key(*tp, at, AWAY), held, **more)

    def _held_when_left(self, tp: TP, at: int) -> str | None:
        """What the group's note said held the rows below ``at`` when it left this output there."""
        return held_when_left(self.store, self.layout.moved_key(*tp, at, AWAY))

    def _away_body(self, tp: TP, at: int) -> dict[str, object]:
        """The ``.away`` object of ``tp`` at ``at`` ({}: gone or unreadable). One GET."""
        return away_body(self.store, self.layout.moved_key(*tp, at, AWAY))

    def _where_left(self, tp: TP, cut: int, left: int | None) -> int:
        """Where ``tp`` is finished: at ``cut``, or where the group left this output when that was
        at or above it with the rows below staged here, as the newest ``_moved/<M>.away`` says
        (written by the other output's first recovery). Recovery is then given the group's note
        of M, and checks the open files as the group's own recovery would have: staged pieces
        deleted since by a clean-up (the newest ones, below M, which the other output does not
        hold; or a whole bucket file of the flush that committed M) stop the finish with status 5
        and nothing changed, where before their rows were lost without a word. ``left``: that M
        (None: no such object). One GET when there is one."""
        if left is None or left < cut or not left_staged(self._held_when_left(tp, left)):
            return cut
        self._notes[tp] = commit_note(STAGED, self.config.output)
        self._left[tp] = left
        return left

    def _as_a_finish(self, stop: IntegrityError) -> IntegrityError:
        """A recovery's stop, where the group left this output with its rows staged here
        (:meth:`_where_left`): its remedies move the group's offset, which reads into the other
        output now. Say what a finish can do instead."""
        key = next((self.layout.moved_key(*tp, at, AWAY) for tp, at in sorted(self._left.items())
                    if str(stop).startswith(f"{tp[0]}[{tp[1]}]")), None)
        if key is None:
            return stop
        return IntegrityError(
            f"{stop} -- This is `consumer finish` of an output the group left with rows staged here "
            f"({key} says where): moving the group's offset would export them into the output it "
            "writes now, not here. Restore the deleted objects (a versioned bucket keeps them) and "
            "finish again. To finish without them, export the records named above with `consumer "
            f"replay` to another prefix first, then delete {key} and finish again."
        )

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
            if not any(tp[0] == topic for tp in self._ends):
                self.log.warning("nothing to finish: this output holds no open file of the topic (check "
                                 "--output and --topic)", topic=topic, staging=self.layout.staging_root())
        tps = sorted(self._ends)
        workers = [self._new_worker(*tp) for tp in tps]
        try:
            recover_all(workers)
        except IntegrityError as stop:
            raise self._as_a_finish(stop) from stop
        self.workers.update(zip(tps, workers, strict=True))
        self.log.info("finishing the open files", topics=list(self.config.topics),
                      partitions=[f"{t}[{p}]" for t, p in tps])

    def _done(self, now: float) -> int | None:
        # Recovery checked what is staged where the group left (a stop leaves it STAGED); the
        # rolls come next (_left_with_nothing_staged reads this if they are cut short).
        for tp, at in sorted(self._left.items()):
            # ... naming the bucket files it rolls: each must be final for a rerun to take it as done
            files = sorted([f.bucket, f.start] for f in self.workers[tp].files.values() if f.pieces)
            self._mark_held(tp, at, FINISHING, **({"files": files} if self.config.partition_by else {}))
        for worker in self._finish_all(list(self.workers.values())):
            tp = (worker.topic, worker.partition)
            if tp in self._left:
                self._mark_made_final(tp, self._left[tp])
        self.log.info("finished: every staged file of the topics is final",
                      partitions=len(self.workers))
        return EXIT_OK
