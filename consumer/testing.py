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
* :class:`MemoryBroker` / :class:`MemoryConsumer` — topic logs, a group coordinator and the slice
  of ``confluent_kafka.Consumer`` the runner calls: enough to run
  :class:`~consumer.runner.GroupRunner` through assignment, rebalance, expulsion and commit.

Fault injection: ``fail_next(op, exc)`` raises instead of doing ``op`` (or, with ``after=True``,
after doing it: the reply was lost), and ``on_op`` is called before every operation, so a test
can stop at a named point. Raise :class:`Crash` (a ``BaseException``) from ``on_op`` to model
``kill -9``: nothing the store does in ``except Exception`` (aborting a multipart upload) runs.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import hashlib
import itertools
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from consumer import faults
from consumer.config import MIN_S3_PART
from consumer.kafka_names import TP, GroupView
from consumer.positions import PartitionFenced, PositionError, PositionStore
from consumer.storage import (
    CopyRange,
    Created,
    FatalStorageError,
    Metadata,
    ObjectInfo,
    ObjectStore,
    PutOutcome,
    Segment,
    StoreStats,
    plan_equal_parts,
    plan_parts,
    same_object,
)

__all__ = [
    "OPS",
    "POSITION_OPS",
    "REQUESTS",
    "Crash",
    "EntityTooSmall",
    "MemoryBroker",
    "MemoryConsumer",
    "MemoryPositions",
    "MemoryRegistry",
    "MemoryStore",
    "Message",
    "PreconditionFailed",
    "Upload",
    "at_consume",
    "crash_at",
    "crash_at_request",
    "md5_etag",
    "memory_runner",
    "messages",
    "multipart_etag",
    "page_view_broker",
]

OnOp = Callable[[str, str], None]


class MemoryRegistry:
    """A Confluent schema registry in memory: ids hand out increasing, versions per subject, and
    an outage switch (``down``) that makes every call raise ``RegistryUnavailable`` as the real
    client does after its retries. Answers the calls of :class:`consumer.registry.Registry`."""

    def __init__(self) -> None:
        self.schemas: dict[int, dict[str, Any]] = {}
        self.subjects: dict[str, list[int]] = {}
        self.down = False
        self.calls: list[tuple[str, Any]] = []

    def register(self, subject: str, schema: dict[str, Any]) -> int:
        sid = next((k for k, known in self.schemas.items() if known == schema), 0)
        if not sid:
            sid = len(self.schemas) + 1
            self.schemas[sid] = schema
        versions = self.subjects.setdefault(subject, [])
        if sid not in versions:
            versions.append(sid)
        return sid

    def _call(self, name: str, arg: Any) -> None:
        from consumer.registry import RegistryUnavailable

        self.calls.append((name, arg))
        if self.down:
            raise RegistryUnavailable(f"memory registry is down ({name} {arg})")

    def schema_by_id(self, schema_id: int) -> dict[str, Any]:
        from consumer.registry import UnknownSchemaId

        self._call("schema_by_id", schema_id)
        if schema_id not in self.schemas:
            raise UnknownSchemaId(schema_id, "memory://registry")
        return self.schemas[schema_id]

    def latest_version(self, subject: str) -> tuple[int, int] | None:
        self._call("latest_version", subject)
        versions = self.subjects.get(subject)
        return (versions[-1], len(versions)) if versions else None

    def versions_of_id(self, schema_id: int) -> list[tuple[str, int]]:
        self._call("versions_of_id", schema_id)
        return [(subj, ids.index(schema_id) + 1) for subj, ids in self.subjects.items() if schema_id in ids]

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
    PUT would). ``last_modified`` orders the writes as S3's Last-Modified does (a number per write;
    an object restored by assigning it again keeps its old one, as an undeleted version does).
    ``uploads`` holds unfinished multipart uploads by upload id.
    """

    def __init__(self, *, on_op: OnOp | None = None) -> None:
        self.stats = StoreStats()
        self.objects: dict[str, bytes] = {}
        self.uploads: dict[str, Upload] = {}
        self.on_op: OnOp | None = on_op
        #: A lax S3-compatible server: If-None-Match / If-Match are ignored (writes always win).
        self.ignore_conditional_writes = False
        #: A server that honours If-None-Match on PutObject but not on CompleteMultipartUpload.
        self.ignore_conditional_completes = False
        #: A server that honours If-None-Match but ignores If-Match (a replace always wins).
        self.ignore_if_match = False
        #: S3 with SSE-KMS: an object's ETag is not the MD5 of its bytes (opaque, still unique).
        self.opaque_etags = False
        #: Cloudflare R2: a multipart upload completes only when every part but the last has one
        #: size. ``equal_parts`` is S3Store's switch of the same name (compose plans such parts).
        self.equal_parts_required = False
        self.equal_parts = False
        #: A bucket with versioning on and no lifecycle rule that expires noncurrent versions
        #: (what :meth:`keeps_deleted_versions` answers; None: the bucket would not say).
        self.versioned_without_expiry: bool | None = False
        #: A lifecycle rule expiring current objects (what :meth:`expires_current` answers for
        #: every prefix, e.g. "rule 'keep' after 30 days"; None: no such rule).
        self.current_expiry: str | None = None
        self._etags: dict[str, tuple[bytes, str]] = {}  # key → (the bytes it was computed for, etag)
        self._metadata: dict[str, tuple[bytes, dict[str, str]]] = {}  # key → (its bytes, user metadata)
        self.last_modified: dict[str, int] = {}  # key → the number of its last write (see above)
        self._writes = itertools.count(1)
        self._faults = _Faults(OPS | REQUESTS)
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._calls = threading.local()  # .depth: how deep this thread is in store calls

    def __deepcopy__(self, memo: dict[int, Any]) -> MemoryStore:
        """A second store holding what this one holds now (objects, unfinished uploads, write
        order, switches, armed failures), with a lock and request counters of its own (from zero)
        and no ``on_op``. Why: a test that starts many runs from one state (a kill at each request
        in turn) builds the state once and copies it, instead of replaying the runs that made it."""
        with self._lock:
            twin = MemoryStore()
            for name, value in vars(self).items():
                if name in ("_lock", "_calls", "on_op", "stats"):
                    continue
                if name in ("_writes", "_ids"):  # a counter goes on from the same number in both
                    at = next(value)
                    setattr(self, name, itertools.count(at))
                    setattr(twin, name, itertools.count(at))
                    continue
                setattr(twin, name, copy.deepcopy(value, memo))
            return twin

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

    def disarm(self) -> None:
        """Forget every failure :meth:`fail_next` armed that has not fired yet (the outage is over)."""
        with self._lock:
            self._faults.armed.clear()

    def etag(self, key: str) -> str:
        """The object's ETag (unquoted); KeyError if absent."""
        data = self.objects[key]
        known = self._etags.get(key)
        if known is not None and known[0] is data:
            return known[1]
        return self._new_etag(data)

    def _new_etag(self, data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()[:32] if self.opaque_etags else md5_etag(data)

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

    @contextlib.contextmanager
    def _serving(self, op: str, key: str) -> Iterator[None]:
        """One ObjectStore call, atomic towards other threads. ``on_op`` sees an outermost call
        before the lock is taken: a hook may hold this thread there (a slow request, a paused
        process) while other threads' calls go on, as they would against S3."""
        depth = getattr(self._calls, "depth", 0)
        if depth == 0 and self.on_op is not None:
            self.on_op(op, key)
        with self._lock:
            self._calls.depth = depth + 1
            try:
                if depth > 0 and self.on_op is not None:
                    self.on_op(op, key)
                exc = self._faults.take(op, after=False)
                if exc is not None:
                    raise exc
                yield
            finally:
                self._calls.depth = depth

    def inside_a_call(self) -> bool:
        """Whether this thread is inside a store call: an ``on_op`` hook that held the thread
        there would hold every other thread's calls too."""
        return getattr(self._calls, "depth", 0) > 0

    def _request(self, op: str, key: str) -> None:
        self.stats.count(op)  # S3Store counts every attempt, failed ones included
        self._enter(op, key)

    def _store(self, key: str, data: bytes, etag: str | None = None,
               metadata: Mapping[str, str] | None = None) -> None:
        data = bytes(data)
        self.objects[key] = data
        self.last_modified[key] = next(self._writes)
        self._etags[key] = (data, etag or self._new_etag(data))
        self._metadata[key] = (data, dict(metadata or {}))

    def user_metadata(self, key: str) -> dict[str, str]:
        """The user metadata the last write of ``key`` through this store gave it (none for bytes
        a test put into :attr:`objects` itself); KeyError if absent."""
        data = self.objects[key]
        known = self._metadata.get(key)
        return dict(known[1]) if known is not None and known[0] is data else {}

    # -- request level (S3's rules; what S3Store's methods are made of) --------------------------
    def put_object(
        self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """PutObject; ``if_none_match`` is ``If-None-Match: *``, ``if_match`` an unquoted ETag.
        Returns the new ETag; :class:`PreconditionFailed` (412) or FileNotFoundError (If-Match on
        a missing key: 404)."""
        self._request("put_object", key)
        if not self.ignore_conditional_writes:
            if if_none_match and key in self.objects:
                raise PreconditionFailed(f"412 PreconditionFailed: {key} exists")
            if if_match is not None and not self.ignore_if_match:
                if key not in self.objects:
                    raise _no_such_key(key)
                if self.etag(key) != if_match:
                    raise PreconditionFailed(f"412 PreconditionFailed: {key} has another ETag")
        self._store(key, data, metadata=metadata)
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
        info = (ObjectInfo(key, len(self.objects[key]), self.etag(key), self.user_metadata(key))
                if key in self.objects else None)
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
        if self.equal_parts_required and len({len(b) for b in bodies[:-1]}) > 1:
            raise FatalStorageError(
                f"S3 complete_multipart_upload on {key} failed: InvalidPart: all non-trailing parts "
                "must have the same length"
            )
        lax = self.ignore_conditional_writes or self.ignore_conditional_completes
        if if_none_match and key in self.objects and not lax:
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
    def put_if_absent(self, key: str, data: bytes, metadata: Metadata = None) -> PutOutcome:
        """As S3Store: :meth:`create`'s outcome."""
        return self.create(key, data, metadata).outcome

    def create(self, key: str, data: bytes, metadata: Metadata = None) -> Created:
        """As S3Store: conditional PUT with the ETag of the reply; on 412 our own earlier write
        (same bytes) is told from someone else's as S3Store does it (:func:`same_object`). A lax
        server (``ignore_conditional_writes``) overwrites: CREATED. Faults and ``on_op`` see it
        as ``put_if_absent``."""
        with self._serving("put_if_absent", key):
            try:
                etag = self.put_object(key, data, if_none_match=True, metadata=metadata)
                self.stats.moved(uploaded=len(data))
                created = Created(PutOutcome.CREATED, etag)
            except PreconditionFailed:
                created = same_object(self, key, data)
            self._leave("put_if_absent")
            return created

    def replace_if_match(self, key: str, data: bytes, etag: str) -> str | None:
        """As S3Store: PUT with ``If-Match``; the new ETag, or None if the key is gone or has
        another ETag."""
        with self._serving("replace_if_match", key):
            try:
                new = self.put_object(key, data, if_match=etag)
            except (PreconditionFailed, FileNotFoundError):
                return None
            self.stats.moved(uploaded=len(data))
            self._leave("replace_if_match")
            return new

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` (whole object by default); FileNotFoundError if absent. Like
        S3Store, ``end <= start`` is ``b""`` without a request."""
        with self._serving("get", key):
            if start is not None and end is not None and end <= start:
                return b""
            data = self.get_object(key, start, end)
            self.stats.moved(downloaded=len(data))
            self._leave("get")
            return data

    def head(self, key: str) -> ObjectInfo | None:
        with self._serving("head", key):
            info = self.head_object(key)
            self._leave("head")
            return info

    def list(self, prefix: str, start_after: str = "") -> list[ObjectInfo]:
        """Every object under ``prefix`` after ``start_after``, sorted by key, one request per 1000
        keys (as S3Store)."""
        with self._serving("list", prefix):
            out: list[ObjectInfo] = []
            while True:
                page = self.list_objects_v2(prefix, out[-1].key if out else start_after)
                out.extend(page)
                if len(page) < 1000:
                    break
            self._leave("list")
            return out

    def delete(self, keys: Sequence[str]) -> None:
        with self._serving("delete", keys[0] if keys else ""):
            for i in range(0, len(keys), 1000):
                self.delete_objects(keys[i : i + 1000])
            self._leave("delete")

    def compose(self, key: str, segments: Sequence[Segment]) -> PutOutcome:
        """S3Store's compose, request for request: one conditional PUT when the plan has one part,
        else a multipart upload (UploadPartCopy for ranges ≥ 5 MiB) completed with
        ``If-None-Match: *`` — EXISTS_OTHER if the key appeared meanwhile. On an error the upload
        is aborted; on :class:`Crash` it is left behind, invisible, for ``abort_uploads``."""
        with self._serving("compose", key):
            parts = plan_equal_parts(segments) if self.equal_parts else plan_parts(segments)
            if len(parts) <= 1:
                outcome = self.put_if_absent(key, self._materialise(parts[0] if parts else []))
            else:
                outcome = self._multipart_if_absent(key, parts, fault_point="mid_merge")
            self._leave("compose")
            return outcome

    def put_if_absent_multipart(self, key: str, data: bytes) -> PutOutcome:
        """As S3Store: one part, completed with ``If-None-Match: *`` (the start-up probe's)."""
        with self._serving("put_if_absent_multipart", key):
            outcome = self._multipart_if_absent(key, [[data]], fault_point=None)
            self._leave("put_if_absent_multipart")
            return outcome

    def _multipart_if_absent(
        self, key: str, parts: Sequence[Sequence[Segment]], *, fault_point: str | None
    ) -> PutOutcome:
        upload_id = self.create_multipart_upload(key)
        try:
            for n, part in enumerate(parts, start=1):
                if len(part) == 1 and isinstance(part[0], CopyRange) and part[0].length >= MIN_S3_PART:
                    self.upload_part_copy(key, upload_id, n, part[0])
                    self.stats.moved(copied=part[0].length)
                else:
                    body = self._materialise(part)
                    self.upload_part(key, upload_id, n, body)
                    self.stats.moved(uploaded=len(body))
                if fault_point:
                    faults.point(fault_point)
            self.complete_multipart_upload(key, upload_id, if_none_match=True)
        except Exception as exc:
            self._abort(key, upload_id)
            if isinstance(exc, PreconditionFailed):
                return PutOutcome.EXISTS_OTHER
            raise
        return PutOutcome.CREATED

    def _materialise(self, part: Sequence[Segment]) -> bytes:
        return b"".join(s if isinstance(s, bytes) else self.get(s.key, s.start, s.end) for s in part)

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self.abort_multipart_upload(key, upload_id)
        except Exception:  # best effort, as in S3Store: abort_uploads() sweeps at recovery
            return

    def keeps_deleted_versions(self, prefix: str) -> bool | None:
        return self.versioned_without_expiry

    def expires_current(self, prefix: str) -> str | None:
        return self.current_expiry

    def abort_uploads(self, key: str) -> int:
        """Abort unfinished multipart uploads to exactly ``key``; how many there were."""
        with self._serving("abort_uploads", key):
            n = 0
            for up in self.list_multipart_uploads(key):
                if up.key == key:
                    self._abort(key, up.upload_id)
                    n += 1
            self._leave("abort_uploads")
            return n


class MemoryPositions:
    """:class:`~consumer.positions.PositionStore` in memory, with the group's fencing.

    ``history`` lists every successful commit as ``(topic, partition, position)``, in order;
    ``notes`` the note committed with each position (consumer.positions.commit_note).
    """

    def __init__(self, *, on_op: OnOp | None = None) -> None:
        self.positions: dict[tuple[str, int], int] = {}
        self.notes: dict[tuple[str, int], str] = {}
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
        a commit of ours, so not in ``history``; like the tool, it leaves no note."""
        with self._lock:
            self.notes.pop((topic, partition), None)
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

    def note(self, topic: str, partition: int) -> str:
        with self._lock:
            return self.notes.get((topic, partition), "")

    def commit(self, topic: str, partition: int, position: int, note: str = "") -> None:
        with self._lock:
            self._enter("commit", topic, partition)
            if (topic, partition) in self.fenced:
                raise PartitionFenced(
                    f"commit of {topic}[{partition}]@{position} refused: ILLEGAL_GENERATION"
                )
            self.positions[(topic, partition)] = position
            self.notes[(topic, partition)] = note
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


def crash_at_request(n: int) -> OnOp:
    """An ``on_op`` for ``MemoryStore`` that raises ``Crash`` as the ``n``-th request (counted from
    1) starts, e.g. ``store.on_op = crash_at_request(5)``: a kill -9 at a known point, before the
    request reaches the store. A test that counts a scenario's requests first can crash at every
    one of them in turn."""
    seen = 0

    def hook(op: str, key: str) -> None:
        nonlocal seen
        seen += 1
        if seen == n:
            raise Crash(f"crash at request {n} ({op} {key})")

    return hook


# ----------------------------------------------------------------------------------------------
# Kafka: an in-memory topic log and a consumer with the slice of confluent_kafka.Consumer we use
# ----------------------------------------------------------------------------------------------
OFFSET_BEGINNING, OFFSET_END, OFFSET_STORED, OFFSET_INVALID = -2, -1, -1000, -1001


@dataclass
class _PartitionMeta:
    id: int
    leader: int = 1
    error: Any = None


@dataclass
class _TopicMeta:
    topic: str
    partitions: dict[int, _PartitionMeta]
    error: Any = None


@dataclass
class _Metadata:
    topics: dict[str, _TopicMeta]


@dataclass
class _Group:
    """A consumer group as the coordinator sees it: members, generation, committed offsets."""

    members: list[MemoryConsumer] = field(default_factory=list)
    generation: int = 0
    target: dict[int, set[TP]] = field(default_factory=dict)  # id(member) → partitions it should own
    offsets: dict[TP, int] = field(default_factory=dict)
    notes: dict[TP, str] = field(default_factory=dict)  # the metadata committed with each offset


class MemoryBroker:
    """Topics as in-memory logs, plus the group coordinator for :class:`MemoryConsumer`.

    Why: to drive :class:`~consumer.runner.GroupRunner` (assignment → recovery → consume → commit
    → revoke) without a broker. What is modelled: per-partition offsets from 0, retention
    (:meth:`truncate` moves the low watermark), committed offsets per group, a cooperative
    rebalance (a partition moves only after its old owner's ``on_revoke`` ran), commits refused
    with ILLEGAL_GENERATION / UNKNOWN_MEMBER_ID from a member that missed a rebalance or was
    expelled (:meth:`expire`: max.poll.interval exceeded), the operator's offset reset, and what a
    transactional producer leaves for a ``read_committed`` reader (:meth:`end_transaction`:
    markers and aborted records take offsets that are never delivered). Not modelled: open
    transactions (the last stable offset), compaction, timing (``consume`` never waits for
    records), threads (call from one thread).
    """

    def __init__(self) -> None:
        self.logs: dict[TP, list[Message]] = {}
        self.low: dict[TP, int] = {}
        #: offsets read_committed never delivers: transaction markers, records of aborted ones
        self.invisible: dict[TP, set[int]] = {}
        self.groups: dict[str, _Group] = {}
        #: (KafkaError code, times) for the next commits of any consumer: e.g.
        #: ``broker.commit_errors.append((KafkaError.COORDINATOR_NOT_AVAILABLE, 2))``.
        self.commit_errors: list[tuple[int, int]] = []
        #: The broker's ``offset.metadata.max.bytes``: a commit with longer metadata is refused
        #: with OFFSET_METADATA_TOO_LARGE, as Kafka does.
        self.metadata_max_bytes = 4096
        #: each topic's id (KIP-516), new at every creation; None (a cluster before Kafka 2.8)
        #: for every topic once a test sets ``broker.topic_ids = None``
        self.topic_ids: dict[str, str] | None = {}
        self._created = 0

    # -- topics ----------------------------------------------------------------------------------
    def create_topic(self, topic: str, partitions: int = 1) -> None:
        for p in range(partitions):
            self.logs.setdefault((topic, p), [])
            self.low.setdefault((topic, p), 0)
        if self.topic_ids is not None and topic not in self.topic_ids:
            self._new_topic_id(topic)

    def _new_topic_id(self, topic: str) -> None:
        assert self.topic_ids is not None
        self._created += 1
        self.topic_ids[topic] = f"{topic}-id{self._created}"

    def topic_id(self, topic: str, fresh: bool = True) -> str | None:
        """The topic's id as ``describe_topics`` says it (the runner's ``topic_id``; always fresh
        here); None for a topic that does not exist, or on a cluster without ids."""
        return None if self.topic_ids is None else self.topic_ids.get(topic)

    def partitions(self, topic: str) -> list[int]:
        return sorted(p for t, p in self.logs if t == topic)

    def produce(
        self,
        topic: str,
        value: bytes | None,
        *,
        partition: int = 0,
        key: bytes | None = None,
        timestamp: int | None = None,
        headers: Sequence[tuple[str, bytes | None]] | None = None,
    ) -> int:
        """Append one record; its offset. ``timestamp`` defaults to 1.7e12 ms + offset."""
        if (topic, partition) not in self.logs:
            raise KeyError(f"no partition {topic}[{partition}]: create_topic first")
        log = self.logs[(topic, partition)]
        offset = len(log)
        ts = 1_700_000_000_000 + offset if timestamp is None else timestamp
        log.append(
            Message(offset, value, topic=topic, partition=partition, key=key, timestamp=ts, headers=headers)
        )
        return offset

    def end_transaction(self, topic: str, partition: int = 0, *, aborted: Sequence[bytes | None] = ()) -> int:
        """What a transactional producer leaves at the end of a transaction in this partition: the
        records of ``aborted`` (written, then aborted), then the commit or abort marker. None of
        them is ever delivered, and a consumer's position moves past them as librdkafka's does.
        Returns the end offset after the marker."""
        hidden = self.invisible.setdefault((topic, partition), set())
        for value in (*aborted, None):
            hidden.add(self.produce(topic, value, partition=partition))
        return len(self.logs[(topic, partition)])

    def watermarks(self, topic: str, partition: int) -> tuple[int, int]:
        return self.low[(topic, partition)], len(self.logs[(topic, partition)])

    def recreate_topic(self, topic: str, *, offsets_kept: bool = True) -> None:
        """The topic was deleted and created again under its name: every partition is empty from
        offset 0, and the topic has a new id. The groups' committed offsets stay, as a real broker
        can keep them (seen on Kafka 4.1 when the topic came back within seconds), or
        (``offsets_kept=False``) are gone with the topic, as the stack's broker usually does."""
        for tp in [tp for tp in self.logs if tp[0] == topic]:
            self.logs[tp] = []
            self.low[tp] = 0
            self.invisible.pop(tp, None)
            if not offsets_kept:
                for g in self.groups.values():
                    g.offsets.pop(tp, None)
                    g.notes.pop(tp, None)
        if self.topic_ids is not None:
            self._new_topic_id(topic)

    def delete_topic(self, topic: str) -> None:
        """The topic was deleted: it is gone from the metadata with its records and the groups'
        committed offsets, commits of it are refused (UNKNOWN_TOPIC_OR_PART), and a member that
        owned partitions of it is told at its next ``consume`` that it lost them (``on_lost``), as
        librdkafka says once its metadata shows the partition count fell to 0."""
        for tp in [tp for tp in self.logs if tp[0] == topic]:
            del self.logs[tp], self.low[tp]
            self.invisible.pop(tp, None)
            for g in self.groups.values():
                g.offsets.pop(tp, None)
                g.notes.pop(tp, None)
        if self.topic_ids is not None:
            self.topic_ids.pop(topic, None)
        for g in self.groups.values():
            self._rebalance(g)

    def truncate(self, topic: str, partition: int, before: int) -> None:
        """Retention deleted every record below ``before``: the low watermark moves up."""
        self.low[(topic, partition)] = max(
            self.low[(topic, partition)], min(before, len(self.logs[(topic, partition)]))
        )

    # -- groups ----------------------------------------------------------------------------------
    def group(self, group_id: str) -> _Group:
        return self.groups.setdefault(group_id, _Group())

    def committed_offset(self, group_id: str, topic: str, partition: int) -> int | None:
        g = self.groups.get(group_id)
        return g.offsets.get((topic, partition)) if g is not None else None

    def committed_note(self, group_id: str, topic: str, partition: int) -> str:
        """The metadata committed with the group's offset ('' when none)."""
        g = self.groups.get(group_id)
        return g.notes.get((topic, partition), "") if g is not None else ""

    def reset_offsets(self, group_id: str, topic: str, partition: int, offset: int | None) -> None:
        """``kafka-consumer-groups --reset-offsets`` (None: delete the committed offset). The tool
        commits no metadata, so the offset's note goes."""
        self.group(group_id).notes.pop((topic, partition), None)
        offsets = self.group(group_id).offsets
        if offset is None:
            offsets.pop((topic, partition), None)
        else:
            offsets[(topic, partition)] = offset

    def expire(self, consumer: MemoryConsumer) -> None:
        """The coordinator expels ``consumer`` (session timeout / max.poll.interval exceeded): its
        partitions go to the others now, its commits fail, and its next ``consume`` reports them
        lost (``on_lost``) and rejoins."""
        g = self.group(consumer.group_id)
        if consumer in g.members:
            g.members.remove(consumer)
            consumer._expired = True
            self._rebalance(g)

    def consumer_factory(self) -> Callable[[dict[str, Any]], MemoryConsumer]:
        """For ``GroupRunner(consumer_factory=broker.consumer_factory())``."""
        return lambda conf: MemoryConsumer(self, conf)

    def _join(self, consumer: MemoryConsumer) -> None:
        g = self.group(consumer.group_id)
        if consumer not in g.members:
            g.members.append(consumer)
            self._rebalance(g)

    def _leave(self, consumer: MemoryConsumer) -> None:
        g = self.groups.get(consumer.group_id)
        if g is not None and consumer in g.members:
            g.members.remove(consumer)
            self._rebalance(g)

    def _rebalance(self, g: _Group) -> None:
        """New generation, new target assignment: sticky (a member keeps what it owns when it may),
        the rest spread to the least loaded members."""
        g.generation += 1
        target: dict[int, set[TP]] = {id(m): set() for m in g.members}
        wanted = sorted({tp for m in g.members for t in m.topics for tp in self.logs if tp[0] == t})
        if g.members:
            quota = -(-len(wanted) // len(g.members))
            free = []
            for tp in wanted:
                owner = next((m for m in g.members if tp in m._owned and tp[0] in m.topics), None)
                if owner is not None and len(target[id(owner)]) < quota:
                    target[id(owner)].add(tp)
                else:
                    free.append(tp)
            for tp in free:
                m = min((m for m in g.members if tp[0] in m.topics), key=lambda m: len(target[id(m)]))
                target[id(m)].add(tp)
        g.target = target

    def group_view(self, group_id: str) -> GroupView:
        """The group as ``describe_consumer_groups`` reports it: stable here (rebalances complete
        inside ``consume``), and what each member owns."""
        g = self.group(group_id)
        return GroupView(stable=True, members={m.memberid(): frozenset(m._owned) for m in g.members})

    def _assignable(self, consumer: MemoryConsumer) -> set[TP]:
        """Partitions the group wants ``consumer`` to have that no other member still owns."""
        g = self.group(consumer.group_id)
        held = {tp for m in g.members if m is not consumer for tp in m._owned}
        return g.target.get(id(consumer), set()) - consumer._owned - held

    def _commit(self, consumer: MemoryConsumer, offsets: Sequence[Any]) -> None:
        from confluent_kafka import KafkaError, KafkaException

        if self.commit_errors:
            code, times = self.commit_errors[0]
            self.commit_errors[0] = (code, times - 1)
            if times <= 1:
                self.commit_errors.pop(0)
            retriable = code in (KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.NOT_COORDINATOR)
            raise KafkaException(KafkaError(code, "injected", retriable=retriable))
        g = self.group(consumer.group_id)
        if consumer not in g.members:
            raise KafkaException(KafkaError(KafkaError.UNKNOWN_MEMBER_ID))
        if consumer._generation != g.generation:
            raise KafkaException(KafkaError(KafkaError.ILLEGAL_GENERATION))
        if any(len((tp.metadata or "").encode()) > self.metadata_max_bytes for tp in offsets):
            raise KafkaException(KafkaError(KafkaError.OFFSET_METADATA_TOO_LARGE))
        if any((tp.topic, tp.partition) not in self.logs for tp in offsets):
            raise KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))
        for tp in offsets:
            g.offsets[(tp.topic, tp.partition)] = int(tp.offset)
            g.notes[(tp.topic, tp.partition)] = tp.metadata or ""


class MemoryConsumer:
    """The part of ``confluent_kafka.Consumer`` the runner, the replay and KafkaGroupPositions call,
    on a :class:`MemoryBroker`. Rebalance callbacks run inside :meth:`consume`, as librdkafka runs
    them inside poll/consume; after ``on_assign`` the partitions are assigned incrementally at the
    offsets the callback left in them (else the committed offset, else ``auto.offset.reset``)."""

    def __init__(self, broker: MemoryBroker, conf: dict[str, Any]) -> None:
        self.broker = broker
        self.conf = dict(conf)
        self.group_id = str(conf.get("group.id", ""))
        self.topics: tuple[str, ...] = ()
        self.closed = False
        #: called at the start of every consume(), e.g. to stop the runner or expire a member
        self.on_consume: Callable[[MemoryConsumer], None] | None = None
        self._callbacks: dict[str, Callable[[Any, list[Any]], None] | None] = {}
        self._owned: set[TP] = set()
        self._paused: set[TP] = set()
        self._fetch: dict[TP, int] = {}  # next offset to return
        self._app: dict[TP, int] = {}  # position(): after the last returned record, or seeked
        self._eof_at: dict[TP, int] = {}  # enable.partition.eof: the end last reported, per partition
        self._generation = 0
        self._expired = False
        self._manual = False
        self._assigning: dict[TP, int] | None = None  # offsets given to incremental_assign in a callback
        self._poller: int | None = None  # the thread that calls consume(), once it has

    # -- membership --------------------------------------------------------------------------------
    def subscribe(
        self,
        topics: Sequence[str],
        on_assign: Callable[[Any, list[Any]], None] | None = None,
        on_revoke: Callable[[Any, list[Any]], None] | None = None,
        on_lost: Callable[[Any, list[Any]], None] | None = None,
    ) -> None:
        self._check_open()
        self.topics = tuple(topics)
        self._callbacks = {"assign": on_assign, "revoke": on_revoke, "lost": on_lost}
        self.broker._join(self)

    def unsubscribe(self) -> None:
        """Leave the group as librdkafka's unsubscribe does: revoke what is owned (``on_revoke``),
        then leave (a static member too: it sends LeaveGroup on unsubscribe, not on close)."""
        self._check_open()
        if self._owned and not self._expired and self._callbacks.get("revoke"):
            self._call("revoke", self._tps(sorted(self._owned)))
        self._owned = set()
        self.topics = ()
        self.broker._leave(self)

    def memberid(self) -> str:
        """This member's id in its group (stable for the consumer's life here)."""
        return f"{self.conf.get('group.instance.id') or 'member'}-{id(self):x}"

    def assign(self, partitions: Sequence[Any]) -> None:
        """Manual assignment (no group): fetch from each partition's offset."""
        self._check_open()
        self._manual = True
        self._owned = {(tp.topic, tp.partition) for tp in partitions}
        for tp in partitions:
            self._start((tp.topic, tp.partition), int(tp.offset))

    def unassign(self) -> None:
        """End a manual assignment."""
        self._check_open()
        for tp in self._owned:
            self._fetch.pop(tp, None)
            self._app.pop(tp, None)
        self._owned = set()

    def incremental_assign(self, partitions: Sequence[Any]) -> None:
        """Take these partitions from these offsets: inside an assign callback, where fetching
        starts (see _sync_group); outside one, added to the assignment at once."""
        self._check_open()
        for tp in partitions:
            key = (tp.topic, tp.partition)
            if self._assigning is not None:
                self._assigning[key] = int(tp.offset)
            else:
                self._owned.add(key)
                self._start(key, int(tp.offset))

    def assignment(self) -> list[Any]:
        from confluent_kafka import TopicPartition

        return [TopicPartition(t, p) for t, p in sorted(self._owned)]

    def _tps(self, keys: set[TP] | list[TP]) -> list[Any]:
        from confluent_kafka import TopicPartition

        return [TopicPartition(t, p) for t, p in sorted(keys)]

    def _sync_group(self) -> None:
        """Deliver what the coordinator decided since the last call: lost, revoked, assigned."""
        if self._manual or not self.topics:
            return
        b, g = self.broker, self.broker.group(self.group_id)
        if self._expired:
            self._expired = False
            lost, self._owned = self._owned, set()
            if lost and self._callbacks.get("lost"):
                self._call("lost", self._tps(sorted(lost)))
            b._join(self)
        gone = {tp for tp in self._owned if tp not in b.logs}  # their topic was deleted
        if gone:
            self._owned -= gone
            for tp in gone:
                self._fetch.pop(tp, None)
                self._app.pop(tp, None)
            if self._callbacks.get("lost"):
                self._call("lost", self._tps(sorted(gone)))
        rebalanced = self._generation != g.generation
        if rebalanced:
            self._generation = g.generation
            revoked = self._owned - g.target.get(id(self), set())
            if revoked:
                if self._callbacks.get("revoke"):
                    self._call("revoke", self._tps(sorted(revoked)))
                self._owned -= revoked
                for tp in revoked:  # the pause flag stays: see pause()
                    self._fetch.pop(tp, None)
                    self._app.pop(tp, None)
        new = b._assignable(self)
        if new or rebalanced:
            # Like librdkafka's cooperative protocol, every completed rebalance ends with an
            # assign callback, with an empty list when nothing was added. As confluent-kafka: an
            # offset the callback writes into the list it was given is ignored; one it passes to
            # incremental_assign() is where fetching starts (else the committed offset).
            tps = self._tps(sorted(new))
            self._assigning = {}
            try:
                self._call("assign", tps)
                chosen = self._assigning
            finally:
                self._assigning = None
            self._owned |= new
            for tp in tps:
                key = (tp.topic, tp.partition)
                self._start(key, chosen.get(key, OFFSET_INVALID))

    def _call(self, which: str, tps: list[Any]) -> None:
        cb = self._callbacks[which]
        if cb is not None:
            cb(self, tps)

    def _start(self, tp: TP, offset: int) -> None:
        low, high = self.broker.watermarks(*tp)
        if offset < 0 and offset not in (OFFSET_BEGINNING, OFFSET_END):  # INVALID, STORED
            committed = self.broker.committed_offset(self.group_id, *tp) if self.group_id else None
            offset = committed if committed is not None else OFFSET_BEGINNING
            reset = self.conf.get("auto.offset.reset", "latest")
            if committed is None and reset in ("latest", "largest", "end"):
                offset = OFFSET_END
            elif committed is None and reset == "error":
                offset = OFFSET_STORED  # nowhere to start: the first consume reports it
        self._fetch[tp] = low if offset == OFFSET_BEGINNING else high if offset == OFFSET_END else offset
        self._app.pop(tp, None)
        self._eof_at.pop(tp, None)

    # -- fetching --------------------------------------------------------------------------------
    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        """Up to ``num_messages`` records from the owned, unpaused partitions (round robin);
        never waits: an empty list when nothing is there."""
        self._check_open()
        self._poller = threading.get_ident()
        if self.on_consume is not None:
            self.on_consume(self)
        self._sync_group()
        out: list[Message] = []
        active = [tp for tp in sorted(self._owned) if tp not in self._paused]
        progress = True
        while len(out) < num_messages and progress:
            progress = False
            for tp in active:
                if len(out) >= num_messages:
                    break
                low, high = self.broker.watermarks(*tp)
                pos = self._fetch.get(tp, low)
                if pos == OFFSET_INVALID:  # stopped by an error below until a seek
                    continue
                if pos == OFFSET_STORED or pos < low or pos > high:  # out of range: auto.offset.reset
                    reset = self.conf.get("auto.offset.reset", "latest")
                    if reset == "error" or pos == OFFSET_STORED:  # one error, then wait for a seek
                        out.append(self._out_of_range(tp, OFFSET_INVALID if pos == OFFSET_STORED else pos))
                        self._fetch[tp] = OFFSET_INVALID
                        continue
                    pos = low if reset in ("earliest", "smallest", "beginning") else high
                if pos < high:
                    if pos not in self.broker.invisible.get(tp, ()):
                        out.append(self.broker.logs[tp][pos])
                    self._fetch[tp] = self._app[tp] = pos + 1
                    progress = True
                else:
                    self._fetch[tp] = pos
                    if self.conf.get("enable.partition.eof") and self._eof_at.get(tp) != high:
                        self._eof_at[tp] = high
                        out.append(self._end_of_partition(tp, high))
        return out

    @staticmethod
    def _end_of_partition(tp: TP, high: int) -> Message:
        """librdkafka's event for a partition read to its end (``enable.partition.eof``)."""
        from confluent_kafka import KafkaError

        error = KafkaError(KafkaError._PARTITION_EOF, "Fetch from broker reached end of partition")
        return Message(high, None, topic=tp[0], partition=tp[1], error=error)

    @staticmethod
    def _out_of_range(tp: TP, pos: int) -> Message:
        """What librdkafka hands over for a position not in the log with auto.offset.reset=error."""
        from confluent_kafka import KafkaError

        said = "fetch failed due to requested offset not available on the broker: Broker: Offset out of range"
        error = KafkaError(KafkaError._AUTO_OFFSET_RESET, said)
        return Message(pos, None, topic=tp[0], partition=tp[1], error=error)

    def pause(self, partitions: Sequence[Any]) -> None:
        """As librdkafka: the application's pause flag belongs to the partition, not to the
        assignment, so a paused partition that is revoked or lost and assigned again stays
        paused until resume() (librdkafka resets only its own LIB_PAUSE flag on unassign)."""
        self._paused |= {(tp.topic, tp.partition) for tp in partitions}

    def resume(self, partitions: Sequence[Any]) -> None:
        self._paused -= {(tp.topic, tp.partition) for tp in partitions}

    def seek(self, partition: Any) -> None:
        tp = (partition.topic, partition.partition)
        if tp not in self._owned:
            from confluent_kafka import KafkaError, KafkaException

            raise KafkaException(KafkaError(KafkaError._UNKNOWN_PARTITION, f"{tp} is not assigned"))
        self._start(tp, int(partition.offset))
        self._app[tp] = self._fetch[tp]

    def position(self, partitions: Sequence[Any]) -> list[Any]:
        """After the last record returned (or the seek target); OFFSET_INVALID before either, as
        librdkafka."""
        from confluent_kafka import TopicPartition

        return [
            TopicPartition(tp.topic, tp.partition, self._app.get((tp.topic, tp.partition), OFFSET_INVALID))
            for tp in partitions
        ]

    def get_watermark_offsets(
        self, partition: Any, timeout: float | None = None, cached: bool = False
    ) -> tuple[int, int]:
        return self.broker.watermarks(partition.topic, partition.partition)

    def offsets_for_times(self, partitions: Sequence[Any], timeout: float | None = None) -> list[Any]:
        """The first offset whose timestamp is ≥ the given one; OFFSET_END (-1) if none."""
        from confluent_kafka import TopicPartition

        out = []
        for tp in partitions:
            low, high = self.broker.watermarks(tp.topic, tp.partition)
            log = self.broker.logs[(tp.topic, tp.partition)]
            hidden = self.broker.invisible.get((tp.topic, tp.partition), set())
            found = next((m.offset() for m in log[low:high]
                          if m.offset() not in hidden and m.timestamp()[1] >= tp.offset), OFFSET_END)
            out.append(TopicPartition(tp.topic, tp.partition, found))
        return out

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> _Metadata:
        names = {t for t, _ in self.broker.logs if topic is None or t == topic}
        return _Metadata(
            {
                t: _TopicMeta(t, {p: _PartitionMeta(p) for p in self.broker.partitions(t)})
                for t in sorted(names)
            }
        )

    # -- offsets ---------------------------------------------------------------------------------
    def committed(self, partitions: Sequence[Any], timeout: float | None = None) -> list[Any]:
        from confluent_kafka import TopicPartition

        self._check_poller("committed")
        out = []
        for tp in partitions:
            off = self.broker.committed_offset(self.group_id, tp.topic, tp.partition)
            note = self.broker.committed_note(self.group_id, tp.topic, tp.partition)
            out.append(TopicPartition(tp.topic, tp.partition, OFFSET_INVALID if off is None else off,
                                      note if off is not None else ""))
        return out

    def commit(
        self, message: Any = None, offsets: Sequence[Any] | None = None, asynchronous: bool = True
    ) -> list[Any] | None:
        """Synchronous commits of explicit offsets only (what KafkaGroupPositions does); refused
        with KafkaException(ILLEGAL_GENERATION / UNKNOWN_MEMBER_ID) when fenced."""
        self._check_open()
        self._check_poller("commit")
        if message is not None or offsets is None or asynchronous:
            raise NotImplementedError("MemoryConsumer.commit: only commit(offsets=[...], asynchronous=False)")
        self.broker._commit(self, offsets)
        from confluent_kafka import TopicPartition

        return [TopicPartition(tp.topic, tp.partition, tp.offset, tp.metadata or "") for tp in offsets]

    def close(self) -> None:
        """Revoke everything (``on_revoke``, as librdkafka's close does), then leave the group."""
        if self.closed:
            return
        if self._owned and not self._manual and not self._expired and self._callbacks.get("revoke"):
            self._call("revoke", self._tps(sorted(self._owned)))
        self._owned = set()
        self.broker._leave(self)
        self.closed = True

    def _check_poller(self, call: str) -> None:
        """The real client's group calls hang when made off the polling thread while it is inside
        a rebalance callback (past their timeout): here any call off that thread fails at once."""
        if self._poller is not None and threading.get_ident() != self._poller:
            raise RuntimeError(
                f"MemoryConsumer.{call}() from a thread that does not poll: the real client can "
                "hang there; make group calls on the polling thread"
            )

    def _check_open(self) -> None:
        if self.closed:
            from confluent_kafka import KafkaError, KafkaException

            raise KafkaException(KafkaError(KafkaError._STATE, "consumer closed"))


def _conforms(store: MemoryStore, positions: MemoryPositions) -> tuple[ObjectStore, PositionStore]:
    """Never called: mypy checks here that the doubles satisfy the protocols they stand in for."""
    return store, positions


# ----------------------------------------------------------------------------------------------
# Ready-made set-ups: the page_view topic and a group runner on the doubles
# ----------------------------------------------------------------------------------------------
def page_view_broker(
    partitions: int, per_partition: int, *, topic: str = "t", key: bytes | None = b"k"
) -> MemoryBroker:
    """A broker whose ``topic`` holds seeded ``page_view`` records: record ``p * 1000 + i`` of
    :func:`consumer.samples.make_record` at partition ``p``, offset ``i`` (raw framing)."""
    from consumer.samples import encode_raw, make_record, parsed_schema

    schema = parsed_schema("page_view")
    broker = MemoryBroker()
    broker.create_topic(topic, partitions)
    for p in range(partitions):
        for i in range(per_partition):
            value = encode_raw(schema, make_record("page_view", p * 1000 + i))
            broker.produce(topic, value, partition=p, key=key)
    return broker


def exported(
    store: MemoryStore, positions: MemoryPositions, topic: str = "t", partition: int = 0
) -> dict[str, Any]:
    """Everything a reader sees of one partition's run: final files (key → rows), dead letters
    (without their wall-clock write time) and the committed position — what two paths that must
    behave the same are compared on."""
    import io
    import json

    import pyarrow.parquet as pq

    files: dict[str, Any] = {}
    dead: list[dict[str, Any]] = []
    for key in sorted(store.objects):
        data = store.objects[key]
        if key.endswith(".parquet") and "/_" not in key:
            files[key] = pq.read_table(io.BytesIO(data)).to_pylist()
        elif "_dead_letters/" in key:
            dead += [json.loads(line) for line in data.decode().splitlines()]
    dead.sort(key=lambda d: d["offset"])
    for d in dead:
        d.pop("dead_lettered_at", None)
    return {"files": files, "dead": dead, "committed": positions.committed(topic, partition)}


def memory_runner(
    broker: MemoryBroker,
    store: ObjectStore,
    *,
    clock: Callable[[], float] | None = None,
    value_decoder: Any = None,
    **config: Any,
) -> Any:
    """A :class:`~consumer.runner.GroupRunner` of group ``g`` on ``broker`` and ``store``, consuming
    topic ``t`` of raw ``page_view`` records into ``s3://bucket/out``; ``config`` overrides any
    :class:`~consumer.config.Config` field, ``value_decoder`` the raw ``page_view`` decoder."""
    from consumer.config import Config
    from consumer.decoding import Decoder, load_schema
    from consumer.runner import GroupRunner

    settings: dict[str, Any] = {
        "bootstrap_servers": "memory",
        "group_id": "g",
        "topics": ("t",),
        "output": "s3://bucket/out",
        "schema": "page_view",
        **config,
    }
    kwargs: dict[str, Any] = {"clock": clock} if clock is not None else {}
    return GroupRunner(
        Config(**settings),
        store=store,
        decoder=value_decoder or Decoder("raw", schema=load_schema("page_view")),
        consumer_factory=broker.consumer_factory(),
        topic_id=broker.topic_id,
        **kwargs,
    )


def at_consume(consumer: MemoryConsumer, actions: Mapping[int, Callable[[], object]]) -> None:
    """Run ``actions[n]()`` as the ``n``-th ``consume()`` of ``consumer`` starts (counted from 1),
    e.g. ``at_consume(runner.consumer, {4: runner.request_stop})``: a SIGTERM, or what a test does
    to the world (produce, reset, recreate), at a known point of a run. The first consume joins
    the group and assigns; the records it returns are durable once a later one starts only if a
    flush made them so."""
    calls = 0

    def hook(_consumer: MemoryConsumer) -> None:
        nonlocal calls
        calls += 1
        action = actions.get(calls)
        if action is not None:
            action()

    consumer.on_consume = hook
