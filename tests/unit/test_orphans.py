"""Partitions no member owns (consumer/orphans.py): when a static member rejoins so the group
rebalances, and that the runner does it without losing or repeating a record. The hole itself,
reproduced with real static members on the real broker: tests/integration/test_orphans.py."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs
from test_shutdown import PARTITIONS, PER_PARTITION, FakeClock, _broker, _runner

from consumer.kafka_names import GroupView
from consumer.orphans import OrphanWatch, healer, unowned
from consumer.runner import GroupRunner
from consumer.testing import MemoryBroker, MemoryConsumer, MemoryStore

ALL = [("t", p) for p in range(4)]


def view(stable: bool = True, **members: list[int]) -> GroupView:
    return GroupView(stable, {m: frozenset(("t", p) for p in ps) for m, ps in members.items()})


def test_unowned_is_what_no_member_holds() -> None:
    assert unowned(ALL, view(a=[2, 3], b=[])) == {("t", 0), ("t", 1)}
    assert unowned(ALL, view(a=[0, 1], b=[2, 3])) == frozenset()
    assert unowned(ALL, view()) == frozenset(ALL)


@given(st.dictionaries(st.text(min_size=1, max_size=8), st.sets(st.integers(0, 7), max_size=8), max_size=6))
def test_every_member_picks_the_same_healer_the_one_owning_the_fewest(members: dict[str, set[int]]) -> None:
    v = view(**{m: sorted(ps) for m, ps in members.items()})
    pick = healer(v)
    if not members:
        assert pick is None
        return
    assert pick is not None
    assert len(members[pick]) == min(len(ps) for ps in members.values())
    assert pick == min(m for m, ps in members.items() if len(ps) == len(members[pick]))
    reordered = GroupView(True, dict(reversed(list(v.members.items()))))
    assert healer(reordered) == pick


def test_the_healer_acts_once_the_same_orphans_stayed_for_the_grace() -> None:
    watch = OrphanWatch(grace=30.0)
    broken = view(a=[2, 3], b=[])  # b owns the fewest: b heals
    assert watch.look(0.0, broken, ALL, "b") == frozenset()  # first seen
    assert watch.look(20.0, broken, ALL, "b") == frozenset()  # not long enough
    assert watch.look(30.0, broken, ALL, "b") == {("t", 0), ("t", 1)}
    assert watch.look(40.0, broken, ALL, "b") == frozenset()  # just acted: another grace first
    assert watch.look(60.0, broken, ALL, "b") == {("t", 0), ("t", 1)}  # still broken: again


def test_only_the_healer_acts() -> None:
    watch = OrphanWatch(grace=30.0)
    broken = view(a=[2, 3], b=[])
    for now in (0.0, 30.0, 60.0):
        assert watch.look(now, broken, ALL, "a") == frozenset()


def test_a_rebalance_under_way_a_silent_coordinator_or_other_orphans_start_the_wait_over() -> None:
    watch = OrphanWatch(grace=30.0)
    broken = view(a=[2, 3], b=[])
    assert watch.look(0.0, broken, ALL, "b") == frozenset()
    assert watch.look(15.0, view(stable=False, a=[2, 3], b=[]), ALL, "b") == frozenset()
    assert watch.look(35.0, broken, ALL, "b") == frozenset()  # seen again from 35 s
    assert watch.look(50.0, None, ALL, "b") == frozenset()  # no answer
    assert watch.look(55.0, broken, ALL, "b") == frozenset()
    assert watch.look(70.0, view(a=[1, 2, 3], b=[]), ALL, "b") == frozenset()  # another set
    assert watch.look(99.0, view(a=[1, 2, 3], b=[]), ALL, "b") == frozenset()
    assert watch.look(100.0, view(a=[1, 2, 3], b=[]), ALL, "b") == {("t", 0)}
    assert watch.look(200.0, view(a=[0, 1], b=[2, 3]), ALL, "b") == frozenset()  # healed


def _static_runner(seconds: float) -> tuple[MemoryBroker, GroupRunner, FakeClock]:
    """A static member on the in-memory broker whose clock moves 5 s per consume; it is asked to
    stop after ``seconds``."""
    broker, clock = _broker(), FakeClock()
    static = {"group.instance.id": "h-0"}
    runner = _runner(broker, MemoryStore(), clock, kafka_properties=static, orphan_grace=30.0)
    stop_at = clock.now + seconds

    def tick(_consumer: MemoryConsumer) -> None:
        clock.now += 5.0
        if clock.now >= stop_at:
            runner.request_stop()

    runner.consumer.on_consume = tick
    return broker, runner, clock


def test_a_static_member_rejoins_when_partitions_stay_unowned_and_loses_nothing() -> None:
    """The in-memory group cannot reach the hole (its coordinator recomputes on every join), so
    the coordinator's answer is doctored: partition 3 owned by nobody. The runner must rejoin once
    after the grace, get every partition back, and commit every record exactly at the end."""
    broker, runner, _ = _static_runner(100.0)

    def doctored() -> GroupView:
        real = broker.group_view("g")
        return GroupView(True, {m: tps - {("t", 3)} for m, tps in real.members.items()})

    runner._group_view = doctored
    generation = broker.group("g").generation
    with capture_logs() as logs:
        assert runner.run() == 0
    rejoins = [e for e in logs if e["event"].startswith("partitions owned by no member")]
    assert len(rejoins) >= 1 and rejoins[0]["partitions"] == ["t[3]"]
    assert runner.stats.orphan_rejoins == len(rejoins)
    assert broker.group("g").generation > generation + 1  # left and joined again
    assigned = [e for e in logs if e["event"] == "partitions assigned"]
    assert len(assigned) == 1 + len(rejoins)  # the start, and once after every rejoin
    for p in range(PARTITIONS):  # every record committed; the rows of the revoke were flushed
        assert broker.committed_offset("g", "t", p) == PER_PARTITION


def test_without_static_membership_or_with_grace_0_nothing_is_looked_at() -> None:
    broker, store = _broker(), MemoryStore()
    assert _runner(broker, store)._orphans is None
    static = {"group.instance.id": "h"}
    assert _runner(broker, store, kafka_properties=static, orphan_grace=0.0)._orphans is None


def test_a_coordinator_that_does_not_answer_is_asked_again_only_after_a_minute() -> None:
    """Each look may block the poll loop for a few seconds when the cluster does not answer."""
    _, runner, clock = _static_runner(200.0)
    asked: list[float] = []

    def silent() -> None:
        asked.append(clock.now)

    runner._group_view = silent
    assert runner.run() == 0
    assert len(asked) >= 3
    assert all(b - a >= 60.0 for a, b in itertools.pairwise(asked))
