"""The signals the consumer answers: those that ask it to stop, and one that asks where it is.

**Stop** (:func:`install_stop_handler`): it flushes and commits what it holds, then exits.

- SIGTERM: Kubernetes, ``docker stop``, systemd, the supervisor of ``--processes``.
- SIGINT: Ctrl-C.
- SIGHUP: the terminal, SSH session, ``screen`` or ``tmux`` window the consumer runs in closed.

Why SIGHUP too: left at its default, it ends the process at once, mid-flush, and everything read
since the last commit is read and written again by the next run. Nothing is lost (a kill at any
point is safe), but an operator whose session dropped gets a restart's work instead of a clean
stop. The JVM takes all three signals for a shutdown, so Kafka Connect and Flink stop cleanly on
each; so does this consumer.

A process started under ``nohup`` finds SIGHUP ignored, and it stays ignored: the promise of
``nohup`` is that a closed session does not stop the job. The ignored disposition is inherited
across ``exec``, so the members of ``--processes`` keep it as well.

**Where are you** (:func:`dump_stacks_on_request`): SIGUSR1 writes the stack of every thread to
stderr, and the process goes on. What ``jstack`` or SIGQUIT gives a JVM's operator, and Celery's
SIGUSR1: the first question about a consumer that seems stuck is where each thread waits (a call
to S3, a commit, librdkafka's close). Left at its default, SIGUSR1 ended the process.
"""

from __future__ import annotations

import contextlib
import faulthandler
import signal
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["dump_stacks_on_request", "install_stop_handler", "stop_signals"]


def stop_signals() -> tuple[signal.Signals, ...]:
    """SIGTERM, SIGINT and, unless this process was started with it ignored (``nohup``), SIGHUP."""
    hangup = () if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN else (signal.SIGHUP,)
    return (signal.SIGTERM, signal.SIGINT, *hangup)


def install_stop_handler(handler: Callable[[int, Any], None]) -> tuple[signal.Signals, ...]:
    """Make ``handler(signum, frame)`` the handler of every :func:`stop_signals`; returns them."""
    signals = stop_signals()
    for signum in signals:
        signal.signal(signum, handler)
    return signals


def dump_stacks_on_request() -> None:
    """From now on, SIGUSR1 writes every thread's stack to stderr; the process goes on. The
    interpreter's own handler (:mod:`faulthandler`) writes it without taking the GIL, so it
    answers even while a call holds the GIL (consumer.exit_timer says where that happens). It
    writes to the process's own stderr (file descriptor 2), whatever ``sys.stderr`` was replaced
    with; without one, nothing is registered."""
    with contextlib.suppress(AttributeError, ValueError, OSError):  # no descriptor to write them to
        faulthandler.register(signal.SIGUSR1, file=sys.__stderr__ or sys.stderr, all_threads=True,
                              chain=False)
