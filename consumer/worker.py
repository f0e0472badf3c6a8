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

**Identity.** A Parquet file has one schema, so a file's pieces must agree on the file's Avro
schema (the writer schema, or with schema evolution the reader schema that interleaved writer
schemas are resolved to — see :mod:`consumer.evolution`), the Arrow schema (Kafka columns, type
mapping of this pyarrow) and the writer options. That identity rides in every piece's metadata
with the file's birth time and the Avro schema, so whoever finishes a roll — this process or a
restarted one — writes the same footer, and a change of any of them finishes the old file first.

**Recover.** On assignment, :func:`consumer.recovery.plan_recovery` decides from the committed
position and what S3 holds (see there); the worker carries the plan out.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from operator import methodcaller
from typing import Any, TypeVar
from urllib.parse import quote, unquote

import pyarrow as pa

from consumer import faults
from consumer.arena import Arena, DeadLetter, SchemaStats, kafka_fields
from consumer.bucketing import Template, parse_template
from consumer.config import Config, split_output
from consumer.decoding import (
    CONFLUENT_HEADER,
    BadRecord,
    Decoder,
    RegistryUnavailable,
    WriterSchema,
    framing_runs,
)
from consumer.errors import BadRecordStop, IntegrityError, RegistryStop, UsageError
from consumer.evolution import VersionedSchema, choose_reader, subject_for
from consumer.gather import gather
from consumer.kafka_names import GroupView
from consumer.layout import AWAY, MOVED_IN, UNNOTED, Layout, PieceRef, RollMarker, staged_of
from consumer.metrics import PartitionCounters
from consumer.parquet_merge import (
    ParquetMergeError,
    PieceLayout,
    merged_trailer,
    piece_layout,
    read_key_value_metadata,
    read_layout,
)
from consumer.positions import (
    ROLLED,
    STAGED,
    UNSTAGED,
    PartitionFenced,
    PositionError,
    PositionStore,
    commit_note,
    parse_note,
    same_output,
)
from consumer.recovery import (
    ONE_WRITER,
    REPLAY_WRITER,
    BucketedPlan,
    FinishRoll,
    Ranges,
    RecoveryPlan,
    chain_ending_at,
    cut_at,
    dead_letters_from,
    files_gone,
    held_in_both,
    layout_mismatch,
    left_for,
    nothing_ends_at,
    one_flush_only,
    other_writer,
    plan_bucketed_recovery,
    plan_recovery,
    still_writing,
)
from consumer.rowgroup import SCHEMA_FINGERPRINT_KEY, WriterOptions, encode_piece
from consumer.storage import (
    CLIENT_PART_BYTES,
    CopyRange,
    ObjectStore,
    PutOutcome,
    Segment,
    StorageError,
    TransientStorageError,
)
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
GROUP_KEY = "kafka.group_id"  # the consumer group that wrote the piece (absent: a replay)
#: The id (KIP-516) of the topic the rows were read from: a topic deleted and created again under
#: its name gets a new one, and its offsets start again at 0 (see _refuse_another_incarnation).
TOPIC_ID_KEY = "kafka.topic_id"
REPLAY_KEY = "consumer.replay"  # "true" in what a replay wrote
#: A dead-letter line names its topic, partition, topic id and writer (its ``group_id``; null: a
#: replay) first: they fit in this many bytes, read from its object's start.
_DEAD_LETTER_HEAD = 2048
_DEAD_LETTER_TOPIC_ID = re.compile(rb'"topic_id": "([^"]+)"')
_DEAD_LETTER_GROUP = re.compile(rb'"group_id": ("(?:[^"\\]|\\.)*"|null)')
READER_ID_KEY = "consumer.reader_schema_id"  # registry id of the file's (reader) schema
_REGISTRY_BACKOFF = (1.0, 30.0)  # first and longest pause between retries of an unseen schema id
BUCKET_END_KEY = "consumer.bucket_end"  # --partition-by: the bucket's end (epoch ms), for the grace rule
BUCKET_LATE_KEY = "consumer.bucket_late"  # "1": the file was opened after its bucket's grace had passed
#: --partition-by: every file the piece's flush wrote into, as {bucket: file start} (JSON). Recovery
#: checks that each still reaches the committed position (see _refuse_a_bucket_file_gone).
FLUSH_FILES_KEY = "consumer.flush_files"

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
    etag: str | None = None  # as S3 reported it when written (None: unknown); checked at roll time


@dataclass
class FileState:
    """The in-progress file: where it starts, its durable pieces, its identity and birth time."""

    start: int
    pieces: list[StagedPiece] = field(default_factory=list)
    opened_at: float = field(default_factory=time.monotonic)  # on the worker's clock
    born_wall: float = field(default_factory=time.time)  # epoch seconds, written into pieces
    identity: str | None = None
    reader_id: int | None = None  # registry id of the file's schema (schema evolution), if known
    bucket: str = ""  # --partition-by: the time bucket's path; "" in the plain layout
    bucket_end: int | None = None  # the bucket's end (epoch ms): it rolls when the watermark passes
    late: bool = False  # opened for stragglers after the bucket's grace had passed (see _bucket_passed)

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
    #: Held while a flush decodes and encodes (consumer.side_by_side runs flushes in threads): a
    #: schema's native decoder, converter and statistics are shared by every partition and serve
    #: one caller at a time. Uncontended in the polling loop, where flushes come one by one.
    encoding: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    #: The consumer group this process commits to, named in every piece it writes (None: a
    #: replay), so that a second writer of the prefix can be named when the two collide.
    group_id: str | None = None
    #: The coordinator's view of another consumer group (None: it did not answer), asked before
    #: recovery adopts a position from what that group wrote; unset (None) for a replay and on the
    #: in-memory doubles unless a test sets it. Set by the runner, which owns the Kafka clients.
    describe_group: Callable[[str], GroupView | None] | None = None
    #: The topic's id as the cluster names it now (KIP-516; None: unknown): ``(topic, fresh)``,
    #: asked at every recovery (a recent answer will do) and before every flush (``fresh``: asked
    #: now), and written into every piece. Set by the runner against a real cluster; on the
    #: in-memory doubles only when a test sets it (MemoryBroker.topic_id).
    topic_id: Callable[[str, bool], str | None] | None = None
    #: The output (``s3://bucket/prefix``) a group's commits name in their note, so that recovery
    #: tells a position whose staged rows were deleted from one committed for another output.
    output: str = ""
    #: A store of another bucket (the same endpoint and credentials; one per bucket), to read the
    #: output a group moved to there: a run going back, and ``consumer finish``, cut what that
    #: output holds out of this one's open files. None: only this bucket's outputs are read. Set by
    #: the entry point; the in-memory doubles only when a test sets it.
    store_of: Callable[[str], ObjectStore] | None = None
    #: Listings of those outputs, shared by one rebalance's recoveries (:class:`OtherOutputListings`).
    other_outputs: OtherOutputListings = field(default_factory=lambda: OtherOutputListings(),
                                               repr=False, compare=False)
    #: ``consumer finish``: no run of the group reads these partitions into this output again. Its
    #: positions come from what is staged, not from the group, so recovery neither keeps nor reads
    #: where the group moved to this output (``_moved/``, :meth:`PartitionWorker._moved_in`), and
    #: its stops are explained by the finish (consumer.finish).
    finishing: bool = False


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
        self._group_position: int | None = None  # during recovery: the group's, as last read or written
        self.next_pos: int | None = None  # position after the last record appended
        #: Kafka's view of the partition, noted by the runner's loop thread for the metrics (a
        #: scrape never calls the Kafka client; the protocol never reads these): the log end
        #: offset from librdkafka's cached watermarks, and the position read past while nothing was
        #: buffered — no record below it is left to export, and it runs ahead of ``committed``
        #: over what read_committed never delivers (transaction markers, aborted records).
        self.log_end: int | None = None
        self.read_past: int | None = None
        # The open files, by bucket path: at most one in the plain layout (bucket ""); under
        # --partition-by one per bucket that has rows since its last roll. Every flush writes one
        # piece into every open file, so each file's chain ends at the committed position.
        self.files: dict[str, FileState] = {}
        self.bucketing: Template | None = (
            parse_template(config.partition_by, config.timezone) if config.partition_by else None
        )
        self.watermark: int | None = None  # the newest bucket time seen (epoch ms), for --bucket-grace
        self.arena: Arena | None = None
        self.identity: str | None = None  # of the arena's rows
        self.dead_letters: list[DeadLetter] = []  # bad records before any arena exists
        self.first_append_at: float | None = None
        self.row_groups = 0
        self.files_rolled = 0
        self.counters = shared.counters.setdefault((topic, partition), PartitionCounters())
        # Final files read or written this assignment, both bounded (_remember): the end of a
        # (bucket, start), and per bucket the newest start known to exist, from which a roll's
        # overlap check lists instead of listing the partition's whole history.
        self._final_ends: dict[tuple[str, int], int] = {}
        self._final_writers: dict[tuple[str, int], str] = {}  # the group a final file names
        self._final_topic_ids: dict[tuple[str, int], str] = {}  # the topic id a final file names
        #: the topic's id when this assignment recovered (None: unknown), named in every piece
        self.topic_id: str | None = None
        #: staged pieces read by this recovery, by key (_load_piece); emptied when it ends
        self._read_in_recovery: dict[str, StagedPiece] = {}
        self._newest_final: dict[str, int] = {}
        self._recovery_listing: dict[str, str | None] | None = None  # staging as recovery listed it
        self._named_newest: list[str] = []  # keys under Layout.newest_final_dir (plain layout)
        self._named_start: int | None = None  # the newest start named there at recovery

        # Records held back while the registry is unreachable for an unseen schema id: kept in
        # order, uncommitted, and appended again by retry_waiting (see the runner's pause).
        self.waiting: list[Any] = []
        self.waiting_bytes = 0
        self.registry_down_since: float | None = None
        self.retry_at: float | None = None
        self._retry_delay = _REGISTRY_BACKOFF[0]
        self.resolving = decoder.framing == "confluent" and config.schema_evolution == "resolve"
        self._stays: set[str] = set()  # writer schemas read as the current arena's schema
        self._encode_s = 0.0  # encode time of the flush in progress (for its log line)

    @property
    def file(self) -> FileState | None:
        """The open file of the plain layout (under --partition-by: the oldest open bucket file)."""
        if not self.files:
            return None
        return self.files[min(self.files, key=lambda b: (self.files[b].bucket_end or 0, b))]

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
        self.topic_id = self.shared.topic_id(self.topic, False) if self.shared.topic_id else None
        committed = self.positions.committed(self.topic, self.partition)
        self._group_position = committed
        try:
            return self._recover_from(t0, committed)
        except (IntegrityError, FileNotFoundError) as stop:
            # What S3 holds may disagree with a position read before the member lost the
            # partition: the new owner went on meanwhile (wrote past it, or rolled and deleted the
            # pieces listed here). Only a member that still owns the partition stops.
            with contextlib.suppress(PositionError):  # Kafka not answering: the stop stands
                self._confirm_ownership()
            if isinstance(stop, FileNotFoundError) and self._staging_as_listed():
                raise TransientStorageError(
                    f"{self.where}: output that recovery listed a moment ago is gone ({stop}), while "
                    "every staged object it listed is still there: a lifecycle rule expiring old "
                    "output (or a clean-up) deleted it meanwhile. The next run recovers from what "
                    "S3 holds then; a supervisor (--processes, Kubernetes) restarts it."
                ) from stop
            if isinstance(stop, FileNotFoundError):
                raise IntegrityError(
                    f"{self.where}: an object recovery listed a moment ago is gone ({stop}), and this "
                    "member still owns the partition: something else deletes under the prefix (a "
                    "second consumer group or replay writing to it, a lifecycle rule on _staging/). "
                    "Stop it; the next run recovers from what S3 holds then."
                ) from stop
            raise stop

    def _staging_as_listed(self) -> bool:
        """Whether the partition's staging folder still holds exactly what recovery listed (the
        same keys and ETags): then an object that vanished during recovery was output (a final
        file, a dead letter), not a staged one."""
        if self._recovery_listing is None:
            return False
        listing = self.store.list(self.layout.staging_dir(self.topic, self.partition))
        return {o.key: o.etag for o in listing} == self._recovery_listing

    def _recover_from(self, t0: float, committed: int | None) -> int | None:
        staged_here = committed is not None and self._committed_after_staging()
        moved = self._moved_in(committed)
        faults.point("during_recovery")
        self._recovery_listing = None
        listing = self.store.list(self.layout.staging_dir(self.topic, self.partition))
        etags = {o.key: o.etag for o in listing}
        self._recovery_listing = dict(etags)
        staged = [self.layout.parse_staging_key(self.topic, self.partition, o.key, o.size) for o in listing]
        pieces = [s for s in staged if isinstance(s, PieceRef)]
        markers = [s for s in staged if isinstance(s, RollMarker)]
        problem = layout_mismatch(
            [p.bucket for p in pieces] + [m.bucket for m in markers],
            None if self.bucketing is None else self.bucketing.names,
        )
        if problem is not None:
            raise UsageError(f"{self.where}: {problem}")
        if moved is not None and moved.left_at is not None:
            left_for(self.where, moved.left_at, moved.left_for)
        # What a run back checks where the group left: every staged object here, as the group's
        # own recovery would have seen them. Leaving out those the other output holds the rows of
        # (below) made the check stop on rows staged in both outputs, with nothing deleted
        # (found by tests/unit/test_group_history.py).
        as_left = (pieces, markers)
        elsewhere, listed_dead = self._held_where_the_group_moved(committed, pieces, markers)
        if elsewhere:
            pieces = [p for p in pieces if p.key not in elsewhere]
            markers = [m for m in markers if m.key not in elsewhere]
        if self.bucketing is not None:
            return self._recover_bucketed(t0, committed, pieces, markers,
                                          self._dead_letters() if listed_dead is None else listed_dead, etags,
                                          staged_here, elsewhere, moved, as_left)
        finals = self._recovery_final_starts({p.file_start for p in pieces} | {m.file_start for m in markers})
        last_end = self._final_range(self._note_final("", max(finals)))[1] if finals else None
        writer = self._final_writers.get(("", max(finals))) if finals else None
        topic_ids = [self._final_topic_ids.get(("", max(finals)))] if finals else []
        gone = self._named_final_gone(finals, last_end)
        if gone is not None:
            last_end, writer = gone.end, gone.writer
            topic_ids.append(gone.topic_id)
        as_left_dead = self._dead_letters(since=last_end, listed=listed_dead)
        dead = [d for d in as_left_dead if d[0] not in elsewhere]
        letters = self._newest_dead_letters(dead, max([last_end or 0, *(p.to_pos for p in pieces)]),
                                            committed)
        if letters is not None:
            topic_ids.append(letters.topic_id)
        if moved is not None and committed is None:
            topic_ids.append(moved.topic_id)
        self._keep_a_move_once_checked(moved, lambda at: plan_recovery(
            at, *as_left, as_left_dead, self._recovery_final_starts(
                {p.file_start for p in as_left[0]} | {m.file_start for m in as_left[1]}) if elsewhere
            else finals, last_end, where=self.where, staged_here=True,
            gone_final_start=gone.start if gone is not None else None))
        plan = plan_recovery(
            committed, pieces, markers, dead, finals, last_end, where=self.where,
            last_final_writer=writer,
            group=self.shared.group_id, staged_here=staged_here,
            dead_letter_records=self._dead_letter_lines(
                committed, any(p.file_start not in finals for p in pieces), last_end, dead,
                staged_gone=staged_here and nothing_ends_at(committed, pieces, last_end)),
            gone_final_start=gone.start if gone is not None else None,
            moved_in=moved.position if moved is not None else None,
            went_on=moved.went_on if moved is not None else None,
            moved_to=moved.moved_to if moved is not None else None,
        )
        if elsewhere or (moved is not None and moved.stale):
            plan = replace(plan, delete=(*plan.delete, *elsewhere, *(moved.stale if moved else ())))
        doomed = set(plan.delete)
        adopted_staged = self._begin_plan(
            plan,
            [p for p in pieces if p.key in doomed and p.file_start not in finals
             and (plan.position is None or p.to_pos > plan.position)],
            [d for d in dead if d[0] in doomed],
            sources=pieces,
            final_writer=letters.writer if letters is not None and letters.end == plan.commit
            else writer if last_end is not None and last_end == plan.commit else None,
            final_topic_ids=topic_ids,
        )
        self._finish_planned(plan.finish, etags)
        self._note_a_position_without_one(committed, plan.position, bool(plan.resume))
        self._note_rolled_after_recovery(committed, plan, staged_here or adopted_staged)
        resumed = None
        if plan.resume:
            resumed = self._resume(plan.resume, etags).start
        if plan.delete:
            self._confirm_ownership()
            self.store.delete(list(plan.delete))
        return self._ready_at(
            plan.position,
            t0,
            committed=committed,
            resumed_file=resumed,
            resumed_pieces=len(self.file.pieces) if self.file else 0,
            resumed_rows=self.file.rows if self.file else 0,
            finished_rolls=len(plan.finish),
            deleted_strays=len(plan.delete),
        )

    def _held_where_the_group_moved(
        self, committed: int | None, pieces: list[PieceRef], markers: list[RollMarker],
    ) -> tuple[list[str], list[tuple[str, int, int]] | None]:
        """The staged objects and dead-letter objects of this output that the output the group
        last committed to holds the records of, to be left out and deleted: a group that moved to
        another ``--output`` and back. What this output staged past its last commit before the
        move (a crash between a piece's upload and its commit), or a whole file the group wrote
        again there, would otherwise be finished here as a reset forwards finishes what is staged,
        and be in both outputs (found by tests/unit/test_finish.py's property). A flush of bad
        records only that made its dead letters durable here and then failed, uncommitted, left
        an object across the position the group committed there: taken for a reset backwards
        into it, the run stopped (status 5; found by tests/unit/test_group_history.py). Cut as
        ``consumer finish`` cuts (consumer.recovery.cut_at), below the committed position; what
        lies past it goes anyway. The other output is read (one listing of its topic folder,
        staging and dead letters, a footer of each final file that starts low enough; and one
        listing of this partition's dead letters here) in this bucket or, through
        ``shared.store_of``, in another; when it cannot be, nothing is left out (and a failed read
        says that both outputs may then hold those rows). An error that may pass (S3 unavailable,
        retries exhausted) stops the recovery instead, with nothing changed, rather than keep rows
        the other output may hold as well. Also returned: this partition's dead letters here when
        they were listed (every one; None when not), which the recovery uses instead of a second
        listing."""
        note = parse_note(self.positions.note(self.topic, self.partition))
        if committed is None or note is None or same_output(note.output, self.shared.output):
            return [], None
        other = self._other_output(note.output)
        if other is None:
            return [], None
        letters = self._dead_letters()
        if not pieces and not letters:
            return [], letters
        end = min(committed, max([p.to_pos for p in pieces] + [to for _k, _f, to in letters]))
        try:
            store, layout = other[0](), other[1]
            listing = self.shared.other_outputs.get(
                note.output, self.topic, lambda: OutputListing.of(store, layout, self.topic))
            held = held_ranges(store, layout, self.topic, {self.partition: end}, listing)[self.partition]
        except StorageError as exc:
            if isinstance(exc, TransientStorageError):
                raise TransientStorageError(
                    f"{self.where}: the group comes back here from {note.output}, which could not be "
                    f"read ({exc}): what it holds of the rows staged here is not known yet. Nothing "
                    "was changed; the next run reads it first."
                ) from exc
            self.log.warning(
                "the output the group moved to could not be read: every staged row here is kept, so "
                "rows the group wrote there as well may be in both outputs; give this consumer "
                "s3:ListBucket and s3:GetObject there to have them left out", moved_to=note.output,
                error=f"{type(exc).__name__}: {exc}"[:300],
            )
            return [], letters
        cut = cut_at([*pieces, *markers], held, end, [(f, t) for _k, f, t in letters])
        warn_held_in_both(self.log, pieces, held, cut, moved_to=note.output)
        if cut >= end:
            return [], letters
        left = [r.key for r in pieces if r.from_pos >= cut] + [m.key for m in markers if m.end > cut]
        dead = [key for key, frm, _to in letters if frm >= cut]
        self.log.warning(
            "staged rows here are in the output the group moved to as well: left out of this "
            "output's files and deleted (and the dead letters of those records), so that each is in "
            "one of the two", moved_to=note.output, from_position=cut, to_position=end,
            objects=len(left), dead_letter_objects=len(dead),
        )
        return left + dead, letters

    def _moved_in(self, committed: int | None) -> MovedIn | None:
        """Where the group went on from in this output without what it had read below being here
        (``_moved/``): kept first when the committed position's note names another output
        (``--output`` changed: the records below are in that one, which is told it was left,
        :meth:`_mark_the_output_left`). A position below the newest move is a reset backwards
        (stop, status 5), and with none the newest of either kind is adopted when S3 holds
        nothing here past it (:func:`consumer.recovery.below_a_move`); with none and the group
        gone to another output since, the run stops (:func:`consumer.recovery.left_for`).
        Before, a group whose offsets were moved backwards below a move (or expired after one)
        exported the records once more, unseen. One LIST a recovery, and two PUTs a move (made by
        :meth:`_keep_a_move_once_checked`, once a run back's check passed); the newest one is read
        (one GET) only when there is no committed position. With one, what it outdates is
        deleted with what the plan deletes: positions gone on from without a note above it (an
        operator moved the offset back below them on purpose), and moves away (the group writes
        here again)."""
        if not self.shared.group_id or self.shared.finishing:
            return None
        note = parse_note(self.positions.note(self.topic, self.partition))
        back = committed is not None and note is not None and not same_output(note.output, self.shared.output)
        keep = (committed, note.output, note.held) if back and committed is not None and note is not None \
            else None
        listed = [(m, o.key) for o in self.store.list(self.layout.moved_dir(self.topic, self.partition))
                  if (m := self.layout.parse_moved(o.key)) is not None]
        if not listed:
            return MovedIn(None, None, keep=keep) if keep is not None else None
        here = [(at, kind, key) for (at, kind), key in listed if kind != AWAY]
        newest = max(((at, kind != AWAY, key) for (at, kind), key in listed), default=None)
        said: dict[str, Any] = {}
        if committed is None and newest is not None:
            with contextlib.suppress(FileNotFoundError, ValueError, AttributeError):
                said = dict(json.loads(self.store.get(newest[2])))
        topic_id = said.get("topic_id")
        left = committed is None and newest is not None and not newest[1]
        away = max(((at, key) for (at, kind), key in listed
                    if kind == AWAY and back and at <= (committed or 0)), default=None)
        return MovedIn(
            position=max((at for at, kind, _ in here if kind == MOVED_IN), default=None),
            went_on=max((at for at, _, _ in here), default=None),
            topic_id=topic_id if isinstance(topic_id, str) else None,
            stale=tuple(key for (at, kind), key in listed if committed is not None
                        and (kind == AWAY or (kind == UNNOTED and at > committed))),
            left_at=newest[0] if left and newest is not None else None,
            left_for=str(said.get("to")) if left and said.get("to") else None,
            left_staged_at=away[0] if away is not None and self._still_staged_where_left(away[1]) else None,
            keep=keep,
        )

    def _still_staged_where_left(self, away: str) -> bool:
        """Whether the ``.away`` object at ``away`` says rows below where the group left are
        staged here: STAGED, or FINISHING with a bucket file it names not final yet. A run back
        that finishes those files marks it FINISHING first (:meth:`_mark_finishing_where_left`)."""
        body = away_body(self.store, away)
        held, files = body.get("held"), body.get("files")
        if held == FINISHING and isinstance(files, list) and files:
            return not all(bucket_file_final(self.store, self.layout, self.topic, self.partition, f)
                           for f in files)
        return left_staged(held if isinstance(held, str) else None)

    def _mark_finishing_where_left(self, moved: MovedIn | None, plan: BucketedPlan) -> None:
        """A run back to an output the group left with bucket files staged here finishes them as
        a reset forwards (the group's position is past them): say so in the ``.away`` object
        first (FINISHING, naming the files), as ``consumer finish`` does. Cut short after the
        rolls (fenced at its next commit, a crash), the next recovery's check of where the group
        left, with STAGED, found every file rolled at M and none open, and stopped (status 5)
        saying they were deleted; so did a finish (found by tests/unit/test_group_history.py).
        Only when the plan resumes no file: with one resumed, STAGED stays true."""
        if moved is None or moved.left_staged_at is None or any(b.resume for b in plan.buckets.values()):
            return
        files = sorted([bucket, fin.file_start] for bucket, b in plan.buckets.items() for fin in b.finish)
        if files:
            key = self.layout.moved_key(self.topic, self.partition, moved.left_staged_at, AWAY)
            mark_held(self.store, key, FINISHING, files=files)

    def _keep_a_move_once_checked(self, moved: MovedIn | None, check: Callable[[int], object]) -> None:
        """Keep the move the committed position's note says (:meth:`_moved_in`), in both outputs,
        once a run back to an output the group left with the rows below M staged here (the newest
        ``.away``) is checked: ``check`` plans recovery at M as the group's own recovery would
        have with that note (its plan dropped), so that staged objects deleted since (a clean-up)
        stop the run (status 5, nothing changed) instead of their rows being lost without a word
        (found by tests/unit/test_group_history.py once it moved --output)."""
        if moved is None:
            return
        if moved.left_staged_at is not None:
            self._check_where_left(moved.left_staged_at, check)
        if moved.keep is not None:
            position, came_from, held = moved.keep
            self._keep_a_move(position, came_from)
            self._mark_the_output_left(came_from, position, held)

    def _check_where_left(self, at: int, check: Callable[[int], object]) -> None:
        try:
            check(at)
        except IntegrityError as stop:
            key = self.layout.moved_key(self.topic, self.partition, at, AWAY)
            raise IntegrityError(
                f"{stop} -- The group comes back to this output, which it left at {at} with the rows "
                f"below staged here ({key}): moving its offset back would not bring them here. "
                "If `consumer finish` of this output ran and was cut short, run it again first. Else "
                "restore the deleted objects (a versioned bucket keeps them) and start again. To go "
                "on without them, export the records named above with `consumer replay` to another "
                f"prefix first, then delete {key} and start again."
            ) from stop

    def _keep_a_move(self, position: int, came_from: str | None) -> None:
        """``_moved/<position>``: the group went on from ``position`` here, the records below it
        being in ``came_from`` (None: unknown, a position with no note: ``.unnoted``)."""
        body = {"from": came_from, "group": self.shared.group_id, "topic_id": self.topic_id}
        key = self.layout.moved_key(self.topic, self.partition, position,
                                    MOVED_IN if came_from is not None else UNNOTED)
        self.store.put_if_absent(key, json.dumps(body).encode())

    def _other_output(self, output: str) -> tuple[Callable[[], ObjectStore], Layout] | None:
        """Another output of the group, as this consumer reaches it: its store (this one in the
        same bucket; through ``shared.store_of`` in another, made when called, so that the
        caller's handling of S3 errors covers it) and its layout. None when it cannot be reached:
        named by its hash, or in another bucket with no ``store_of``."""
        try:
            bucket, prefix = split_output(output)
            here, _ = split_output(self.shared.output)
        except ValueError:  # named by its hash
            return None
        store_of = self.shared.store_of
        if bucket == here:
            return (lambda: self.store), Layout(prefix)
        if store_of is None:
            return None
        return (lambda: store_of(bucket)), Layout(prefix)

    def _mark_the_output_left(self, output: str, position: int, held: str) -> None:
        """``_moved/<position>.away`` in the output the group moved from: with the group's offsets
        expired, a run of that output would adopt the end of its own files and export what this
        one holds once more; it stops instead (:func:`consumer.recovery.left_for`). It keeps what
        the group's note said held the rows below ``position`` there (``held``), so that
        ``consumer finish`` of that output checks its open files as the group's recovery would
        have, with that note (a bucket file deleted whole is then seen). Read and
        written as :meth:`_held_where_the_group_moved` reads: in this bucket or, through
        ``shared.store_of``, in another. When it cannot be written (access denied, a bucket gone),
        said once, and the move goes on. An error that may pass (S3 unavailable, retries
        exhausted) stops the recovery instead, before the group's note names this output, so that
        the next one writes it: the move went on without it, a clean-up then deleted the open file
        left there, and ``consumer finish`` of that output, with nothing to say it held rows,
        found nothing to finish; their records were in no file (found by
        tests/unit/test_group_history.py)."""
        other = self._other_output(output)
        if other is None:
            return
        body = {"to": self.shared.output, "group": self.shared.group_id, "topic_id": self.topic_id,
                "held": held}
        try:
            other[0]().put_if_absent(other[1].moved_key(self.topic, self.partition, position, AWAY),
                                     json.dumps(body).encode())
        except StorageError as exc:
            if isinstance(exc, TransientStorageError):
                raise TransientStorageError(
                    f"{self.where}: the group moved here from {output} at {position}, and that output "
                    f"could not be told so ({exc}). The group's position still names that output, "
                    "and the next run tells it first. Should it stay unreachable for good, moving the "
                    f"group's offset by hand (kafka-consumer-groups --reset-offsets --to-offset {position}) "
                    "moves on without telling it: run `consumer finish` of it first if it still holds "
                    "open files."
                ) from exc
            self.log.warning(
                "the output the group moved from could not be told so: should the group's offsets "
                "expire, a run of that output would export again what this one holds; give this "
                "consumer s3:PutObject there", moved_from=output, error=f"{type(exc).__name__}: {exc}"[:300],
            )

    def _committed_after_staging(self) -> bool:
        """Whether the committed position's note says this consumer committed it after the rows
        below it were staged in this output (consumer.positions). A note naming another output
        is said once: the group's last commit was for other files (a new --output on purpose, or
        a mistyped one)."""
        note = parse_note(self.positions.note(self.topic, self.partition))
        if note is None:
            return False
        if not same_output(note.output, self.shared.output):
            self.log.warning(
                "the committed position was committed while writing to another output: this run "
                "writes new files here, and the records below the position are in that output"
                + (", the last of them in a file left open there (staged, read by no query): once "
                   "this run has committed, make it final with `consumer finish` of that output"
                   if note.held == STAGED else ""),
                committed_for=note.output,
                output=self.shared.output,
                **({"hint": f"consumer finish --group-id {self.shared.group_id} --topic {self.topic} "
                            f"--output {_named(note.output)}"} if note.held == STAGED else {}),
            )
        return note.staged_in(self.shared.output)

    def _ready_at(self, position: int | None, t0: float, **recovered: Any) -> int | None:
        """The end of every recovery: the partition reads from ``position``, and says so."""
        self._read_in_recovery.clear()
        self.committed = position
        self.next_pos = position
        self.state = PartitionState.READY
        self.log.info(
            "partition recovered", position=position, **recovered, ms=round((self.clock() - t0) * 1000, 1)
        )
        return position

    def _finish_planned(self, finish: tuple[FinishRoll, ...], etags: Mapping[str, str | None],
                        bucket: str = "") -> None:
        for fin in finish:
            if fin.needs_marker:
                marker = self.layout.roll_marker_key(
                    self.topic, self.partition, fin.file_start, fin.end, bucket)
                self.store.put_if_absent(marker, b"")
            # A crash mid-merge leaves an invisible multipart upload behind: abort it.
            final_key = self.layout.final_key(self.topic, self.partition, fin.file_start, bucket)
            self.store.abort_uploads(final_key)
            chain = [self._load_piece(p, etags.get(p.key)) for p in fin.chain]
            self._finish_roll(self._file_of(chain), fin.end)

    def _resume(self, pieces: tuple[PieceRef, ...], etags: Mapping[str, str | None]) -> FileState:
        chain = [self._load_piece(p, etags.get(p.key)) for p in pieces]
        f = self._file_of(chain)
        self.files[f.bucket] = f
        self.store.abort_uploads(self.layout.final_key(self.topic, self.partition, f.start, f.bucket))
        return f

    def _dead_letters(self, since: int | None = None,
                      listed: list[tuple[str, int, int]] | None = None) -> list[tuple[str, int, int]]:
        """(key, from, to) of the partition's dead-letter objects, those starting at ``since`` or
        later when given (names sort by their first position: one LIST from there). ``listed``:
        every one of them, listed already by this recovery (a run back, which reads them all
        first: :meth:`_held_where_the_group_moved`), to be filtered instead of listed again.

        Recovery needs only the ones never committed (``to`` past the position it resumes from),
        to delete them. The plain layout passes the end of the newest final file: a dead-letter
        object is written by the flush of a range that starts at the committed position, and every
        recovery deletes those whose range was not committed, so one that was never committed
        starts at or after any final file's end. A long-running partition with steady bad records
        no longer lists its whole dead-letter history at every restart and rebalance. (A zombie
        that writes dead letters after the new owner recovered leaves them in either case.)"""
        if listed is not None:
            return [d for d in listed if not since or d[1] >= since]
        folder = self.layout.dead_letter_dir(self.topic, self.partition)
        out = []
        for o in self.store.list(folder, f"{folder}{since:020d}" if since else ""):
            rng = self.layout.parse_dead_letter_range(o.key)
            if rng is not None:
                out.append((o.key, rng[0], rng[1]))
        return out

    def _recover_bucketed(
        self,
        t0: float,
        committed: int | None,
        pieces: list[PieceRef],
        markers: list[RollMarker],
        dead: list[tuple[str, int, int]],
        etags: Mapping[str, str | None],
        staged_here: bool,
        elsewhere: Sequence[str] = (),
        moved: MovedIn | None = None,
        as_left: tuple[list[PieceRef], list[RollMarker]] | None = None,
    ) -> int | None:
        """Recovery under --partition-by: today's plan per bucket (see plan_bucketed_recovery).
        ``elsewhere``: staged objects left out of the plan and deleted with what it deletes
        (:meth:`_held_where_the_group_moved`); ``moved``: :meth:`_moved_in`; ``as_left``: every
        staged object here, for the check of a run back (None: ``pieces`` and ``markers``), which
        sees every dead-letter object here too."""
        left_dead, dead = dead, [d for d in dead if d[0] not in elsewhere]
        rolled = [self.layout.parse_rolled(o.key)
                  for o in self.store.list(self.layout.rolled_dir(self.topic, self.partition))]
        high_water = max((r for r in rolled if r is not None), default=None)
        finals = self._bucket_finals({p.bucket for p in pieces} | {m.bucket for m in markers})
        final_topic_ids: list[str | None] = [self._final_topic_ids.get((bucket, max(starts)))
                                             for bucket, (starts, _end) in sorted(finals.items()) if starts]
        if high_water is not None and self.topic_id:
            final_topic_ids.append(self._rolled_topic_id(high_water))
        ends = [high_water or 0, *(p.to_pos for p in pieces), *(e or 0 for _s, e in finals.values())]
        letters = self._newest_dead_letters(dead, max(ends), committed)
        if letters is not None:
            final_topic_ids.append(letters.topic_id)
        if moved is not None and committed is None:
            final_topic_ids.append(moved.topic_id)
        left_pieces, left_markers = as_left if as_left is not None and elsewhere else (pieces, markers)

        def check_where_left(at: int) -> None:
            buckets = {p.bucket for p in left_pieces} | {m.bucket for m in left_markers}
            left_finals = {**self._bucket_finals(buckets - set(finals)), **finals}
            self._refuse_where_left(at, left_pieces, left_markers, left_dead, left_finals, high_water, etags)

        self._keep_a_move_once_checked(moved, check_where_left)
        named = self._flush_files(committed, pieces, etags) if committed is not None else {}
        gone: list[tuple[str, int]] = []
        if committed is not None and (staged_here or not self._noted()):
            gone = self._bucket_files_gone(committed, named, pieces, finals)
        if staged_here and committed is not None:
            self._refuse_a_bucket_file_gone(committed, gone)
        only = one_flush_only(pieces, finals) if committed is None else None
        open_pieces = any(p.file_start not in finals.get(p.bucket, (set(), None))[0] for p in pieces)
        # Who rolled the newest file, only where the plan names it: a position adopted from its
        # end, or one below it (one HEAD; the marker's metadata, see _finish_roll).
        names_rolled = high_water is not None and (committed is None or committed < high_water)
        rolled_writer = self._rolled_writer(high_water) if names_rolled and high_water is not None else None
        plan = plan_bucketed_recovery(committed, pieces, markers, dead, finals, high_water, where=self.where,
                                      staged_here=staged_here, flush_files=named,
                                      rows_of_one_flush=self._records_held(only, pieces, finals, dead, etags),
                                      dead_letter_records=self._dead_letter_lines(
                                          committed, open_pieces, high_water, dead,
                                          staged_gone=staged_here and nothing_ends_at(
                                              committed, pieces, high_water)),
                                      rolled_writer=rolled_writer, group=self.shared.group_id,
                                      moved_in=moved.position if moved is not None else None,
                                      went_on=moved.went_on if moved is not None else None,
                                      moved_to=moved.moved_to if moved is not None else None)
        deletes = [k for b in plan.buckets.values() for k in b.delete] + list(plan.delete) + list(elsewhere)
        deletes += moved.stale if moved is not None else ()
        doomed = set(deletes)
        # Here a zombie's whole bucket file is deleted too, below the position: check every piece
        # of an open file that goes (a group's own zombie is the group itself).
        adopted_staged = self._begin_plan(
            plan,
            [p for p in pieces
             if p.key in doomed and p.file_start not in finals.get(p.bucket, (set(), None))[0]],
            [d for d in dead if d[0] in doomed],
            sources=pieces,
            final_writer=letters.writer if letters is not None and letters.end == plan.commit
            else rolled_writer if plan.commit is not None and plan.commit == high_water else None,
            final_topic_ids=final_topic_ids,
        )
        self._mark_finishing_where_left(moved, plan)
        for bucket, bplan in sorted(plan.buckets.items()):
            self._finish_planned(bplan.finish, etags, bucket)
        # A file of the flush gone without a note: an operator's reset to go on without it (the
        # stop's remedy), which a "staged" note would undo at the next recovery.
        self._note_a_position_without_one(committed, plan.position,
                                          any(b.resume for b in plan.buckets.values()), bool(gone))
        self._note_rolled_after_recovery(committed, plan, staged_here or adopted_staged)
        for _bucket, bplan in sorted(plan.buckets.items()):
            if bplan.resume:
                self._resume(bplan.resume, etags)
        if deletes:
            self._confirm_ownership()
            self.store.delete(deletes)
        return self._ready_at(
            plan.position,
            t0,
            committed=committed,
            resumed_buckets=sorted(self.files),
            resumed_rows=sum(f.rows for f in self.files.values()),
            finished_rolls=sum(len(b.finish) for b in plan.buckets.values()),
            deleted_strays=len(deletes),
            high_water=high_water,
        )

    def _bucket_finals(self, buckets: set[str]) -> dict[str, tuple[set[int], int | None]]:
        """Each bucket's final files here: their starts, and where the newest one ends."""
        finals: dict[str, tuple[set[int], int | None]] = {}
        for bucket in buckets:
            starts = self._final_starts(bucket)
            last = self._final_range(self._note_final(bucket, max(starts)), bucket)[1] if starts else None
            finals[bucket] = (set(starts), last)
        return finals

    def _refuse_where_left(self, at: int, pieces: list[PieceRef], markers: list[RollMarker],
                           dead: list[tuple[str, int, int]], finals: dict[str, tuple[set[int], int | None]],
                           high_water: int | None, etags: Mapping[str, str | None]) -> None:
        """Under --partition-by, the stops of a recovery at ``at`` with a "staged" note here."""
        named = self._flush_files(at, pieces, etags)
        self._refuse_a_bucket_file_gone(at, self._bucket_files_gone(at, named, pieces, finals))
        plan_bucketed_recovery(at, pieces, markers, dead, finals, high_water, where=self.where,
                               staged_here=True, flush_files=named)

    def _records_held(
        self,
        span: tuple[int, int] | None,
        pieces: list[PieceRef],
        finals: dict[str, tuple[set[int], int | None]],
        dead: list[tuple[str, int, int]],
        etags: Mapping[str, str | None],
    ) -> int | None:
        """The rows of the open files' pieces of ``span`` plus its dead letters (a footer read per
        piece, a GET per dead-letter object): asked only when one flush's pieces are all that is
        left and no position is committed (:func:`one_flush_only`)."""
        if span is None:
            return None
        ours = [p for p in pieces if (p.from_pos, p.to_pos) == span
                and p.file_start not in finals.get(p.bucket, (set(), None))[0]]
        rows = sum(self._load_piece(p, etags.get(p.key)).rows for p in ours)
        for key, frm, to in dead:
            if (frm, to) == span:
                rows += self._dead_letter_count(key)
        return rows

    def _flush_files(
        self, pos: int, pieces: list[PieceRef], etags: Mapping[str, str | None]
    ) -> dict[str, int]:
        """Under --partition-by: bucket → start of each file the flush that committed ``pos``
        wrote into, as the pieces ending at it say (footers the resume reads anyway); where they
        disagree (a fenced member's piece of the same range), the files all of them name. Pieces
        written before the list was recorded say nothing: empty."""
        said: set[tuple[str, int]] | None = None
        for p in (p for p in pieces if p.to_pos == pos and p.from_pos < pos):
            footer = self._load_piece(p, etags.get(p.key)).layout.footer
            try:
                files = {(str(b), int(start))
                         for b, start in json.loads(read_key_value_metadata(footer)[FLUSH_FILES_KEY]).items()}
            except (KeyError, ValueError, TypeError, AttributeError):  # not recorded (or not ours)
                return {}
            said = files if said is None else said & files
        return dict(sorted(said or ()))

    def _bucket_files_gone(
        self,
        pos: int,
        named: dict[str, int],
        pieces: list[PieceRef],
        finals: dict[str, tuple[set[int], int | None]],
    ) -> list[tuple[str, int]]:
        """The files of the flush that committed ``pos`` (``named``) that no longer reach it
        (:func:`files_gone`), their final files read for buckets rolled since."""
        if not named:
            return []
        known = dict(finals)
        for bucket in set(named) - set(known):  # rolled since: their final files
            starts = self._final_starts(bucket)
            known[bucket] = (set(starts), self._final_range(max(starts), bucket)[1] if starts else None)
        return files_gone(named, pos, pieces, known)

    def _refuse_a_bucket_file_gone(self, pos: int, gone: list[tuple[str, int]]) -> None:
        """With the position committed once its rows were staged here (its note), every file the
        flush that committed it wrote into must still reach it: ``gone`` names those that do not
        (:meth:`_bucket_files_gone`)."""
        if not gone:
            return
        first = min(start for _b, start in gone)
        raise IntegrityError(
            f"{self.where}: the flush that committed {pos} wrote into the bucket file(s) "
            + ", ".join(f"{b} (from {start})" for b, start in gone)
            + f", and S3 holds no staged piece of it ending at {pos} and no final file of it: deleted "
            "by someone else (a clean-up of _staging/, a lifecycle rule). Their rows are in no file, "
            "and going on would skip them without a word. Nothing was changed. To export them again, "
            f"move the group's offset back to {first} (kafka-consumer-groups --reset-offsets "
            f"--to-offset {first}): the other buckets' staged rows from there are read again too. If "
            f"that is refused (a bucket file rolled past {first}), export [{first}, {pos}) with "
            f"`consumer replay` to another prefix, then commit {pos} by hand (--to-offset {pos}), "
            "which clears this consumer's note, to go on without them here."
        )

    def _dead_letter_lines(
        self,
        committed: int | None,
        open_pieces: bool,
        start: int | None,
        dead: list[tuple[str, int, int]],
        *,
        staged_gone: bool = False,
    ) -> dict[str, int]:
        """The lines of the dead-letter objects that follow ``start`` (the newest final file's or
        rolled bucket file's end; a GET each): asked with no committed position and no open file,
        where they may be all that finished flushes of bad records only left
        (:func:`~consumer.recovery.past_dead_letters`); and, ``staged_gone``, when the committed
        position's rows were staged here and nothing S3 holds ends at it, where they may show
        that the pieces gone held no row (:func:`~consumer.recovery.dead_letters_cover`), a stop
        otherwise. Both are rare: the GETs are not on a recovery's usual path."""
        if staged_gone and committed is not None:
            return {key: self._dead_letter_count(key) for key, frm, to in dead
                    if (start or 0) <= frm and to <= committed}
        if committed is not None or open_pieces:
            return {}
        return {key: self._dead_letter_count(key) for key, _f, _t in dead_letters_from(start, dead)}

    def _dead_letter_count(self, key: str) -> int:
        """The records a dead-letter object holds: one JSON line each (a GET)."""
        return self.store.get(key).count(b"\n")

    def _begin_plan(
        self,
        plan: RecoveryPlan | BucketedPlan,
        doomed_pieces: list[PieceRef],
        doomed_dead_letters: list[tuple[str, int, int]],
        *,
        sources: Sequence[PieceRef] = (),
        final_writer: str | None = None,
        final_topic_ids: Sequence[str | None] = (),
    ) -> bool:
        """What every recovery plan starts with, in either layout, before it changes anything in
        S3: refuse to continue output read from an earlier topic of the same name, refuse to
        delete what another writer staged, refuse to adopt a position from a group that still
        writes here, say the plan's notes, and commit the position it adopted from S3 (so that a
        crash from here on resumes from it). ``sources``: the staged pieces, of which those ending
        at the adopted position are what it comes from; ``final_writer``: the writer of the final
        file or the dead letters it comes from, if it does; ``final_topic_ids``: the topic ids the
        newest final files (or dead letters) name. True when it committed a "staged" note."""
        self._refuse_another_incarnation(sources, final_topic_ids)
        self._refuse_deleting_foreign_objects(doomed_pieces, doomed_dead_letters, plan.position)
        if plan.commit is not None:
            self._refuse_adopting_from_a_running_group(
                plan.commit, [p for p in sources if p.to_pos == plan.commit], final_writer
            )
        for note in plan.notes:
            self.log.warning(note)
        if plan.commit is None:
            return False
        held = STAGED if any(p.to_pos == plan.commit for p in sources) else ROLLED
        self.positions.commit(self.topic, self.partition, plan.commit, self._note(held))
        self._group_position = plan.commit
        return held == STAGED

    def _noted(self) -> bool:
        """Whether the committed position carries a note of this consumer for this output."""
        note = parse_note(self.positions.note(self.topic, self.partition))
        return note is not None and same_output(note.output, self.shared.output)

    def _note_a_position_without_one(self, committed: int | None, position: int | None, resumed: bool,
                                     gone: bool = False) -> None:
        """The committed position carries no note of this consumer for this output, and recovery
        goes on from it: commit it again with one, once the rolls the plan finishes are done (an
        "unstaged" note said before them hid, after a crash between and a clean-up of
        ``_staging/``, the rows they were to make final: the next recovery no longer checked where
        the group had left this output; found by tests/unit/test_group_history.py). One commit,
        and only then.

        - Recovery resumes staged pieces that reach it: a "staged" note. Without one (an
          operator's reset, an earlier version), a deletion of those pieces from _staging/ before
          the next flush looked like a reset forwards and their rows were lost without a word
          (found by tests/unit/test_group_history.py).
        - Nothing staged here reaches it: an "unstaged" note (positions.UNSTAGED). Until this
          output's first flush, the group's last commit named the output the group wrote before
          ``--output`` moved (or nothing, after a reset); on a partition with nothing new to read
          that was for ever, and ``consumer finish`` of the old output refused its open files as
          the group's own (found by test_finish.py's property).
        - ``gone``: a file of the committed flush is gone under ``--partition-by`` with no note:
          the operator's reset to go on without it, which a note would undo. None."""
        if committed is None or position != committed or not self.shared.group_id or gone or self._noted():
            return
        held = STAGED if resumed else UNSTAGED
        if held == UNSTAGED and not self.shared.finishing \
                and parse_note(self.positions.note(self.topic, self.partition)) is None:
            # no note at all (a note of another output kept its move already): where the group
            # went on from, for a recovery with the offsets expired (:meth:`_moved_in`)
            self._keep_a_move(committed, None)
        self.positions.commit(self.topic, self.partition, committed, self._note(held))

    def _note_rolled_after_recovery(self, committed: int | None, plan: RecoveryPlan | BucketedPlan,
                                    staged_here: bool) -> None:
        """Commit the position again saying "rolled" once the rolls the plan finishes are done,
        where its "staged" note no longer holds (one commit, only then; a crash before it leaves a
        stop at the next recovery, never a loss). ``staged_here``: the note says "staged", as read,
        or as the plan's adopted position was committed (offsets expired after a kill in a roll):

        - ``staged_gone``: dead letters hold what the deleted pieces covered. The next recovery
          then reads the rows below as final files and dead letters, and a lifecycle rule
          expiring those is not a stop (found by tests/unit/test_group_history.py).
        - The plan finished rolls and resumes no file: the roll's own re-commit never happened (a
          kill after its marker, a commit refused; under --partition-by, the last bucket file's,
          after the others' said "staged" while it was open). Under --partition-by the next
          recovery took the rolled files for ones rolled while others stayed open, and stopped
          (status 5) saying those were deleted (found by tests/unit/test_group_history.py, then by
          one kill on the stack); in either layout a lifecycle rule expiring the final files made
          it stop, saying their records were in no file."""
        if plan.position is None:
            return
        if isinstance(plan, BucketedPlan):
            finished = any(b.finish for b in plan.buckets.values())
            resumed = any(b.resume for b in plan.buckets.values())
        else:
            finished, resumed = bool(plan.finish), bool(plan.resume)
        here = plan.position == committed or plan.position == plan.commit
        rolled = staged_here and here and finished and not resumed
        if plan.staged_gone or rolled:
            self.positions.commit(self.topic, self.partition, plan.position, self._note(ROLLED))

    def _confirm_ownership(self) -> None:
        """Before recovery deletes anything or stops the run: commit the group's position again
        (the one read, or the one the plan adopted and committed; none: nothing to confirm), as a
        roll does before it publishes. A member can lose the partition while it recovers it
        (kicked out when recovery outlasts max.poll.interval.ms, e.g. in an S3 brown-out); the new
        owner may have staged and committed rows past the position read here since, and deleting
        them as strays would lose them. In the same generation nobody else can have moved the
        position; the commit of a member that lost the partition fails (PartitionFenced), and the
        run pauses the partition until the group settles. With the note last read or written, so
        the commit says what it said before."""
        if self._group_position is None:
            return
        note = self.positions.note(self.topic, self.partition)
        self.positions.commit(self.topic, self.partition, self._group_position, note)

    def _refuse_a_topic_recreated_since_recovery(self) -> None:
        """Before a flush writes anything: the topic must still be the one recovery found. A topic
        deleted and created again while this member reads it starts again at offset 0, and
        librdkafka fetches on from the old position: the buffered records may be the new topic's,
        taken for the old one's next ones, with the records below the position skipped. Costs one
        metadata request per flush; when the cluster does not answer, the flush goes on (the next
        recovery checks again)."""
        if self.topic_id is None or self.shared.topic_id is None:
            return
        now = self.shared.topic_id(self.topic, True)
        if now is None or now == self.topic_id:
            return
        raise IntegrityError(
            f"{self.where}: topic {self.topic!r} was deleted and created again under its name while "
            f"this member read it (topic id {self.topic_id}, now {now}): its offsets started again at 0, "
            "so the records buffered here may be the new topic's, read from the old position. None of "
            "them was written or committed. Export the new topic to another --output with a new "
            "--group-id."
        )

    def _newest_dead_letters(
        self, dead: Sequence[tuple[str, int, int]], after: int, committed: int | None
    ) -> NewestDeadLetters | None:
        """The newest of ``dead``, if it ends past ``after`` (the end of every other output
        recovery found): then only its lines say which topic the position was read from, and
        which group wrote up to it. A partition whose every record so far was bad holds dead
        letters only; with the topic deleted and created again, its position (kept, or adopted
        from them) skipped the new topic's first records (found by
        tests/unit/test_group_history.py), and a position adopted from them asked no one whether
        their writer still runs. One ranged GET, only then, and only when there is a topic id to
        compare or no position of the group's own; None when gone meanwhile."""
        newest = max(dead, key=lambda d: (d[2], d[1]), default=None)
        if newest is None or newest[2] <= after or (self.topic_id is None and committed is not None):
            return None
        try:
            topic_id, writer = self._dead_letter_head(newest[0])
        except FileNotFoundError:
            return None
        return NewestDeadLetters(newest[2], topic_id, writer)

    def _writer_names(self) -> dict[str, str]:
        """What names this run as the writer of what it writes (footers, the rolled marker's
        metadata): its consumer group, or that it is a replay; :func:`writer_of` reads it."""
        return {GROUP_KEY: self.shared.group_id} if self.shared.group_id else {REPLAY_KEY: "true"}

    def _rolled_writer(self, end: int) -> str | None:
        """The writer the rolled high-water marker at ``end`` names in its metadata (bucketed
        layout): a group, :data:`REPLAY_WRITER`, or None for a marker written before markers named
        it, or gone. One HEAD, by a recovery that adopts the marker's end or stops below it."""
        info = self.store.head(self.layout.rolled_key(self.topic, self.partition, end))
        return None if info is None else writer_of({k: unquote(v) for k, v in info.metadata.items()})

    def _rolled_topic_id(self, end: int) -> str | None:
        """The topic id the rolled high-water marker at ``end`` holds (bucketed layout; empty in
        markers written before ids were recorded, and None when it is gone)."""
        try:
            said = self.store.get(self.layout.rolled_key(self.topic, self.partition, end))
        except FileNotFoundError:
            return None
        return said.decode(errors="replace") or None

    def _refuse_another_incarnation(
        self, pieces: Sequence[PieceRef], final_topic_ids: Sequence[str | None]
    ) -> None:
        """The topic was deleted and created again under its name since the newest output here was
        written (its id, KIP-516, changed): the new topic's offsets start again at 0, so a
        committed or adopted position would take its records for ones already written and skip
        them, silently, and its next records would land in the old topic's files. Stop before
        anything is committed or deleted. Costs one footer read of the newest staged piece.

        Output that names no id (written before ids were recorded, or with the cluster's ids
        unknown) is not checked; neither is anything when the cluster does not say the id now.
        ``--accept-topic-id`` names the one new id to continue from (a topic moved to another
        cluster with its offsets kept): its pieces then name the new id, so the next recovery
        passes without it."""
        now = self.topic_id
        if now is None:
            return
        named = set(final_topic_ids)
        newest = max(pieces, key=lambda p: (p.to_pos, p.from_pos), default=None)
        if newest is not None:
            named.add(read_key_value_metadata(self._load_piece(newest).layout.footer).get(TOPIC_ID_KEY))
        earlier = sorted(i for i in named if i and i != now)
        if not earlier:
            return
        if self.config.accept_topic_id == now:
            self.log.warning(
                "continuing output read from another topic of this name, as --accept-topic-id says",
                topic_id_in_s3=earlier, topic_id=now,
            )
            return
        raise IntegrityError(
            f"{self.where}: the output here was read from an earlier topic {self.topic!r} (topic id "
            f"{', '.join(earlier)}), and the topic is now another one (id {now}): it was deleted and "
            "created again under its name, so its offsets started again at 0 and this run would "
            "take its records for ones already written, and skip them. Nothing was committed or "
            "deleted. Export the new topic to another --output with a new --group-id; `consumer "
            f"finish --topic {self.topic}` (this group and output) makes the earlier topic's open files "
            "here final. Only if the "
            "topic was moved to another cluster with its offsets kept (Cluster Linking, a restore), "
            f"start once with --accept-topic-id {now}."
        )

    def _refuse_adopting_from_a_running_group(
        self, position: int, pieces: list[PieceRef], final_writer: str | None
    ) -> None:
        """This group has no committed position, and ``position`` is adopted from ``pieces`` or a
        final file that another consumer group wrote. If that group still runs this partition
        (:func:`~consumer.recovery.still_writing`), the two would write one prefix until their
        files first differ, and only then would one of them stop: stop now instead, before
        anything is committed or deleted. Costs one footer read of each piece (adoption is rare);
        when the coordinator does not answer, adopt as before and say so."""
        describe = self.shared.describe_group
        if describe is None:
            return
        writers = {final_writer} | {self._piece_writer(p) for p in pieces}
        for writer in sorted(w for w in writers if w and other_writer(w, self.shared.group_id)):
            view = describe(writer)
            if view is None:
                self.log.warning(
                    "could not ask the coordinator whether the consumer group that wrote this "
                    "partition's output still runs: adopting its position as before (describing "
                    "a group needs DESCRIBE on it)", other_group=writer, position=position,
                )
                continue
            how = still_writing(view, (self.topic, self.partition))
            if how is None:
                continue
            group = self.shared.group_id
            if group:
                remedy = (
                    f"If {writer!r} was stopped a moment ago, its static members, and any member "
                    "that crashed, leave the group when their session times out (session.timeout.ms): "
                    "start again after that. If "
                    "it now writes elsewhere, commit this group's start yourself (kafka-consumer-groups "
                    f"--reset-offsets --group {group} --topic {self.topic}:{self.partition} "
                    f"--to-offset {position} --execute) and start again."
                )
            else:
                remedy = "A replay re-exports history into a prefix of its own: give it another --output."
            raise IntegrityError(
                f"{self.where}: {'this group' if group else 'this replay'} has no position of its own "
                f"here, and the output here was last written by consumer group {writer!r}, which "
                f"still runs: {how}. {ONE_WRITER}. Nothing was committed or deleted. {remedy}"
            )

    def _refuse_deleting_foreign_objects(
        self, pieces: list[PieceRef], dead_letters: list[tuple[str, int, int]], position: int | None
    ) -> None:
        """Recovery deletes the staged pieces and dead letters past the committed position (of
        files not final): this group wrote them and never committed them. Ones another consumer
        group wrote may hold that group's committed records, so stop instead, before anything
        changes. Costs one read of each (usually none; a crash between a PUT and its commit leaves
        one). The bucketed layout also deletes a zombie's bucket files below the position: the
        same check covers them."""

        def beyond(to_pos: int) -> str:
            if position is None or to_pos > position:
                return f"past this run's position {position}"
            return f"of a file that does not chain to this run's position {position}"  # bucketed

        def piece(p: PieceRef) -> str:
            bucket = f" of bucket {p.bucket}" if p.bucket else ""
            return f"staged piece [{p.from_pos}, {p.to_pos}){bucket} {beyond(p.to_pos)}"

        found = [
            (piece(p), self._piece_writer(p))
            for p in pieces
        ] + [(f"dead-letter object [{a}, {b}) {beyond(b)}", self._dead_letter_writer(key))
             for key, a, b in dead_letters]
        for what, writer in found:
            foreign = other_writer(writer, self.shared.group_id)
            if foreign:
                takeover = (
                    f" If that group has stopped for good and this one takes its place, move this "
                    f"group's offset to where {writer!r} committed (kafka-consumer-groups --describe "
                    f"--group {writer})." if self.shared.group_id and writer != REPLAY_WRITER else ""
                )
                raise IntegrityError(
                    f"{self.where}: recovery would delete the {what}, but it was {foreign}: "
                    f"{ONE_WRITER}. Nothing was deleted.{takeover}"
                )

    def _piece_writer(self, ref: PieceRef) -> str | None:
        """The writer a staged piece names in its footer (one ranged read of the footer)."""
        return writer_of(read_key_value_metadata(self._load_piece(ref).layout.footer))

    def _dead_letter_writer(self, key: str) -> str | None:
        return self._dead_letter_head(key)[1]

    def _dead_letter_head(self, key: str) -> tuple[str | None, str | None]:
        """The topic id and the writer a dead-letter object's first line names: the group, or
        :data:`REPLAY_WRITER` for ``null`` (written by a replay). None for either in lines written
        before they named it. One ranged GET; FileNotFoundError when the object is gone."""
        head = self.store.get(key, 0, _DEAD_LETTER_HEAD)
        topic_id = _DEAD_LETTER_TOPIC_ID.search(head)
        found = _DEAD_LETTER_GROUP.search(head)
        writer = None if found is None else json.loads(found.group(1))
        return (topic_id[1].decode() if topic_id else None,
                None if found is None else writer if isinstance(writer, str) else REPLAY_WRITER)

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
        reader_id = next(
            (read_key_value_metadata(p.layout.footer).get(READER_ID_KEY)
             for p in reversed(chain) if p.layout.num_row_groups > 0), None
        )
        try:
            bucket_end: int | None = int(first_meta[BUCKET_END_KEY])
        except (KeyError, ValueError):
            bucket_end = None
        return FileState(chain[0].ref.file_start, chain, opened_at=self.clock() - age, born_wall=born,
                         identity=identity, bucket=chain[0].ref.bucket, bucket_end=bucket_end,
                         late=first_meta.get(BUCKET_LATE_KEY) == "1",
                         reader_id=int(reader_id) if reader_id and reader_id.isdigit() else None)

    def _final_starts(self, bucket: str = "", start_after: str = "") -> list[int]:
        """First positions of the partition's (bucket's) final files (named after ``start_after``)."""
        out = []
        listing = self.store.list(self.layout.partition_dir(self.topic, self.partition, bucket), start_after)
        for o in listing:
            parsed = self.layout.parse_final_name(o.key)
            if parsed is not None and parsed[1] == self.partition:
                out.append(parsed[2])
        return out

    def _final_starts_from(self, known: int, bucket: str = "") -> list[int] | None:
        """The final starts from ``known`` on — names sort by position, so one LIST from there, not
        one per 1,000 older files — or None when no final file starts at ``known`` any more."""
        start_after = self.layout.final_key(self.topic, self.partition, known - 1, bucket) if known else ""
        starts = self._final_starts(bucket, start_after)
        return starts if known in starts else None

    def _recovery_final_starts(self, staged: set[int]) -> list[int]:
        """The final starts plain-layout recovery needs: the newest one (for the end it checks the
        committed position against) and any that ``staged`` files (pieces, markers) have.

        Listed from the newest final file named in :meth:`Layout.newest_final_dir` if that file
        still exists — one LIST however long the partition's history — plus a HEAD per staged file
        older than it (rare: leftovers). Without a usable name, the whole folder is listed."""
        listed = self.store.list(self.layout.newest_final_dir(self.topic, self.partition))
        self._named_newest = [o.key for o in listed]
        named = [s for o in listed if (s := self.layout.parse_newest_final(o.key)) is not None]
        self._named_start = max(named, default=None)
        if named and (starts := self._final_starts_from(max(named))) is not None:
            older = (s for s in sorted(staged) if s < max(named))
            final = [s for s in older
                     if self.store.head(self.layout.final_key(self.topic, self.partition, s)) is not None]
            return final + starts
        return self._final_starts()

    def _named_final_gone(self, finals: Sequence[int], last_end: int | None) -> NamedFinal | None:
        """The newest final file named under ``_newest_final/``, when it is gone and ended past
        every final file left (a lifecycle rule expired the partition's newest files, or someone
        deleted them): what its name holds, so that recovery neither adopts nor reads again below
        its end. None when the named file is there, or its name holds nothing (written by an
        earlier version). Costs one GET, only when the named file is missing."""
        start = self._named_start
        if start is None or (finals and max(finals) >= start):
            return None
        try:
            body = self.store.get(self.layout.newest_final_key(self.topic, self.partition, start))
        except FileNotFoundError:
            return None
        named = NamedFinal.parse(start, body)
        if named is None or (last_end is not None and named.end <= last_end):
            return None
        return named

    def _name_newest_final(self, start: int, end: int, meta: Mapping[str, str]) -> list[str]:
        """After a plain-layout roll: name its file as the newest final one for later recoveries,
        with its end, topic id and writer (``meta``: its footer's), which outlive the file when a
        lifecycle rule expires it. Returns the names before it, for the roll to delete with the
        file's staging folder (a crash before that leaves two: recovery takes the newest)."""
        key = self.layout.newest_final_key(self.topic, self.partition, start)
        named = NamedFinal(start, end, meta.get(TOPIC_ID_KEY), writer_of(meta))
        self.store.put_if_absent(key, named.body())
        older = [k for k in self._named_newest if k != key]
        self._named_newest = [key]
        return older

    def _final_starts_near(self, start: int, bucket: str = "") -> list[int]:
        """The final starts a file from ``start`` must be checked against: the greatest one below
        ``start`` and every one above it.

        Listed from the newest final file this assignment knows (recovery's listing, or our own
        roll), if that one still exists and lies below ``start``: then nothing older can be the
        greatest below ``start``, and a roll costs one LIST however long the partition's history.
        Otherwise (the first roll of a bucket, a known file gone) the whole folder is listed."""
        known = self._newest_final.get(bucket)
        if known is not None and known < start and (starts := self._final_starts_from(known, bucket)):
            return starts
        return self._final_starts(bucket)

    def _note_final(self, bucket: str, start: int) -> int:
        """Remember that a final file starting at ``start`` exists in ``bucket``; returns ``start``."""
        known = self._newest_final.get(bucket)
        _remember(self._newest_final, bucket, start if known is None else max(known, start))
        return start

    def _final_range(self, start: int, bucket: str = "") -> tuple[int, int]:
        """[from, to) of a final file, from its footer (cached: final files never change)."""
        if (bucket, start) in self._final_ends:
            return start, self._final_ends[(bucket, start)]
        key = self.layout.final_key(self.topic, self.partition, start, bucket)
        info = self.store.head(key) or _missing(key)
        try:
            meta = read_key_value_metadata(self._read_layout(key, info.size).footer)
            end = int(meta[TO_KEY])
            if (writer := writer_of(meta)) is not None:
                _remember(self._final_writers, (bucket, start), writer)
            if topic_id := meta.get(TOPIC_ID_KEY):
                _remember(self._final_topic_ids, (bucket, start), topic_id)
        except (ParquetMergeError, KeyError, ValueError) as exc:
            raise IntegrityError(
                f"final file {key} has no readable Kafka position range in its footer ({exc}); "
                "the prefix holds a file this consumer did not write: use another --output prefix"
            ) from exc
        _remember(self._final_ends, (bucket, start), end)
        return start, end

    def _load_piece(self, ref: PieceRef, etag: str | None = None) -> StagedPiece:
        """A staged piece's footer and layout (one ranged read). Within a recovery each piece is
        read once: its checks (topic id, the writer of adopted or doomed pieces) read the footers
        that the resume or the finished roll then uses."""
        known = self._read_in_recovery.get(ref.key)
        if known is not None:
            return StagedPiece(known.ref, known.layout, known.rows, etag)
        size = ref.size or (self.store.head(ref.key) or _missing(ref.key)).size
        layout = self._read_layout(ref.key, size)
        if not ref.size:
            ref = PieceRef(ref.file_start, ref.from_pos, ref.to_pos, ref.key, size, ref.bucket)
        piece = StagedPiece(ref, layout, layout.num_rows, etag)
        if self.state is PartitionState.NEW:
            self._read_in_recovery[ref.key] = piece
        return piece

    def _read_layout(self, key: str, size: int) -> PieceLayout:
        return read_layout(lambda start, end: self.store.get(key, start, end), size)

    # ------------------------------------------------------------------------------------------
    # appending
    # ------------------------------------------------------------------------------------------
    def append(self, msg: Any) -> None:
        """Buffer one Kafka message; flushes (and maybe rolls) when a budget is reached."""
        if not self._require(PartitionState.READY):
            return
        if self.waiting:  # an earlier record waits for the registry: keep the order
            self._hold(msg)
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
        writer: WriterSchema | None = None
        try:
            schema, body = self.decoder.split(msg.value())
            if self.resolving:
                writer, schema = schema, self._reader_for(schema)
                if writer.fingerprint == schema.fingerprint:
                    writer = None
            if self.arena is None or self.arena.schema.fingerprint != schema.fingerprint:
                self._switch_schema(schema)
        except BadRecord as exc:
            self._bad(DeadLetter(offset, timestamp, msg.key(), exc.reason, msg.value()))
            self.next_pos = offset + 1
            return
        except RegistryUnavailable as exc:
            self._registry_down(msg, exc)
            return
        assert self.arena is not None
        self.arena.append(body, offset, timestamp, msg.key(), msg.headers(), writer)
        if self.arena.halted is not None:
            self._halt(self.arena.halted)
        self.next_pos = offset + 1
        if self._row_group_full(self.arena, self._row_group_limit()):
            self.flush()

    def append_batch(self, msgs: list[Any]) -> None:
        """Buffer one partition's run of a consumed batch, in order.

        The fast path moves runs of records into the arena with per-record work done natively (one
        :func:`consumer.gather.gather` pass reads every message's fields and joins the bodies),
        splitting them only where a row group or a chunk ends, so flush decisions are exactly those
        of :meth:`append`. With Confluent framing the run is first cut where the 5-byte header
        changes (:func:`framing_runs`); a run of a known schema id loses its headers in the gather
        too. Anything unusual — a tombstone, a re-delivered
        offset, malformed framing, a schema id not fetched yet, no arena for the schema — goes
        record by record through :meth:`append`, which decides (and dead-letters) the same way.
        """
        if not self._require(PartitionState.READY) or not msgs:
            return
        if self.waiting:  # an earlier record waits for the registry: keep the order
            for msg in msgs:
                self._hold(msg)
            return
        if self.next_pos is not None and msgs[0].offset() < self.next_pos:
            for msg in msgs:
                self.append(msg)
            return
        raw = self.decoder.framing == "raw"
        if raw:
            runs: list[tuple[int, int, int | None]] = [(0, len(msgs), None)]
        else:
            values = list(map(_msg_value, msgs))
            if None in values:
                for msg in msgs:
                    self.append(msg)
                return
            runs = framing_runs(values)
        strip = 0 if raw else CONFLUENT_HEADER
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
                    or self.waiting
                ):
                    # switches the schema, fetches it, resolves it, dead-letters it, or holds it
                    # back behind a record that waits for the registry (order is kept)
                    self.append(msgs[i])
                    i += 1
                    continue
                i += self._append_run(arena, msgs, i, end, strip)

    def _append_run(self, arena: Arena, msgs: list[Any], start: int, end: int, strip: int) -> int:
        """Append ``msgs[start:end]``, records of the current arena's schema, until the run ends,
        the arena changes (a roll) or the state does; returns how many were taken (at least one).

        Each cut (up to the row group's or the chunk's room) is read in one :func:`gather` pass;
        a cut holding a tombstone goes record by record through :meth:`append` instead."""
        if self.committed is None:
            self.committed = msgs[start].offset()
        want_headers = "headers" in arena.kafka_columns
        i = start
        while i < end and self.state is PartitionState.READY and self.arena is arena:
            limit = self._row_group_limit()
            room = min(max(1, limit - arena.rows), arena.chunk_room, self._rows_to_byte_target(arena))
            j = min(end, i + room)
            got = gather(msgs, i, j, strip, arena.raw_end, want_headers)
            if got is None:  # a tombstone: these records take the record-by-record path
                for msg in msgs[i:j]:
                    self.append(msg)
                i = j
                continue
            if self.first_append_at is None:  # a flush earlier in this run restarted the age clock
                self.first_append_at = self.clock()
            arena.append_joined(got.data, got.ends, got.offsets, got.timestamps, got.keys,
                                got.key_bytes, got.headers)
            if arena.halted is not None:
                self._halt(arena.halted)
            self.next_pos = memoryview(got.offsets).cast("q")[-1] + 1
            if self._row_group_full(arena, limit):
                self.flush()
            i = j
        return i - start

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
            # Any open bucket file may receive every row of the next group: cap by the fullest.
            fullest = max((f.rows for f in self.files.values()), default=0)
            limit = min(limit, max(1, self.config.file_rows - fullest))
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

    # -- schema evolution (see consumer.evolution) ---------------------------------------------
    def _reader_for(self, writer: WriterSchema) -> WriterSchema:
        """The reader schema this writer's record is read with (:func:`choose_reader`);
        :class:`BadRecord` for an older writer schema that the open file's cannot read.

        A writer schema once found to stay in the arena's schema stays there for as long as that
        arena lives (the rule does not depend on the subject's latest version), so the hot path
        is one set lookup per record."""
        arena = self.arena
        if arena is not None and writer.fingerprint in self._stays:
            return arena.schema
        subject = subject_for(self.config.subject_strategy, self.topic, writer.avro)
        wver, latest = self.decoder.subject_info(writer, subject)
        current = self._current_reader(subject)
        decision = choose_reader(
            VersionedSchema(writer, wver),
            current,
            VersionedSchema(*latest) if latest is not None else None,
            self.decoder.resolution_problem,
        )
        if decision.reader is None:
            raise BadRecord(decision.reason)
        if arena is not None and decision.reader.schema is arena.schema:
            self._stays.add(writer.fingerprint)
        return decision.reader.schema

    def _current_reader(self, subject: str) -> VersionedSchema | None:
        """The open file's reader schema: the arena's, else the one a resumed file was written with."""
        schema: WriterSchema | None = None
        if self.arena is not None:
            schema = self.arena.schema
        elif self.file is not None and self.file.reader_id is not None:
            try:
                schema = self.decoder.schema_for_id(self.file.reader_id)
            except BadRecord:
                schema = None
        if schema is None:
            return None
        return VersionedSchema(schema, self.decoder.subject_info(schema, subject)[0])

    # -- registry outage: hold records back, retry within bounds --------------------------------
    def _hold(self, msg: Any) -> None:
        self.waiting.append(msg)
        value = msg.value()
        self.waiting_bytes += len(value) if value else 0

    def _registry_down(self, msg: Any, exc: RegistryUnavailable) -> None:
        """The registry could not be reached for this record's schema: the record is fine, so it
        is held back (not dead-lettered, not committed) with every later one of the partition;
        the runner pauses fetching and :meth:`retry_waiting` tries again after a backoff."""
        now = self.clock()
        if self.registry_down_since is None:
            self.registry_down_since = now
            self._retry_delay = _REGISTRY_BACKOFF[0]
        else:
            self._retry_delay = min(self._retry_delay * 2, _REGISTRY_BACKOFF[1])
        self.retry_at = now + self._retry_delay
        self._hold(msg)
        self.log.warning(
            "schema registry unavailable: partition paused, retrying",
            offset=msg.offset(),
            retry_in_s=self._retry_delay,
            down_for_s=round(now - self.registry_down_since, 1),
            give_up_after_s=self.config.registry_timeout,
            error=str(exc)[:300],
        )

    def retry_due(self, now: float) -> bool:
        return bool(self.waiting) and self.retry_at is not None and now >= self.retry_at

    def retry_waiting(self) -> None:
        """Append the held-back records again, in order; the first one that still finds the
        registry down holds the rest back once more. Past ``--registry-timeout`` of outage the
        process stops (:class:`RegistryStop`): everything appended before is flushed on shutdown
        and the held-back records stay uncommitted, so nothing is lost or dead-lettered."""
        if not self.waiting or not self._require(PartitionState.READY):
            return
        assert self.registry_down_since is not None
        held, self.waiting, self.waiting_bytes = self.waiting, [], 0
        for msg in held:
            self.append(msg)
        if not self.waiting:
            self.log.info("schema registry reachable again: partition resumed",
                          down_for_s=round(self.clock() - self.registry_down_since, 1))
            self.registry_down_since = self.retry_at = None
        elif self.clock() - self.registry_down_since >= self.config.registry_timeout:
            raise RegistryStop(
                f"{self.where}: the schema registry has been unreachable for "
                f"{self.clock() - self.registry_down_since:.0f}s (--registry-timeout "
                f"{self.config.registry_timeout:.0f}s) while offset {self.waiting[0].offset()} needs "
                "its schema. Everything before it is durable; nothing was dead-lettered. Restore "
                "the registry and restart."
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
        if any(f.identity not in (None, identity) for f in self.files.values()):
            self.log.info("file identity changed (schema, columns or writer options): rolling file",
                          schema_id=schema.schema_id)
            self.roll()
        stats = self.shared.stats.setdefault(schema.fingerprint, SchemaStats.from_schema(schema.avro))
        self._stays = set()
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
            bucketing=self.bucketing,
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
        return (self.arena.nbytes if self.arena else 0) + dl + self.waiting_bytes

    @property
    def piece_bytes(self) -> int:
        """About how many bytes a flush now would encode (the arena's running ratios; 0: none)."""
        return int(self.arena.predicted_encoded_bytes) if self.arena is not None else 0

    @property
    def finish_bytes(self) -> int:
        """About how many bytes :meth:`finish` holds at once: the piece, and each roll's largest
        client-side part (a file under S3's part minimum is uploaded whole; bigger pieces are
        copied server-side, smaller ones gathered into parts of about 8 MiB)."""
        piece = self.piece_bytes
        return piece + sum(min(f.size + piece, CLIENT_PART_BYTES) for f in self.files.values())

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
        return self.state is PartitionState.READY and bool(self._aged(now))

    def _aged(self, now: float) -> list[FileState]:
        """Open files whose age budget (--file-max-age) is spent."""
        age = self.config.file_max_age
        if age is None:
            return []
        return [f for f in self.files.values() if f.pieces and now - f.opened_at >= age]

    def roll_aged(self) -> None:
        """Make everything durable, then roll the files whose age budget is spent (each bucket
        file on its own clock; in the plain layout this is :meth:`finish`)."""
        self.flush()
        if not self._require(PartitionState.READY):
            return
        aged = self._aged(self.clock())
        if aged:
            self._guarded_roll(aged)

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
        self._refuse_a_topic_recreated_since_recovery()
        assert self.committed is not None and self.next_pos is not None
        from_pos, to_pos = self.committed, (upto if upto is not None else self.next_pos)
        if self.arena is None and not self.dead_letters:
            return
        t0 = self.clock()
        halt: DeadLetter | None = None
        identity: str | None = None
        buckets: pa.Array | None = None
        ends: pa.Array | None = None
        if self.arena is not None:
            with self.shared.encoding:
                table, dead, arrow_bytes, buckets, ends = self.arena.drain_buckets()
            identity = self.identity
            # Under on_error=fail the drain may have met a bad record: the range ends there.
            halt, self.arena.halted = self.arena.halted, None
            if halt is not None:
                to_pos = min(to_pos, halt.offset)
            newest = self.arena.max_time
            if newest is not None and (self.watermark is None or newest > self.watermark):
                self.watermark = newest
        else:
            # Only bad records so far: a zero-row piece keeps the position chain unbroken.
            table, dead, arrow_bytes = EMPTY_TABLE, self.dead_letters, 0
            self.dead_letters = []
        if to_pos <= from_pos:
            if halt is not None:
                self._stop_at(halt)
            return
        # What each file receives: the plain layout's one file gets the whole table; under
        # --partition-by every open bucket file gets its rows (or a zero-row piece), and a bucket
        # with rows but no open file opens one starting at from_pos.
        groups = self._split(table, buckets, ends) if self.bucketing is not None else {"": (table, None)}
        opened: list[str] = []
        for bucket, (_rows, bucket_end) in groups.items():
            if bucket not in self.files:
                self.files[bucket] = FileState(from_pos, opened_at=self.clock(), born_wall=self.wall(),
                                               bucket=bucket, bucket_end=bucket_end,
                                               late=self._past_grace(bucket_end))
                opened.append(bucket)
            elif bucket_end is not None:
                f = self.files[bucket]
                f.bucket_end = bucket_end if f.bucket_end is None else max(f.bucket_end, bucket_end)
        for f in self.files.values():
            if identity is not None and f.bucket in groups and groups[f.bucket][0].num_rows \
                    and f.identity not in (None, identity):
                raise IntegrityError(f"{self.where}: a piece of another identity would join {f.start}")
        if dead:
            self._put_dead_letters(dead, from_pos, to_pos)
            faults.point("after_dead_letter_put")
        # Files opened by this flush first: after a crash mid-flush with expired offsets the
        # position adopted is the lowest chain end, so an older file still at from_pos must
        # exist whenever a new file's piece is missing (see recovery.plan_bucketed_recovery).
        order = sorted(opened) + sorted(b for b in self.files if b not in opened)
        empty = table.schema.empty_table() if table.num_columns else EMPTY_TABLE
        written: list[tuple[FileState, StagedPiece, int]] = []
        t_put, self._encode_s = self.clock(), 0.0
        flush_files = None
        if self.bucketing is not None:
            starts = {b: self.files[b].start for b in order}
            flush_files = json.dumps(starts, sort_keys=True, separators=(",", ":"))
        for bucket in order:
            f = self.files[bucket]
            rows_table = groups[bucket][0] if bucket in groups else empty
            written.append((f, *self._put_piece(f, rows_table, identity, from_pos, to_pos, flush_files)))
        faults.point("after_piece_put")
        # No piece at all: under --partition-by, dead letters only while no bucket file is open.
        # Final files and dead letters hold the rows below to_pos then, nothing staged.
        held = STAGED if written else ROLLED
        self.positions.commit(self.topic, self.partition, to_pos, self._note(held))
        faults.point("after_commit")
        self.committed = to_pos
        self.first_append_at = None
        rows_total = size_total = 0
        for f, piece, data_len in written:
            if self.arena is not None and piece.rows:
                share = arrow_bytes * piece.rows // max(1, table.num_rows)
                with self.shared.encoding:
                    self.arena.stats.observe_encoded(share, data_len)
            f.pieces.append(piece)
            if identity is not None and piece.rows:
                f.identity = identity
                if self.arena is not None:
                    f.reader_id = self.arena.schema.schema_id
            rows_total += piece.rows
            size_total += piece.ref.size
        self.row_groups += 1
        self.counters.durable(rows_total, size_total)
        self.log.info(
            "row group durable",
            from_position=from_pos,
            to_position=to_pos,
            rows=rows_total,
            bytes=size_total,
            dead_letters=len(dead),
            encode_ms=round((t_put - t0 + self._encode_s) * 1000, 1),
            put_commit_ms=round((self.clock() - t_put - self._encode_s) * 1000, 1),
            files=len(written),
            file_rows=max((f.rows for f in self.files.values()), default=0),
            file_bytes=max((f.size for f in self.files.values()), default=0),
        )
        if halt is not None:
            self.next_pos = to_pos
            self._stop_at(halt)
        due = self._rolls_due()
        if due:
            self._roll_files(due)

    def _note(self, held: str) -> str:
        """What a commit of this group says about what holds the rows below it; a replay (its
        positions are its own objects in S3) says nothing."""
        return commit_note(held, self.shared.output) if self.shared.group_id else ""

    def _split(
        self, table: pa.Table, buckets: pa.Array | None, ends: pa.Array | None
    ) -> dict[str, tuple[pa.Table, int | None]]:
        """The drained rows by bucket (columnar: one filter per bucket), with each bucket's end."""
        if buckets is None or ends is None or table.num_rows == 0:
            return {}
        import pyarrow.compute as pc  # only a bucketed layout computes (consumer/bucketing.py)

        out: dict[str, tuple[pa.Table, int | None]] = {}
        for value in pc.unique(buckets).to_pylist():
            mask = pc.equal(buckets, value)
            out[value] = (table.filter(mask), pc.max(pc.filter(ends, mask)).as_py())
        return out

    def _put_piece(
        self, f: FileState, table: pa.Table, identity: str | None, from_pos: int, to_pos: int,
        flush_files: str | None = None,
    ) -> tuple[StagedPiece, int]:
        """Encode and PUT one piece of file ``f`` (conditional); (the piece, its encoded length)."""
        meta = {BORN_KEY: repr(f.born_wall)}
        if self.topic_id:
            meta[TOPIC_ID_KEY] = self.topic_id
        meta.update(self._writer_names())
        if f.bucket_end is not None:
            meta[BUCKET_END_KEY] = str(f.bucket_end)
        if f.late:
            meta[BUCKET_LATE_KEY] = "1"
        if flush_files is not None:
            meta[FLUSH_FILES_KEY] = flush_files
        if table.num_rows and self.arena is not None:
            meta[AVRO_SCHEMA_KEY] = json.dumps(self.arena.schema.avro, separators=(",", ":"))
            if self.resolving and self.arena.schema.schema_id is not None:
                meta[READER_ID_KEY] = str(self.arena.schema.schema_id)
        with self.shared.encoding:
            t0 = self.clock()
            data = encode_piece(table, self.options, identity or "", meta)
            self._encode_s += self.clock() - t0
        key = self.layout.piece_key(self.topic, self.partition, f.start, from_pos, to_pos, f.bucket)
        faults.point("before_piece_put")
        created = self.store.create(key, data)
        if created.outcome is PutOutcome.EXISTS_OTHER:
            # Same range, same records (Kafka positions are immutable), other bytes: written by an
            # earlier owner with other options. Its rows are ours; use it as it is — unless its
            # identity differs from the file's, which a roll could not merge.
            info = self.store.head(key) or _missing(key)
            layout = self._read_layout(key, info.size)
            other = _identity_of(layout)
            if layout.num_row_groups and other not in (None, f.identity, identity):
                raise IntegrityError(
                    f"{self.where}: staged piece {key} exists with another schema or writer options; "
                    "remove the partition's _staging/ objects of this range and restart"
                )
            foreign = other_writer(writer_of(read_key_value_metadata(layout.footer)), self.shared.group_id)
            if foreign:
                self.log.error(f"piece of this range already {foreign}: {ONE_WRITER}; keeping it", key=key)
            else:
                self.log.warning("piece already existed with other bytes; keeping it", key=key)
            size, etag, rows = info.size, info.etag, layout.num_rows
        else:
            # The ETag S3 gave (the MD5 is not it under SSE-KMS), for the roll's check that
            # the piece is unchanged (_check_pieces); no MD5 of megabytes here.
            layout = piece_layout(data)
            size, etag, rows = len(data), created.etag, table.num_rows
        ref = PieceRef(f.start, from_pos, to_pos, key, size, f.bucket)
        return StagedPiece(ref, layout, rows, etag), len(data)

    def _put_dead_letters(self, dead: list[DeadLetter], from_pos: int, to_pos: int) -> None:
        lines = [
            json.dumps(
                {
                    "topic": self.topic,
                    "partition": self.partition,
                    "topic_id": self.topic_id,  # recovery's checks read these two from the start
                    "group_id": self.shared.group_id,  # who wrote it (None: a replay)
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
    def _rolls_due(self) -> list[FileState]:
        """Files to roll after a flush: full ones, buckets the watermark has passed by the grace,
        and — above --max-open-buckets — the oldest buckets."""
        due = [f for f in self.files.values() if self._file_full(f) or self._bucket_passed(f)]
        if self.bucketing is not None:
            rest = sorted((f for f in self.files.values() if f not in due),
                          key=lambda f: (f.bucket_end or 0, f.bucket))
            due += rest[: max(0, len(rest) - self.config.max_open_buckets)]
        return due

    def _file_full(self, f: FileState) -> bool:
        return self._file_rows_reached(f) or self._file_bytes_reached(f)

    def _file_rows_reached(self, f: FileState) -> bool:
        return self.config.file_rows is not None and f.rows >= self.config.file_rows

    def _file_bytes_reached(self, f: FileState) -> bool:
        """Roll when the next row group would overshoot the byte target by more than it
        undershoots: files land within ± half a row group of the target."""
        if not f.pieces:
            return False
        return f.size + f.pieces[-1].layout.body_len / 2 >= self.config.file_bytes

    def _bucket_passed(self, f: FileState) -> bool:
        """--bucket-grace: records have moved past the bucket's end by the grace, so the bucket
        is (very probably) complete; a later straggler opens a new file in the same bucket.

        That straggler's file is *late* (opened when its bucket was already past the grace): it
        rolls by this rule only once it has been open for the grace itself, so stragglers of one
        old bucket gather in one file per grace interval instead of one file per flush (records
        hours late, e.g. from offline mobile clients, would otherwise shatter the bucket)."""
        if not self._past_grace(f.bucket_end):
            return False
        return not f.late or self.clock() - f.opened_at >= self.config.bucket_grace

    def _past_grace(self, bucket_end: int | None) -> bool:
        """The partition's watermark is past the bucket's end by --bucket-grace."""
        if bucket_end is None or self.watermark is None:
            return False
        return self.watermark >= bucket_end + self.config.bucket_grace * 1000

    # ------------------------------------------------------------------------------------------
    # rolling: pieces → one final file
    # ------------------------------------------------------------------------------------------
    def roll(self) -> None:
        """Finish every open file at the committed position (durable decision first)."""
        if not self._require(PartitionState.READY):
            return
        self._guarded_roll(list(self.files.values()))

    def _guarded_roll(self, files: list[FileState]) -> None:
        try:
            self._roll_files(files)
        except PartitionFenced:
            self.state = PartitionState.FENCED
            raise
        except BaseException:
            self.state = PartitionState.BROKEN
            raise

    def _roll_files(self, files: list[FileState]) -> None:
        for f in sorted(files, key=lambda f: (f.bucket_end or 0, f.bucket)):
            self._roll(f)

    def _roll(self, f: FileState) -> None:
        if not f.pieces:
            return
        assert self.committed is not None
        end = self.committed
        marker = self.layout.roll_marker_key(self.topic, self.partition, f.start, end, f.bucket)
        self.store.put_if_absent(marker, b"")
        faults.point("after_marker_put")
        # Re-commit the same position: a member that lost the partition fails here and stops
        # before it can publish a final file.
        self.positions.commit(self.topic, self.partition, end, self._note(self._held_after_roll(f)))
        self._finish_roll(f, end)
        del self.files[f.bucket]

    def _held_after_roll(self, f: FileState) -> str:
        """What a roll's re-commit says holds the rows below the position: the final file, unless
        other bucket files stay open (--partition-by). Every flush writes a piece into each of
        them, so they still hold their rows below it staged: the note says so, and recovery then
        checks they are all still there. A roll of one bucket file (over --max-open-buckets, or
        old) used to say "rolled", which turned those checks off: a bucket file deleted from
        _staging/ after it went unseen and its rows were lost (found by
        tests/unit/test_group_history.py)."""
        others = any(g.pieces for bucket, g in self.files.items() if bucket != f.bucket)
        return STAGED if others else ROLLED

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

    def _check_no_overlap(self, start: int, end: int, bucket: str = "") -> None:
        """No other final file of the partition (of the bucket) may hold any position of [start, end)."""
        starts = sorted(s for s in self._final_starts_near(start, bucket) if s != start)
        inside = [s for s in starts if start < s < end]
        before = [s for s in starts if s < start]
        clash: tuple[int, int] | None = None
        if inside:
            clash = self._final_range(inside[0], bucket)
        elif before:
            prev = self._final_range(before[-1], bucket)
            if prev[1] > start:
                clash = prev
        if clash is None:
            return
        foreign = other_writer(self._final_writers.get((bucket, clash[0])), self.shared.group_id)
        if foreign:
            raise IntegrityError(
                f"{self.where}: the file [{start}, {end}) would overlap the final file "
                f"[{clash[0]}, {clash[1]}) {foreign}: {ONE_WRITER}. Nothing was published."
            )
        raise IntegrityError(
            f"{self.where}: the file [{start}, {end}) would overlap the final file "
            f"[{clash[0]}, {clash[1]}): the group's offsets were moved backwards (reset?). "
            "Nothing was published. To re-export history use `consumer replay` to another "
            f"prefix; to continue here, move the group's offset to {max(end, clash[1])}."
        )

    def _finish_roll(self, f: FileState, end: int) -> None:
        t0 = self.clock()
        final_key = self.layout.final_key(self.topic, self.partition, f.start, f.bucket)
        staging = self.layout.file_staging_dir(self.topic, self.partition, f.start, f.bucket)
        listing = {o.key: o for o in self.store.list(staging)}
        if self.bucketing is not None:
            # The rolled high-water: recovery refuses a committed position below it (a backward
            # reset into buckets whose files are all final) with one LIST. Written after the
            # marker and the fencing re-commit, before the final file can exist. It holds the
            # topic's id, which recovery compares when no staged piece is left to read it from.
            # Its user metadata names the writer, for a group that adopts its end (the body stays
            # the id alone, which earlier versions read).
            self.store.put_if_absent(self.layout.rolled_key(self.topic, self.partition, end),
                                     (self.topic_id or "").encode(),
                                     {k: quote(v, safe="") for k, v in self._writer_names().items()})
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
            self._check_no_overlap(f.start, end, f.bucket)
        layouts = [p.layout for p in with_rows]
        kv = {
            "kafka.topic": self.topic,
            "kafka.partition": str(self.partition),
            FROM_KEY: str(f.start),
            TO_KEY: str(end),
            "kafka.row_groups": str(len(layouts)),
        }
        if self.topic_id:  # the newest pieces' (the first one's may name an id accepted away)
            kv[TOPIC_ID_KEY] = self.topic_id
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
            except FileNotFoundError as gone:
                # The pieces vanished mid-merge: only the owner that finished this roll deletes
                # them, and only after its final file is durable — then that file is ours too.
                # With no final file, someone else deleted them after the check above: said as
                # that check says it, not as an unexpected error (found by
                # tests/unit/test_group_history.py).
                if self.store.head(final_key) is None:
                    raise IntegrityError(
                        f"{self.where}: a staged piece of the file [{f.start}, {end}) vanished while it "
                        f"was rolled (removed by someone else: a lifecycle rule on _staging/, a "
                        f"clean-up?): {gone}. Nothing was published. Restore it (a versioned bucket "
                        "keeps it) before the next run, which otherwise stops on it too."
                    ) from gone
        faults.point("after_final_put")
        info = self.store.head(final_key) or _missing(final_key)
        try:
            final_layout = self._read_layout(final_key, info.size)
        except ParquetMergeError as exc:
            raise IntegrityError(f"final file {final_key} does not read back: {exc}") from exc
        meta = read_key_value_metadata(final_layout.footer)
        foreign = other_writer(writer_of(meta), self.shared.group_id)
        if (meta.get(FROM_KEY) != str(f.start) or meta.get(TO_KEY) != str(end)) and foreign:
            raise IntegrityError(
                f"final file s3://…/{final_key} exists with positions "
                f"[{meta.get(FROM_KEY)}, {meta.get(TO_KEY)}) but this roll covers [{f.start}, {end}); "
                f"it was {foreign}: {ONE_WRITER}. Nothing of that file was changed."
            )
        if meta.get(FROM_KEY) != str(f.start) or meta.get(TO_KEY) != str(end):
            raise IntegrityError(
                f"final file s3://…/{final_key} exists with positions "
                f"[{meta.get(FROM_KEY)}, {meta.get(TO_KEY)}) but this roll covers [{f.start}, {end}): "
                "the prefix holds output of another run (were the group's offsets reset?). "
                "Use a new --output prefix or remove the old files."
            )
        if outcome is PutOutcome.CREATED and info.size != expected_size:
            raise IntegrityError(f"final file {final_key} is {info.size} bytes, expected {expected_size}")
        _remember(self._final_ends, (f.bucket, f.start), end)
        self._note_final(f.bucket, f.start)
        unnamed: list[str] = []
        if self.bucketing is None and f.start >= self._newest_final.get("", f.start):
            unnamed = self._name_newest_final(f.start, end, meta)
        if listing or unnamed:
            self.store.delete([*listing, *unnamed])
        faults.point("after_piece_delete")
        if self.bucketing is not None:
            older = [o.key for o in self.store.list(self.layout.rolled_dir(self.topic, self.partition))
                     if (e := self.layout.parse_rolled(o.key)) is not None and e < end]
            if older:
                self.store.delete(older)
        self.files_rolled += 1
        self.counters.rolled(info.size)
        self.log.info(
            "file rolled",
            key=final_key,
            bucket=f.bucket or None,
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
        return self.state is PartitionState.READY and not self.pending and not self.files


# confluent_kafka.Message.value, called from C by map() to cut Confluent-framed runs.
_msg_value = methodcaller("value")


def _identity_of(layout: PieceLayout) -> str | None:
    return read_key_value_metadata(layout.footer).get(SCHEMA_FINGERPRINT_KEY) or None


@dataclass(frozen=True)
class NewestDeadLetters:
    """What recovery reads of a partition's newest dead-letter object when nothing newer holds
    output: where it ends, and the topic id and writer its first line names (None: not named)."""

    end: int
    topic_id: str | None
    writer: str | None


@dataclass(frozen=True)
class NamedFinal:
    """What the plain layout's ``_newest_final/<start>`` object says of the file it names: its
    range, the topic id it was read from and its writer. Empty in objects written by earlier
    versions, which named only the start."""

    start: int
    end: int
    topic_id: str | None
    writer: str | None

    def body(self) -> bytes:
        return json.dumps({"end": self.end, "topic_id": self.topic_id, "writer": self.writer}).encode()

    @staticmethod
    def parse(start: int, body: bytes) -> NamedFinal | None:
        """None for an empty body (an earlier version's) or anything this code did not write."""
        try:
            said = json.loads(body)
            end, topic_id, writer = said["end"], said.get("topic_id"), said.get("writer")
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        if not isinstance(end, int) or end <= start:
            return None
        return NamedFinal(start, end, topic_id if isinstance(topic_id, str) else None,
                          writer if isinstance(writer, str) else None)


@dataclass(frozen=True)
class OutputListing:
    """What one listing of an output's topic folder, of its staging and of its dead letters found:
    the final files (key, size), the staged objects (key, size) and the dead-letter objects
    (partition, from, to), of every partition."""

    finals: tuple[tuple[str, int], ...]
    staged: tuple[tuple[str, int], ...]
    dead_letters: tuple[tuple[int, int, int], ...] = ()

    @classmethod
    def of(cls, store: Any, layout: Layout, topic: str) -> OutputListing:
        letters = (layout.parse_dead_letter_of_topic(topic, o.key)
                   for o in store.list(layout.dead_letter_topic_dir(topic)))
        return cls(tuple((o.key, o.size) for o in store.list(layout.topic_dir(topic))),
                   tuple((o.key, o.size) for o in store.list(layout.topic_staging_dir(topic))),
                   tuple(d for d in letters if d is not None))


@dataclass(frozen=True)
class MovedIn:
    """What a partition's ``_moved/`` folder says (:meth:`PartitionWorker._moved_in`)."""

    #: the newest position the group moved to this output at from another one (None: no move)
    position: int | None
    #: the newest position the group went on from here, moved in or with no note (None: none)
    went_on: int | None
    #: the topic id the newest one names (None: not read, or not known)
    topic_id: str | None = None
    #: what the committed position outdates: positions gone on from with no note above it, and
    #: moves away (the group writes here again); deleted with what the plan deletes
    stale: tuple[str, ...] = ()
    #: with no committed position: where the group moved from this output to another one, when
    #: nothing here is newer, and that output (None: not left, or not said)
    left_at: int | None = None
    left_for: str | None = None
    #: with a committed position naming another output (a run back here): where the group last
    #: left this output with the rows below staged here (None: not so, or not said)
    left_staged_at: int | None = None
    #: the move the committed position's note says, to keep (position, the output the group
    #: came from, what held the rows there): :meth:`PartitionWorker._keep_a_move_once_checked`
    keep: tuple[int, str, str] | None = None

    @property
    def moved_to(self) -> str | None:
        """The other output, where the group was before it came back here, as :attr:`keep` says
        (None: no move to keep); recovery's ``moved_to``."""
        return self.keep[1] if self.keep is not None else None


class OtherOutputListings:
    """Listings of the outputs a group moved to, shared by the recoveries of one rebalance: each
    partition's recovery in an output the group went back to reads the other output's ranges
    (:meth:`PartitionWorker._held_where_the_group_moved`), and the topic folder holds every
    partition (and in the time-bucketed layout, every bucket before the partition), so P
    recoveries made P listings of all of it. A listing is reused for ``ttl`` seconds; an older
    one can only miss files written since, which keeps more staged rows, never fewer. Recoveries
    run side by side (consumer.side_by_side): one lists while the others wait for it."""

    def __init__(self, ttl: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self._clock = ttl, clock
        self._lock = threading.Lock()
        self._listed: dict[tuple[str, str], tuple[float, OutputListing]] = {}

    def get(self, output: str, topic: str, make: Callable[[], OutputListing]) -> OutputListing:
        with self._lock:
            known = self._listed.get((output, topic))
            if known is not None and self._clock() - known[0] < self.ttl:
                return known[1]
            listing = make()
            self._listed[(output, topic)] = (self._clock(), listing)
            return listing


def held_ranges(store: Any, layout: Layout, topic: str, below: dict[int, int],
                listing: OutputListing | None = None) -> dict[int, Ranges]:
    """The [from, to) ranges of the files, final or still open, and of the dead-letter objects that
    ``layout``'s output holds of each partition ``p`` of ``topic`` in ``below``, starting below
    ``below[p]``. One listing of the topic's folder, one of its staging and one of its dead letters
    (``listing``, if given), and a footer read for each final file that starts low enough (files a
    group moved to start where it moved: few start below another output's open file). A flush of
    bad records only leaves a dead-letter object and no file: its records are in that output too.
    Without them, a run back found its own uncommitted dead letters across the position the other
    output committed and stopped (status 5), and rows staged here across such a range were kept in
    both outputs (found by tests/unit/test_group_history.py)."""
    listing = listing or OutputListing.of(store, layout, topic)
    out: dict[int, Ranges] = {p: [] for p in below}
    for key, size in listing.finals:
        named = Layout.parse_final_name(key)
        if named is not None and named[1] in below and named[2] < below[named[1]]:
            end = final_end(store, key, size)
            if end is not None:
                out[named[1]].append((named[2], end))
    for (_topic, p), refs in staged_of(layout, list(listing.staged), (topic,)).items():
        if p in below:
            out[p] += [(r.from_pos, r.to_pos) for r in refs if isinstance(r, PieceRef)]
    for p, frm, to in listing.dead_letters:
        if p in below and frm < below[p]:
            out[p].append((frm, to))
    return out


#: What a ``_moved/<M>.away`` object says while ``consumer finish`` makes the files left there
#: final: written before its first roll, replaced by ROLLED after its last. Beside STAGED (the
#: group's note when it left), it tells a finish cut short after its rolls (nothing staged: they
#: are final) from a clean-up that deleted every staged object (nothing staged, still STAGED: the
#: rows are gone, and the finish stops). Under --partition-by nothing else can tell them apart: a
#: bucket file the run rolled at M leaves the same ``_rolled/`` name as a finish's rolls.
FINISHING = "finishing"


def left_staged(held: str | None) -> bool:
    """Whether an ``.away`` object's ``held`` says the rows below M were staged in that output
    when the group left it, and are not all final yet (STAGED, or FINISHING: a finish began)."""
    return held in (STAGED, FINISHING)


def held_when_left(store: Any, key: str) -> str | None:
    """What a ``_moved/<M>.away`` object says the group's note said held the rows below M when
    the group left that output (None: unreadable, or written by an earlier version)."""
    held = away_body(store, key).get("held")
    return held if isinstance(held, str) else None


def away_body(store: Any, key: str) -> dict[str, object]:
    """The ``_moved/<M>.away`` object at ``key`` ({}: gone or unreadable). One GET."""
    try:
        body = json.loads(store.get(key))
    except (FileNotFoundError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def mark_held(store: Any, key: str, held: str, **more: object) -> None:
    """Set ``held`` (and ``more``) in the ``.away`` object at ``key``: a conditional overwrite
    (the ETag read); one changed meanwhile, or gone, is left as it is."""
    info = store.head(key)
    if info is None:
        return
    body = away_body(store, key)
    new = {**body, "held": held, **more}
    if body and new != body:
        store.replace_if_match(key, json.dumps(new).encode(), info.etag)


def bucket_file_final(store: Any, layout: Layout, topic: str, partition: int, file: object) -> bool:
    """Whether the bucket file ``file`` ([bucket, start], as a FINISHING ``.away`` names it) is
    final: its final file exists and its footer says where it ends (a HEAD and a footer read)."""
    if not (isinstance(file, list) and len(file) == 2 and isinstance(file[0], str)
            and isinstance(file[1], int)):
        return False
    info = store.head(layout.final_key(topic, partition, file[1], file[0]))
    return info is not None and final_end(store, info.key, info.size) is not None


def warn_held_in_both(log: Any, refs: Sequence[PieceRef | RollMarker], held: Ranges, cut: int,
                      **fields: Any) -> None:
    """Say which staged rows the output the group moved to holds as well, from within a piece
    that cannot be cut at ``cut`` (consumer.recovery.held_in_both): they stay in both outputs."""
    if both := held_in_both(refs, held, cut):
        log.warning(
            "staged rows here are in the output the group moved to as well, from within a piece "
            "that cannot be cut: they stay in both outputs (`consumer verify --with-output` "
            "counts them as duplicates)", **fields, in_both=[list(r) for r in both],
        )


def footer_metadata(store: Any, key: str, size: int) -> dict[str, str]:
    """The key-value metadata of a Parquet object's footer (one ranged read)."""
    def fetch(start: int, end: int) -> bytes:
        data: bytes = store.get(key, start, end)
        return data

    return read_key_value_metadata(read_layout(fetch, size).footer)


def final_end(store: Any, key: str, size: int) -> int | None:
    """The end of a final file's Kafka range, from its footer; None for a file that names none (not
    this consumer's: it holds nothing the cut may count on, so more staged rows are kept)."""
    try:
        return int(footer_metadata(store, key, size)[TO_KEY])
    except (KeyError, ValueError):  # no such key, or no Parquet footer (ParquetMergeError)
        return None


def _named(output: str) -> str:
    """An output as a command names it: a long one, which a commit note names by its hash, as a
    placeholder."""
    return "<the earlier s3:// output>" if output.startswith("sha256:") else output


def writer_of(meta: Mapping[str, str]) -> str | None:
    """Who wrote a piece or final file, from its footer: the consumer group it names,
    :data:`REPLAY_WRITER` for a replay's, None for one written before pieces named their writer."""
    if GROUP_KEY in meta:
        return meta[GROUP_KEY]
    return REPLAY_WRITER if meta.get(REPLAY_KEY) == "true" else None


def _missing(key: str) -> Any:
    raise FileNotFoundError(f"expected object {key} is missing")


#: How many buckets (final-file ends) a worker remembers: a long-running worker rolls without end,
#: and under --partition-by opens a new bucket every hour or day, so the caches must not grow.
_REMEMBERED = 64

_K = TypeVar("_K")
_V = TypeVar("_V")


def _remember(cache: dict[_K, _V], key: _K, value: _V) -> None:
    """Set ``cache[key]``, forgetting the least recently set entry beyond :data:`_REMEMBERED`."""
    cache.pop(key, None)
    cache[key] = value
    if len(cache) > _REMEMBERED:
        del cache[next(iter(cache))]
