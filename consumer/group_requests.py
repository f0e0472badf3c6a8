"""Admin requests to a consumer group's coordinator, asked so that librdkafka never times them out.

Why: librdkafka sends a group's admin request (DescribeConsumerGroups, ListConsumerGroupOffsets)
to the group's coordinator, found first with a FindCoordinator request. When the admin request's
own timeout (``request_timeout``) fires while either is in flight, the late answer touches the
request's once-only event after it was freed (librdkafka issue 4605, still in 2.16): an assertion
(SIGABRT) or a segmentation fault, on one of librdkafka's threads. Those block every signal, so
Python's fault handler never runs and the process dies with no stack. Reproduced here with a
describe given a timeout of 1-2 ms, beside another such loop: 21 of 600 processes died (one by
SIGSEGV), 68 of 600 when the client was destroyed after the timeout; none of 1,200 with the
timeout an hour away and the same short wait in Python, destroyed or not. (The compose health
check's SIGSEGV in CI was another crash, found later in a core: an AdminClient's
ListConsumerGroupOffsets answered NOT_COORDINATOR; ``consumer.check._group_refused`` says why it
asks through a consumer instead.)

So every such request goes out with :data:`REQUEST_TIMEOUT`, far past any wait, and the caller
bounds its wait in Python (:func:`answer`). A request nobody waits for any more stays in flight
until its answer comes (or the client is destroyed, which was safe in every trial).
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

#: what librdkafka is told a group request may take: longer than anyone waits for one
REQUEST_TIMEOUT = 3600.0


def describe(admin: Any, group: str) -> Future[Any]:
    """``group``'s description, asked of ``admin`` (an AdminClient) with :data:`REQUEST_TIMEOUT`;
    wait for it with :func:`answer`."""
    future: Future[Any] = admin.describe_consumer_groups([group], request_timeout=REQUEST_TIMEOUT)[group]
    return future


def answer(future: Future[Any], wait: float) -> Any:
    """The request's answer, waited for up to ``wait`` seconds; raises its error, or
    :class:`TimeoutError` naming the wait when it has not come (the request stays in flight)."""
    try:
        return future.result(timeout=wait)
    except TimeoutError:
        if future.done():
            raise  # the request's own error, a timeout the broker reported
        raise TimeoutError(f"no answer within {wait:g}s") from None
