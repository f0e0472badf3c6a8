"""Named crash points for fault tests: ``CONSUMER_FAULT=after_piece_put:3`` kills the process the
3rd time that point is reached (``os._exit``: no cleanup, no flush — the same as kill -9).

Several points may be armed at once, comma separated. When the variable is unset, :func:`point`
is a dictionary lookup on an empty dict, so production pays nothing measurable.

Points (see docs/guarantees.md): after_dead_letter_put, before_piece_put, after_piece_put (= after
PUT, before commit), after_commit, after_marker_put, mid_merge, after_final_put, after_piece_delete,
during_recovery, during_shutdown.
"""

from __future__ import annotations

import os
import sys
import threading

FAULT_EXIT_CODE = 97

_armed: dict[str, int] = {}
_seen: dict[str, int] = {}
_lock = threading.Lock()  # partitions recover side by side: the Nth time is counted across threads


def arm(spec: str | None) -> None:
    """Parse ``name:count[,name:count]``; count defaults to 1."""
    _armed.clear()
    _seen.clear()
    if not spec:
        return
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, count = item.partition(":")
        _armed[name] = int(count or "1")


def point(name: str) -> None:
    """Crash here if this point is armed and reached for the armed time."""
    if not _armed or name not in _armed:
        return
    with _lock:
        _seen[name] = _seen.get(name, 0) + 1
        reached = _seen[name] >= _armed[name]
    if reached:
        sys.stderr.write(f"FAULT {name}:{_seen[name]} — exiting now\n")
        sys.stderr.flush()
        os._exit(FAULT_EXIT_CODE)


arm(os.environ.get("CONSUMER_FAULT"))
