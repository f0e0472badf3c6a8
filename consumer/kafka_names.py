"""Names for Kafka things that several modules share, defined once.

Kept free of confluent-kafka so that the pure layer can use them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: A partition of a topic, as every module keys it: ``(topic, partition number)``.
TP = tuple[str, int]

#: librdkafka's code (``KafkaError._PARTITION_EOF``) for "the fetch reached the end of the
#: partition", delivered as a message's error when ``enable.partition.eof`` is on.
PARTITION_EOF = -191


@dataclass(frozen=True)
class GroupView:
    """What the coordinator says about a consumer group (DescribeGroups): whether it is stable (no
    rebalance under way) and each member's assigned partitions, by member id. Read by the orphan
    watch about this group, and by recovery about a group whose output it would adopt."""

    stable: bool
    members: Mapping[str, frozenset[TP]]
