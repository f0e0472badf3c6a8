"""Sample producer: writes generated records (``consumer.samples``) to a Kafka topic, fast.

Used by tests, benchmarks and the CLI to fill a topic with a known workload. Design choices:

* **Explicit partitioning, ``partition = i % partitions``** (not the key hash). Record ``i`` of a
  run starting at an empty topic therefore lands in partition ``i % P`` at offset ``i // P``, so
  a test can compute exactly what every (partition, offset) must contain via
  ``samples.make_record(schema, i, seed)`` without reading the topic back. Keys are still set
  realistically (``samples.key_for``) — they just do not choose the partition. With
  ``enable.idempotence`` and one producer, per-partition order equals production order.
* **Record timestamps come from the data** (``samples.timestamp_ms_for``), i.e. CreateTime is the
  event time, as with a real producer that sets it.
* **Throughput settings**: ``linger.ms=20``, 1 MB batches, lz4, ``acks=all`` with idempotence
  (exactly-once tests must not see producer-side duplicates). ``produce()`` is called in a tight
  loop with ``poll(0)`` to serve delivery reports, and ``BufferError`` (local queue full) is
  handled by polling until space frees up rather than failing.
* **Every delivery report is checked**: after ``flush`` the run fails with the first delivery
  error, and also if any message is still undelivered, so a caller never believes a topic holds
  N records when it does not.
* Payloads are never logged (they may be large, and in real use may be personal data).
* **librdkafka's own lines are log events**, as in a run (``consumer.log.LibrdkafkaLog``): a broker
  that is down is one line per half minute, not a raw ``%3|…|FAIL|…`` line every few ms on
  stderr. The admin client's lines only say why a request failed, in the error it raises.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
from confluent_kafka import KafkaError, KafkaException, Producer, TopicCollection
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from consumer import first_contact, samples
from consumer import log as logmod
from consumer.registry import SchemaRegistryClient

__all__ = ["ProduceError", "ProduceResult", "ensure_topic", "produce"]

_log = structlog.get_logger(__name__)

Framing = Literal["raw", "confluent"]

#: librdkafka settings tuned for bulk loading; ``extra_config`` overrides any of them.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "linger.ms": 20,
    "batch.size": 1_000_000,
    "batch.num.messages": 100_000,
    "compression.type": "lz4",
    "acks": "all",
    "enable.idempotence": True,
    "queue.buffering.max.messages": 500_000,
    "queue.buffering.max.kbytes": 512 * 1024,
    "message.timeout.ms": 120_000,
}

#: How often ``progress`` is called (in delivered records), besides once at the end.
PROGRESS_EVERY = 10_000


class ProduceError(RuntimeError):
    """Producing failed: bad arguments, topic setup, or at least one undelivered record."""


@dataclass(frozen=True)
class ProduceResult:
    """What a :func:`produce` run wrote.

    ``partition_counts[p]`` is the number of records delivered to partition ``p`` (all
    partitions ``0..partitions-1`` present, even with zero). ``schema_id`` is the registry id
    for ``framing="confluent"``, else ``None``.
    """

    topic: str
    count: int
    partition_counts: dict[int, int] = field(default_factory=dict)
    schema_id: int | None = None
    elapsed_s: float = 0.0

    @property
    def records_per_s(self) -> float:
        return self.count / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass(frozen=True)
class _Identity:
    """Which cluster, and which topic of that name: a topic deleted and created again under its
    name has a new id, and so has every topic of a stack formatted again on the same port."""

    cluster_id: str
    topic_id: str


@dataclass
class _Client:
    """A producer kept between :func:`produce` calls, and what it has seen.

    ``troubles`` collects the client's error events (a broker gone, a fatal idempotence error),
    served by ``poll``; ``topics`` the id of each topic it wrote to, under its name."""

    producer: Producer
    key: tuple[Any, ...]
    cluster_id: str
    topics: dict[str, str] = field(default_factory=dict)
    troubles: list[KafkaError] = field(default_factory=list)

    def fits(self, key: tuple[Any, ...], topic: str, identity: _Identity) -> bool:
        return (
            self.key == key
            and self.cluster_id == identity.cluster_id
            and self.topics.get(topic, identity.topic_id) == identity.topic_id
            and not self.troubles
        )


class _KeptProducer:
    """At most one idle producer per process, lent to the next :func:`produce` call that fits.

    Why: an idempotent producer cannot produce until it has a producer id, and librdkafka asks for
    one on a fixed 500 ms timer when no broker connection is up yet, which is always the case for a
    new client: about 0.45 s of every call, most of a test's produce. A kept client has its id.

    It is lent only to a call with the same bootstrap and settings, in the same process (librdkafka's
    threads do not survive a fork), against the same cluster, and never for a topic whose name now
    names another topic (librdkafka keeps a partition's sequence numbers by name, so a recreated
    topic needs a new client: librdkafka issue 4898). A client that saw any error event, or whose
    call failed, is closed, not kept. Two calls at once: the second gets a new client."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: _Client | None = None

    def lend(self, key: tuple[Any, ...], topic: str, identity: _Identity) -> _Client | None:
        with self._lock:
            client, self._idle = self._idle, None
        if client is None:
            return None
        client.producer.poll(0)  # the error events that came while it was idle
        if client.fits(key, topic, identity):
            return client
        _close(client)
        return None

    def give_back(self, client: _Client) -> None:
        client.producer.poll(0)
        if not client.troubles:
            with self._lock:
                if self._idle is None:
                    self._idle = client
                    return
        _close(client)

    def close(self) -> None:
        with self._lock:
            client, self._idle = self._idle, None
        if client is not None:
            _close(client)


def _close(client: _Client) -> None:
    """Close a client with nothing queued (a kept one was flushed), here on this thread."""
    client.producer.close()


_KEPT = _KeptProducer()
atexit.register(_KEPT.close)


def _kept_key(config: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """What a kept client must match: the process and every setting. None if a setting is a
    callable given by the caller (it cannot be compared, and may hold state of its own)."""
    settings = []
    for name, value in sorted(config.items()):
        if not isinstance(value, str | int | float | bool):
            return None
        settings.append((name, value))
    return (os.getpid(), *settings)


def ensure_topic(
    bootstrap: str,
    topic: str,
    partitions: int,
    extra_config: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> int:
    """Create ``topic`` with ``partitions`` partitions unless it exists; return its partition count.

    Tolerates TOPIC_ALREADY_EXISTS (concurrent creators, re-runs), then waits until metadata
    shows every partition with a leader — producing right after CreateTopics otherwise races
    leader election and fails with UNKNOWN_TOPIC_OR_PART. An existing topic with fewer
    partitions than requested is an error, because ``i % partitions`` would target partitions
    that do not exist.
    """
    return _ensure_topic(bootstrap, topic, partitions, extra_config, timeout_s)[0]


def _ensure_topic(
    bootstrap: str,
    topic: str,
    partitions: int,
    extra_config: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> tuple[int, _Identity | None]:
    """:func:`ensure_topic`, which also returns who the topic is (its cluster's id and its own),
    or None when the broker does not say (then no kept producer is used for it)."""
    lines = logmod.ClientLines()
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, **dict(extra_config or {}), "logger": lines,
                            "error_cb": lines.error}
    # Destroyed here, on this thread: left to the cycle collector (the client and its logger refer
    # to each other) it may be destroyed on librdkafka's own thread, which crashes the process
    # (check._admin).
    with AdminClient(conf) as admin:
        lines.watch(admin)
        existing = _partition_count(_metadata(admin, lines, topic, min(timeout_s, 10.0), first=True), topic)
        if existing is None:
            futures = admin.create_topics(
                # replication_factor=-1: the broker's default.replication.factor, so the same call
                # works on a 1-broker dev stack and a 3-broker cluster.
                [NewTopic(topic, num_partitions=partitions, replication_factor=-1)],
                operation_timeout=timeout_s,
                request_timeout=timeout_s,
            )
            try:
                futures[topic].result()
                _log.info("topic_created", topic=topic, partitions=partitions)
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if not (isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
                    raise ProduceError(f"could not create topic {topic!r}: {lines.explain(exc)}") from exc
        deadline = time.monotonic() + timeout_s
        while True:
            metadata = _metadata(admin, lines, topic, 5.0)
            count = _partition_count(metadata, topic, require_leaders=True)
            if count is not None:
                break
            if time.monotonic() > deadline:
                raise ProduceError(
                    f"topic {topic!r} did not appear with leaders for all partitions within "
                    f"{timeout_s:.0f}s; is the broker at {bootstrap} healthy?"
                )
            time.sleep(0.1)
        if count < partitions:
            raise ProduceError(
                f"topic {topic!r} already exists with {count} partitions, fewer than the "
                f"{partitions} requested; delete it or pass partitions={count}"
            )
        return count, _identity(admin, topic, metadata.cluster_id, timeout_s=min(timeout_s, 10.0))


def _identity(admin: AdminClient, topic: str, cluster_id: str | None, timeout_s: float) -> _Identity | None:
    """The cluster's id (from the metadata already read) and the topic's id (KIP-516), or None if
    either is not told."""
    try:
        description = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout_s)[topic]
        topic_id = str(description.result(timeout=timeout_s).topic_id)
    except (KafkaException, TimeoutError, concurrent.futures.TimeoutError):
        return None
    return _Identity(cluster_id, topic_id) if cluster_id and topic_id else None


def _metadata(admin: AdminClient, lines: logmod.ClientLines, topic: str, timeout_s: float,
              first: bool = False) -> Any:
    """The cluster's metadata of ``topic``. The ``first`` request to the cluster ends before its
    timeout when no broker takes the connection (consumer.first_contact): nothing listens at the
    address, and waiting would not change that."""
    def answered() -> bool:
        admin.poll(0)  # serves the error events (lines.error)
        return lines.every_broker_down

    try:
        if first:
            return first_contact.metadata(admin, timeout_s, answered, topic)
        return admin.list_topics(topic=topic, timeout=timeout_s)
    except KafkaException as exc:
        within = "" if lines.every_broker_down else f" within {timeout_s:.0f}s"
        raise ProduceError(
            f"cannot read metadata for topic {topic!r}{within} ({lines.explain(exc)}); "
            "is a Kafka broker listening at the bootstrap address (e.g. `dev/stack status`)?"
        ) from exc


def _partition_count(metadata: Any, topic: str, require_leaders: bool = False) -> int | None:
    """Partition count from ``metadata``, or None if the topic is (not yet) usable."""
    info = metadata.topics.get(topic)
    if info is None or info.error is not None or not info.partitions:
        return None
    if require_leaders and any(p.leader < 0 for p in info.partitions.values()):
        return None
    return len(info.partitions)


def _client(config: dict[str, Any], topic: str, identity: _Identity | None) -> _Client | None:
    """The kept producer if it fits this call, else a new one that may be kept after it; None when
    this call's producer may not be kept (then ``config`` has the logger the caller creates it with:
    a topic not created here, whose identity is unknown, or settings that cannot be compared)."""
    key = _kept_key(config)
    config.setdefault("logger", logmod.LibrdkafkaLog(_log))
    if key is None or identity is None:
        return None
    if (kept := _KEPT.lend(key, topic, identity)) is not None:
        return kept
    troubles: list[KafkaError] = []
    producer = Producer({**config, "error_cb": troubles.append})
    return _Client(producer, key, identity.cluster_id, troubles=troubles)


def produce(
    bootstrap: str,
    topic: str,
    schema: str,
    n: int,
    partitions: int = 4,
    seed: int = 0,
    framing: Framing = "raw",
    registry_url: str | None = None,
    create_topic: bool = True,
    extra_config: Mapping[str, str] | None = None,
    progress: Callable[[int], None] | None = None,
    *,
    start: int = 0,
    spread_hours: int = 0,
) -> ProduceResult:
    """Produce records ``start .. start + n - 1`` of ``samples.generate(schema, seed=seed)``.

    Record ``i`` goes to partition ``i % partitions`` with key ``samples.key_for`` and timestamp
    ``samples.timestamp_ms_for``. With ``framing="confluent"`` the schema is registered under
    subject ``<topic>-value`` at ``registry_url`` and values carry the 5-byte Confluent header;
    with ``"raw"`` they are bare Avro. ``extra_config`` is passed to both the admin client and
    the producer (security settings, overrides of :data:`PRODUCER_DEFAULTS`). ``progress`` is
    called with the number of records delivered so far, every :data:`PROGRESS_EVERY` and at
    the end. ``spread_hours`` > 1 shifts record i's Kafka timestamp by a shuffled number of whole
    hours (``samples.spread_timestamp_ms``), so a time-bucketed run sees buckets interleave.
    Raises :class:`ProduceError` if anything was not delivered.
    """
    if n < 0 or start < 0:
        raise ProduceError(f"n and start must be >= 0, got n={n} start={start}")
    if partitions < 1:
        raise ProduceError(f"partitions must be >= 1, got {partitions}")
    if framing not in ("raw", "confluent"):
        raise ProduceError(f"framing must be 'raw' or 'confluent', got {framing!r}")
    if framing == "confluent" and not registry_url:
        raise ProduceError(
            "framing='confluent' needs registry_url (e.g. http://127.0.0.1:18081) to register "
            f"the schema under subject '{topic}-value'; or use framing='raw'"
        )
    if schema not in samples.schema_names():
        raise ProduceError(f"unknown schema {schema!r}; known: {samples.schema_names()}")

    started = time.monotonic()
    schema_dict = samples.load_schema(schema)
    parsed = samples.parsed_schema(schema)

    schema_id: int | None = None
    if framing == "confluent":
        assert registry_url is not None
        schema_id = SchemaRegistryClient(registry_url).register(f"{topic}-value", schema_dict)

    identity = _ensure_topic(bootstrap, topic, partitions, extra_config)[1] if create_topic else None

    config: dict[str, Any] = {"bootstrap.servers": bootstrap, **PRODUCER_DEFAULTS}
    config.update(extra_config or {})
    client = _client(config, topic, identity)
    producer = client.producer if client is not None else Producer(config)

    delivered = [0] * partitions
    failures: list[str] = []
    delivered_total = 0
    next_progress = PROGRESS_EVERY

    def on_delivery(err: KafkaError | None, msg: Any) -> None:
        nonlocal delivered_total
        if err is not None:
            if not failures:
                # Only metadata — never the payload.
                failures.append(f"partition {msg.partition()}: {err.str()} ({err.name()})")
            else:
                failures.append("")
            return
        delivered[msg.partition()] += 1
        delivered_total += 1

    encode = samples.encode_raw
    # Same bytes as samples.encode_confluent, with the 5-byte header built once.
    header = b"" if schema_id is None else samples.confluent_header(schema_id)
    key_for = samples.key_for
    ts_for = samples.timestamp_ms_for
    produce_one = producer.produce
    poll = producer.poll

    for i, record in enumerate(samples.generate(schema, n, seed=seed, start=start), start):
        value = header + encode(parsed, record)
        key = key_for(schema, record)
        timestamp = ts_for(schema, record)
        if spread_hours > 1:
            timestamp = samples.spread_timestamp_ms(timestamp, i, spread_hours)
        while True:
            try:
                produce_one(
                    topic,
                    value=value,
                    key=key,
                    partition=i % partitions,
                    timestamp=timestamp,
                    on_delivery=on_delivery,
                )
                break
            except BufferError:
                # Local queue full: serve delivery reports until librdkafka has room.
                poll(0.05)
        poll(0)
        if failures:
            break  # no point producing more; flush below and report the first error
        if progress is not None and delivered_total >= next_progress:
            progress(delivered_total)
            next_progress = (delivered_total // PROGRESS_EVERY + 1) * PROGRESS_EVERY

    remaining = producer.flush(float(config.get("message.timeout.ms", 120_000)) / 1000 + 10)
    elapsed = time.monotonic() - started
    if failures:
        raise ProduceError(
            f"{len(failures)} record(s) to topic {topic!r} failed delivery; first: {failures[0]}"
        )
    if remaining or delivered_total != n:
        raise ProduceError(
            f"only {delivered_total} of {n} records to topic {topic!r} were acknowledged "
            f"({remaining} still queued after flush); is the broker at {bootstrap} reachable?"
        )
    if client is not None and identity is not None:
        client.topics[topic] = identity.topic_id
        _KEPT.give_back(client)
    if progress is not None:
        progress(delivered_total)
    result = ProduceResult(
        topic=topic,
        count=delivered_total,
        partition_counts=dict(enumerate(delivered)),
        schema_id=schema_id,
        elapsed_s=elapsed,
    )
    _log.info(
        "produce_done",
        topic=topic,
        schema=schema,
        framing=framing,
        count=result.count,
        partitions=partitions,
        schema_id=schema_id,
        elapsed_s=round(elapsed, 3),
        records_per_s=round(result.records_per_s),
    )
    return result
