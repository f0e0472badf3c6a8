"""The signals that ask the consumer to stop: it flushes and commits what it holds, then exits.

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
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

__all__ = ["install_stop_handler", "stop_signals"]


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
