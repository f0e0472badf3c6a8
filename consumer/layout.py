"""Object keys: where pieces, roll markers, final files and dead letters live.

Every key is a pure function of (prefix, topic, partition, Kafka positions), so the same input range
always lands under the same key: replays and recoveries overwrite nothing and duplicate nothing.

Final files are Hive-style (``topic=…/partition=…/``) so DuckDB, Spark, Trino and pyarrow.dataset
read the prefix as one table. Everything the protocol keeps on the side lives under folders that
start with an underscore (Hive/Spark/pyarrow ignore those) *and* uses suffixes other than
``.parquet``, so even a plain ``read_parquet('prefix/**/*.parquet')`` in DuckDB sees final files only.

Layout under ``prefix``::

    topic=<t>/partition=<p>/<t>+<p>+<first position, 20 digits>.parquet        final file (¹)
    _staging/topic=<t>/partition=<p>/<file first, 20d>/<from, 20d>-<to, 20d>.piece
    _staging/topic=<t>/partition=<p>/<file first, 20d>/roll-<end, 20d>          roll marker
    _dead_letters/topic=<t>/partition=<p>/<from, 20d>-<to, 20d>.jsonl
    _state/topic=<t>/partition=<p>                                               replay positions

(¹) prefixed with ``kafka-`` when the topic starts with '_' or '.', which readers treat as hidden.

With ``--partition-by`` (consumer/bucketing.py) every file also has a *bucket* path such as
``dt=2026-11-30/hr=06``; it goes between topic and partition for final files (so the bucket
columns come from the path) and between partition and file start in staging::

    topic=<t>/<bucket>/partition=<p>/<t>+<p>+<first, 20d>.parquet
    _staging/topic=<t>/partition=<p>/<bucket>/<file first, 20d>/<from, 20d>-<to, 20d>.piece
    _staging/topic=<t>/partition=<p>/<bucket>/<file first, 20d>/roll-<end, 20d>
    _rolled/topic=<t>/partition=<p>/<end, 20d>          the highest end of a rolled bucket file

In either layout, ``_moved/topic=<t>/partition=<p>/<position, 20d>`` says that the group moved to
this output from another one (``--output`` changed) at that position: the records below it are
there. ``<position, 20d>.unnoted``: the group went on from a position with no note (an operator's
reset, perhaps a move as well) that nothing here reached. ``<position, 20d>.away``: the group moved
from this output to another one at that position (consumer.worker, :class:`MovedIn`).

The plain layout is the empty bucket: its keys are byte for byte those above.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

#: Suffixes of a ``_moved/`` name: a move to this output (none), a position gone on from here
#: without a note, a move from this output to another.
MOVED_IN, UNNOTED, AWAY = "", ".unnoted", ".away"
_TOPIC_RE = re.compile(r"[A-Za-z0-9._-]{1,249}")
_SEGMENT = r"[A-Za-z][A-Za-z0-9_]*=[A-Za-z0-9._-]+"
_BUCKET = r"(?:(?P<bucket>" + _SEGMENT + r"(?:/" + _SEGMENT + r")*)/)?"
_PIECE_RE = re.compile(r"^" + _BUCKET + r"(?P<file>\d{20})/(?P<from>\d{20})-(?P<to>\d{20})\.piece$")
_MARKER_RE = re.compile(r"^" + _BUCKET + r"(?P<file>\d{20})/roll-(?P<end>\d{20})$")
_STAGED_RE = re.compile(r"topic=(?P<topic>[^/]+)/partition=(?P<partition>\d+)/")
_ROLLED_RE = re.compile(r"^(?P<end>\d{20})$")
_DEAD_RE = re.compile(r"^(?P<from>\d{20})-(?P<to>\d{20})\.jsonl$")
_FINAL_RE = re.compile(
    r"^(?:kafka-)?(?P<topic>[A-Za-z0-9._-]+)\+(?P<partition>\d+)\+(?P<first>\d{20})\.parquet$"
)


@dataclass(frozen=True, order=True)
class PieceRef:
    """A staged row group: rows at Kafka positions ``[from_pos, to_pos)`` of file ``file_start``."""

    file_start: int
    from_pos: int
    to_pos: int
    key: str
    size: int = 0
    bucket: str = ""  # the time bucket's path (--partition-by); "" in the plain layout


@dataclass(frozen=True, order=True)
class RollMarker:
    """A durable decision: file ``file_start`` ends at position ``end``."""

    file_start: int
    end: int
    key: str
    bucket: str = ""


@dataclass(frozen=True)
class Layout:
    """Key naming for one output prefix (``prefix`` has no leading or trailing slash)."""

    prefix: str

    def _join(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    # -- final files -------------------------------------------------------------------------
    def partition_dir(self, topic: str, partition: int, bucket: str = "") -> str:
        return self._join(f"topic={topic}", bucket, f"partition={partition}") + "/"

    def topic_dir(self, topic: str) -> str:
        return self._join(f"topic={topic}") + "/"

    def final_key(self, topic: str, partition: int, file_start: int, bucket: str = "") -> str:
        """``<t>+<p>+<first>.parquet``; topics starting with '_' or '.' (valid in Kafka) get a
        ``kafka-`` prefix, since readers treat such file names as hidden."""
        name = f"{topic}+{partition}+{file_start:020d}.parquet"
        if name.startswith(("_", ".")):
            name = "kafka-" + name
        return self.partition_dir(topic, partition, bucket) + name

    @staticmethod
    def bucket_names(bucket: str) -> tuple[str, ...]:
        """The Hive column names of a bucket folder: ``'dt=2024-03-01/hr=08'`` → ``('dt', 'hr')``."""
        return tuple(seg.split("=", 1)[0] for seg in bucket.split("/"))

    @staticmethod
    def parse_final_name(name: str) -> tuple[str, int, int] | None:
        """``'t+3+000…42.parquet'`` → ``('t', 3, 42)``; None for anything else."""
        m = _FINAL_RE.match(name.rsplit("/", 1)[-1])
        if not m:
            return None
        return m["topic"], int(m["partition"]), int(m["first"])

    # -- staging -----------------------------------------------------------------------------
    def staging_root(self) -> str:
        """The folder every staged object of this prefix lives under."""
        return self._join("_staging") + "/"

    def topic_staging_dir(self, topic: str) -> str:
        """The folder every staged object of ``topic``'s partitions lives under."""
        return self._join("_staging", f"topic={topic}") + "/"

    def staging_dir(self, topic: str, partition: int) -> str:
        return self._join("_staging", f"topic={topic}", f"partition={partition}") + "/"

    def staged_partition(self, key: str) -> tuple[str, int] | None:
        """The (topic, partition) a key listed under :meth:`staging_root` is staged for, or None."""
        root = self.staging_root()
        m = _STAGED_RE.match(key, len(root)) if key.startswith(root) else None
        return (m["topic"], int(m["partition"])) if m else None

    def staged_partitions(self, keys: Iterable[str]) -> dict[str, set[int]]:
        """The partitions, by topic, that ``keys`` (listed under :meth:`staging_root`) hold staged
        objects of: the partitions with a file open (or a roll not finished)."""
        out: dict[str, set[int]] = {}
        for where in map(self.staged_partition, keys):
            if where is not None:
                out.setdefault(where[0], set()).add(where[1])
        return out

    def file_staging_dir(self, topic: str, partition: int, file_start: int, bucket: str = "") -> str:
        return self.staging_dir(topic, partition) + (f"{bucket}/" if bucket else "") + f"{file_start:020d}/"

    def piece_key(
        self, topic: str, partition: int, file_start: int, from_pos: int, to_pos: int, bucket: str = ""
    ) -> str:
        return (self.file_staging_dir(topic, partition, file_start, bucket)
                + f"{from_pos:020d}-{to_pos:020d}.piece")

    def roll_marker_key(self, topic: str, partition: int, file_start: int, end: int, bucket: str = "") -> str:
        return self.file_staging_dir(topic, partition, file_start, bucket) + f"roll-{end:020d}"

    def rolled_dir(self, topic: str, partition: int) -> str:
        """Where the partition's "rolled high-water" objects live (bucketed layout only)."""
        return self._join("_rolled", f"topic={topic}", f"partition={partition}") + "/"

    def rolled_key(self, topic: str, partition: int, end: int) -> str:
        return self.rolled_dir(topic, partition) + f"{end:020d}"

    @staticmethod
    def parse_rolled(key: str) -> int | None:
        m = _ROLLED_RE.match(key.rsplit("/", 1)[-1])
        return int(m["end"]) if m else None

    def newest_final_dir(self, topic: str, partition: int) -> str:
        """Where the plain layout names its newest final file (one object: ``<file start>``), so
        that recovery lists the final folder from there instead of from the beginning."""
        return self._join("_newest_final", f"topic={topic}", f"partition={partition}") + "/"

    def newest_final_key(self, topic: str, partition: int, file_start: int) -> str:
        return self.newest_final_dir(topic, partition) + f"{file_start:020d}"

    @staticmethod
    def parse_newest_final(key: str) -> int | None:
        return Layout.parse_rolled(key)  # the same 20-digit name: a position

    def moved_topic_dir(self, topic: str) -> str:
        return self._join("_moved", f"topic={topic}") + "/"

    def moved_dir(self, topic: str, partition: int) -> str:
        """Where the positions the group moved to this output at are kept (one object a move)."""
        return self.moved_topic_dir(topic) + f"partition={partition}/"

    def moved_key(self, topic: str, partition: int, position: int, kind: str = MOVED_IN) -> str:
        return self.moved_dir(topic, partition) + f"{position:020d}" + kind

    @staticmethod
    def parse_moved(key: str) -> tuple[int, str] | None:
        """``…/<position>[<kind>]`` → (position, kind), kind one of MOVED_IN, UNNOTED, AWAY."""
        name = key.rsplit("/", 1)[-1]
        kind = next((k for k in (UNNOTED, AWAY) if name.endswith(k)), MOVED_IN)
        at = Layout.parse_rolled(name[: len(name) - len(kind)])
        return None if at is None else (at, kind)

    def parse_moved_of_topic(self, topic: str, key: str) -> tuple[int, int, str] | None:
        """A key listed under :meth:`moved_topic_dir` → (partition, position, kind)."""
        where = _in_partition_folder(self.moved_topic_dir(topic), key)
        moved = self.parse_moved(where[1]) if where is not None else None
        return None if moved is None or where is None else (where[0], *moved)

    def parse_staging_key(
        self, topic: str, partition: int, key: str, size: int = 0
    ) -> PieceRef | RollMarker | None:
        """Classify a key listed under :meth:`staging_dir`; None for anything we did not write."""
        base = self.staging_dir(topic, partition)
        if not key.startswith(base):
            return None
        rest = key[len(base) :]
        m = _PIECE_RE.match(rest)
        if m:
            return PieceRef(int(m["file"]), int(m["from"]), int(m["to"]), key, size, m["bucket"] or "")
        m = _MARKER_RE.match(rest)
        if m:
            return RollMarker(int(m["file"]), int(m["end"]), key, m["bucket"] or "")
        return None

    # -- side outputs ------------------------------------------------------------------------
    def dead_letter_key(self, topic: str, partition: int, from_pos: int, to_pos: int) -> str:
        return self.dead_letter_dir(topic, partition) + f"{from_pos:020d}-{to_pos:020d}.jsonl"

    def dead_letter_dir(self, topic: str, partition: int) -> str:
        return self._join("_dead_letters", f"topic={topic}", f"partition={partition}") + "/"

    def dead_letter_topic_dir(self, topic: str) -> str:
        """The folder every dead-letter object of ``topic``'s partitions lives under."""
        return self._join("_dead_letters", f"topic={topic}") + "/"

    def parse_dead_letter_of_topic(self, topic: str, key: str) -> tuple[int, int, int] | None:
        """A key listed under :meth:`dead_letter_topic_dir` → (partition, from, to)."""
        where = _in_partition_folder(self.dead_letter_topic_dir(topic), key)
        rng = self.parse_dead_letter_range(where[1]) if where is not None and "/" not in where[1] else None
        return None if rng is None or where is None else (where[0], *rng)

    @staticmethod
    def parse_dead_letter_range(key: str) -> tuple[int, int] | None:
        """``…/<from>-<to>.jsonl`` → (from, to); None for anything else."""
        m = _DEAD_RE.match(key.rsplit("/", 1)[-1])
        return (int(m["from"]), int(m["to"])) if m else None

    def probe_key(self, name: str) -> str:
        """Where the start-up probe of conditional writes puts (and removes) its object."""
        return self._join("_probe", name)

    def state_key(self, topic: str, partition: int) -> str:
        return self._join("_state", f"topic={topic}", f"partition={partition}")


Staged = dict[tuple[str, int], list[PieceRef | RollMarker]]


def _in_partition_folder(base: str, key: str) -> tuple[int, str] | None:
    """A key listed under a topic's folder ``base`` → (partition, the rest of the key after its
    ``partition=<p>/`` folder); None for anything else."""
    folder, _, name = key[len(base):].partition("/") if key.startswith(base) else ("", "", "")
    number = folder.removeprefix("partition=")
    return (int(number), name) if folder.startswith("partition=") and number.isdigit() else None


def staged_of(layout: Layout, keys: list[tuple[str, int]], topics: tuple[str, ...]) -> Staged:
    """The pieces and roll markers among ``keys`` ((key, size) listed under the staging folder)
    of each partition of ``topics`` that has any."""
    out: Staged = {}
    for key, size in keys:
        where = layout.staged_partition(key)
        if where is not None and where[0] in topics:
            ref = layout.parse_staging_key(*where, key, size)
            if ref is not None:
                out.setdefault(where, []).append(ref)
    return out


def check_topic_name(topic: str) -> None:
    """Kafka topic names are ``[A-Za-z0-9._-]{1,249}``; anything else cannot come from Kafka."""
    if not _TOPIC_RE.fullmatch(topic):
        raise ValueError(f"invalid Kafka topic name {topic!r}: use letters, digits, '.', '_' or '-'")
