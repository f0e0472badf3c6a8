"""Time buckets: which folder a row goes to under ``--partition-by`` (pure; no I/O).

Query engines prune by folder, so a time layout puts ``dt=…/hr=…`` between ``topic=`` and
``partition=``. The bucket of a row is a pure function of one time value per record — a record
field or the Kafka record timestamp — the template and the time zone, so the same record always
lands in the same folder (replays and recoveries stay deterministic).

Template syntax (validated once at configuration time)::

    dt={ts:%Y-%m-%d}/hr={ts:%H}
    day={@timestamp:%Y%m%d}
    dt={event.time:%Y-%m-%d}

* Segments are separated by ``/``; each is ``name=value``. ``name`` is a Hive column name
  (``[A-Za-z][A-Za-z0-9_]*``); ``value`` mixes literal characters ``[A-Za-z0-9._-]`` and
  placeholders ``{source:format}``.
* ``source`` is a record field, nested by dots (``event.time``), or ``@timestamp`` for the Kafka
  record timestamp. All placeholders of a template use the same source (a row has one time).
  The field may be Avro ``timestamp-millis``/``-micros``, ``date``, or a ``long``/``int`` of epoch
  milliseconds.
* ``format`` uses strftime directives ``%Y %m %d %j %H %M`` only (values that are digits, so a
  bucket value never holds '/', '=' or a space). Together they must name one time interval:
  ``%Y`` always; finer than a year needs ``%m`` (month) and ``%d`` or ``%j`` (day); an hour needs
  ``%H`` as well, a minute ``%M``. The finest directive is the bucket's width, which the grace rule
  (``--bucket-grace``) uses to know when a bucket has ended.

Times are converted to ``--timezone`` (an IANA name, default UTC) before formatting. A row whose
time is null, or outside the years 1–9999, has no bucket: it becomes a dead letter with the reason
(or halts the partition under ``--on-error fail``), never a guessed folder.

Computation is columnar (``pyarrow.compute``): one ``strftime`` per placeholder per decoded chunk.
``pyarrow.compute`` is imported by the functions that compute, not at the top: importing it builds
a Python wrapper for every Arrow kernel (~0.07 CPU-s), and a run without ``--partition-by`` never
computes (docs/benchmarks.md, start-up).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pyarrow as pa

KAFKA_TIMESTAMP = "@timestamp"
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_LITERAL_RE = re.compile(r"[A-Za-z0-9._-]*")
_PLACEHOLDER_RE = re.compile(r"\{([^{}:]+):([^{}]+)\}")
_FIELD_RE = re.compile(r"@timestamp|[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_DIRECTIVES = {"Y", "m", "d", "j", "H", "M"}
# The bucket width, from the finest directive used: the unit pyarrow's ceil_temporal takes.
_UNITS = (("M", "minute"), ("H", "hour"), ("d", "day"), ("j", "day"), ("m", "month"), ("Y", "year"))
_MIN_MS = -62135596800000  # 0001-01-01T00:00:00Z
_MAX_MS = 253402300799999  # 9999-12-31T23:59:59.999Z


class TemplateError(ValueError):
    """A --partition-by template or --timezone that cannot work; the message says how to fix it."""


@dataclass(frozen=True)
class Template:
    """A parsed ``--partition-by`` template: the time source, the segments and the bucket width."""

    text: str
    source: str  # a field path ("a.b") or KAFKA_TIMESTAMP
    parts: tuple[tuple[str, str | None], ...]  # (literal, None) or (strftime format, "fmt")
    names: tuple[str, ...]  # the Hive column names, in folder order
    unit: str  # minute | hour | day | month | year
    timezone: str = "UTC"

    @property
    def field_path(self) -> tuple[str, ...] | None:
        """The record field's path, or None when the time is the Kafka record timestamp."""
        return None if self.source == KAFKA_TIMESTAMP else tuple(self.source.split("."))


def parse_template(text: str, timezone: str = "UTC") -> Template:
    """Parse and validate a template; raises :class:`TemplateError` naming what is wrong."""
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise TemplateError(
            f"--timezone {timezone!r} is not an IANA time zone name (e.g. UTC, Europe/Berlin)"
        ) from exc
    if not text or text.startswith("/") or text.endswith("/"):
        raise TemplateError(f"--partition-by {text!r}: give segments like dt={{ts:%Y-%m-%d}}/hr={{ts:%H}}")
    parts: list[tuple[str, str | None]] = []
    names: list[str] = []
    sources: set[str] = set()
    used: set[str] = set()
    for i, segment in enumerate(text.split("/")):
        name, eq, value = segment.partition("=")
        if not eq or not _NAME_RE.fullmatch(name):
            raise TemplateError(
                f"--partition-by segment {segment!r} must be name=value with a column name "
                "([A-Za-z][A-Za-z0-9_]*), e.g. dt={ts:%Y-%m-%d}"
            )
        if name in names:
            raise TemplateError(f"--partition-by names the column {name!r} twice")
        if name in ("topic", "partition"):
            raise TemplateError(f"--partition-by column {name!r} is taken by the layout (topic=/partition=)")
        names.append(name)
        parts.append((("/" if i else "") + name + "=", None))
        pos = 0
        placeholders = 0
        for m in _PLACEHOLDER_RE.finditer(value):
            _literal(value[pos : m.start()], segment)
            if value[pos : m.start()]:
                parts.append((value[pos : m.start()], None))
            source, fmt = m.group(1).strip(), m.group(2)
            if not _FIELD_RE.fullmatch(source):
                raise TemplateError(
                    f"--partition-by: {source!r} is not a field path (a.b.c) or @timestamp"
                )
            directives = re.findall(r"%(.)", fmt)
            bad = [d for d in directives if d not in _DIRECTIVES]
            if bad or not directives:
                raise TemplateError(
                    f"--partition-by format {fmt!r}: use only %Y %m %d %j %H %M (got "
                    f"{', '.join('%' + d for d in bad) or 'no directive'})"
                )
            _literal(re.sub(r"%.", "", fmt), segment)
            sources.add(source)
            used.update(directives)
            parts.append((fmt, "fmt"))
            placeholders += 1
            pos = m.end()
        _literal(value[pos:], segment)
        if value[pos:]:
            parts.append((value[pos:], None))
        if not placeholders:
            raise TemplateError(f"--partition-by segment {segment!r} has no {{field:format}} placeholder")
    if len(sources) != 1:
        raise TemplateError(
            f"--partition-by uses several time sources ({', '.join(sorted(sources))}): a row has one "
            "time, so every placeholder must name the same field (or @timestamp)"
        )
    unit = next(u for d, u in _UNITS if d in used)
    need = {"year": [], "month": ["m"], "day": ["m", "d"], "hour": ["m", "d", "H"],
            "minute": ["m", "d", "H", "M"]}
    missing = ["%" + d for d in need[unit] if d not in used and not (d in "md" and "j" in used)]
    if "Y" not in used:
        missing.insert(0, "%Y")
    if missing:
        raise TemplateError(
            f"--partition-by {text!r} does not name one {unit}: add {', '.join(missing)} (a folder "
            "must never mix rows of different days, months or years)"
        )
    return Template(text, sources.pop(), tuple(parts), tuple(names), unit, timezone)


def _literal(text: str, segment: str) -> None:
    if not _LITERAL_RE.fullmatch(text):
        raise TemplateError(
            f"--partition-by segment {segment!r}: literal text may use only letters, digits, '.', '_' "
            "and '-' (no '/', '=' or spaces inside a value)"
        )


def to_millis(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A time column as int64 epoch milliseconds (nulls kept). Accepts timestamps of any unit,
    date32/date64 and integer epoch milliseconds."""
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    t = column.type
    if pa.types.is_timestamp(t):
        ms = pc.cast(column, pa.timestamp("ms", tz=t.tz), safe=False)
        return ms.view(pa.int64()) if hasattr(ms, "view") else pc.cast(ms, pa.int64())
    if pa.types.is_date(t):
        ms = pc.cast(pc.cast(column, pa.date64()), pa.timestamp("ms"))
        return pc.cast(ms, pa.int64())
    if pa.types.is_integer(t):
        return pc.cast(column, pa.int64())
    raise TypeError(f"type {t} is not a time (timestamp, date or epoch-millisecond integer)")


def time_column(template: Template, batch: pa.RecordBatch) -> pa.Array:
    """The template's record field from a decoded batch (struct fields by path), as epoch ms."""
    import pyarrow.compute as pc

    path = template.field_path
    assert path is not None
    if path[0] not in batch.schema.names:
        raise KeyError(f"the writer schema has no field {path[0]!r} for --partition-by")
    col: pa.Array = batch.column(path[0])
    for name in path[1:]:
        if not pa.types.is_struct(col.type) or col.type.get_field_index(name) < 0:
            raise KeyError(f"the writer schema has no field {'.'.join(path)!r} for --partition-by")
        col = pc.struct_field(col, name)
    return to_millis(col)


@dataclass(frozen=True)
class Assignment:
    """Per row: its bucket path (null: no bucket), the bucket's end (epoch ms) and its time."""

    buckets: pa.Array  # string
    ends: pa.Array  # int64
    times: pa.Array  # int64
    reasons: list[tuple[int, str]]  # (row index, why it has no bucket)


def assign(template: Template, millis: pa.Array) -> Assignment:
    """Bucket of every row from its time in epoch milliseconds (int64, nullable). Columnar."""
    import pyarrow.compute as pc

    n = len(millis)
    valid = pc.and_kleene(pc.greater_equal(millis, _MIN_MS), pc.less_equal(millis, _MAX_MS))
    valid = pc.fill_null(valid, False)
    reasons: list[tuple[int, str]] = []
    if not pc.all(valid).as_py() and n:
        nulls = pc.is_null(millis)
        for i in pc.indices_nonzero(pc.invert(valid)).to_pylist():
            if nulls[i].as_py():
                reasons.append((i, f"--partition-by time {template.source!r} is null"))
            else:
                reasons.append(
                    (i, f"--partition-by time {template.source!r} = {millis[i].as_py()} ms is outside "
                        "the years 1-9999 (not epoch milliseconds?)")
                )
    safe = pc.if_else(valid, millis, pa.scalar(0, pa.int64()))
    ts = pc.cast(pc.cast(safe, pa.timestamp("ms", tz="UTC")), pa.timestamp("ms", tz=template.timezone))
    pieces: list[pa.Array] = []
    for text, kind in template.parts:
        if kind is None:
            pieces.append(pa.array([text] * n, pa.string()))
        else:
            pieces.append(pc.strftime(ts, format=text))
    buckets = pc.binary_join_element_wise(*pieces, "") if len(pieces) > 1 else pieces[0]
    buckets = pc.if_else(valid, buckets, pa.scalar(None, pa.string()))
    ends = pc.cast(pc.cast(_bucket_ends(ts, template), pa.timestamp("ms", tz="UTC")), pa.int64())
    return Assignment(buckets, ends, safe, reasons)


def _bucket_ends(ts: pa.Array, template: Template) -> pa.Array:
    """The instant each row's bucket ends: its local time rounded up to the next ``unit``.

    Rounded in local wall-clock time, then placed back in the zone. Twice a year a DST zone's
    rounded time is ambiguous or does not exist (Berlin: 02:00 on the last Sunday of October
    happens twice, on the last Sunday of March not at all), and ``ceil_temporal`` on zoned
    timestamps then raises — for every record in the hour before the change. Here an ambiguous
    end is the *first* such instant (the hour before it ends when 02:00 first strikes) and a
    missing one the instant the clock jumps (the hour before it ends then)."""
    import pyarrow.compute as pc

    local = pc.ceil_temporal(pc.local_timestamp(ts), unit=template.unit, ceil_is_strictly_greater=True)
    return pc.assume_timezone(local, timezone=template.timezone, ambiguous="earliest", nonexistent="latest")
