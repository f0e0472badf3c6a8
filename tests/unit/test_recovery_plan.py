"""consumer.recovery.plan_recovery: the decision recovery makes, case by case and as a property.

The property is the rule recovery must never break: a staged piece holding a committed position is
deleted only if something kept holds that position — the resumed chain, a roll the plan finishes,
or a final file. Otherwise the plan stops (IntegrityError) and deletes nothing.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from consumer.errors import IntegrityError
from consumer.kafka_names import GroupView
from consumer.layout import Layout, PieceRef, RollMarker
from consumer.recovery import (
    REPLAY_WRITER,
    BucketedPlan,
    RecoveryPlan,
    dead_letters_from,
    files_gone,
    one_flush_only,
    other_writer,
    past_dead_letters,
    plan_bucketed_recovery,
    plan_recovery,
    still_writing,
)

L = Layout("out")


def piece(file_start: int, a: int, b: int) -> PieceRef:
    return PieceRef(file_start, a, b, L.piece_key("t", 0, file_start, a, b))


def marker(file_start: int, end: int) -> RollMarker:
    return RollMarker(file_start, end, L.roll_marker_key("t", 0, file_start, end))


def chain(file_start: int, *bounds: int) -> list[PieceRef]:
    points = [file_start, *bounds]
    return [piece(file_start, a, b) for a, b in itertools.pairwise(points)]


def plan(
    committed: int | None,
    pieces: list[PieceRef],
    markers: list[RollMarker] = (),  # type: ignore[assignment]
    dead: list[tuple[str, int, int]] = (),
    finals: list[int] = (),  # type: ignore[assignment]
    last_end: int | None = None,
    staged_here: bool = False,
) -> RecoveryPlan:
    return plan_recovery(committed, pieces, markers, dead, finals, last_end, where="t[0]",
                         staged_here=staged_here)


def test_fresh_partition() -> None:
    p = plan(None, [])
    assert p.position is None and not p.delete and not p.finish and not p.resume


def test_normal_restart_resumes_the_chain_and_deletes_uncommitted_pieces() -> None:
    pieces = [*chain(0, 10, 20), piece(0, 20, 30)]  # [20, 30) was PUT, never committed
    p = plan(20, pieces, dead=[("dl-a", 5, 10), ("dl-b", 20, 30)])
    assert p.position == 20 and [x.to_pos for x in p.resume] == [10, 20]
    assert set(p.delete) == {pieces[2].key, "dl-b"}


def test_marker_at_the_committed_position_finishes_the_roll() -> None:
    p = plan(20, chain(0, 10, 20), [marker(0, 20)])
    assert [(f.file_start, f.end, f.needs_marker) for f in p.finish] == [(0, 20, False)]
    assert not p.resume


def test_zombie_alternatives_and_straddling_pieces_are_covered_by_the_chain() -> None:
    pieces = [*chain(0, 50, 100), piece(0, 50, 120), piece(0, 80, 90), marker_free := piece(0, 100, 130)]
    p = plan(100, pieces, [marker(0, 80)])
    assert [x.key for x in p.resume] == [pieces[0].key, pieces[1].key]
    assert set(p.delete) == {pieces[2].key, pieces[3].key, marker_free.key, marker(0, 80).key}


def test_forward_reset_finishes_the_staged_file() -> None:
    p = plan(100, chain(0, 10, 20, 30))
    assert p.position == 100 and not p.resume and not p.delete
    assert [(f.file_start, f.end, f.needs_marker) for f in p.finish] == [(0, 30, True)]
    assert any("moved forward" in n for n in p.notes)


def test_a_run_back_past_the_staged_file_says_where_the_rows_between_are_not_that_they_were_skipped() -> None:
    p = plan_recovery(100, chain(0, 10, 20, 30), [], [], [], None, where="t[0]", moved_to="s3://b/new")
    assert [(f.file_start, f.end) for f in p.finish] == [(0, 30)]
    assert [n for n in p.notes if "skipped" in n] == []
    assert any("the group wrote [30, 100) to s3://b/new before it came back here" in n for n in p.notes)


def test_expired_offsets_adopt_the_staged_chain() -> None:
    p = plan(None, chain(40, 50, 60), finals=[0], last_end=40)
    assert p.position == 60 and p.commit == 60 and [x.to_pos for x in p.resume] == [50, 60]


def test_expired_offsets_with_only_final_files_adopt_their_end() -> None:
    p = plan(None, [], finals=[0, 40], last_end=70)
    assert p.position == 70 and p.commit == 70


def test_backward_reset_into_final_files_stops() -> None:
    with pytest.raises(IntegrityError, match="moved backwards"):
        plan(25, [], finals=[0], last_end=50)


def test_a_final_file_of_another_group_names_that_group_instead_of_a_reset() -> None:
    """Two groups writing one prefix (a copied deployment, a renamed group started before the old
    one stopped) look like a backward reset to the one that falls behind: say what it is."""
    with pytest.raises(IntegrityError, match=r"written by consumer group 'old' \(this run is group 'new'\): "
                       r"one output prefix belongs to one consumer group.*offset to 50"):
        plan_recovery(25, [], [], [], [0], 50, where="t[0]", last_final_writer="old", group="new")
    with pytest.raises(IntegrityError, match="moved backwards"):  # its own file: a reset indeed
        plan_recovery(25, [], [], [], [0], 50, where="t[0]", last_final_writer="new", group="new")


def test_adopting_a_position_from_another_groups_files_names_that_group() -> None:
    """A renamed group adopts what S3 proves (as with expired offsets), and says whose it was."""
    p = plan_recovery(None, [], [], [], [0], 70, where="t[0]", last_final_writer="old", group="new")
    assert p.position == 70 and p.commit == 70
    assert any("written by consumer group 'old'" in n and "If it still writes here" in n for n in p.notes)
    same = plan_recovery(None, [], [], [], [0], 70, where="t[0]", last_final_writer="new", group="new")
    assert not any("written by" in n for n in same.notes)


@pytest.mark.parametrize(
    ("written_by", "group", "said"),
    [
        ("a", "b", "written by consumer group 'a' (this run is group 'b')"),
        ("a", None, "written by consumer group 'a' (this run is a replay)"),
        ("a", "a", None),
        (None, "b", None),  # written before pieces named their writer
        (None, None, None),
        (REPLAY_WRITER, "b", "written by a replay (this run is group 'b')"),
        (REPLAY_WRITER, None, None),
    ],
)
def test_other_writer(written_by: str | None, group: str | None, said: str | None) -> None:
    assert other_writer(written_by, group) == said


def test_backward_reset_inside_a_staged_row_group_stops_and_names_both_boundaries() -> None:
    """Committed 55 inside the durable piece [50, 60) of the open file: resuming would read 55..59
    again, finishing [0, 60) would publish them before reading them again."""
    with pytest.raises(IntegrityError, match=r"inside the durable row group \[50, 60\).*offset to 50.*to 60"):
        plan(55, chain(0, 10, 20, 30, 40, 50, 60))
    p = plan(50, chain(0, 10, 20, 30, 40, 50, 60))  # on a boundary: resume there, as before
    assert p.position == 50 and p.resume[-1].to_pos == 50 and not p.finish


def test_a_removed_piece_stops_and_deletes_nothing() -> None:
    pieces = chain(0, 10, 20, 30)
    with pytest.raises(IntegrityError, match="do not chain"):
        plan(30, [pieces[0], pieces[2]])


def test_a_removed_middle_piece_is_not_mistaken_for_a_forward_reset() -> None:
    pieces = chain(0, 10, 20, 30)
    with pytest.raises(IntegrityError):
        plan(40, [pieces[0], pieces[2]])  # [0,10) chains, [20,30) would be lost by finishing at 10


def test_a_position_committed_after_staging_that_nothing_reaches_stops_and_names_what_is_lost() -> None:
    pieces = chain(0, 10, 20)  # [20, 30) was deleted by someone else
    with pytest.raises(IntegrityError, match=r"the records \[20, 30\) are in no file"):
        plan(30, pieces, staged_here=True)
    with pytest.raises(IntegrityError, match=r"newest final file ends at 50.*records \[50, 70\)"):
        plan(70, chain(0, 10, 20), finals=[0], last_end=50, staged_here=True)
    with pytest.raises(IntegrityError, match=r"records below 30 are in no file.*--to-earliest"):
        plan(30, [], staged_here=True)
    # The same output read as before when the commit says nothing (an operator's reset forwards).
    assert plan(30, pieces).finish[0].end == 20
    assert plan(30, []).position == 30
    # What reaches the position is no reason to stop.
    assert plan(20, pieces, staged_here=True).resume == tuple(pieces)
    assert plan(50, [], finals=[0], last_end=50, staged_here=True).position == 50


def test_staged_pieces_gone_where_dead_letters_hold_every_record_lose_nothing_and_go_on() -> None:
    """A flush of bad records only writes a piece of no rows into each open file and a dead-letter
    object. When a clean-up deletes such pieces, dead letters holding a line for every offset of
    their range up to the position show nothing was lost: the run goes on. It stopped, saying the
    records were in no file, though each was a dead letter (found by
    tests/unit/test_group_history.py). One line short, or a gap, and it still stops."""
    dead = [("dl-a", 0, 4), ("dl-b", 4, 5)]

    def staged_here(records: dict[str, int], bucketed: bool) -> RecoveryPlan | BucketedPlan:
        if bucketed:
            return plan_bucketed_recovery(5, [], [], dead, {}, None, staged_here=True,
                                          dead_letter_records=records)
        return plan_recovery(5, [], [], dead, [], None, where="t[0]", staged_here=True,
                             dead_letter_records=records)

    for bucketed in (False, True):
        p = staged_here({"dl-a": 4, "dl-b": 1}, bucketed)
        assert p.position == 5
        assert any("every record they covered is in dead letters" in n for n in p.notes), p.notes
        # ... and the position is committed again saying so ("rolled"): see PartitionWorker
        assert p.staged_gone
        with pytest.raises(IntegrityError, match="records below 5 are in no file"):
            staged_here({"dl-a": 3, "dl-b": 1}, bucketed)  # a good record was in the piece
        with pytest.raises(IntegrityError, match="in no file"):
            staged_here({"dl-b": 1}, bucketed)  # not counted: not known
    assert not plan(5, [], dead=dead).staged_gone
    # From what staged pieces still hold: the file is finished where its rows end, and said so.
    rows = chain(0, 2)
    p = plan_recovery(5, rows, [], [("dl-c", 2, 5)], [], None, where="t[0]", staged_here=True,
                      dead_letter_records={"dl-c": 3})
    assert [(f.file_start, f.end) for f in p.finish] == [(0, 2)]
    assert "all in dead letters" in p.notes[0] and p.staged_gone
    with pytest.raises(IntegrityError, match=r"records \[2, 5\) are in no file"):
        plan_recovery(5, rows, [], [("dl-c", 2, 5)], [], None, where="t[0]", staged_here=True,
                      dead_letter_records={"dl-c": 2})


def test_a_decided_roll_whose_pieces_are_all_gone_stops_unless_something_kept_holds_its_range() -> None:
    """A marker says a roll of the file [0, 4) was decided (a recovery that finishes a file past
    which the position was moved), and a clean-up then deleted every piece of that file. With no
    "staged" note at the position, the marker was deleted as a superseded decision, and the rows
    of [0, 4) were in no file without a word. Now that stops, changing nothing. A zombie's marker
    whose range the owner's chain or final files hold still goes."""
    with pytest.raises(IntegrityError, match=r"roll of the file \[0, 4\) was decided.*in no file"):
        plan(5, [], [marker(0, 4)])
    with pytest.raises(IntegrityError, match=r"records \[2, 4\)"):
        plan(5, [], [marker(2, 4)], finals=[0], last_end=2)  # ... above the newest final file
    # Held: by the final files, by the chain kept (a zombie's marker), or past the position.
    assert plan(5, [], [marker(1, 4)], finals=[0], last_end=5).position == 5
    assert plan(5, [], [marker(0, 4)], finals=[0], last_end=4).position == 5  # that file is final
    owner = chain(0, 2, 4, 6)
    p = plan(6, owner, [marker(2, 4)])
    assert marker(2, 4).key in p.delete and p.resume == tuple(owner)
    assert marker(0, 8).key in plan(6, owner, [marker(0, 8)]).delete


def test_a_hole_below_staged_pieces_is_still_the_broken_chain_stop_that_lists_them() -> None:
    pieces = chain(0, 10, 20, 30)
    with pytest.raises(IntegrityError, match="do not chain"):
        plan(30, [pieces[0], pieces[2]], staged_here=True)


def test_leftovers_of_a_final_file_are_deleted() -> None:
    old = chain(0, 10, 20)
    p = plan(25, [*old, *chain(20, 25)], [marker(0, 20)], finals=[0], last_end=20)
    assert [x.to_pos for x in p.resume] == [25]
    assert {old[0].key, old[1].key, marker(0, 20).key} <= set(p.delete)


def test_an_older_decided_roll_without_its_final_file_is_finished() -> None:
    p = plan(25, [*chain(0, 10, 20), *chain(20, 25)], [marker(0, 20)])
    assert [(f.file_start, f.end) for f in p.finish] == [(0, 20)]
    assert [x.to_pos for x in p.resume] == [25]


# -- the property ----------------------------------------------------------------------------------
@st.composite
def scenario(draw: st.DrawFn) -> tuple[int | None, list[PieceRef], list[RollMarker], list[int], int | None]:
    """A partition's history: final files up to F, an open file's chain, zombie alternatives,
    uncommitted pieces, some pieces removed, and an operator's reset of the committed position."""
    final_end = draw(st.sampled_from([None, 20, 40]))
    start = final_end or 0
    steps = draw(st.lists(st.integers(1, 9), min_size=0, max_size=6))
    bounds, pos = [], start
    for s in steps:
        pos += s
        bounds.append(pos)
    pieces = chain(start, *bounds)
    extra = draw(st.lists(st.tuples(st.integers(0, 60), st.integers(1, 15)), max_size=4))
    pieces += [piece(start, start + a, start + a + b) for a, b in extra]
    removed = draw(st.sets(st.integers(0, max(0, len(pieces) - 1)), max_size=2))
    pieces = [p for i, p in enumerate(pieces) if i not in removed]
    committed = draw(st.one_of(st.none(), st.integers(0, pos + 20), st.sampled_from([pos])))
    markers = [
        marker(start, m) for m in draw(st.lists(st.sampled_from([*bounds, pos + 3]), max_size=2))
    ]
    finals = [0] if final_end else []
    return committed, pieces, markers, finals, final_end


@settings(max_examples=600, deadline=None)
@given(scenario())
def test_a_committed_position_is_never_deleted_unless_something_kept_holds_it(
    case: tuple[int | None, list[PieceRef], list[RollMarker], list[int], int | None],
) -> None:
    committed, pieces, markers, finals, final_end = case
    try:
        p = plan(committed, pieces, markers, finals=finals, last_end=final_end)
    except IntegrityError:
        return  # stopping is always allowed; it deletes nothing
    pos = p.position
    if pos is None:
        assert not [k for k in p.delete if k.endswith(".piece")]
        return
    held: set[int] = set(range(final_end or 0))
    for x in p.resume:
        held |= set(range(x.from_pos, x.to_pos))
    for f in p.finish:
        for x in f.chain:
            held |= set(range(x.from_pos, x.to_pos))
    by_key = {x.key: x for x in pieces}
    for key in p.delete:
        x = by_key.get(key)
        if x is None:
            continue  # a marker or a dead letter
        committed_positions = set(range(x.from_pos, min(x.to_pos, pos)))
        assert committed_positions <= held, (key, sorted(committed_positions - held))
    # Nothing at or past the position (read again from Kafka) is kept: that would be a duplicate.
    assert all(f.end <= pos for f in p.finish), [(f.file_start, f.end) for f in p.finish]
    assert not p.resume or p.resume[-1].to_pos == pos
    # The resumed chain and finished rolls are contiguous from their file's start.
    for ch in [list(p.resume), *[list(f.chain) for f in p.finish]]:
        if ch:
            assert ch[0].from_pos == ch[0].file_start
            assert all(a.to_pos == b.from_pos for a, b in itertools.pairwise(ch))
    if p.resume:
        assert p.resume[-1].to_pos == pos


@settings(max_examples=400, deadline=None)
@given(scenario())
# A piece overlapping the chain's end ([3, 6) beside [4, 5)) is not a chain to the position.
@example((6, [*chain(0, 1, 2, 4, 5), piece(0, 3, 6)], [], [], None))
def test_a_position_committed_after_staging_goes_on_only_from_what_s3_holds(
    case: tuple[int | None, list[PieceRef], list[RollMarker], list[int], int | None],
) -> None:
    """When the commit says its rows were staged here, a plan that goes on resumes a chain ending
    at the position, finishes a roll there, or starts at a final file's end: never past a gap."""
    committed, pieces, markers, finals, final_end = case
    if committed is None:
        return
    try:
        p = plan(committed, pieces, markers, finals=finals, last_end=final_end, staged_here=True)
    except IntegrityError:
        return
    reached = {final_end} | {f.end for f in p.finish} | ({p.resume[-1].to_pos} if p.resume else set())
    assert p.position in reached


def test_a_bucketed_position_committed_after_staging_stops_at_a_piece_that_only_overlaps() -> None:
    """The same rule in the time-bucketed layout: a piece [3, 6) overlapping the chain that ends
    at 5 does not reach 6, so the run stops; a hole further down is the broken-chain stop."""
    def bucket(pieces: list[PieceRef]) -> list[PieceRef]:
        return [replace(p, bucket="2026-12-04") for p in pieces]

    overlapping = bucket([*chain(0, 1, 2, 4, 5), piece(0, 3, 6)])
    with pytest.raises(IntegrityError, match=r"the records \[5, 6\) are in no file"):
        plan_bucketed_recovery(6, overlapping, [], [], {}, None, staged_here=True)
    with pytest.raises(IntegrityError, match=r"do not chain to it .*\[4, 6\) of file 0"):
        plan_bucketed_recovery(6, bucket([*chain(0, 2), piece(0, 4, 6)]), [], [], {}, None,
                               staged_here=True)


def test_a_bucketed_forward_reset_stops_at_a_file_whose_first_piece_is_gone() -> None:
    """The offset moved forward to 12 (no note); hour b's file lost its piece [0, 5). Its piece
    [5, 10) ends where hour a's file reaches, with no chain to it: not a zombie's file to delete
    (its rows are in no other file) but a removed piece, so stop. A zombie's file, which chains
    from its own start, is still deleted."""
    a = [replace(p, bucket="a") for p in chain(0, 5, 10)]
    b = [replace(piece(0, 5, 10), bucket="b")]
    with pytest.raises(IntegrityError, match=r"do not chain to it .*\[5, 10\) of file 0"):
        plan_bucketed_recovery(12, a + b, [], [], {}, None)
    zombie = [replace(p, bucket="b") for p in chain(5, 8)]
    plan = plan_bucketed_recovery(12, a + zombie, [], [], {}, None)
    assert {p.key for p in zombie} <= set(plan.delete)


def test_a_bucket_file_the_last_flush_wrote_into_is_finished_not_deleted_when_it_falls_short() -> None:
    """Position 10 with no note; hour a's file reaches it, hour b's file only 5. Taken alone, b's
    file looks like a fenced member's leftovers (deleted). When the pieces ending at 10 name b's
    file as one their flush wrote into (``flush_files``), it is the owner's: its chain is finished
    as a forward reset's, and its rows are kept."""
    a = [replace(p, bucket="a") for p in chain(0, 5, 10)]
    b = [replace(p, bucket="b") for p in chain(0, 5)]
    unnamed = plan_bucketed_recovery(10, a + b, [], [], {}, None)
    assert {p.key for p in b} <= set(unnamed.delete)
    named = plan_bucketed_recovery(10, a + b, [], [], {}, None, flush_files={"a": 0, "b": 0})
    assert not {p.key for p in b} & set(named.delete)
    assert [(f.file_start, f.end) for f in named.buckets["b"].finish] == [(0, 5)]


def test_one_flush_s_pieces_are_kept_without_a_committed_position_only_when_all_its_records_are_in() -> None:
    """No committed position, and each open bucket file holds one piece [0, 3): one flush, cut
    short by a crash (go back to 0) or finished with its commit expired since (keep it, adopt 3).
    The rows the pieces and dead letters hold tell them apart; a missing count goes back, as before."""
    pieces = [replace(piece(0, 0, 3), bucket=b) for b in ("hr=04", "hr=06")]
    assert one_flush_only(pieces, {}) == (0, 3)
    assert one_flush_only([*pieces, replace(piece(0, 3, 4), bucket="hr=04")], {}) is None  # a chain
    assert one_flush_only([*pieces, replace(piece(2, 2, 3), bucket="hr=08")], {}) is None  # other starts
    assert plan_bucketed_recovery(None, pieces, [], [], {}, None, rows_of_one_flush=3).position == 3
    for rows in (None, 2):
        cut_short = plan_bucketed_recovery(None, pieces, [], [], {}, None, rows_of_one_flush=rows)
        assert cut_short.position == 0
        assert set(cut_short.delete) == {p.key for p in pieces}


def test_dead_letter_objects_that_hold_every_record_move_an_adopted_bucketed_position() -> None:
    """No committed position and no open bucket file: the flushes after the last roll had bad
    records only, so their dead-letter objects are all that holds [10, 16). Those whose lines
    account for every offset of their range finished; the adopted position moves past them and
    they stay. The first one short of its range (an offset with no record), or two objects from
    one start (whose are they?), stop the move: the records from there are read again."""
    dead = [(f"dl{a}", a, b) for a, b in ((10, 12), (12, 14), (14, 16))]
    assert dead_letters_from(10, dead) == dead
    assert dead_letters_from(None, dead) == dead
    assert dead_letters_from(11, dead) == []
    assert dead_letters_from(10, [*dead, ("other", 12, 13)]) == dead[:1]
    full = {"dl10": 2, "dl12": 2, "dl14": 2}
    assert past_dead_letters(10, dead, full) == 16
    assert past_dead_letters(10, dead, {**full, "dl12": 1}) == 12
    assert past_dead_letters(None, dead, full) == 16
    assert past_dead_letters(None, [], {}) is None

    moved = plan_bucketed_recovery(None, [], [], dead, {}, 10, dead_letter_records=full)
    assert (moved.position, moved.commit, moved.delete) == (16, 16, ())
    assert "dead-letter objects" in moved.notes[0]
    short = plan_bucketed_recovery(None, [], [], dead, {}, 10, dead_letter_records={**full, "dl12": 1})
    assert (short.position, set(short.delete)) == (12, {"dl12", "dl14"})
    never_rolled = plan_bucketed_recovery(None, [], [], dead, {}, None, dead_letter_records=full)
    assert never_rolled.position == 16
    # Not counted (or an open file exists, where a flush of bad records leaves zero-row pieces):
    # the high-water, as before.
    assert plan_bucketed_recovery(None, [], [], dead, {}, 10).position == 10
    opened = [replace(piece(16, 16, 18), bucket="hr=04")]
    assert plan_bucketed_recovery(None, opened, [], dead, {}, 10, dead_letter_records=full).position == 16


def test_a_bucketed_reset_backwards_into_a_flush_of_bad_records_only_stops() -> None:
    """With no bucket file open, the dead-letter object [10, 14) is all a flush of bad records
    left. An offset moved back to 12 used to delete it as never committed (its dead letters
    below 12 were lost); now the run stops, naming both boundaries. At a boundary it goes on, and a
    fenced member's object across the position is deleted where the owner's ends there."""
    dead = [("dl10", 10, 14), ("dl14", 14, 16)]
    with pytest.raises(IntegrityError, match=r"position 12 is inside \[10, 14\).*offset to 10; .* to 14"):
        plan_bucketed_recovery(12, [], [], dead, {}, 10)
    with pytest.raises(IntegrityError, match=r"inside \[10, 14\)"):
        plan_bucketed_recovery(12, [], [], dead, {}, None)
    assert set(plan_bucketed_recovery(10, [], [], dead, {}, 10).delete) == {"dl10", "dl14"}
    assert plan_bucketed_recovery(14, [], [], dead, {}, 10).delete == ("dl14",)
    zombie = [*dead, ("zombie", 12, 18)]
    assert set(plan_bucketed_recovery(14, [], [], zombie, {}, 10).delete) == {"dl14", "zombie"}


def test_a_reset_backwards_into_a_flush_of_bad_records_only_stops_in_the_plain_layout_too() -> None:
    """A file whose records were all bad publishes nothing when it rolls: its dead-letter objects
    are all that holds [0, 4). An offset moved back to 1 used to delete [0, 4) as never committed
    (offset 0's dead letter lost); now it stops. At a boundary of any object it goes on: 0 reads it
    all again; 4 (where the object ends, not a chain) keeps it and deletes a fenced member's [2, 6)."""
    dead = [("dl0", 0, 4)]
    with pytest.raises(IntegrityError, match=r"position 1 is inside \[0, 4\).*offset to 0; .* to 4"):
        plan(1, [], dead=dead)
    assert plan(0, [], dead=dead).delete == ("dl0",)
    assert plan(4, [], dead=[*dead, ("zombie", 2, 6)]).delete == ("zombie",)
    # A final file ending at the position is a boundary too.
    assert plan(6, [], dead=[("dl4", 4, 8)], finals=[0], last_end=6).position == 6
    # With expired offsets the final file's end moves past the objects that hold every record of
    # their range; an open file (whose zero-row pieces hold such flushes) leaves it as it was.
    after = [("dl6", 6, 8), ("dl8", 8, 9)]
    moved = plan_recovery(None, [], [], after, [0], 6, dead_letter_records={"dl6": 2, "dl8": 1})
    assert (moved.position, moved.commit, moved.delete) == (9, 9, ())
    assert plan_recovery(None, [], [], after, [0], 6, dead_letter_records={"dl6": 1}).position == 6
    opened = plan_recovery(None, chain(9, 12), [], after, [0], 6, dead_letter_records={"dl6": 2, "dl8": 1})
    assert opened.position == 12 and opened.delete == ()


def test_files_gone_are_those_of_the_last_flush_with_no_piece_and_no_final_file_at_the_position() -> None:
    """The flush that committed 6 wrote into hr=04 (from 0), hr=05 (from 2) and hr=06 (from 4).
    hr=05 rolled right after it (its final file [2, 6)); hr=06's pieces are gone."""
    flush = {"hr=04": 0, "hr=05": 2, "hr=06": 4}
    pieces = [replace(p, bucket="hr=04") for p in chain(0, 2, 4, 6)]
    finals = {"hr=05": ({2}, 6), "hr=06": (set(), None)}
    assert files_gone(flush, 6, pieces, finals) == [("hr=06", 4)]
    assert files_gone(flush, 6, [*pieces, replace(piece(4, 4, 6), bucket="hr=06")], finals) == []
    # A final file of the bucket that ends elsewhere is not that flush's file.
    assert files_gone(flush, 6, pieces, {**finals, "hr=05": ({2}, 5)}) == [("hr=05", 2), ("hr=06", 4)]


def test_a_bucketed_reset_backwards_into_a_row_group_stops_and_changes_nothing() -> None:
    """As in the plain layout: an offset moved back strictly inside the staged row groups of the
    open bucket files stops the run, naming both boundaries. It used to take those files for a
    zombie's leftovers (nothing chained to the position), delete them, and lose the rows below the
    position (found by tests/unit/test_group_history.py); a boundary goes on as before."""
    pieces = [replace(p, bucket=b) for b in ("hr=08", "hr=09") for p in chain(0, 2, 4)]
    with pytest.raises(IntegrityError, match=r"position 1 is inside the durable row group \[0, 2\)"):
        plan_bucketed_recovery(1, pieces, [], [], {}, None)
    with pytest.raises(IntegrityError, match=r"position 3 is inside the durable row group \[2, 4\)"):
        plan_bucketed_recovery(3, pieces, [], [], {}, None, staged_here=True)
    at_a_boundary = plan_bucketed_recovery(2, pieces, [], [], {}, None)
    assert at_a_boundary.position == 2
    assert {p.to_pos for b in at_a_boundary.buckets.values() for p in b.resume} == {2}
    # Past everything a rolled file holds, the same; at the rolled end, a zombie's piece across it goes.
    zombie = [replace(piece(1, 1, 4), bucket="hr=09")]
    assert plan_bucketed_recovery(2, zombie, [], [], {}, 2).delete == (zombie[0].key,)


@pytest.mark.parametrize(
    ("view", "how"),
    [
        (GroupView(stable=True, members={}), None),
        (GroupView(stable=False, members={}), None),
        (GroupView(stable=True, members={"m": frozenset({("t", 1)})}), None),
        (GroupView(stable=True, members={"m": frozenset({("t", 0)})}),
         "it has 1 member, and one of them owns this partition"),
        (GroupView(stable=True, members={"m": frozenset(), "n": frozenset({("t", 0), ("t", 1)})}),
         "it has 2 members, and one of them owns this partition"),
        (GroupView(stable=False, members={"m": frozenset()}), "it has 1 member and is rebalancing"),
    ],
)
def test_still_writing_a_partition(view: GroupView, how: str | None) -> None:
    assert still_writing(view, ("t", 0)) == how


# --- where the group moved to this output (``_moved/``) -------------------------------------------


@pytest.mark.parametrize("layout", ["plain", "bucketed"])
def test_a_position_below_where_the_group_moved_here_is_a_reset_backwards(layout: str) -> None:
    """The group moved to this output at 40 (``--output`` changed): the records below are in the
    other one. Its offsets moved back to 10 since, while this output holds only staged pieces (no
    final file refuses it): consuming from 10 would export [10, 40) here once more."""
    pieces = chain(40, 50, 60)
    with pytest.raises(IntegrityError, match=r"below 40, where the group moved to this output.*"
                                             r"--to-offset 40.*_moved/"):
        if layout == "plain":
            plan_recovery(10, pieces, [], [], [], None, where="t[0]", moved_in=40)
        else:
            plan_bucketed_recovery(10, pieces, [], [], {}, None, where="t[0]", moved_in=40)
    # at or past it: as without a move
    assert plan_recovery(60, pieces, [], [], [], None, moved_in=40).resume == tuple(pieces)
    assert plan_bucketed_recovery(60, pieces, [], [], {}, None, moved_in=40).position == 60


def test_a_reset_below_a_final_file_as_well_is_said_as_a_reset_within_this_output() -> None:
    with pytest.raises(IntegrityError, match="below the end 50 of a final file"):
        plan_recovery(10, [], [], [], [40], 50, where="t[0]", moved_in=40)


@pytest.mark.parametrize("layout", ["plain", "bucketed"])
def test_expired_offsets_adopt_where_the_group_moved_here_when_nothing_here_reaches_past_it(
    layout: str,
) -> None:
    """A move at a quiet time leaves nothing here but the move's position; with the offsets expired
    since, a fresh start (auto.offset.reset) exported the other output's records here again."""
    if layout == "plain":
        nothing = plan_recovery(None, [], [], [], [], None, moved_in=40)
        # an old file left here before the group moved away and back (at 40)
        older = plan_recovery(None, chain(0, 10, 20), [], [], [], None, moved_in=40)
        further = plan_recovery(None, chain(40, 50, 60), [], [], [], None, moved_in=40)
    else:
        nothing = plan_bucketed_recovery(None, [], [], [], {}, None, moved_in=40)
        older = plan_bucketed_recovery(None, chain(0, 10, 20), [], [], {}, None, moved_in=40)
        further = plan_bucketed_recovery(None, chain(40, 50, 60), [], [], {}, None, moved_in=40)
    assert (nothing.position, nothing.commit) == (40, 40)
    assert any("where the group went on from when it moved to this output" in n for n in nothing.notes)
    assert (older.position, older.commit) == (40, 40)
    assert (further.position, further.commit) == (60, 60)
    if layout == "plain":
        assert isinstance(older, RecoveryPlan)
        assert [(f.file_start, f.end) for f in older.finish] == [(0, 20)]  # finished as a reset forwards


def test_expired_offsets_adopt_where_the_group_went_on_without_a_note_and_going_back_is_not_refused() -> None:
    """``went_on``: a position the group went on from with no note (a reset forwards, perhaps with
    a move): adopted with the offsets expired, so that what it skipped (or what another output
    holds) is not read again; going back below it on purpose is not refused."""
    assert plan_recovery(None, chain(0, 10, 20), [], [], [], None, went_on=50).position == 50
    assert plan_recovery(None, chain(0, 10, 20), [], [], [], None, moved_in=30, went_on=50).position == 50
    assert plan_bucketed_recovery(None, [], [], [], {}, None, went_on=50).position == 50
    assert plan_recovery(30, chain(30, 40), [], [], [], None, went_on=50).position == 30
    with pytest.raises(IntegrityError, match="below 40, where the group moved"):
        plan_recovery(30, chain(30, 35), [], [], [], None, moved_in=40, went_on=50)
