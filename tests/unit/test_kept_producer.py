"""The sample producer's kept client (consumer.producer._KeptProducer): when a produce call may
reuse the producer of the call before, and when it must not. Fake producers here; the real broker
in tests/stack/test_sample_producer.py."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest
from confluent_kafka import KafkaError

from consumer.producer import _Client, _Identity, _kept_key, _KeptProducer


class FakeProducer:
    """What the kept client calls: ``poll`` serves error events (here: the ones queued by
    ``later``), ``close`` is counted."""

    def __init__(self) -> None:
        self.closed = 0
        self.later: list[KafkaError] = []
        self.error_cb: Any = None

    def poll(self, timeout: float) -> int:
        served, self.later = self.later, []
        for err in served:
            self.error_cb(err)
        return len(served)

    def close(self) -> bool:
        self.closed += 1
        return True


KEY = _kept_key({"bootstrap.servers": "127.0.0.1:19092", "acks": "all"})
HERE = _Identity("cluster-a", "topic-id-1")


def _client(topics: dict[str, str] | None = None) -> tuple[_Client, FakeProducer]:
    fake = FakeProducer()
    assert KEY is not None
    client = _Client(fake, KEY, "cluster-a", dict(topics or {}))  # type: ignore[arg-type]
    fake.error_cb = client.troubles.append
    return client, fake


def test_a_client_given_back_is_lent_to_the_next_call_that_fits() -> None:
    kept = _KeptProducer()
    assert KEY is not None
    client, fake = _client({"t": "topic-id-1"})
    kept.give_back(client)
    assert kept.lend(KEY, "t", HERE) is client
    assert kept.lend(KEY, "t", HERE) is None, "lent once: a second call at once gets a new client"
    assert kept.lend(KEY, "other-topic", _Identity("cluster-a", "id-9")) is None
    assert fake.closed == 0


@pytest.mark.parametrize(
    ("key", "topic", "identity", "why"),
    [
        (_kept_key({"bootstrap.servers": "127.0.0.1:29092"}), "t", HERE, "another bootstrap"),
        (_kept_key({"bootstrap.servers": "127.0.0.1:19092", "acks": "1"}), "t", HERE, "other settings"),
        (KEY, "t", _Identity("cluster-b", "topic-id-1"), "another cluster on the same port"),
        (KEY, "t", _Identity("cluster-a", "topic-id-2"), "the topic recreated under its name"),
    ],
)
def test_a_client_that_does_not_fit_is_closed_not_lent(
    key: tuple[Any, ...] | None, topic: str, identity: _Identity, why: str
) -> None:
    kept = _KeptProducer()
    client, fake = _client({"t": "topic-id-1"})
    kept.give_back(client)
    assert key is not None
    assert kept.lend(key, topic, identity) is None, why
    assert fake.closed == 1
    assert kept.lend(KEY, "t", HERE) is None, "closed, so nothing is kept any more"


def test_a_client_that_saw_an_error_while_idle_or_in_its_call_is_closed() -> None:
    kept = _KeptProducer()
    client, fake = _client()
    fake.later.append(KafkaError(KafkaError._TRANSPORT))
    kept.give_back(client)  # the error of its call, served by give_back's poll
    assert fake.closed == 1
    assert kept.lend(KEY, "t", HERE) is None

    client, fake = _client()
    kept.give_back(client)
    fake.later.append(KafkaError(KafkaError._ALL_BROKERS_DOWN))  # a broker went while it was idle
    assert kept.lend(KEY, "t", HERE) is None
    assert fake.closed == 1


def test_one_client_is_kept_a_second_given_back_is_closed() -> None:
    kept = _KeptProducer()
    first, first_fake = _client()
    second, second_fake = _client()
    kept.give_back(first)
    kept.give_back(second)
    assert (first_fake.closed, second_fake.closed) == (0, 1)
    kept.close()
    assert first_fake.closed == 1


def test_settings_with_a_callable_of_the_caller_are_never_kept_and_the_key_names_the_process() -> None:
    assert _kept_key({"bootstrap.servers": "x", "logger": object()}) is None
    assert _kept_key({"bootstrap.servers": "x", "error_cb": print}) is None
    key = _kept_key({"bootstrap.servers": "x", "linger.ms": 20, "enable.idempotence": True})
    assert key is not None and key[0] == os.getpid(), "librdkafka's threads do not survive a fork"


def test_concurrent_lends_never_share_a_client() -> None:
    kept = _KeptProducer()
    client, _ = _client({"t": "topic-id-1"})
    kept.give_back(client)
    assert KEY is not None
    got: list[Any] = []
    threads = [threading.Thread(target=lambda: got.append(kept.lend(KEY, "t", HERE))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(1 for c in got if c is client) == 1 and got.count(None) == 7

