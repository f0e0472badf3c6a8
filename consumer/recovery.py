"""Recovery as a decision: (committed position, what S3 holds) → a plan the worker carries out.

Deciding is kept apart from doing so that every case an operator or a crash can produce is a
plain unit test (tests/unit/test_recovery_plan.py) and the worker only executes the plan: finish
these rolls, resume this file, delete these keys, or stop.

The one rule recovery must never break: **a staged piece holding a position below the committed
position is never deleted unless something else provably holds that position** — the chain that
resumes, a final file, or a roll this plan finishes. Everything else is decided from it:

* **Normal** (crash, restart, rebalance): one chain of pieces runs from its file's first position
  to the committed position ``C``. A roll marker at ``C`` means the file was complete: finish the
  roll. Otherwise the file continues. Pieces from ``C`` on were durable but never committed: they
  are deleted and their records consumed again.
* **Forward reset** (``kafka-consumer-groups --reset-offsets --to-latest`` to skip a backlog): the
  newest file's chain ends at ``E < C``. Its rows were committed, so they are kept: the file is
  finished at ``E`` (a final file ``[start, E)``), and consumption continues from ``C``. Positions
  ``[E, C)`` were skipped by the operator, and the plan says so.
* **Backward reset** into already-final output (``C`` below the end of the newest final file):
  consuming again would put the same offsets into two final files. Stop (status 5) and say how to
  re-export history without duplicates (``consumer replay`` to another prefix) or how to move the
  offset back.
* **No committed position** (offsets expired, group deleted) but output exists: S3 itself proves
  what is durable, so the position is adopted from it (the end of the newest chain, else of the
  newest final file, moved past the dead-letter objects after it that hold every record of their
  range) and committed, the way Kafka Connect's S3 sink recovers offsets from files.
* **A broken chain** (a piece removed by someone else): stop (status 5), delete nothing, and list
  what was found.
* **Staged rows deleted behind the consumer's back** (a lifecycle rule expiring ``_staging/``, a
  clean-up): the newest pieces are gone, so nothing in S3 reaches ``C`` any more, which by itself
  looks like a reset forwards. The commit's note (consumer.positions) tells them apart: this
  consumer committed ``C`` once the rows below it were staged in this output, while an operator's
  reset leaves no note. So stop (status 5), change nothing, and name the records that are in no
  file and the offset that exports them again.

Every piece names the consumer group that wrote it (``kafka.group_id``; a replay's says
``consumer.replay`` instead: its writer is :data:`REPLAY_WRITER`), and a final file carries its
first piece's. One output prefix belongs to one group: when a second group
(a copied deployment, a renamed group started before the old one stopped) or a replay writes into
it, the protocol still keeps every offset in at most one final file, but the run that collides
stops with status 5. :func:`other_writer` words that stop so it names the other group instead of
suggesting an offset reset nobody made. The pieces and dead letters a plan deletes past the
committed position are this group's uncommitted work only if this group wrote them: the worker
reads their writer first and stops rather than delete another group's (possibly committed) records.
Before a position is adopted from what another group wrote, the worker asks the coordinator
about that group (:func:`still_writing`): a group that still runs this partition would otherwise
be met only later, when the two groups' files first differ.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from consumer.errors import IntegrityError
from consumer.kafka_names import TP, GroupView
from consumer.layout import Layout, PieceRef, RollMarker


@dataclass(frozen=True)
class FinishRoll:
    """Finish file ``file_start`` at ``end`` from ``chain``; write its marker first if absent."""

    file_start: int
    end: int
    chain: tuple[PieceRef, ...]
    needs_marker: bool


@dataclass(frozen=True)
class RecoveryPlan:
    position: int | None  # where consumption resumes (None: Kafka's auto.offset.reset decides)
    commit: int | None = None  # commit this first (a position adopted from S3)
    finish: tuple[FinishRoll, ...] = ()
    resume: tuple[PieceRef, ...] = ()  # the open file's chain, continued
    delete: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())  # operator-visible facts, logged as warnings
    #: the position's "staged" note no longer holds: staged pieces of no rows were deleted, and
    #: dead letters hold every record from where what is left ends (:func:`dead_letters_cover`).
    #: Committed again saying "rolled", so that a lifecycle rule expiring those dead letters later
    #: is not taken for staged rows deleted.
    staged_gone: bool = False


#: The writer of what a replay wrote (a replay joins no group). No consumer group id is empty.
REPLAY_WRITER = ""


def other_writer(written_by: str | None, group: str | None) -> str | None:
    """The phrase "written by consumer group 'X' (this run is …)" when output of this prefix was
    written by another writer than this run, a consumer group (``group``) or a replay (None);
    ``written_by`` is a group id, :data:`REPLAY_WRITER`, or None when the writer is not known (an
    object written before pieces named their writer): None when it is the same writer or unknown."""
    if written_by is None or written_by == (group or REPLAY_WRITER):
        return None
    other = "a replay" if written_by == REPLAY_WRITER else f"consumer group {written_by!r}"
    return f"written by {other} (this run is {f'group {group!r}' if group else 'a replay'})"


#: What to do about a second writer of one prefix (:func:`other_writer`).
ONE_WRITER = (
    "one output prefix belongs to one consumer group (or one replay), and two are writing to this "
    "one: stop the other writer, or give each its own --output prefix"
)


def still_writing(view: GroupView, tp: TP) -> str | None:
    """How another consumer group, as the coordinator describes it (``view``), still writes
    partition ``tp``, or None when it does not: a member owns ``tp``, or the group has members and
    is between assignments (any of them may get ``tp``). A group with members that all own other
    partitions, or with none, does not write ``tp`` now."""
    if not view.members:
        return None
    members = f"{len(view.members)} member{'s' if len(view.members) > 1 else ''}"
    if any(tp in owned for owned in view.members.values()):
        return f"it has {members}, and one of them owns this partition"
    if not view.stable:
        return f"it has {members} and is rebalancing"
    return None


def layout_mismatch(staged_buckets: Iterable[str], names: tuple[str, ...] | None) -> str | None:
    """Why the staged objects of a partition cannot be finished under this run's layout, or None.

    ``staged_buckets`` are the bucket folders of the staged pieces and roll markers ("" in the
    plain layout); ``names`` are the Hive column names of this run's ``--partition-by`` (None
    without it). Staged files hold committed rows that only their own layout can finish: the
    plain recovery would chain pieces of different buckets into one file, the bucketed one would
    read a plain file as a bucket, or take another template's folders for its own. So after an
    operator changes ``--partition-by`` (on, off, or another template) while files are open, the
    run must stop and say how to get out, never guess."""
    def foreign(bucket: str) -> bool:
        if names is None or bucket == "":
            return (bucket == "") != (names is None)
        return Layout.bucket_names(bucket) != names

    wrong = sorted(b for b in set(staged_buckets) if foreign(b))
    if not wrong:
        return None
    written = "without --partition-by" if wrong[0] == "" else f"in bucket folders such as {wrong[0]!r}"
    now = "has no --partition-by" if names is None else f"buckets by {'/'.join(names)}"
    return (
        f"staged (open) files were written {written}, but this run {now}: finishing them under "
        "another layout could lose or duplicate committed rows. Run once more with the "
        "--partition-by that wrote them (e.g. with --until-caught-up, so every file is final) and "
        "change the layout afterwards, or write to a new --output prefix"
    )


Ranges = list[tuple[int, int]]


def holds_all(ranges: Ranges, start: int, end: int) -> bool:
    """Whether ``ranges`` together hold every position of [start, end)."""
    reached = start
    for a, b in sorted(ranges):
        if a > reached:
            break
        reached = max(reached, b)
    return reached >= end


def cut_at(refs: Sequence[PieceRef | RollMarker], held: Ranges, end: int | None = None,
           letters: Sequence[tuple[int, int]] = ()) -> int:
    """Where the staged files ``refs`` of an output the group has moved from are cut: at the first
    staged boundary (a file's start, a piece's end, a decided roll's) from which the output it
    moved to (``held``: the ranges of its files) holds every position up to the end of what is
    staged. Rows below are in no other file and are kept; rows from there on are in the other
    output: a piece staged past the last commit before the move (a crash between its upload and
    its commit), or the whole file of a group that moved there and back. So every row is in one
    of the two outputs and none in both. All of what is staged when the other holds none of it.
    ``end``: cut only what lies below it (a run's committed position: what is staged past it was
    never committed and goes anyway); at most ``end``, or the end of what is staged.
    ``letters``: the ranges of the dead-letter objects there, whose bounds are boundaries too
    where no staged file holds them inside (a run back leaves out those from the cut on, as it
    does pieces)."""
    spans = [(r.from_pos, r.to_pos) if isinstance(r, PieceRef) else (r.file_start, r.end) for r in refs]
    bounds = {b for frm, to in letters for b in (frm, to) if not any(a < b < z for a, z in spans)}
    ends = {r.to_pos if isinstance(r, PieceRef) else r.end for r in refs}
    end = max(ends | {to for _f, to in letters}) if end is None else min(end, max(ends | bounds))
    return next(b for b in sorted(ends | {r.file_start for r in refs} | bounds | {end})
                if holds_all(held, b, end))


def held_in_both(refs: Sequence[PieceRef | RollMarker], held: Ranges, cut: int) -> Ranges:
    """The positions below ``cut`` (:func:`cut_at`) that both the staged pieces ``refs`` kept and
    the other output (``held``) hold: a piece cannot be cut inside, so when the other output
    begins within one (the group's offset reset into it with --output changed, or the log start
    passed it while its commit was lost), its rows from there are in both outputs. Merged, sorted."""
    both = sorted((max(a, r.from_pos), min(b, r.to_pos, cut)) for r in refs if isinstance(r, PieceRef)
                  for a, b in held if max(a, r.from_pos) < min(b, r.to_pos, cut))
    merged: Ranges = []
    for a, b in both:
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def plan_recovery(
    committed: int | None,
    pieces: Sequence[PieceRef],
    markers: Sequence[RollMarker],
    dead_letters: Sequence[tuple[str, int, int]],
    final_starts: Iterable[int],
    last_final_end: int | None,
    *,
    where: str = "",
    last_final_writer: str | None = None,
    group: str | None = None,
    staged_here: bool = False,
    dead_letter_records: Mapping[str, int] | None = None,
    gone_final_start: int | None = None,
    moved_in: int | None = None,
    went_on: int | None = None,
    moved_to: str | None = None,
) -> RecoveryPlan:
    """Decide recovery for one partition. Pure: no I/O. Raises :class:`IntegrityError` to stop.

    ``dead_letters`` are (key, from, to) of dead-letter objects; ``final_starts`` the first
    positions of the partition's final files; ``last_final_end`` the end position of the newest
    final file (read from its footer), None when there is none. ``where`` names the partition in
    messages; ``last_final_writer`` is the writer of the newest final file (see
    :func:`other_writer`) and ``group`` this run's (None: a replay), so that messages name a second
    writer of the prefix. ``staged_here``: the committed position's note says this consumer
    committed it once the rows below it were staged in this output. ``dead_letter_records``: the
    lines of the dead-letter objects that follow the newest final file, counted when no position
    is committed and no file is open (see :func:`past_dead_letters`). ``gone_final_start``: the
    newest final file, which ends at ``last_final_end``, is gone (a lifecycle rule expired it, or
    someone deleted it); only its name under ``_newest_final/`` still says where it started and
    ended. Its end counts as a final file's: adopted when the group has no position, and a
    position below it is a reset backwards (it would export what that file held once more).
    ``moved_in``: the newest position the group moved to this output at from another one
    (``_moved/``; :func:`below_a_move`); ``went_on``: the newest position the group went on from
    here, moved in or not (a reset's, with no note): with no committed position, adopted when S3
    holds nothing here past it. ``moved_to``: the output the committed position's note names (a
    run back here): what lies between a staged file and the position is there, not skipped.
    """
    foreign = other_writer(last_final_writer, group) if last_final_end is not None else None
    finals = set(final_starts)
    notes: list[str] = []
    commit: int | None = None
    pos = committed
    if pos is None:
        pos = _adopt(pieces, last_final_end)
        if all(p.file_start in finals for p in pieces):
            # No open file: flushes of bad records only after the last roll (their file, of no
            # rows, published nothing) left their dead-letter objects and nothing else.
            pos = past_dead_letters(pos, dead_letters, dead_letter_records or {})
        floor = went_on if went_on is not None else moved_in
        moved = floor is not None and (pos is None or pos < floor)
        pos = floor if moved else pos
        if pos is None:
            if pieces:
                _stranded(where, None, list(pieces))
            return RecoveryPlan(position=None, delete=tuple(k for k, _, _ in dead_letters))
        commit = pos
        notes.append(
            f"no committed position in the group (offsets expired or deleted): adopting {pos} "
            "from what S3 holds"
            + (f" ({ADOPTED_MOVE})" if moved else "")
            + (f"; the newest final file was {foreign}. If it still writes here, {ONE_WRITER}"
               if foreign else "")
        )

    if last_final_end is not None and pos < last_final_end and foreign:
        raise _behind_another_writer(where, pos, last_final_end, "a final file", foreign, group)
    if last_final_end is not None and pos < last_final_end and gone_final_start is not None:
        raise IntegrityError(
            f"{where}: the committed position {pos} is below the end {last_final_end} of the final "
            f"file that started at {gone_final_start}, which is gone (a lifecycle rule expired it, "
            "or it was deleted; _newest_final/ still names it): the group's offsets were moved "
            "backwards (reset?). Consuming again would export those offsets once more, so nothing "
            "was changed. To continue, move the group's offset to "
            f"{last_final_end} (kafka-consumer-groups --reset-offsets --to-offset {last_final_end}). "
            "To export them again on purpose, use `consumer replay --output s3://…/another-prefix`, "
            "or delete this partition's _newest_final/ object under the prefix first."
        )
    below_a_move(where, pos, moved_in, last_final_end)
    if last_final_end is not None and pos < last_final_end:
        raise IntegrityError(
            f"{where}: the committed position {pos} is below the end {last_final_end} of a final file "
            "already written: the group's offsets were moved backwards (reset?). Consuming again "
            "would put the same offsets into two final files, so nothing was changed. To re-export "
            "history use `consumer replay --output s3://…/another-prefix`; to continue, move the "
            f"group's offset to {last_final_end} (kafka-consumer-groups --reset-offsets "
            f"--to-offset {last_final_end})."
        )
    finish: list[FinishRoll] = []
    by_marker = {(m.file_start, m.end) for m in markers}
    # Files whose staged pieces stay until they are final: start → the position their chain covers.
    covered: dict[int, int] = {}
    resume: tuple[PieceRef, ...] = ()

    chain = chain_ending_at(list(pieces), pos)
    if not chain:
        _refuse_a_position_inside_a_piece(where, pos, pieces, finals)
        if last_final_end != pos:
            _refuse_a_position_inside_dead_letters(where, pos, dead_letters)
    if chain:
        start = chain[0].file_start
        covered[start] = pos
        if (start, pos) in by_marker:
            finish.append(FinishRoll(start, pos, tuple(chain), needs_marker=False))
        elif start in finals and start == max(finals) and last_final_end == pos:
            # The roll wrote this file's final file and stopped before deleting its pieces, and
            # its marker was deleted since (a clean-up of _staging/): finish it, do not resume a
            # file that is final already (its next roll would meet the final file and stop).
            finish.append(FinishRoll(start, pos, tuple(chain), needs_marker=True))
        else:
            resume = tuple(chain)
    else:
        below = [p for p in pieces if p.from_pos < pos and p.file_start not in finals]
        if below:
            newest = max(p.file_start for p in below)
            longest = _longest_chain([p for p in below if p.file_start == newest], newest)
            end = longest[-1].to_pos if longest else newest
            if longest and (last_final_end is None or newest >= last_final_end):
                covered[newest] = end
                marker = (newest, end) not in by_marker
                finish.append(FinishRoll(newest, end, tuple(longest), needs_marker=marker))
                if dead_letters_cover(end, pos, dead_letters, dead_letter_records or {}, moved_in):
                    notes.append(
                        f"committed position {pos} is past the staged file [{newest}, {end}), and the "
                        f"records [{end}, {pos}) are all in dead letters (the staged pieces of no rows "
                        "their flushes wrote are gone): the file is finished as a final file."
                    )
                elif moved_to is not None:
                    notes.append(
                        f"committed position {pos} is past the staged file [{newest}, {end}): the group "
                        f"wrote [{end}, {pos}) to {moved_to} before it came back here. The staged rows "
                        "are finished as a final file."
                    )
                else:
                    notes.append(
                        f"committed position {pos} is past the staged file [{newest}, {end}): the offset "
                        "was moved forward (reset?). The staged rows are kept and finished as a final "
                        f"file; positions [{end}, {pos}) were skipped."
                    )

    # Older files whose roll was decided (marker) but not finished: finish them.
    for m in sorted(markers):
        if m.file_start in covered or m.file_start in finals or m.end > pos:
            continue
        older = chain_ending_at([p for p in pieces if p.file_start == m.file_start], m.end)
        if older and older[0].file_start == m.file_start:
            covered[m.file_start] = m.end
            finish.append(FinishRoll(m.file_start, m.end, tuple(older), needs_marker=False))
    _refuse_a_decided_roll_nothing_holds(where, pos, pieces, markers, finals, last_final_end, covered)

    finishing = {f.file_start for f in finish}
    keep = {p.key for p in resume}
    delete: list[str] = []
    stranded: list[PieceRef] = []
    for p in pieces:
        if p.key in keep:
            continue
        if p.from_pos >= pos or p.file_start in finals:
            if p.file_start not in finishing:
                delete.append(p.key)  # never committed, or left over from a file that is final
        elif p.file_start in covered and p.from_pos < covered[p.file_start]:
            if p.file_start not in finishing:
                delete.append(p.key)  # an alternative range (a zombie's) the kept chain also covers
        elif last_final_end is not None and p.to_pos <= last_final_end:
            delete.append(p.key)  # below the newest final file: final files hold these positions
        else:
            stranded.append(p)
    if stranded:
        _stranded(where, pos, stranded)
    # A roll decided at the position (its marker, of a file not final yet) also says the file's
    # pieces reached it: its re-commit says "rolled" before the final file exists, so a piece
    # deleted after a roll cut short looked like a reset forwards (found by the property).
    decided = any(m.end == pos and m.file_start not in finals for m in markers)
    staged_gone = False
    if (staged_here or decided) and not chain and (last_final_end is None or last_final_end < pos):
        _refuse_a_position_nothing_holds(where, pos, pieces, finals, last_final_end, dead_letters,
                                         dead_letter_records or {}, moved_in)
        staged_gone = True
        if not finish:  # else its note says so
            notes.append(_ALL_DEAD_LETTERS.format(pos=pos))
    # Markers of files not being finished are decisions superseded (a zombie's, or a finished roll's).
    delete += [m.key for m in markers if m.file_start not in finishing]
    delete += [key for key, _frm, to in dead_letters if to > pos]  # never committed: written again
    return RecoveryPlan(
        position=pos,
        commit=commit,
        finish=tuple(finish),
        resume=resume,
        delete=tuple(delete),
        notes=tuple(notes),
        staged_gone=staged_gone,
    )


ADOPTED_MOVE = ("where the group went on from when it moved to this output from another one, or when "
                "its offset was moved forwards: the records below it are there, or were skipped")


def below_a_move(where: str, pos: int, moved_in: int | None, held_here: int | None = None) -> None:
    """Stop (status 5, nothing changed) when ``pos`` is below ``moved_in``, the newest position the
    group moved to this output at from another one (``--output`` changed: ``_moved/`` names it).
    The records below it are in that output; a group whose offsets were then moved backwards
    (an operator's reset, which leaves no note) exported them here once more, unseen, while this
    output held no final file above the position (found by tests/unit/test_finish.py's property).
    ``held_here``: the end of this output's newest final file, when it already refuses the
    position (a reset backwards within this output is said as such)."""
    if moved_in is None or pos >= moved_in or (held_here is not None and pos < held_here):
        return
    raise IntegrityError(
        f"{where}: the committed position {pos} is below {moved_in}, where the group moved to this "
        "output from another one (--output changed; this partition's object under _moved/ names "
        f"the position): the records below {moved_in} are in that output, and the group's offsets "
        "were moved backwards since (reset?). Consuming them again would put them in both outputs, "
        f"so nothing was changed. To continue, move the group's offset to {moved_in} "
        f"(kafka-consumer-groups --reset-offsets --to-offset {moved_in}). To re-export history use "
        "`consumer replay --output s3://…/another-prefix`, or delete this partition's _moved/ "
        "objects under the prefix first to export those records here again on purpose."
    )


def left_for(where: str, left_at: int, output: str | None) -> None:
    """Stop (status 5, nothing changed): the group has no committed position (offsets expired, the
    group deleted), and it moved from this output to ``output`` at ``left_at`` with nothing here
    newer (``_moved/<left_at>.away``). Where it got to is in that output; adopting the end of what
    this one holds would export that output's records here once more."""
    there = output or "the output it moved to"
    raise IntegrityError(
        f"{where}: the group has no committed position (offsets expired, or the group deleted), and "
        f"it moved from this output to {there} at {left_at} (--output changed; this partition's "
        "_moved/ object names it): where it got to is in that output, and going on from what this "
        "one holds would export those records here once more, so nothing was changed. Run the group "
        f"with --output {there}: it adopts where its files end. To write here again, move the "
        "group's offset to where that output ends (kafka-consumer-groups --reset-offsets "
        "--to-offset …), or delete this partition's _moved/ objects under the prefix first."
    )


def _refuse_a_decided_roll_nothing_holds(
    where: str,
    pos: int,
    pieces: Sequence[PieceRef],
    markers: Sequence[RollMarker],
    finals: set[int],
    last_final_end: int | None,
    covered: Mapping[int, int],
) -> None:
    """A roll of an open file was decided at or below the position (its marker), and not one
    staged piece of that file is left, while no final file and no chain kept holds the range: its
    pieces were deleted by someone else (a lifecycle rule on ``_staging/``, a clean-up). Deleting
    the marker as a superseded decision lost those rows without a word whenever the position's note
    did not say "staged here" (a run back to an output the group had left, whose re-commit failed;
    found by tests/unit/test_group_history.py). A zombie's marker is left only where what the
    owner keeps holds its range. Stop, change nothing, and say what to do."""
    floor = last_final_end
    for m in sorted(markers):
        if m.end > pos or m.file_start in finals or m.file_start in covered:
            continue
        if any(p.file_start == m.file_start for p in pieces):
            continue  # pieces left: the chain checks (and the stranded stop) say what is missing
        start = m.file_start if floor is None else max(m.file_start, floor)
        if start >= m.end or any(s <= start and m.end <= e for s, e in covered.items()):
            continue
        raise IntegrityError(
            f"{where}: a roll of the file [{m.file_start}, {m.end}) was decided here ({m.key}), and "
            "no staged piece of it is left: deleted by someone else (a lifecycle rule expiring "
            f"_staging/, a clean-up)? No final file holds its records [{start}, {m.end}), so they "
            "are in no file. Nothing was changed. Restore the deleted pieces (a versioned bucket "
            "keeps them) and run again. To go on without those records, export them with `consumer "
            f"replay` to another prefix first, then delete {m.key}."
        )


def _refuse_a_position_inside_a_piece(
    where: str, pos: int, pieces: Sequence[PieceRef], finals: set[int]
) -> None:
    """A committed position strictly inside a durable row group of an open file, with no chain
    ending at it: the offsets were moved backwards to a point that is not a row-group boundary.

    Resuming there would consume the tail of that row group again (the forward-reset rule would
    even publish the file with it, and the next roll stop on the overlap); re-reading from the row
    group's start would delete durable rows Kafka may no longer hold. So stop, change nothing, and
    name both boundaries."""
    inside = sorted(p for p in pieces if p.from_pos < pos < p.to_pos and p.file_start not in finals)
    if inside:
        p = inside[0]
        raise IntegrityError(
            f"{where}: the committed position {pos} is inside the durable row group "
            f"[{p.from_pos}, {p.to_pos}) of the open file starting at {p.file_start}: the group's "
            "offsets were moved backwards (reset?) to a position that is not a row-group boundary "
            "(or the piece ending there was removed). Nothing was changed. To consume again from "
            f"that row group's start, move the group's offset to {p.from_pos}; to continue after "
            f"it, to {p.to_pos} (kafka-consumer-groups --reset-offsets --to-offset)."
        )


def _refuse_a_position_inside_dead_letters(
    where: str, pos: int, dead_letters: Sequence[tuple[str, int, int]]
) -> None:
    """A position strictly inside the range of a dead-letter object, where no other object ends
    (checked when no staged chain or final file ends there): an offset moved backwards into a
    flush of bad records only (as :func:`_refuse_a_position_inside_a_piece` for a row group).
    Such a flush leaves nothing else once its file is rolled (a file of no rows publishes
    nothing), or under ``--partition-by`` while no bucket file is open. Deleting the object as
    never committed lost the dead letters below the position (found by
    tests/unit/test_group_history.py, in both layouts). Stop, change nothing, name both
    boundaries. A fenced member's object across a position the owner's flushes end at is still
    deleted."""
    if any(to == pos for _k, _f, to in dead_letters):
        return
    inside = sorted((frm, to) for _k, frm, to in dead_letters if frm < pos < to)
    if inside:
        frm, to = inside[0]
        raise IntegrityError(
            f"{where}: the committed position {pos} is inside [{frm}, {to}), the range of a durable "
            "dead-letter object (a flush whose records were all bad): the group's offsets were moved "
            "backwards (reset?) to a position that is not a flush boundary. Nothing was changed. "
            f"To consume again from that flush's start, move the group's offset to {frm}; to "
            f"continue after it, to {to} (kafka-consumer-groups --reset-offsets --to-offset)."
        )


def _refuse_a_position_nothing_holds(
    where: str,
    pos: int,
    pieces: Sequence[PieceRef],
    finals: set[int],
    last_final_end: int | None,
    dead_letters: Sequence[tuple[str, int, int]],
    dead_letter_records: Mapping[str, int],
    moved_in: int | None,
) -> None:
    """The group's position was committed by this consumer once the rows below it were staged
    here, and no staged chain or final file reaches it any more: the newest staged pieces were
    deleted (a lifecycle rule on ``_staging/``, a clean-up, a restore of an older copy). Going on
    would skip their records without a word, as if the operator had moved the offset forwards.
    Stop, change nothing, and name the records that are in no file. It is checked after the
    broken-chain stop, so that a hole further down (pieces beyond it are still there) is reported
    by that stop, which lists them. Unless dead-letter objects holding every record of their range
    (``dead_letter_records``) take what S3 holds up to the position: the pieces deleted were
    those of flushes of bad records only, which held no row (:func:`dead_letters_cover`): then
    recovery goes on."""
    open_pieces = [p for p in pieces if p.from_pos < pos and p.file_start not in finals]
    reach, held = last_final_end, (
        f"the newest final file ends at {last_final_end}" if last_final_end is not None
        else "S3 holds no final file and no staged piece of this partition"
    )
    for start in sorted({p.file_start for p in open_pieces}):
        longest = _longest_chain([p for p in open_pieces if p.file_start == start], start)
        end = longest[-1].to_pos if longest else None
        if end is not None and (reach is None or end > reach):
            reach, held = end, f"the staged pieces of the file starting at {start} end at {end}"
    if not dead_letters_cover(reach, pos, dead_letters, dead_letter_records, moved_in):
        _nothing_reaches(where, pos, reach, held)


_ALL_DEAD_LETTERS = ("staged pieces below the committed position {pos} are gone (deleted by someone "
                     "else), and every record they covered is in dead letters: nothing is lost")


def nothing_ends_at(pos: int | None, pieces: Sequence[PieceRef], held_end: int | None) -> bool:
    """Whether no staged piece ends at the committed position ``pos`` and no final (or rolled)
    file reaches it (``held_end``: the newest one's end): with a "staged" note, the case where
    :func:`dead_letters_cover` decides between going on and a stop."""
    return (pos is not None and not any(p.to_pos == pos for p in pieces)
            and (held_end is None or held_end < pos))


def dead_letters_cover(
    reach: int | None,
    pos: int,
    dead_letters: Sequence[tuple[str, int, int]],
    records: Mapping[str, int],
    moved_in: int | None,
) -> bool:
    """Whether dead-letter objects holding a line for every offset of their range lead from
    ``reach`` (what S3's files and staged pieces still hold; None: nothing, so from the log's
    first offset 0, or from ``moved_in``, where the group came to this output) up to ``pos``.
    Then every record between is a dead letter, and staged pieces deleted there (a flush of bad
    records only writes one of no rows into each open file) held no row: nothing is lost, and a
    stop would page the operator for nothing (found by tests/unit/test_group_history.py)."""
    start = reach if reach is not None else moved_in if moved_in is not None else 0
    return start < pos and past_dead_letters(start, dead_letters, records) == pos


def _nothing_reaches(where: str, pos: int, reach: int | None, held: str) -> None:
    """Stop: the rows below ``pos`` were staged here when it was committed, and S3 now reaches
    only ``reach`` (``held`` says by what; None: nothing at all)."""
    again = (f"move the group's offset back to {reach} (kafka-consumer-groups --reset-offsets "
             f"--to-offset {reach})" if reach is not None
             else "move the group's offset back to the log's start (kafka-consumer-groups "
                  "--reset-offsets --to-earliest)")
    lost = f"[{reach}, {pos})" if reach is not None else f"below {pos}"
    raise IntegrityError(
        f"{where}: the committed position {pos} was committed by this consumer once the rows below "
        f"it were staged in this output, but nothing here reaches it any more: {held}. Staged "
        "pieces were deleted by someone else (a lifecycle rule expiring _staging/, a clean-up, a "
        f"restore of an older copy), and the records {lost} are in no file. Nothing was changed. "
        f"To export them again, {again} while Kafka still holds them; to go on without them, move "
        f"it to {pos} the same way (a reset by hand is the operator's decision, and the next run "
        "goes on from there)."
    )


def _every_file_reaches(files: Mapping[tuple[str, int], list[PieceRef]], end: int) -> bool:
    """Whether every open bucket file with pieces chains from its start to ``end``, or starts at
    or after it. After a forward reset (no file reaches the position) the owner's files are
    anchored at the highest such end: a flush cut short writes the files it opens first, so the
    newest chain end can be a piece of that flush, never committed, while the owner's files
    still end where it started. Anchoring there took them for a fenced member's leftovers and
    deleted their committed rows (found by tests/unit/test_group_history.py). When no end fits
    (a zombie's file in the way), the newest chain end is the anchor, as before."""
    for (_bucket, start), pieces in files.items():
        if not pieces or start >= end:
            continue
        chain = chain_ending_at(pieces, end)
        if not chain or chain[0].from_pos != start:
            return False
    return True


def _open_files_gone(where: str, pos: int) -> None:
    """Stop: under --partition-by a bucket file rolled at ``pos`` while other bucket files stayed
    open (the position's note says so), and S3 holds no staged piece of them any more."""
    raise IntegrityError(
        f"{where}: a bucket file rolled at the committed position {pos} while other bucket files "
        "stayed open, and S3 holds no staged piece of those any more: deleted by someone else (a "
        "lifecycle rule expiring _staging/, a clean-up). Their records, from the files' starts up "
        f"to {pos}, are in no file, and going on would skip them without a word. Nothing was "
        f"changed. A reset below {pos} is refused (a bucket file rolled there): export the range "
        f"they held with `consumer replay` to another prefix, then commit {pos} by hand "
        f"(kafka-consumer-groups --reset-offsets --to-offset {pos}), which clears this consumer's "
        "note, to go on without them here."
    )


def _stranded(where: str, committed: int | None, stranded: list[PieceRef]) -> None:
    ranges = ", ".join(f"[{p.from_pos}, {p.to_pos}) of file {p.file_start}" for p in sorted(stranded)[:8])
    raise IntegrityError(
        f"{where}: staged pieces below the committed position {committed} do not chain to it and no "
        f"final file holds them: {ranges}{' …' if len(stranded) > 8 else ''}. A piece was probably "
        "removed by someone else. Nothing was deleted. Inspect with `consumer verify`; to accept "
        "the gap, move the listed pieces out of _staging/ (they are valid Parquet files) and restart."
    )


def _adopt(pieces: Sequence[PieceRef], last_final_end: int | None) -> int | None:
    """The position S3 proves durable when the group has none: the newest chain's end, else the
    newest final file's end."""
    best = last_final_end
    if pieces:
        newest = max(p.file_start for p in pieces)
        if last_final_end is None or newest >= last_final_end:
            longest = _longest_chain([p for p in pieces if p.file_start == newest], newest)
            if longest:
                best = longest[-1].to_pos
    return best


def _longest_chain(pieces: list[PieceRef], file_start: int) -> list[PieceRef]:
    """Contiguous pieces from ``file_start`` reaching the furthest position (fewest pieces there)."""
    ends = sorted({p.to_pos for p in pieces if p.from_pos < p.to_pos}, reverse=True)
    for end in ends:
        chain = chain_ending_at(pieces, end)
        if chain and chain[0].file_start == file_start:
            return chain
    return []


def chain_ending_at(pieces: list[PieceRef], end: int) -> list[PieceRef] | None:
    """Pieces of one file, contiguous from the file's first position up to ``end``, in order.

    Several chains can exist when a zombie staged alternative ranges; any of them holds exactly
    the records at positions ``[file start, end)`` (Kafka positions are immutable), so the one with
    the fewest pieces is chosen, deterministically. When chains of several files reach ``end`` the
    newest file wins: a file starts only after the previous one's roll, so older ones are leftovers.
    Breadth-first over positions (no recursion: a file may hold thousands of pieces).
    """
    by_file: dict[int, dict[int, list[PieceRef]]] = {}
    for p in pieces:
        if p.from_pos < p.to_pos:
            by_file.setdefault(p.file_start, {}).setdefault(p.to_pos, []).append(p)
    for file_start in sorted(by_file, reverse=True):
        by_to = by_file[file_start]
        if end not in by_to or end <= file_start:
            continue
        # BFS backwards from `end`: the first time `file_start` is reached uses the fewest pieces.
        step: dict[int, PieceRef] = {}
        frontier = [end]
        seen = {end}
        while frontier and file_start not in seen:
            nxt: list[int] = []
            for pos in frontier:
                for piece in sorted(by_to.get(pos, []), key=lambda r: r.from_pos):
                    prev = piece.from_pos
                    if prev < file_start or prev in seen:
                        continue
                    seen.add(prev)
                    step[prev] = piece
                    nxt.append(prev)
            frontier = sorted(nxt)
        if file_start in seen:
            chain = []
            pos = file_start
            while pos != end:
                piece = step[pos]
                chain.append(piece)
                pos = piece.to_pos
            return chain
    return None


@dataclass(frozen=True)
class BucketedPlan:
    """Recovery of a partition in the time-bucketed layout: one plain plan per bucket, one position."""

    position: int | None
    commit: int | None = None
    buckets: dict[str, RecoveryPlan] = field(default_factory=dict)
    delete: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    staged_gone: bool = False  # as RecoveryPlan's


def one_flush_only(
    pieces: Sequence[PieceRef], finals: dict[str, tuple[set[int], int | None]]
) -> tuple[int, int] | None:
    """``(from, to)`` when every open bucket file holds one piece, all of ``[from, to)``: what
    one flush leaves, the first of a file set, finished or cut short by a crash. With no committed
    position nothing else tells the two apart; the rows the pieces hold can
    (:func:`plan_bucketed_recovery`'s ``rows_of_one_flush``)."""
    open_pieces = [p for p in pieces if p.file_start not in finals.get(p.bucket, (set(), None))[0]]
    ranges = {(p.from_pos, p.to_pos) for p in open_pieces}
    files = {(p.bucket, p.file_start) for p in open_pieces}
    if len(ranges) != 1 or len(files) != len(open_pieces):
        return None
    start, end = ranges.pop()
    return (start, end) if all(start == f for _b, f in files) else None


def dead_letters_from(
    start: int | None, dead_letters: Sequence[tuple[str, int, int]]
) -> list[tuple[str, int, int]]:
    """The dead-letter objects that follow one another from ``start`` (None: the lowest one), as
    long as exactly one starts where the last ended. Under ``--partition-by`` a flush of bad
    records only, while no bucket file is open, leaves its dead-letter object and nothing else;
    with no committed position these are the candidates for :func:`past_dead_letters`."""
    by_start: dict[int, list[tuple[str, int, int]]] = {}
    for d in dead_letters:
        by_start.setdefault(d[1], []).append(d)
    at = min(by_start, default=None) if start is None else start
    run: list[tuple[str, int, int]] = []
    while at is not None and len(by_start.get(at, ())) == 1:
        d = by_start[at][0]
        run.append(d)
        at = d[2]
    return run


def past_dead_letters(
    start: int | None,
    dead_letters: Sequence[tuple[str, int, int]],
    records: Mapping[str, int],
) -> int | None:
    """``start`` moved past the dead-letter objects that follow it and hold a line for every offset
    of their range (``records``: their lines, as counted): each is all a flush of bad records only
    left, and that flush finished. A count can miss records (offsets with no record, as
    transaction markers leave) but never invent them, so an object it does not fill stops the
    move, and the records from there are read again."""
    pos = start
    for key, frm, to in dead_letters_from(start, dead_letters):
        if records.get(key) != to - frm:
            break
        pos = to
    return pos


def files_gone(
    flush_files: Mapping[str, int],
    pos: int,
    pieces: Sequence[PieceRef],
    finals: Mapping[str, tuple[set[int], int | None]],
) -> list[tuple[str, int]]:
    """(bucket, file start) of the files the flush that committed ``pos`` wrote into
    (``flush_files``, as its pieces record them) of which S3 holds neither a staged piece ending
    at ``pos`` nor a final file: a roll after that flush leaves the bucket's newest final file
    starting there and ending at ``pos``. Under ``--partition-by`` a bucket file deleted whole by
    someone else, while the others still reach ``pos``, is otherwise not seen: its rows are lost
    without a word."""
    gone = []
    for bucket, start in sorted(flush_files.items()):
        if any(p.bucket == bucket and p.file_start == start and p.to_pos == pos for p in pieces):
            continue
        starts, end = finals.get(bucket, (set(), None))
        if start in starts and end == pos:
            continue
        gone.append((bucket, start))
    return gone


def _behind_another_writer(
    where: str, pos: int, end: int, what: str, foreign: str, group: str | None
) -> IntegrityError:
    """The stop for a position below the end of ``what`` (a final file, a bucket file) that
    another writer wrote (``foreign``, from :func:`other_writer`): two writers share the prefix,
    and no one moved offsets backwards."""
    return IntegrityError(
        f"{where}: the committed position {pos} is below the end {end} of {what} {foreign}: "
        f"{ONE_WRITER}. Nothing was changed. "
        + (f"To go on with this group alone, stop the other writer, then move this group's offset "
           f"to {end} (kafka-consumer-groups --reset-offsets --to-offset {end})." if group
           else "Replay to another --output prefix.")
    )


def plan_bucketed_recovery(
    committed: int | None,
    pieces: Sequence[PieceRef],
    markers: Sequence[RollMarker],
    dead_letters: Sequence[tuple[str, int, int]],
    finals: dict[str, tuple[set[int], int | None]],
    high_water: int | None,
    *,
    where: str = "",
    staged_here: bool = False,
    rows_of_one_flush: int | None = None,
    dead_letter_records: Mapping[str, int] | None = None,
    flush_files: Mapping[str, int] | None = None,
    rolled_writer: str | None = None,
    group: str | None = None,
    moved_in: int | None = None,
    went_on: int | None = None,
    moved_to: str | None = None,
) -> BucketedPlan:
    """Decide recovery for one partition whose files are split by time bucket. Pure.

    Every flush writes one piece ``[from, to)`` into *every* open bucket file before it commits
    ``to``, so each open file of the committed owner has a chain from its start to ``C``: per
    bucket this is exactly the plain layout, and :func:`plan_recovery` decides it. What is new:

    * ``finals`` maps a bucket to (its final files' starts, the newest one's end);
      ``high_water`` is the highest end of any rolled bucket file of the partition (the
      ``_rolled/`` objects): ``C`` below it is a backward reset (stop, status 5).
    * **No committed position**: a crash mid-flush leaves some files at ``to`` and some at
      ``from`` (files opened by the flush are written first), so the position adopted is the
      *minimum* of the open files' chain ends — or, when every open file is a single piece from
      the same start (all may have been opened by the crashed flush), that start, unless
      ``rows_of_one_flush`` (the pieces' rows and dead letters of that range) shows every record
      of ``[from, to)`` is there: the flush finished (its commit expired since), and ``to`` is
      adopted. Going back to ``from`` deleted durable rows, and stopped the run for good when
      retention had deleted them from Kafka meanwhile (a group down past both offset and record
      retention). Else the high-water, else a fresh start, moved past the dead-letter objects
      that follow it and hold every record of their range (``dead_letter_records``: their line
      counts; :func:`past_dead_letters`): a flush of bad records only while no bucket file was
      open leaves nothing else, and reading them again lost them when retention had deleted them.
    * **Leftovers of a zombie**: a fenced member opens bucket files at its own flush boundaries,
      so its pieces can sit in files the owner never had. A file that does not chain to ``C``
      (nor to the forward-reset end) holds no committed row the owner's files do not also hold:
      it is deleted. Per bucket the oldest file chaining to ``C`` that starts at or after the
      bucket's newest final file is the owner's (any chain to ``C`` holds that bucket's rows of
      ``[start, C)``, so an other one is a subset of it).
    * A file with a piece ending at ``C`` but no chain to it lost a piece: stop (status 5). So
      does one with a piece ending where the open files reach before a forward reset: taken for a
      zombie's file, its pieces were deleted, and their rows with them.
    * No open file chaining to ``C``, nothing rolled reaching it, and a piece of an open file with
      ``C`` strictly inside: an offset reset backwards into a row group, as in the plain layout
      (stop, status 5, nothing changed), not a zombie's leftovers. The same for a dead-letter
      object with ``C`` strictly inside (and none ending at ``C``): with no bucket file open, all
      a flush of bad records only leaves.
    * ``staged_here`` (the commit's note: its rows were staged in this output) with no open file
      reaching ``C`` and no rolled file either: the newest pieces were deleted by someone else,
      as in the plain layout (stop, status 5). A whole bucket file deleted while another still
      reaches ``C`` is caught by the worker before this plan (:func:`files_gone`: the pieces
      name the files their flush wrote into).
    * ``rolled_writer``: who rolled the file ending at ``high_water`` (a group, a replay; None when
      not known or not read). Another writer than ``group`` is named, as in the plain layout,
      where its end is adopted and where a position below it stops the run: two writers share the
      prefix, and no one moved offsets backwards.
    * ``moved_in``, ``went_on``: as in the plain layout (:func:`below_a_move`), adopted when
      higher than what S3 holds here; ``moved_to`` as there.
    """
    foreign = other_writer(rolled_writer, group) if high_water is not None else None
    notes: list[str] = []
    files: dict[tuple[str, int], list[PieceRef]] = {}
    for p in pieces:
        files.setdefault((p.bucket, p.file_start), []).append(p)

    def is_final(bucket: str, start: int) -> bool:
        return start in finals.get(bucket, (set(), None))[0]

    open_files = {k: v for k, v in files.items() if not is_final(*k)}

    def _named_owner(bucket: str) -> int | None:
        """With no file of the bucket reaching the position: the one the flush that committed it
        wrote into (``flush_files``), still open. Its newest pieces are gone (deleted by someone
        else, with no note to say so, or an operator's reset forwards): it is the owner's file, so
        its chain is finished as a forward reset's, not deleted as a fenced member's leftovers
        (which lost its committed rows; found by tests/unit/test_group_history.py)."""
        start = (flush_files or {}).get(bucket)
        last_end = finals.get(bucket, (set(), None))[1]
        if start is None or (bucket, start) not in open_files or (last_end is not None and start < last_end):
            return None
        return start

    commit: int | None = None
    pos = committed
    if pos is None:
        chains = {k: _longest_chain(v, k[1]) for k, v in open_files.items()}
        chains = {k: c for k, c in chains.items() if c}
        if chains:
            starts = {k[1] for k in chains}
            only = one_flush_only(pieces, finals)
            if only is not None and rows_of_one_flush == only[1] - only[0]:
                pos = only[1]  # that flush finished: every record of its range is in a piece
            elif len(starts) == 1 and all(len(c) == 1 for c in chains.values()):
                pos = starts.pop()
            else:
                pos = min(c[-1].to_pos for c in chains.values())
            if high_water is not None:
                pos = max(pos, high_water)
        else:
            pos = high_water
        held = "the lowest end of the open bucket files"
        if not open_files:
            reach = past_dead_letters(pos, dead_letters, dead_letter_records or {})
            if reach != pos:
                pos, held = reach, "the end of dead-letter objects holding every record below it"
            elif pos is not None:
                held = "the end of the newest rolled bucket file"
        floor = went_on if went_on is not None else moved_in
        if floor is not None and (pos is None or pos < floor):
            pos, held = floor, ADOPTED_MOVE
        if pos is None:
            if pieces:
                _stranded(where, None, list(pieces))
            return BucketedPlan(position=None, delete=tuple(k for k, _, _ in dead_letters))
        commit = pos
        notes.append(
            f"no committed position in the group (offsets expired or deleted): adopting {pos} "
            f"from what S3 holds ({held})"
            + (f"; the newest rolled bucket file was {foreign}. If it still writes here, {ONE_WRITER}"
               if foreign and pos == high_water else "")
        )
    if high_water is not None and pos < high_water and foreign:
        raise _behind_another_writer(where, pos, high_water, "a bucket file", foreign, group)
    below_a_move(where, pos, moved_in, high_water)
    if high_water is not None and pos < high_water:
        raise IntegrityError(
            f"{where}: the committed position {pos} is below the end {high_water} of a bucket file "
            "already rolled: the group's offsets were moved backwards (reset?). Consuming again "
            "would put the same offsets into two final files, so nothing was changed. To re-export "
            "history use `consumer replay --output s3://…/another-prefix`; to continue, move the "
            f"group's offset to {high_water} (kafka-consumer-groups --reset-offsets "
            f"--to-offset {high_water})."
        )
    committed_pieces = {k: [p for p in v if p.to_pos <= pos] for k, v in open_files.items()}
    anchor: int | None = None
    if any(chain_ending_at(v, pos) for v in committed_pieces.values()):
        anchor = pos
    else:
        ends = sorted({c[-1].to_pos for k, v in committed_pieces.items() if (c := _longest_chain(v, k[1]))},
                      reverse=True)
        if ends:
            anchor = next((e for e in ends if _every_file_reaches(committed_pieces, e)), ends[0])
    if anchor != pos and (high_water is None or high_water < pos):
        # No open file reaches C and no rolled file holds the rows below it: as in the plain
        # layout, a piece of an open file with C strictly inside is the owner's row group and C a
        # reset backwards to no boundary. Taking its files for a zombie's leftovers deleted rows
        # below C (found by tests/unit/test_group_history.py).
        for (bucket, _start), v in sorted(open_files.items()):
            _refuse_a_position_inside_a_piece(f"{where} bucket {bucket}", pos, v, set())
        _refuse_a_position_inside_dead_letters(where, pos, dead_letters)
    reached = {pos} if anchor is None else {pos, anchor}  # where the owner's files reach
    delete: list[str] = []
    plans: dict[str, RecoveryPlan] = {}
    orphans = 0
    for bucket in sorted({k[0] for k in files} | {m.bucket for m in markers}):
        starts_final, last_end = finals.get(bucket, (set(), None))
        candidates = sorted(
            start for (b, start), v in committed_pieces.items()
            if b == bucket and anchor is not None and (last_end is None or start >= last_end)
            and (chain := chain_ending_at(v, anchor)) and chain[0].file_start == start
        )
        owner = candidates[0] if candidates else _named_owner(bucket)
        kept: list[PieceRef] = []
        for (b, start), v in files.items():
            if b != bucket:
                continue
            if start == owner:
                kept += v
                continue
            # A piece ending where the owner's files reach (C, or the end before a forward reset),
            # in a file with no chain to it: the piece before it was removed, not a zombie's file.
            suspect = [p for p in v if p.to_pos in reached and p.from_pos < p.to_pos]
            if suspect and not is_final(b, start) and not any(chain_ending_at(v, e) for e in reached):
                _stranded(where, pos, v)
            orphans += sum(1 for p in v if p.from_pos < pos and not is_final(b, start))
            delete += [p.key for p in v]
        kept_markers = [m for m in markers if m.bucket == bucket and m.file_start == owner]
        delete += [m.key for m in markers if m.bucket == bucket and m.file_start != owner]
        if not kept:
            continue
        plan = plan_recovery(pos, kept, kept_markers, [], starts_final, last_end,
                             where=f"{where} bucket {bucket}", moved_to=moved_to)
        notes += plan.notes
        plans[bucket] = plan
    if staged_here and anchor != pos and high_water == pos:
        # A bucket file rolled at C while others stayed open: that roll's re-commit says "staged"
        # only then, so their pieces must still reach C. All of them were deleted (a lifecycle
        # rule on _staging/): the rolled file alone was taken for all there was.
        _open_files_gone(where, pos)
    reach = max((x for x in (anchor, high_water) if x is not None), default=None)
    unreached = staged_here and anchor != pos and (high_water is None or high_water < pos)
    records = dead_letter_records or {}
    staged_gone = unreached and dead_letters_cover(reach, pos, dead_letters, records, moved_in)
    if staged_gone:
        notes.append(_ALL_DEAD_LETTERS.format(pos=pos))
    elif unreached:
        # After the buckets' plans, so that a hole further down is reported by the broken-chain
        # stop, which lists the pieces beyond it.
        if reach is None:
            held = "S3 holds no rolled bucket file and no staged piece of this partition"
        elif reach == anchor:
            held = f"the open bucket files' staged pieces end at {anchor}"
        else:
            held = f"the newest rolled bucket file ends at {high_water}"
        _nothing_reaches(where, pos, reach, held)
    if orphans:
        notes.append(
            f"{orphans} staged piece(s) in bucket files that do not chain to the committed position "
            "(a fenced member's leftovers): deleted; their rows are in the owner's files"
        )
    delete += [key for key, _frm, to in dead_letters if to > pos]
    return BucketedPlan(position=pos, commit=commit, buckets=plans, delete=tuple(delete), notes=tuple(notes),
                        staged_gone=staged_gone)
