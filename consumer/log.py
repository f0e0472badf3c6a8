"""structlog set-up: JSON lines in production, readable colours in a terminal.

Loggers are bound with partition context (``topic``, ``partition``) by the worker, so every line
about a row group or a roll says whose it is. Nothing here logs payloads or credentials: callers
pass counts, positions, keys and timings only.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


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
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def get(name: str, **context: Any) -> Any:
    """A bound logger named ``name`` carrying ``context`` on every line."""
    return structlog.get_logger(name).bind(**context)
