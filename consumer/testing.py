"""Test doubles for the parts the partition worker talks to: S3, the position store, Kafka messages.

Why they live in the package (the structlog model): tests of this project *and* of code built on
it need the same doubles, and a double only earns trust if it is kept next to the real part and
changes with it. Each double is faithful exactly where the durable-row-group protocol depends on
the real part's behaviour, and nowhere else:

* :class:`MemoryStore` — the S3 facts the protocol rests on (see ``tests/stack/test_s3_facts.py``):
  ``If-None-Match: *`` refuses to overwrite (412), ``If-Match`` on the ETag, MD5 ETags (and
  ``md5-of-md5s-N`` for multipart objects), byte ranges with S3Store's start/end semantics, every
  non-last multipart part ≥ 5 MiB (``EntityTooSmall`` at completion), ``UploadPartCopy`` copying
  exactly the requested bytes, and an incomplete multipart upload that is invisible until
  completed. :meth:`MemoryStore.compose` is S3Store's algorithm (same :func:`plan_parts`, same
  requests, same counters) on top of request-level methods with S3's rules, so the two agree
  request for request. ``tests/unit/test_testing_doubles.py`` runs the same assertions against the
  real S3 server to keep it that way.
* :class:`MemoryPositions` — committed positions with fencing, as
  :class:`~consumer.positions.KafkaGroupPositions` reports it.
* :class:`Message` — the slice of ``confluent_kafka.Message`` the worker and runner read.

Fault injection: ``fail_next(op, exc)`` raises instead of doing ``op`` (or, with ``after=True``,
after doing it: the reply was lost), and ``on_op`` is called before every operation, so a test
can stop at a named point. Raise :class:`Crash` (a ``BaseException``) from ``on_op`` to model
``kill -9``: nothing the store does in ``except Exception`` (aborting a multipart upload) runs.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from consumer import faults
from consumer.config import MIN_S3_PART
from consumer.positions import PartitionFenced, PositionError, PositionStore
from consumer.storage import (
    CopyRange,
    FatalStorageError,
    ObjectInfo,
    ObjectStore,
    PutOutcome,
    Segment,
    StoreStats,
    plan_parts,
)

__all__ = [
    "OPS",
    "POSITION_OPS",
    "REQUESTS",
    "Crash",
    "EntityTooSmall",
    "MemoryPositions",
    "MemoryStore",
    "Message",
    "PreconditionFailed",
    "Upload",
    "crash_at",
    "md5_etag",
    "messages",
    "multipart_etag",
]

OnOp = Callable[[str, str], None]

#: The :class:`~consumer.storage.ObjectStore` methods; ``fail_next``/``on_op`` use these names.
OPS = frozenset(
    {"put_if_absent", "replace_if_match", "get", "head", "list", "delete", "compose", "abort_uploads"}
)
#: The S3 requests behind them, named as S3Store counts them in ``stats.requests``; ``fail_next``
#: and ``on_op`` see these too (e.g. fail the 2nd ``upload_part_copy`` of a compose).
REQUESTS = frozenset(
    {
        "put_object",
        "get_object",
        "head_object",
        "list_objects_v2",
        "delete_objects",
        "create_multipart_upload",
        "upload_part",
        "upload_part_copy",
        "complete_multipart_upload",
        "abort_multipart_upload",
        "list_multipart_uploads",
    }
)
POSITION_OPS = frozenset({"committed", "commit"})


class Crash(BaseException):
    """Raise from an ``on_op`` hook to stop a test at a named point like ``kill -9`` would: being a
    ``BaseException`` it passes every ``except Exception`` clean-up on its way out."""


class PreconditionFailed(Exception):
    """HTTP 412 from a conditional request (request-level methods only; the ObjectStore methods
    turn it into :class:`PutOutcome` / ``False`` exactly as S3Store does)."""


class EntityTooSmall(FatalStorageError):
    """A non-last multipart part under 5 MiB at CompleteMultipartUpload (S3's 400 EntityTooSmall).
    A :class:`FatalStorageError` because that is what S3Store raises for it."""


def _range_not_satisfiable() -> OSError:
    # What S3Store raises for a 416 InvalidRange: s3fs turns it into OSError(EINVAL).
    return OSError(errno.EINVAL, "The requested range is not satisfiable")


def _no_such_key(key: str) -> FileNotFoundError:
    # What S3Store raises for NoSuchKey, from get() and from UploadPartCopy alike.
    return FileNotFoundError(errno.ENOENT, "The specified key does not exist.", key)


def md5_etag(data: bytes) -> str:
    """The ETag S3 gives a single-PUT object (unquoted, as :class:`ObjectInfo` carries it)."""
    return hashlib.md5(data).hexdigest()


def multipart_etag(parts: Sequence[bytes]) -> str:
    """The ETag S3 gives a multipart object: MD5 of the parts' binary MD5s, ``-<part count>``."""
    digest = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    return f"{digest}-{len(parts)}"


@dataclass
class _Fault:
    exc: BaseException | type[BaseException]
    times: int
    after: bool


class _Faults:
    """Armed failures per operation name, shared by the store and the positions double."""

    def __init__(self, known: frozenset[str]) -> None:
        self.known = known
        self.armed: dict[str, list[_Fault]] = {}

    def add(self, op: str, exc: BaseException | type[BaseException], times: int, after: bool) -> None:
        if op not in self.known:
            raise ValueError(f"unknown operation {op!r}; one of {sorted(self.known)}")
        if times < 1:
            raise ValueError("times must be ≥ 1")
        self.armed.setdefault(op, []).append(_Fault(exc, times, after))

    def take(self, op: str, after: bool) -> BaseException | None:
        for f in self.armed.get(op, []):
            if f.after == after:
                f.times -= 1
                if f.times == 0:
                    self.armed[op].remove(f)
                return f.exc() if isinstance(f.exc, type) else f.exc
        return None


@dataclass
class Upload:
    """An unfinished multipart upload: parts uploaded so far, not an object (not listed, HEAD 404)."""

    key: str
    upload_id: str
    parts: dict[int, bytes] = field(default_factory=dict)


class MemoryStore:
    """:class:`~consumer.storage.ObjectStore` in memory, with S3's rules where the protocol needs them.

    ``objects`` maps key → bytes (read it in assertions; assigning plants an object as a single
    PUT would). ``uploads`` holds unfinished multipart uploads by upload id.
    """

    def __init__(self, *, on_op: OnOp | None = None) -> None:
        self.stats = StoreStats()
        self.objects: dict[str, bytes] = {}
        self.uploads: dict[str, Upload] = {}
        self.on_op: OnOp | None = on_op
        #: A lax S3-compatible server: If-None-Match / If-Match are ignored (writes always win).
        self.ignore_conditional_writes = False
        self._etags: dict[str, tuple[bytes, str]] = {}  # key → (the bytes it was computed for, etag)
        self._faults = _Faults(OPS | REQUESTS)
        self._ids = itertools.count(1)
        self._lock = threading.RLock()

    # -- switches ------------------------------------------------------------------------------
    def fail_next(
        self,
        op: str,
        exc: BaseException | type[BaseException],
        times: int = 1,
        *,
        after: bool = False,
    ) -> None:
        """Make the next ``times`` calls of ``op`` (an ObjectStore method or an S3 request name)
        raise ``exc`` — typically :class:`~consumer.storage.TransientStorageError` (S3Store gave up
        retrying) or :class:`~consumer.storage.FatalStorageError`. With ``after=True`` the
        operation takes effect first and then raises: the request succeeded but its reply was lost.
        """
        with self._lock:
            self._faults.add(op, exc, times, after)

    def etag(self, key: str) -> str:
        """The object's ETag (unquoted); KeyError if absent."""
        data = self.objects[key]
        known = self._etags.get(key)
        if known is not None and known[0] is data:
            return known[1]
        return md5_etag(data)

    # -- plumbing ------------------------------------------------------------------------------
    def _enter(self, op: str, key: str) -> None:
        if self.on_op is not None:
            self.on_op(op, key)
        exc = self._faults.take(op, after=False)
        if exc is not None:
            raise exc

    def _leave(self, op: str) -> None:
        exc = self._faults.take(op, after=True)
        if exc is not None:
            raise exc

    def _request(self, op: str, key: str) -> None:
        self.stats.count(op)  # S3Store counts every attempt, failed ones included
        self._enter(op, key)

    def _store(self, key: str, data: bytes, etag: str | None = None) -> None:
        data = bytes(data)
        self.objects[key] = data
        self._etags[key] = (data, etag or md5_etag(data))

    # -- request level (S3's rules; what S3Store's methods are made of) --------------------------
    def put_object(
        self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None
    ) -> str:
        """PutObject; ``if_none_match`` is ``If-None-Match: *``, ``if_match`` an unquoted ETag.
        Returns the new ETag; :class:`PreconditionFailed` (412) or FileNotFoundError (If-Match on
        a missing key: 404)."""
        self._request("put_object", key)
        if not self.ignore_conditional_writes:
            if if_none_match and key in self.objects:
                raise PreconditionFailed(f"412 PreconditionFailed: {key} exists")
            if if_match is not None:
                if key not in self.objects:
                    raise _no_such_key(key)
                if self.etag(key) != if_match:
                    raise PreconditionFailed(f"412 PreconditionFailed: {key} has another ETag")
        self._store(key, data)
        self._leave("put_object")
        return self.etag(key)

    def get_object(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """GetObject with fsspec's range semantics (Python-slice-like, negatives from the end);
        a start at or past the end is S3's 416, as S3Store raises it."""
        self._request("get_object", key)
        if key not in self.objects:
            raise _no_such_key(key)
        data = self.objects[key]
        size = len(data)
        if start is None and end is None:
            out = data
        elif start is not None and start < 0 and end is None:
            if size == 0:
                raise _range_not_satisfiable()
            out = data[max(0, size + start) :]  # bytes=-N: the last N bytes
        else:
            first = 0 if start is None else (max(0, size + start) if start < 0 else start)
            last = size if end is None else (size + end if end < 0 else end)
            if first >= size:
                raise _range_not_satisfiable()
            out = data[first:last]
        self._leave("get_object")
        return out

    def head_object(self, key: str) -> ObjectInfo | None:
        self._request("head_object", key)
        info = ObjectInfo(key, len(self.objects[key]), self.etag(key)) if key in self.objects else None
        self._leave("head_object")
        return info

    def list_objects_v2(self, prefix: str, start_after: str = "", max_keys: int = 1000) -> list[ObjectInfo]:
        """One page of keys after ``start_after``, in S3's order (UTF-8 bytes = code points)."""
        self._request("list_objects_v2", prefix)
        keys = sorted(k for k in self.objects if k.startswith(prefix) and k > start_after)[:max_keys]
        out = [ObjectInfo(k, len(self.objects[k]), self.etag(k)) for k in keys]
        self._leave("list_objects_v2")
        return out

    def delete_objects(self, keys: Sequence[str]) -> None:
        """DeleteObjects (≤ 1000 keys); a missing key is not an error, as in S3."""
        if len(keys) > 1000:
            raise ValueError("DeleteObjects takes at most 1000 keys")
        self._request("delete_objects", keys[0] if keys else "")
        for k in keys:
            self.objects.pop(k, None)
            self._etags.pop(k, None)
        self._leave("delete_objects")

    def create_multipart_upload(self, key: str) -> str:
        self._request("create_multipart_upload", key)
        upload_id = f"upload-{next(self._ids)}"
        self.uploads[upload_id] = Upload(key, upload_id)
        self._leave("create_multipart_upload")
        return upload_id

    def _upload(self, key: str, upload_id: str) -> Upload:
        up = self.uploads.get(upload_id)
        if up is None or up.key != key:
            raise FileNotFoundError(errno.ENOENT, "NoSuchUpload", upload_id)
        return up

    def upload_part(self, key: str, upload_id: str, part_number: int, body: bytes) -> str:
        self._request("upload_part", key)
        self._upload(key, upload_id).parts[part_number] = bytes(body)
        self._leave("upload_part")
        return md5_etag(body)

    def upload_part_copy(self, key: str, upload_id: str, part_number: int, src: CopyRange) -> str:
        """UploadPartCopy of bytes ``[src.start, src.end)`` of an existing object, exactly."""
        self._request("upload_part_copy", key)
        up = self._upload(key, upload_id)
        if src.key not in self.objects:
            raise _no_such_key(src.key)
        data = self.objects[src.key]
        if src.start < 0 or src.end <= src.start or src.end > len(data):
            raise _range_not_satisfiable()
        body = data[src.start : src.end]
        up.parts[part_number] = body
        self._leave("upload_part_copy")
        return md5_etag(body)

    def complete_multipart_upload(self, key: str, upload_id: str, *, if_none_match: bool = False) -> str:
        """Complete with every uploaded part, in part-number order. S3's checks: a non-last part
        under 5 MiB → :class:`EntityTooSmall` (the upload stays, abortable); ``If-None-Match: *``
        on an existing key → :class:`PreconditionFailed`. Only now does the object appear."""
        self._request("complete_multipart_upload", key)
        up = self._upload(key, upload_id)
        bodies = [up.parts[n] for n in sorted(up.parts)]
        if not bodies:
            raise FatalStorageError("MalformedXML: a multipart upload needs at least one part")
        small = [i + 1 for i, b in enumerate(bodies[:-1]) if len(b) < MIN_S3_PART]
        if small:
            raise EntityTooSmall(
                f"S3 complete_multipart_upload on {key} failed: EntityTooSmall (part {small[0]}): "
                "a multipart part below 5 MiB was rejected (bug: please report)"
            )
        if if_none_match and key in self.objects and not self.ignore_conditional_writes:
            raise PreconditionFailed(f"412 PreconditionFailed: {key} exists")
        del self.uploads[upload_id]
        etag = multipart_etag(bodies)
        self._store(key, b"".join(bodies), etag)
        self._leave("complete_multipart_upload")
        return etag

    def abort_multipart_upload(self, key: str, upload_id: str) -> None:
        self._request("abort_multipart_upload", key)
        self._upload(key, upload_id)
        del self.uploads[upload_id]
        self._leave("abort_multipart_upload")

    def list_multipart_uploads(self, prefix: str) -> list[Upload]:
        self._request("list_multipart_uploads", prefix)
        out = sorted((u for u in self.uploads.values() if u.key.startswith(prefix)), key=lambda u: u.key)
        self._leave("list_multipart_uploads")
        return out

    # -- ObjectStore ---------------------------------------------------------------------------
    def put_if_absent(self, key: str, data: bytes) -> PutOutcome:
        """As S3Store: conditional PUT; on 412 a HEAD tells our own earlier write (same MD5) from
        someone else's. A lax server (``ignore_conditional_writes``) overwrites: CREATED."""
        with self._lock:
            self._enter("put_if_absent", key)
            try:
                self.put_object(key, data, if_none_match=True)
                self.stats.bytes_uploaded += len(data)
                outcome = PutOutcome.CREATED
            except PreconditionFailed:
                info = self.head_object(key)
                same = info is not None and info.etag == md5_etag(data)
                outcome = PutOutcome.EXISTS_SAME if same else PutOutcome.EXISTS_OTHER
            self._leave("put_if_absent")
            return outcome

    def replace_if_match(self, key: str, data: bytes, etag: str) -> bool:
        """As S3Store: PUT with ``If-Match``; False if the key is gone or has another ETag."""
        with self._lock:
            self._enter("replace_if_match", key)
            try:
                self.put_object(key, data, if_match=etag)
            except (PreconditionFailed, FileNotFoundError):
                return False
            self.stats.bytes_uploaded += len(data)
            self._leave("replace_if_match")
            return True

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` (whole object by default); FileNotFoundError if absent. Like
        S3Store, ``end <= start`` is ``b""`` without a request."""
        with self._lock:
            self._enter("get", key)
            if start is not None and end is not None and end <= start:
                return b""
            data = self.get_object(key, start, end)
            self.stats.bytes_downloaded += len(data)
            self._leave("get")
            return data

    def head(self, key: str) -> ObjectInfo | None:
        with self._lock:
            self._enter("head", key)
            info = self.head_object(key)
            self._leave("head")
            return info

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object under ``prefix``, sorted by key, one request per 1000 keys (as S3Store)."""
        with self._lock:
            self._enter("list", prefix)
            out: list[ObjectInfo] = []
            while True:
                page = self.list_objects_v2(prefix, out[-1].key if out else "")
                out.extend(page)
                if len(page) < 1000:
                    break
            self._leave("list")
            return out

    def delete(self, keys: Sequence[str]) -> None:
        with self._lock:
            self._enter("delete", keys[0] if keys else "")
            for i in range(0, len(keys), 1000):
                self.delete_objects(keys[i : i + 1000])
            self._leave("delete")

    def compose(self, key: str, segments: Sequence[Segment]) -> PutOutcome:
        """S3Store's compose, request for request: one conditional PUT when the plan has one part,
        else a multipart upload (UploadPartCopy for ranges ≥ 5 MiB) completed with
        ``If-None-Match: *`` — EXISTS_OTHER if the key appeared meanwhile. On an error the upload
        is aborted; on :class:`Crash` it is left behind, invisible, for ``abort_uploads``."""
        with self._lock:
            self._enter("compose", key)
            parts = plan_parts(segments)
            if len(parts) <= 1:
                outcome = self.put_if_absent(key, self._materialise(parts[0] if parts else []))
                self._leave("compose")
                return outcome
            upload_id = self.create_multipart_upload(key)
            try:
                for n, part in enumerate(parts, start=1):
                    if len(part) == 1 and isinstance(part[0], CopyRange) and part[0].length >= MIN_S3_PART:
                        self.upload_part_copy(key, upload_id, n, part[0])
                        self.stats.bytes_copied_server_side += part[0].length
                    else:
                        body = self._materialise(part)
                        self.upload_part(key, upload_id, n, body)
                        self.stats.bytes_uploaded += len(body)
                    faults.point("mid_merge")
                self.complete_multipart_upload(key, upload_id, if_none_match=True)
            except Exception as exc:
                self._abort(key, upload_id)
                if isinstance(exc, PreconditionFailed):
                    return PutOutcome.EXISTS_OTHER
                raise
            self._leave("compose")
            return PutOutcome.CREATED

    def _materialise(self, part: Sequence[Segment]) -> bytes:
        return b"".join(s if isinstance(s, bytes) else self.get(s.key, s.start, s.end) for s in part)

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self.abort_multipart_upload(key, upload_id)
        except Exception:  # best effort, as in S3Store: abort_uploads() sweeps at recovery
            return

    def abort_uploads(self, key: str) -> int:
        """Abort unfinished multipart uploads to exactly ``key``; how many there were."""
        with self._lock:
            self._enter("abort_uploads", key)
            n = 0
            for up in self.list_multipart_uploads(key):
                if up.key == key:
                    self._abort(key, up.upload_id)
                    n += 1
            self._leave("abort_uploads")
            return n


class MemoryPositions:
    """:class:`~consumer.positions.PositionStore` in memory, with the group's fencing.

    ``history`` lists every successful commit as ``(topic, partition, position)``, in order.
    """

    def __init__(self, *, on_op: OnOp | None = None) -> None:
        self.positions: dict[tuple[str, int], int] = {}
        self.history: list[tuple[str, int, int]] = []
        self.fenced: set[tuple[str, int]] = set()
        self.on_op: OnOp | None = on_op  # called with (op, "topic[partition]") before each call
        self._faults = _Faults(POSITION_OPS)
        self._lock = threading.Lock()

    def fail_next(
        self,
        op: str,
        exc: BaseException | type[BaseException] = PositionError,
        times: int = 1,
        *,
        after: bool = False,
    ) -> None:
        """Make the next ``times`` calls of ``committed``/``commit`` raise ``exc`` (PositionError:
        the coordinator stayed away). ``after=True`` on ``commit``: the commit landed, the reply was
        lost — the position moved although the caller saw an error."""
        with self._lock:
            self._faults.add(op, exc, times, after)

    def fence(self, topic: str, partition: int) -> None:
        """This member lost the partition (rebalance, stale generation): commits now raise
        :class:`~consumer.positions.PartitionFenced`, as KafkaGroupPositions reports
        ILLEGAL_GENERATION / UNKNOWN_MEMBER_ID / …; reading the committed position still works."""
        with self._lock:
            self.fenced.add((topic, partition))

    def unfence(self, topic: str, partition: int) -> None:
        """A later rebalance gave the partition back to this member."""
        with self._lock:
            self.fenced.discard((topic, partition))

    def reset(self, topic: str, partition: int, position: int | None) -> None:
        """An operator's ``kafka-consumer-groups --reset-offsets`` (None: delete the offset). Not
        a commit of ours, so not in ``history``."""
        with self._lock:
            if position is None:
                self.positions.pop((topic, partition), None)
            else:
                self.positions[(topic, partition)] = position

    def _enter(self, op: str, topic: str, partition: int) -> None:
        if self.on_op is not None:
            self.on_op(op, f"{topic}[{partition}]")
        exc = self._faults.take(op, after=False)
        if exc is not None:
            raise exc

    def committed(self, topic: str, partition: int) -> int | None:
        with self._lock:
            self._enter("committed", topic, partition)
            pos = self.positions.get((topic, partition))
            exc = self._faults.take("committed", after=True)
            if exc is not None:
                raise exc
            return pos

    def commit(self, topic: str, partition: int, position: int) -> None:
        with self._lock:
            self._enter("commit", topic, partition)
            if (topic, partition) in self.fenced:
                raise PartitionFenced(
                    f"commit of {topic}[{partition}]@{position} refused: ILLEGAL_GENERATION"
                )
            self.positions[(topic, partition)] = position
            self.history.append((topic, partition, position))
            exc = self._faults.take("commit", after=True)
            if exc is not None:
                raise exc


TIMESTAMP_NOT_AVAILABLE, TIMESTAMP_CREATE_TIME, TIMESTAMP_LOG_APPEND_TIME = 0, 1, 2


@dataclass(frozen=True, init=False)
class Message:
    """The part of ``confluent_kafka.Message`` the worker and runner read.

    ``Message(offset, value, topic="t", partition=0, key=None, timestamp=None, …)``. ``timestamp()``
    is ``(type, ms)`` as in confluent-kafka: ``(1, ts)`` (create time) when ``timestamp`` is given,
    ``(0, -1)`` (not available) when it is None; pass ``timestamp_type=2`` for log-append time.
    """

    _offset: int
    _value: bytes | None
    _topic: str
    _partition: int
    _key: bytes | None
    _timestamp: tuple[int, int]
    _headers: tuple[tuple[str, bytes | None], ...] | None
    _error: Any

    def __init__(
        self,
        offset: int,
        value: bytes | None,
        *,
        topic: str = "t",
        partition: int = 0,
        key: bytes | None = None,
        timestamp: int | None = None,
        timestamp_type: int = TIMESTAMP_CREATE_TIME,
        headers: Sequence[tuple[str, bytes | None]] | None = None,
        error: Any = None,
    ) -> None:
        ts = (TIMESTAMP_NOT_AVAILABLE, -1) if timestamp is None else (timestamp_type, timestamp)
        for name, v in (
            ("_offset", offset),
            ("_value", value),
            ("_topic", topic),
            ("_partition", partition),
            ("_key", key),
            ("_timestamp", ts),
            ("_headers", tuple(headers) if headers is not None else None),
            ("_error", error),
        ):
            object.__setattr__(self, name, v)

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def timestamp(self) -> tuple[int, int]:
        return self._timestamp

    def headers(self) -> list[tuple[str, bytes | None]] | None:
        # confluent-kafka returns a fresh list (or None when the record has no headers)
        return list(self._headers) if self._headers is not None else None

    def error(self) -> Any:
        return self._error

    def len(self) -> int:
        """Length of the value, as ``confluent_kafka.Message.len()``."""
        return len(self._value) if self._value is not None else 0

    def __len__(self) -> int:
        return self.len()


def messages(
    values: Sequence[bytes | None],
    *,
    start: int = 0,
    topic: str = "t",
    partition: int = 0,
    key: bytes | None = None,
    first_timestamp: int = 1_700_000_000_000,
) -> list[Message]:
    """Consecutive messages of one partition from offset ``start``, create time
    ``first_timestamp + i`` ms for the i-th: the usual shape of a test's input."""
    return [
        Message(start + i, v, topic=topic, partition=partition, key=key, timestamp=first_timestamp + i)
        for i, v in enumerate(values)
    ]


def crash_at(op: str, *, key_part: str = "", nth: int = 1) -> OnOp:
    """An ``on_op`` hook raising :class:`Crash` the ``nth`` time ``op`` is reached with a key
    containing ``key_part`` — ``kill -9`` at a named point, e.g.
    ``store.on_op = crash_at("upload_part_copy", nth=2)`` stops a merge between its parts."""
    seen = 0

    def hook(name: str, key: str) -> None:
        nonlocal seen
        if name == op and key_part in key:
            seen += 1
            if seen == nth:
                raise Crash(f"crash at {op} #{nth} ({key})")

    return hook


def _conforms(store: MemoryStore, positions: MemoryPositions) -> tuple[ObjectStore, PositionStore]:
    """Never called: mypy checks here that the doubles satisfy the protocols they stand in for."""
    return store, positions
