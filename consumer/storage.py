"""The object store: the few S3 operations the durable-row-group protocol needs, and nothing else.

Why a small protocol instead of "a filesystem": the protocol's correctness rests on exact S3 facts —
conditional create (``If-None-Match: *``) so nothing is ever overwritten, byte-range reads for
footers, server-side ``UploadPartCopy`` so large files are assembled without moving their bodies
through this process, and AWS's rule that every multipart part but the last is ≥ 5 MiB. Those are
explicit here, enforced on our side (some S3-compatible servers are lax), and retried with bounded
exponential backoff with jitter, because S3 does answer 500/503 SlowDown in normal operation.

Errors are split into three kinds callers can act on:

* :class:`TransientStorageError` — retried inside; raised only once the retry budget is spent.
* :class:`FatalStorageError` — missing bucket, access denied, bad credentials: stop with the message.
* ``FileNotFoundError`` — the key is absent.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import gc
import hashlib
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, MutableSequence, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NamedTuple, Protocol, TypeVar
from urllib.parse import urlsplit

from consumer import faults
from consumer.config import MIN_S3_PART

T = TypeVar("T")

_TRANSIENT_CODES = {
    "SlowDown",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    "Throttling",
    "OperationAborted",
    "ConditionalRequestConflict",
    "503",
    "500",
    "502",
    "504",
    "BadDigest",
    "IncompleteBody",  # the connection broke mid-body: the same request succeeds again
}
_EXPIRED_CREDENTIALS = (
    "the credentials' session token expired and this process cannot renew it (AWS_SESSION_TOKEN "
    "or a profile's temporary keys): give it new credentials, or ones that renew themselves "
    "(instance profile, web identity, SSO, credential_process), and restart"
)
_FATAL_CODES = {
    "NoSuchBucket": "bucket does not exist: create it or fix --output",
    "AccessDenied": "access denied: check the credentials' permissions on the bucket",
    "InvalidAccessKeyId": "invalid access key id: check AWS_ACCESS_KEY_ID / the AWS profile",
    "SignatureDoesNotMatch": "signature mismatch: check AWS_SECRET_ACCESS_KEY",
    # temporary credentials (a session token) that this process cannot renew: new ones and a
    # restart help; a provider that refreshes itself keeps it from happening again
    "ExpiredToken": _EXPIRED_CREDENTIALS,
    "TokenRefreshRequired": _EXPIRED_CREDENTIALS,
    "InvalidToken": "the session token is malformed or not valid: check AWS_SESSION_TOKEN / the AWS profile",
    # signed requests are refused 15 minutes off the server's clock; botocore does not correct it
    "RequestTimeTooSkewed": "this machine's clock is more than 15 minutes off the S3 server's: "
    "set it right (NTP) and restart",
    "AllAccessDisabled": "all access to the bucket is disabled",
    "InvalidBucketName": "invalid bucket name in --output",
    "EntityTooSmall": "a multipart part below 5 MiB was rejected (bug: please report)",
    "NotImplemented": "the server does not implement a request or header this consumer sends; "
    "see README, Troubleshooting (S3-compatible servers)",
}
#: Errors of botocore's credential chain that no request reaches S3 with (so no S3 code), by
#: exception name: a retry finds the same chain. An AWS_PROFILE that does not exist, or keys given
#: in part, are refused when the client is built (consumer.cli: a configuration error); no
#: credentials at all, only at the first request.
_NO_CREDENTIALS = {
    "NoCredentialsError": "no S3 credentials were found: set AWS_ACCESS_KEY_ID and "
    "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or run where an instance profile, a web identity "
    "(IRSA) or SSO provides them",
    "CredentialRetrievalError": "the credential provider (credential_process, SSO, web identity "
    "or instance metadata) failed to give credentials: fix it, and restart",
}
#: The IAM action each request needs (README, *Permissions*): named when S3 denies one.
_IAM_ACTIONS = {
    "put_object": "s3:PutObject",
    "create_multipart_upload": "s3:PutObject",
    "upload_part": "s3:PutObject",
    "complete_multipart_upload": "s3:PutObject",
    "upload_part_copy": "s3:PutObject and s3:GetObject",
    # S3 answers 403, not 404, for a key that is not there when ListBucket is not allowed
    "get_object": "s3:GetObject (and s3:ListBucket)",
    "head_object": "s3:GetObject (and s3:ListBucket)",
    "list_objects_v2": "s3:ListBucket",
    "delete_objects": "s3:DeleteObject",
    "abort_multipart_upload": "s3:AbortMultipartUpload",
    "list_multipart_uploads": "s3:ListBucketMultipartUploads",
}

#: What to do about a refusal no code above explains (:func:`refusal`).
REFUSED_HINT = (
    "the server will refuse this request again, so a restart does not help; an S3-compatible "
    "server may lack a header or feature this consumer needs: see README, Troubleshooting"
)


class StorageError(RuntimeError):
    """Base class for object-store failures."""


class TransientStorageError(StorageError):
    """The store kept failing with errors that are normally temporary (5xx, timeouts, resets)."""


class FatalStorageError(StorageError):
    """An error retrying cannot fix (missing bucket, bad credentials, access denied)."""


class KeysNotDeleted(Exception):
    """Keys a DeleteObjects answer lists as not deleted, with the first one's error code and
    message where :func:`classify` and the error messages look for them (as in a ClientError)."""

    def __init__(self, errors: Sequence[Mapping[str, Any]]) -> None:
        first = errors[0]
        code = str(first.get("Code", ""))
        status = 403 if code == "AccessDenied" else 500 if code in _TRANSIENT_CODES else 400
        said = str(first.get("Message", "") or "")
        self.response = {
            "Error": {"Code": code, "Message": f"{said + '; ' if said else ''}{len(errors)} key(s) not "
                                               f"deleted, the first {first.get('Key')}"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        }
        super().__init__(f"{code}: {len(errors)} key(s) not deleted, the first {first.get('Key')}")


class PutOutcome(Enum):
    CREATED = "created"
    EXISTS_SAME = "exists-same"  # an object with identical bytes was already there (retry after a lost reply)
    EXISTS_OTHER = "exists-other"  # a different object holds the key


class Created(NamedTuple):
    """What a conditional create found: the outcome, and the object's ETag as the store reports
    it. Not always the MD5 of the bytes: under SSE-KMS (and for multipart objects) S3's ETag is
    something else, so ETags are only ever compared with ETags S3 gave."""

    outcome: PutOutcome
    etag: str | None


#: User metadata of an object (``x-amz-meta-<name>``): lower-case names, US-ASCII values, as S3
#: requires of them; None or empty for none.
Metadata = Mapping[str, str] | None


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str = ""
    #: The object's user metadata (``x-amz-meta-*``, names in lower case): what a HEAD says; empty
    #: in a listing, which does not carry it.
    metadata: Mapping[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class CopyRange:
    """Bytes ``[start, end)`` of ``key`` (a source for :meth:`ObjectStore.compose`)."""

    key: str
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


Segment = CopyRange | bytes


@dataclass
class StoreStats:
    """Request and byte counters: the protocol's cost, kept visible (bench reports them)."""

    requests: dict[str, int] = field(default_factory=dict)
    bytes_uploaded: int = 0
    bytes_copied_server_side: int = 0
    bytes_downloaded: int = 0
    retries: int = 0
    # For metrics and health (consumer.metrics): failures and retries by operation, when the
    # last request was attempted and since when requests fail (None after any success).
    errors: dict[str, int] = field(default_factory=dict)
    retries_by_op: dict[str, int] = field(default_factory=dict)
    last_request_at: float | None = None
    failing_since: float | None = None
    #: Recoveries and verify send requests from several threads; ``+=`` is not atomic across them.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, op: str) -> None:
        with self._lock:
            self.requests[op] = self.requests.get(op, 0) + 1
            self.last_request_at = time.monotonic()

    def failed(self, op: str, *, retrying: bool) -> None:
        with self._lock:
            self.errors[op] = self.errors.get(op, 0) + 1
            if retrying:
                self.retries += 1
                self.retries_by_op[op] = self.retries_by_op.get(op, 0) + 1
            if self.failing_since is None:
                self.failing_since = time.monotonic()

    def moved(self, *, uploaded: int = 0, downloaded: int = 0, copied: int = 0) -> None:
        """Count bytes sent, received, and copied inside S3 (UploadPartCopy)."""
        with self._lock:
            self.bytes_uploaded += uploaded
            self.bytes_downloaded += downloaded
            self.bytes_copied_server_side += copied


class ObjectStore(Protocol):
    """What the worker needs from storage (S3 in production; the same class in tests)."""

    stats: StoreStats

    def put_if_absent(self, key: str, data: bytes, metadata: Metadata = None) -> PutOutcome: ...
    def create(self, key: str, data: bytes, metadata: Metadata = None) -> Created: ...
    def replace_if_match(self, key: str, data: bytes, etag: str) -> str | None: ...
    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes: ...
    def head(self, key: str) -> ObjectInfo | None: ...
    def list(self, prefix: str, start_after: str = "") -> list[ObjectInfo]: ...
    def delete(self, keys: Sequence[str]) -> None: ...
    def compose(self, key: str, segments: Sequence[Segment]) -> PutOutcome: ...
    def put_if_absent_multipart(self, key: str, data: bytes) -> PutOutcome: ...
    def abort_uploads(self, key: str) -> int: ...
    def keeps_deleted_versions(self, prefix: str) -> bool | None: ...
    def expires_current(self, prefix: str) -> str | None: ...


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, bounded in total time.

    The default bound (4 min) stays below librdkafka's max.poll.interval.ms (5 min): a worker that
    waits out an S3 outage inside one flush keeps its group membership, and one that gives up exits
    with committed == durable, to be restarted by its supervisor.
    """

    base: float = 0.2
    cap: float = 10.0
    max_elapsed: float = 240.0

    def delays(self) -> Iterator[float]:
        attempt = 0
        while True:
            yield random.uniform(0, min(self.cap, self.base * (2 ** min(attempt, 60))))
            attempt += 1


def release_failed_request() -> None:
    """Free what a failed request left behind, before the retry waits.

    A failed request leaves garbage that only the cycle collector frees: s3fs keeps the error in a
    local of a frame that the error's own traceback holds, and below that frame lie the request and
    aiohttp's copy of its body. A run raises the collector's first threshold far above what a
    failed request allocates (:func:`consumer.cli.settled_heap`), and while the loop waits out an
    outage little else allocates, so nothing collected them: each refused attempt kept one more
    copy of its piece. With every write refused for a minute, ``wide`` at the default budget went
    from 607 to 689 MB, and peaked 75 MB over its bound once S3 took writes again. One full
    collection takes a few milliseconds, on a path that then sleeps."""
    gc.collect()


def _client_error_response(exc: BaseException) -> dict[str, Any] | None:
    """The parsed S3 answer of the botocore ClientError found in ``exc`` or its causes (s3fs
    translates ClientErrors into OSErrors and chains the original as the cause)."""
    seen: BaseException | None = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict) and "Error" in response:
            return response
        seen = seen.__cause__ or seen.__context__
    return None


def _client_error_code(exc: BaseException) -> tuple[str, int]:
    """(error code, HTTP status) of the S3 answer in ``exc`` (``("", 0)`` if none)."""
    response = _client_error_response(exc)
    if response is None:
        return "", 0
    code = str(response["Error"].get("Code", ""))
    return code, int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _client_error_message(exc: BaseException) -> str:
    """The server's own message in the S3 answer in ``exc`` ("" if none)."""
    response = _client_error_response(exc)
    return "" if response is None else str(response["Error"].get("Message", "") or "")


def refusal(exc: BaseException) -> str | None:
    """``"<code>: <the server's message>"`` when ``exc`` is S3 refusing a request for good: a 4xx
    answer the protocol does not handle itself (412, 404, and the transient 409, 429 and 400
    RequestTimeout are handled), or 501. Retrying, or restarting the process, gets the same
    answer; the runner ends with exit status 4 and :data:`REFUSED_HINT` instead of calling it
    unexpected."""
    code, status = _client_error_code(exc)
    final = 400 <= status < 500 or status == 501
    if not final or classify(exc) in ("precondition", "missing", "transient"):
        return None
    message = _client_error_message(exc)
    return f"{code or status}: {message}" if message else str(code or status)


#: Seconds a command's first S3 request is retried (a run's, ``verify``'s, ``show``'s, …): a wrong
#: --s3-endpoint-url or a server not up yet is the likely cause then, not an outage in the middle of
#: a run, which gets :class:`RetryPolicy`'s minutes.
FIRST_CONTACT_S = 30.0


def first_request(store: ObjectStore, prefix: str) -> None:
    """A command's first request to ``store`` (:meth:`S3Store.reach`: a refused connection said at
    once, a silent server waited for :data:`FIRST_CONTACT_S`); the in-memory doubles, which have no
    retries to bound, are not asked."""
    first = getattr(store, "reach", None)
    if first is not None:
        first(prefix, FIRST_CONTACT_S)


def connection_refused(exc: BaseException) -> bool:
    """Whether ``exc`` is, or was raised for, a refused TCP connection (botocore's
    EndpointConnectionError over aiohttp's over ``ConnectionRefusedError``): nothing listens at the
    endpoint's address and port. An answer, unlike a server that is silent or slow."""
    seen: BaseException | None = exc
    for _ in range(8):  # a chain of causes is a few links long; a cycle must not loop
        if seen is None:
            return False
        if isinstance(seen, ConnectionRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def classify(exc: BaseException) -> str:
    """'precondition' | 'missing' | 'fatal' | 'transient' | 'other' for an exception from s3fs."""
    code, status = _client_error_code(exc)
    if isinstance(exc, FileExistsError) or code == "PreconditionFailed" or status == 412:
        return "precondition"
    if code in ("NoSuchKey", "NoSuchUpload") or (status == 404 and code != "NoSuchBucket"):
        return "missing"
    if code in _FATAL_CODES or status in (401, 403) or type(exc).__name__ in _NO_CREDENTIALS:
        return "fatal"
    if code in _TRANSIENT_CODES or status >= 500 or status == 429 or status == 409:
        return "transient"
    if isinstance(exc, FileNotFoundError) and not code:
        return "missing"
    if isinstance(exc, PermissionError):
        return "fatal"
    name = type(exc).__name__
    if isinstance(exc, (ConnectionError, TimeoutError)) or any(
        s in name for s in ("Connect", "Timeout", "ClientOSError", "ServerDisconnected", "ReadError")
    ):
        return "transient"
    if isinstance(exc, OSError) and not code:
        return "transient"
    return "other"


#: Cloudflare R2 completes a multipart upload only when every part but the last has one size;
#: such endpoints are recognised by this host suffix (:func:`needs_equal_parts`).
EQUAL_PART_HOSTS = (".r2.cloudflarestorage.com",)
EQUAL_PART_SIZE = 8 * 1024 * 1024
MAX_PARTS = 10_000


def needs_equal_parts(endpoint_url: str | None) -> bool:
    """True for an S3-compatible endpoint that wants equal multipart parts (R2)."""
    host = (urlsplit(endpoint_url).hostname or "") if endpoint_url else ""
    return host.endswith(EQUAL_PART_HOSTS)


def plan_equal_parts(segments: Sequence[Segment], part_size: int = EQUAL_PART_SIZE) -> list[list[Segment]]:
    """Group ``segments`` into parts of exactly ``part_size`` bytes each but the last (R2's rule).

    The part size grows past ``part_size`` (in whole MiB) if the object would otherwise need more
    than S3's 10,000 parts. A part that lies inside one source range is a single
    :class:`CopyRange`, copied server-side when ≥ 5 MiB; a part that spans a boundary between
    sources is uploaded by the client (at most one part per boundary).
    """
    total = sum(s.length if isinstance(s, CopyRange) else len(s) for s in segments)
    mib = 1024 * 1024
    part_size = max(part_size, -(-total // MAX_PARTS // mib) * mib)
    parts: list[list[Segment]] = []
    part: list[Segment] = []
    filled = 0
    for seg in segments:
        if isinstance(seg, bytes):
            pos, end = 0, len(seg)
        else:
            pos, end = seg.start, seg.end
        while pos < end:
            take = min(part_size - filled, end - pos)
            piece = seg[pos : pos + take] if isinstance(seg, bytes) else CopyRange(seg.key, pos, pos + take)
            part.append(piece)
            filled += take
            pos += take
            if filled == part_size:
                parts.append(part)
                part, filled = [], 0
    if part:
        parts.append(part)
    return parts


#: The size a roll's client-side part is flushed at: the most it holds of a file's bytes at once.
CLIENT_PART_BYTES = 8 * 1024 * 1024


def plan_parts(
    segments: Sequence[Segment], min_part: int = MIN_S3_PART, target_part: int = CLIENT_PART_BYTES
) -> list[list[Segment]]:
    """Group ``segments`` into multipart parts that obey S3's rules.

    Each returned part is either a single :class:`CopyRange` of ≥ ``min_part`` bytes (copied
    server-side, never passing through this process) or a list of segments whose bytes the client
    uploads (downloaded ranges and literal bytes, concatenated). Every part except the last is
    ≥ ``min_part``. When a small client-side buffer precedes a large source range, just enough of
    the range is pulled into the buffer to make it a legal part, and the rest is still copied
    server-side. Client buffers are flushed at ``target_part`` so memory stays bounded.
    """
    parts: list[list[Segment]] = []
    buf: list[Segment] = []
    buf_len = 0

    def flush() -> None:
        nonlocal buf, buf_len
        if buf:
            parts.append(buf)
            buf, buf_len = [], 0

    for seg in segments:
        if isinstance(seg, bytes):
            if seg:
                buf.append(seg)
                buf_len += len(seg)
                if buf_len >= target_part:
                    flush()
            continue
        start, end = seg.start, seg.end
        if end <= start:
            continue
        if buf:
            need = min_part - buf_len
            if need > 0 and end - start - need >= min_part:
                buf.append(CopyRange(seg.key, start, start + need))
                buf_len += need
                start += need
                flush()
            elif need > 0:
                buf.append(CopyRange(seg.key, start, end))
                buf_len += end - start
                if buf_len >= target_part:
                    flush()
                continue
            else:
                flush()
        if end - start >= min_part:
            parts.append([CopyRange(seg.key, start, end)])
        else:
            buf.append(CopyRange(seg.key, start, end))
            buf_len += end - start
    flush()
    # A trailing small part is legal only as the last part; merge an undersized last-but-one
    # client part forward is unnecessary because only the final flush can be small.
    for i, part in enumerate(parts[:-1]):
        size = sum(s.length if isinstance(s, CopyRange) else len(s) for s in part)
        if size < min_part:
            raise AssertionError(f"planner produced a {size}-byte non-last part {i + 1}")
    return parts


def _raw_timestamp(value: str) -> str:
    """A response timestamp as the server sent it (see :func:`_client_session`)."""
    return value


def _add_content_md5(request: Any, **_: Any) -> None:
    """``Content-MD5`` on a DeleteObjects request (see :func:`_client_session`)."""
    body = request.body
    if isinstance(body, bytes | bytearray) and "Content-MD5" not in request.headers:
        digest = hashlib.md5(body, usedforsecurity=False).digest()
        request.headers["Content-MD5"] = base64.b64encode(digest).decode()


def _client_session() -> Any:
    """The botocore session our S3 client is built from.

    * **Response timestamps are left unparsed.** Nothing here reads a timestamp of a response
      (``LastModified`` of a HEAD or of every key a LIST returns). botocore parses each one with
      ``dateutil`` by default: measured here, that is 60 % of the client CPU of a 1,000-key LIST
      page (111 → 45 ms) and a tenth of a HEAD. ``set_parser_defaults`` is botocore's documented
      hook for this; the AWS CLI uses it the same way.
    * **DeleteObjects carries ``Content-MD5``.** The S3 API required it for a multi-object
      delete, and S3-compatible servers (older MinIO and Ceph RGW among them) still refuse the
      request without it ("MissingContentMD5"). botocore 1.36 and later send only a CRC32
      checksum, so every roll's clean-up would fail there. AWS accepts both headers.
    """
    import aiobotocore.session

    session = aiobotocore.session.AioSession()
    session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_raw_timestamp)
    session.register("before-sign.s3.DeleteObjects", _add_content_md5)
    return session


def _user_agent() -> str:
    """A fixed ``User-Agent``: botocore otherwise rebuilds and sanitises its own, character by
    character, at every request (about a tenth of a HEAD's client CPU here). The server's access
    logs still name this consumer and the library versions (botocore appends its own)."""
    import platform

    import aiobotocore
    import s3fs

    from consumer import __version__

    return (
        f"kafka-parquet-consumer/{__version__} s3fs/{s3fs.__version__} "
        f"aiobotocore/{aiobotocore.__version__} Python/{platform.python_version()}"
    )


class S3Store:
    """:class:`ObjectStore` on S3 (or any S3-compatible server) through s3fs/aiobotocore."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        retry: RetryPolicy | None = None,
        on_retry: Callable[[str, BaseException, float], None] | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        equal_parts: bool | None = None,
        encryption: Mapping[str, str] | None = None,
    ) -> None:
        import s3fs  # imported here so pure-logic users of this module do not pay for it

        self.bucket = bucket
        #: Server-side encryption arguments sent with every write that creates an object
        #: (PutObject, CreateMultipartUpload; its parts and copies inherit it), for a bucket policy
        #: that refuses writes without them (Config.s3_encryption).
        self.encryption = dict(encryption or {})
        #: Rolls compose final files from parts of one size (:func:`plan_equal_parts`); by default
        #: only on endpoints that require it (:func:`needs_equal_parts`).
        self.equal_parts = needs_equal_parts(endpoint_url) if equal_parts is None else equal_parts
        self.retry = retry or RetryPolicy()
        #: An absolute ``time.monotonic()`` bound on every retry loop, one already running
        #: included; set on SIGTERM so the shutdown bound holds during an outage (Runner).
        self.give_up_at: float | None = None
        #: A bound of the same kind that holds only inside :meth:`patience`.
        self._patience_until: float | None = None
        self._refused_is_an_answer = False
        self.endpoint_url = endpoint_url
        self.on_retry = on_retry
        self.stats = StoreStats()
        client_kwargs: dict[str, Any] = {"region_name": region}
        if endpoint_url:
            client_kwargs["endpoint_url"] = endpoint_url
            if endpoint_url.lower().startswith("http://"):
                # Plain HTTP has no certificate to verify; aiobotocore would still parse the whole
                # CA bundle into a TLS context at start (~0.07 CPU-s) that is never used.
                client_kwargs["verify"] = False
        self._fs = s3fs.S3FileSystem(
            client_kwargs=client_kwargs,
            config_kwargs={
                "connect_timeout": connect_timeout,
                "read_timeout": read_timeout,
                # botocore's max_attempts counts retries: one quick retry of its own (after up to
                # a second), which covers a kept-alive connection the server closed; then ours.
                "retries": {"max_attempts": 1, "mode": "standard"},
                "user_agent": _user_agent(),
            },
            session=_client_session(),
            skip_instance_cache=True,
            use_listings_cache=False,
        )
        self._fs.retries = 1  # retries are ours (bounded, jittered, visible), not s3fs's

    def connect(self) -> None:
        """Build the S3 client now; s3fs otherwise builds it at the first request.

        Building it loads botocore's service model and endpoint rules: about 35,000 container
        objects that live as long as the process. A run builds it during start-up, so that they
        are frozen with the rest of the start-up heap instead of setting off collections once the
        run has begun (:func:`consumer.cli.settled_heap`). No request is sent.
        """
        self._fs.connect()

    # -- plumbing ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def patience(self, seconds: float, refused_is_an_answer: bool = False) -> Iterator[None]:
        """Within the block, retry loops give up ``seconds`` from now, or at :attr:`give_up_at`
        if that comes first. A stop request's bound (Runner._cap_retries) is :attr:`give_up_at`
        itself, so it holds inside the block and after it alike. ``refused_is_an_answer``: a
        refused connection gives up at once (:func:`connection_refused`), for a command that
        answers its operator (``check``, ``verify``, ``show``, ``finish``) rather than a run that
        waits for a server still starting."""
        self._patience_until = time.monotonic() + seconds
        self._refused_is_an_answer = refused_is_an_answer
        try:
            yield
        finally:
            self._patience_until = None
            self._refused_is_an_answer = False

    def reach(self, prefix: str, seconds: float) -> None:
        """A command's first request: one LIST of at most one key under ``prefix``, retried for
        ``seconds`` (a wrong endpoint or a server not up yet is more likely then than an outage, which
        gets :attr:`retry`'s minutes) and given up at once on a refused connection. Raises what a
        request raises (:class:`TransientStorageError` when S3 did not answer)."""
        with self.patience(seconds, refused_is_an_answer=True):
            self._call("list_objects_v2", Prefix=prefix, MaxKeys=1)

    def _retrying(self, op: str, fn: Callable[[], T]) -> T:
        started = time.monotonic()
        deadline = started + self.retry.max_elapsed
        delays = self.retry.delays()
        while True:
            self.stats.count(op)
            try:
                out = fn()
                self.stats.failing_since = None
                return out
            except Exception as exc:
                kind = classify(exc)
                if kind in ("precondition", "missing"):
                    self.stats.failing_since = None  # S3 answered
                if kind == "fatal":
                    self.stats.failed(op, retrying=False)
                    code, status = _client_error_code(exc)
                    hint = _FATAL_CODES.get(code) or _NO_CREDENTIALS.get(type(exc).__name__,
                                                                         "check credentials and bucket")
                    denied = code == "AccessDenied" or (status == 403 and code in ("", "403"))
                    if denied and op in _IAM_ACTIONS:
                        hint = (f"access denied: the credentials need {_IAM_ACTIONS[op]} on the "
                                "bucket and prefix (README, Permissions)")
                    said = _client_error_message(exc) or (str(exc) if not code else "")
                    raise FatalStorageError(
                        f"S3 {op} on s3://{self.bucket} failed: {code or type(exc).__name__}"
                        f"{f' ({said})' if said else ''}: {hint}"
                    ) from exc
                if kind != "transient":
                    raise
                delay = next(delays)
                limit = min(b for b in (deadline, self.give_up_at, self._patience_until) if b is not None)
                refused = self._refused_is_an_answer and connection_refused(exc)
                give_up = refused or time.monotonic() + delay > limit
                self.stats.failed(op, retrying=not give_up)
                if refused:
                    raise TransientStorageError(
                        f"S3 {op} on s3://{self.bucket}: the connection was refused: nothing listens at "
                        f"{self.endpoint_url or 'the endpoint'} ({exc})") from exc
                if give_up:
                    raise TransientStorageError(f"S3 {op} on s3://{self.bucket} kept failing for "
                                                f"{time.monotonic() - started:.0f}s: {exc}") from exc
                if self.on_retry:
                    self.on_retry(op, exc, delay)
            release_failed_request()
            time.sleep(delay)

    def _call(self, op: str, **kwargs: Any) -> Any:
        return self._retrying(op, lambda: self._fs.call_s3(op, Bucket=self.bucket, **kwargs))

    # -- operations ----------------------------------------------------------------------------
    def put_if_absent(self, key: str, data: bytes, metadata: Metadata = None) -> PutOutcome:
        """Create ``key`` only if absent (``If-None-Match: *``); see :meth:`create`."""
        return self.create(key, data, metadata).outcome

    def create(self, key: str, data: bytes, metadata: Metadata = None) -> Created:
        """Create ``key`` only if absent (``If-None-Match: *``), with its ETag from S3's reply.

        A retry after a lost reply finds our own object: that is reported as EXISTS_SAME, so
        callers can treat "already durable" as success. Our own object is told from someone
        else's by the MD5 ETag, or, where S3's ETag is not the MD5 (SSE-KMS), by its bytes.
        ``metadata``: user metadata, which :meth:`head` returns.
        """
        extra = {"Metadata": dict(metadata)} if metadata else {}
        try:
            reply = self._call("put_object", Key=key, Body=data, IfNoneMatch="*", **extra, **self.encryption)
            self.stats.moved(uploaded=len(data))
            return Created(PutOutcome.CREATED, str(reply.get("ETag", "")).strip('"') or None)
        except Exception as exc:
            if classify(exc) != "precondition":
                raise
        return same_object(self, key, data)

    def replace_if_match(self, key: str, data: bytes, etag: str) -> str | None:
        """Overwrite ``key`` only if its ETag is still ``etag``: the new ETag, from S3's reply
        (empty if it gave none), or None if someone changed or deleted it. The reply's ETag, not
        a HEAD after it: another writer may replace the object in between."""
        try:
            reply = self._call("put_object", Key=key, Body=data, IfMatch=f'"{etag}"', **self.encryption)
        except Exception as exc:
            if classify(exc) in ("precondition", "missing"):
                return None
            raise
        self.stats.moved(uploaded=len(data))
        return str(reply.get("ETag", "")).strip('"')

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` of ``key`` (whole object by default); FileNotFoundError if absent."""
        if start is not None and end is not None and end <= start:
            return b""

        def read() -> bytes:
            try:
                out: bytes = self._fs.cat_file(f"{self.bucket}/{key}", start=start, end=end)
                return out
            except FileNotFoundError:
                raise
            except Exception as exc:
                if classify(exc) == "missing":
                    raise FileNotFoundError(f"s3://{self.bucket}/{key}") from exc
                raise

        data = self._retrying("get_object", read)
        self.stats.moved(downloaded=len(data))
        return data

    def head(self, key: str) -> ObjectInfo | None:
        try:
            r = self._call("head_object", Key=key)
        except Exception as exc:
            if classify(exc) == "missing":
                return None
            raise
        return ObjectInfo(key, int(r["ContentLength"]), str(r.get("ETag", "")).strip('"'),
                          {str(k).lower(): str(v) for k, v in (r.get("Metadata") or {}).items()})

    def list(self, prefix: str, start_after: str = "") -> list[ObjectInfo]:
        """Every object under ``prefix`` (after the key ``start_after``, if given), sorted by key;
        one request per 1,000 keys."""
        out: list[ObjectInfo] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Prefix": prefix, "MaxKeys": 1000}
            if token:
                kwargs["ContinuationToken"] = token
            elif start_after:
                kwargs["StartAfter"] = start_after
            r = self._call("list_objects_v2", **kwargs)
            for o in r.get("Contents", []) or []:
                out.append(ObjectInfo(o["Key"], int(o["Size"]), str(o.get("ETag", "")).strip('"')))
            if not r.get("IsTruncated"):
                return out
            token = r.get("NextContinuationToken")

    def delete(self, keys: Sequence[str]) -> None:
        """Delete ``keys`` (a missing one is not an error), 1,000 a request.

        DeleteObjects answers 200 and lists the keys it did not delete, each with its own error
        code: those are retried like a failed request when the code is transient (SlowDown,
        InternalError), and stop the run like one when it is not (AccessDenied: a bucket policy
        that lets the credentials write but not delete)."""
        for i in range(0, len(keys), 1000):
            left = list(keys[i : i + 1000])
            self._retrying("delete_objects", functools.partial(self._delete_some, left))

    def _delete_some(self, left: MutableSequence[str]) -> None:
        """One DeleteObjects of ``left``; the keys it did not delete stay in ``left``, and raise."""
        r = self._fs.call_s3("delete_objects", Bucket=self.bucket,
                             Delete={"Objects": [{"Key": k} for k in left], "Quiet": True})
        errors = [e for e in (r.get("Errors") or []) if e.get("Code") != "NoSuchKey"]
        if errors:
            left[:] = [str(e.get("Key")) for e in errors]
            raise KeysNotDeleted(errors)

    def compose(self, key: str, segments: Sequence[Segment]) -> PutOutcome:
        """Create ``key`` (if absent) as the concatenation of ``segments``.

        Ranges of ≥ 5 MiB are copied server-side (UploadPartCopy); smaller ones are downloaded and
        uploaded with the literal bytes. An object that fits one part is a single conditional PUT.
        With :attr:`equal_parts` every part but the last has one size (R2).
        """
        parts = plan_equal_parts(segments) if self.equal_parts else plan_parts(segments)
        if len(parts) <= 1:
            return self.put_if_absent(key, self._materialise(parts[0] if parts else []))
        return self._multipart_if_absent(key, parts, fault_point="mid_merge")

    def put_if_absent_multipart(self, key: str, data: bytes) -> PutOutcome:
        """``data`` as a multipart upload of one part, completed with ``If-None-Match: *``, as
        :meth:`compose` completes a file of several parts: the start-up probe checks that the
        server refuses it when ``key`` exists (some honour the condition on PutObject only)."""
        return self._multipart_if_absent(key, [[data]], fault_point=None)

    def _multipart_if_absent(
        self, key: str, parts: Sequence[Sequence[Segment]], *, fault_point: str | None
    ) -> PutOutcome:
        r = self._call("create_multipart_upload", Key=key, **self.encryption)
        upload_id = r["UploadId"]
        try:
            done: list[dict[str, Any]] = []
            for n, part in enumerate(parts, start=1):
                if len(part) == 1 and isinstance(part[0], CopyRange) and part[0].length >= MIN_S3_PART:
                    src = part[0]
                    pr = self._call(
                        "upload_part_copy",
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=n,
                        CopySource={"Bucket": self.bucket, "Key": src.key},
                        CopySourceRange=f"bytes={src.start}-{src.end - 1}",
                    )
                    etag = pr["CopyPartResult"]["ETag"]
                    self.stats.moved(copied=src.length)
                else:
                    body = self._materialise(part)
                    pr = self._call("upload_part", Key=key, UploadId=upload_id, PartNumber=n, Body=body)
                    etag = pr["ETag"]
                    self.stats.moved(uploaded=len(body))
                done.append({"ETag": etag, "PartNumber": n})
                if fault_point:
                    faults.point(fault_point)
            self._call(
                "complete_multipart_upload",
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": done},
                IfNoneMatch="*",
            )
            return PutOutcome.CREATED
        except Exception as exc:
            self._abort(key, upload_id)
            if classify(exc) == "precondition":
                return PutOutcome.EXISTS_OTHER
            raise

    def _materialise(self, part: Sequence[Segment]) -> bytes:
        chunks = [s if isinstance(s, bytes) else self.get(s.key, s.start, s.end) for s in part]
        return b"".join(chunks)

    def _abort(self, key: str, upload_id: str) -> None:
        # Best effort: abort_uploads() at recovery sweeps whatever is left.
        with contextlib.suppress(Exception):
            self._call("abort_multipart_upload", Key=key, UploadId=upload_id)

    def abort_uploads(self, key: str) -> int:
        """Abort unfinished multipart uploads to exactly ``key`` (left by a crash mid-merge)."""
        try:
            r = self._call("list_multipart_uploads", Prefix=key)
        except Exception as exc:
            if classify(exc) in ("missing", "other"):
                return 0
            raise
        n = 0
        for u in r.get("Uploads", []) or []:
            if u.get("Key") == key:
                self._abort(key, u["UploadId"])
                n += 1
        return n

    def keeps_deleted_versions(self, prefix: str) -> bool | None:
        """True when the bucket keeps every version (versioning on) and no enabled lifecycle rule
        expires the noncurrent versions of keys under ``prefix``; None when the bucket would not
        say (the two reads refused or failed). Two requests, once at start, never retried."""
        try:
            status = self._fs.call_s3("get_bucket_versioning", Bucket=self.bucket).get("Status")
            if status != "Enabled":
                return False
            try:
                rules = self._fs.call_s3("get_bucket_lifecycle_configuration", Bucket=self.bucket)["Rules"]
            except Exception as exc:
                if _client_error_code(exc)[0] != "NoSuchLifecycleConfiguration":
                    raise
                rules = []
        except Exception:
            return None
        return not any(expires_noncurrent_under(rule, prefix) for rule in rules)

    def expires_current(self, prefix: str) -> str | None:
        """Which enabled lifecycle rule expires the current objects under ``prefix`` ("rule 'x'
        after 30 days"); None when none does, or the bucket would not say. One request, never
        retried."""
        try:
            rules = self._fs.call_s3("get_bucket_lifecycle_configuration", Bucket=self.bucket)["Rules"]
        except Exception:
            return None  # no configuration, or not allowed to read it
        return next((said for rule in rules if (said := expires_current_under(rule, prefix))), None)


def same_object(store: ObjectStore, key: str, data: bytes) -> Created:
    """After a 412 on a create: EXISTS_SAME if ``key`` holds exactly ``data`` (our own write whose
    reply was lost), else EXISTS_OTHER; with the ETag found. The MD5 ETag settles it when the
    store uses one; an ETag that is not the MD5 (SSE-KMS) costs one GET of an object of the
    same size."""
    info = store.head(key)
    if info is None or info.size != len(data):
        return Created(PutOutcome.EXISTS_OTHER, info.etag if info else None)
    if info.etag == hashlib.md5(data).hexdigest():
        return Created(PutOutcome.EXISTS_SAME, info.etag)
    try:
        same = store.get(key) == data
    except FileNotFoundError:
        return Created(PutOutcome.EXISTS_OTHER, None)
    return Created(PutOutcome.EXISTS_SAME if same else PutOutcome.EXISTS_OTHER, info.etag)


def _applies_under(rule: dict[str, Any], prefix: str) -> bool:
    """Whether an enabled lifecycle ``rule`` applies to keys under ``prefix``: its filter's prefix
    is a beginning of ``prefix``, or lies under it (a rule for the ``_staging/`` folder). A rule
    filtered by tags or object sizes counts too: whether it applies cannot be told from the keys."""
    if rule.get("Status") != "Enabled":
        return False
    where = rule.get("Filter", {})
    where = where.get("And", where)
    rule_prefix = str(where.get("Prefix", rule.get("Prefix", "")))
    return prefix.startswith(rule_prefix) or rule_prefix.startswith(prefix)


def expires_noncurrent_under(rule: dict[str, Any], prefix: str) -> bool:
    """True when the lifecycle ``rule`` (as S3 returns it) is enabled, expires noncurrent
    versions, and applies to keys under ``prefix`` (:func:`_applies_under`)."""
    return "NoncurrentVersionExpiration" in rule and _applies_under(rule, prefix)


def expires_current_under(rule: dict[str, Any], prefix: str) -> str | None:
    """What the lifecycle ``rule`` does to the *current* objects under ``prefix`` ("rule 'x' after
    30 days"), or None when it does not expire them: it is not enabled, does not apply there, or
    only removes expired delete markers."""
    expiration = rule.get("Expiration") or {}
    when = (f"after {expiration['Days']} days" if "Days" in expiration
            else f"on {expiration['Date']}" if "Date" in expiration else None)
    if when is None or not _applies_under(rule, prefix):
        return None
    return f"rule {rule.get('ID', '(no id)')!r} {when}"


_CONDITIONAL_SERVERS = (
    "use AWS S3, or a server that implements If-None-Match on PutObject and "
    "CompleteMultipartUpload (MinIO, SeaweedFS ≥ 3.80, Ceph RGW ≥ 19)."
)


def probe_conditional_writes(store: ObjectStore, key: str, *, if_match: bool = False) -> None:
    """Refuse to run on a store that ignores ``If-None-Match: *``.

    The protocol's fencing and its "never overwrite" rule rest on conditional creates: without
    them a zombie can overwrite a committed piece and a roll would splice a cached footer onto new
    bytes. So at start a probe object is created, then created again with a PUT and with a
    multipart upload (what a final file over one part is); both must be refused (412). A server
    may honour the condition on one and not the other. Six small requests per start (the refused
    upload is aborted), then the probe is deleted. ``if_match`` (replays, whose positions are S3
    objects replaced with ``If-Match``): a replace with an ETag the object does not have must be
    refused too, or two runs of one replay would overwrite each other's position.
    """
    from consumer.errors import StorageContractError

    first = store.put_if_absent(key, b"probe-1")
    try:
        second = store.put_if_absent(key, b"probe-2")
        if first is not PutOutcome.CREATED or second is not PutOutcome.EXISTS_OTHER:
            raise StorageContractError(
                "the S3 bucket does not honour conditional writes (a second PUT with "
                f"If-None-Match: * of {key} was {second.name}, not refused with 412). This consumer "
                f"needs them to never overwrite committed data: {_CONDITIONAL_SERVERS}"
            )
        third = store.put_if_absent_multipart(key, b"probe-3")
        if third is not PutOutcome.EXISTS_OTHER:
            raise StorageContractError(
                "the S3 bucket honours conditional writes on PutObject but not on "
                f"CompleteMultipartUpload (a multipart upload of {key} completed with If-None-Match: * "
                f"was {third.name}, not refused with 412). Final files larger than 5 MiB are "
                "completed that way, and one must never overwrite another writer's: "
                f"{_CONDITIONAL_SERVERS}"
            )
        if if_match and store.replace_if_match(key, b"probe-4", "0" * 32) is not None:
            raise StorageContractError(
                "the S3 bucket does not honour If-Match on PutObject (a PUT of "
                f"{key} with an ETag it does not have was not refused with 412). A replay keeps "
                "its positions in S3 and replaces them with If-Match, so that two runs of one "
                "replay cannot overwrite each other's: use AWS S3, or a server that implements "
                "If-Match on PutObject (MinIO, SeaweedFS)."
            )
    finally:
        store.delete([key])

