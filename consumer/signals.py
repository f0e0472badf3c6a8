"""The signals the consumer answers: those that ask it to stop, and two that ask where it is.

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

**Where are you** (:func:`dump_stacks_on_request`): SIGUSR1 logs the stack of every thread, and
the process goes on. What ``jstack`` or SIGQUIT gives a JVM's operator, and Celery's SIGUSR1: the
first question about a consumer that seems stuck is where each thread waits (a call to S3, a
commit, librdkafka's close). Left at its default, SIGUSR1 ended the process.

The stacks are read by a Python thread holding the GIL, so every other thread is at a point where
its stack holds still. :mod:`faulthandler`'s own handler (what this module registered before)
reads them inside the signal handler, without the GIL, while the threads go on: a thread that ends
meanwhile frees the state being read, and the process died with SIGSEGV (seen in CI, and reproduced
in ten or so signals to a process whose threads start and end). A diagnosis must not kill the
process it diagnoses.

Holding the GIL has one cost: a call that keeps the GIL and never returns (consumer.exit_timer
says where librdkafka does) leaves no thread to answer. For that, SIGUSR2 is ``jstack -F``: the
GIL-less dump of :mod:`faulthandler`, plain text on stderr. Every other thread is then waiting
for the GIL and holds still, so it is safe exactly when SIGUSR1 goes unanswered; sent to a process
that runs, it risks the crash above.

SIGUSR1 reaches that thread as the stop signals reach the runner's bound on a stop
(:func:`on_arrival`): Python's C handler writes each signal's number to a pipe
(:func:`signal.set_wakeup_fd`) the moment it arrives, which wakes the thread even while the main
thread is blocked in C (a commit to a frozen broker), where Python handlers wait.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterable
from typing import Any

from consumer import log as logmod

__all__ = ["dump_stacks_on_request", "install_stop_handler", "on_arrival", "stacks", "stop_signals"]

#: What the thread of :func:`on_arrival` does when each signal arrives, by number.
_ACTIONS: dict[int, Callable[[int], None]] = {}
_watching = threading.Lock()
_watcher: threading.Thread | None = None


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


def on_arrival(signums: Iterable[int], action: Callable[[int], None]) -> None:
    """Call ``action(signum)`` on one daemon thread each time one of ``signums`` arrives, however
    busy or blocked the main thread is. Each signal must have a Python handler (its C handler is
    what writes to the pipe); one that has none yet gets one that does nothing. The thread and the
    pipe are made once per process, from the main thread (:func:`signal.set_wakeup_fd`)."""
    global _watcher
    with _watching:
        for signum in signums:
            if signal.getsignal(signum) in (signal.SIG_DFL, None):
                signal.signal(signum, _nothing)
            _ACTIONS[int(signum)] = action
        if _watcher is None:
            read, write = os.pipe()
            os.set_blocking(write, False)
            signal.set_wakeup_fd(write, warn_on_full_buffer=False)
            _watcher = threading.Thread(target=_watch, args=(read,), name="signal-arrivals", daemon=True)
            _watcher.start()


def _nothing(*_: Any) -> None:
    """The Python handler of a signal only :func:`on_arrival`'s thread acts on."""


def _watch(read: int) -> None:
    while arrived := os.read(read, 64):
        for signum in arrived:
            if (action := _ACTIONS.get(signum)) is not None:
                try:
                    action(signum)
                except Exception:  # the thread must outlive one action's failure
                    logmod.get("consumer.signals").exception("a signal's action failed", signal=signum)


def stacks() -> list[dict[str, Any]]:
    """Every Python thread's name, id and stack (outermost call first, ``file:line in function``).
    Read while this thread holds the GIL, so each stack holds still; no locals, so no payloads."""
    names = {t.ident: t.name for t in threading.enumerate()}
    return [
        {"thread": names.get(ident, "?"), "id": f"0x{ident:x}",
         "stack": [f"{f.filename}:{f.lineno} in {f.name}" for f in traceback.extract_stack(frame)]}
        for ident, frame in sys._current_frames().items()
    ]


def _log_stacks(signum: int) -> None:
    """One warning: the threads as data for a log shipper, or as indented lines in a terminal."""
    threads = stacks()
    shown: dict[str, Any] = {"threads": threads}
    if logmod.for_a_terminal():
        shown = {"stack": "\n".join(
            f"thread {t['thread']} ({t['id']}), outermost call first:\n" + "\n".join(
                f"  {line}" for line in t["stack"]) for t in threads)}
    logmod.get("consumer.signals").warning(
        "stacks of every thread", signal=signal.Signals(signum).name, pid=os.getpid(), **shown,
        hint="unanswered (a call holds the GIL)? kill -USR2 writes them without it (plain text)",
    )


def dump_stacks_on_request() -> None:
    """From now on, SIGUSR1 logs every thread's stack (one warning, :func:`stacks`) and SIGUSR2
    writes them as :mod:`faulthandler` does, without the GIL, to the process's own stderr (file
    descriptor 2, whatever ``sys.stderr`` was replaced with); the process goes on after either.
    Call it from the main thread."""
    on_arrival([signal.SIGUSR1], _log_stacks)
    with contextlib.suppress(AttributeError, ValueError, OSError):  # no descriptor to write them to
        faulthandler.register(signal.SIGUSR2, file=sys.__stderr__ or sys.stderr, all_threads=True,
                              chain=False)
