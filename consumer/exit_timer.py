"""The last resort of a shutdown: end the process after a deadline even if no Python code can run.

Why this exists: librdkafka can block forever inside ``consumer.close()`` when a rebalance reaches
the member there, and confluent-kafka makes that call from its rebalance callback *holding the
GIL* (seen on the real stack: ``rd_kafka_rebalance_protocol`` waiting inside
``Consumer_rebalance_cb`` inside ``rd_kafka_consumer_close``). From then on no Python thread runs:
not a timer, not a signal handler, not ``os._exit``. The runner's own bound on close
(``Runner._close_consumer``) cannot fire, and the process hangs after everything was committed.

:func:`exit_after` arms a timer on a thread of the native extension that never takes the GIL; when
it fires it writes one line to stderr and ends the process with the exit status the run already
earned. Without the extension (a source checkout with no build) it falls back to
:mod:`faulthandler`, which also needs no GIL but can only exit with status 1 (after dumping every
thread's stack, which at least says where it hung).
"""

from __future__ import annotations

import faulthandler
from collections.abc import Callable

try:
    from consumer import _native  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the build
    _native = None

__all__ = ["exit_after"]


def exit_after(seconds: float, status: int, message: str) -> Callable[[], None]:
    """End the process with ``status`` after ``seconds``, saying ``message`` on stderr, unless the
    returned function is called first (it disarms; calling it again does nothing). Dropping it
    does not disarm."""
    line = message.rstrip("\n") + "\n"
    if _native is not None:
        timer = _native.exit_after(seconds, status, line.encode())
        cancel: Callable[[], None] = timer.cancel
        return cancel
    faulthandler.dump_traceback_later(seconds, exit=True)
    return faulthandler.cancel_dump_traceback_later
