"""How a run ends when S3 gives an answer that will not change (in-memory doubles, milliseconds).

A 4xx the protocol does not handle itself, or a 501, is refused again after any retry or restart:
the run ends with exit status 4 and says what the server said and what to do, instead of the
"unexpected error, restart me" of exit status 5 (``consumer.storage.refusal``)."""

from __future__ import annotations

from structlog.testing import capture_logs
from test_shutdown import _broker, _runner
from test_storage_plan import client_error, wrapped

from consumer.errors import EXIT_FATAL, EXIT_STORAGE
from consumer.testing import MemoryStore


def test_a_refused_request_ends_with_exit_4_and_the_servers_words() -> None:
    broker, store = _broker(), MemoryStore()
    said = "Unsupported header 'x-amz-sdk-checksum-algorithm' received for this API call."
    refused = wrapped(client_error("InvalidArgument", 400, message=said))  # as s3fs raises it
    store.fail_next("put_object", refused, times=100)
    with capture_logs() as logs:
        assert _runner(broker, store, until_caught_up=True).run() == EXIT_STORAGE
    (stopped,) = [e for e in logs if e["log_level"] == "error"]
    assert stopped["event"] == "stopped: S3 refused a request"
    assert stopped["error"] == f"InvalidArgument: {said}"
    assert "README" in stopped["hint"] and "restart does not help" in stopped["hint"]
    assert all(broker.committed_offset("g", "t", p) is None for p in range(4))  # nothing committed


def test_an_unexpected_error_still_asks_for_a_restart() -> None:
    broker, store = _broker(), MemoryStore()
    store.fail_next("put_object", ValueError("a bug"), times=100)
    with capture_logs() as logs:
        assert _runner(broker, store, until_caught_up=True).run() == 5
    (stopped,) = [e for e in logs if e["log_level"] == "error"]
    assert stopped["event"].startswith("stopped: unexpected error") and "a bug" in stopped["error"]


def test_committed_offsets_that_cannot_be_read_end_the_run_before_anything_is_written() -> None:
    """The coordinator does not answer the recovery's read of the committed offsets within the
    retry budget: exit 5 naming the read, with nothing staged, committed or deleted (the next
    start reads them again)."""
    from confluent_kafka import KafkaError, KafkaException

    broker, store = _broker(), MemoryStore()
    runner = _runner(broker, store, until_caught_up=True)
    runner.positions.max_elapsed = 0.2

    def unanswered(*_args: object, **_kwargs: object) -> None:
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "coordinator load in progress"))

    runner.consumer.committed = unanswered
    with capture_logs() as logs:
        assert runner.run() == EXIT_FATAL
    (stopped,) = [e for e in logs if e["log_level"] == "error"]
    assert stopped["event"] == ("stopped: cannot read or commit positions (Kafka coordinator "
                                "unavailable too long)")
    assert stopped["error"].startswith("reading committed offset of t[")
    assert not [k for k in store.objects if "/_probe/" not in k]
    assert all(broker.committed_offset("g", "t", p) is None for p in range(4))
