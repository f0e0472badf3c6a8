"""A consumer group's bad day, drawn by hypothesis: members join, leave, are killed (kill -9), expelled
by the coordinator, or held in the middle of a recovery, a flush or a roll (before any S3 request)
while the others go on — a zombie that wakes up later — or stopped by an S3 call that keeps failing
or whose reply is lost after it took effect, by a Kafka commit that fails (before or after the
coordinator took it), or by a read of the committed offsets that fails (for good, or once and
retriable, then asked again); an operator stops the group and resets a partition's offset (expired,
moved to the latest, re-set where it is without the consumer's note, moved backwards), or the group
stays down until retention deletes records it had not read; a clean-up deletes a staged object
(which must stop the restart with status 5 and nothing changed, the operator then restoring it, or
lose nothing); a lifecycle rule keeping N days of output expires its oldest final files and dead
letters (which are then in no file, or in one written again); an operator adds a partition, deletes
the topic and creates it again (after which nothing of the new topic may land beside the old one's
output), or rolls out other budgets, Kafka columns or compression to the members started from then
on, or another ``--output`` (members started since write there while the others go on where they
did; the deployment may roll back; the output left is then made final by ``consumer finish``, and
staged objects deleted there stop it, or a run back, with status 5 until restored; offsets reset
while no note says where the group moved are not drawn: README, "Moving --output"); and records
keep arriving on several partitions, some of them malformed (and, with the Confluent
framing, of versions of the subject registered meanwhile, each a new reader schema that rolls the
open files). A reset backwards must stop the run with status 5 and the partition's objects unchanged
(the operator then undoes it), or go on; lost records must stop it with status 5 too, after its
recovery (the operator then moves the offset to the log start), unless nothing committed reached
them. Whatever the order, once the survivors stop and one member catches up, every good record's
offset is in exactly one final file and every bad one's in a dead letter (but those skipped by a
reset to the latest or deleted unread, which are in at most one final file, and those a piece of
the output the group left holds past where the other begins, which a warning names), no final file holds a
bad record's offset, and no member stopped with an error other than the injected ones.

The members are real :class:`~consumer.runner.GroupRunner` loops on the in-memory broker and store,
each on its own thread, taking turns: a member runs until its next ``consume()`` (or its next S3
request, when the step says so) only when the test lets it, so a drawn history replays exactly.
"""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from types import SimpleNamespace
from typing import Any
from unittest.mock import patch

import fastavro
import pyarrow.parquet as pq
from confluent_kafka import KafkaError
from hypothesis import example, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from consumer import positions, side_by_side
from consumer import worker as worker_module
from consumer.config import Config
from consumer.decoding import Decoder, load_schema
from consumer.errors import EXIT_CONFIG, EXIT_FATAL, EXIT_OK, EXIT_STORAGE, IntegrityError
from consumer.finish import FinishRunner
from consumer.runner import GroupRunner, Runner
from consumer.samples import encode_raw, make_record, parsed_schema
from consumer.storage import TransientStorageError
from consumer.testing import Crash, MemoryBroker, MemoryConsumer, MemoryRegistry, MemoryStore, memory_runner
from consumer.verify import verify
from consumer.worker import PartitionWorker

PARTITIONS = 4  # the topic's partitions once an operator added one; it starts with 3
CONFIGS: dict[str, dict[str, Any]] = {
    "plain": {"row_group_rows": 4, "file_rows": 10, "batch_size": 5},
    # Each partition's records spread over three hours, shuffled: up to three files open at once.
    "bucketed": {
        "row_group_rows": 4,
        "file_rows": 6,
        "batch_size": 5,
        "partition_by": "dt={ts:%Y-%m-%d}/hr={ts:%H}",
        "max_open_buckets": 2,
        "bucket_grace": 86400.0,
    },
    # Confluent framing, with the subject's versions registered while the group runs: each new
    # version the members meet changes the reader schema, so the open files roll on the spot.
    "evolving": {
        "row_group_rows": 4,
        "file_rows": 10,
        "batch_size": 5,
        "framing": "confluent",
        "schema": None,
        "schema_registry_url": "http://unused",
    },
}
SUBJECT = "t-value"
#: The subject's versions, in the order an "evolve" step registers them: a field dropped, a type
#: promoted (int → long → double), a field added with a default and renamed through an alias.
VERSIONS: list[dict[str, Any]] = [
    {"type": "record", "name": "Evt", "fields": [
        {"name": "id", "type": "long"}, {"name": "n", "type": "int"}, {"name": "old", "type": "string"}]},
    {"type": "record", "name": "Evt", "fields": [
        {"name": "id", "type": "long"}, {"name": "n", "type": "long"},
        {"name": "country", "type": "string", "default": "zz"}]},
    {"type": "record", "name": "Evt", "fields": [
        {"name": "id", "type": "long"}, {"name": "n", "type": "double"},
        {"name": "land", "type": "string", "default": "zz", "aliases": ["country"]}]},
]
#: How a member may end: on its stop, or on its own when S3 keeps failing (the group goes on).
ENDED_WELL = (EXIT_OK, EXIT_STORAGE)
#: ... and one whose commit the coordinator refused for good (not a fencing) ends with status 5.
REFUSED_COMMIT = (*ENDED_WELL, EXIT_FATAL)
#: ... and one whose group the coordinator stopped authorizing (an ACL taken away) with status 2.
DENIED_COMMIT = (*ENDED_WELL, EXIT_CONFIG)
#: ``time`` as consumer.positions sees it here: retries of a commit or a read go on at once.
NO_WAITING = SimpleNamespace(monotonic=time.monotonic, sleep=lambda _seconds: None)
WAIT = 30.0  # seconds a member may take from one consume() to the next: more is a hang


class Clock:
    """Time stands still: flushes and rolls come from the row budgets only, so a history replays."""

    def __call__(self) -> float:
        return 1000.0


class Broker(MemoryBroker):
    """The memory broker, whose ``n``-th commit from now fails as a drawn step says."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_commit: list[int] = []  # [commits to go, how]
        self.on_refused: Any = lambda: None  # called on the thread whose commit is refused for good
        self.on_denied: Any = lambda: None  # ... whose commit is refused as not authorized
        #: [reads to go, how]: that read of committed offsets by a member answers an error for each
        #: partition: for good (the coordinator away past the client's retries, an ACL revoked), or
        #: once and retriable (a transactional producer's offsets not stable yet)
        self.fail_read: list[int] = []

    def consumer_factory(self) -> Any:
        return lambda conf: Consumer(self, conf)

    def read_fails(self) -> Any:
        """Called by a member's read of committed offsets: the error this one answers, or None."""
        from confluent_kafka import KafkaError

        if not self.fail_read:
            return None
        self.fail_read[0] -= 1
        if self.fail_read[0] > 0:
            return None
        how = self.fail_read[1]
        self.fail_read.clear()
        if how == READ_UNSTABLE:
            return KafkaError(KafkaError.UNSTABLE_OFFSET_COMMIT, "injected", retriable=True)
        self.on_refused()
        return KafkaError(KafkaError.COORDINATOR_NOT_AVAILABLE, "injected: for good", retriable=False)

    def _commit(self, consumer: MemoryConsumer, offsets: Sequence[Any]) -> None:
        from confluent_kafka import KafkaError, KafkaException

        if self.fail_commit:
            self.fail_commit[0] -= 1
            if self.fail_commit[0] == 0:
                how = self.fail_commit[1]
                self.fail_commit.clear()
                if how == COMMIT_UNAVAILABLE:  # the coordinator moves: retried
                    moved = KafkaError(KafkaError.COORDINATOR_NOT_AVAILABLE, "injected", retriable=True)
                    raise KafkaException(moved)
                if how == COMMIT_TOOK_EFFECT:  # the coordinator took it, the reply said otherwise
                    super()._commit(consumer, offsets)
                if how == COMMIT_NOT_AUTHORIZED:  # READ on the group taken away (and given back)
                    self.on_denied()
                    denied = KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED, "injected", retriable=False)
                    raise KafkaException(denied)
                self.on_refused()
                # refused for good, and not an ACL (that is status 2: test_kafka_acls.py)
                refused = KafkaError(KafkaError.INVALID_COMMIT_OFFSET_SIZE, "injected", retriable=False)
                raise KafkaException(refused)
        super()._commit(consumer, offsets)


@dataclass
class _Answer:
    """One partition of a failed OffsetFetch answer, as confluent-kafka's TopicPartition reads."""

    topic: str
    partition: int
    error: Any
    offset: int = -1001
    metadata: str = ""


class Consumer(MemoryConsumer):
    """The memory consumer, whose reads of committed offsets fail as a drawn step says."""

    broker: Broker

    def committed(self, partitions: Sequence[Any], timeout: float | None = None) -> list[Any]:
        out = super().committed(partitions, timeout)
        error = self.broker.read_fails()
        if error is not None:
            return [_Answer(tp.topic, tp.partition, error) for tp in out]
        return out


COMMIT_UNAVAILABLE, COMMIT_REFUSED, COMMIT_TOOK_EFFECT, COMMIT_NOT_AUTHORIZED = range(4)
READ_REFUSED, READ_UNSTABLE = range(2)
#: An operator's reset of one partition's offset, with the group stopped.
RESET_EXPIRED, RESET_TO_LATEST, RESET_TO_CURRENT = range(3)


@dataclass
class Member:
    """One runner on its own thread, parked at the start of each ``consume()`` until let go."""

    runner: Any
    go: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    parked: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    killed: bool = False
    refused: bool = False  # a commit of its was refused for good: it may end with status 5
    denied: bool = False  # ... refused as not authorized (an ACL): it may end with status 2
    asks_operator: bool = False  # it stopped with status 5 on a reset backwards or lost records
    #: (partition, position, log start) of the records it said retention deleted before anyone read
    #: them (status 5): the operator moves that offset to the log start
    not_in_log: tuple[int, int, int | None] | None = None
    #: (partition, M, the output) of its stop saying the group, with no committed position, moved
    #: from this output to that one at M (consumer.recovery.left_for)
    left_for: tuple[int, int, str | None] | None = None
    status: int | None = None
    thread: threading.Thread | None = None
    pause_in: int | None = None  # park before its n-th S3 request from now (in a flush, a roll)
    threads: dict[int, Member] = field(default_factory=dict)  # every member's thread, shared

    def start(self) -> None:
        def hook(_consumer: MemoryConsumer) -> None:
            self.park()

        def main() -> None:
            self.threads[threading.get_ident()] = self
            try:
                self.status = self.runner.run()
            except Crash:
                pass
            finally:
                self.parked.release()

        self.runner.consumer.on_consume = hook
        self.thread = threading.Thread(target=main, daemon=True)
        self.thread.start()
        self._wait()

    def park(self) -> None:
        self.parked.release()
        self.go.acquire()
        if self.killed:
            raise Crash("killed")  # only once the history is over: the thread may end

    def on_request(self) -> None:
        """Called before each S3 request this member's thread makes."""
        if self.pause_in is not None:
            self.pause_in -= 1
            if self.pause_in == 0:
                self.pause_in = None
                self.park()

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive() and not self.killed

    def turn(self, consumes: int = 1) -> None:
        """Let the member run through ``consumes`` calls of ``consume()`` (or until it exits)."""
        for _ in range(consumes):
            if not self.thread or not self.thread.is_alive():
                return
            self.go.release()
            self._wait()

    def stop(self) -> None:
        """SIGTERM, then let it run to its end."""
        self.runner.request_stop()
        self.run_to_end()
        assert self.ended_well, self.status

    @property
    def ended_well(self) -> bool:
        allowed = REFUSED_COMMIT if self.refused or self.asks_operator or self.not_in_log else ENDED_WELL
        return self.status in allowed or (self.denied and self.status in DENIED_COMMIT)

    def run_to_end(self) -> None:
        while self.thread is not None and self.thread.is_alive():
            self.go.release()
            self._wait()
        if self.thread is not None:
            self.thread.join(WAIT)

    def _wait(self) -> None:
        assert self.parked.acquire(timeout=WAIT), "a member did not reach its next consume()"


def _produce(broker: MemoryBroker, produced: list[int], partition: int, n: int,
             bad: set[int] | None = None, registry: MemoryRegistry | None = None, key: bytes = b"k") -> None:
    """``n`` records into ``partition``; into ``bad`` too, their offsets are malformed Avro (trailing
    bytes): dead letters. With a ``registry``, Confluent-framed records of its versions by turns
    (producers not all upgraded at once)."""
    schema = parsed_schema("page_view")
    for _ in range(n):
        i = produced[partition]
        if registry is None:
            record = make_record("page_view", partition * 1000 + i)
            record["ts"] += timedelta(hours=i * 7 % 3)  # the plain layout ignores it
            value = encode_raw(schema, record)
        else:
            ids = registry.subjects[SUBJECT]
            sid = ids[i % len(ids)]
            body = io.BytesIO()
            fields = {"id": i, "n": i, "old": "o", "country": "c", "land": "l"}
            avro = registry.schemas[sid]
            fastavro.schemaless_writer(body, fastavro.parse_schema(avro),
                                       {f["name"]: fields[f["name"]] for f in avro["fields"]})
            value = b"\x00" + sid.to_bytes(4, "big") + body.getvalue()
        if bad is not None:
            value += b"\x00\x00"
            bad.add(i)
        broker.produce("t", value, partition=partition, key=key)
        produced[partition] += 1


_PIECE = re.compile(r"(\d{20})-(\d{20})\.piece$")


def _objects_of(store: MemoryStore, partition: int) -> dict[str, bytes]:
    """Every object of ``partition``: final files, staged pieces and markers."""
    return {k: v for k, v in store.objects.items() if f"/partition={partition}/" in k}


def _dead_letter_offsets(store: MemoryStore) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {p: set() for p in range(PARTITIONS)}
    for key, data in store.objects.items():
        if "/_dead_letters/" in f"/{key}":
            for line in data.decode().splitlines():
                letter = json.loads(line)
                out[letter["partition"]].add(letter["offset"])
    return out


def _final_offsets(store: MemoryStore) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {p: [] for p in range(PARTITIONS)}
    for key, data in store.objects.items():
        if key.endswith(".parquet") and "/_" not in f"/{key}":
            t = pq.read_table(io.BytesIO(data), columns=["kafka_partition", "kafka_offset"])
            for p, o in zip(t.column(0).to_pylist(), t.column(1).to_pylist(), strict=True):
                out[p].append(o)
    return {p: sorted(v) for p, v in out.items()}


def _prefix(output: str) -> str:
    return output.removeprefix("s3://bucket/")


def _end_in(store: MemoryStore, prefix: str, partition: int) -> int:
    """Where ``partition``'s output under ``prefix`` ends: its staged pieces, dead letters and
    final files (0: nothing)."""
    ends = [0]
    for key, data in store.objects.items():
        if not key.startswith(f"{prefix}/") or f"/partition={partition}/" not in key:
            continue
        if piece := _PIECE.search(key):
            ends.append(int(piece[2]))
        elif key.endswith(".jsonl"):
            ends.append(int(key.rsplit("-", 1)[1].removesuffix(".jsonl")))
        elif key.endswith(".parquet") and "/_" not in f"/{key}":
            offsets = pq.read_table(io.BytesIO(data), columns=["kafka_offset"]).column(0).to_pylist()
            ends.append(max(offsets, default=-1) + 1)
    return max(ends)


def _flags(b: int) -> dict[str, Any]:
    """Budgets, Kafka columns and compression a rolling change of flags may set (never the
    layout: --partition-by cannot change under a prefix, and says so)."""
    return {
        "row_group_rows": (3, 4, 5, 2)[b % 4],
        "file_rows": (10, 6, 13, 7)[b // 4 % 4],
        "kafka_columns": (("partition", "offset", "timestamp", "key"),
                          ("partition", "offset", "key"))[b // 16 % 2],
        "compression": ("zstd", "snappy")[b // 32 % 2],
    }


def _check_incarnations(store: MemoryStore, produced: list[int], bad: list[set[int]]) -> None:
    """After the topic was deleted and created again: no file holds records of both topics, no
    offset of either is in two final files, and a partition that holds output of the old topic
    (final rows or dead letters) holds none of the new one, whose offsets started again at 0.
    ``produced`` and ``bad`` are the new topic's."""
    both = (b"k", NEW_KEY)
    rows: dict[bytes, dict[int, list[int]]] = {k: {p: [] for p in range(PARTITIONS)} for k in both}
    letters: dict[bytes, dict[int, set[int]]] = {k: {p: set() for p in range(PARTITIONS)} for k in both}
    for key, data in store.objects.items():
        if key.endswith(".parquet") and "/_" not in f"/{key}":
            t = pq.read_table(io.BytesIO(data), columns=["kafka_partition", "kafka_offset", "kafka_key"])
            keys = set(t.column(2).to_pylist())
            assert len(keys) <= 1, f"{key}: records of both topics in one file"
            for p, o, k in zip(*(c.to_pylist() for c in t.columns), strict=True):
                rows[k][p].append(o)
        elif "/_dead_letters/" in f"/{key}":
            for line in data.decode().splitlines():
                letter = json.loads(line)
                letters[base64.b64decode(letter["key_b64"])][letter["partition"]].add(letter["offset"])
    for p in range(PARTITIONS):
        for k in rows:
            assert len(rows[k][p]) == len(set(rows[k][p])), f"p{p}: an offset in two final files"
        assert set(rows[NEW_KEY][p]) <= set(range(produced[p])) - bad[p]
        assert letters[NEW_KEY][p] <= bad[p], f"p{p}: a dead letter for a good record"
        if rows[b"k"][p] or letters[b"k"][p]:
            assert not rows[NEW_KEY][p] and not letters[NEW_KEY][p], (
                f"p{p}: output of the new topic beside the old one's: {sorted(rows[NEW_KEY][p])}, "
                f"dead letters {sorted(letters[NEW_KEY][p])}")


produce = st.tuples(st.just("produce"), st.integers(0, PARTITIONS - 1), st.integers(1, 25))
step = st.one_of(
    produce,
    produce,
    st.tuples(st.just("produce_bad"), st.integers(0, PARTITIONS - 1), st.integers(1, 6)),
    st.tuples(st.just("turn"), st.integers(0, 3), st.integers(1, 4)),
    st.tuples(st.just("join"), st.just(0), st.just(0)),
    st.tuples(st.just("stop"), st.integers(0, 3), st.just(0)),
    st.tuples(st.just("kill"), st.integers(0, 3), st.just(0)),
    st.tuples(st.just("expel"), st.integers(0, 3), st.just(0)),
    st.tuples(st.just("pause_at_request"), st.integers(0, 3), st.integers(1, 8)),
    st.tuples(st.just("s3_error"), st.just(0), st.integers(1, 12)),
    st.tuples(st.just("s3_lost_reply"), st.just(0), st.integers(1, 12)),
    st.tuples(st.just("commit_fails"), st.integers(0, 3), st.integers(1, 3)),
    st.tuples(st.just("read_fails"), st.integers(0, 1), st.integers(1, 3)),
    st.tuples(st.just("reset"), st.integers(0, PARTITIONS - 1), st.integers(0, 2)),
    st.tuples(st.just("reset_back"), st.integers(0, PARTITIONS - 1), st.integers(0, 40)),
    st.tuples(st.just("retention"), st.integers(0, PARTITIONS - 1), st.integers(1, 40)),
    st.tuples(st.just("evolve"), st.just(0), st.just(0)),
    st.tuples(st.just("delete_staged"), st.integers(0, PARTITIONS - 1), st.integers(0, 40)),
    st.tuples(st.just("delete_live"), st.integers(0, PARTITIONS - 1), st.integers(0, 40)),
    st.tuples(st.just("expire_output"), st.integers(0, PARTITIONS - 1), st.integers(1, 8)),
    st.tuples(st.just("recreate"), st.just(0), st.integers(0, 3)),
    st.tuples(st.just("reconfigure"), st.just(0), st.integers(0, 63)),
    st.tuples(st.just("add_partition"), st.just(0), st.just(0)),
    st.tuples(st.just("login_refused"), st.integers(0, 3), st.just(0)),
    st.tuples(st.just("move"), st.just(0), st.just(0)),
)
#: Steps whose first number is a partition (of those the topic has then).
ON_A_PARTITION = ("produce", "produce_bad", "reset", "reset_back", "retention", "delete_staged",
                  "delete_live", "expire_output")
#: The Kafka key of the records produced after the topic was deleted and created again.
NEW_KEY = b"new"
#: Operator actions on the old topic's group and output: not drawn once the topic was recreated.
OLD_TOPIC_ONLY = ("reset", "reset_back", "retention", "delete_staged", "delete_live", "expire_output")
#: The two outputs a rolling deployment of ``--output`` moves the group between (one bucket).
OUTPUTS = ("s3://bucket/out", "s3://bucket/new")


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(step, min_size=4, max_size=50), layout=st.sampled_from(sorted(CONFIGS)))
# Found by this test. A member (1) is paused while it recovers p1, having read the committed
# position 4 (or 5); the group moves on without it, and the other member stages and commits p1 to
# 9 (or rolls it to 10). Member 1 then went on from what it had read: it deleted the new pieces
# as strays past 4 (the next run stopped: "committed 9, staged here, nothing reaches it"), or took
# the final file past 5 for an operator's reset backwards and stopped with status 5. Now it
# confirms that it still owns the partition before it deletes or stops (a commit, fenced here).
@example(
    steps=[
        ("produce", 1, 5),
        ("turn", 0, 1),
        ("join", 0, 0),
        ("expel", 0, 0),
        ("produce", 1, 4),
        ("pause_at_request", 1, 5),
    ],
    layout="plain",
)
@example(
    steps=[
        ("produce", 1, 1),
        ("stop", 0, 0),
        ("join", 0, 0),
        ("produce", 1, 5),
        ("turn", 0, 1),
        ("join", 0, 0),
        ("expel", 0, 0),
        ("produce", 1, 4),
        ("pause_at_request", 1, 5),
    ],
    layout="plain",
)
# A member held in its recovery (it had listed p1's pieces) while another rolled the bucket's file
# and deleted them: reading them ended the run as an unexpected error (FileNotFoundError).
@example(
    steps=[
        ("produce", 0, 3),
        ("produce", 1, 3),
        ("join", 0, 0),
        ("expel", 1, 0),
        ("turn", 0, 1),
        ("join", 0, 0),
        ("join", 0, 0),
        ("stop", 0, 0),
        ("pause_at_request", 2, 4),
        ("stop", 0, 0),
        ("expel", 0, 0),
    ],
    layout="bucketed",
)
# An operator moved the offset back from 2 to 1, inside the row group [0, 2) of two open bucket
# files: recovery took both files for a zombie's leftovers, deleted them and lost offset 0. It
# stops now (status 5, nothing changed), as the plain layout does.
@example(
    steps=[("join", 0, 0), ("produce", 0, 1), ("produce", 0, 1), ("reset_back", 0, 1)], layout="bucketed"
)
# One flush staged [0, 2) into two bucket files and committed 2; retention deleted offset 0 and the
# group's offsets expired. Recovery took the lone pieces for a flush cut short, adopted 0, deleted
# them, and stopped: offset 0, durable in S3, was lost. Their rows account for [0, 2) now: kept.
@example(
    steps=[("produce", 0, 1), ("produce", 0, 1), ("retention", 0, 1), ("reset", 0, RESET_EXPIRED)],
    layout="bucketed",
)
# Bad records only: a flush left the dead-letter object [0, 2) (or [0, 4), its file of no rows
# then finished as nothing) and nothing else, and committed its end. An operator moved the offset
# back to 1: recovery deleted the object as never committed and read from 1 again, so offset 0's
# dead letter was lost. It stops now (status 5, nothing changed), as inside a row group.
@example(
    steps=[("produce", 0, 1), ("produce_bad", 1, 2), ("join", 0, 0), ("reset_back", 1, 1)],
    layout="bucketed",
)
@example(
    steps=[("produce", 0, 1), ("produce_bad", 1, 5), ("reset", 1, RESET_TO_LATEST), ("reset_back", 1, 1)],
    layout="plain",
)
# One flush staged [0, 3) into three hours' files; over --max-open-buckets 2 the oldest rolled, and
# its re-commit said "rolled". A clean-up then deleted one of the two files still open: with that
# note recovery did not check them, and resumed the other one. Offset 1 was in no file.
@example(
    steps=[("produce", 0, 1), ("produce", 0, 1), ("produce", 0, 1), ("delete_staged", 0, 0)],
    layout="bucketed",
)
# Offset 0 staged and committed; the operator re-set the offset where it was (no note), and the
# group, with nothing new to read, committed nothing of its own. A clean-up deleted the piece:
# with no note that looked like a reset forwards, and offset 0 was in no file. Recovery resuming
# pieces that reach a position without a note now commits it again with one.
@example(
    steps=[("produce", 0, 1), ("join", 0, 0), ("reset", 0, RESET_TO_CURRENT), ("delete_staged", 0, 0)],
    layout="plain",
)
# Offsets 0 (hour 08) and 1 (hour 09) staged; a reset back to 1, refused, and undone by the operator
# (no note); that member is killed before it recovers. A clean-up deleted hour 08's file: with no
# note, the restart could not tell it from the operator going on without it, and went on, but gave
# the position a "staged" note; the next run then stopped on the very file the operator gave up.
@example(
    steps=[("produce", 0, 1), ("produce", 0, 1), ("reset_back", 0, 1), ("kill", 0, 0),
           ("delete_staged", 0, 0)],
    layout="bucketed",
)
# Offsets 0..4 staged into three hours' files (one rolled at 4), retention took offset 5 unread, and
# the operator moved the offset to 6 (no note). A clean-up deleted hour 09's first piece while the
# group ran: recovery took the file's piece [4, 5) for a fenced member's leftovers and deleted it.
# Offset 4 was in no file. It stops now (status 5, nothing changed).
@example(
    steps=[("produce", 0, 1), ("produce", 0, 5), ("retention", 0, 6), ("delete_live", 0, 0)],
    layout="bucketed",
)
# Hours 09 and 10 staged to 14 (08 rolled at each flush); a refused reset back, undone (no note). A
# clean-up deleted hour 09's newest piece while the group ran: with hour 10 reaching 14, hour 09's
# file was taken for a fenced member's leftovers and deleted, and its rows with it. The pieces
# ending at 14 name it as a file of their flush: it is finished as a forward reset's now.
@example(
    steps=[("produce", 0, 14), ("turn", 0, 2), ("reset_back", 0, 0), ("delete_live", 0, 4)],
    layout="bucketed",
)
# One flush into three hours' files, the oldest rolled at 4; a clean-up deleted both files still
# open. The rolled high-water reached 4, so recovery took the rolled file for all there was, and
# offsets 1 and 2 were in no file. A "staged" note with no piece reaching it stops now.
@example(
    steps=[("produce", 0, 4), ("turn", 0, 1), ("delete_live", 0, 0), ("delete_live", 0, 0)],
    layout="bucketed",
)
# p1's roll of [0, 10) wrote its final file, then S3 failed past the shutdown bound before the
# pieces were deleted; a clean-up deleted the roll marker. Recovery resumed the final file as an
# open one, and its next roll stopped on it (status 5). The roll is finished now.
@example(
    steps=[("reset", 0, RESET_EXPIRED), ("produce", 1, 11), ("s3_error", 0, 9), ("pause_at_request", 0, 2),
           ("delete_staged", 1, 3)],
    layout="evolving",
)
# A shutdown flush of p2 opened hour 08's file at 8 and wrote its piece first, then S3 failed; 8
# stayed committed. A reset to the latest: no file reached 12, and recovery anchored the owner's
# files at the cut flush's piece end (11), deleting hours 09 and 10 (chains to 8) as a zombie's.
@example(
    steps=[("produce", 0, 1), ("stop", 0, 0), ("produce", 2, 12), ("reset_back", 0, 0), ("s3_error", 0, 2),
           ("reset", 2, RESET_TO_LATEST)],
    layout="bucketed",
)
# p1's roll of [0, 10) re-committed 10 ("rolled") and died before its final file; a clean-up
# deleted the piece [8, 10). Recovery took the chain to 8 for a reset forwards and skipped 8 and 9.
# The roll's marker says the pieces reached 10: it stops now.
@example(
    steps=[("join", 0, 0), ("produce", 0, 1), ("produce", 0, 11), ("produce", 1, 10), ("delete_staged", 0, 0),
           ("reset_back", 1, 0), ("s3_error", 0, 3), ("delete_staged", 1, 2)],
    layout="evolving",
)
# A recovery fenced by its own commit (an adoption) ended the run as an unexpected error.
@example(
    steps=[("join", 0, 0), ("expel", 0, 0), ("produce", 1, 1), ("pause_at_request", 1, 5)], layout="plain"
)
# A lifecycle rule expired the final file [0, 5) while a member recovering p0 had listed it and
# not yet read its footer: the member stopped with status 5 as if something deleted staged rows.
# Output that vanishes is no loss: status 4 now (a supervisor restarts it), and the next run
# recovers from what S3 holds then.
@example(
    steps=[("produce", 0, 1), ("produce", 0, 5), ("reset", 0, 1), ("join", 0, 0), ("stop", 0, 0),
           ("pause_at_request", 0, 4), ("expire_output", 0, 1)],
    layout="evolving",
)
# A read of the committed offsets answered a retriable error (unstable offsets) for every
# partition: asked again, it goes on; the first member's stop ends that member only.
@example(
    steps=[("produce", 0, 3), ("read_fails", 1, 1), ("turn", 0, 2), ("produce", 0, 3), ("turn", 0, 2),
           ("read_fails", 0, 1), ("join", 0, 0), ("turn", 1, 3), ("produce", 1, 4)],
    layout="plain",
)
# A partition whose every record was bad held dead letters only; the topic was deleted and
# created again with the group's offset kept at 1: the new topic's offset 0 was skipped and its
# offset 1 written beside the old dead letters. Dead letters now name the topic id, and recovery
# compares the newest one's when nothing newer names one.
@example(
    steps=[("produce_bad", 1, 1), ("join", 0, 0), ("recreate", 0, 2), ("produce", 1, 2)], layout="bucketed"
)
@example(
    steps=[("produce_bad", 0, 1), ("recreate", 0, 3), ("produce", 0, 2)], layout="plain"
)
# --output moved (a rolling deployment) with p0's files open in the old output, and a clean-up then
# deleted one of its two bucket files (or, plain, its only piece): the finish of the old output
# took what was left and lost offset 0 without a word. The `.away` object keeps the group's note
# now, and the finish stops (status 5) until the operator restores it.
@example(steps=[("produce", 0, 1), ("produce", 0, 1), ("move", 0, 0), ("delete_staged", 0, 0)],
         layout="bucketed")
@example(steps=[("produce", 0, 1), ("produce", 0, 1), ("move", 0, 0), ("delete_staged", 0, 0)],
         layout="plain")
# Found by a long run of this test (40,000 examples): the same with both of p0's open bucket files
# deleted, while a third, rolled by the run at the group's position M, left the `_rolled/` name a
# finish's rolls leave. The finish took it for a finish cut short after its rolls ("nothing to
# finish") and offsets 1 and 2 were lost without a word. A finish now says FINISHING in the `.away`
# object before its rolls; one that still says "staged", with nothing staged, stops (status 5).
@example(steps=[("produce", 0, 1), ("produce", 0, 2), ("move", 0, 0), ("delete_staged", 0, 0),
                ("delete_staged", 0, 0)], layout="bucketed")
# ... and the group came back to the old output (the deployment rolled back): its run went on from
# the group's position, and offset 1 was in no file. A run back checks what the group left there.
@example(
    steps=[("produce", 0, 1), ("produce", 0, 1), ("move", 0, 0), ("produce", 0, 1), ("delete_staged", 0, 0),
           ("move", 0, 0)],
    layout="bucketed",
)
# A flush staged [0, 2) in the old output and its commit was refused; retention took offset 0, and
# the new output began at 1, inside that piece: offset 1 is in both outputs, now said (in_both).
@example(
    steps=[("move", 0, 0), ("produce", 0, 2), ("commit_fails", 1, 1), ("retention", 0, 1)], layout="bucketed"
)
# ... with one record: the group never committed p0, and the finish refused, saying the group's
# last commit was to the old output (it had none); it names the partition and why now.
@example(
    steps=[("move", 0, 0), ("produce", 0, 1), ("commit_fails", 1, 1), ("retention", 0, 1)], layout="bucketed"
)
# Found in CI once the property drew moves: a staged piece of the output left, deleted while the
# group ran and met by no member there, stopped the run back on the group's own chain check (not
# the check where it left); and a run back that met a deletion during a restart after retention.
@example(
    steps=[("produce", 0, 5), ("reset_back", 0, 0), ("move", 0, 0), ("delete_live", 0, 0),
           ("delete_staged", 0, 0), ("move", 0, 0), ("join", 0, 0)],
    layout="bucketed",
)
@example(
    steps=[("produce", 0, 1), ("move", 0, 0), ("delete_staged", 0, 0), ("move", 0, 0), ("retention", 0, 1)],
    layout="bucketed",
)
@example(
    steps=[("produce", 0, 1), ("move", 0, 0), ("delete_staged", 0, 0), ("move", 0, 0), ("produce", 1, 1),
           ("delete_staged", 1, 0)],
    layout="bucketed",
)
# Found by a long run of this test (40,000 examples): the finish of the output the group left sent
# the operator to a run of it, which adopted S3's position 4 and stopped with status 5, truthfully:
# record 4 was read once, never made durable (its commit was fenced), and retention deleted it
# before the group read it again. The operator follows that stop as any other (the offset moved
# to the log start); the test expected the run to end well at once.
@example(
    steps=[("produce", 0, 1), ("produce", 0, 1), ("produce", 0, 1), ("move", 0, 0), ("produce", 0, 1),
           ("pause_at_request", 0, 1), ("add_partition", 0, 0), ("produce", 0, 1), ("retention", 0, 5)],
    layout="bucketed",
)
# Found by a long run of this test: a member fenced mid-flush left dead letters [0, 4) of a flush
# of bad records only, and a piece of no rows; a clean-up deleted that piece, then (after record 4,
# bad too) the next one. The run stopped, saying records below 5 were in no file, though each was
# a dead letter; it now goes on. The operator's restore that followed put back the first piece,
# which a recovery had passed over long before: no operator restores that (not drawn now).
@example(
    steps=[("join", 0, 0), ("expel", 0, 0), ("produce_bad", 0, 5), ("pause_at_request", 1, 1),
           ("delete_staged", 0, 0), ("delete_staged", 0, 0)],
    layout="evolving",
)
# ... and once that run went on, its position still said "staged": a lifecycle rule that then
# expired the dead letters (README, "Keeping N days of output") stopped the next run, saying the
# records were in no file. The position is now committed again saying "rolled".
@example(steps=[("produce_bad", 0, 1), ("delete_staged", 0, 0), ("delete_staged", 0, 0),
                ("expire_output", 0, 1)], layout="evolving")
# Found by a long run of this test: a clean-up deleted a staged piece while its file was being
# rolled, after the roll's check of its pieces and before the merge read it. The member stopped
# with "unexpected error; restart me"; it now stops with status 5, saying what vanished.
@example(steps=[("produce", 0, 1), ("produce", 0, 7), ("turn", 0, 1), ("pause_at_request", 0, 6),
                ("delete_live", 0, 0)], layout="bucketed")
# Found by a long run of this test: the finish of the output the group left went on past a
# deleted piece of no rows (dead letters hold its records) and made that file final, then stopped
# on another partition's deletion; the operator's restore put that piece back, a stray in a file
# already finished. Deletions a recovery went on past are not restored now.
@example(steps=[("move", 0, 0), ("produce_bad", 1, 5), ("move", 0, 0), ("produce", 0, 1), ("reset", 0, 0),
                ("move", 0, 0), ("delete_staged", 0, 0), ("delete_staged", 1, 1)], layout="evolving")
# Found by a long run of this test: the group came back to an output it had left with a file
# open there, past that file's end; recovery committed the position saying "unstaged" (nothing
# staged here reaches it) before it finished that file, and the commit's reply was lost. A clean-up
# then deleted the file's piece, and the next recovery, reading "unstaged", no longer checked where
# the group had left: rows [0, 4) in no file, exit 0. The note is now said after the file is final.
@example(steps=[("move", 0, 0), ("move", 0, 0), ("retention", 0, 29), ("s3_error", 0, 7), ("produce", 0, 5),
                ("add_partition", 0, 0), ("move", 0, 0), ("reset", 2, 2), ("reset", 2, 1),
                ("commit_fails", 2, 1), ("move", 0, 0), ("reset_back", 2, 15), ("delete_staged", 0, 35)],
         layout="evolving")
# Found by a long run of this test: the group moved to another output, its commit there was refused
# for good, the deployment rolled back and the offsets expired. The run stopped, as it should:
# "the group moved from this output to s3://bucket/new at 3". The test's operator took that for
# records retention deleted and moved the offset to the log start, which the next run refused.
# The operator now does what the stop says: moves the offset to where that output ends.
@example(steps=[("produce", 0, 1), ("produce", 0, 1), ("produce", 0, 1), ("reset", 0, 0),
                ("commit_fails", 1, 1), ("move", 0, 0), ("join", 0, 0), ("move", 0, 0), ("reset", 0, 0)],
         layout="bucketed")
# Found by a long run of this test: rows [4, 5) staged in both outputs (a flush whose reply was lost
# in one, resumed by a run back), and the group back again in the other: its check of where it had
# left that output left out the pieces the first one holds as well, and stopped, "nothing here
# reaches 5", with nothing deleted. It checks every staged object now, as the group's own recovery saw.
@example(steps=[("retention", 0, 29), ("produce", 0, 5), ("add_partition", 0, 0), ("move", 0, 0),
                ("s3_lost_reply", 0, 7), ("reset", 0, 0), ("move", 0, 0), ("delete_staged", 0, 0),
                ("move", 0, 0)], layout="plain")
@example(steps=[("retention", 0, 29), ("produce", 0, 5), ("add_partition", 0, 0), ("move", 0, 0),
                ("s3_lost_reply", 0, 7), ("reset", 0, 0), ("reset", 0, 0), ("move", 0, 0), ("join", 0, 0),
                ("s3_lost_reply", 0, 5), ("move", 0, 0), ("retention", 2, 2), ("login_refused", 3, 0)],
         layout="plain")
# A roll of two bucket files at 5: the first's re-commit said "staged" (the other was open), the
# second's was refused. Recovery finished that roll from its marker; the note still said "staged",
# and the next recovery stopped, taking the other file for one deleted. It now says "rolled" again.
@example(steps=[("produce", 0, 1), ("produce", 0, 1), ("produce", 1, 6), ("produce", 0, 1),
                ("reconfigure", 0, 16), ("delete_staged", 0, 0), ("commit_fails", 1, 2),
                ("reset_back", 0, 0)], layout="bucketed")
# S3 failed the old output's mark of a move (.away) and the move went on; a clean-up deleted the
# open file left there, and `consumer finish` of it, with nothing to say it held rows, found nothing
# to finish: offset 0 in no file. An S3 error that may pass now stops that recovery.
@example(steps=[("produce", 0, 1), ("move", 0, 0), ("reset", 0, 0), ("s3_error", 0, 8),
                ("s3_lost_reply", 0, 1), ("read_fails", 0, 1), ("delete_staged", 0, 0)], layout="evolving")
# A run back to the output the group left with bucket files staged finished them (its position is
# past them) and was fenced before it deleted the .away saying "staged": the next recovery, and a
# finish, found every file rolled at M and none open, and stopped. It now says "finishing" first.
@example(steps=[("produce", 1, 8), ("join", 0, 0), ("move", 0, 0), ("stop", 1, 0), ("produce", 1, 1),
                ("pause_at_request", 0, 1), ("join", 0, 0), ("turn", 1, 1)], layout="bucketed")
@example(steps=[("produce", 1, 8), ("join", 0, 0), ("move", 0, 0), ("stop", 1, 0), ("produce", 1, 1),
                ("pause_at_request", 0, 1), ("join", 0, 0), ("turn", 1, 1), ("read_fails", 0, 2),
                ("stop", 0, 0)], layout="bucketed")
# Found by a long run of this test (seed 2884519696, 30,000 examples): a flush of bad records only
# made its dead letters [0, 4) durable in 'out' and then gave up, uncommitted; the group moved to
# 'new', which wrote [0, 3) in its dead letters and committed 3; back in 'out', recovery took the
# committed 3 inside the uncommitted object for a reset backwards and stopped (status 5). A run
# back now cuts dead-letter objects where the other output holds their records, as it cuts pieces.
@example(steps=[("produce", 0, 2), ("produce_bad", 1, 6), ("expel", 0, 0), ("s3_error", 0, 11),
                ("move", 0, 0), ("join", 0, 0), ("move", 0, 0), ("retention", 0, 1)], layout="evolving")
@example(steps=[("produce", 0, 2), ("produce_bad", 1, 4), ("expel", 0, 0), ("s3_error", 0, 11),
                ("move", 0, 0), ("join", 0, 0), ("move", 0, 0), ("delete_staged", 0, 0)], layout="evolving")
def test_a_group_s_bad_day_exports_every_offset_once(steps: list[tuple[str, int, int]], layout: str) -> None:
    with (
        patch.object(side_by_side, "RECOVERY_THREADS", 1),
        patch.object(side_by_side, "CLOSE_THREADS", 1),
        patch.object(positions, "time", NO_WAITING),  # the Kafka client's retries, at once
    ):
        _history(steps, CONFIGS[layout])  # one thread per member: each S3 request is known to be its own


def _said_in_both(logs: list[dict[str, Any]]) -> dict[int, set[int]]:
    """The offsets each partition's warnings said are in both outputs (a piece not cut inside)."""
    out: dict[int, set[int]] = {p: set() for p in range(PARTITIONS)}
    for e in logs:
        if "in_both" in e:
            p = e["partition"]
            p = int(p.rsplit("[", 1)[1].rstrip("]")) if isinstance(p, str) else p
            out[p].update(o for a, b in e["in_both"] for o in range(a, b))
    return out


def _history(steps: list[tuple[str, int, int]], config: dict[str, Any]) -> None:
    with capture_logs() as logs:
        _history_said(steps, config, logs)


def _history_said(steps: list[tuple[str, int, int]], config: dict[str, Any],
                  logs: list[dict[str, Any]]) -> None:
    broker, store, clock = Broker(), MemoryStore(), Clock()
    registry: MemoryRegistry | None = None
    if config.get("framing") == "confluent":
        registry = MemoryRegistry()
        registry.register(SUBJECT, VERSIONS[0])

    reconfigured: dict[str, Any] = {}  # what a rolling change of flags set for members started since

    def decoder() -> Decoder:
        if registry is not None:
            return Decoder("confluent", registry=registry)
        return Decoder("raw", schema=load_schema("page_view"))

    def runner(**extra: Any) -> Any:
        return memory_runner(broker, store, clock=clock, value_decoder=decoder(),
                             **{**config, **reconfigured, **extra})

    def runner_settings() -> dict[str, Any]:
        """The settings of a member started now, as memory_runner gives them."""
        return {"bootstrap_servers": "memory", "group_id": "g", "topics": ("t",), "schema": "page_view",
                **config, **reconfigured}
    broker.create_topic("t", PARTITIONS - 1)
    produced = [0] * PARTITIONS
    bad: list[set[int]] = [set() for _ in range(PARTITIONS)]  # malformed records: dead letters
    skipped: list[set[int]] = [set() for _ in range(PARTITIONS)]  # by an operator's reset forwards
    expired: list[set[int]] = [set() for _ in range(PARTITIONS)]  # output a lifecycle rule expired
    # A rule took the names of the newest final and rolled files too: the position they say is gone.
    names_expired = [False] * PARTITIONS
    members: list[Member] = []
    threads: dict[int, Member] = {}
    recreated = False  # the topic was deleted and created again: what follows is checked apart
    moved = False  # a rolling deployment changed --output (not drawn with a recreated topic)
    blind: set[int] = set()  # partitions whose offset had no note when --output moved
    unseen: dict[str, bytes] = {}  # staged objects a clean-up deleted that no member stopped on
    unseen_since: dict[str, tuple[int, int]] = {}  # ... their partition, and the listings then
    ever_deleted: set[str] = set()  # every staged object a clean-up deleted
    fail_in: list[int] = []  # the n-th outermost store call from now fails, whoever makes it
    lose_in: list[int] = []  # ... takes effect, and then its reply is lost

    def on_op(op: str, _key: str) -> None:
        if store.inside_a_call():  # a call's own requests: part of it
            return
        if op == "put_if_absent_multipart":  # the start-up probe's last call, added after the
            return  # histories pinned below: not counted, so that they still draw what they did
        m = threads.get(threading.get_ident())
        if m is not None:
            m.on_request()
        if lose_in:
            lose_in[0] -= 1
            if lose_in[0] == 0:
                lose_in.clear()
                store.fail_next(op, TransientStorageError(f"injected: {op}'s replies were lost"), after=True)
        if fail_in:
            fail_in[0] -= 1
            if fail_in[0] == 0:
                fail_in.clear()
                raise TransientStorageError(f"injected: S3 kept failing {op} (retries exhausted)")

    def on_refused() -> None:
        m = threads.get(threading.get_ident())
        assert m is not None, "a commit off its member's thread"
        m.refused = True

    def on_denied() -> None:
        m = threads.get(threading.get_ident())
        assert m is not None, "a commit off its member's thread"
        m.denied = True

    store.on_op = on_op
    broker.on_refused = on_refused
    broker.on_denied = on_denied

    #: staged objects deleted while the group ran: key, bytes, partition, the S3 listings then
    deleted: list[tuple[str, bytes, int, int]] = []
    listings = [0]  # recoveries started so far (each lists the partition's staging first)
    #: (partition, its listing, its output's prefix) of recoveries that did not stop
    went_on: list[tuple[int, int, str]] = []
    recover_from = PartitionWorker._recover_from

    def counted(worker: PartitionWorker, *args: Any, **kwargs: Any) -> int | None:
        listings[0] += 1
        mine = listings[0]
        position = recover_from(worker, *args, **kwargs)
        went_on.append((worker.partition, mine, worker.layout.prefix))
        return position

    def accepted(p: int, then: int, key: str) -> bool:
        """A recovery of ``p`` that started after the deletion went on: it took the deletion for
        a reset forwards (no note), and the object is no longer the partition's to restore. Only a
        recovery in the object's output meets it (--output may have moved since)."""
        return any(q == p and mine > then and key.startswith(f"{prefix}/") for q, mine, prefix in went_on)

    counting = patch.object(PartitionWorker, "_recover_from", counted)
    unexpected: list[str] = []  # errors a member stopped on that no step explains: bugs
    report_unexpected = Runner._unexpected

    def recorded(runner_: Runner, exc: Exception) -> int:
        unexpected.append(f"{type(exc).__name__}: {exc}")
        return report_unexpected(runner_, exc)

    noting = patch.object(Runner, "_unexpected", recorded)  # a run's, and a finish's
    says_not_in_log = GroupRunner._position_not_in_log

    def not_in_log(runner_: GroupRunner, topic: str, partition: int, offset: int, said: str) -> Any:
        stop = says_not_in_log(runner_, topic, partition, offset, said)
        m = threads.get(threading.get_ident())
        worker = runner_.workers.get((topic, partition))
        position = worker.next_pos if worker is not None and worker.next_pos is not None else offset
        if m is not None:
            m.not_in_log = (partition, position, broker.watermarks(topic, partition)[0])
        return stop

    watching = patch.object(GroupRunner, "_position_not_in_log", not_in_log)
    says_left_for = worker_module.left_for

    def left_for(where: str, left_at: int, output: str | None) -> None:
        m = threads.get(threading.get_ident())
        if m is not None:
            m.left_for = (int(where.rsplit("[", 1)[1].rstrip("]")), left_at, output)
        says_left_for(where, left_at, output)

    telling_where_left = patch.object(worker_module, "left_for", left_for)
    checks_where_left = PartitionWorker._check_where_left
    came_back_to_deletions: list[Member] = []  # ... stopped on staged objects deleted since it left

    def check_where_left(worker: PartitionWorker, *args: Any) -> None:
        try:
            checks_where_left(worker, *args)
        except IntegrityError:
            m = threads.get(threading.get_ident())
            assert m is not None, "a recovery off its member's thread"
            assert ever_deleted - set(store.objects), "a run back stopped on deletions nobody made"
            m.asks_operator = True
            came_back_to_deletions.append(m)
            raise

    coming_back = patch.object(PartitionWorker, "_check_where_left", check_where_left)

    unseen_stops: list[int] = []  # how many members had stopped with status 5 when one was first kept

    def keep_unseen(gone: dict[str, tuple[bytes, int, int]]) -> None:
        """Deletions no member met, in an output the group may come back to or finish: any member
        may stop on them (status 5) from now on, the operator then restores them. ``gone``: key →
        (bytes, partition, the recoveries started before the deletion)."""
        if gone and not unseen:
            unseen_stops[:] = [sum(x.status == EXIT_FATAL for x in members)]
        unseen.update({key: data for key, (data, _p, _then) in gone.items()})
        unseen_since.update({key: (p, then) for key, (_data, p, then) in gone.items()})
        for x in members if gone else ():
            x.asks_operator = True

    def restorable(prefix: str = "") -> dict[str, bytes]:
        """The kept deletions under ``prefix`` the operator restores after a stop, forgotten
        then: not those a recovery of that output went on past since (a finish of the output the
        group left that found dead letters holding what they covered, say). That recovery took
        their partition elsewhere; put back, they stand in its way as strays."""
        mine = [k for k in unseen if k.startswith(prefix)]
        out = {k: unseen[k] for k in mine if not accepted(*unseen_since[k], k)}
        for k in mine:
            del unseen[k], unseen_since[k]
        return out

    def restore_unseen() -> bool:
        """A member stopped (status 5) while such deletions were kept: the operator restores them
        (a versioned bucket) and starts the group again. True if so."""
        if not unseen or sum(x.status == EXIT_FATAL for x in members) <= unseen_stops[0]:
            return False
        stop_all()
        for key, data in restorable().items():
            store.objects.setdefault(key, data)
        return True

    def restore_what_a_run_back_met() -> bool:
        """A member came back to an output the group left with rows staged there, and stopped
        (status 5) on staged objects a clean-up deleted since: the operator restores them (a
        versioned bucket) and starts the group again. True if so."""
        if not came_back_to_deletions:
            return False
        came_back_to_deletions.clear()
        stop_all()
        for key, data in restorable().items():
            store.objects.setdefault(key, data)
        return True
    stops_then: list[int] = []  # ... and how many members had stopped with status 5 by then

    def join() -> Member:
        m = Member(runner(), threads=threads, asks_operator=bool(deleted) or bool(unseen) or recreated)
        members.append(m)
        m.start()
        return m

    def delete_staged(p: int, i: int) -> tuple[str, bytes] | None:
        """A lifecycle rule or a clean-up deletes the ``i``-th staged object of partition ``p``.
        With no note at the group's position (an operator's reset, and no recovery since), a
        deletion of the newest pieces looks like a reset forwards and is taken for one (said):
        their records may be skipped."""
        keys = sorted(k for k in _objects_of(store, p) if "/_staging/" in f"/{k}")
        if not keys:
            return None
        key = keys[i % len(keys)]
        data = store.objects.pop(key)
        ever_deleted.add(key)
        piece = _PIECE.search(key)
        if piece and not broker.committed_note("g", "t", p):
            skipped[p].update(range(int(piece[1]), int(piece[2])))
        return key, data

    def expire_output(p: int, b: int) -> None:
        """A lifecycle rule (keep N days) expires what partition ``p`` wrote longest ago: up to
        ``(b + 1) // 2`` of its oldest objects, all written before its oldest staged object. Odd
        ``b``: a rule on the whole prefix but ``_staging/`` (final files, dead letters, the names of
        the newest final and rolled files); even: on the final files' folders only (README,
        "Keeping N days of output"). Files roll by age (--file-max-age, 1 h) long before such a
        rule's days, so nothing staged is that old, nor are the siblings of a file that rolled
        while others stayed open. The records of what expired may be in no file, or in one written
        again (the old one is gone) once the rule took the names too; while the names are left,
        they say where the expired output ended, and nothing expired is written again."""
        older: list[str] = []
        pending = {key for key, _data, q, _then in deleted if q == p}  # staged, deleted, to restore
        for key in sorted({*_objects_of(store, p), *pending}, key=lambda k: store.last_modified.get(k, 0)):
            if "/_staging/" in f"/{key}":
                break
            if b % 2 or key.endswith(".parquet"):
                older.append(key)
        for key in older[:(b + 1) // 2]:
            data = store.objects.pop(key)
            names_expired[p] |= "/_newest_final/" in f"/{key}" or "/_rolled/" in f"/{key}"
            if key.endswith(".parquet"):
                offsets = pq.read_table(io.BytesIO(data), columns=["kafka_offset"]).column(0)
                expired[p].update(offsets.to_pylist())
            elif "/_dead_letters/" in f"/{key}":
                expired[p].update(json.loads(line)["offset"] for line in data.decode().splitlines())

    def live(i: int) -> Member | None:
        alive = [m for m in members if m.alive]
        return alive[i % len(alive)] if alive else None

    def quiet() -> None:
        """No injected failure is pending (the operator restarts the group and watches it)."""
        fail_in.clear()
        lose_in.clear()
        store.disarm()
        broker.fail_commit.clear()
        broker.fail_read.clear()

    def restart_and_watch(p: int, records_may_be_gone: bool) -> bool:
        """The operator starts the group again after acting on partition ``p`` and watches its
        recovery. Status 5 there says records below the log start are in no file (after recovery:
        it may have finished decided rolls and dropped pieces never committed); the operator then
        accepts their loss, moves the offset to the log start and starts it again. True if so."""
        quiet()
        m = join()
        m.turn(3)  # it recovers, seeks, and fetches
        if m.status == EXIT_FATAL and m.left_for is not None:
            # "the group moved from this output to X at M" (no committed position, and the group's
            # commit there was refused before it said so): the operator does as the stop says to
            # write here again, and moves the offset to where X ends
            q, at, there = m.left_for
            m.asks_operator = True
            broker.reset_offsets("g", "t", q, max(at, _end_in(store, _prefix(there or ""), q)))
            join()
            return True
        if m.status != EXIT_FATAL or not records_may_be_gone or m in came_back_to_deletions:
            return False  # (a run back that met a deletion: restored after the step)
        low, position = broker.watermarks("t", p)[0], broker.committed_offset("g", "t", p)
        assert position is None or position < low, f"status 5 at {position}, in the log from {low}"
        m.asks_operator = True
        broker.reset_offsets("g", "t", p, low)
        join()
        return True

    def stop_all() -> None:
        """The operator stops the group. Objects deleted while it ran are restored (a versioned
        bucket) once a member stopped with status 5 since: that told the operator."""
        for m in members:
            m.pause_in = None
        for m in members:
            if m.alive:
                m.stop()
        if deleted and sum(m.status == EXIT_FATAL for m in members) > stops_then[0]:
            for key, data, p, then in deleted:
                if not accepted(p, then, key):
                    store.objects.setdefault(key, data)
            deleted.clear()
            stops_then.clear()

    def settle_deletions() -> None:
        """With the group stopped, before the operator acts on it or the last member runs: a
        deletion nobody has met yet is met by a restart the operator watches (and restored if
        it stops); one still unseen then must have lost nothing. One in an output the group no
        longer writes to is met later, if at all, by its finish or a run back there (``unseen``)."""
        if deleted:
            quiet()
            join().turn(3)
            stop_all()
        here = _prefix(reconfigured.get("output", OUTPUTS[0]))
        keep_unseen({key: (data, p, then) for key, data, p, then in deleted
                     if not key.startswith(f"{here}/") and key not in store.objects})
        deleted.clear()
        stops_then.clear()

    def follow_not_in_log(m: Member) -> bool:
        """A member stopped (status 5) saying records retention deleted were read by no one: the
        operator moves the offset to the log start, as it says, and starts a member again. This
        is how a member of one output meets what the other output's members could not know of:
        records staged there, never committed, now below the log start. True if so."""
        if m.status != EXIT_FATAL or m.not_in_log is None:
            return False
        p, position, low = m.not_in_log
        m.not_in_log = None
        if low is None or position >= low:  # past the log's end: a topic created again (asked there)
            return False
        m.asks_operator = True
        stop_all()
        skipped[p].update(range(position, low))
        committed = broker.committed_offset("g", "t", p)
        if committed is None or committed < low:
            broker.reset_offsets("g", "t", p, low)
        return True

    def unlinked(p: int) -> bool:
        """After a move of --output, whether an operator's reset of ``p`` would take away the only
        trace of where the group moved (a note naming another output than the one written to now,
        or none): a reset or expiry then, or a move with no note, is a move and a reset at once,
        which no output can see (README, "Moving --output"; not drawn)."""
        if not moved:
            return False
        note = positions.parse_note(broker.committed_note("g", "t", p))
        here = reconfigured.get("output", OUTPUTS[0])
        return p in blind or note is None or not positions.same_output(note.output, here)

    counting.start()
    noting.start()
    watching.start()
    telling_where_left.start()
    coming_back.start()
    try:
        join()
        for kind, a, b in steps:
            if kind in ON_A_PARTITION:
                a %= len(broker.partitions("t"))
            m = live(a)
            if recreated and kind in OLD_TOPIC_ONLY:
                continue
            key = NEW_KEY if recreated else b"k"
            if kind == "produce":
                _produce(broker, produced, a, b, registry=registry, key=key)
            elif kind == "produce_bad":
                _produce(broker, produced, a, b, bad[a], registry=registry, key=key)
            elif kind == "recreate":  # deleted and created again under its name (KIP-516: a new id)
                if recreated or deleted or moved:
                    continue
                if b >= 2:  # with the group stopped; else under its running members
                    stop_all()
                broker.recreate_topic("t", offsets_kept=b % 2 == 0)
                recreated = True
                produced, bad = [0] * PARTITIONS, [set() for _ in range(PARTITIONS)]
                for x in members:  # each may stop with status 5, saying the topic is another
                    x.asks_operator = True
                if b >= 2:
                    join()
            elif kind == "evolve":  # a new version of the subject: its producers start at once
                if registry is not None and len(registry.subjects[SUBJECT]) < len(VERSIONS):
                    registry.register(SUBJECT, VERSIONS[len(registry.subjects[SUBJECT])])
            elif kind == "join":
                join()
            elif kind == "add_partition":  # kafka-topics --alter --partitions 4, the group running
                if len(broker.partitions("t")) < PARTITIONS:
                    broker.create_topic("t", PARTITIONS)
                    broker._rebalance(broker.group("g"))  # the members' next metadata refresh
            elif kind == "reconfigure":  # a rolling deployment of other flags: old and new side by side
                reconfigured.update(_flags(b))
            elif kind == "move":  # ... of --output: members started from now on write to the other
                if recreated:
                    continue
                moved = True
                blind.update(p for p in range(PARTITIONS) if broker.committed_offset("g", "t", p) is not None
                             and not broker.committed_note("g", "t", p))
                reconfigured["output"] = OUTPUTS[OUTPUTS.index(reconfigured.get("output", OUTPUTS[0])) - 1]
            elif kind == "s3_error":  # an S3 outage outlasting the retries, for one call
                fail_in[:] = [b]
            elif kind == "s3_lost_reply":  # ... for the replies of one call that went through
                lose_in[:] = [b]
            elif kind == "commit_fails":
                broker.fail_commit[:] = [b, a]
            elif kind == "read_fails":
                broker.fail_read[:] = [b, a]
            elif kind == "reset":  # the operator stops the group, resets a partition, starts it again
                stop_all()
                settle_deletions()
                committed = broker.committed_offset("g", "t", a)
                if unlinked(a):
                    join()
                elif b == RESET_EXPIRED:  # offsets.retention.minutes passed
                    broker.reset_offsets("g", "t", a, None)
                elif b == RESET_TO_LATEST:  # skip the backlog: what S3 did not hold yet is skipped
                    broker.reset_offsets("g", "t", a, produced[a])
                    skipped[a].update(range(committed or 0, produced[a]))
                elif committed is not None:  # --to-current: where it is, without the consumer's note
                    broker.reset_offsets("g", "t", a, committed)
                if restart_and_watch(a, b == RESET_EXPIRED):  # S3 proves a position retention passed
                    skipped[a].update(range(broker.watermarks("t", a)[0]))
            elif kind == "reset_back":  # to export some records again: refused, or read again
                stop_all()
                settle_deletions()
                committed = broker.committed_offset("g", "t", a)
                low = broker.watermarks("t", a)[0]
                if committed and committed > low and not unlinked(a):  # back, but not before the log start
                    before = _objects_of(store, a)
                    broker.reset_offsets("g", "t", a, low + b % (committed - low))
                    quiet()  # no injected failure ends this run before its recovery has decided
                    m = join()
                    m.turn(2)  # it recovers its partitions
                    if m.status == EXIT_FATAL:  # refused before anything of the partition changed
                        m.asks_operator = True
                        assert _objects_of(store, a) == before, "a refused reset changed the partition"
                        broker.reset_offsets("g", "t", a, committed)  # the operator undoes it
                        join()
                else:
                    join()
            elif kind == "delete_staged":  # a lifecycle rule or a clean-up deletes a staged object
                stop_all()
                settle_deletions()
                gone = delete_staged(a, b)
                if gone is not None:
                    key, data = gone
                    before = _objects_of(store, a)
                    quiet()
                    then = listings[0]
                    m = join()
                    m.turn(3)  # it recovers its partitions
                    if m.status == EXIT_FATAL:  # said loudly, before anything of the partition changed
                        m.asks_operator = True
                        # ... unless it stopped on a deletion pending in another partition, while this
                        # one's recovery went on and kept where the group moved (_moved/)
                        after = _objects_of(store, a)
                        moves_kept = {k for k in after if "/_moved/" in k} if unseen else set()
                        assert {k: v for k, v in after.items() if k not in moves_kept} == {
                            k: v for k, v in before.items() if k not in moves_kept}, \
                            "a stop on a deletion changed the partition"
                        store.objects[key] = data  # the operator restores it (a versioned bucket)
                        join()
                    elif not accepted(a, then, key):  # met by no one yet: in an output the group
                        keep_unseen({key: (data, a, then)})  # left, its finish meets it
                else:
                    join()
            elif kind == "delete_live":  # ... while the group runs: a member may stop on it (status 5)
                gone = delete_staged(a, b)
                if gone is not None:
                    deleted.append((*gone, a, listings[0]))
                    stops_then[:] = stops_then or [sum(x.status == EXIT_FATAL for x in members)]
                    for x in members:
                        x.asks_operator = True
            elif kind == "expire_output":  # while the group runs, as a lifecycle rule does
                expire_output(a, b)
            elif kind == "retention":  # the group was down too long: records nobody read are gone
                stop_all()
                settle_deletions()
                committed = broker.committed_offset("g", "t", a)
                low = min(b, produced[a])
                broker.truncate("t", a, low)
                # What was neither read nor committed before the log start is gone: said with status
                # 5 when the group's position (or what S3 holds) is below it, else nothing says it.
                skipped[a].update(range(committed or 0, low))
                restart_and_watch(a, True)
            elif m is None:
                continue
            elif kind == "turn":
                m.turn(b)
            elif kind == "stop":
                m.stop()
            elif kind == "kill":  # kill -9: it never runs again, and the coordinator expels it
                m.killed = True
                broker.expire(m.runner.consumer)
            elif kind == "expel":  # expelled while parked: it finds out at its next consume
                broker.expire(m.runner.consumer)
            elif kind == "pause_at_request":  # park it mid-flush or mid-roll: the others go on
                m.pause_in = b
                m.turn()
            elif kind == "login_refused":  # its password changed: the next login is refused (status 2)
                m.denied = True
                refused = KafkaError(KafkaError._AUTHENTICATION, "injected: login refused")
                m.runner.consumer.conf["error_cb"](refused)
                m.turn()
            if deleted and sum(x.status == EXIT_FATAL for x in members) > stops_then[0]:
                stop_all()  # a stop on a deletion pages the operator, who restores it at once
                join()
            if any([follow_not_in_log(x) for x in members]) | restore_what_a_run_back_met() \
                    | restore_unseen():
                join()
        quiet()
        stop_all()
        settle_deletions()
        for _ in range(5):  # each restores or moves on: a history has few of them
            if not any([follow_not_in_log(x) for x in members]) | restore_what_a_run_back_met() \
                    | restore_unseen():
                break
            join()
            stop_all()
        else:
            raise AssertionError("the operator followed five stops in a row and the group still stops")
        assert all(m.ended_well for m in members if not m.killed), [m.status for m in members]
        assert not unexpected, unexpected
        for _ in range(5):
            last = Member(runner(until_caught_up=True), threads=threads)
            members.append(last)
            last.start()
            last.run_to_end()
            assert not unexpected, unexpected
            if not follow_not_in_log(last) | restore_what_a_run_back_met() | restore_unseen():
                break
        else:
            raise AssertionError("the operator followed five stops in a row and the last run still stops")
        if recreated:  # it may stop too: the operator exports the new topic to another prefix
            assert last.status in (EXIT_OK, EXIT_FATAL), last.status
            _check_incarnations(store, produced, bad)
            return
        assert last.status == EXIT_OK
        here = reconfigured.get("output", OUTPUTS[0])
        there = OUTPUTS[OUTPUTS.index(here) - 1]
        if moved:
            # `consumer finish` of the output the group left makes its open files final
            def finish() -> int:
                status = FinishRunner(Config(**{**runner_settings(), "output": there}), store=store,
                                      decoder=decoder(), consumer_factory=broker.consumer_factory(),
                                      current_topic_id=broker.topic_id).run()
                assert not unexpected, unexpected
                return status

            status = finish()
            if status == EXIT_FATAL:  # said loudly: a clean-up deleted what is staged there
                assert ever_deleted - set(store.objects), "a finish stopped with nothing deleted"
                store.objects.update(restorable(f"{_prefix(there)}/"))  # restored (a versioned bucket)
                status = finish()
            if status == EXIT_CONFIG:  # refused: a partition staged there the group holds no position of
                said = next(str(e["error"]) for e in reversed(logs) if e["event"] == "stopped: UsageError")
                assert "the group has no committed position of" in said, said
                p = int(said.split("no committed position of t[", 1)[1].split("]", 1)[0])
                assert broker.committed_offset("g", "t", p) is None
                # ... so its files are made final as it says: by a run of that output, caught up;
                # one that stops on records retention deleted unread is followed as it says too
                for _ in range(3):
                    back = Member(runner(until_caught_up=True, output=there), threads=threads)
                    members.append(back)
                    back.start()
                    back.run_to_end()
                    if not follow_not_in_log(back):
                        break
                assert back.status == EXIT_OK and not unexpected, (back.status, unexpected)
                left_open = [k for k in store.objects if k.startswith(f"{_prefix(there)}/_staging/")]
                status = finish() if left_open else EXIT_OK
            assert status == EXIT_OK
        found, letters = _final_offsets(store), _dead_letter_offsets(store)
        # With --output moved, rows a piece holds past where the other output begins inside it are
        # in both: said, as a warning naming them (a piece is not cut inside).
        said_in_both = _said_in_both(logs)
        for p in range(PARTITIONS):
            twice = {o for o in found[p] if found[p].count(o) > 1}
            assert twice <= said_in_both[p], f"p{p}: an offset in two final files: {sorted(twice)}"
            if not names_expired[p]:  # they say where the expired output ended: nothing is read again
                assert not expired[p] & set(found[p]), f"p{p}: expired output written again"
            skipped[p] |= expired[p]
            assert set(found[p]) <= set(range(produced[p])) - bad[p]
            assert letters[p] <= bad[p], f"p{p}: a dead letter for a good record"
            good = set(range(produced[p])) - bad[p] - skipped[p]
            assert good <= set(found[p]), f"p{p}: offsets in no final file"
            # Dead letters are at least once (a crash may write one again), never lost.
            assert bad[p] - skipped[p] <= letters[p], f"p{p}: bad records in no dead letter"
        # `consumer verify` (without Kafka: every offset below the end counts) finds the same.
        report = verify(store, _prefix(here), "t", committed=dict(enumerate(produced)),
                        partition_by=config.get("partition_by"), workers=2,
                        with_outputs=[(store, _prefix(there))] if moved else ())
        assert not report.bad_files and not report.staging_objects, report.to_text()
        for rep in report.partitions:
            gone = set(range(produced[rep.partition])) - set(found[rep.partition]) - letters[rep.partition]
            extra = len(found[rep.partition]) - len(set(found[rep.partition]))
            assert (rep.duplicate_count, rep.missing_count) == (extra, len(gone)), report.to_text()
            assert [a for a, _b in rep.missing[:1]] == sorted(gone)[:1], report.to_text()
    finally:
        for m in members:
            if m.thread is not None and m.thread.is_alive():
                m.killed = True
                m.go.release()
                m.thread.join(WAIT)
        counting.stop()
        noting.stop()
        watching.stop()
        telling_where_left.stop()
        coming_back.stop()
