"""The group protocol an operator picks with ``-X group.protocol``: the classic one (our
cooperative-sticky assignor) or KIP-848's (the coordinator assigns). What each gives librdkafka,
and what an operator reads when the client refuses its configuration or the broker refuses a
static member. On the real broker: tests/integration/test_consumer_protocol.py."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from test_shutdown import _broker, _runner

from consumer.config import Config, ConfigError
from consumer.decoding import Decoder, load_schema
from consumer.errors import fatal_client_hint
from consumer.runner import GroupRunner
from consumer.testing import MemoryStore


def _client_config(**props: str) -> dict[str, Any]:
    """The configuration a GroupRunner with ``-X props`` hands to its Kafka client."""
    broker, seen = _broker(), []
    factory = broker.consumer_factory()

    def capture(conf: dict[str, Any]) -> Any:
        seen.append(conf)
        return factory(conf)

    config = Config(
        bootstrap_servers="memory", group_id="g", topics=("t",), output="s3://bucket/out",
        schema="page_view", kafka_properties=props,
    )  # fmt: skip
    GroupRunner(config, store=MemoryStore(), decoder=Decoder("raw", schema=load_schema("page_view")),
                consumer_factory=capture)  # fmt: skip
    return seen[0]


def test_the_consumer_protocol_is_read_from_the_kafka_properties() -> None:
    assert not Config().consumer_protocol
    assert not Config(kafka_properties={"group.protocol": "classic"}).consumer_protocol
    assert Config(kafka_properties={"group.protocol": "consumer"}).consumer_protocol
    assert Config(kafka_properties={"group.protocol": " Consumer "}).consumer_protocol


def test_the_classic_protocol_gets_the_cooperative_assignor_and_the_consumer_protocol_none() -> None:
    assert _client_config()["partition.assignment.strategy"] == "cooperative-sticky"
    # librdkafka refuses a client-side assignor under KIP-848 ("use group.remote.assignor")
    assert "partition.assignment.strategy" not in _client_config(**{"group.protocol": "consumer"})
    remote = _client_config(**{"group.protocol": "consumer", "group.remote.assignor": "range"})
    assert remote["group.remote.assignor"] == "range"


def test_a_configuration_the_client_refuses_is_a_config_error_that_quotes_librdkafka() -> None:
    """Not a traceback: the CLI prints the problem and exits 2."""
    said = "`session.timeout.ms` is not supported for `group.protocol=consumer`"

    def refuse(_conf: dict[str, Any]) -> Any:
        raise KafkaException(KafkaError(KafkaError._INVALID_ARG, said))

    config = Config(bootstrap_servers="memory", group_id="g", topics=("t",), output="s3://bucket/out")
    with pytest.raises(ConfigError) as caught:
        GroupRunner(config, store=MemoryStore(), decoder=Decoder("raw", schema=load_schema("page_view")),
                    consumer_factory=refuse)  # fmt: skip
    assert caught.value.problems == [
        f"the Kafka client refused its configuration: {said} (check the -X properties)"
    ]


def test_a_member_the_broker_refuses_is_told_why_and_what_to_do() -> None:
    said = (
        'KafkaError{code=_FATAL,val=-150,str="Fatal error: Broker: The instance ID is still used by '
        'another member in the consumer group: ConsumerGroupHeartbeat fatal error"}'
    )
    hint = fatal_client_hint(said)
    assert "still held by an earlier member" in hint
    assert "group.consumer.session.timeout.ms" in hint
    classic = "Fatal error: Broker: The group id does not exist: ConsumerGroupHeartbeat fatal error"
    assert "stop every member, wait until their sessions have expired" in fatal_client_hint(classic)
    assert fatal_client_hint("Static consumer fenced by other consumer") == (
        "check for a second member with the same group.instance.id, then restart."
    )


def test_static_members_look_for_orphans_only_under_the_classic_protocol() -> None:
    """KIP-848's coordinator moves partitions one by one: no two-round rebalance to leave a hole."""
    broker, store = _broker(), MemoryStore()
    static = {"group.instance.id": "h-0"}
    assert _runner(broker, store, kafka_properties=static)._orphans is not None
    kip848 = {**static, "group.protocol": "consumer"}
    assert _runner(broker, store, kafka_properties=kip848)._orphans is None
