"""The consume floor: a bare confluent-kafka loop that only reads the topic.

What any Kafka → anything consumer in Python costs at least: ``consume()`` in batches and touch
each record's value, offset, timestamp and key — no decoding, no output. Run by
:class:`bench.adapters.FloorAdapter` with this project's interpreter; imports nothing from
``consumer``. Stops after ``--count`` records and prints one JSON line of stats on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--group-id", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args(argv)

    from confluent_kafka import Consumer

    # librdkafka's lines as "[floor] LEVEL message" on stderr, not in its raw format (a log line is
    # rare: this costs the loop nothing)
    logger = logging.getLogger("floor")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[floor] %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    c = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group_id,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "logger": logger,
        }
    )
    c.subscribe([args.topic])
    seen = value_bytes = 0
    checksum = 0
    deadline = time.monotonic() + args.timeout
    while seen < args.count and time.monotonic() < deadline:
        for m in c.consume(num_messages=5000, timeout=0.5):
            if m.error() is not None:
                continue
            value = m.value()
            checksum ^= m.offset() ^ m.timestamp()[1] ^ len(m.key() or b"")
            value_bytes += len(value) if value else 0
            seen += 1
    c.close()
    print(json.dumps({"event": "stopped", "records": seen, "avro_bytes": value_bytes, "checksum": checksum}))
    return 0 if seen >= args.count else 1


if __name__ == "__main__":
    raise SystemExit(main())
