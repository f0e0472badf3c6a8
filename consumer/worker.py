"""The partition worker: one object owns one partition's whole state machine.

    recover ─► append* ─► flush (row group durable ─► commit) ─► … ─► roll (final file) ─► …

**Flush.** The arena's rows become one Parquet piece, PUT conditionally under
``_staging/…/<file>/<from>-<to>.piece`` where ``[from, to)`` is the Kafka position range it covers.
Only after the PUT succeeded is ``to`` committed, synchronously. Dead letters of the range are made
durable before the piece, so a committed position never skips a record that is nowhere.

**Roll.** The decision "file F ends at position E" is itself made durable first (a roll marker
object), then ``E`` is committed again — a commit from a stale generation fails, so only the
partition's current owner proceeds — and then the pieces are merged into the final object under a
deterministic key, which is written conditionally, verified by reading its footer back, and only
then are the pieces deleted. Every step is idempotent, so recovery can redo any of them.

**Recover.** On assignment: committed position ``C`` + staged objects → the chain of pieces that
ends at ``C``. If a roll marker sits exactly at ``C`` the file was complete: finish that roll. Else the
chain's file continues (a restart or rebalance never closes a file early). Every other staged
object — pieces past ``C`` (durable but never committed), alternatives a zombie wrote, stale markers —
is deleted: its records will be consumed again from ``C``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from consumer import faults
from consumer.arena import Arena, DeadLetter, SchemaStats, kafka_fields
from consumer.config import Config
from consumer.decoding import BadRecord, Decoder, WriterSchema
from consumer.layout import Layout, PieceRef, RollMarker
from consumer.parquet_merge import (
    ParquetMergeError,
    PieceLayout,
    merged_trailer,
    piece_layout,
    read_key_value_metadata,
    read_layout,
)
from consumer.positions import PositionStore
from consumer.rowgroup import SCHEMA_FINGERPRINT_KEY, WriterOptions, encode_piece
from consumer.storage import CopyRange, ObjectStore, PutOutcome, Segment
from consumer.typemap import RecordConverter

EMPTY_TABLE = pa.table({})

FROM_KEY, TO_KEY = "kafka.from_position", "kafka.to_position"


class IntegrityError(RuntimeError):
    """The output prefix holds something this protocol cannot have written consistently (for
    instance a final file with another range under the same key after offsets were reset)."""


class BadRecordStop(RuntimeError):
    """``on_error=fail`` and a record could not be decoded; everything before it is durable."""


@dataclass
class StagedPiece:
    ref: PieceRef
    layout: PieceLayout
    rows: int


@dataclass
class FileState:
    """The in-progress file: where it starts, its durable pieces, when it was opened."""

    start: int
    pieces: list[StagedPiece] = field(default_factory=list)
    opened_at: float = field(default_factory=time.monotonic)
    fingerprint: str | None = None

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
    """What all workers of a process share: schema statistics and converters per writer schema."""

    stats: dict[str, SchemaStats] = field(default_factory=dict)
    converters: dict[str, RecordConverter] = field(default_factory=dict)


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
        self.options = WriterOptions(compression=config.compression)
        self.committed: int | None = None  # durable and committed: every position below is in S3
        self.next_pos: int | None = None  # position after the last record appended
        self.file: FileState | None = None
        self.arena: Arena | None = None
        self.dead_letters: list[DeadLetter] = []  # bad records before any arena exists
        self.first_append_at: float | None = None
        self.row_groups = 0
        self.files_rolled = 0
        self.broken = False  # a flush or roll failed part-way: never write again (see flush)

    # ------------------------------------------------------------------------------------------
    # recovery
    # ------------------------------------------------------------------------------------------
    def recover(self) -> int | None:
        """Rebuild state from the committed position and staged objects; the position to seek to."""
        t0 = self.clock()
        committed = self.positions.committed(self.topic, self.partition)
        faults.point("during_recovery")
        staged = [
            self.layout.parse_staging_key(self.topic, self.partition, o.key, o.size)
            for o in self.store.list(self.layout.staging_dir(self.topic, self.partition))
        ]
        pieces = [s for s in staged if isinstance(s, PieceRef)]
        markers = [s for s in staged if isinstance(s, RollMarker)]
        keep: set[str] = set()
        resumed = None
        if committed is not None:
            chain = _chain_ending_at(pieces, committed)
            if chain:
                file_start = chain[0].file_start
                marker = next((m for m in markers if m.file_start == file_start and m.end == committed), None)
                staged_chain = [self._load_piece(p) for p in chain]
                # A crash mid-merge leaves an invisible multipart upload behind: abort it.
                self.store.abort_uploads(self.layout.final_key(self.topic, self.partition, file_start))
                if marker is not None:
                    # The file was complete: finish the roll a crash interrupted.
                    self._finish_roll(FileState(file_start, staged_chain), committed)
                else:
                    self.file = FileState(file_start, staged_chain, opened_at=self.clock())
                    self.file.fingerprint = _fingerprint_of(staged_chain[-1].layout)
                    keep.update(p.key for p in chain)
                    resumed = file_start
            # Older files whose roll reached the final object but not the clean-up.
            for m in markers:
                if m.end <= committed and m.file_start != (resumed if resumed is not None else -1):
                    final = self.store.head(self.layout.final_key(self.topic, self.partition, m.file_start))
                    if final is None:
                        older = _chain_ending_at([p for p in pieces if p.file_start == m.file_start], m.end)
                        if older and older[0].file_start == m.file_start:
                            self._finish_roll(
                                FileState(m.file_start, [self._load_piece(p) for p in older]), m.end
                            )
        strays = [s.key for s in staged if s is not None and s.key not in keep]
        remaining = {o.key for o in self.store.list(self.layout.staging_dir(self.topic, self.partition))}
        strays = [k for k in strays if k in remaining]
        # Dead letters of ranges that were never committed will be written again on re-consumption.
        for o in self.store.list(self.layout.dead_letter_dir(self.topic, self.partition)):
            rng = self.layout.parse_dead_letter_range(o.key)
            if rng is not None and (committed is None or rng[1] > committed):
                strays.append(o.key)
        if strays:
            self.store.delete(strays)
        self.committed = committed
        self.next_pos = committed
        self.log.info(
            "partition recovered",
            committed=committed,
            resumed_file=resumed,
            resumed_pieces=len(self.file.pieces) if self.file else 0,
            resumed_rows=self.file.rows if self.file else 0,
            deleted_strays=len(strays),
            ms=round((self.clock() - t0) * 1000, 1),
        )
        return committed

    def _load_piece(self, ref: PieceRef) -> StagedPiece:
        size = ref.size or (self.store.head(ref.key) or _missing(ref.key)).size
        layout = self._read_layout(ref.key, size)
        return StagedPiece(ref, layout, layout.num_rows)

    def _read_layout(self, key: str, size: int) -> PieceLayout:
        return read_layout(lambda start, end: self.store.get(key, start, end), size)

    # ------------------------------------------------------------------------------------------
    # appending
    # ------------------------------------------------------------------------------------------
    def append(self, msg: Any) -> None:
        """Buffer one Kafka message; flushes (and maybe rolls) when a budget is reached."""
        offset = msg.offset()
        if self.committed is None:
            # No committed position: the partition starts where the first record is.
            self.committed = offset
        if self.next_pos is not None and offset < self.next_pos:
            return  # re-delivered below our position (seek race): already buffered or durable
        ts_type, ts = msg.timestamp()
        timestamp = ts if ts_type != 0 else None
        try:
            schema, body = self.decoder.split(msg.value())
        except BadRecord as exc:
            self._bad(DeadLetter(offset, timestamp, msg.key(), exc.reason, msg.value()))
            self.next_pos = offset + 1
            return
        if self.arena is None or self.arena.schema.fingerprint != schema.fingerprint:
            self._switch_schema(schema)
        assert self.arena is not None
        if self.first_append_at is None:
            self.first_append_at = self.clock()
        self.arena.append(body, offset, timestamp, msg.key(), msg.headers())
        if self.arena.halted is not None:
            self._halt(self.arena.halted)
        self.next_pos = offset + 1
        if (
            self.arena.rows >= self.config.row_group_rows
            or self.arena.predicted_encoded_bytes >= self.config.row_group_bytes
        ):
            self.flush()

    def _bad(self, dl: DeadLetter) -> None:
        if self.config.on_error == "fail":
            self._halt(dl)
        self.log.warning("bad record to dead letters", offset=dl.offset, reason=dl.reason)
        (self.arena.dead_letters if self.arena else self.dead_letters).append(dl)

    def _halt(self, dl: DeadLetter) -> None:
        """on_error=fail: make everything before the bad record durable, then stop loudly."""
        self.next_pos = dl.offset
        self.flush(upto=dl.offset)
        raise BadRecordStop(
            f"{self.topic}[{self.partition}] offset {dl.offset}: {dl.reason}. Everything before it "
            "is durable and committed; fix the producer or run with --on-error dead-letter."
        )

    def _switch_schema(self, schema: WriterSchema) -> None:
        """A new writer schema: flush what the old one buffered and roll, since a Parquet file has
        one schema."""
        if self.arena is not None:
            self.flush()
        if self.file is not None and self.file.fingerprint not in (None, schema.fingerprint):
            self.log.info("writer schema changed: rolling file", schema_id=schema.schema_id)
            self.roll()
        conv = self.shared.converters.get(schema.fingerprint)
        if conv is None:
            conv = RecordConverter(schema.avro, kafka_fields(self.config.kafka_columns))
            self.shared.converters[schema.fingerprint] = conv
        stats = self.shared.stats.setdefault(schema.fingerprint, SchemaStats.from_schema(schema.avro))
        self.arena = Arena(
            schema,
            conv,
            stats,
            topic=self.topic,
            partition=self.partition,
            kafka_columns=self.config.kafka_columns,
            on_error=self.config.on_error,
            calibrate=lambda table: len(encode_piece(table, self.options, "")),
        )
        if self.dead_letters:
            self.arena.dead_letters.extend(self.dead_letters)
            self.dead_letters = []

    # ------------------------------------------------------------------------------------------
    # flushing: one durable row group, then the commit
    # ------------------------------------------------------------------------------------------
    @property
    def buffered_bytes(self) -> int:
        return self.arena.nbytes if self.arena else 0

    @property
    def pending(self) -> bool:
        """True when positions past the committed one are buffered (rows or dead letters)."""
        return self.next_pos is not None and self.committed is not None and self.next_pos > self.committed

    def flush_due(self, now: float) -> bool:
        return (
            self.pending
            and self.first_append_at is not None
            and now - self.first_append_at >= self.config.row_group_max_age
        )

    def roll_due(self, now: float) -> bool:
        return (
            self.file is not None
            and bool(self.file.pieces)
            and self.config.file_max_age is not None
            and now - self.file.opened_at >= self.config.file_max_age
        )

    def flush(self, upto: int | None = None) -> None:
        """Make every buffered position durable as one piece, then commit its end position.

        If any step fails part-way (S3 gave up, the commit was refused) the drained rows exist
        only as an uncommitted piece or not at all, so this worker is *broken*: it must never
        write again (a later flush would commit an empty range over the lost rows). The partition
        comes back only through recovery from durable state, by whoever owns it next.
        """
        if self.broken:
            return
        try:
            self._flush(upto)
        except BaseException:
            self.broken = True
            raise

    def _flush(self, upto: int | None) -> None:
        if not self.pending:
            return
        assert self.committed is not None and self.next_pos is not None
        from_pos, to_pos = self.committed, (upto if upto is not None else self.next_pos)
        if self.arena is None and not self.dead_letters:
            return
        t0 = self.clock()
        if self.arena is not None:
            table, dead, arrow_bytes = self.arena.drain()
            fingerprint: str | None = self.arena.schema.fingerprint
        else:
            # Only bad records so far: a zero-row piece keeps the position chain unbroken.
            table, dead, arrow_bytes, fingerprint = EMPTY_TABLE, self.dead_letters, 0, None
            self.dead_letters = []
        if self.file is None:
            self.file = FileState(from_pos, opened_at=self.clock())
        if dead:
            self._put_dead_letters(dead, from_pos, to_pos)
            faults.point("after_dead_letter_put")
        data = encode_piece(table, self.options, fingerprint or "")
        encoded_at = self.clock()
        key = self.layout.piece_key(self.topic, self.partition, self.file.start, from_pos, to_pos)
        faults.point("before_piece_put")
        outcome = self.store.put_if_absent(key, data)
        if outcome is PutOutcome.EXISTS_OTHER:
            # Same range, same records (Kafka positions are immutable), other bytes: written by an
            # earlier owner with other options. Its rows are ours; use it as it is.
            self.log.warning("piece already existed with other bytes; keeping it", key=key)
            layout = self._read_layout(key, (self.store.head(key) or _missing(key)).size)
        else:
            layout = piece_layout(data)
        faults.point("after_piece_put")
        self.positions.commit(self.topic, self.partition, to_pos)
        faults.point("after_commit")
        self.committed = to_pos
        self.first_append_at = None
        if self.arena is not None:
            self.arena.stats.observe_encoded(arrow_bytes, len(data))
        self.file.pieces.append(
            StagedPiece(PieceRef(self.file.start, from_pos, to_pos, key, len(data)), layout, table.num_rows)
        )
        if fingerprint is not None:
            self.file.fingerprint = fingerprint
        self.row_groups += 1
        self.log.info(
            "row group durable",
            from_position=from_pos,
            to_position=to_pos,
            rows=table.num_rows,
            bytes=len(data),
            dead_letters=len(dead),
            encode_ms=round((encoded_at - t0) * 1000, 1),
            put_commit_ms=round((self.clock() - encoded_at) * 1000, 1),
            file_rows=self.file.rows,
            file_bytes=self.file.size,
        )
        if self._file_full():
            self.roll()

    def _put_dead_letters(self, dead: list[DeadLetter], from_pos: int, to_pos: int) -> None:
        import base64

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

    def _file_full(self) -> bool:
        f = self.file
        if f is None or not f.pieces:
            return False
        if self.config.file_rows is not None and f.rows >= self.config.file_rows:
            return True
        # Roll when the next row group would overshoot the byte target by more than it undershoots:
        # files land within ± half a row group of the target.
        last_body = f.pieces[-1].layout.body_len
        return f.size + last_body / 2 >= self.config.file_bytes

    # ------------------------------------------------------------------------------------------
    # rolling: pieces → one final file
    # ------------------------------------------------------------------------------------------
    def roll(self) -> None:
        """Finish the in-progress file at the committed position (durable decision first)."""
        if self.broken:
            return
        try:
            self._roll()
        except BaseException:
            self.broken = True
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

    def _finish_roll(self, f: FileState, end: int) -> None:
        t0 = self.clock()
        final_key = self.layout.final_key(self.topic, self.partition, f.start)
        staging = self.layout.file_staging_dir(self.topic, self.partition, f.start)
        with_rows = [p for p in f.pieces if p.layout.num_row_groups > 0]
        if not with_rows:
            # Every record of the file went to dead letters: nothing to publish.
            self.store.delete([o.key for o in self.store.list(staging)])
            self.log.info("file had no rows: nothing published", from_position=f.start, to_position=end)
            return
        layouts = [p.layout for p in with_rows]
        kv = {
            "kafka.topic": self.topic,
            "kafka.partition": str(self.partition),
            FROM_KEY: str(f.start),
            TO_KEY: str(end),
            "kafka.row_groups": str(len(layouts)),
        }
        if self.arena is not None and self.arena.schema.fingerprint == f.fingerprint:
            kv["avro.schema"] = json.dumps(self.arena.schema.avro, separators=(",", ":"))
        trailer = merged_trailer(layouts, kv)
        segments: list[Segment] = []
        for i, p in enumerate(with_rows):
            segments.append(CopyRange(p.ref.key, 0 if i == 0 else 4, p.layout.footer_start))
        segments.append(trailer)
        expected_size = 4 + sum(p.layout.body_len for p in with_rows) + len(trailer)
        # A final file that already exists wins (an earlier owner finished this very roll); its
        # range is checked below like our own.
        existing = self.store.head(final_key)
        outcome = self.store.compose(final_key, segments) if existing is None else PutOutcome.EXISTS_OTHER
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
        leftovers = [o.key for o in self.store.list(staging)]
        if leftovers:
            self.store.delete(leftovers)
        faults.point("after_piece_delete")
        self.files_rolled += 1
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


def _fingerprint_of(layout: PieceLayout) -> str | None:
    return read_key_value_metadata(layout.footer).get(SCHEMA_FINGERPRINT_KEY)


def _missing(key: str) -> Any:
    raise FileNotFoundError(f"expected object {key} is missing")


def _chain_ending_at(pieces: list[PieceRef], end: int) -> list[PieceRef] | None:
    """Pieces of one file, contiguous from the file's first position up to ``end``, in order.

    Several chains can exist when a zombie staged alternative ranges; any of them holds exactly
    the records at positions ``[file start, end)`` (Kafka positions are immutable), so the one with
    the fewest pieces is chosen, deterministically. When chains of several files reach ``end`` the
    newest file wins: a file starts only after the previous one's roll, so older ones are leftovers.
    Breadth-first over positions (no recursion: a file may hold thousands of pieces).
    """
    by_file: dict[int, dict[int, list[PieceRef]]] = {}
    for p in pieces:
        if p.from_pos < p.to_pos:
            by_file.setdefault(p.file_start, {}).setdefault(p.to_pos, []).append(p)
    for file_start in sorted(by_file, reverse=True):
        by_to = by_file[file_start]
        if end not in by_to or end <= file_start:
            continue
        # BFS backwards from `end`: the first time `file_start` is reached uses the fewest pieces.
        step: dict[int, PieceRef] = {}
        frontier = [end]
        seen = {end}
        while frontier and file_start not in seen:
            nxt: list[int] = []
            for pos in frontier:
                for piece in sorted(by_to.get(pos, []), key=lambda r: r.from_pos):
                    prev = piece.from_pos
                    if prev < file_start or prev in seen:
                        continue
                    seen.add(prev)
                    step[prev] = piece
                    nxt.append(prev)
            frontier = sorted(nxt)
        if file_start in seen:
            chain = []
            pos = file_start
            while pos != end:
                piece = step[pos]
                chain.append(piece)
                pos = piece.to_pos
            return chain
    return None
