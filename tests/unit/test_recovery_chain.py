"""Unit tests for consumer.worker._chain_ending_at: which staged pieces recovery keeps.

The chain must run from its file's first position to the committed position without gaps or
overlaps, use the fewest pieces when zombies staged alternative ranges, never include pieces past
the committed position, be None when there is a gap, and not depend on listing order.
An independent breadth-first search is the oracle for "fewest pieces".
"""

from __future__ import annotations

import itertools
import random
from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.layout import Layout, PieceRef
from consumer.worker import _chain_ending_at

LAYOUT = Layout("out")
FAST = settings(max_examples=400, deadline=None)


def piece(file_start: int, from_pos: int, to_pos: int) -> PieceRef:
    return PieceRef(file_start, from_pos, to_pos, LAYOUT.piece_key("t", 0, file_start, from_pos, to_pos))


def shortest(pieces: list[PieceRef], end: int) -> int | None:
    """Fewest pieces of any one file that chain from its start to ``end`` (BFS oracle)."""
    best: int | None = None
    for fs in sorted({p.file_start for p in pieces}):
        edges: dict[int, set[int]] = {}
        for p in pieces:
            if p.file_start == fs and p.from_pos < p.to_pos:
                edges.setdefault(p.from_pos, set()).add(p.to_pos)
        dist = {fs: 0}
        queue = deque([fs])
        while queue:
            pos = queue.popleft()
            for nxt in edges.get(pos, ()):
                if nxt not in dist and nxt <= end:
                    dist[nxt] = dist[pos] + 1
                    queue.append(nxt)
        if end in dist and end != fs and (best is None or dist[end] < best):
            best = dist[end]
    return best


def assert_valid_chain(chain: list[PieceRef], pieces: list[PieceRef], end: int) -> None:
    assert chain, "empty chain"
    fs = chain[0].file_start
    assert chain[0].from_pos == fs
    for a, b in itertools.pairwise(chain):
        assert a.to_pos == b.from_pos, (a, b)
    assert chain[-1].to_pos == end
    assert all(p.file_start == fs for p in chain)
    assert all(p.from_pos < p.to_pos <= end for p in chain)
    assert all(p in pieces for p in chain)


@st.composite
def scenario(draw: st.DrawFn) -> tuple[list[PieceRef], int, int, bool]:
    """(pieces, file_start, end, gap?) — a partition of [fs, end) plus noise."""
    fs = draw(st.integers(0, 10_000))
    length = draw(st.integers(1, 120))
    end = fs + length
    cuts = sorted(draw(st.sets(st.integers(fs + 1, end - 1), max_size=20)) if length > 1 else set())
    bounds = [fs, *cuts, end]
    chain = [piece(fs, a, b) for a, b in itertools.pairwise(bounds)]
    gap = draw(st.booleans()) and len(chain) > 0
    if gap:
        del chain[draw(st.integers(0, len(chain) - 1))]
    extras: list[PieceRef] = []
    pos = st.integers(fs, end + 40)
    # zombie alternatives inside the same file (may overlap, may bridge the gap, may pass `end`)
    for a, b in draw(st.lists(st.tuples(pos, pos), max_size=12)):
        extras.append(piece(fs, min(a, b), max(a, b)))
    # pieces strictly past the committed position
    for a, n in draw(st.lists(st.tuples(st.integers(end, end + 50), st.integers(1, 20)), max_size=5)):
        extras.append(piece(fs, a, a + n))
    # pieces of other files (older or newer), with random ranges
    for other, a, n in draw(st.lists(
        st.tuples(st.integers(0, 10_200), st.integers(0, 10_200), st.integers(1, 60)), max_size=6,
    )):
        if other != fs:
            extras.append(piece(other, max(a, other), max(a, other) + n))
    pieces = chain + extras
    draw(st.randoms(use_true_random=False)).shuffle(pieces)
    return pieces, fs, end, gap


@FAST
@given(case=scenario())
def test_chain_is_contiguous_and_shortest(case: tuple[list[PieceRef], int, int, bool]) -> None:
    pieces, _fs, end, _gap = case
    chain = _chain_ending_at(pieces, end)
    expected = shortest(pieces, end)
    if expected is None:
        assert chain is None
        return
    assert chain is not None
    assert_valid_chain(chain, pieces, end)
    assert len(chain) == expected


@FAST
@given(case=scenario())
def test_chain_of_the_committed_file_without_foreign_files(
    case: tuple[list[PieceRef], int, int, bool],
) -> None:
    pieces, fs, end, gap = case
    own = [p for p in pieces if p.file_start == fs]
    chain = _chain_ending_at(own, end)
    if not gap:
        assert chain is not None
    if chain is not None:
        assert chain[0].file_start == fs
        assert_valid_chain(chain, own, end)
    else:
        assert shortest(own, end) is None


@FAST
@given(case=scenario(), seed=st.integers(0, 2**32))
def test_chain_is_deterministic_whatever_the_listing_order(
    case: tuple[list[PieceRef], int, int, bool], seed: int
) -> None:
    pieces, _fs, end, _gap = case
    first = _chain_ending_at(pieces, end)
    shuffled = list(pieces)
    random.Random(seed).shuffle(shuffled)
    assert _chain_ending_at(shuffled, end) == first
    assert _chain_ending_at(sorted(pieces), end) == first
    assert _chain_ending_at(pieces, end) == first


@FAST
@given(case=scenario())
def test_gap_without_bridge_gives_none(case: tuple[list[PieceRef], int, int, bool]) -> None:
    pieces, fs, end, gap = case
    # keep only the (possibly gapped) partition: no zombie can bridge the hole
    own = [p for p in pieces if p.file_start == fs and p.to_pos <= end]
    if gap:
        bridged = shortest(own, end) is not None
        assert (_chain_ending_at(own, end) is not None) == bridged


def test_simple_chain() -> None:
    pieces = [piece(0, 0, 10), piece(0, 10, 20), piece(0, 20, 30)]
    assert _chain_ending_at(pieces, 30) == pieces
    assert _chain_ending_at(pieces, 20) == pieces[:2]
    assert _chain_ending_at(pieces, 25) is None  # no piece ends there


def test_zombie_alternative_with_fewer_pieces_wins() -> None:
    live = [piece(100, 100, 110), piece(100, 110, 120), piece(100, 120, 130)]
    zombie = [piece(100, 100, 120)]
    chain = _chain_ending_at(live + zombie, 130)
    assert chain == [zombie[0], live[2]]


def test_pieces_past_end_are_excluded() -> None:
    pieces = [piece(0, 0, 10), piece(0, 10, 20), piece(0, 20, 30), piece(0, 10, 40)]
    assert _chain_ending_at(pieces, 20) == pieces[:2]


def test_gap_gives_none() -> None:
    assert _chain_ending_at([piece(0, 0, 10), piece(0, 11, 20)], 20) is None
    assert _chain_ending_at([piece(0, 10, 20)], 20) is None  # does not reach the file start
    assert _chain_ending_at([], 20) is None


def test_overlapping_pieces_are_not_chained() -> None:
    assert _chain_ending_at([piece(0, 0, 12), piece(0, 10, 20)], 20) is None


def test_other_files_do_not_leak_into_the_chain() -> None:
    pieces = [piece(0, 0, 10), piece(10, 10, 20), piece(0, 10, 15)]
    assert _chain_ending_at(pieces, 20) == [piece(10, 10, 20)]
    assert _chain_ending_at(pieces, 15) == [piece(0, 0, 10), piece(0, 10, 15)]


def test_end_at_file_start_is_no_chain() -> None:
    pieces = [PieceRef(5, 5, 5, "empty"), piece(0, 0, 5)]
    assert not _chain_ending_at([pieces[0]], 5)
    assert _chain_ending_at(pieces, 5) == [pieces[1]]


def test_long_chain_does_not_hit_recursion_limit() -> None:
    """BUG (worker.py, _chain_ending_at): ``walk`` recurses once per piece, so a file with
    ≳ 1000 staged pieces raises RecursionError during recovery (1000 pieces fail, 900 pass).
    Reachable with a long-lived file of many small row groups: row-group-max-age 60 s with
    file-max-age disabled (``none``) and low traffic gives 1440 pieces a day, and early flushes
    under memory pressure make pieces smaller still. Expected: an iterative DP (positions sorted
    ascending, shortest chain per to_pos). Failing input: 1000 pieces [i, i+1) of file 0, end 1000.
    """
    pieces = [piece(0, i, i + 1) for i in range(5000)]
    chain = _chain_ending_at(pieces, 5000)
    assert chain is not None and len(chain) == 5000
