"""Where each partition's committed position lives: one interface, two stores.

The protocol needs exactly one fact per partition — "every position below P is durable in S3" —
and it must be written only after the piece covering it is durable. For consumer groups that is
the group's committed offset (what lag monitors read, and what fences a zombie: a commit from a
stale generation fails). Replay jobs must not disturb the live group, so they keep the same fact
in a small object next to their output, replaced conditionally (If-Match on its ETag) so two
replays racing on one prefix cannot silently interleave.

**What a commit says about itself.** Kafka keeps a string with every committed offset (its
metadata). Every commit of this consumer puts a :func:`commit_note` there: what holds the rows below
the position in S3 (staged pieces of the open file, or a file being rolled) and the output they are
in. An operator's ``kafka-consumer-groups --reset-offsets`` writes an empty one, and so do older
versions. Recovery reads it with the position: a position this consumer committed after staging
the rows below it, with nothing in that output reaching it any more, means staged pieces were
deleted behind its back (a lifecycle rule on ``_staging/``, a clean-up), not an operator's reset
forwards, and the run stops instead of skipping those records (consumer.recovery).
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import structlog

from consumer.config import split_output
from consumer.errors import KafkaNotAuthorized
from consumer.kafka_names import Principal, not_authorized
from consumer.layout import Layout

_log = structlog.get_logger(__name__)


class PartitionFenced(RuntimeError):
    """This member no longer owns the partition (stale generation, lost assignment, or a newer
    writer replaced the replay state). Durable pieces past the committed position are garbage that
    the next owner's recovery removes; nothing committed is lost."""


class PositionError(RuntimeError):
    """The position store kept failing (coordinator unavailable for too long)."""


class PositionStore(Protocol):
    def committed(self, topic: str, partition: int) -> int | None: ...
    def note(self, topic: str, partition: int) -> str:
        """The note of the position :meth:`committed` last read or :meth:`commit` last wrote
        ('' when none)."""
        ...
    def commit(self, topic: str, partition: int, position: int, note: str = "") -> None: ...


#: The first word of every :func:`commit_note`, and its version.
NOTE_MAGIC = "kafka-parquet-consumer/1"
#: What holds the rows below a committed position: the open file's staged pieces (a flush), or a
#: file whose roll was decided at it (a roll's re-commit, or a position adopted from a final file).
STAGED, ROLLED = "staged", "rolled"
#: ... or nothing staged in the output reaches it: a recovery took the partition over at a position
#: with no note for this output (an operator's reset, or ``--output`` moved): the rows below are in
#: final files, in the other output, or were skipped. So the group's last commit names the output
#: it writes now even when it has nothing new to read, and ``consumer finish`` of an old output can
#: go on. Recovery reads it as it reads "rolled"; an earlier version, as no note.
UNSTAGED = "unstaged"
#: Kafka refuses metadata over ``offset.metadata.max.bytes`` (4096 by default): a longer output
#: URL is named by its hash.
_OUTPUT_IN_NOTE = 512


@dataclass(frozen=True)
class CommitNote:
    """A parsed :func:`commit_note`."""

    held: str
    output: str

    def staged_in(self, output: str) -> bool:
        """Whether the rows below the position were staged in ``output`` when it was committed."""
        return self.held == STAGED and same_output(self.output, output)


def note_output(output: str) -> str:
    """``output`` as a note names it: itself, or its hash when it is too long for Kafka."""
    if len(output) <= _OUTPUT_IN_NOTE:
        return output
    return "sha256:" + hashlib.sha256(output.encode()).hexdigest()


def same_output(named: str, output: str) -> bool:
    """Whether a note's output (:func:`note_output`) is ``output``, written alike or not (with a
    trailing slash: the same files)."""
    if named == note_output(output):
        return True
    try:
        return split_output(named) == split_output(output)
    except ValueError:  # a long output named by its hash
        return False


def commit_note(held: str, output: str) -> str:
    """The metadata committed with a position: who committed it, what holds the rows below it
    (:data:`STAGED` or :data:`ROLLED`) and in which output."""
    return f"{NOTE_MAGIC} {held} {note_output(output)}"


def parse_note(note: str) -> CommitNote | None:
    """The note of a committed position; None when this consumer did not write it (an operator's
    reset, an older version, another tool)."""
    parts = note.split(" ", 2)
    if len(parts) != 3 or parts[0] != NOTE_MAGIC or parts[1] not in (STAGED, ROLLED, UNSTAGED):
        return None
    return CommitNote(parts[1], parts[2])


_FENCED = {
    "ILLEGAL_GENERATION",
    "UNKNOWN_MEMBER_ID",
    "FENCED_INSTANCE_ID",
    "STALE_MEMBER_EPOCH",
    "FENCED_MEMBER_EPOCH",
    "_ASSIGNMENT_LOST",
    "REBALANCE_IN_PROGRESS",
    "_STATE",
    "UNKNOWN_TOPIC_OR_PART",
}


class KafkaGroupPositions:
    """Committed offsets of the consumer group, committed synchronously one partition at a time."""

    def __init__(
        self,
        consumer: Any,
        *,
        timeout: float = 30.0,
        max_elapsed: float = 60.0,
        group: str | None = None,
        principal: Principal | None = None,
    ) -> None:
        self.consumer = consumer
        #: what a refusal (an ACL the cluster does not grant) names: the group, and the principal
        #: the -X settings log in as when they say it (consumer.principal)
        self.group = group
        self.principal = principal
        self.timeout = timeout
        self.max_elapsed = max_elapsed
        #: An absolute ``time.monotonic()`` bound on every retry loop, one already running
        #: included; set on SIGTERM so the shutdown bound holds (Runner).
        self.give_up_at: float | None = None
        self.commits = 0
        self._commits_lock = threading.Lock()  # recoveries commit from several threads
        self.on_commit: list[Any] = []  # test hook: callables(topic, partition, position)
        self._notes: dict[tuple[str, int], str] = {}  # the note of each position last read
        #: The cluster refused a note as too long (``offset.metadata.max.bytes`` set below this
        #: consumer's few dozen bytes): commits go on without one, said once.
        self.notes_refused = False

    def _limit(self, deadline: float) -> float:
        return deadline if self.give_up_at is None else min(deadline, self.give_up_at)

    def committed(self, topic: str, partition: int) -> int | None:
        return self.committed_many([(topic, partition)])[(topic, partition)]

    def committed_many(self, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], int | None]:
        """The committed offsets of ``keys`` in one request (an assignment's, as it recovers)."""
        from confluent_kafka import KafkaException, TopicPartition

        what = ", ".join(f"{t}[{p}]" for t, p in keys[:3])
        if len(keys) > 3:
            what += f" and {len(keys) - 3} more"
        deadline = time.monotonic() + self.max_elapsed
        while True:
            try:
                found = self.consumer.committed([TopicPartition(t, p) for t, p in keys], timeout=self.timeout)
            except KafkaException as exc:
                self._refuse_if_not_authorized(exc.args[0] if exc.args else None, None)
                if time.monotonic() > self._limit(deadline):
                    raise PositionError(f"reading committed offset of {what}: {exc}") from exc
                time.sleep(0.5)
                continue
            failed = [tp for tp in found if tp.error]
            # A partition's own error that may pass (a transaction's offsets not stable yet, a
            # coordinator loading or moving) is asked again while there is time, as the whole
            # request's are (the Java client does the same since KAFKA-20165).
            if not failed or not all(map(_retriable, failed)) or time.monotonic() > self._limit(deadline):
                break
            time.sleep(0.5)
        out: dict[tuple[str, int], int | None] = {}
        for tp in found:
            self._refuse_if_not_authorized(tp.error, tp.topic)
            if tp.error:
                raise PositionError(f"reading committed offset of {tp.topic}[{tp.partition}]: {tp.error}")
            out[(tp.topic, tp.partition)] = int(tp.offset) if tp.offset >= 0 else None
            self._notes[(tp.topic, tp.partition)] = (tp.metadata or "") if tp.offset >= 0 else ""
        return out

    def note(self, topic: str, partition: int) -> str:
        return self._notes.get((topic, partition), "")

    def commit(self, topic: str, partition: int, position: int, note: str = "") -> None:
        from confluent_kafka import KafkaException, TopicPartition

        deadline = time.monotonic() + self.max_elapsed
        delay = 0.1
        while True:
            err: Any = None
            if self.notes_refused:
                note = ""
            try:
                result = self.consumer.commit(
                    offsets=[TopicPartition(topic, partition, position, note)], asynchronous=False
                )
                err = next((tp.error for tp in result or [] if tp.error), None)
            except KafkaException as exc:
                err = exc.args[0] if exc.args else exc
            if err is None:
                with self._commits_lock:
                    self.commits += 1
                    self._notes[(topic, partition)] = note
                for hook in self.on_commit:
                    hook(topic, partition, position)
                return
            name = err.name() if hasattr(err, "name") else str(err)
            if name == "OFFSET_METADATA_TOO_LARGE" and note:
                self.notes_refused = True
                _log.warning(
                    "the cluster refuses the offset metadata this consumer commits (its "
                    "offset.metadata.max.bytes is below the note's length): commits go on without "
                    "it, so staged pieces deleted by someone else will look like a reset forwards",
                    note_bytes=len(note.encode()),
                )
                continue
            if name in _FENCED:
                raise PartitionFenced(f"commit of {topic}[{partition}]@{position} refused: {name}")
            self._refuse_if_not_authorized(err, topic)
            retriable = bool(getattr(err, "retriable", lambda: True)()) or name in ("_WAIT_COORD", "_TRANSPORT", "_ALL_BROKERS_DOWN", "COORDINATOR_NOT_AVAILABLE", "NOT_COORDINATOR", "COORDINATOR_LOAD_IN_PROGRESS")  # noqa: E501 - librdkafka marks these transient coordinator errors non-retriable
            if not retriable or time.monotonic() > self._limit(deadline):
                raise PositionError(f"commit of {topic}[{partition}]@{position} failed: {err}")
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _refuse_if_not_authorized(self, err: Any, topic: str | None) -> None:
        """Raise :class:`~consumer.errors.KafkaNotAuthorized` when ``err`` (a KafkaError, or None)
        is the cluster refusing the principal the group or the topic: not an outage to wait out,
        and "coordinator unavailable" would send the operator the wrong way."""
        code = getattr(err, "code", None)
        said = not_authorized(code(), topic, self.group, str(err), self.principal) if callable(code) else None
        if said is not None:
            raise KafkaNotAuthorized(said)


def _retriable(tp: Any) -> bool:
    """Whether a partition's error in an OffsetFetch answer may pass if asked again."""
    retriable = getattr(tp.error, "retriable", None)
    return bool(retriable()) if callable(retriable) else False


_R = TypeVar("_R")


class OwnerThreadPositions:
    """A :class:`PositionStore` whose calls all run on the thread that made it, whoever asks.

    Kafka's group calls must stay on the thread that polls: ``committed()`` from another thread,
    while the polling thread was inside the assign callback, hung for minutes past its 30 s
    timeout (confluent-kafka 2.12, Kafka 4.1). Partitions recover side by side in
    threads from that callback, and flush side by side in a revoke or a shutdown
    (:mod:`consumer.side_by_side`), so their reads and commits are handed to the owner, which runs
    them in :meth:`serve` while it waits for those threads. A store whose ``any_thread`` is true
    (replay's :class:`S3StatePositions`) is called from the asking thread instead.
    """

    def __init__(self, inner: PositionStore) -> None:
        self.inner = inner
        self._owner = threading.get_ident()
        #: a store that says its calls may come from any thread (replay's S3 objects) is called
        #: from the asking thread, so its round trips overlap too
        self._any_thread = bool(getattr(inner, "any_thread", False))
        self._calls: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = queue.SimpleQueue()
        self._read: dict[tuple[str, int], int | None] = {}
        self._read_lock = threading.Lock()

    def prefetch(self, keys: Sequence[tuple[str, int]]) -> None:
        """On the owner: read the committed offsets of ``keys`` now, in one request where the store
        can (Kafka: one OffsetFetch instead of one round trip per partition, each waiting its turn
        on this thread); each is handed out once, to the next :meth:`committed` of its partition."""
        many = getattr(self.inner, "committed_many", None)
        if many is not None and keys:
            self._read.update(many(keys))

    def committed(self, topic: str, partition: int) -> int | None:
        with self._read_lock:
            if (topic, partition) in self._read:
                return self._read.pop((topic, partition))
        return self._on_owner(lambda: self.inner.committed(topic, partition))

    def note(self, topic: str, partition: int) -> str:
        return self.inner.note(topic, partition)  # what the read of the position kept: no call

    def commit(self, topic: str, partition: int, position: int, note: str = "") -> None:
        self._on_owner(lambda: self.inner.commit(topic, partition, position, note))

    def _on_owner(self, call: Callable[[], _R]) -> _R:
        if self._any_thread or threading.get_ident() == self._owner:
            return call()
        done: Future[_R] = Future()
        self._calls.put((done, call))
        return done.result()

    def wake(self) -> None:
        """Make :meth:`serve` look at its condition again (a caller's work may have ended)."""
        self._calls.put(None)

    def serve(self, finished: Callable[[], bool]) -> None:
        """On the owner: run the other threads' calls, in order, until ``finished()``, which is
        checked at start and after every :meth:`wake`."""
        while not finished():
            item = self._calls.get()
            if item is None:
                continue
            done, call = item
            try:
                done.set_result(call())
            except BaseException as exc:  # the caller's thread raises it, as if it had called
                done.set_exception(exc)


class S3StatePositions:
    """Positions kept as ``_state/topic=…/partition=…`` JSON objects beside a replay's output."""

    #: plain S3 requests, one object per partition: any thread may call (OwnerThreadPositions)
    any_thread = True

    def __init__(self, store: Any, layout: Layout) -> None:
        self.store = store
        self.layout = layout
        self._etags: dict[tuple[str, int], str] = {}

    def committed(self, topic: str, partition: int) -> int | None:
        """The position the state object holds, and its ETag for the next commit. The ETag is read
        first: if another writer replaces the object in between, the position read is newer than
        the ETag and this writer's next commit is refused (fenced), never the other's."""
        key = self.layout.state_key(topic, partition)
        info = self.store.head(key)
        try:
            data = self.store.get(key)
        except FileNotFoundError:
            return None
        if info is not None:
            self._etags[(topic, partition)] = info.etag
        return int(json.loads(data)["position"])

    def note(self, topic: str, partition: int) -> str:
        """Replays keep no note: a replay's output is its own, and nobody resets its state by hand."""
        return ""

    def commit(self, topic: str, partition: int, position: int, note: str = "") -> None:
        """Create or replace the state object only if it is still the one this writer read or
        wrote (If-None-Match / If-Match): a second replay of the prefix is fenced. The next ETag
        is the one S3's reply gives: a HEAD after the PUT could see another writer's object and
        let this writer overwrite it next time."""
        from consumer.storage import PutOutcome, same_object

        key = self.layout.state_key(topic, partition)
        body = json.dumps({"topic": topic, "partition": partition, "position": position}).encode()
        etag = self._etags.get((topic, partition))
        if etag is None:
            created = self.store.create(key, body)
            if created.outcome is PutOutcome.EXISTS_OTHER:
                raise PartitionFenced(f"replay state {key} was created by another writer")
            new = created.etag
        else:
            new = self.store.replace_if_match(key, body, etag)
            if new is None:  # a retry of a PUT that took effect (its reply lost) is refused too
                found = same_object(self.store, key, body)
                new = found.etag if found.outcome is PutOutcome.EXISTS_SAME else None
            if new is None:
                raise PartitionFenced(f"replay state {key} was changed by another writer")
        if not new:  # a server whose reply names no ETag: ask for it (the race above stays open)
            info = self.store.head(key)
            new = info.etag if info else ""
        self._etags[(topic, partition)] = new

