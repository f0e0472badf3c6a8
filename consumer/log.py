"""structlog set-up: JSON lines in production, readable colours in a terminal.

Loggers are bound with partition context (``topic``, ``partition``) by the worker, so every line
about a row group or a roll says whose it is. Nothing here logs payloads or credentials: callers
pass counts, positions, keys and timings only.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import structlog

_writer: Callable[[str], None] | None = None


class _Stderr:
    """stderr for structlog, with a switch: while a progress bar is drawn, log lines go through
    :func:`set_writer`'s function so they appear above the bar instead of through it."""

    def __init__(self) -> None:
        self._pending = ""  # print() writes the message and its newline separately

    def write(self, text: str) -> int:
        if _writer is None:
            sys.stderr.write(text)
            return len(text)
        self._pending += text
        while "\n" in self._pending:
            line, self._pending = self._pending.split("\n", 1)
            _writer(line + "\n")
        return len(text)

    def flush(self) -> None:
        if _writer is None:
            sys.stderr.flush()


def set_writer(writer: Callable[[str], None] | None) -> None:
    """Route log output through ``writer`` (e.g. ``tqdm.write``); None restores plain stderr."""
    global _writer
    _writer = writer


def configure(fmt: str = "auto", level: str = "info") -> None:
    """Configure structlog once per process. ``fmt`` is ``auto`` (console on a TTY), json or console."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )


def get(name: str, **context: Any) -> Any:
    """A bound logger named ``name`` carrying ``context`` on every line."""
    return structlog.get_logger(name).bind(**context)
