"""Reading the group's committed offsets (KafkaGroupPositions.committed_many) when an OffsetFetch
answer carries an error for a partition. One that may pass (a transactional producer's offsets
not stable yet, a coordinator loading) is asked again while the retry budget lasts, as a failed
request is: it used to stop the run at once with status 5. Any other error stops it at once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from unittest.mock import patch

import pytest
from confluent_kafka import KafkaError

from consumer import positions
from consumer.errors import KafkaNotAuthorized
from consumer.positions import KafkaGroupPositions, PositionError


@dataclass
class Answer:
    topic: str
    partition: int
    offset: int
    metadata: str = ""
    error: KafkaError | None = None


class Coordinator:
    """Answers each ``committed()`` with the next of ``errors`` for every partition, then 42."""

    def __init__(self, *errors: KafkaError) -> None:
        self.errors = list(errors)
        self.calls = 0

    def committed(self, partitions: list[Any], timeout: float | None = None) -> list[Answer]:
        self.calls += 1
        error = self.errors.pop(0) if self.errors else None
        return [Answer(tp.topic, tp.partition, -1001 if error else 42, error=error) for tp in partitions]


UNSTABLE = KafkaError(KafkaError.UNSTABLE_OFFSET_COMMIT, "pending transaction", retriable=True)
DENIED = KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED, "no READ on the group", retriable=False)
REFUSED = KafkaError(KafkaError.INVALID_REQUEST, "a request the broker refuses", retriable=False)


def test_a_partition_error_that_may_pass_is_asked_again() -> None:
    kafka = Coordinator(UNSTABLE, UNSTABLE)
    with patch.object(positions.time, "sleep") as slept:
        assert KafkaGroupPositions(kafka).committed_many([("t", 0), ("t", 1)]) == {("t", 0): 42, ("t", 1): 42}
    assert kafka.calls == 3 and slept.call_count == 2


@pytest.mark.parametrize(
    ("error", "raised", "said"),
    [
        (REFUSED, PositionError, r"t\[0\]: .*a request the broker refuses"),
        # an ACL to grant (status 2), where it said "cannot read or commit positions (Kafka
        # coordinator unavailable too long)" (status 5)
        (DENIED, KafkaNotAuthorized, r"does not authorize this client to use its consumer group"),
    ],
    ids=["refused", "not-authorized"],
)
def test_a_partition_error_that_will_not_pass_stops_at_once(
    error: KafkaError, raised: type[Exception], said: str
) -> None:
    kafka = Coordinator(error)
    with patch.object(positions.time, "sleep") as slept, pytest.raises(raised, match=said):
        KafkaGroupPositions(kafka).committed("t", 0)
    assert kafka.calls == 1 and not slept.called


def test_a_partition_error_that_outlasts_the_budget_stops_the_run() -> None:
    kafka = Coordinator(*[UNSTABLE] * 1000)
    with patch.object(positions.time, "sleep"), pytest.raises(PositionError, match="pending transaction"):
        KafkaGroupPositions(kafka, max_elapsed=0.0).committed("t", 0)
