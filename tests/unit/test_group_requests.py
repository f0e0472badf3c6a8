"""Requests to a consumer group's coordinator never time out inside librdkafka: a late answer to one
it timed out crashes the process (consumer/group_requests.py). The callers bound their wait in
Python instead, and a runner keeps one unanswered request per group, not one per look."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import pytest

from consumer import check, group_requests, runner
from consumer import config as cfgmod
from consumer import log as logmod


def _answered(value: Any) -> Future[Any]:
    f: Future[Any] = Future()
    f.set_result(value)
    return f


def test_an_answer_that_does_not_come_is_a_timeout_naming_the_wait_and_the_request_stays_in_flight() -> None:
    pending: Future[Any] = Future()
    with pytest.raises(TimeoutError, match=r"no answer within 0\.05s"):
        group_requests.answer(pending, 0.05)
    assert not pending.done() and not pending.cancelled()
    assert group_requests.answer(_answered("desc"), 0.05) == "desc"


def test_the_request_s_own_error_is_raised_as_it_is() -> None:
    failed: Future[Any] = Future()
    failed.set_exception(TimeoutError("the broker said: timed out"))
    with pytest.raises(TimeoutError, match="the broker said"):
        group_requests.answer(failed, 0.05)
    refused: Future[Any] = Future()
    refused.set_exception(RuntimeError("GROUP_AUTHORIZATION_FAILED"))
    with pytest.raises(RuntimeError, match="GROUP_AUTHORIZATION_FAILED"):
        group_requests.answer(refused, 0.05)


class _SilentAdmin:
    """An AdminClient whose coordinator never answers; records what each request was told."""

    def __init__(self) -> None:
        self.timeouts: list[float] = []
        self.futures: list[Future[Any]] = []

    def _ask(self, keys: list[Any], request_timeout: float) -> dict[Any, Future[Any]]:
        self.timeouts.append(request_timeout)
        out: dict[Any, Future[Any]] = {}
        for key in keys:
            f: Future[Any] = Future()
            self.futures.append(f)
            out[getattr(key, "group_id", key)] = f
        return out

    def describe_consumer_groups(self, groups: list[str], request_timeout: float) -> dict[Any, Future[Any]]:
        return self._ask(groups, request_timeout)



def test_check_tells_librdkafka_no_timeout_and_waits_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """``consumer check``'s admin request to the group (has it a member) goes out with the far
    timeout and fails after the check's own."""
    admin = _SilentAdmin()

    @contextlib.contextmanager
    def silent(config: cfgmod.Config, lines: Any) -> Iterator[Any]:
        yield lines.watch(admin)

    monkeypatch.setattr(check, "_admin", silent)
    config = cfgmod.Config(topics=("t",), group_id="g", output="s3://b/p")
    with pytest.raises(RuntimeError, match=r"no answer within 0\.05s"):
        check.check_group(config, 0.05)
    assert admin.timeouts == [group_requests.REQUEST_TIMEOUT]
    assert not any(f.done() for f in admin.futures)


def test_may_the_principal_use_the_group_is_asked_by_a_consumer_that_never_joins_not_the_admin_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An AdminClient's ``list_consumer_group_offsets`` crashes the process when the broker answers
    NOT_COORDINATOR (librdkafka issue 5040; a fresh broker loading the group's offsets does), so
    the check asks the OffsetFetch through a Consumer of the group, which never subscribes. An
    unreachable broker's silence says nothing, within the check's timeout."""
    import confluent_kafka
    from confluent_kafka.admin import AdminClient

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("list_consumer_group_offsets must not be asked")

    monkeypatch.setattr(AdminClient, "list_consumer_group_offsets", refused)
    asked: list[dict[str, Any]] = []
    subscribed: list[Any] = []

    class NotingConsumer(confluent_kafka.Consumer):  # type: ignore[misc]
        def __init__(self, conf: dict[str, Any]) -> None:
            asked.append(dict(conf))
            super().__init__(conf)

        def subscribe(self, *args: Any, **kwargs: Any) -> None:
            subscribed.append(args)

    monkeypatch.setattr(confluent_kafka, "Consumer", NotingConsumer)
    config = cfgmod.Config(topics=("t",), group_id="g", output="s3://b/p", bootstrap_servers="127.0.0.1:1",
                           kafka_properties={"group.instance.id": "member-1"})
    started = time.monotonic()
    assert check._group_refused(config, "t", 0.5, None, logmod.ClientLines()) is None
    assert time.monotonic() - started < 5
    assert [c["group.id"] for c in asked] == ["g"] and not subscribed
    assert "group.instance.id" not in asked[0]  # the probe is not the run's static member


def test_a_runner_waits_again_for_the_describe_still_in_flight_and_asks_anew_once_it_was_answered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from confluent_kafka import ConsumerGroupState

    monkeypatch.setattr(runner, "_DESCRIBE_WAIT", 0.05)
    admin = _SilentAdmin()
    me = SimpleNamespace(_group_asks={}, _group_asks_lock=threading.Lock(), _admin_client=lambda: admin)
    for _ in range(3):
        with pytest.raises(TimeoutError, match=r"no answer within 0\.05s"):
            runner.Runner._describe(me, "g")  # type: ignore[arg-type]
    assert admin.timeouts == [group_requests.REQUEST_TIMEOUT]  # one request, waited for three times

    monkeypatch.setattr(runner, "_DESCRIBE_WAIT", 10.0)
    stable = SimpleNamespace(state=ConsumerGroupState.STABLE, members=[])
    answer = threading.Timer(0.1, admin.futures[0].set_result, (stable,))
    answer.start()  # the coordinator answers the first request during the fourth look
    view = runner.Runner._describe(me, "g")  # type: ignore[arg-type]
    assert view.stable and view.members == {}
    assert len(admin.timeouts) == 1

    monkeypatch.setattr(runner, "_DESCRIBE_WAIT", 0.05)
    with pytest.raises(TimeoutError):  # that answer is spent: the next look asks again
        runner.Runner._describe(me, "g")  # type: ignore[arg-type]
    assert len(admin.timeouts) == 2
