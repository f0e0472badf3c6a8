"""The in-package test doubles (consumer/testing.py) behave like the real parts where the protocol
depends on it.

Tests taking the ``backend`` fixture run twice: against :class:`MemoryStore` and, marked
``stack``, against the real S3 server through :class:`S3Store` (object-store level) and boto3
(request level, for the S3 rules S3Store never breaks on purpose). The same assertions passing on
both is what licenses using the double in unit tests.

The S3 side uses the session ``stack`` fixture (``TEST_STACK_DIR`` points it at a stack started
elsewhere).
"""

from __future__ import annotations

import copy
import errno
import hashlib
import os
import random
import uuid
from collections.abc import Iterator
from dataclasses import FrozenInstanceError, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from consumer.config import MIN_S3_PART
from consumer.positions import PartitionFenced, PositionError, PositionStore
from consumer.storage import (
    CopyRange,
    FatalStorageError,
    ObjectStore,
    PutOutcome,
    RetryPolicy,
    S3Store,
    Segment,
    TransientStorageError,
)
from consumer.testing import (
    Crash,
    EntityTooSmall,
    MemoryBroker,
    MemoryConsumer,
    MemoryPositions,
    MemoryStore,
    Message,
    PreconditionFailed,
    Upload,
    at_consume,
    crash_at,
    md5_etag,
    memory_runner,
    messages,
    multipart_etag,
    page_view_broker,
)

MiB = 1024 * 1024


# ----------------------------------------------------------------------------------------------
# backends: the double, and the real server behind the same two interfaces
# ----------------------------------------------------------------------------------------------
class BotoRequests:
    """The request-level methods of MemoryStore, done with boto3 against the real server, with S3's
    answers mapped to the double's exceptions (412 → PreconditionFailed, …) and nothing else."""

    def __init__(self, client: Any, bucket: str) -> None:
        self.s3 = client
        self.bucket = bucket
        self._etags: dict[str, list[str]] = {}

    def _call(self, op: str, **kw: Any) -> Any:
        from botocore.exceptions import ClientError

        try:
            return getattr(self.s3, op)(Bucket=self.bucket, **kw)
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            status = exc.response["ResponseMetadata"]["HTTPStatusCode"]
            if status == 412:
                raise PreconditionFailed(code) from exc
            if code == "EntityTooSmall":
                raise EntityTooSmall(code) from exc
            if code in ("NoSuchKey", "NoSuchUpload") or status == 404:
                raise FileNotFoundError(errno.ENOENT, code) from exc
            raise

    def put_object(self, key: str, data: bytes, *, if_none_match: bool = False) -> str:
        kw = {"IfNoneMatch": "*"} if if_none_match else {}
        return str(self._call("put_object", Key=key, Body=data, **kw)["ETag"]).strip('"')

    def create_multipart_upload(self, key: str) -> str:
        upload_id = str(self._call("create_multipart_upload", Key=key)["UploadId"])
        self._etags[upload_id] = []
        return upload_id

    def upload_part(self, key: str, upload_id: str, part_number: int, body: bytes) -> str:
        r = self._call("upload_part", Key=key, UploadId=upload_id, PartNumber=part_number, Body=body)
        self._etags[upload_id].append(r["ETag"])
        return str(r["ETag"]).strip('"')

    def upload_part_copy(self, key: str, upload_id: str, part_number: int, src: CopyRange) -> str:
        r = self._call(
            "upload_part_copy",
            Key=key,
            UploadId=upload_id,
            PartNumber=part_number,
            CopySource={"Bucket": self.bucket, "Key": src.key},
            CopySourceRange=f"bytes={src.start}-{src.end - 1}",
        )
        self._etags[upload_id].append(r["CopyPartResult"]["ETag"])
        return str(r["CopyPartResult"]["ETag"]).strip('"')

    def complete_multipart_upload(self, key: str, upload_id: str, *, if_none_match: bool = False) -> str:
        parts = [{"PartNumber": i + 1, "ETag": e} for i, e in enumerate(self._etags[upload_id])]
        kw = {"IfNoneMatch": "*"} if if_none_match else {}
        r = self._call(
            "complete_multipart_upload",
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
            **kw,
        )
        return str(r["ETag"]).strip('"')

    def abort_multipart_upload(self, key: str, upload_id: str) -> None:
        self._call("abort_multipart_upload", Key=key, UploadId=upload_id)

    def list_multipart_uploads(self, prefix: str) -> list[Upload]:
        r = self._call("list_multipart_uploads", Prefix=prefix)
        return [Upload(u["Key"], u["UploadId"]) for u in r.get("Uploads", []) or []]


@dataclass
class Backend:
    name: str
    store: ObjectStore  # S3Store or MemoryStore
    raw: Any  # request level: BotoRequests or the MemoryStore itself
    prefix: str


@pytest.fixture(params=["memory", pytest.param("s3", marks=pytest.mark.stack)])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    prefix = f"doubles/{request.node.name[:40]}-{uuid.uuid4().hex[:8]}/"
    if request.param == "memory":
        mem = MemoryStore()
        yield Backend("memory", mem, mem, prefix)
        return
    import boto3
    from botocore.config import Config as BotoConfig

    st = request.getfixturevalue("stack")
    client = boto3.client(
        "s3",
        endpoint_url=st.s3_endpoint,
        aws_access_key_id=st.aws_access_key_id,
        aws_secret_access_key=st.aws_secret_access_key,
        region_name=st.aws_region,
        config=BotoConfig(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1, "mode": "standard"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )
    store = S3Store(st.s3_bucket, endpoint_url=st.s3_endpoint, retry=RetryPolicy(max_elapsed=10))
    raw = BotoRequests(client, st.s3_bucket)
    yield Backend("s3", store, raw, prefix)
    for u in raw.list_multipart_uploads(prefix):
        raw.abort_multipart_upload(u.key, u.upload_id)
    keys = [o.key for o in store.list(prefix)]
    if keys:
        store.delete(keys)


# ----------------------------------------------------------------------------------------------
# object-store level: the same assertions on MemoryStore and S3Store
# ----------------------------------------------------------------------------------------------
def test_put_if_absent_never_overwrites_and_tells_own_retry_from_other(backend: Backend) -> None:
    s, key = backend.store, backend.prefix + "piece"
    assert s.put_if_absent(key, b"first") is PutOutcome.CREATED
    assert s.put_if_absent(key, b"first") is PutOutcome.EXISTS_SAME  # a retry after a lost reply
    assert s.put_if_absent(key, b"other") is PutOutcome.EXISTS_OTHER
    assert s.get(key) == b"first"
    # "other" has the size of "first": its bytes are compared too (an ETag may not be the MD5)
    assert s.stats.requests == {"put_object": 3, "head_object": 2, "get_object": 2}
    assert s.stats.bytes_uploaded == 5


def test_user_metadata_of_a_create_comes_back_from_a_head_only(backend: Backend) -> None:
    """What the rolled marker's writer rests on: the metadata a create gave comes back from a HEAD
    (names in lower case), a listing carries none, and a later plain PUT drops it, as in S3."""
    s, key = backend.store, backend.prefix + "marker"
    meta = {"kafka.group_id": "b%C3%A9", "consumer.replay": "true"}
    assert s.put_if_absent(key, b"", meta) is PutOutcome.CREATED
    info = s.head(key)
    assert info is not None and dict(info.metadata) == meta
    assert [o.metadata for o in s.list(backend.prefix)] == [{}]
    backend.raw.put_object(key, b"")
    info = s.head(key)
    assert info is not None and dict(info.metadata) == {}


def test_with_etags_that_are_not_md5s_a_retry_is_still_told_from_another_writer() -> None:
    """S3 with SSE-KMS: ETags are not the MD5 of the bytes. Our own retry is still EXISTS_SAME
    (by its bytes), another writer's object EXISTS_OTHER, and create() returns S3's ETag."""
    s = MemoryStore()
    s.opaque_etags = True
    created = s.create("k", b"first")
    assert created == (PutOutcome.CREATED, s.etag("k")) and created.etag != md5_etag(b"first")
    assert s.create("k", b"first") == (PutOutcome.EXISTS_SAME, created.etag)
    assert s.put_if_absent("k", b"other") is PutOutcome.EXISTS_OTHER
    assert s.put_if_absent("k", b"longer bytes") is PutOutcome.EXISTS_OTHER


def test_conditional_put_is_412_at_request_level(backend: Backend) -> None:
    key = backend.prefix + "obj"
    assert backend.raw.put_object(key, b"first", if_none_match=True) == md5_etag(b"first")
    with pytest.raises(PreconditionFailed):
        backend.raw.put_object(key, b"second", if_none_match=True)
    assert backend.store.get(key) == b"first"


def test_replace_if_match_follows_the_etag(backend: Backend) -> None:
    s, key = backend.store, backend.prefix + "_state"
    assert s.replace_if_match(key, b"x", md5_etag(b"x")) is None  # absent
    s.put_if_absent(key, b"v1")
    info = s.head(key)
    assert info is not None
    assert (info.size, info.etag) == (2, hashlib.md5(b"v1").hexdigest())
    assert s.replace_if_match(key, b"v2", md5_etag(b"other")) is None
    assert s.get(key) == b"v1"
    assert s.replace_if_match(key, b"v2", info.etag) == md5_etag(b"v2")  # its new ETag
    assert s.get(key) == b"v2"
    assert s.replace_if_match(key, b"v3", info.etag) is None  # the ETag moved on
    assert s.head(backend.prefix + "absent") is None


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (None, None, b"0123456789"),
        (2, 5, b"234"),
        (2, None, b"23456789"),
        (None, 3, b"012"),
        (5, 100, b"56789"),
        (-3, None, b"789"),
        (-3, -1, b"78"),
        (0, -1, b""),  # end <= start: no request
        (4, 4, b""),
        (10, 12, OSError),
        (10, None, OSError),
        (20, 30, OSError),
    ],
)
def test_get_byte_ranges(backend: Backend, start: int | None, end: int | None, expected: Any) -> None:
    s, key = backend.store, backend.prefix + "digits"
    s.put_if_absent(key, b"0123456789")
    if isinstance(expected, bytes):
        assert s.get(key, start, end) == expected
    else:
        with pytest.raises(OSError) as exc:  # 416 InvalidRange
            s.get(key, start, end)
        assert exc.value.errno == errno.EINVAL
        assert not isinstance(exc.value, FileNotFoundError)


def test_get_missing_is_file_not_found(backend: Backend) -> None:
    with pytest.raises(FileNotFoundError):
        backend.store.get(backend.prefix + "nothing")
    with pytest.raises(FileNotFoundError):
        backend.store.get(backend.prefix + "nothing", 0, 4)


def test_list_is_sorted_with_sizes_and_etags_and_delete_ignores_missing(backend: Backend) -> None:
    s, p = backend.store, backend.prefix
    # Keys without a "/" after the prefix: SeaweedFS lists "a/z" before "a-" (directory order),
    # AWS and the double in byte order; the protocol never relies on that difference.
    names = ["b", "B", "a-1", "a0", "z", "é", "a"]
    for n in random.sample(names, len(names)):
        s.put_if_absent(p + n, n.encode() * 2)
    s.put_if_absent(backend.prefix.rstrip("/") + "-sibling", b"not under the prefix")
    listed = s.list(p)
    assert [o.key[len(p) :] for o in listed] == sorted(names)
    assert all(o.size == len(o.key[len(p) :].encode()) * 2 for o in listed)
    assert all(o.etag == md5_etag(o.key[len(p) :].encode() * 2) for o in listed)
    s.delete([p + "a", p + "never-was", p + "z"])
    assert [o.key[len(p) :] for o in s.list(p)] == sorted(set(names) - {"a", "z"})
    s.delete([])
    s.delete([backend.prefix.rstrip("/") + "-sibling"])


def test_list_after_a_key_returns_the_later_keys_over_pages(backend: Backend) -> None:
    """``start_after`` (S3's StartAfter) on the names final files have: a roll lists from the
    newest final file it knows. 1,005 keys: the answer spans two pages."""
    s, p = backend.store, backend.prefix
    names = [f"t+0+{i * 7:020d}.parquet" for i in range(1_005)]
    for n in names:
        s.put_if_absent(p + n, b"")
    assert [o.key[len(p) :] for o in s.list(p, p + names[2])] == names[3:]
    assert [o.key[len(p) :] for o in s.list(p, p + f"t+0+{15:020d}.parquet")] == names[3:]
    assert s.list(p, p + names[-1]) == []
    assert len(s.list(p, "")) == 1_005


def test_compose_is_byte_exact_and_copies_large_ranges_server_side(backend: Backend) -> None:
    s, p = backend.store, backend.prefix
    a, b = os.urandom(12 * MiB), os.urandom(3 * MiB)
    s.put_if_absent(p + "a", a)
    s.put_if_absent(p + "b", b)
    segments: list[Segment] = [
        CopyRange(p + "a", 1 * MiB + 3, 7 * MiB + 3),  # 6 MiB, unaligned: UploadPartCopy
        b"literal",  # small: pulls 5 MiB - 7 of the next range into an uploaded part
        CopyRange(p + "a", 0, 11 * MiB),
        CopyRange(p + "b", 17, 2 * MiB + 17),
        b"PAR1",
    ]
    expected = a[1 * MiB + 3 : 7 * MiB + 3] + b"literal" + a[: 11 * MiB] + b[17 : 2 * MiB + 17] + b"PAR1"
    before = dict(s.stats.requests)
    assert s.compose(p + "final", segments) is PutOutcome.CREATED
    assert s.get(p + "final") == expected
    info = s.head(p + "final")
    assert info is not None and info.size == len(expected)
    assert info.etag.endswith("-4")  # a multipart object's ETag is never the body's MD5
    used = {k: v - before.get(k, 0) for k, v in s.stats.requests.items() if v != before.get(k, 0)}
    # part 1 copied; part 2 = "literal" + 5 MiB - 7 downloaded; part 3 = the rest of the range
    # copied; part 4 = the small tail range downloaded + "PAR1" — the same requests on both.
    assert used == {
        "create_multipart_upload": 1,
        "upload_part_copy": 2,
        "get_object": 3,
        "upload_part": 2,
        "complete_multipart_upload": 1,
        "head_object": 1,
    }
    assert s.stats.bytes_copied_server_side == 6 * MiB + 11 * MiB - (5 * MiB - 7)


def test_compose_in_equal_parts_is_byte_exact_and_copies_parts_inside_one_source(
    backend: Backend,
) -> None:
    """Cloudflare R2's rule (every part but the last of one size), modelled by the double: the
    plain plan is refused there, the equal-part plan completes on both."""
    s, p = backend.store, backend.prefix
    a, b = os.urandom(20 * MiB), os.urandom(7 * MiB)
    s.put_if_absent(p + "a", a)
    s.put_if_absent(p + "b", b)
    segments: list[Segment] = [
        b"PAR1", CopyRange(p + "a", 4, 20 * MiB), CopyRange(p + "b", 4, 7 * MiB), b"f" * 999
    ]
    expected = b"PAR1" + a[4:] + b[4:] + b"f" * 999
    if isinstance(s, MemoryStore):
        s.equal_parts_required = True
        with pytest.raises(FatalStorageError, match="InvalidPart"):
            s.compose(p + "refused", segments)  # S3's plan: a 16 MiB copy, then the rest
    s.equal_parts = True
    before = dict(s.stats.requests)
    assert s.compose(p + "final", segments) is PutOutcome.CREATED
    assert s.get(p + "final") == expected
    used = {k: v - before.get(k, 0) for k, v in s.stats.requests.items() if v != before.get(k, 0)}
    # 8 MiB parts: [0, 8) and [16, 24) span a boundary (downloaded, uploaded), [8, 16) lies in
    # "a" (copied), the rest of "b" and the footer make the last part
    assert used["upload_part_copy"] == 1 and used["upload_part"] == 3
    assert s.stats.bytes_copied_server_side >= 8 * MiB


def test_multipart_etag_of_uploaded_parts(backend: Backend) -> None:
    raw, key = backend.raw, backend.prefix + "m"
    parts = [b"a" * (5 * MiB), b"tail"]
    upload_id = raw.create_multipart_upload(key)
    for n, body in enumerate(parts, start=1):
        assert raw.upload_part(key, upload_id, n, body) == md5_etag(body)
    assert raw.complete_multipart_upload(key, upload_id) == multipart_etag(parts)
    info = backend.store.head(key)
    assert info is not None and info.etag == multipart_etag(parts)


def test_compose_of_one_part_is_one_conditional_put(backend: Backend) -> None:
    s, p = backend.store, backend.prefix
    s.put_if_absent(p + "piece", b"PAR1body1footer")
    assert s.compose(p + "f", [CopyRange(p + "piece", 0, 9), b"+trailer"]) is PutOutcome.CREATED
    assert s.get(p + "f") == b"PAR1body1+trailer"
    info = s.head(p + "f")
    assert info is not None and info.etag == md5_etag(b"PAR1body1+trailer")
    assert s.compose(p + "f", [b"other"]) is PutOutcome.EXISTS_OTHER
    assert s.compose(p + "f", [b"PAR1body1+trailer"]) is PutOutcome.EXISTS_SAME


def test_compose_onto_an_existing_key_keeps_it_and_leaves_no_upload(backend: Backend) -> None:
    s, p = backend.store, backend.prefix
    s.put_if_absent(p + "src", os.urandom(6 * MiB))
    s.put_if_absent(p + "final", b"earlier owner")
    assert s.compose(p + "final", [CopyRange(p + "src", 0, 6 * MiB), b"tail"]) is PutOutcome.EXISTS_OTHER
    assert s.get(p + "final") == b"earlier owner"
    assert backend.raw.list_multipart_uploads(p) == []
    assert s.abort_uploads(p + "final") == 0


@pytest.mark.parametrize("size", [6 * MiB, 10])
def test_compose_from_a_missing_source_raises_file_not_found(backend: Backend, size: int) -> None:
    s, p = backend.store, backend.prefix
    with pytest.raises(FileNotFoundError):
        s.compose(p + "final", [CopyRange(p + "gone", 0, size), b"tail"])
    assert s.head(p + "final") is None
    assert backend.raw.list_multipart_uploads(p) == []  # aborted


def test_compose_past_the_source_end_is_invalid_range(backend: Backend) -> None:
    s, p = backend.store, backend.prefix
    s.put_if_absent(p + "src", os.urandom(6 * MiB))
    with pytest.raises(OSError) as exc:
        s.compose(p + "final", [CopyRange(p + "src", 0, 7 * MiB), b"tail"])
    assert exc.value.errno == errno.EINVAL
    assert s.head(p + "final") is None


# ----------------------------------------------------------------------------------------------
# request level: S3's multipart rules
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("first_part_size", [1024, MIN_S3_PART - 1])
def test_non_last_part_under_5mib_is_entity_too_small(backend: Backend, first_part_size: int) -> None:
    raw, key = backend.raw, backend.prefix + "small-parts"
    upload_id = raw.create_multipart_upload(key)
    raw.upload_part(key, upload_id, 1, b"a" * first_part_size)
    raw.upload_part(key, upload_id, 2, b"b" * 1024)
    with pytest.raises(EntityTooSmall) as exc:
        raw.complete_multipart_upload(key, upload_id)
    assert isinstance(exc.value, FatalStorageError)  # what S3Store raises for EntityTooSmall
    assert backend.store.head(key) is None
    assert [u.upload_id for u in raw.list_multipart_uploads(key)] == [upload_id]  # abortable
    assert backend.store.abort_uploads(key) == 1
    assert raw.list_multipart_uploads(key) == []


def test_exactly_5mib_non_last_part_is_accepted(backend: Backend) -> None:
    raw, key = backend.raw, backend.prefix + "five"
    upload_id = raw.create_multipart_upload(key)
    raw.upload_part(key, upload_id, 1, b"a" * MIN_S3_PART)
    raw.upload_part(key, upload_id, 2, b"b" * 10)
    raw.complete_multipart_upload(key, upload_id)
    assert backend.store.get(key) == b"a" * MIN_S3_PART + b"b" * 10


def test_upload_part_copy_copies_exactly_the_range(backend: Backend) -> None:
    raw, s, p = backend.raw, backend.store, backend.prefix
    a, b = os.urandom(12 * MiB), os.urandom(3 * MiB)
    s.put_if_absent(p + "a", a)
    s.put_if_absent(p + "b", b)
    ranges = [
        CopyRange(p + "a", MiB + 3, 7 * MiB + 3),
        CopyRange(p + "a", 0, 5 * MiB),
        CopyRange(p + "b", 17, 2 * MiB + 17),
    ]
    upload_id = raw.create_multipart_upload(p + "dst")
    for n, r in enumerate(ranges, start=1):
        raw.upload_part_copy(p + "dst", upload_id, n, r)
    raw.complete_multipart_upload(p + "dst", upload_id)
    data = {p + "a": a, p + "b": b}
    assert s.get(p + "dst") == b"".join(data[r.key][r.start : r.end] for r in ranges)


def test_conditional_complete_refuses_an_existing_key(backend: Backend) -> None:
    raw, key = backend.raw, backend.prefix + "exists"
    raw.put_object(key, b"old")
    upload_id = raw.create_multipart_upload(key)
    raw.upload_part(key, upload_id, 1, b"new")
    with pytest.raises(PreconditionFailed):
        raw.complete_multipart_upload(key, upload_id, if_none_match=True)
    assert backend.store.get(key) == b"old"
    raw.abort_multipart_upload(key, upload_id)


def test_incomplete_upload_is_invisible_until_aborted(backend: Backend) -> None:
    raw, s, key = backend.raw, backend.store, backend.prefix + "incomplete"
    upload_id = raw.create_multipart_upload(key)
    raw.upload_part(key, upload_id, 1, b"x" * MIN_S3_PART)
    raw.upload_part(key, upload_id, 2, b"y" * 100)
    assert s.head(key) is None
    with pytest.raises(FileNotFoundError):
        s.get(key)
    assert s.list(backend.prefix) == []
    assert s.abort_uploads(backend.prefix + "incomp") == 0  # exactly the key, not a prefix of it
    assert s.abort_uploads(key) == 1
    assert s.abort_uploads(key) == 0


# ----------------------------------------------------------------------------------------------
# MemoryStore switches
# ----------------------------------------------------------------------------------------------
def test_fail_next_raises_then_recovers() -> None:
    s = MemoryStore()
    s.fail_next("put_if_absent", TransientStorageError("S3 kept failing"), times=2)
    for _ in range(2):
        with pytest.raises(TransientStorageError):
            s.put_if_absent("k", b"v")
    assert "k" not in s.objects
    assert s.put_if_absent("k", b"v") is PutOutcome.CREATED
    s.fail_next("head", FatalStorageError)
    with pytest.raises(FatalStorageError):
        s.head("k")
    with pytest.raises(ValueError, match="unknown operation"):
        s.fail_next("put", TransientStorageError)


def test_a_deep_copy_holds_the_same_state_and_goes_on_apart() -> None:
    """What a test that starts many runs from one state rests on: the copy has every object,
    ETag, user metadata, unfinished upload and switch of the original, with counters of its own
    from zero, and a write to either is not seen in the other. The write order goes on from where
    it was in both, so Last-Modified still orders what each writes after what both hold."""
    s = MemoryStore()
    s.ignore_if_match = True
    assert s.put_if_absent("a", b"first", {"kafka.group_id": "g"}) is PutOutcome.CREATED
    upload_id = s.create_multipart_upload("big")
    s.upload_part("big", upload_id, 1, b"x" * MIN_S3_PART)
    s.on_op = lambda op, key: None
    twin = copy.deepcopy(s)
    assert twin.objects == s.objects and twin.etag("a") == s.etag("a")
    info = twin.head("a")
    assert info is not None and dict(info.metadata) == {"kafka.group_id": "g"}
    assert twin.ignore_if_match and twin.on_op is None
    assert twin.stats.requests == {"head_object": 1}
    assert twin.put_if_absent("a", b"first") is PutOutcome.EXISTS_SAME  # the same bytes, as before
    twin.upload_part("big", upload_id, 2, b"y")
    twin.complete_multipart_upload("big", upload_id)
    assert twin.get("big") == b"x" * MIN_S3_PART + b"y" and "big" not in s.objects
    assert list(s.uploads) == [upload_id] and s.uploads[upload_id] is not twin.uploads.get(upload_id)
    s.put_object("b", b"original's")
    twin.put_object("c", b"twin's")
    assert "c" not in s.objects and "b" not in twin.objects
    first = s.last_modified["a"]
    assert twin.last_modified["a"] == first and min(s.last_modified["b"], twin.last_modified["c"]) > first


def test_fail_next_after_models_a_lost_reply() -> None:
    s = MemoryStore()
    s.fail_next("put_object", TransientStorageError, after=True)
    with pytest.raises(TransientStorageError):
        s.put_if_absent("k", b"v")
    assert s.objects["k"] == b"v"  # it landed
    assert s.put_if_absent("k", b"v") is PutOutcome.EXISTS_SAME  # the caller's retry


def test_a_request_failing_mid_compose_aborts_the_upload() -> None:
    s = MemoryStore()
    s.objects["src"] = os.urandom(12 * MiB)
    s.fail_next("upload_part_copy", TransientStorageError)
    with pytest.raises(TransientStorageError):
        s.compose("final", [CopyRange("src", 0, 6 * MiB), CopyRange("src", 6 * MiB, 12 * MiB)])
    assert "final" not in s.objects and s.uploads == {}
    assert s.stats.requests["abort_multipart_upload"] == 1


def test_a_crash_mid_compose_leaves_an_invisible_upload() -> None:
    s = MemoryStore(on_op=crash_at("upload_part_copy", nth=2))
    s.objects["src"] = os.urandom(12 * MiB)
    with pytest.raises(Crash):
        s.compose("final", [CopyRange("src", 0, 6 * MiB), CopyRange("src", 6 * MiB, 12 * MiB)])
    assert "final" not in s.objects and s.head("final") is None
    assert [u.key for u in s.uploads.values()] == ["final"]
    s.on_op = None
    assert s.abort_uploads("final") == 1 and s.uploads == {}


def test_on_op_sees_methods_and_requests() -> None:
    seen: list[tuple[str, str]] = []
    s = MemoryStore(on_op=lambda op, key: seen.append((op, key)))
    s.put_if_absent("k", b"v")
    s.put_if_absent("k", b"v")
    assert seen == [
        ("put_if_absent", "k"),
        ("put_object", "k"),
        ("put_if_absent", "k"),
        ("put_object", "k"),
        ("head", "k"),
        ("head_object", "k"),
    ]


def test_lax_server_overwrites() -> None:
    s = MemoryStore()
    s.ignore_conditional_writes = True
    assert s.put_if_absent("k", b"one") is PutOutcome.CREATED
    assert s.put_if_absent("k", b"two") is PutOutcome.CREATED
    assert s.objects["k"] == b"two"
    assert s.replace_if_match("k", b"three", "not-the-etag") is not None
    s.objects["src"] = b"s" * (6 * MiB)
    assert s.compose("k", [CopyRange("src", 0, 6 * MiB), b"!"]) is PutOutcome.CREATED
    assert s.objects["k"] == b"s" * (6 * MiB) + b"!"


def test_planted_objects_get_single_put_etags_and_list_pages_like_s3() -> None:
    s = MemoryStore()
    for i in range(2500):
        s.objects[f"p/{i:05d}"] = b"x"
    s.objects["p/00000"] = b"changed"  # planting replaces: the ETag follows the bytes
    listed = s.list("p/")
    assert len(listed) == 2500 and listed[0].etag == md5_etag(b"changed")
    assert s.stats.requests["list_objects_v2"] == 3
    s.delete([o.key for o in listed])
    assert s.objects == {} and s.stats.requests["delete_objects"] == 3


def test_store_and_positions_satisfy_the_protocols() -> None:
    store: ObjectStore = MemoryStore()
    positions: PositionStore = MemoryPositions()
    assert store.list("") == [] and positions.committed("t", 0) is None


# ----------------------------------------------------------------------------------------------
# MemoryPositions
# ----------------------------------------------------------------------------------------------
def test_positions_commit_history_and_reset() -> None:
    pos = MemoryPositions()
    assert pos.committed("t", 0) is None
    pos.commit("t", 0, 10)
    pos.commit("t", 0, 20)
    pos.commit("t", 1, 5)
    assert (pos.committed("t", 0), pos.committed("t", 1)) == (20, 5)
    pos.reset("t", 0, 3)  # kafka-consumer-groups --reset-offsets --to-offset 3
    assert pos.committed("t", 0) == 3
    pos.reset("t", 1, None)
    assert pos.committed("t", 1) is None
    assert pos.history == [("t", 0, 10), ("t", 0, 20), ("t", 1, 5)]


def test_positions_fence() -> None:
    pos = MemoryPositions()
    pos.commit("t", 0, 10)
    pos.fence("t", 0)
    with pytest.raises(PartitionFenced):
        pos.commit("t", 0, 20)
    pos.commit("t", 1, 1)  # only that partition
    assert pos.committed("t", 0) == 10  # reading still works
    pos.unfence("t", 0)
    pos.commit("t", 0, 20)
    assert pos.history == [("t", 0, 10), ("t", 1, 1), ("t", 0, 20)]


def test_positions_fail_next() -> None:
    pos = MemoryPositions()
    pos.fail_next("commit")
    with pytest.raises(PositionError):
        pos.commit("t", 0, 10)
    assert pos.committed("t", 0) is None and pos.history == []
    pos.fail_next("commit", PositionError("coordinator gone"), after=True)
    with pytest.raises(PositionError):
        pos.commit("t", 0, 10)
    assert pos.committed("t", 0) == 10  # the commit landed, the reply did not
    pos.fail_next("committed", times=2)
    for _ in range(2):
        with pytest.raises(PositionError):
            pos.committed("t", 0)
    assert pos.committed("t", 0) == 10


# ----------------------------------------------------------------------------------------------
# Message
# ----------------------------------------------------------------------------------------------
def test_message_mirrors_confluent_kafka() -> None:
    m = Message(
        7, b"body", topic="orders", partition=3, key=b"k", timestamp=1_700_000_000_123, headers=[("h", b"v")]
    )
    assert (m.offset(), m.value(), m.key(), m.topic(), m.partition()) == (7, b"body", b"k", "orders", 3)
    assert m.timestamp() == (1, 1_700_000_000_123)
    assert m.headers() == [("h", b"v")] and m.error() is None
    assert m.len() == len(m) == 4
    assert Message(0, None).timestamp() == (0, -1) and Message(0, None).len() == 0
    assert Message(0, b"", timestamp=5, timestamp_type=2).timestamp() == (2, 5)
    with pytest.raises(FrozenInstanceError):
        m._offset = 8  # type: ignore[misc]
    ms = messages([b"a", b"b"], start=10, partition=2)
    assert [(x.offset(), x.partition(), x.timestamp()[0]) for x in ms] == [(10, 2, 1), (11, 2, 1)]


# ----------------------------------------------------------------------------------------------
# the doubles fit the worker: recover → append → flush → roll, read back with pyarrow
# ----------------------------------------------------------------------------------------------
def _worker(store: MemoryStore, positions: MemoryPositions, **cfg: Any) -> Any:
    from consumer import log as logmod
    from consumer.config import Config
    from consumer.decoding import Decoder
    from consumer.layout import Layout
    from consumer.samples import load_schema
    from consumer.worker import PartitionWorker, SharedState

    config = Config(
        bootstrap_servers="unused",
        group_id="g",
        topics=("t",),
        output="s3://bucket/out",
        schema="page_view",
        **cfg,
    )
    return PartitionWorker(
        "t",
        0,
        config=config,
        store=store,
        positions=positions,
        layout=Layout("out"),
        decoder=Decoder("raw", schema=load_schema("page_view")),
        shared=SharedState(),
        log=logmod.get("test"),
    )


def test_worker_smoke_with_the_doubles() -> None:
    from consumer.samples import encode_raw, make_record, parsed_schema

    schema = parsed_schema("page_view")
    msgs = messages([encode_raw(schema, make_record("page_view", i)) for i in range(25)])
    store, positions = MemoryStore(), MemoryPositions()

    worker = _worker(store, positions, row_group_rows=10)
    assert worker.recover() is None
    for m in msgs[:15]:
        worker.append(m)
    assert positions.history == [("t", 0, 10)]  # the first row group is durable and committed
    from consumer.layout import Layout

    staged = [k for k in store.objects if "_staging/" in k]
    assert staged == [Layout("out").piece_key("t", 0, 0, 0, 10)]

    # A restart: the next worker resumes the same file from the committed position.
    worker = _worker(store, positions, row_group_rows=10)
    assert worker.recover() == 10
    for m in msgs[10:]:
        worker.append(m)
    worker.finish()
    assert positions.history == [("t", 0, 10), ("t", 0, 20), ("t", 0, 25), ("t", 0, 25)]

    finals = [k for k in store.objects if "/_" not in k]
    assert finals == [Layout("out").final_key("t", 0, 0)]
    assert not [k for k in store.objects if "_staging/" in k]
    table = pq.read_table(pa.BufferReader(store.objects[finals[0]]))
    assert table.num_rows == 25
    assert table.column("kafka_offset").to_pylist() == list(range(25))
    meta = pq.read_metadata(pa.BufferReader(store.objects[finals[0]]))
    assert meta.num_row_groups == 3
    kv = {k.decode(): v.decode() for k, v in (meta.metadata or {}).items()}
    assert (kv["kafka.from_position"], kv["kafka.to_position"]) == ("0", "25")


# ----------------------------------------------------------------------------------------------
# MemoryBroker / MemoryConsumer: the group runner without Kafka
# ----------------------------------------------------------------------------------------------
def _broker_with_records(partitions: int, per_partition: int) -> MemoryBroker:
    return page_view_broker(partitions, per_partition)


def _runner(broker: MemoryBroker, store: MemoryStore, **cfg: Any) -> Any:
    return memory_runner(broker, store, **cfg)


def _final_offsets(store: MemoryStore) -> dict[int, list[int]]:
    from consumer.layout import Layout

    out: dict[int, list[int]] = {}
    for p in range(4):
        key = Layout("out").final_key("t", p, 0)
        if key in store.objects:
            table = pq.read_table(pa.BufferReader(store.objects[key]))
            out[p] = table.column("kafka_offset").to_pylist()
    return out


def test_group_runner_on_the_memory_broker_until_caught_up() -> None:
    broker, store = _broker_with_records(2, 25), MemoryStore()
    assert _runner(broker, store, row_group_rows=10, until_caught_up=True).run() == 0
    assert _final_offsets(store) == {0: list(range(25)), 1: list(range(25))}
    assert [broker.committed_offset("g", "t", p) for p in (0, 1)] == [25, 25]
    assert not [k for k in store.objects if "_staging/" in k]


def test_group_runner_stopped_and_restarted_continues_the_same_file() -> None:
    broker, store = _broker_with_records(2, 25), MemoryStore()
    first = _runner(broker, store, row_group_rows=10, batch_size=12)
    at_consume(first.consumer, {3: first.request_stop})
    assert first.run() == 0
    # 3 batches of 12, round robin over 2 partitions: 18 each, made durable on shutdown
    assert [broker.committed_offset("g", "t", p) for p in (0, 1)] == [18, 18]
    assert _final_offsets(store) == {}
    assert _runner(broker, store, row_group_rows=10, until_caught_up=True).run() == 0
    assert _final_offsets(store) == {0: list(range(25)), 1: list(range(25))}


def test_memory_consumer_rebalance_revokes_before_the_partition_moves_and_fences_zombies() -> None:
    from confluent_kafka import TopicPartition

    from consumer.positions import KafkaGroupPositions

    broker = _broker_with_records(2, 3)
    events: list[tuple[str, str, list[int]]] = []

    def member(name: str) -> MemoryConsumer:
        c = MemoryConsumer(broker, {"group.id": "g", "auto.offset.reset": "earliest"})

        def cb(kind: str) -> Any:
            return lambda _c, tps: events.append((name, kind, [tp.partition for tp in tps]))

        c.subscribe(["t"], on_assign=cb("assign"), on_revoke=cb("revoke"), on_lost=cb("lost"))
        return c

    a = member("a")
    assert len(a.consume(10)) == 6 and events == [("a", "assign", [0, 1])]
    pos_a = KafkaGroupPositions(a, max_elapsed=0)
    pos_a.commit("t", 0, 3)
    b = member("b")  # joins: a new generation
    with pytest.raises(PartitionFenced):
        pos_a.commit("t", 1, 3)  # a has not seen the rebalance yet (REBALANCE_IN_PROGRESS-like)
    assert b.consume(10) == [] and b.assignment() == []  # a still owns both
    a.consume(10)
    pos_a.commit("t", 0, 3)  # a's generation is current again
    b_msgs = b.consume(10)
    assert events[1:] == [
        ("b", "assign", []),  # b's first rebalance completes with nothing: a holds both
        ("a", "revoke", [1]),  # cooperative: a gives p1 up first (its revoke commits still work) …
        ("a", "assign", []),
        ("b", "assign", [1]),  # … and only then does b get it
    ]
    assert [m.offset() for m in b_msgs] == [0, 1, 2]  # p1 never committed: earliest
    assert [(tp.topic, tp.partition) for tp in b.assignment()] == [("t", 1)]

    broker.expire(a)  # max.poll.interval exceeded: a is a zombie until its next consume
    with pytest.raises(PartitionFenced):
        pos_a.commit("t", 0, 3)
    broker.produce("t", b"new", partition=0)
    assert [(m.partition(), m.offset()) for m in b.consume(10)] == [(0, 3)]  # from a's commit
    assert sorted(tp.partition for tp in b.assignment()) == [0, 1]
    assert b.position([TopicPartition("t", 0)])[0].offset == 4
    assert a.consume(10) == []
    assert events[-2:] == [("a", "lost", [0]), ("a", "assign", [])]  # rejoined; b holds both
    b.close()
    assert events[-1] == ("b", "revoke", [0, 1])
    got = [(m.partition(), m.offset()) for m in a.consume(10)]
    assert events[-1] == ("a", "assign", [0, 1])
    assert got == [(0, 3), (1, 0), (1, 1), (1, 2)]  # p0 from its commit, p1 (never committed) from 0


def test_memory_consumer_offsets_watermarks_and_retention() -> None:
    from confluent_kafka import TopicPartition

    broker = _broker_with_records(1, 5)
    broker.truncate("t", 0, 2)
    c = MemoryConsumer(broker, {"group.id": "g", "auto.offset.reset": "earliest"})
    c.subscribe(["t"])
    assert [m.offset() for m in c.consume(10)] == [2, 3, 4]
    tp = TopicPartition("t", 0)
    assert c.get_watermark_offsets(tp, timeout=1.0, cached=False) == (2, 5)
    assert c.committed([tp])[0].offset == -1001
    c.commit(offsets=[TopicPartition("t", 0, 4)], asynchronous=False)
    assert c.committed([tp])[0].offset == 4 and broker.committed_offset("g", "t", 0) == 4
    c.seek(TopicPartition("t", 0, 3))
    assert c.position([tp])[0].offset == 3
    c.pause([tp])
    assert c.consume(10) == []
    c.resume([tp])
    assert [m.offset() for m in c.consume(10)] == [3, 4]
    (found,) = c.offsets_for_times([TopicPartition("t", 0, 1_700_000_000_003)])
    assert found.offset == 3
    assert sorted(c.list_topics().topics["t"].partitions) == [0]
    broker.reset_offsets("g", "t", 0, 0)
    assert c.committed([tp])[0].offset == 0


def test_memory_consumer_skips_markers_and_aborted_records_as_read_committed_does() -> None:
    """As measured on Kafka 4.1 with librdkafka 2.16 (read_committed, enable.partition.eof): 10
    committed records (0-9), their marker (10), an aborted transaction of 10 (11-20) and its
    marker (21). Read from 0 or from anywhere in 9-21, the consumer delivers the records left,
    then the end of the partition at 22, and its position is 22."""
    from confluent_kafka import KafkaError, TopicPartition

    broker = _broker_with_records(1, 10)
    assert broker.end_transaction("t", 0) == 11
    assert broker.end_transaction("t", 0, aborted=[b"x"] * 10) == 22
    c = MemoryConsumer(broker, {"group.id": "g", "enable.partition.eof": True})
    tp = TopicPartition("t", 0)
    for start, delivered in [(0, list(range(10))), (9, [9]), (10, []), (15, []), (21, [])]:
        c.assign([TopicPartition("t", 0, start)])
        got = c.consume(100)
        assert [m.offset() for m in got if m.error() is None] == delivered
        assert [(m.error().code(), m.offset()) for m in got if m.error() is not None] == [
            (KafkaError._PARTITION_EOF, 22)
        ]
        assert c.consume(100) == []  # the end is said once
        assert c.position([tp])[0].offset == 22
        c.unassign()
    (found,) = c.offsets_for_times([TopicPartition("t", 0, 1_700_000_000_010)])
    assert found.offset == -1  # markers and aborted records have no timestamp a reader finds


def test_group_runner_expelled_mid_flush_is_fenced_rejoins_and_loses_nothing() -> None:
    """Expelled between a piece PUT and its commit: the commit is refused (UNKNOWN_MEMBER_ID →
    PartitionFenced), the partition is paused, lost, reassigned, recovered (the uncommitted piece
    deleted), resumed — librdkafka keeps an application pause across reassignment, and so does
    MemoryConsumer — and consumed again from its committed position."""
    from consumer.layout import Layout

    broker, store = _broker_with_records(2, 25), MemoryStore()
    runner = _runner(broker, store, row_group_rows=10, batch_size=7, until_caught_up=True)
    doomed = Layout("out").piece_key("t", 0, 0, 10, 20)
    fired = []

    def expel_at_second_piece(op: str, key: str) -> None:
        if op == "put_object" and key == doomed and not fired:
            fired.append(key)
            broker.expire(runner.consumer)

    store.on_op = expel_at_second_piece
    consumes = 0

    def give_up(consumer: MemoryConsumer) -> None:
        nonlocal consumes
        consumes += 1
        if consumes > 200:  # the partition never comes back: stop instead of spinning forever
            runner.request_stop()

    runner.consumer.on_consume = give_up
    assert runner.run() == 0
    assert consumes <= 200, f"gave up: {sorted(runner.consumer._paused)} still paused"
    assert fired == [doomed]
    assert _final_offsets(store) == {0: list(range(25)), 1: list(range(25))}
    assert [broker.committed_offset("g", "t", p) for p in (0, 1)] == [25, 25]
    # no staging or dead-letter leftovers; each partition names its newest final file
    assert sorted(k for k in store.objects if "/_" in k) == [
        f"out/_newest_final/topic=t/partition={p}/{0:020d}" for p in (0, 1)
    ]


def test_replay_runner_on_the_memory_broker_replays_a_slice() -> None:
    from consumer.config import Config
    from consumer.decoding import Decoder
    from consumer.layout import Layout
    from consumer.replay import Bound, ReplayRunner
    from consumer.samples import load_schema

    broker, store = _broker_with_records(2, 25), MemoryStore()
    runner = ReplayRunner(
        Config(
            bootstrap_servers="memory",
            group_id="consumer-replay",
            topics=("t",),
            output="s3://bucket/out",
            schema="page_view",
            row_group_rows=10,
        ),
        store=store,
        decoder=Decoder("raw", schema=load_schema("page_view")),
        start=Bound.parse("0=5,1=5"),
        stop=Bound.parse("ts:1700000000020"),  # the offset of the first record at/after it: 20
        consumer_factory=broker.consumer_factory(),
    )
    assert runner.run() == 0
    for p in (0, 1):
        key = Layout("out").final_key("t", p, 5)
        assert pq.read_table(pa.BufferReader(store.objects[key])).column("kafka_offset").to_pylist() == list(
            range(5, 20)
        )
        assert store.objects[Layout("out").state_key("t", p)]  # positions kept beside the output
    assert broker.groups.get("consumer-replay") is None  # the live group is untouched


# ----------------------------------------------------------------------------------------------
# the S3 client's requests, on the wire (a real HTTP exchange with a minimal S3-shaped server)
# ----------------------------------------------------------------------------------------------
_LIST_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
    "<Name>bucket</Name><Prefix>p/</Prefix><KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys>"
    "<IsTruncated>false</IsTruncated><Contents><Key>p/a</Key>"
    "<LastModified>2026-12-01T09:45:56.000Z</LastModified>"
    '<ETag>"abc"</ETag><Size>3</Size></Contents></ListBucketResult>'
)
_DELETED_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"/>'
)
_UNSUPPORTED = "Unsupported header 'x-amz-sdk-checksum-algorithm' received for this API call."
_ERROR_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    "<Error><Code>{code}</Code><Message>{message}</Message></Error>"
)


@dataclass
class Sent:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@pytest.fixture
def wire_store(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, list[Sent]]]:
    """An :class:`S3Store` talking HTTP to a minimal S3-shaped server on 127.0.0.1, and what the
    server received. Like S3 before 2025 and servers such as older MinIO and Ceph RGW, it refuses
    a multi-object delete without a correct ``Content-MD5``; like Backblaze B2, a PUT with
    botocore's flexible-checksum headers."""
    pytest.importorskip("s3fs")
    import base64
    import http.server
    import threading

    from consumer.storage import S3Store

    sent: list[Sent] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # answers botocore's Expect: 100-continue

        def _reply(self, status: int, body: bytes, *, head: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(3 if head else len(body)))
            self.send_header("ETag", '"abc"')
            self.send_header("Last-Modified", "Tue, 01 Dec 2026 09:45:56 GMT")
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _received(self) -> Sent:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            got = Sent(self.command, self.path, dict(self.headers), body)
            sent.append(got)
            return got

        def do_HEAD(self) -> None:
            self._received()
            self._reply(200, b"", head=True)

        def do_GET(self) -> None:
            self._received()
            self._reply(200, _LIST_XML.encode())

        def do_PUT(self) -> None:
            got = self._received()
            if "x-amz-sdk-checksum-algorithm" in {h.lower() for h in got.headers}:  # as Backblaze B2
                self._reply(400, _ERROR_XML.format(code="InvalidArgument", message=_UNSUPPORTED).encode())
            else:
                self._reply(200, b"")

        def do_POST(self) -> None:
            got = self._received()
            md5 = base64.b64encode(hashlib.md5(got.body).digest()).decode()
            if "Content-MD5" not in got.headers:
                error = ("MissingContentMD5", "Missing required header for this request: Content-Md5.")
                self._reply(400, _ERROR_XML.format(code=error[0], message=error[1]).encode())
            elif got.headers["Content-MD5"] != md5:
                self._reply(400, _ERROR_XML.format(code="BadDigest", message="md5").encode())
            else:
                self._reply(200, _DELETED_XML.encode())

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    try:
        yield S3Store("bucket", endpoint_url=f"http://127.0.0.1:{server.server_address[1]}"), sent
    finally:
        server.shutdown()
        server.server_close()


def test_the_s3_client_names_this_consumer_and_leaves_response_timestamps_unparsed(
    wire_store: tuple[Any, list[Sent]],
) -> None:
    """Two per-request costs of botocore are switched off (``consumer.storage._client_session``,
    ``_user_agent``): rebuilding its User-Agent at every request, and parsing every timestamp
    of a response with dateutil (60 % of a LIST page's client CPU). What is sent and what the
    store returns are otherwise unchanged."""
    from consumer import __version__
    from consumer.storage import ObjectInfo

    store, sent = wire_store
    assert store.head("p/a") == ObjectInfo("p/a", 3, "abc")
    assert store.list("p/") == [ObjectInfo("p/a", 3, "abc")]
    reply = store._call("head_object", Key="p/a")
    assert reply["LastModified"] == "Tue, 01 Dec 2026 09:45:56 GMT"  # as sent, not parsed
    agents = {r.headers.get("User-Agent", "") for r in sent}
    assert len(sent) == 3 and len(agents) == 1
    assert agents.pop().startswith(f"kafka-parquet-consumer/{__version__} s3fs/")


def test_a_multi_object_delete_carries_content_md5(wire_store: tuple[Any, list[Sent]]) -> None:
    """botocore 1.36+ sends DeleteObjects with a CRC32 checksum only; servers that want the
    Content-MD5 the S3 API asked for refuse it, and every roll's clean-up would fail there."""
    store, sent = wire_store
    store.delete(["p/a", "p/b"])
    (delete,) = sent
    assert delete.method == "POST" and b"<Key>p/a</Key>" in delete.body
    assert "Content-MD5" in delete.headers  # and correct: the server checks it


def test_a_server_refusing_checksum_headers_is_named_and_the_operators_setting_serves_it(
    wire_store: tuple[Any, list[Sent]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PUT refused for botocore's flexible-checksum headers is a refusal the runner reports with
    exit 4 and the server's words (``refusal``); our own botocore session still reads botocore's
    environment, so AWS_REQUEST_CHECKSUM_CALCULATION=when_required serves such a server (README,
    Troubleshooting)."""
    from consumer.storage import PutOutcome, S3Store, refusal

    store, sent = wire_store
    with pytest.raises(OSError) as refused:
        store.create("p/default", b"x")
    assert refusal(refused.value) == f"InvalidArgument: {_UNSUPPORTED}"
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
    endpoint = f"http://127.0.0.1:{sent[0].headers['Host'].rsplit(':', 1)[1]}"
    served = S3Store("bucket", endpoint_url=endpoint)
    assert served.create("p/when-required", b"x").outcome is PutOutcome.CREATED
    checksummed = [any(h.lower().startswith("x-amz-checksum-") for h in r.headers) for r in sent]
    assert [r.path for r in sent] == ["/bucket/p/default", "/bucket/p/when-required"]
    assert checksummed == [True, False]


def test_memory_consumer_ignores_offsets_written_into_the_assign_list_as_confluent_kafka_does() -> None:
    """tests/stack/test_kafka_roundtrip.py shows it on the real client: an offset written into the
    assign callback's list is ignored (fetching starts at the committed offset, else by
    auto.offset.reset); one passed to incremental_assign() from the callback is where it starts."""
    from confluent_kafka import TopicPartition

    def first_offset(assign: bool) -> int:
        broker = _broker_with_records(1, 10)

        def on_assign(c: Any, tps: list[TopicPartition]) -> None:
            for tp in tps:
                tp.offset = 5
            if assign:
                c.incremental_assign(tps)

        c = MemoryConsumer(broker, {"group.id": "g", "auto.offset.reset": "earliest"})
        c.subscribe(["t"], on_assign=on_assign)
        return int(c.consume(1)[0].offset())

    assert first_offset(assign=False) == 0
    assert first_offset(assign=True) == 5


@pytest.mark.parametrize("rule", ["rule 'keep-30d' after 30 days", None])
def test_a_run_warns_once_when_a_lifecycle_rule_expires_staged_pieces(rule: str | None) -> None:
    """A rule expiring the current objects of the staging folder (one on the whole prefix, meant
    to keep N days of output): said once at start, naming the rule and the fix. The run is the
    same."""
    from structlog.testing import capture_logs

    broker, store = _broker_with_records(1, 25), MemoryStore()
    store.current_expiry = rule
    with capture_logs() as logs:
        assert _runner(broker, store, row_group_rows=10, until_caught_up=True).run() == 0
    said = [e for e in logs if "expires current objects of the staging folder" in str(e.get("event"))]
    assert len(said) == (rule is not None)
    if said:
        assert said[0]["log_level"] == "warning" and said[0]["rule"] == rule
        assert said[0]["staging"] == "out/_staging/" and "<prefix>/topic=" in said[0]["hint"]
    assert _final_offsets(store) == {0: list(range(25))}


@pytest.mark.parametrize(("kept", "warned"), [(True, 1), (False, 0), (None, 0)])
def test_a_run_warns_once_when_the_bucket_keeps_what_rolls_delete(kept: bool | None, warned: int) -> None:
    """Versioning on and no rule expiring noncurrent versions: said once at start, with the fix;
    off, covered by a rule, or not known (the bucket would not say): nothing. The run is the same."""
    from structlog.testing import capture_logs

    broker, store = _broker_with_records(2, 25), MemoryStore()
    store.versioned_without_expiry = kept
    with capture_logs() as logs:
        assert _runner(broker, store, row_group_rows=10, until_caught_up=True).run() == 0
    said = [e for e in logs if "keeps every version" in str(e.get("event"))]
    assert len(said) == warned
    if said:
        assert said[0]["log_level"] == "warning" and said[0]["staging"] == "out/_staging/"
        assert "lifecycle rule" in said[0]["hint"]
    assert _final_offsets(store) == {0: list(range(25)), 1: list(range(25))}
