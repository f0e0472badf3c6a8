"""The arena: one partition's buffered rows between Kafka and the next row group.

Records arrive as raw Avro bodies and are copied into one pre-sized, reused ``bytearray`` plus
fixed-width coordinate arrays (offsets, timestamps). Every ``chunk_rows`` records the chunk is decoded
at once into an Arrow record batch (columnar: validity, offsets, data, map offsets/keys/values) and
the raw buffer is rewound, so memory holds at most one raw chunk plus the columnar row group.
"Append raw bytes now, decode a chunk at once" is the shape a batch decoder (arrow-avro style)
slots into later without changing the arena's contract.

Sizing comes from :class:`SchemaStats`: first from the schema's shape (entries per map, bytes per
string, union fan-out), then from running averages of what was observed (Avro bytes per row, Arrow
bytes per Avro byte, Parquet bytes per Arrow byte of earlier row groups, entries per map, null
fractions). That is how the arena predicts, before encoding, when a row group will reach its
*encoded* byte target, and how it pre-sizes its raw buffer so appends rarely reallocate.

The arena knows its own memory exactly (:attr:`Arena.nbytes`: buffer capacities plus Arrow
buffer sizes), which is what the global memory budget adds up.
"""

from __future__ import annotations

import array
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import pyarrow as pa

from consumer.bucketing import Assignment, Template, assign, time_column
from consumer.decoding import WriterSchema, decode_bodies
from consumer.native import NativeDecoder, NativeError, decoder_for, warn_once
from consumer.projection import Projection, ProjectionUnsupported
from consumer.typemap import RecordConverter

KAFKA_FIELDS: dict[str, pa.Field] = {
    "topic": pa.field("kafka_topic", pa.string(), nullable=False),
    "partition": pa.field("kafka_partition", pa.int32(), nullable=False),
    "offset": pa.field("kafka_offset", pa.int64(), nullable=False),
    "timestamp": pa.field("kafka_timestamp", pa.timestamp("ms", tz="UTC")),
    "key": pa.field("kafka_key", pa.binary()),
    "headers": pa.field(
        "kafka_headers",
        pa.list_(pa.struct([pa.field("key", pa.string()), pa.field("value", pa.binary())])),
    ),
}

#: (writer, reader) fingerprints → their Arrow projection, None when fastavro resolves the pair
_PROJECTIONS: dict[str, Projection | None] = {}

_EWMA = 0.3  # weight of the newest observation in running averages
_FIRST_RAW_BYTES = 256 * 1024  # cap of a row group's first raw-buffer allocation (see Arena._grow)


@dataclass
class DeadLetter:
    """A record that did not become a row: where it was, why, and its bytes (for the DLQ object)."""

    offset: int
    timestamp: int | None
    key: bytes | None
    reason: str
    value: bytes | None


def _shape_estimate(t: Any, named: dict[str, Any], depth: int = 0) -> tuple[float, float]:
    """(Avro bytes, Arrow bytes) one value of Avro type ``t`` is expected to take, from shape alone."""
    if depth > 12:
        return 8.0, 16.0
    if isinstance(t, str):
        return {
            "null": (0.0, 0.125),
            "boolean": (1.0, 0.125),
            "int": (2.0, 4.125),
            "long": (4.0, 8.125),
            "float": (4.0, 4.125),
            "double": (8.0, 8.125),
            "string": (16.0, 20.125),
            "bytes": (16.0, 20.125),
        }.get(t, _shape_estimate(named[t], named, depth + 1) if t in named else (8.0, 8.0))
    if isinstance(t, list):
        ests = [_shape_estimate(b, named, depth + 1) for b in t]
        non_null = [e for b, e in zip(t, ests, strict=True) if b != "null"] or ests
        avro = 1.0 + sum(e[0] for e in non_null) / len(non_null)
        return avro, sum(e[1] for e in ests) / max(1, len(non_null))
    kind = t.get("type")
    if isinstance(kind, (dict, list)):
        return _shape_estimate(kind, named, depth + 1)
    name = t.get("name")
    if name:
        named.setdefault(name, t)
        ns = t.get("namespace")
        if ns:
            named.setdefault(f"{ns}.{name}", t)
    if kind == "record":
        a = b = 0.0
        for f in t.get("fields", []):
            fa, fb = _shape_estimate(f["type"], named, depth + 1)
            a, b = a + fa, b + fb
        return a, b + 0.125
    if kind == "map":
        va, vb = _shape_estimate(t["values"], named, depth + 1)
        return 2.0 + 8 * (10.0 + va), 8.125 + 8 * (14.0 + vb)
    if kind == "array":
        va, vb = _shape_estimate(t["items"], named, depth + 1)
        return 2.0 + 4 * va, 8.125 + 4 * vb
    if kind == "enum":
        return 1.0, 4.125
    if kind == "fixed":
        return float(t.get("size", 16)), float(t.get("size", 16)) + 0.125
    return _shape_estimate(kind, named, depth + 1) if isinstance(kind, str) else (8.0, 8.0)


@dataclass
class SchemaStats:
    """What one writer schema's rows have looked like so far (shared by every partition using it)."""

    avro_bytes_per_row: float
    arrow_per_avro: float
    parquet_per_arrow: float = 0.35
    map_entries_per_row: dict[str, float] = field(default_factory=dict)
    null_fraction: dict[str, float] = field(default_factory=dict)
    rows_seen: int = 0
    row_groups_seen: int = 0

    @classmethod
    def from_schema(cls, avro: dict[str, Any]) -> SchemaStats:
        a, b = _shape_estimate(avro, {})
        return cls(avro_bytes_per_row=max(a, 1.0), arrow_per_avro=max(b / max(a, 1.0), 0.5))

    @staticmethod
    def _blend(old: float, new: float, first: bool) -> float:
        return new if first else (1 - _EWMA) * old + _EWMA * new

    def observe_batch(self, batch: pa.RecordBatch, avro_bytes: int) -> None:
        """Fold a decoded chunk into the averages (cheap: reads only buffer sizes and counts)."""
        n = batch.num_rows
        if n == 0:
            return
        first = self.rows_seen == 0
        self.avro_bytes_per_row = self._blend(self.avro_bytes_per_row, avro_bytes / n, first)
        arrow = batch.get_total_buffer_size()
        if avro_bytes:
            self.arrow_per_avro = self._blend(self.arrow_per_avro, arrow / avro_bytes, first)
        for name, col in zip(batch.schema.names, batch.columns, strict=True):
            self.null_fraction[name] = self._blend(
                self.null_fraction.get(name, 0.0), col.null_count / n, first
            )
            if pa.types.is_map(col.type):
                entries = len(col.keys) if hasattr(col, "keys") else 0
                self.map_entries_per_row[name] = self._blend(
                    self.map_entries_per_row.get(name, 8.0), entries / n, first
                )
        self.rows_seen += n

    def observe_encoded(self, arrow_bytes: int, parquet_bytes: int) -> None:
        """Fold an encoded row group's compression ratio in; the first one replaces the guess."""
        if arrow_bytes > 0:
            first = self.row_groups_seen == 0
            self.parquet_per_arrow = self._blend(self.parquet_per_arrow, parquet_bytes / arrow_bytes, first)
            self.row_groups_seen += 1


class Arena:
    """Buffered rows of one partition for one schema, reused across row groups.

    ``schema`` is the file's schema: the writer schema, or with schema evolution the *reader*
    schema that records of several writer schemas are resolved to. The pending chunk remembers
    where each run of one writer schema starts (:attr:`_runs`), so interleaved writer ids need no
    flush: each run is decoded with its writer schema and resolved to ``schema``.
    """

    def __init__(
        self,
        schema: WriterSchema,
        converter: RecordConverter,
        stats: SchemaStats,
        *,
        topic: str,
        partition: int,
        kafka_columns: Sequence[str],
        chunk_rows: int = 2048,
        on_error: str = "dead-letter",
        calibrate: Callable[[pa.Table], int] | None = None,
        decoder: str = "native",
        bucketing: Template | None = None,
    ) -> None:
        self.schema = schema
        self.converter = converter
        self.stats = stats
        self.topic = topic
        self.partition = partition
        self.kafka_columns = tuple(kafka_columns)
        self.chunk_rows = chunk_rows
        self.on_error = on_error
        # Encodes a table and returns its Parquet size: used once per schema on the first decoded
        # chunk, so the very first row group already lands near its byte target.
        self.calibrate = calibrate
        # Chunk decoder: "native" (consumer._native, built on first use; None → fastavro) or "python".
        self.decoder = decoder
        self._native: NativeDecoder | None = None
        self._native_tried = False
        self._natives: dict[str, NativeDecoder | None] = {}  # per writer schema (resolved chunks)
        # Raw chunk: bodies back to back, end offsets, coordinates. Pre-sized from the stats when
        # the first record of a row group arrives, rewound between chunks, and released when the
        # row group is drained: an idle partition holds no buffer, so hundreds of assigned
        # partitions cost memory only for the rows they really hold.
        self._raw = bytearray()
        self._raw_len = 0
        self._ends = array.array("q", bytes(8 * chunk_rows))
        self._offsets = array.array("q", bytes(8 * chunk_rows))
        self._timestamps = array.array("q", bytes(8 * chunk_rows))
        self._keys: list[bytes | None] = []
        self._key_bytes = 0  # bytes of the pending chunk's keys
        self._headers: list[Any] = []
        self._pending = 0
        # Runs of the pending chunk: (first index, writer schema), only once a record of another
        # writer schema than ``schema`` arrived (empty: every pending body is of ``schema``).
        self._runs: list[tuple[int, WriterSchema]] = []
        self._batches: list[pa.RecordBatch] = []
        self._batch_bytes = 0
        # What the decoded batches occupy: their lengths plus the slack the native decoder reports
        # (its buffers' capacities; see native.Decoded). ``_batch_bytes`` stays the Arrow size the
        # encoded-size predictions are learnt from.
        self._batch_memory = 0
        self._chunk_slack = 0
        self._batch_avro_bytes = 0
        self.rows = 0  # rows buffered (pending + decoded), dead letters excluded
        self.dead_letters: list[DeadLetter] = []
        self.halted: DeadLetter | None = None  # set under on_error=fail: the first bad record
        # --partition-by: the bucket of every decoded row (one string and one end-time array per
        # batch), computed at decode while the raw bodies still exist for exact dead letters.
        self.bucketing = bucketing
        self._buckets: list[pa.Array] = []
        self._bucket_ends: list[pa.Array] = []
        self.max_time: int | None = None  # the newest bucket time seen (the partition's watermark)

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes this arena holds now: the raw chunk buffer (allocated only while rows are buffered),
        keys, decoded Arrow buffers and dead letters. The fixed coordinate arrays (24 bytes per
        chunk row) are not counted: they are the same small constant for every partition."""
        dl = sum(len(d.value or b"") + len(d.reason) for d in self.dead_letters) if self.dead_letters else 0
        return len(self._raw) + self._key_bytes + self._batch_memory + dl

    @property
    def predicted_encoded_bytes(self) -> float:
        """How big the row group would be as Parquet if flushed now (from the running ratios)."""
        arrow = self._batch_bytes + self._raw_len * self.stats.arrow_per_avro
        return arrow * self.stats.parquet_per_arrow

    @property
    def avro_bytes(self) -> int:
        return self._batch_avro_bytes + self._raw_len

    # -- appending -------------------------------------------------------------------------------
    def append(
        self,
        body: bytes | memoryview,
        offset: int,
        timestamp: int | None,
        key: bytes | None,
        headers: Any = None,
        writer: WriterSchema | None = None,
    ) -> None:
        """Append one body; ``writer``: its writer schema when that is not :attr:`schema` (it is
        then resolved to :attr:`schema` when the chunk is decoded)."""
        w = self.schema if writer is None else writer
        if self._runs:
            if self._runs[-1][1] is not w:
                self._runs.append((self._pending, w))
        elif w is not self.schema:
            if self._pending:
                self._runs.append((0, self.schema))
            self._runs.append((self._pending, w))
        n = len(body)
        end = self._raw_len + n
        if end > len(self._raw):
            self._grow(end)
        memoryview(self._raw)[self._raw_len : end] = body  # see _take_run
        i = self._pending
        self._ends[i] = end
        self._offsets[i] = offset
        self._timestamps[i] = -1 if timestamp is None else timestamp
        self._keys.append(key)
        if key:
            self._key_bytes += len(key)
        if "headers" in self.kafka_columns:
            self._headers.append(headers)
        self._raw_len = end
        self._pending += 1
        self.rows += 1
        if self._pending >= self.chunk_rows:
            self.decode_pending()

    def _grow(self, end: int) -> None:
        """Make room for ``end`` bytes. The first allocation of a row group is sized from the stats
        for the rows the chunk is expected to take — but at most 256 KiB: hundreds of partitions
        that each hold a few rows must not each reserve a full chunk (2048 rows × the average
        body); a busy partition reaches its chunk size in a few doublings."""
        if not self._raw:
            expected = int(self.chunk_rows * self.stats.avro_bytes_per_row * 1.25) + 4096
            self._raw = bytearray(min(expected, _FIRST_RAW_BYTES))
        if end > len(self._raw):
            self._raw.extend(bytes(max(end - len(self._raw), len(self._raw))))

    @property
    def chunk_room(self) -> int:
        """Records the current chunk still takes before it is decoded."""
        return self.chunk_rows - self._pending

    @property
    def raw_end(self) -> int:
        """Where the next body starts in the raw buffer: the ``base`` of a gathered run's ends."""
        return self._raw_len

    def append_joined(
        self,
        data: bytes,
        ends: bytes,
        offsets: bytes,
        timestamps: bytes,
        keys: list[bytes | None],
        key_bytes: int,
        headers: list[Any] | None = None,
    ) -> None:
        """:meth:`append_many` for a run gathered already (:func:`consumer.gather.gather`): the
        bodies back to back in ``data``, their end offsets counted from :attr:`raw_end`, offsets
        and timestamps (-1: not available) as native int64 buffers, ``key_bytes`` the keys' total
        length. Only slice copies here, nothing per record."""
        n = len(keys)
        if n == 0:
            return
        start = self._raw_len
        end = start + len(data)
        if len(ends) != 8 * n or memoryview(ends).cast("q")[-1] != end:
            raise ValueError(
                f"append_joined: {len(ends)} bytes of end offsets for {n} records do not end at "
                f"{end} (gather with base=raw_end)"
            )
        self._take_run(data, array.array("q", ends), offsets, timestamps, keys, key_bytes, headers)

    def append_many(
        self,
        bodies: Sequence[bytes],
        offsets: Sequence[int],
        timestamps: Sequence[int],
        keys: Sequence[bytes | None],
        headers: Sequence[Any] | None = None,
    ) -> None:
        """Append a run of records (at most :attr:`chunk_room`) in a few C-level operations:
        one ``bytes.join`` into the raw buffer, end offsets by ``accumulate``, coordinates by
        array slice assignment. ``timestamps`` use -1 for "not available"."""
        n = len(bodies)
        if n == 0:
            return
        ends = array.array("q", accumulate(map(len, bodies), initial=self._raw_len))[1:]
        key_bytes = sum(map(len, filter(None, keys)))
        self._take_run(b"".join(bodies), ends, offsets, timestamps, keys, key_bytes, headers)

    def _take_run(
        self,
        data: bytes | bytearray | memoryview,
        ends: array.array[int],
        offsets: Any,
        timestamps: Any,
        keys: Sequence[bytes | None],
        key_bytes: int,
        headers: Sequence[Any] | None,
    ) -> None:
        """The common tail of the two appends: ``data`` (the bodies back to back, ending at
        ``ends`` counted from :attr:`raw_end`) into the raw buffer, the coordinates into their
        arrays (``offsets``/``timestamps``: int64 sequences or buffers), and the chunk trigger."""
        n = len(keys)
        if self._runs and self._runs[-1][1] is not self.schema:
            self._runs.append((self._pending, self.schema))
        start = self._raw_len
        end = start + len(data)
        if end > len(self._raw):
            self._grow(end)
        # Through a memoryview: a bytearray slice assigned from anything but a bytearray first
        # copies it into a temporary bytearray (CPython), one more copy of every body. The raw
        # buffer was grown to ``end`` above, so the slice has exactly ``data``'s length.
        memoryview(self._raw)[start:end] = data
        p = self._pending
        self._ends[p : p + n] = ends
        self._offsets[p : p + n] = array.array("q", offsets)
        self._timestamps[p : p + n] = array.array("q", timestamps)
        self._keys.extend(keys)
        self._key_bytes += key_bytes
        if "headers" in self.kafka_columns:
            self._headers.extend(headers if headers is not None else [None] * n)
        self._raw_len = end
        self._pending += n
        self.rows += n
        if self._pending >= self.chunk_rows:
            self.decode_pending()

    def decode_pending(self) -> None:
        """Decode the raw chunk into one Arrow batch and rewind the raw buffer."""
        n = self._pending
        if n == 0:
            return
        raw = memoryview(self._raw)
        bodies = _Bodies(raw, self._ends, n)
        records, bad = self._decode_chunk(bodies, n)
        keep = list(range(n))
        if bad:
            bad_idx = {i for i, _ in bad}
            if self.on_error == "fail":
                first_bad, reason = bad[0]
                self.halted = self._dead_letter(first_bad, reason, bodies[first_bad])
                records = records[:first_bad]
                keep = list(range(first_bad))
                self.rows -= n - first_bad
            else:
                for i, reason in bad:
                    self.dead_letters.append(self._dead_letter(i, reason, bodies[i]))
                keep = [i for i in range(n) if i not in bad_idx]
                self.rows -= len(bad)
        raw_bodies = bodies
        del bodies, raw
        batch, kept = self._to_batch(records, keep, raw_bodies) if keep else (None, [])
        if batch is not None and batch.num_rows and self.bucketing is not None:
            batch = self._assign_buckets(batch, kept, raw_bodies)
        if batch is not None and batch.num_rows:
            self._batches.append(batch)
            size = batch.get_total_buffer_size()
            self._batch_bytes += size
            self._batch_memory += size + self._chunk_slack
            chunk_avro = int(self._ends[keep[-1]])
            self._batch_avro_bytes += chunk_avro
            self.stats.observe_batch(batch, chunk_avro)
            if self.calibrate is not None and self.stats.row_groups_seen == 0:
                table = pa.Table.from_batches([batch])
                self.stats.observe_encoded(batch.get_total_buffer_size(), self.calibrate(table))
        self._pending = 0
        self._runs = []
        self._raw_len = 0
        self._key_bytes = 0
        self._keys.clear()
        self._headers.clear()

    def _assign_buckets(
        self, batch: pa.RecordBatch, kept: list[int], bodies: Sequence[memoryview]
    ) -> pa.RecordBatch | None:
        """Compute every row's bucket (columnar). A row without one (null or impossible time, or
        a writer schema without the field) becomes a dead letter, or halts under fail."""
        import pyarrow.compute as pc  # only a bucketed layout computes (consumer/bucketing.py)

        assert self.bucketing is not None
        try:
            if self.bucketing.field_path is None:
                ts = array.array("q", (self._timestamps[i] for i in kept))
                raw = pa.Array.from_buffers(pa.int64(), len(kept), [None, pa.py_buffer(ts.tobytes())])
                millis = pc.if_else(pc.greater_equal(raw, 0), raw, pa.scalar(None, pa.int64()))
                if not isinstance(millis, pa.Array):
                    millis = pa.array([millis.as_py()] * len(kept), pa.int64())
            else:
                millis = time_column(self.bucketing, batch)
        except (KeyError, TypeError) as exc:
            # The writer schema has no usable time field: no row of it has a bucket.
            reasons = [(j, str(exc).strip("'\"")[:300]) for j in range(len(kept))]
            empty = pa.array([], pa.int64())
            a = Assignment(pa.array([], pa.string()), empty, empty, reasons)
            millis = None
        else:
            a = assign(self.bucketing, millis)
            reasons = a.reasons
        if reasons:
            bad_rows = {j for j, _ in reasons}
            if self.on_error == "fail":
                j, reason = reasons[0]
                if self.halted is None or int(self._offsets[kept[j]]) < self.halted.offset:
                    self.halted = self._dead_letter(kept[j], reason, bodies[kept[j]])
                self.rows -= len(kept) - j
                if j == 0:
                    return None
                batch = batch.slice(0, j)
                if millis is None:
                    return None
                a = Assignment(a.buckets.slice(0, j), a.ends.slice(0, j), a.times.slice(0, j), [])
            else:
                for j, reason in reasons:
                    self.dead_letters.append(self._dead_letter(kept[j], reason, bodies[kept[j]]))
                self.rows -= len(bad_rows)
                if millis is None or len(bad_rows) == len(kept):
                    return None
                mask = pa.array([j not in bad_rows for j in range(len(kept))])
                batch = batch.filter(mask)
                a = Assignment(a.buckets.filter(mask), a.ends.filter(mask), a.times.filter(mask), [])
        newest = pc.max(a.times).as_py()
        if newest is not None and (self.max_time is None or newest > self.max_time):
            self.max_time = newest
        self._buckets.append(a.buckets)
        self._bucket_ends.append(a.ends)
        return batch

    def _to_batch(
        self, records: list[Any], keep: list[int], bodies: Sequence[memoryview]
    ) -> tuple[pa.RecordBatch, list[int]]:
        """The chunk's rows as one batch, and the chunk indices of its rows. A record whose value
        Arrow refuses (e.g. a decimal wider than its declared precision) becomes a dead letter (or
        halts, under ``on_error=fail``) instead of failing the other rows of its chunk; only a
        refused chunk pays the per-record retry that finds it."""
        try:
            return self._values_to_batch(records, self._kafka_arrays(keep)), keep
        except Exception:
            pass
        good_records: list[Any] = []
        good_keep: list[int] = []
        for record, i in zip(records, keep, strict=True):
            try:
                self.converter.to_batch([record], self._kafka_arrays([i]))
            except Exception as exc:
                reason = self.converter.decimal_refusal(record) or (
                    f"value not representable in the column types: {type(exc).__name__}: {exc}"[:300]
                )
                if self.on_error == "fail":
                    self.halted = self._dead_letter(i, reason, bodies[i])
                    self.rows -= len(keep) - len(good_keep)
                    break
                self.dead_letters.append(self._dead_letter(i, reason, bodies[i]))
                self.rows -= 1
                continue
            good_records.append(record)
            good_keep.append(i)
        return self.converter.to_batch(good_records, self._kafka_arrays(good_keep)), good_keep

    def _decode_chunk(self, bodies: Sequence[memoryview], n: int) -> tuple[Any, list[tuple[int, str]]]:
        """(values of the good rows, [(index, reason)] of the bad ones): a record batch of the value
        columns from the native decoder, else fastavro's dicts (the reference path)."""
        if self._runs:
            return self._decode_runs(bodies, n)
        if self.decoder == "native" and not self._native_tried:
            self._native_tried = True
            self._native = decoder_for(self.schema.avro, self.schema.fingerprint)
        self._chunk_slack = 0
        if self._native is not None:
            try:
                values, bad, held = self._native.decode_held(self._raw, self._ends, n)
                self._chunk_slack = max(0, held - values.get_total_buffer_size())
                return values, bad
            except (NativeError, pa.ArrowInvalid) as exc:  # never silently slower: say so once
                warn_once(f"chunk:{self.schema.fingerprint}", "native decode failed: chunk decoded "
                          "with fastavro", schema=self.schema.fingerprint, reason=str(exc)[:300])
        return decode_bodies(self.schema, bodies)

    def _decode_runs(self, bodies: Sequence[memoryview], n: int) -> tuple[Any, list[tuple[int, str]]]:
        """A chunk of several writer schemas: each run decoded with its writer schema and resolved
        to the arena's (reader) schema — natively (writer columns projected onto the reader's,
        :mod:`consumer.projection`) when every run can be, else by fastavro's ``reader_schema``."""
        ends = [start for start, _ in self._runs[1:]] + [n]
        runs = [(start, end, w) for (start, w), end in zip(self._runs, ends, strict=True) if start < end]
        if self.decoder == "native":
            native = self._decode_runs_native(runs)
            if native is not None:
                return native
        records: list[Any] = []
        bad: list[tuple[int, str]] = []
        for start, end, writer in runs:
            good, run_bad = decode_bodies(writer, [bodies[i] for i in range(start, end)], self.schema)
            records.extend(good)
            bad.extend((start + i, reason) for i, reason in run_bad)
        return records, bad

    def _decode_runs_native(
        self, runs: list[tuple[int, int, WriterSchema]]
    ) -> tuple[pa.RecordBatch, list[tuple[int, str]]] | None:
        """The runs decoded natively and projected onto the reader's columns, or None (then the
        caller uses fastavro; one warning per schema pair says why).

        Bodies are grouped by writer schema, so alternating ids cost one native call per writer
        schema and chunk, not one per run; a final ``take`` puts the rows back in chunk order."""
        groups: dict[str, tuple[WriterSchema, list[tuple[int, int]]]] = {}
        for start, end, writer in runs:
            groups.setdefault(writer.fingerprint, (writer, []))[1].append((start, end))
        batches: list[pa.RecordBatch] = []
        order: list[int] = []  # chunk index of every good row, in the order of ``batches``
        bad: list[tuple[int, str]] = []
        raw = memoryview(self._raw)
        all_ends = self._ends
        for writer, spans in groups.values():
            key = f"{writer.fingerprint}:{self.schema.fingerprint}"
            projection = None
            if writer is not self.schema:
                if key not in _PROJECTIONS:
                    try:
                        _PROJECTIONS[key] = Projection(writer.avro, self.schema.avro)
                    except ProjectionUnsupported as exc:
                        _PROJECTIONS[key] = None
                        warn_once(f"resolve:{key}", "schema resolution of this pair runs in fastavro, "
                                  "not natively (slower)", writer_schema_id=writer.schema_id,
                                  reader_schema_id=self.schema.schema_id, reason=str(exc)[:300])
                projection = _PROJECTIONS[key]
                if projection is None:
                    return None
            if writer.fingerprint not in self._natives:
                self._natives[writer.fingerprint] = decoder_for(writer.avro, writer.fingerprint)
            native = self._natives[writer.fingerprint]
            if native is None:
                return None
            index = [i for start, end in spans for i in range(start, end)]
            if len(spans) == 1:  # one contiguous run: decode it in place
                base = all_ends[index[0] - 1] if index[0] else 0
                data: bytes | memoryview = raw[base : all_ends[index[-1]]]
                ends = array.array("q", (all_ends[i] - base for i in index))
            else:
                pieces = [raw[(all_ends[i - 1] if i else 0) : all_ends[i]] for i in index]
                data = b"".join(pieces)
                ends = array.array("q", accumulate(map(len, pieces)))
            try:
                values, group_bad = native.decode(data, ends, len(index))
                if projection is not None:
                    values = projection.apply(values)
            except (NativeError, pa.ArrowInvalid) as exc:
                warn_once(f"chunk:{key}", "native decode of a resolved chunk failed: chunk decoded "
                          "with fastavro", reason=str(exc)[:300])
                return None
            dropped = {k for k, _ in group_bad}
            bad.extend((index[k], reason) for k, reason in group_bad)
            order.extend(i for k, i in enumerate(index) if k not in dropped)
            batches.append(values)
        del raw
        batch = pa.concat_batches(batches) if len(batches) > 1 else batches[0]
        if len(batches) > 1:
            perm = sorted(range(len(order)), key=order.__getitem__)
            batch = batch.take(pa.array(perm, pa.int32()))
        bad.sort()
        return batch, bad

    def _values_to_batch(self, records: Any, kafka: list[pa.Array]) -> pa.RecordBatch:
        """Value columns (native batch, or fastavro dicts to convert) plus the Kafka columns."""
        if isinstance(records, pa.RecordBatch):
            return pa.RecordBatch.from_arrays([*records.columns, *kafka], schema=self.converter.schema)
        return self.converter.to_batch(records, kafka)

    def _dead_letter(self, i: int, reason: str, body: memoryview) -> DeadLetter:
        ts = self._timestamps[i]
        return DeadLetter(
            int(self._offsets[i]), None if ts < 0 else int(ts), self._keys[i], reason, bytes(body)
        )

    def _kafka_arrays(self, keep: list[int]) -> list[pa.Array]:
        n = len(keep)
        full = n == self._pending
        cols: list[pa.Array] = []
        for c in self.kafka_columns:
            if c == "topic":
                cols.append(pa.repeat(pa.scalar(self.topic, pa.string()), n))
            elif c == "partition":
                cols.append(pa.repeat(pa.scalar(self.partition, pa.int32()), n))
            elif c == "offset":
                data = self._offsets[:n] if full else array.array("q", (self._offsets[i] for i in keep))
                cols.append(pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(data.tobytes())]))
            elif c == "timestamp":
                data = self._timestamps[:n] if full else array.array("q", (self._timestamps[i] for i in keep))
                raw_ts = pa.Array.from_buffers(_TIMESTAMP_MS, n, [None, pa.py_buffer(data.tobytes())])
                # -1 marks "no timestamp": null, computed column-wise, and only when there is one
                if n and any_negative(data):
                    import pyarrow.compute as pc  # rare: see any_negative

                    ints = raw_ts.view(pa.int64())
                    raw_ts = pc.if_else(pc.greater_equal(ints, 0), raw_ts, pa.scalar(None, _TIMESTAMP_MS))
                cols.append(raw_ts)
            elif c == "key":
                cols.append(pa.array(self._keys if full else [self._keys[i] for i in keep], pa.binary()))
            elif c == "headers":
                cols.append(
                    pa.array(
                        [[{"key": k, "value": v} for k, v in (self._headers[i] or [])] for i in keep],
                        KAFKA_FIELDS["headers"].type,
                    )
                )
        return cols

    # -- draining ------------------------------------------------------------------------------
    def drain(self) -> tuple[pa.Table, list[DeadLetter], int]:
        """Everything buffered as one table (possibly 0 rows), its dead letters and Arrow bytes.

        The arena is empty afterwards and keeps its raw buffer for the next row group.
        """
        table, dead, arrow_bytes, _buckets, _ends = self.drain_buckets()
        return table, dead, arrow_bytes

    def drain_buckets(self) -> tuple[pa.Table, list[DeadLetter], int, pa.Array | None, pa.Array | None]:
        """:meth:`drain` plus, under ``--partition-by``, every row's bucket path and bucket end
        (epoch ms), aligned with the table's rows (None without bucketing)."""
        self.decode_pending()
        buckets = ends = None
        if self.bucketing is not None:
            buckets = pa.concat_arrays(self._buckets) if self._buckets else pa.array([], pa.string())
            ends = pa.concat_arrays(self._bucket_ends) if self._bucket_ends else pa.array([], pa.int64())
            self._buckets, self._bucket_ends = [], []
        if self._batches:
            table = pa.Table.from_batches(self._batches, schema=self.converter.schema)
        else:
            table = self.converter.schema.empty_table()
        arrow_bytes = self._batch_bytes
        dead = self.dead_letters
        self._batches = []
        self._batch_bytes = self._batch_memory = 0
        self._batch_avro_bytes = 0
        self.rows = 0
        self.dead_letters = []
        self._raw = bytearray()  # released: re-sized from the stats at the next row group's first record
        return table, dead, arrow_bytes, buckets, ends


class _Bodies(Sequence[memoryview]):
    """The chunk's bodies as memoryviews, made only when asked for (the native decoder reads the
    raw buffer directly; only the fastavro path and dead letters need a view per record)."""

    def __init__(self, raw: memoryview, ends: array.array[int], n: int) -> None:
        self.raw, self.ends, self.n = raw, ends, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> memoryview:  # type: ignore[override]  # no slices needed
        start = self.ends[i - 1] if i else 0
        return self.raw[start : self.ends[i]]

    def __iter__(self) -> Iterator[memoryview]:
        return (self[i] for i in range(self.n))


_TIMESTAMP_MS = pa.timestamp("ms", tz="UTC")
_SIGN_BYTE = 7 if sys.byteorder == "little" else 0


def any_negative(ints: array.array[int]) -> bool:
    """True if an int64 of ``ints`` is negative: a record without a Kafka timestamp (-1).

    Checked per chunk on every run, so without ``pyarrow.compute``, which a run without
    ``--partition-by`` does not import (consumer/bucketing.py says why): a negative int64 has the
    top bit of its most significant byte set, so the chunk has one exactly when the string of those
    bytes is not all ASCII, one C pass over n bytes.
    """
    return not ints.tobytes()[_SIGN_BYTE::8].isascii()


def kafka_fields(columns: Sequence[str]) -> list[pa.Field]:
    return [KAFKA_FIELDS[c] for c in columns]
