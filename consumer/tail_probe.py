"""The other members' partitions seen from outside the group: ``--until-caught-up``'s proof that
they are exported.

A member that has finished its own partitions proves the others' exported from the group's
committed offsets: each must reach the end offset seen at start (and no file may still be open).
Two things kept that proof from coming when it should:

* A topic written in transactions (Kafka Streams, Flink's exactly-once sink, Debezium) ends each
  transaction with a commit or abort marker, an offset no record has, and never delivers the
  records of an aborted transaction (``read_committed``). Their owner commits the offset after
  the last record it exported, which can stop short of the end for good: nothing is left to read
  there, so nothing will ever move it. Two members over a two-partition transactional topic each
  waited for the other's partition until ``--caught-up-timeout`` and exited 6, after 300 s.
* A member's own consumer cannot read committed offsets while its group rebalances (librdkafka
  times the request out), and a static member that ended leaves the group rebalancing until its
  session expires (45 s): the member still waiting learnt nothing until then.

So the waiting member looks from outside the group, with a Kafka consumer of its own that never
joins it (manual assignment, no commits; the same group id only to read its committed offsets, as
``consumer verify`` does). When a committed offset stops short, the probe reads on from it,
``read_committed`` like the members. The first thing it meets in the partition decides
(:func:`tail_of`): a record below the end is work still to do; a record at or past the end, or the
end of the log, means nothing below the end is left. It fetches little (a record or two per
partition) and runs only while its member has nothing of its own left to do.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Mapping
from typing import Any

from consumer.kafka_names import PARTITION_EOF, TP

_OFFSET_BEGINNING = -2

#: what the probe's consumer sets over the member's own Kafka configuration (which brings the
#: brokers, the group id, security settings and -X properties): no commits, the end of a
#: partition reported, and fetches kept small (one record answers; at most a few MiB while it runs).
PROBE_SETTINGS: dict[str, Any] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "enable.partition.eof": True,
    "isolation.level": "read_committed",
    "auto.offset.reset": "earliest",  # an offset retention deleted: what follows it is still left
    "fetch.wait.max.ms": 10,  # the end of a partition is known at the first fetch's answer
    "fetch.max.bytes": 1 << 20,
    "max.partition.fetch.bytes": 64 << 10,
    "queued.max.messages.kbytes": 1024,
    "queued.min.messages": 1,
}
#: settings of a group member that a consumer outside the group must not carry (it never calls
#: subscribe, so it never joins; without an instance id it cannot fence the member either)
_MEMBER_ONLY = ("group.instance.id", "partition.assignment.strategy", "group.remote.assignor", "error_cb")
#: partitions read at once (each may hold up to max.partition.fetch.bytes)
PROBE_AT_ONCE = 32


class Tail(enum.Enum):
    """What the probe found after the committed offset of a partition."""

    EMPTY = "nothing below the end is left to export"
    LEFT = "a record below the end is still to export"
    UNKNOWN = "not known yet"


def tail_of(end: int, first_offset: int | None, at_end: bool) -> Tail:
    """Decide from the first record the probe met in the partition (None: none yet) and whether
    it reached the log's end (the end-of-partition event, or a position at or past ``end``)."""
    if first_offset is not None:
        return Tail.LEFT if first_offset < end else Tail.EMPTY
    return Tail.EMPTY if at_end else Tail.UNKNOWN


def _from(committed: int) -> int:
    """Where the probe starts: the committed offset, or the log's start when there is none."""
    return committed if committed >= 0 else _OFFSET_BEGINNING


def probe_config(member: Mapping[str, Any]) -> dict[str, Any]:
    """The probe's consumer configuration from the member's: same cluster and group id, never a
    member of it."""
    conf = {k: v for k, v in member.items() if k not in _MEMBER_ONLY}
    conf.update(PROBE_SETTINGS)
    return conf


class TailProbe:
    """Reads the group's committed offsets and a little of the other members' partitions; its
    consumer is made at the first call and kept until :meth:`close`."""

    def __init__(self, factory: Callable[[dict[str, Any]], Any], conf: dict[str, Any]) -> None:
        self._factory = factory
        self._conf = conf
        self._consumer: Any = None

    def _client(self) -> Any:
        if self._consumer is None:
            self._consumer = self._factory(self._conf)
        return self._consumer

    def committed(self, keys: list[TP], timeout: float = 10.0) -> dict[TP, int]:
        """The group's committed offsets of these partitions (negative: none), read with an
        OffsetFetch request that no rebalance of the group holds up. Partitions the answer
        carries an error for are left out. Raises what the Kafka client raises."""
        from confluent_kafka import TopicPartition

        answer = self._client().committed([TopicPartition(*k) for k in keys], timeout=timeout)
        return {(tp.topic, tp.partition): int(tp.offset) for tp in answer if tp.error is None}

    def tails(self, starts: Mapping[TP, int], ends: Mapping[TP, int], timeout: float = 5.0) -> dict[TP, Tail]:
        """For each partition, what follows ``starts[tp]`` (a committed offset; negative: none, so
        from the log's start) below ``ends[tp]``. Partitions not decided within ``timeout`` are
        UNKNOWN. Raises what the Kafka client raises (the caller asks again later)."""
        from confluent_kafka import TopicPartition

        out: dict[TP, Tail] = {}
        keys = sorted(starts)
        for i in range(0, len(keys), PROBE_AT_ONCE):
            chunk = keys[i:i + PROBE_AT_ONCE]
            out.update(self._read(chunk, starts, ends, time.monotonic() + timeout, TopicPartition))
        return out

    def _read(self, keys: list[TP], starts: Mapping[TP, int], ends: Mapping[TP, int], deadline: float,
              tp_type: Any) -> dict[TP, Tail]:
        c = self._client()
        first: dict[TP, int] = {}
        at_end: set[TP] = set()
        decided: dict[TP, Tail] = {}
        c.assign([tp_type(t, p, max(starts[(t, p)], _OFFSET_BEGINNING)) for t, p in keys])
        try:
            while len(decided) < len(keys) and time.monotonic() < deadline:
                for msg in c.consume(num_messages=len(keys) * 4, timeout=0.1):
                    key = (msg.topic(), msg.partition())
                    err = msg.error()
                    if err is None:
                        first.setdefault(key, int(msg.offset()))
                    elif err.code() == PARTITION_EOF:
                        at_end.add(key)
                for tp in c.position([tp_type(t, p) for t, p in keys]):
                    key = (tp.topic, tp.partition)
                    if tp.offset >= 0 and tp.offset >= ends[key]:
                        at_end.add(key)
                for key in keys:
                    tail = tail_of(ends[key], first.get(key), key in at_end)
                    if tail is not Tail.UNKNOWN:
                        decided.setdefault(key, tail)
        finally:
            c.unassign()
        return {key: decided.get(key, Tail.UNKNOWN) for key in keys}

    def close(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            consumer.close()
