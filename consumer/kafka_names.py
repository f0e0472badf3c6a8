"""Names for Kafka things that several modules share, defined once.

Kept free of imports (even of confluent-kafka) so that the pure layer can use them.
"""

from __future__ import annotations

#: A partition of a topic, as every module keys it: ``(topic, partition number)``.
TP = tuple[str, int]

#: librdkafka's code (``KafkaError._PARTITION_EOF``) for "the fetch reached the end of the
#: partition", delivered as a message's error when ``enable.partition.eof`` is on.
PARTITION_EOF = -191
