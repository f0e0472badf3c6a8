"""An address where nothing listens is an answer, for the commands that answer an operator.

``check``, ``verify``, ``show``, ``produce`` and ``finish`` are asked by someone waiting at a terminal
(or by a health check): a refused connection, S3's or every Kafka broker's, is told within a second
or two, where they used to wait out their whole timeout (``verify`` retried S3 for four minutes).
A run and ``replay`` still give a server that may be starting their first-contact waits (about
10 s for Kafka, 30 s for S3): they are started beside their dependencies (compose, a pod), and the
next try of a service that exits at once is a restart with a back-off. A server that accepts the
connection and then says nothing gets the whole wait in every command: that is not an answer.
(Kafka's side of ``verify``, ``produce`` and ``finish``: tests/unit/test_kafka_client_errors.py;
``check``'s: tests/unit/test_check.py.)
"""

from __future__ import annotations

import time

import pytest

from consumer import cli
from consumer.storage import RetryPolicy, S3Store, TransientStorageError, connection_refused

NOTHING = "http://127.0.0.1:1"  # nothing listens on port 1


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)  # verify asks no broker then


def _store() -> S3Store:
    store = S3Store("bucket", endpoint_url=NOTHING, retry=RetryPolicy(base=0.05, cap=0.1, max_elapsed=60))
    store.connect()
    return store


def test_a_refused_connection_is_told_from_a_silent_or_failing_server() -> None:
    try:
        raise ConnectionError("the client's own words") from ConnectionRefusedError(111, "refused")
    except ConnectionError as exc:
        assert connection_refused(exc)
    assert not connection_refused(TimeoutError("no answer within the read timeout"))
    assert not connection_refused(ConnectionResetError(104, "reset by peer"))
    looped = RuntimeError("a")
    looped.__context__ = RuntimeError("b")
    looped.__context__.__context__ = looped
    assert not connection_refused(looped)


def test_a_first_request_gives_up_at_once_on_a_refused_connection_and_a_run_s_retries_on() -> None:
    store = _store()
    started = time.monotonic()
    refused = f"the connection was refused: nothing listens at {NOTHING}"
    with pytest.raises(TransientStorageError, match=refused):
        store.reach("out/", seconds=30)
    assert time.monotonic() - started < 10
    assert store.stats.requests.get("list_objects_v2") == 1, "one try, no retries"
    # the run's first contact (Runner._first_contact_with_s3) waits for a server still starting
    store = _store()
    with pytest.raises(TransientStorageError, match="kept failing for"), store.patience(3.0):
        store.list("out/")
    assert store.stats.requests.get("list_objects_v2", 0) > 1


def test_verify_against_an_s3_endpoint_where_nothing_listens_exits_2_at_once(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """It retried the listing for 4 minutes, like a run in an S3 outage, before saying so."""
    started = time.monotonic()
    code = cli.main(["verify", "--output", "s3://bucket/out", "--topic", "t", "--committed", "0=5",
                     "--s3-endpoint-url", NOTHING])
    assert code == 2
    assert time.monotonic() - started < 10
    err = capfd.readouterr().err
    assert err.startswith("consumer: verify: could not read the output, so nothing was verified: S3 "
                          "list_objects_v2 on s3://bucket: the connection was refused: nothing listens at "
                          f"{NOTHING}")


def test_show_against_an_s3_endpoint_where_nothing_listens_exits_4_at_once(
    capfd: pytest.CaptureFixture[str],
) -> None:
    started = time.monotonic()
    assert cli.main(["show", "--output", "s3://bucket/out", "--s3-endpoint-url", NOTHING]) == 4
    assert time.monotonic() - started < 10
    assert f"the connection was refused: nothing listens at {NOTHING}" in capfd.readouterr().err


def test_check_s_s3_probe_says_so_at_once_whatever_its_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    from consumer import check
    from consumer import config as cfgmod

    monkeypatch.setenv("S3_ENDPOINT_URL", NOTHING)
    config = cfgmod.load({"output": "s3://bucket/out", "topics": "t", "group_id": "g", "schema": "page_view",
                          "framing": "raw"})
    started = time.monotonic()
    with pytest.raises(TransientStorageError, match="the connection was refused"):
        check.check_s3(config, timeout=20.0)
    assert time.monotonic() - started < 10


def test_finish_against_an_s3_endpoint_where_nothing_listens_exits_4_at_once() -> None:
    """A run's start-up probe gives S3 30 s (it may be starting beside the run); ``consumer
    finish``, run by an operator, says a refused connection at once."""
    from structlog.testing import capture_logs
    from test_shutdown import _broker

    from consumer.config import Config
    from consumer.decoding import Decoder, load_schema
    from consumer.errors import EXIT_STORAGE
    from consumer.finish import FinishRunner

    config = Config(bootstrap_servers="k:9092", group_id="g", topics=("t",), output="s3://bucket/out",
                    schema="page_view")
    finish = FinishRunner(config, store=_store(), decoder=Decoder("raw", schema=load_schema("page_view")),
                          consumer_factory=_broker().consumer_factory())
    started = time.monotonic()
    with capture_logs() as logs:
        assert finish.run() == EXIT_STORAGE
    assert time.monotonic() - started < 10
    said = " ".join(str(e.get("error", "")) for e in logs)
    assert "S3 did not answer at start" in said and f"nothing listens at {NOTHING}" in said, logs
