"""Partitions that no member of the group owns, and when a member should make the group rebalance.

Why this exists: static membership (``group.instance.id``, which ``--processes`` always uses) and
the cooperative protocol have a hole between them. A cooperative rebalance moves a partition in
two rounds: in the first the old owner is told to give it up and nobody gets it; the old owner
revokes it and rejoins, and that rejoin starts the second round, which hands it to its new owner.
If the old owner dies between the two rounds (a crash, a SIGKILL, a node lost) and comes back
with the same instance id before its session expires, the coordinator hands the new process the
first round's assignment without a rebalance. The new process owns nothing it must give up, so it
never rejoins, and the partitions held back for the second round are owned by nobody — for good:
no session expires and nothing else starts a rebalance. Reproduced on Kafka 4.1 with librdkafka
2.16 (tests/integration/test_orphans.py). Those partitions are then not consumed at all: a lag
that only grows, and ``--until-caught-up`` waits until it gives up.

The cure is one rebalance: a member leaves the group and joins again (``unsubscribe`` then
``subscribe``; a static member sends LeaveGroup on unsubscribe), and the new assignment covers
every partition. Deciding when is here, pure: the same partitions unowned in a *stable* group for
``grace`` seconds (between the two rounds of a healthy rebalance they are unowned for as long as
the old owner's revoke takes, normally well under a second), and only one member acts — the one
that owns the fewest partitions, ties to the lowest member id, so the cure moves nothing else.
Asking the coordinator and rejoining is the runner's (:class:`consumer.runner.GroupRunner`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from consumer.kafka_names import TP, GroupView


def unowned(partitions: Iterable[TP], view: GroupView) -> frozenset[TP]:
    """The partitions of the subscription that no member owns."""
    owned = {tp for tps in view.members.values() for tp in tps}
    return frozenset(tp for tp in partitions if tp not in owned)


def healer(view: GroupView) -> str | None:
    """The member that should rejoin: the one owning the fewest partitions (its leaving moves the
    least), ties to the lowest member id, so every member that looks picks the same one."""
    if not view.members:
        return None
    return min(view.members, key=lambda member: (len(view.members[member]), member))


@dataclass
class OrphanWatch:
    """Looks at the group now and then; :meth:`look` says when this member should rejoin."""

    grace: float
    since: float | None = None  # when the current orphans were first seen
    orphans: frozenset[TP] = field(default_factory=frozenset)

    def look(self, now: float, view: GroupView | None, partitions: Iterable[TP], me: str) -> frozenset[TP]:
        """The partitions this member should heal by rejoining now; empty: nothing to do.

        No view (the coordinator did not answer) or a rebalance under way: start over. The
        orphans must be the same set, seen for ``grace`` seconds; after acting, the watch waits
        another ``grace`` before it could act again."""
        if view is None or not view.stable:
            self.since, self.orphans = None, frozenset()
            return frozenset()
        orphans = unowned(partitions, view)
        if orphans != self.orphans or self.since is None:
            self.since, self.orphans = (now if orphans else None), orphans
            return frozenset()
        if now - self.since < self.grace or healer(view) != me:
            return frozenset()
        self.since = now
        return orphans
