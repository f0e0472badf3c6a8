"""What an operator reads when the Kafka client has trouble: a cluster that does not answer at
start is said as such, librdkafka's own log lines become JSON events, and a broker that stays
down is one line per half minute, not hundreds."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from typing import Any

import pyarrow.parquet as pq
import pytest
import structlog
from confluent_kafka import KafkaError, KafkaException
from structlog.testing import capture_logs
from test_shutdown import FakeClock, _broker

from consumer import log as logmod
from consumer.config import Config
from consumer.decoding import Decoder, load_schema
from consumer.errors import EXIT_CONFIG, EXIT_FATAL
from consumer.runner import GroupRunner
from consumer.testing import MemoryConsumer, MemoryStore


def test_a_line_that_repeats_is_logged_once_per_period_with_how_many_were_held_back() -> None:
    clock = FakeClock()
    throttle = logmod.Throttle(every=30.0, clock=clock)
    refused = "Connect to ipv4#127.0.0.1:{} failed: Connection refused (after {}ms in state CONNECT)"
    assert throttle.admit(refused.format(1, 0)) == 0  # the first: at once
    assert throttle.admit(refused.format(1, 3)) is None  # the same kind, digits aside: held back
    assert throttle.admit("1/1 brokers are down") == 0  # another kind: its own count
    clock.now += 29.9
    assert throttle.admit(refused.format(1, 0)) is None
    clock.now += 0.2
    assert throttle.admit(refused.format(1, 0)) == 2  # two held back since the last one logged
    assert throttle.admit(refused.format(1, 0)) is None


def test_librdkafka_log_lines_become_events_at_their_level() -> None:
    """confluent-kafka calls ``logger.log(level, "%s [%s] %s", facility, client, text)``."""
    kafka_log = logmod.LibrdkafkaLog(logmod.get("test"), logmod.Throttle(clock=FakeClock()))
    text = "[thrd:k:9092/bootstrap]: k:9092/bootstrap: Connect to ipv4#10.0.0.1:9092 failed"
    with capture_logs() as logs:
        for _ in range(3):
            kafka_log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", text)
        kafka_log.log(logging.WARNING, "%s [%s] %s", "CONFWARN", "rdkafka#consumer-1", "x ignored")
    assert logs == [
        {"event": "kafka client log", "log_level": "error", "facility": "FAIL",
         "client": "rdkafka#consumer-1", "message": text},
        {"event": "kafka client log", "log_level": "warning", "facility": "CONFWARN",
         "client": "rdkafka#consumer-1", "message": "x ignored"},
    ]  # fmt: skip


@pytest.fixture
def unfiltered_logs() -> Iterator[None]:
    """structlog as it is before any configuration: a test that ran the CLI earlier in this
    process left a filter at info level behind, which would drop the debug line looked for."""
    saved = structlog.get_config()
    structlog.reset_defaults()
    try:
        yield
    finally:
        structlog.configure(**saved)


@pytest.mark.usefixtures("unfiltered_logs")
def test_debug_lines_asked_for_with_x_debug_are_all_logged_at_info() -> None:
    """-X debug=… is a request for librdkafka's debug lines: the info filter must not eat them."""
    with capture_logs() as logs:
        for debugging in (False, True):
            kafka_log = logmod.LibrdkafkaLog(logmod.get("test"), debugging=debugging)
            for _ in range(2):
                kafka_log.log(logging.DEBUG, "%s [%s] %s", "HEARTBEAT", "rdkafka#consumer-1", "sent")
    # without -X debug: at debug level (filtered at info), once per kind; with it: each at info
    levels = [e["log_level"] for e in logs]
    assert levels == ["debug", "info", "info"]


def test_the_consumer_gets_the_logger_so_librdkafka_writes_nothing_to_stderr_itself() -> None:
    seen: list[dict[str, Any]] = []
    factory = _broker().consumer_factory()

    def capture(conf: dict[str, Any]) -> MemoryConsumer:
        seen.append(conf)
        return factory(conf)

    config = Config(bootstrap_servers="memory", group_id="g", topics=("t",), output="s3://bucket/out",
                    schema="page_view")
    GroupRunner(config, store=MemoryStore(), decoder=Decoder("raw", schema=load_schema("page_view")),
                consumer_factory=capture)  # fmt: skip
    assert isinstance(seen[0]["logger"], logmod.LibrdkafkaLog)


_REFUSED_CONNECTION = ("k:9092/bootstrap: Connect to ipv4#10.0.0.1:9092 failed: Connection refused "
                       "(after 0ms in state CONNECT)")


def _first_requests_fail(*events: KafkaError, bootstrap: str = "k:9092", waits: bool = False,
                         finish: bool = False) -> tuple[GroupRunner, MemoryStore]:
    """A run whose first request (metadata) fails as "Broker transport failure" (``waits``: after
    its whole timeout, as librdkafka's does when no broker comes up), and whose client has queued
    ``events`` for its error callback by then (served at the next poll)."""
    broker, store = _broker(), MemoryStore()
    factory = broker.consumer_factory()

    def failing(conf: dict[str, Any]) -> MemoryConsumer:
        consumer = factory(conf)

        def no_metadata(*_args: Any, timeout: float = -1, **_kwargs: Any) -> Any:
            if waits:
                time.sleep(timeout)
            said = "Failed to get metadata: Local: Broker transport failure"
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, said))

        def served(*_: Any) -> None:
            for event in events:
                conf["error_cb"](event)

        consumer.list_topics = no_metadata  # type: ignore[method-assign]
        consumer.poll = served  # type: ignore[attr-defined]
        return consumer

    config = Config(bootstrap_servers=bootstrap, group_id="g", topics=("t",), output="s3://bucket/out",
                    schema="page_view")
    decoder = Decoder("raw", schema=load_schema("page_view"))
    if finish:
        from consumer.finish import FinishRunner

        return FinishRunner(config, store=store, decoder=decoder, consumer_factory=failing), store  # type: ignore[return-value]
    return GroupRunner(config, store=store, decoder=decoder, consumer_factory=failing), store


def test_a_cluster_that_does_not_answer_at_start_is_said_as_such_and_nothing_is_written() -> None:
    """With the client's own first error (not "all brokers down", which says nothing more), e.g.
    a refused connection."""
    runner, store = _first_requests_fail(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"),
                                         KafkaError(KafkaError._TRANSPORT, _REFUSED_CONNECTION))
    with capture_logs() as logs:
        assert runner.run() == EXIT_FATAL
    stop = next(e for e in logs if e["event"] == "stopped: KafkaUnreachable")
    assert stop["error"].startswith("the first requests to Kafka failed (Failed to get metadata: Local: "
                                    f"Broker transport failure; librdkafka: {_REFUSED_CONNECTION}): ")
    assert "check --bootstrap-servers (k:9092)" in stop["error"]
    assert runner.stats.records == 0
    assert not [k for k in store.objects if k.endswith(".parquet")]


def test_verify_against_a_closed_port_says_at_once_that_kafka_took_no_connection_and_exits_2_not_1(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Exit 1 means "an invariant is violated": a question Kafka did not answer is not a finding
    about the output. librdkafka's own lines stay off the terminal (it writes to the descriptor)."""
    from consumer import cli

    started = time.monotonic()
    code = cli.main(["verify", "--output", "s3://bucket/out", "--topic", "t", "--group-id", "g",
                     "--bootstrap-servers", "127.0.0.1:1", "--s3-endpoint-url", "http://127.0.0.1:1"])
    assert code == 2
    assert time.monotonic() - started < 10, "a refused connection is an answer: not its 15 s wait"
    err = capfd.readouterr().err
    assert "consumer: verify: Kafka at 127.0.0.1:1 took no connection (Failed to get metadata" in err
    assert "librdkafka: " in err and "Connection refused" in err
    assert "|FAIL|rdkafka" not in err and "Traceback" not in err


def test_produce_against_a_closed_port_says_why_at_once_and_exits_1_without_raw_lines(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """`consumer produce` (the demo's producer) reports a broker it cannot reach in one line with
    librdkafka's reason, not a traceback under a stream of ``%3|…|FAIL|…`` lines."""
    from consumer import cli

    started = time.monotonic()
    code = cli.main(["produce", "--bootstrap-servers", "127.0.0.1:1", "--topic", "t", "--count", "1"])
    assert code == 1
    assert time.monotonic() - started < 8, "a refused connection is an answer: not its 10 s wait"
    err = capfd.readouterr().err
    assert "consumer: produce: cannot read metadata for topic 't' (Failed to get metadata" in err
    assert "librdkafka: " in err and "Connection refused" in err
    assert "|FAIL|rdkafka" not in err and "Traceback" not in err


# -- ACLs the cluster does not grant ---------------------------------------------------------
def test_an_acl_kafka_refuses_is_named_with_the_grant_to_make() -> None:
    """TOPIC_/GROUP_/CLUSTER_AUTHORIZATION_FAILED (29, 30, 31) stop the run with the ACL to grant;
    any other code is not this module's to explain."""
    from consumer.kafka_names import not_authorized

    topic = not_authorized(29, "events", "g", "Broker: Topic authorization failed")
    assert topic is not None
    assert topic.startswith("Kafka does not authorize this client to read topic 'events' (Broker: Topic "
                            "authorization failed); a broker says the same")
    assert "--operation Read --operation Describe --topic events" in topic
    group = not_authorized(30, None, "g", "Group authorization failed.")
    assert group is not None and "use consumer group 'g'" in group and "--operation Read --group g" in group
    cluster = not_authorized(31, None, "g", "Cluster authorization failed")
    assert cluster is not None and "cluster operation" in cluster
    assert not_authorized(3, "events", "g", "Unknown topic or partition") is None


# -- a login the cluster refuses ---------------------------------------------------------------
_REFUSED = ("sasl_plaintext://k:9095/1: SASL authentication error: Authentication failed during "
            "re-authentication due to invalid credentials with SASL mechanism SCRAM-SHA-256")


def test_a_refused_login_is_named_with_the_settings_to_check() -> None:
    """librdkafka's _AUTHENTICATION (-169) and Kafka's SASL_AUTHENTICATION_FAILED (58): the
    credentials, not the network; any other code is not this message's."""
    from consumer.kafka_names import login_refused

    said = login_refused(KafkaError._AUTHENTICATION, _REFUSED)
    assert said is not None and said.startswith(f"Kafka refused this client's login ({_REFUSED})")
    assert "sasl.username and sasl.password" in said and "sasl.mechanism" in said
    assert login_refused(58, "Authentication failed") is not None
    assert login_refused(KafkaError._TRANSPORT, "Broker transport failure") is None
    assert login_refused(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down") is None


def test_a_login_refused_at_start_stops_with_status_2_not_as_an_unreachable_cluster() -> None:
    """The first request fails as "Broker transport failure"; the client's error event says why.
    Before, the run waited out the metadata timeout and exited 5 blaming the address."""
    runner, store = _first_requests_fail(KafkaError(KafkaError._AUTHENTICATION, _REFUSED), bootstrap="k:9095")
    with capture_logs() as logs:
        assert runner.run() == EXIT_CONFIG
    stop = next(e for e in logs if e["event"] == "stopped: KafkaLoginRefused")
    assert stop["error"].startswith("Kafka refused this client's login (sasl_plaintext://")
    assert not [k for k in store.objects if k.endswith(".parquet")]


def test_a_refusal_at_the_first_handshake_stops_the_start_within_a_second_not_after_the_whole_wait() -> None:
    """librdkafka's metadata request waits its whole timeout (10 s) for a broker that never comes
    up, and the refusal is an error event served after it: the run, replay and check each said an
    untrusted certificate or a refused login 10 s late. Now the wait is asked in slices of a
    second (consumer.first_contact), with the events served between them."""
    runner, _ = _first_requests_fail(KafkaError(KafkaError._AUTHENTICATION, _REFUSED), bootstrap="k:9095",
                                     waits=True)
    started = time.monotonic()
    with capture_logs() as logs:
        assert runner.run() == EXIT_CONFIG
    assert time.monotonic() - started < 5, "stopped at the first slice's end, not after 10 s"
    assert any(e["event"] == "stopped: KafkaLoginRefused" for e in logs)


def test_a_connection_every_broker_refused_ends_finish_s_first_wait_at_once_and_not_a_run_s() -> None:
    """``consumer finish`` is run by an operator, who waits for its answer: nothing listening at
    the address is said at the first slice's end. A run is started beside its brokers (compose, a
    pod) and gives one still starting its 10 s: the same events do not end its wait."""
    down = (KafkaError(KafkaError._TRANSPORT, _REFUSED_CONNECTION),
            KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    finish, store = _first_requests_fail(*down, waits=True, finish=True)
    started = time.monotonic()
    with capture_logs() as logs:
        assert finish.run() == EXIT_FATAL
    assert time.monotonic() - started < 5, "stopped at the first slice's end, not after 10 s"
    stop = next(e for e in logs if e["event"] == "stopped: KafkaUnreachable")
    assert f"librdkafka: {_REFUSED_CONNECTION}" in stop["error"]
    assert not [k for k in store.objects if k.endswith(".parquet")]
    run, _ = _first_requests_fail(*down, waits=True)
    run.consumer.poll(0)  # serves the events
    assert not run._refused_at_first_contact(), "a run waits for a broker still starting"
    assert finish._refused_at_first_contact()


def test_a_login_refused_mid_run_stops_with_status_2_without_a_flush_and_a_restart_loses_nothing() -> None:
    """A SCRAM password changed on the cluster: the next time a connection logs in (KIP-368
    re-authentication, or a reconnect) it is refused, and every later one too. Before, the member
    idled for good, and a flush's commit waited minutes for a coordinator it could not reach.
    Now the run stops at the next poll with status 2; the held rows are not flushed (nothing
    could commit them) and are consumed again, once, by the next run."""
    from test_shutdown import PARTITIONS, PER_PARTITION, _final_offsets, _runner

    from consumer.testing import at_consume

    broker, store = _broker(), MemoryStore()
    runner = _runner(broker, store)
    refuse = lambda: runner.consumer.conf["error_cb"](KafkaError(KafkaError._AUTHENTICATION, _REFUSED))  # noqa: E731
    at_consume(runner.consumer, {2: refuse})
    with capture_logs() as logs:
        assert runner.run() == EXIT_CONFIG
    assert any(e["event"] == "stopped: KafkaLoginRefused" for e in logs)
    assert runner.stats.records == PARTITIONS * PER_PARTITION  # consumed, held, not flushed
    assert [broker.committed_offset("g", "t", p) for p in range(PARTITIONS)] == [None] * PARTITIONS
    assert _final_offsets(store) == {}

    again = _runner(broker, store, until_caught_up=True)
    assert again.run() == 0
    assert _final_offsets(store) == {p: list(range(PER_PARTITION)) for p in range(PARTITIONS)}


# -- a broker certificate the client does not trust (TLS) ------------------------------------------
_UNTRUSTED = ("ssl://k:9093/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify "
              "failed: broker certificate could not be verified, verify that ssl.ca.location is correctly "
              "configured or root CA certificates are installed (install ca-certificates package) "
              "(after 33ms in state SSL_HANDSHAKE)")  # librdkafka 2.x, said to a client trusting another CA


def test_a_broker_certificate_the_client_does_not_trust_is_named_with_ssl_ca_location() -> None:
    """A handshake that fails verification (_SSL, "certificate verify failed") fails so on every
    try; a handshake cut short does not say it, and is an outage to wait out."""
    from consumer.kafka_names import login_refused

    said = login_refused(KafkaError._SSL, _UNTRUSTED)
    assert said is not None and said.startswith(f"this client does not trust the Kafka broker's certificate "
                                                f"({_UNTRUSTED})")
    assert "ssl.ca.location" in said and "trust both" in said
    assert login_refused(KafkaError._SSL, "ssl://k:9093/1: SSL handshake failed: Disconnected") is None
    assert login_refused(KafkaError._TRANSPORT, "certificate verify failed") is None


def test_a_client_certificate_the_broker_refuses_is_named_with_ssl_certificate_location() -> None:
    """Mutual TLS, librdkafka 2.x against the stack's Kafka 4.1 (said when the first request's
    answer is read): an expired certificate, one of another CA or none. Other transport errors
    are outages, waited out."""
    from consumer.kafka_names import login_refused

    for alert in ("error:0A000416:SSL routines::ssl/tls alert certificate unknown: SSL alert number 46",
                  "error:0A000412:SSL routines::ssl/tls alert bad certificate: SSL alert number 42"):
        event = f"ssl://k:9093/bootstrap: Receive failed: {alert} (after 13ms in state APIVERSION_QUERY)"
        said = login_refused(KafkaError._TRANSPORT, event)
        assert said is not None and said.startswith(f"the Kafka broker refused this client's certificate "
                                                    f"({event})")
        assert "ssl.certificate.location and ssl.key.location" in said
    assert login_refused(KafkaError._TRANSPORT, "ssl://k:9093/1: Receive failed: Disconnected") is None
    assert login_refused(KafkaError._TRANSPORT, "sasl_plaintext://k:9095/1: Connect to ipv4#k:9095 failed: "
                                                "Connection refused") is None


def test_a_broker_certificate_not_trusted_at_start_stops_with_status_2_not_as_unreachable() -> None:
    """Before, the run waited out the metadata timeout and exited 5 blaming the address."""
    runner, store = _first_requests_fail(KafkaError(KafkaError._SSL, _UNTRUSTED),
                                         KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"),
                                         bootstrap="k:9093")
    with capture_logs() as logs:
        assert runner.run() == EXIT_CONFIG
    stop = next(e for e in logs if e["event"] == "stopped: KafkaLoginRefused")
    assert stop["error"].startswith("this client does not trust the Kafka broker's certificate (ssl://k:9093")
    assert not [k for k in store.objects if k.endswith(".parquet")]


# -- a topic deleted under the run -----------------------------------------------------------------
_GONE = KafkaError(KafkaError._UNKNOWN_PARTITION, "t [0]: desired partition is no longer available")


@pytest.mark.parametrize("deleted", [True, False])
def test_a_topic_deleted_mid_run_stops_it_with_status_5_naming_it(deleted: bool) -> None:
    """The client says a partition is unknown once the topic is deleted, and the member stayed
    assigned, reading nothing, for good. The run asks the cluster first: the same word while the
    topic is still listed (a leader moving) changes nothing."""
    from test_shutdown import _broker, _runner

    from consumer.testing import at_consume

    broker, store = _broker(), MemoryStore()
    runner = _runner(broker, store, until_caught_up=not deleted)
    listed = runner.consumer.list_topics

    def delete() -> None:
        if deleted:
            runner.consumer.list_topics = lambda *a, **k: type(listed())({})  # type: ignore[method-assign]
        runner.consumer.conf["error_cb"](_GONE)

    at_consume(runner.consumer, {2: delete, 30: runner.request_stop})  # 30: it idled (before)
    with capture_logs() as logs:
        status = runner.run()
    if not deleted:
        assert status == 0
        return
    assert status == EXIT_FATAL
    stop = next(e for e in logs if e["event"] == "stopped: TopicDeleted")
    assert stop["error"].startswith("topic 't' was deleted while this consumer read it")
    assert "a new --output prefix with a new group" in stop["error"]
    # librdkafka has aborted in close after a topic was deleted: the process ends without it
    assert runner.exit_without_client and not runner.consumer.closed


@pytest.mark.parametrize("told", ["lost", "both"])
def test_a_topic_deleted_mid_run_whose_partitions_the_client_reports_lost_stops_it_with_its_rows_staged(
    told: str,
) -> None:
    """librdkafka may learn of the deletion from its metadata first (a periodic refresh, or
    topic.metadata.refresh.interval.ms set low): it reports the topic's partitions lost. They were
    dropped without writing, so the rows held were in no file and no longer in Kafka (lost without
    a word), and the member then idled with no partition, for good. Now a partition lost with its
    topic is kept until the stop: status 5, its held rows staged (the only copy), nothing final."""
    from test_shutdown import PARTITIONS, PER_PARTITION, _runner

    from consumer.testing import at_consume

    broker, store = _broker(), MemoryStore()
    runner = _runner(broker, store)

    def delete() -> None:
        broker.delete_topic("t")
        if told == "both":
            runner.consumer.conf["error_cb"](_GONE)

    at_consume(runner.consumer, {2: delete, 30: runner.request_stop})  # 30: it idled (before)
    with capture_logs() as logs:
        status = runner.run()
    assert status == EXIT_FATAL, [e["event"] for e in logs]
    stop = next(e for e in logs if e["event"] == "stopped: TopicDeleted")
    assert stop["error"].startswith("topic 't' was deleted while this consumer read it")
    assert not [e for e in logs if e["event"] == "partitions lost: dropped without writing"]
    assert runner.exit_without_client and not runner.consumer.closed
    staged = [pq.read_table(io.BytesIO(data)) for k, data in sorted(store.objects.items())
              if "/_staging/" in k and k.endswith(".piece")]
    held = sorted((p, o) for t in staged for p, o in zip(t.column("kafka_partition").to_pylist(),
                                                          t.column("kafka_offset").to_pylist(), strict=True))
    assert held == [(p, o) for p in range(PARTITIONS) for o in range(PER_PARTITION)]
    assert not [k for k in store.objects if k.endswith(".parquet") and "/_staging/" not in k]


def test_partitions_lost_while_their_topic_is_listed_are_dropped_without_writing() -> None:
    """A lost assignment (the member was expelled) of a topic the cluster still lists: another
    member may own those partitions now, so nothing of them is written, as before."""
    from test_shutdown import PARTITIONS, _runner

    from consumer.testing import at_consume

    broker, store = _broker(), MemoryStore()
    runner = _runner(broker, store, until_caught_up=True, batch_size=10)
    at_consume(runner.consumer, {2: lambda: broker.expire(runner.consumer)})
    with capture_logs() as logs:
        status = runner.run()
    assert status == 0
    # lost and assigned again within one poll: one line names them all
    dropped = [e["partitions"] for e in logs if e["event"] == "partitions lost: dropped without writing"]
    assert dropped == [[f"t[{p}]" for p in range(PARTITIONS)]], dropped
    assert not [e for e in logs if str(e["event"]).startswith("stopped:")]
