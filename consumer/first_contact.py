"""The first request to a Kafka cluster, asked so that a refusal is said at once.

Why: a client that the cluster refuses (a broker certificate it does not trust, a certificate or
password the broker refuses) learns it at its first handshake, within milliseconds, but a metadata
request waits its whole timeout for a broker that never comes up, and the refusal, an error event,
is served only after it. The run, ``replay`` and ``finish`` each waited 10 s (``check`` its
``--timeout``, ``verify`` 15 s) before saying what was wrong. Asked here in slices of :data:`SLICE`
seconds, with the client's events served between them, the refusal stops the wait within about a
second; a broker that is only slow to answer gets the same whole wait as before.

The commands that answer an operator (``check``, ``verify``, ``produce``, ``finish``) also count
a connection every broker refused as such an answer (``ClientLines.every_broker_down``,
``Runner.refused_connection_is_an_answer``): nothing listens at the address. A run and ``replay``
do not: they are started beside their brokers (compose, a pod) and give one still starting its 10 s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaException

#: seconds of each try of the first metadata request
SLICE = 1.0


def metadata(client: Any, wait: float, refused: Callable[[], bool], topic: str | None = None) -> Any:
    """``client.list_topics(topic)``, waited for up to ``wait`` seconds in tries of :data:`SLICE`.

    A try that failed raises its error at once when ``refused()`` (which serves the client's
    events) says one of them is a refusal, when ``wait`` is over, or when it failed before its
    slice was over: that is an answer, not a wait that ran out, and asking again would only spin.
    The caller says why from the events it served."""
    deadline = time.monotonic() + wait
    while True:
        began = time.monotonic()
        slice_s = max(0.01, min(SLICE, deadline - began))
        try:
            if topic is None:
                return client.list_topics(timeout=slice_s)
            return client.list_topics(topic=topic, timeout=slice_s)
        except KafkaException:
            now = time.monotonic()
            if refused() or now >= deadline or now - began < slice_s * 0.9:
                raise
