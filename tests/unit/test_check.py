"""`consumer check` without a stack: bad configuration exits 2, unreachable dependencies exit 1
with one FAIL line each (the compose health check relies on both)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from consumer import cli

RUN_ENV = {
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",  # nothing listens on port 1
    "S3_ENDPOINT_URL": "http://127.0.0.1:1",
    "SCHEMA_REGISTRY_URL": "http://127.0.0.1:1/apis/ccompat/v7",
    "AWS_ACCESS_KEY_ID": "k",
    "AWS_SECRET_ACCESS_KEY": "s",
    "CONSUMER_TOPICS": "page_views",
    "CONSUMER_GROUP_ID": "g",
    "CONSUMER_OUTPUT": "s3://bucket/prefix",
    "CONSUMER_FRAMING": "confluent",
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith(("CONSUMER_", "KAFKA_", "S3_", "SCHEMA_REGISTRY", "AWS_")):
            monkeypatch.delenv(key)
    for key, value in RUN_ENV.items():
        monkeypatch.setenv(key, value)


def test_invalid_configuration_exits_2(
    env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CONSUMER_OUTPUT")
    monkeypatch.setenv("CONSUMER_FRAMING", "raw")
    monkeypatch.setenv("CONSUMER_SCHEMA", "no_such_schema")
    assert cli.main(["check"]) == 2
    err = capsys.readouterr().err
    assert "output missing" in err


def test_a_memory_budget_the_container_cannot_hold_exits_2(
    env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`check` refuses what `run` would refuse at start: a budget set by hand over the container's
    memory limit (tests/unit/test_container.py has the rule)."""
    from consumer import container

    monkeypatch.setattr(container, "memory_limit", lambda: 512 << 20)
    monkeypatch.setenv("CONSUMER_MEMORY_BYTES", "1GiB")
    assert cli.main(["check"]) == 2
    assert "over the container's memory limit of 536 MB (cgroup)" in capsys.readouterr().err


def test_check_says_the_memory_budget_fits_the_container(
    env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from consumer import container

    monkeypatch.setattr(container, "memory_limit", lambda: 512 << 20)
    cli.main(["check", "--timeout", "0.5"])  # nothing answers: exit 1, after the config lines
    assert ("ok   memory: --memory-bytes 383 MB (the default, lowered to fit), + 100 MB for each of 1 "
            "member(s), fits the container's limit of 536 MB") in capsys.readouterr().out


def test_unknown_schema_exits_2(
    env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CONSUMER_FRAMING", "raw")
    assert cli.main(["check", "--schema", "no_such_schema"]) == 2
    assert "no_such_schema" in capsys.readouterr().err


def test_unreachable_dependencies_fail_each_within_the_timeout(
    env: None, capfd: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    assert cli.main(["check", "--group-active", "--timeout", "1"]) == 1
    assert time.monotonic() - started < 30
    out, err = capfd.readouterr()  # file descriptors: librdkafka writes to stderr's directly
    assert out.startswith("ok   config: valid (confluent framing, topics page_views)")
    for name in ("kafka", "s3", "registry", "group"):
        assert f"FAIL {name}: " in err, err
    # librdkafka's own lines stay off the terminal; its first error explains the Kafka check
    assert "|FAIL|rdkafka" not in err
    kafka = next(line for line in err.splitlines() if line.startswith("FAIL kafka: "))
    assert "librdkafka: " in kafka and "Connection refused" in kafka, kafka


def test_a_broker_address_where_nothing_listens_is_told_at_once_not_after_the_timeout(env: None) -> None:
    """Every broker refused the connection (librdkafka's "all brokers are down"): an answer that
    waiting would not change, so the Kafka check says it within about a second of its --timeout.
    A broker that only does not answer yet still gets the whole wait (consumer.first_contact)."""
    from consumer import check
    from consumer import config as cfgmod

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="Connection refused"):
        check.check_kafka(cfgmod.load(), timeout=20.0)
    assert time.monotonic() - started < 10


def test_check_destroys_its_kafka_clients_before_it_returns(
    env: None, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each admin client refers to its logger and the logger to it, so dropped it would live until
    the cycle collector came, on whatever thread allocated then: librdkafka's own, when a request's
    answer arrives (confluent-kafka-python issues 1761 and 2129), and a client destroyed on its own
    thread crashes the process. A health check died of SIGSEGV in CI. So `check` destroys each
    client itself, on its thread, before it returns."""
    import importlib

    from confluent_kafka import admin

    check = importlib.import_module("consumer.check")  # the module cli.main imports (sys.modules)
    monkeypatch.setattr(check, "_in_child", check._run)  # the probes in this process, where it can look
    made: list[admin.AdminClient] = []
    init = admin.AdminClient.__init__

    def kept(self: admin.AdminClient, conf: dict[str, object], **kwargs: object) -> None:
        """Keeps a reference to each AdminClient made, to look at it after `check` returns."""
        init(self, conf, **kwargs)
        made.append(self)

    monkeypatch.setattr(admin.AdminClient, "__init__", kept)
    assert cli.main(["check", "--group-active", "--timeout", "1"]) == 1
    capfd.readouterr()
    assert len(made) == 2, "check made no admin client: this test no longer tests anything"
    for client in made:
        with pytest.raises(RuntimeError, match="closed"):
            client.poll(0)


class _Event:
    """A librdkafka error event as confluent-kafka's KafkaError reads."""

    def __init__(self, code: int, said: str) -> None:
        self._code, self._said = code, said

    def code(self) -> int:
        return self._code

    def str(self) -> str:
        return self._said


def test_a_refused_handshake_is_named_when_its_event_comes_after_a_transport_failure() -> None:
    """The untrusted-broker explanation comes from the client's error event with librdkafka's SSL
    code. That event can come after a broker transport failure's, or only after the metadata
    request has failed, with its log line already there (one CI run of the stack test). ``check``
    looks at every event and waits a moment for the handshake's own."""
    from consumer import check
    from consumer import log as logmod
    from consumer.config import Config

    handshake = ("ssl://127.0.0.1:19096/bootstrap: SSL handshake failed: error:0A000086:SSL routines::"
                 "certificate verify failed (after 2ms in state SSL_HANDSHAKE)")
    lines = logmod.ClientLines()
    lines.error(_Event(-195, "ssl://127.0.0.1:19096/bootstrap: Broker transport failure"))
    lines.log(logging.ERROR, "FAIL", handshake)

    class Admin:
        polls = 0

        def list_topics(self, timeout: float) -> object:
            raise RuntimeError("Failed to get metadata: Local: Broker transport failure")

        def poll(self, timeout: float) -> int:
            self.polls += 1
            if self.polls == 3:  # the handshake's event, a moment later
                lines.error(_Event(-181, handshake))
            return 0

    config = Config(bootstrap_servers="127.0.0.1:19096", group_id="g", topics=("t",),
                    output="s3://bucket/p", schema="page_view")
    with pytest.raises(RuntimeError) as said:
        check._check_kafka(Admin(), lines, config, timeout=1.0)
    assert str(said.value).startswith("this client does not trust the Kafka broker's certificate ("), \
        said.value

    lines = logmod.ClientLines()  # an unreachable broker: no certificate, no waiting
    lines.log(logging.ERROR, "FAIL", "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: refused")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="Failed to get metadata"):
        check._check_kafka(Admin(), lines, config, timeout=1.0)
    assert time.monotonic() - started < check.TLS_EVENT_WAIT


# -- a Kafka probe in a child process ------------------------------------------------------------


def _dies_first(marker: str, signum: int) -> str:
    """A probe whose first call kills its process with ``signum`` (as a native crash would) and
    whose next call answers."""
    import os

    if not os.path.exists(marker):
        open(marker, "w").close()
        _die_of(signum)
    return "answered"


def _die_of(signum: int) -> None:
    """End this (forked) process with ``signum`` as librdkafka's threads die: no fault handler, and
    no core file left in the working directory (the repository's root) where cores are allowed."""
    import os
    import resource
    import signal

    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def test_a_probe_whose_process_dies_once_is_tried_again_saying_what_the_first_died_of(tmp_path: Path) -> None:
    import signal

    from consumer import check

    result = check._in_child("kafka", lambda: _dies_first(f"{tmp_path}/died", signal.SIGSEGV))
    assert result.ok, result
    assert result.detail.startswith("answered (") and "died of SIGSEGV" in result.detail, result


def test_a_probe_whose_process_dies_every_time_fails_naming_the_signal_and_the_process_goes_on() -> None:
    import signal

    from consumer import check

    def crash() -> str:
        _die_of(signal.SIGABRT)
        return "never"

    result = check._in_child("group", crash)
    assert not result.ok
    assert "died of SIGABRT and then SIGABRT in each of 2 tries" in result.line(), result.line()


def test_a_probe_in_a_child_reports_its_error_and_its_answer_as_in_process() -> None:
    from consumer import check

    def refused() -> str:
        raise RuntimeError("topic 'x' does not exist")

    assert check._in_child("kafka", refused).line() == "FAIL kafka: RuntimeError: topic 'x' does not exist"
    answered = check._in_child("kafka", lambda: "1 broker(s)")
    assert answered.ok and answered.detail.startswith("1 broker(s) (")
