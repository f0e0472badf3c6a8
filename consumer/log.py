"""structlog set-up: JSON lines in production, readable colours in a terminal.

Loggers are bound with partition context (``topic``, ``partition``) by the worker, so every line
about a row group or a roll says whose it is. Nothing here logs payloads or credentials: callers
pass counts, positions, keys and timings only.

Lines that do not come from our loggers become lines of the same format too (:func:`configure`):
Python's warnings and the warnings and errors of libraries that use the standard ``logging``
module (botocore, s3fs, aiohttp). Written by Python itself they would be plain text, several
lines a warning, among the JSON lines a log shipper parses, and outside the members' line lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import structlog

from consumer.kafka_names import ALL_BROKERS_DOWN

_writer: Callable[[str], None] | None = None
_for_a_terminal = False

#: The environment variable through which ``--processes N`` hands its members the descriptor of
#: the file whose lock they write their lines under (:func:`share_lines`).
LINE_LOCK_FD_ENV = "CONSUMER_LOG_LOCK_FD"


class LineLock:
    """Whole lines from several processes writing into one stderr, whatever their length.

    One ``write(2)`` into a pipe stays whole only up to PIPE_BUF (4,096 bytes on Linux); a longer
    line, such as an error with its traceback rendered into JSON, goes in parts, and another
    member's line can land between them. So every line is written while holding a POSIX record
    lock on one file all members share (``lockf``: owned by the process, so processes holding
    the same inherited descriptor still exclude each other; a thread lock covers this process's
    own threads). The members inherit the stderr itself, not a pipe to the supervisor, so their
    last lines still reach it when the supervisor has died.

    The lock is waited for at most ``patience`` seconds: a member frozen (SIGSTOP) between
    taking and releasing it must not stop every other member's logging, and with it their work;
    after that the line is written unlocked, and may be split, as it always could be before."""

    def __init__(self, fd: int | None = None, patience: float = 0.5) -> None:
        self.fd = fd
        self.patience = patience
        self._threads = threading.Lock()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self._threads:
            locked = self.fd is not None and self._lock(self.fd)
            try:
                yield
            finally:
                if locked:
                    assert self.fd is not None
                    with contextlib.suppress(OSError):
                        fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def _lock(self, fd: int) -> bool:
        deadline = time.monotonic() + self.patience
        pause = 0.0005
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except (BlockingIOError, PermissionError):  # held by another member: wait a little
                if time.monotonic() >= deadline:
                    return False
                time.sleep(pause)
                pause = min(pause * 2, 0.01)
            except OSError:  # not a lockable descriptor (closed, wrong kind): write unlocked
                return False


_lines = LineLock()


def share_lines(fd: int | None) -> None:
    """Write this process's lines under the lock of the file open as ``fd`` (None: no lock);
    every process writing into the same stderr must share it (:class:`LineLock`)."""
    _lines.fd = fd


class _Stderr:
    """stderr for structlog, one whole line per write. ``print()`` writes a message and its newline
    separately; under ``PYTHONUNBUFFERED`` (as in our Docker image) each is its own write(2), so the
    members of ``--processes N``, which share the supervisor's stderr, would splice their lines
    (``{…}{…}`` then two newlines) and break every JSON log reader. Holding text until the
    newline that ends what ``print()`` was given makes each event one write (in a terminal, with
    the traceback or stack the console renderer puts below its line), which a pipe keeps whole up
    to PIPE_BUF bytes; each is also written under the members' shared :class:`LineLock`, so
    longer ones stay whole too.

    While a progress bar is drawn, lines go through :func:`set_writer`'s function instead, so they
    appear above the bar rather than through it."""

    def __init__(self) -> None:
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        if self._pending.endswith("\n"):  # print()'s end: a console line and the stack below it at once
            whole, self._pending = self._pending, ""
            if _writer is None:
                with _lines.held():
                    sys.stderr.write(whole)
                    sys.stderr.flush()
            else:
                _writer(whole)
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
    inherited = os.environ.get(LINE_LOCK_FD_ENV, "")
    if inherited.isdigit():  # a member of ``--processes N`` (consumer.supervisor)
        share_lines(int(inherited))
    global _for_a_terminal
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    _for_a_terminal = use_console
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
    warnings.showwarning = _log_python_warning
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, _ToStructlog)] + [_ToStructlog()]
    root.setLevel(logging.WARNING)  # libraries' info and debug chatter stays out


def _log_python_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int,
    file: Any = None, line: str | None = None,
) -> None:
    """``warnings.showwarning``: a Python warning as one log line (not Python's two of text)."""
    structlog.get_logger("python").warning(
        "python warning", category=category.__name__, message=str(message), where=f"{filename}:{lineno}"
    )


class _ToStructlog(logging.Handler):
    """Records of libraries that log through the standard ``logging`` module, as our lines
    (instead of ``logging.lastResort``'s bare text on stderr)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {"logger": record.name}
            if record.exc_info:
                fields["exc_info"] = record.exc_info
            structlog.get_logger("library").log(record.levelno, record.getMessage(), **fields)
        except Exception:
            self.handleError(record)


def for_a_terminal() -> bool:
    """Whether :func:`configure` chose lines for a person (console) rather than for a log shipper
    (JSON): a value that reads well on several lines is then given as ``stack``, which the
    console renderer writes below its line."""
    return _for_a_terminal


def get(name: str, **context: Any) -> Any:
    """A bound logger named ``name`` carrying ``context`` on every line."""
    return structlog.get_logger(name).bind(**context)


class Throttle:
    """Whether a line that repeats should be logged now: the first of its kind at once, then at
    most one every ``every`` seconds, saying how many were held back. A broker that is down makes
    librdkafka report the same refused connection many times a second; one line per half minute
    says as much. Kinds differ in their text with the digits taken out (``after 3ms`` and ``after
    0ms`` are one kind)."""

    def __init__(self, every: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self._clock = clock
        self._kinds: dict[str, tuple[float, int]] = {}  # kind → (when last logged, held back since)

    def admit(self, text: str) -> int | None:
        """None: hold this line back; else log it, with how many of its kind were held back."""
        kind = re.sub(r"\d+", "#", text)
        now = self._clock()
        last = self._kinds.get(kind)
        if last is not None and now - last[0] < self.every:
            self._kinds[kind] = (last[0], last[1] + 1)
            return None
        if len(self._kinds) >= 1000:  # text that never repeats: forget, rather than grow
            self._kinds.clear()
        self._kinds[kind] = (now, 0)
        return 0 if last is None else last[1]


class LibrdkafkaLog:
    """librdkafka's own log lines (a refused connection, a fatal error, a CONFWARN…) as events of
    ``log``, so ``--log-format json`` stays one JSON object per line: without it librdkafka writes
    ``%3|1796…|FAIL|rdkafka#consumer-1| …`` to stderr itself. Given to a client as its ``logger``
    property; confluent-kafka calls :meth:`log` with a stdlib level, ``"%s [%s] %s"`` and (facility,
    client name, text), from inside ``poll``/``consume``."""

    def __init__(self, log: Any, throttle: Throttle | None = None, *, debugging: bool = False) -> None:
        self._log = log
        self._throttle = throttle or Throttle()
        #: ``-X debug=…`` asked librdkafka for its debug lines: they are logged at info level (the
        #: default filter would drop them) and every one of them, not one per kind
        self._debugging = debugging

    def log(self, level: int, fmt: str, *args: Any) -> None:
        facility, client, text = args if len(args) == 3 else ("", "", fmt % args if args else fmt)
        if level < logging.INFO and self._debugging:
            self._log.info("kafka client log", facility=facility, client=client, message=text)
            return
        held = self._throttle.admit(f"{facility} {text}")
        if held is None:
            return
        more = {"repeated": held} if held else {}
        self._log.log(level, "kafka client log", facility=facility, client=client, message=text, **more)


def kafka_said(exc: BaseException) -> str | None:
    """librdkafka's own words in a ``KafkaException`` (None for any other exception)."""
    if type(exc).__name__ != "KafkaException":
        return None
    err: Any = exc.args[0] if exc.args else None
    return str(err.str()) if hasattr(err, "str") else str(exc)


class ClientLines:
    """A client's ``logger`` for the commands that print their own verdict (``check``,
    ``verify``): librdkafka's lines (``%3|…|FAIL|…``, one every 50 ms while a broker refuses
    connections) are kept off the terminal, and the first error among them says why a request
    failed (:meth:`explain`)."""

    def __init__(self) -> None:
        self.first_error: str | None = None
        #: the client's error events (its ``error_cb``), the first 32 in order: KafkaErrors, whose
        #: codes say more than a log line's text (a refused login). The one that explains a failure
        #: need not be the first (a broker transport failure may come before a handshake's own).
        self.events: list[Any] = []
        #: whether the client said that every broker it knows is down (consumer.kafka_names.
        #: ALL_BROKERS_DOWN): each refused the connection, was not found by name or closed it at
        #: the handshake. Kept apart from ``events``, which a long bootstrap list can fill first.
        self.every_broker_down = False
        self._clients: list[Any] = []

    def error(self, err: Any) -> None:
        """The client's ``error_cb``."""
        if len(self.events) < 32:
            self.events.append(err)
        if err.code() == ALL_BROKERS_DOWN:
            self.every_broker_down = True

    def log(self, level: int, fmt: str, *args: Any) -> None:
        if level >= logging.ERROR and self.first_error is None:
            self.first_error = str(args[-1]) if args else fmt

    def watch(self, client: Any) -> Any:
        """``client``, whose queued lines :meth:`explain` serves first (they reach :meth:`log`
        only when the client is polled)."""
        self._clients.append(client)
        return client

    def explain(self, exc: BaseException) -> str:
        """What failed: ``exc``'s own words (librdkafka's, for a KafkaException) and the first
        error line librdkafka logged."""
        for client in self._clients:
            with contextlib.suppress(Exception):
                client.poll(0)
        said = kafka_said(exc) or str(exc)
        if not said and isinstance(exc, TimeoutError):
            said = "no answer within the timeout"
        return "; ".join(filter(None, (said, self.first_error and f"librdkafka: {self.first_error}")))
