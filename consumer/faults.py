"""Named crash points for fault tests: ``CONSUMER_FAULT=after_piece_put:3`` kills the process the
3rd time that point is reached (``os._exit``: no cleanup, no flush — the same as kill -9).
``CONSUMER_FAULT=during_recovery:1:freeze`` stops it there instead (SIGSTOP to itself: every thread,
librdkafka's heartbeats too, as in a long GC pause or a frozen VM) until the test sends SIGCONT.

Several points may be armed at once, comma separated. When the variable is unset, :func:`point`
is a dictionary lookup on an empty dict, so production pays nothing measurable.

Points (see docs/guarantees.md): after_dead_letter_put, before_piece_put, after_piece_put (= after
PUT, before commit), after_commit, after_marker_put, mid_merge, after_final_put, after_piece_delete,
during_recovery, during_shutdown.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

FAULT_EXIT_CODE = 97

_armed: dict[str, int] = {}
_frozen: set[str] = set()  # points armed with ":freeze": stop the process there, do not kill it
_seen: dict[str, int] = {}
_lock = threading.Lock()  # partitions recover side by side: the Nth time is counted across threads


def arm(spec: str | None) -> None:
    """Parse ``name:count[:freeze][,…]``; count defaults to 1."""
    _armed.clear()
    _frozen.clear()
    _seen.clear()
    if not spec:
        return
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, rest = item.partition(":")
        count, _, action = rest.partition(":")
        _armed[name] = int(count or "1")
        if action == "freeze":
            _frozen.add(name)
        elif action:
            raise ValueError(f"CONSUMER_FAULT: unknown action {action!r} in {item!r} (only 'freeze')")


def point(name: str) -> None:
    """Crash here if this point is armed and reached for the armed time."""
    if not _armed or name not in _armed:
        return
    with _lock:
        if name not in _armed:  # a freeze another thread just took
            return
        _seen[name] = _seen.get(name, 0) + 1
        reached = _seen[name] >= _armed[name]
        if reached and name in _frozen:
            del _armed[name]  # once: the process goes on after SIGCONT
    if reached and name in _frozen:
        sys.stderr.write(f"FAULT {name}:{_seen[name]} — freezing now (SIGSTOP)\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGSTOP)
    elif reached:
        sys.stderr.write(f"FAULT {name}:{_seen[name]} — exiting now\n")
        sys.stderr.flush()
        os._exit(FAULT_EXIT_CODE)


arm(os.environ.get("CONSUMER_FAULT"))
