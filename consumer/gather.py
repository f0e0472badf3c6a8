"""Gathering: a run of Kafka messages read field by field in one pass, ready for the arena.

The batch path's per-record work is only *reading*: each message's ``value()``, ``offset()``,
``timestamp()``, ``key()`` (and ``headers()`` when that column is kept), plus copying each value,
less its framing header, into one buffer. Done as one Python ``map`` per field it cost about a
quarter of the consumer's CPU (docs/benchmarks.md); :func:`gather` does it in one native pass
(``consumer._native.gather``, which calls the same methods) and :func:`partition_runs` likewise
cuts a consumed batch into per-partition runs with their byte counts.

Nothing here decides anything: where a run is cut (row group and chunk limits), tombstones (a run
holding one is reported as ``None`` and goes record by record), re-delivered offsets and fetch
errors stay with the worker and the runner. :func:`gather_python` and
:func:`partition_runs_python` are the reference the native pass is tested against, and the
fallback when the extension is not built.
"""

from __future__ import annotations

import array
from collections.abc import Callable, Sequence
from itertools import accumulate, groupby
from operator import itemgetter, methodcaller
from typing import Any, NamedTuple

try:  # optional at import time, as in consumer.native: a source checkout without a build still runs
    from consumer import _native  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the build
    _native = None

__all__ = ["Gathered", "gather", "gather_python", "partition_runs", "partition_runs_python"]


class Gathered(NamedTuple):
    """A gathered run. The four buffers hold native int64s, as ``array('q')`` does."""

    data: bytes  # the bodies back to back
    ends: bytes  # each body's end offset, counted from the ``base`` given to gather
    offsets: bytes
    timestamps: bytes  # ms; -1 when not available (librdkafka's value for that type)
    keys: list[bytes | None]
    key_bytes: int  # total bytes of the keys
    headers: list[Any] | None  # ``headers()`` of each message, when asked for


_value = methodcaller("value")
_offset = methodcaller("offset")
_timestamp = methodcaller("timestamp")
_key = methodcaller("key")
_headers = methodcaller("headers")
_error = methodcaller("error")
_partition = methodcaller("partition")
_second = itemgetter(1)


def gather_python(
    msgs: Sequence[Any], start: int, end: int, strip: int, base: int, want_headers: bool
) -> Gathered | None:
    """:func:`gather` with one ``map`` per field (the reference)."""
    run = msgs[start:end]
    values = list(map(_value, run))
    # In order, as the native pass meets them: a short value before a tombstone is the error.
    tombstone = values.index(None) if None in values else len(values)
    if strip:
        short = next((len(v) for v in values[:tombstone] if len(v) < strip), None)
        if short is not None:
            raise ValueError(f"a value of {short} bytes is shorter than its {strip}-byte header")
    if tombstone < len(values):
        return None
    if strip:
        values = [v[strip:] for v in values]
    keys = list(map(_key, run))
    return Gathered(
        b"".join(values),
        array.array("q", accumulate(map(len, values), initial=base))[1:].tobytes(),
        array.array("q", map(_offset, run)).tobytes(),
        array.array("q", map(_second, map(_timestamp, run))).tobytes(),
        keys,
        sum(map(len, filter(None, keys))),
        list(map(_headers, run)) if want_headers else None,
    )


def _gather_native(
    msgs: Sequence[Any], start: int, end: int, strip: int, base: int, want_headers: bool
) -> Gathered | None:
    got = _native.gather(msgs if type(msgs) is list else list(msgs), start, end, strip, base, want_headers)
    return None if got is None else Gathered(*got)


#: ``gather(msgs, start, end, strip, base, want_headers)``: messages ``msgs[start:end]`` as one
#: buffer of bodies (each value less its first ``strip`` bytes: 0 raw, 5 Confluent framing) with
#: end offsets counted from ``base``; None when a value is None (a tombstone). A value shorter
#: than ``strip`` is a ValueError: the caller cuts runs of well-framed values only.
gather: Callable[[Sequence[Any], int, int, int, int, bool], Gathered | None] = (
    _gather_native if _native is not None else gather_python
)


def partition_runs_python(msgs: Sequence[Any]) -> list[tuple[int, int, int, int]] | None:
    """:func:`partition_runs` with ``map`` and ``groupby`` (the reference)."""
    if any(map(_error, msgs)):
        return None
    out: list[tuple[int, int, int, int]] = []
    start = 0
    for partition, group in groupby(msgs, key=_partition):
        run = list(group)
        out.append((partition, start, start + len(run), sum(map(len, run))))
        start += len(run)
    return out


def _partition_runs_native(msgs: Sequence[Any]) -> list[tuple[int, int, int, int]] | None:
    runs: list[tuple[int, int, int, int]] | None = _native.partition_runs(
        msgs if type(msgs) is list else list(msgs)
    )
    return runs


#: ``partition_runs(msgs)``: a consumed batch of one topic as ``(partition, start, end, bytes)``
#: runs in order, ``bytes`` the values' total length (``len(msg)``); None when any message
#: carries an ``error()`` (the caller's slow path handles fetch errors).
partition_runs: Callable[[Sequence[Any]], list[tuple[int, int, int, int]] | None] = (
    _partition_runs_native if _native is not None else partition_runs_python
)
