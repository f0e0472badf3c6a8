"""consumer.first_contact: the first metadata request, asked in slices so that a refusal the
client's events carry stops the wait at once, while a broker slow to answer gets the whole wait."""

from __future__ import annotations

import time
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from consumer import first_contact


class Cluster:
    """A client whose ``list_topics`` waits its whole timeout and fails for the first ``silent``
    tries (no broker up), then answers; ``instant`` fails at once instead."""

    def __init__(self, silent: int, instant: bool = False) -> None:
        self.silent, self.instant, self.tries = silent, instant, 0

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        self.tries += 1
        if self.tries <= self.silent:
            if not self.instant:
                time.sleep(timeout)
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "Failed to get metadata"))
        return {"topic": topic}


@pytest.fixture(autouse=True)
def short_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(first_contact, "SLICE", 0.05)


def test_a_broker_slow_to_answer_is_waited_for_try_after_try() -> None:
    cluster = Cluster(silent=4)
    assert first_contact.metadata(cluster, 5.0, lambda: False, topic="t") == {"topic": "t"}
    assert cluster.tries == 5


def test_a_refusal_among_the_events_raises_the_try_s_error_at_once() -> None:
    cluster, served = Cluster(silent=1000), []

    def refused() -> bool:
        served.append(True)
        return len(served) == 2  # the event came during the second try

    started = time.monotonic()
    with pytest.raises(KafkaException):
        first_contact.metadata(cluster, 5.0, refused)
    assert cluster.tries == 2 and time.monotonic() - started < 1.0


def test_the_whole_wait_over_raises_the_last_try_s_error() -> None:
    cluster = Cluster(silent=1000)
    started = time.monotonic()
    with pytest.raises(KafkaException):
        first_contact.metadata(cluster, 0.3, lambda: False)
    assert 0.3 <= time.monotonic() - started < 1.0
    assert 4 <= cluster.tries <= 8


def test_a_try_that_fails_before_its_slice_is_over_is_an_answer_not_asked_again() -> None:
    cluster = Cluster(silent=1000, instant=True)
    with pytest.raises(KafkaException):
        first_contact.metadata(cluster, 5.0, lambda: False)
    assert cluster.tries == 1, "no spinning on an answer"
