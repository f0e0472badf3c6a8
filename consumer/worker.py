"""The partition worker: one object owns one partition's whole state machine.

    NEW ─recover─► READY ─append*─► flush (row group durable ─► commit) ─► … ─► roll (final file) ─► …
                     │
                     ├─ a bad record under --on-error fail ─► HALTED (everything before it committed)
                     ├─ a flush or roll failed part-way ───► BROKEN (never writes again)
                     └─ a commit was refused ──────────────► FENCED (someone else owns it now)

Every step checks the state first (:meth:`PartitionWorker._require`); only READY writes.

**Flush.** The arena's rows become one Parquet piece, PUT conditionally under
``_staging/…/<file>/<from>-<to>.piece`` where ``[from, to)`` is the Kafka position range it covers.
Only after the PUT succeeded is ``to`` committed, synchronously. Dead letters of the range are made
durable before the piece, so a committed position never skips a record that is nowhere. Under
``--on-error fail`` the range ends at the bad record, whenever it is found.

**Roll.** The decision "file F ends at position E" is itself made durable first (a roll marker
object), then ``E`` is committed again — a commit from a stale generation fails, so only the
partition's current owner proceeds — then the staged pieces are checked against what was written
(size and ETag: a store that ignored a conditional write is caught here), no other final file of
the partition may overlap ``[F, E)``, and the pieces are merged into the final object under a
deterministic key, written conditionally, verified by reading its footer back, and only then are
the pieces deleted. Every step is idempotent, so recovery can redo any of them.

**Identity.** A Parquet file has one schema, so a file's pieces must agree on the writer schema,
the Arrow schema (Kafka columns, type mapping of this pyarrow) and the writer options. That
identity rides in every piece's metadata with the file's birth time and the Avro schema, so
whoever finishes a roll — this process or a restarted one — writes the same footer, and a change
of any of them finishes the old file first.

**Recover.** On assignment, :func:`consumer.recovery.plan_recovery` decides from the committed
position and what S3 holds (see there); the worker carries the plan out.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from operator import itemgetter, methodcaller
from typing import Any

import pyarrow as pa

from consumer import faults
from consumer.arena import Arena, DeadLetter, SchemaStats, kafka_fields
from consumer.config import Config
from consumer.decoding import CONFLUENT_HEADER, BadRecord, Decoder, WriterSchema, framing_runs
from consumer.errors import BadRecordStop, IntegrityError
from consumer.layout import Layout, PieceRef, RollMarker
from consumer.metrics import PartitionCounters
from consumer.parquet_merge import (
    ParquetMergeError,
    PieceLayout,
    merged_trailer,
    piece_layout,
    read_key_value_metadata,
    read_layout,
)
from consumer.positions import PartitionFenced, PositionStore
from consumer.recovery import chain_ending_at, plan_recovery
from consumer.rowgroup import SCHEMA_FINGERPRINT_KEY, WriterOptions, encode_piece
from consumer.storage import CopyRange, ObjectStore, PutOutcome, Segment
from consumer.typemap import RecordConverter

__all__ = [
    "BadRecordStop",
    "IntegrityError",
    "PartitionState",
    "PartitionWorker",
    "SharedState",
    "file_identity",
]

EMPTY_TABLE = pa.table({})

FROM_KEY, TO_KEY = "kafka.from_position", "kafka.to_position"
BORN_KEY = "consumer.file_born_at"  # wall-clock birth of the file, so its age survives restarts
AVRO_SCHEMA_KEY = "avro.schema"

# Kept for callers of the old private name (tests/unit/test_recovery_chain.py).
_chain_ending_at = chain_ending_at


class PartitionState(Enum):
    NEW = "new"  # created; recover() not run yet
    READY = "ready"  # recovered: appends, flushes and rolls allowed
    HALTED = "halted"  # on_error=fail met a bad record; everything before it is committed
    BROKEN = "broken"  # a flush or roll failed part-way: never write again (see flush)
    FENCED = "fenced"  # a commit was refused: another member owns the partition


def file_identity(avro_fingerprint: str, arrow: pa.Schema, options: WriterOptions) -> str:
    """What every piece of one file must share: writer schema, Arrow schema, writer options and
    the pyarrow major version (a major may map a logical type differently)."""
    h = hashlib.sha256()
    for part in (avro_fingerprint, arrow.to_string(show_schema_metadata=False), repr(options),
                 pa.__version__.split(".")[0]):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


@dataclass
class StagedPiece:
    ref: PieceRef
    layout: PieceLayout
    rows: int
    etag: str | None = None  # as written (MD5 of the bytes); checked at roll time


@dataclass
class FileState:
    """The in-progress file: where it starts, its durable pieces, its identity and birth time."""

    start: int
    pieces: list[StagedPiece] = field(default_factory=list)
    opened_at: float = field(default_factory=time.monotonic)  # on the worker's clock
    born_wall: float = field(default_factory=time.time)  # epoch seconds, written into pieces
    identity: str | None = None

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.pieces)

    @property
    def size(self) -> int:
        """Bytes of the final file if rolled now (bodies + an approximate footer)."""
        if not self.pieces:
            return 0
        return 12 + sum(p.layout.body_len for p in self.pieces) + len(self.pieces[-1].layout.footer)


@dataclass
class SharedState:
    """What all workers of a process share: schema statistics and converters per writer schema,
    and the schemas that cannot become columns (their records go to dead letters)."""

    stats: dict[str, SchemaStats] = field(default_factory=dict)
    converters: dict[str, RecordConverter] = field(default_factory=dict)
    unmappable: dict[str, str] = field(default_factory=dict)
    counters: dict[tuple[str, int], PartitionCounters] = field(default_factory=dict)  # for metrics


class PartitionWorker:
    def __init__(
        self,
        topic: str,
        partition: int,
        *,
        config: Config,
        store: ObjectStore,
        positions: PositionStore,
        layout: Layout,
        decoder: Decoder,
        shared: SharedState,
        log: Any,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.config = config
        self.store = store
        self.positions = positions
        self.layout = layout
        self.decoder = decoder
        self.shared = shared
        self.log = log.bind(topic=topic, partition=partition)
        self.clock = clock
        self.wall = wall
        self.options = WriterOptions(compression=config.compression)
        self.state = PartitionState.NEW
        self.committed: int | None = None  # durable and committed: every position below is in S3
        self.next_pos: int | None = None  # position after the last record appended
        self.file: FileState | None = None
        self.arena: Arena | None = None
        self.identity: str | None = None  # of the arena's rows
        self.dead_letters: list[DeadLetter] = []  # bad records before any arena exists
        self.first_append_at: float | None = None
        self.row_groups = 0
        self.files_rolled = 0
        self.counters = shared.counters.setdefault((topic, partition), PartitionCounters())
        self._final_ends: dict[int, int] = {}  # final files' start → end, as far as known

    @property
    def broken(self) -> bool:
        return self.state is PartitionState.BROKEN

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]"

    def _require(self, *states: PartitionState) -> bool:
        return self.state in states

    # ------------------------------------------------------------------------------------------
    # recovery
    # ------------------------------------------------------------------------------------------
    def recover(self) -> int | None:
        """Rebuild state from the committed position and staged objects; the position to seek to."""
        t0 = self.clock()
        committed = self.positions.committed(self.topic, self.partition)
        faults.point("during_recovery")
        listing = self.store.list(self.layout.staging_dir(self.topic, self.partition))
        etags = {o.key: o.etag for o in listing}
        staged = [self.layout.parse_staging_key(self.topic, self.partition, o.key, o.size) for o in listing]
        pieces = [s for s in staged if isinstance(s, PieceRef)]
        markers = [s for s in staged if isinstance(s, RollMarker)]
        dead = []
        for o in self.store.list(self.layout.dead_letter_dir(self.topic, self.partition)):
            rng = self.layout.parse_dead_letter_range(o.key)
            if rng is not None:
                dead.append((o.key, rng[0], rng[1]))
        finals = self._final_starts()
        last_end = self._final_range(max(finals))[1] if finals else None
        plan = plan_recovery(committed, pieces, markers, dead, finals, last_end, where=self.where)
        for note in plan.notes:
            self.log.warning(note)
        if plan.commit is not None:
            self.positions.commit(self.topic, self.partition, plan.commit)
        for fin in plan.finish:
            if fin.needs_marker:
                self.store.put_if_absent(
                    self.layout.roll_marker_key(self.topic, self.partition, fin.file_start, fin.end), b""
                )
            # A crash mid-merge leaves an invisible multipart upload behind: abort it.
            self.store.abort_uploads(self.layout.final_key(self.topic, self.partition, fin.file_start))
            chain = [self._load_piece(p, etags.get(p.key)) for p in fin.chain]
            self._finish_roll(self._file_of(chain), fin.end)
        resumed = None
        if plan.resume:
            chain = [self._load_piece(p, etags.get(p.key)) for p in plan.resume]
            self.file = self._file_of(chain)
            self.store.abort_uploads(self.layout.final_key(self.topic, self.partition, self.file.start))
            resumed = self.file.start
        if plan.delete:
            self.store.delete(list(plan.delete))
        self.committed = plan.position
        self.next_pos = plan.position
        self.state = PartitionState.READY
        self.log.info(
            "partition recovered",
            committed=committed,
            position=plan.position,
            resumed_file=resumed,
            resumed_pieces=len(self.file.pieces) if self.file else 0,
            resumed_rows=self.file.rows if self.file else 0,
            finished_rolls=len(plan.finish),
            deleted_strays=len(plan.delete),
            ms=round((self.clock() - t0) * 1000, 1),
        )
        return plan.position

    def _file_of(self, chain: list[StagedPiece]) -> FileState:
        """The in-progress file of a staged chain: identity of its last piece with rows, birth time
        of its first piece (so a restart does not make an old file young again)."""
        first_meta = read_key_value_metadata(chain[0].layout.footer)
        try:
            born = float(first_meta.get(BORN_KEY, ""))
        except ValueError:
            born = self.wall()
        identity = next(
            (_identity_of(p.layout) for p in reversed(chain) if p.layout.num_row_groups > 0), None
        )
        age = max(0.0, self.wall() - born)
        return FileState(chain[0].ref.file_start, chain, opened_at=self.clock() - age, born_wall=born,
                         identity=identity)

    def _final_starts(self) -> list[int]:
        out = []
        for o in self.store.list(self.layout.partition_dir(self.topic, self.partition)):
            parsed = self.layout.parse_final_name(o.key)
            if parsed is not None and parsed[1] == self.partition:
                out.append(parsed[2])
        return out

    def _final_range(self, start: int) -> tuple[int, int]:
        """[from, to) of a final file, from its footer (cached: final files never change)."""
        if start in self._final_ends:
            return start, self._final_ends[start]
        key = self.layout.final_key(self.topic, self.partition, start)
        info = self.store.head(key) or _missing(key)
        try:
            meta = read_key_value_metadata(self._read_layout(key, info.size).footer)
            end = int(meta[TO_KEY])
        except (ParquetMergeError, KeyError, ValueError) as exc:
            raise IntegrityError(
                f"final file {key} has no readable Kafka position range in its footer ({exc}); "
                "the prefix holds a file this consumer did not write: use another --output prefix"
            ) from exc
        self._final_ends[start] = end
        return start, end

    def _load_piece(self, ref: PieceRef, etag: str | None = None) -> StagedPiece:
        size = ref.size or (self.store.head(ref.key) or _missing(ref.key)).size
        layout = self._read_layout(ref.key, size)
        if not ref.size:
            ref = PieceRef(ref.file_start, ref.from_pos, ref.to_pos, ref.key, size)
        return StagedPiece(ref, layout, layout.num_rows, etag)

    def _read_layout(self, key: str, size: int) -> PieceLayout:
        return read_layout(lambda start, end: self.store.get(key, start, end), size)

    # ------------------------------------------------------------------------------------------
    # appending
    # ------------------------------------------------------------------------------------------
    def append(self, msg: Any) -> None:
        """Buffer one Kafka message; flushes (and maybe rolls) when a budget is reached."""
        if not self._require(PartitionState.READY):
            return
        offset = msg.offset()
        if self.committed is None:
            # No committed position: the partition starts where the first record is.
            self.committed = offset
        if self.next_pos is not None and offset < self.next_pos:
            return  # re-delivered below our position (seek race): already buffered or durable
        ts_type, ts = msg.timestamp()
        timestamp = ts if ts_type != 0 else None
        if self.first_append_at is None:
            self.first_append_at = self.clock()
        try:
            schema, body = self.decoder.split(msg.value())
            if self.arena is None or self.arena.schema.fingerprint != schema.fingerprint:
                self._switch_schema(schema)
        except BadRecord as exc:
            self._bad(DeadLetter(offset, timestamp, msg.key(), exc.reason, msg.value()))
            self.next_pos = offset + 1
            return
        assert self.arena is not None
        self.arena.append(body, offset, timestamp, msg.key(), msg.headers())
        if self.arena.halted is not None:
            self._halt(self.arena.halted)
        self.next_pos = offset + 1
        if self._row_group_full(self.arena, self._row_group_limit()):
            self.flush()

    def append_batch(self, msgs: list[Any]) -> None:
        """Buffer one partition's run of a consumed batch, in order.

        The fast path moves runs of records into the arena with per-record work done in C (``map``
        over the message methods, one ``bytes.join``), splitting them only where a row group or a
        chunk ends, so flush decisions are exactly those of :meth:`append`. With Confluent framing
        the run is first cut where the 5-byte header changes (:func:`framing_runs`); a run of a
        known schema id loses its headers in C too. Anything unusual — a tombstone, a re-delivered
        offset, malformed framing, a schema id not fetched yet, no arena for the schema — goes
        record by record through :meth:`append`, which decides (and dead-letters) the same way.
        """
        if not self._require(PartitionState.READY) or not msgs:
            return
        offsets = list(map(_msg_offset, msgs))
        values = list(map(_msg_value, msgs))
        if (self.next_pos is not None and offsets[0] < self.next_pos) or None in values:
            for msg in msgs:
                self.append(msg)
            return
        raw = self.decoder.framing == "raw"
        runs = [(0, len(msgs), None)] if raw else framing_runs(values)
        for start, end, schema_id in runs:
            i = start
            while i < end:
                schema = self.decoder.raw_schema if raw else self.decoder.cached(schema_id)
                arena = self.arena
                if (
                    schema is None
                    or arena is None
                    or arena.schema.fingerprint != schema.fingerprint
                    or self.state is not PartitionState.READY
                ):
                    self.append(msgs[i])  # switches the schema, fetches it, or dead-letters
                    i += 1
                    continue
                bodies = values[i:end] if raw else list(map(_strip_header, values[i:end]))
                i += self._append_run(arena, msgs[i:end], offsets[i:end], bodies)

    def _append_run(self, arena: Arena, msgs: list[Any], offsets: list[int], bodies: list[bytes]) -> int:
        """Append records of the current arena's schema until the run ends, the arena changes
        (a roll) or the state does; returns how many were appended (at least one)."""
        # (type, ms); librdkafka gives -1 ms when the type is 'not available', the arena's null
        timestamps = list(map(_second, map(_msg_timestamp, msgs)))
        keys = list(map(_msg_key, msgs))
        headers = list(map(_msg_headers, msgs)) if "headers" in arena.kafka_columns else None
        if self.committed is None:
            self.committed = offsets[0]
        i, n = 0, len(msgs)
        while i < n and self.state is PartitionState.READY and self.arena is arena:
            limit = self._row_group_limit()
            room = min(max(1, limit - arena.rows), arena.chunk_room, self._rows_to_byte_target(arena))
            j = min(n, i + room)
            if self.first_append_at is None:  # a flush earlier in this run restarted the age clock
                self.first_append_at = self.clock()
            arena.append_many(bodies[i:j], offsets[i:j], timestamps[i:j], keys[i:j],
                              headers[i:j] if headers is not None else None)
            if arena.halted is not None:
                self._halt(arena.halted)
            self.next_pos = offsets[j - 1] + 1
            if self._row_group_full(arena, limit):
                self.flush()
            i = j
        return i

    def _row_group_full(self, arena: Arena, limit: int) -> bool:
        """The rotation rule of a row group: its row limit or its predicted encoded byte target."""
        return arena.rows >= limit or arena.predicted_encoded_bytes >= self.config.row_group_bytes

    def _rows_to_byte_target(self, arena: Arena) -> int:
        """About how many more records reach the row group's encoded byte target (from the running
        statistics), so a run is cut where per-record appends would have flushed."""
        st = arena.stats
        per_row = st.avro_bytes_per_row * st.arrow_per_avro * st.parquet_per_arrow
        room = self.config.row_group_bytes - arena.predicted_encoded_bytes
        return max(1, int(room / per_row)) if per_row > 0 else arena.chunk_rows

    def _row_group_limit(self) -> int:
        """Rows the next row group may hold: its own budget, capped by what the file may still take
        (so a row-count file budget is met exactly, not overshot by up to a row group)."""
        limit = self.config.row_group_rows
        if self.config.file_rows is not None:
            limit = min(limit, max(1, self.config.file_rows - (self.file.rows if self.file else 0)))
        return limit

    def _bad(self, dl: DeadLetter) -> None:
        if self.config.on_error == "fail":
            self._halt(dl)
        self.log.warning("bad record to dead letters", offset=dl.offset, reason=dl.reason)
        (self.arena.dead_letters if self.arena else self.dead_letters).append(dl)

    def _halt(self, dl: DeadLetter) -> None:
        """on_error=fail: make everything before the bad record durable, then stop loudly."""
        self.next_pos = dl.offset
        self.flush(upto=dl.offset)
        if self.state is PartitionState.READY:
            self._stop_at(dl)

    def _stop_at(self, dl: DeadLetter) -> None:
        self.state = PartitionState.HALTED
        raise BadRecordStop(
            f"{self.where} offset {dl.offset}: {dl.reason}. Everything before it is durable and "
            f"committed (position {self.committed}); fix the producer or run with "
            "--on-error dead-letter."
        )

    def _converter(self, schema: WriterSchema) -> RecordConverter:
        """The schema's converter (shared by every partition); a schema that cannot become columns
        (recursive, no fields, …) makes its records bad records, not a crash."""
        reason = self.shared.unmappable.get(schema.fingerprint)
        if reason is not None:
            raise BadRecord(reason)
        conv = self.shared.converters.get(schema.fingerprint)
        if conv is None:
            try:
                conv = RecordConverter(schema.avro, kafka_fields(self.config.kafka_columns))
            except Exception as exc:  # TypeMappingError, RecursionError, …
                reason = (
                    f"writer schema{'' if schema.schema_id is None else f' id {schema.schema_id}'} "
                    f"cannot be mapped to columns: {type(exc).__name__}: {exc}"
                )[:300]
                self.shared.unmappable[schema.fingerprint] = reason
                raise BadRecord(reason) from None
            self.shared.converters[schema.fingerprint] = conv
        return conv

    def _switch_schema(self, schema: WriterSchema) -> None:
        """A new writer schema: flush what the old one buffered and, if the file's identity
        changes, roll, since a Parquet file has one schema."""
        conv = self._converter(schema)
        identity = file_identity(schema.fingerprint, conv.schema, self.options)
        if self.arena is not None:
            self.flush()
        if self.file is not None and self.file.identity not in (None, identity):
            self.log.info("file identity changed (schema, columns or writer options): rolling file",
                          schema_id=schema.schema_id)
            self.roll()
        stats = self.shared.stats.setdefault(schema.fingerprint, SchemaStats.from_schema(schema.avro))
        self.arena = Arena(
            schema,
            conv,
            stats,
            topic=self.topic,
            partition=self.partition,
            kafka_columns=self.config.kafka_columns,
            on_error=self.config.on_error,
            decoder=self.config.decoder,
            calibrate=lambda table: len(encode_piece(table, self.options, "")),
        )
        self.identity = identity
        if self.dead_letters:
            self.arena.dead_letters.extend(self.dead_letters)
            self.dead_letters = []

    # ------------------------------------------------------------------------------------------
    # flushing: one durable row group, then the commit
    # ------------------------------------------------------------------------------------------
    @property
    def buffered_bytes(self) -> int:
        """Bytes held for rows and dead letters not yet durable (what the memory budget adds up)."""
        dl = sum(len(d.value or b"") + len(d.reason) for d in self.dead_letters)
        return (self.arena.nbytes if self.arena else 0) + dl

    @property
    def pending(self) -> bool:
        """True when positions past the committed one are buffered (rows or dead letters)."""
        return self.next_pos is not None and self.committed is not None and self.next_pos > self.committed

    def flush_due(self, now: float) -> bool:
        return (
            self.state is PartitionState.READY
            and self.pending
            and self.first_append_at is not None
            and now - self.first_append_at >= self.config.row_group_max_age
        )

    def roll_due(self, now: float) -> bool:
        return (
            self.state is PartitionState.READY
            and self.file is not None
            and bool(self.file.pieces)
            and self.config.file_max_age is not None
            and now - self.file.opened_at >= self.config.file_max_age
        )

    def flush(self, upto: int | None = None) -> None:
        """Make every buffered position durable as one piece, then commit its end position.

        If any step fails part-way (S3 gave up, the commit was refused) the drained rows exist
        only as an uncommitted piece or not at all, so this worker is *broken* (or *fenced*): it
        must never write again (a later flush would commit an empty range over the lost rows). The
        partition comes back only through recovery from durable state, by whoever owns it next.
        """
        if not self._require(PartitionState.READY):
            return
        try:
            self._flush(upto)
        except BadRecordStop:
            raise
        except PartitionFenced:
            self.state = PartitionState.FENCED
            raise
        except BaseException:
            self.state = PartitionState.BROKEN
            raise

    def _flush(self, upto: int | None) -> None:
        if not self.pending:
            return
        assert self.committed is not None and self.next_pos is not None
        from_pos, to_pos = self.committed, (upto if upto is not None else self.next_pos)
        if self.arena is None and not self.dead_letters:
            return
        t0 = self.clock()
        halt: DeadLetter | None = None
        identity: str | None = None
        if self.arena is not None:
            table, dead, arrow_bytes = self.arena.drain()
            identity = self.identity
            # Under on_error=fail the drain may have met a bad record: the range ends there.
            halt, self.arena.halted = self.arena.halted, None
            if halt is not None:
                to_pos = min(to_pos, halt.offset)
        else:
            # Only bad records so far: a zero-row piece keeps the position chain unbroken.
            table, dead, arrow_bytes = EMPTY_TABLE, self.dead_letters, 0
            self.dead_letters = []
        if to_pos <= from_pos:
            if halt is not None:
                self._stop_at(halt)
            return
        if self.file is None:
            self.file = FileState(from_pos, opened_at=self.clock(), born_wall=self.wall())
        elif identity is not None and self.file.identity not in (None, identity):
            raise IntegrityError(f"{self.where}: a piece of another identity would join {self.file.start}")
        if dead:
            self._put_dead_letters(dead, from_pos, to_pos)
            faults.point("after_dead_letter_put")
        meta = {BORN_KEY: repr(self.file.born_wall)}
        if table.num_rows and self.arena is not None:
            meta[AVRO_SCHEMA_KEY] = json.dumps(self.arena.schema.avro, separators=(",", ":"))
        data = encode_piece(table, self.options, identity or "", meta)
        encoded_at = self.clock()
        key = self.layout.piece_key(self.topic, self.partition, self.file.start, from_pos, to_pos)
        faults.point("before_piece_put")
        outcome = self.store.put_if_absent(key, data)
        if outcome is PutOutcome.EXISTS_OTHER:
            # Same range, same records (Kafka positions are immutable), other bytes: written by an
            # earlier owner with other options. Its rows are ours; use it as it is — unless its
            # identity differs from the file's, which a roll could not merge.
            info = self.store.head(key) or _missing(key)
            layout = self._read_layout(key, info.size)
            other = _identity_of(layout)
            if layout.num_row_groups and other not in (None, self.file.identity, identity):
                raise IntegrityError(
                    f"{self.where}: staged piece {key} exists with another schema or writer options; "
                    "remove the partition's _staging/ objects of this range and restart"
                )
            self.log.warning("piece already existed with other bytes; keeping it", key=key)
            size, etag, rows = info.size, info.etag, layout.num_rows
        else:
            layout = piece_layout(data)
            size, etag, rows = len(data), hashlib.md5(data).hexdigest(), table.num_rows
        faults.point("after_piece_put")
        self.positions.commit(self.topic, self.partition, to_pos)
        faults.point("after_commit")
        self.committed = to_pos
        self.first_append_at = None
        if self.arena is not None:
            self.arena.stats.observe_encoded(arrow_bytes, len(data))
        self.file.pieces.append(
            StagedPiece(PieceRef(self.file.start, from_pos, to_pos, key, size), layout, rows, etag)
        )
        if identity is not None and rows:
            self.file.identity = identity
        self.row_groups += 1
        self.counters.durable(rows, size)
        self.log.info(
            "row group durable",
            from_position=from_pos,
            to_position=to_pos,
            rows=rows,
            bytes=size,
            dead_letters=len(dead),
            encode_ms=round((encoded_at - t0) * 1000, 1),
            put_commit_ms=round((self.clock() - encoded_at) * 1000, 1),
            file_rows=self.file.rows,
            file_bytes=self.file.size,
        )
        if halt is not None:
            self.next_pos = to_pos
            self._stop_at(halt)
        if self._file_full():
            self._roll()

    def _put_dead_letters(self, dead: list[DeadLetter], from_pos: int, to_pos: int) -> None:
        lines = [
            json.dumps(
                {
                    "topic": self.topic,
                    "partition": self.partition,
                    "offset": d.offset,
                    "timestamp": d.timestamp,
                    "reason": d.reason,
                    "key_b64": base64.b64encode(d.key).decode() if d.key is not None else None,
                    "value_b64": base64.b64encode(d.value).decode() if d.value is not None else None,
                }
            )
            for d in dead
        ]
        key = self.layout.dead_letter_key(self.topic, self.partition, from_pos, to_pos)
        self.store.put_if_absent(key, ("\n".join(lines) + "\n").encode())
        self.log.warning("dead letters durable", key=key, count=len(dead))
        self.counters.dead(d.reason for d in dead)

    # -- rotation rules: one named predicate each --------------------------------------------
    def _file_full(self) -> bool:
        return self._file_rows_reached() or self._file_bytes_reached()

    def _file_rows_reached(self) -> bool:
        f = self.file
        return f is not None and self.config.file_rows is not None and f.rows >= self.config.file_rows

    def _file_bytes_reached(self) -> bool:
        """Roll when the next row group would overshoot the byte target by more than it
        undershoots: files land within ± half a row group of the target."""
        f = self.file
        if f is None or not f.pieces:
            return False
        return f.size + f.pieces[-1].layout.body_len / 2 >= self.config.file_bytes

    # ------------------------------------------------------------------------------------------
    # rolling: pieces → one final file
    # ------------------------------------------------------------------------------------------
    def roll(self) -> None:
        """Finish the in-progress file at the committed position (durable decision first)."""
        if not self._require(PartitionState.READY):
            return
        try:
            self._roll()
        except PartitionFenced:
            self.state = PartitionState.FENCED
            raise
        except BaseException:
            self.state = PartitionState.BROKEN
            raise

    def _roll(self) -> None:
        f = self.file
        if f is None or not f.pieces:
            return
        assert self.committed is not None
        end = self.committed
        marker = self.layout.roll_marker_key(self.topic, self.partition, f.start, end)
        self.store.put_if_absent(marker, b"")
        faults.point("after_marker_put")
        # Re-commit the same position: a member that lost the partition fails here and stops
        # before it can publish a final file.
        self.positions.commit(self.topic, self.partition, end)
        self._finish_roll(f, end)
        self.file = None

    def _check_pieces(self, f: FileState, listing: dict[str, Any]) -> None:
        """Every piece is still what was written: a store that ignores If-None-Match lets a
        zombie overwrite a committed piece, and splicing a cached footer onto a new body would
        publish a corrupt file. One LIST of the file's staging folder checks size and ETag."""
        for p in f.pieces:
            info = listing.get(p.ref.key)
            if info is None:
                raise IntegrityError(
                    f"{self.where}: staged piece {p.ref.key} vanished before the roll (removed by "
                    "someone else?); nothing was published"
                )
            if info.size != p.ref.size or (p.etag and info.etag and info.etag != p.etag):
                raise IntegrityError(
                    f"{self.where}: staged piece {p.ref.key} changed after it was written (size "
                    f"{p.ref.size} → {info.size}): the store overwrote a conditional write. Nothing "
                    "was published; the bucket must honour If-None-Match (see README)."
                )

    def _check_no_overlap(self, start: int, end: int) -> None:
        """No other final file of the partition may hold any position of [start, end)."""
        starts = sorted(s for s in self._final_starts() if s != start)
        inside = [s for s in starts if start < s < end]
        before = [s for s in starts if s < start]
        clash: tuple[int, int] | None = None
        if inside:
            clash = self._final_range(inside[0])
        elif before:
            prev = self._final_range(before[-1])
            if prev[1] > start:
                clash = prev
        if clash is not None:
            raise IntegrityError(
                f"{self.where}: the file [{start}, {end}) would overlap the final file "
                f"[{clash[0]}, {clash[1]}): the group's offsets were moved backwards (reset?). "
                "Nothing was published. To re-export history use `consumer replay` to another "
                f"prefix; to continue here, move the group's offset to {max(end, clash[1])}."
            )

    def _finish_roll(self, f: FileState, end: int) -> None:
        t0 = self.clock()
        final_key = self.layout.final_key(self.topic, self.partition, f.start)
        staging = self.layout.file_staging_dir(self.topic, self.partition, f.start)
        listing = {o.key: o for o in self.store.list(staging)}
        with_rows = [p for p in f.pieces if p.layout.num_row_groups > 0]
        if not with_rows:
            # Every record of the file went to dead letters: nothing to publish.
            self.store.delete(list(listing))
            self.log.info("file had no rows: nothing published", from_position=f.start, to_position=end)
            return
        # A final file that already exists wins (an earlier owner finished this very roll, e.g.
        # while this member was frozen after its re-commit); its range is checked below like ours.
        existing = self.store.head(final_key)
        if existing is None:
            self._check_pieces(f, listing)
            self._check_no_overlap(f.start, end)
        layouts = [p.layout for p in with_rows]
        kv = {
            "kafka.topic": self.topic,
            "kafka.partition": str(self.partition),
            FROM_KEY: str(f.start),
            TO_KEY: str(end),
            "kafka.row_groups": str(len(layouts)),
        }
        trailer = merged_trailer(layouts, kv)
        segments: list[Segment] = []
        for i, p in enumerate(with_rows):
            segments.append(CopyRange(p.ref.key, 0 if i == 0 else 4, p.layout.footer_start))
        segments.append(trailer)
        expected_size = 4 + sum(p.layout.body_len for p in with_rows) + len(trailer)
        outcome = PutOutcome.EXISTS_OTHER
        if existing is None:
            try:
                outcome = self.store.compose(final_key, segments)
            except FileNotFoundError:
                # The pieces vanished mid-merge: only the owner that finished this roll deletes
                # them, and only after its final file is durable — then that file is ours too.
                if self.store.head(final_key) is None:
                    raise
        faults.point("after_final_put")
        info = self.store.head(final_key) or _missing(final_key)
        try:
            final_layout = self._read_layout(final_key, info.size)
        except ParquetMergeError as exc:
            raise IntegrityError(f"final file {final_key} does not read back: {exc}") from exc
        meta = read_key_value_metadata(final_layout.footer)
        if meta.get(FROM_KEY) != str(f.start) or meta.get(TO_KEY) != str(end):
            raise IntegrityError(
                f"final file s3://…/{final_key} exists with positions "
                f"[{meta.get(FROM_KEY)}, {meta.get(TO_KEY)}) but this roll covers [{f.start}, {end}): "
                "the prefix holds output of another run (were the group's offsets reset?). "
                "Use a new --output prefix or remove the old files."
            )
        if outcome is PutOutcome.CREATED and info.size != expected_size:
            raise IntegrityError(f"final file {final_key} is {info.size} bytes, expected {expected_size}")
        self._final_ends[f.start] = end
        if listing:
            self.store.delete(list(listing))
        faults.point("after_piece_delete")
        self.files_rolled += 1
        self.counters.rolled(info.size)
        self.log.info(
            "file rolled",
            key=final_key,
            from_position=f.start,
            to_position=end,
            rows=final_layout.num_rows,
            row_groups=final_layout.num_row_groups,
            bytes=info.size,
            already_final=outcome is not PutOutcome.CREATED,
            ms=round((self.clock() - t0) * 1000, 1),
        )

    # ------------------------------------------------------------------------------------------
    # endings
    # ------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Revoke or shutdown: make buffered rows durable and committed; keep the file open."""
        self.flush()

    def finish(self) -> None:
        """End of a bounded run: everything durable and every file final."""
        self.flush()
        self.roll()

    @property
    def finished(self) -> bool:
        """Nothing buffered and no open file: every committed position is in a final file."""
        return self.state is PartitionState.READY and not self.pending and self.file is None


# confluent_kafka.Message methods, called from C by map() over a partition's run of records.
_msg_offset = methodcaller("offset")
_msg_value = methodcaller("value")
_msg_timestamp = methodcaller("timestamp")
_msg_key = methodcaller("key")
_msg_headers = methodcaller("headers")
_second = itemgetter(1)
_strip_header = itemgetter(slice(CONFLUENT_HEADER, None))  # a framed value's Avro body (a copy)


def _identity_of(layout: PieceLayout) -> str | None:
    return read_key_value_metadata(layout.footer).get(SCHEMA_FINGERPRINT_KEY) or None


def _missing(key: str) -> Any:
    raise FileNotFoundError(f"expected object {key} is missing")
