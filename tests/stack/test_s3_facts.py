"""S3 facts our commit protocol relies on, checked against two real servers: the SeaweedFS of
`dev/stack` and a MinIO (`dev/minio`), each test once on each.

Observed on SeaweedFS 4.48 (`weed mini`) and MinIO (commit of 2026-02-12), matching AWS S3 but for
one answer:
- PutObject with If-None-Match: * -> 412 PreconditionFailed on an existing key, 200 on a new key.
- PutObject with If-Match: <etag> -> 412 once the object changed; when it is gone, 404 NoSuchKey
  (MinIO, as AWS S3) or 412 (SeaweedFS): the consumer reads either as "changed".
- CompleteMultipartUpload with If-None-Match: * -> 412 when the key already exists.
- In a versioned bucket a deleted key (a delete marker on top) is created again with If-None-Match: *.
- A non-last part under 5 MiB (even 5 MiB - 1 byte) -> 400 EntityTooSmall at
  CompleteMultipartUpload; exactly 5 MiB is accepted. The failed upload stays listed (abortable).
- UploadPartCopy with CopySourceRange copies exactly the requested bytes (inclusive range).
- A request signed with a wrong secret key -> 403 SignatureDoesNotMatch.
- An incomplete multipart upload is not an object: HEAD 404, GET NoSuchKey, not listed.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from support import S3Server

MiB = 1024 * 1024


@pytest.fixture
def s3(s3_server: S3Server) -> Any:
    """A client of this test's server (in this module, instead of conftest's client of the stack)."""
    return s3_server.client()


def _error(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    resp = exc.value.response
    return str(resp["Error"]["Code"]), int(resp["ResponseMetadata"]["HTTPStatusCode"])


def _complete(s3: Any, bucket: str, key: str, upload_id: str, etags: list[str], **kw: Any) -> Any:
    parts = [{"PartNumber": i + 1, "ETag": e} for i, e in enumerate(etags)]
    return s3.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}, **kw
    )


def _upload_parts(s3: Any, bucket: str, key: str, bodies: list[bytes]) -> tuple[str, list[str]]:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    etags = [
        s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=i + 1, Body=b)["ETag"]
        for i, b in enumerate(bodies)
    ]
    return upload_id, etags


def test_conditional_put_refuses_to_overwrite_existing_key(
    s3: Any, s3_server: S3Server, unique_prefix: str
) -> None:
    key = unique_prefix + "obj"
    s3.put_object(Bucket=s3_server.bucket, Key=key, Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=s3_server.bucket, Key=key, Body=b"second", IfNoneMatch="*")
    assert _error(exc) == ("PreconditionFailed", 412)
    body = s3.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read()
    assert body == b"first"


def test_conditional_put_succeeds_on_new_key(s3: Any, s3_server: S3Server, unique_prefix: str) -> None:
    key = unique_prefix + "new"
    resp = s3.put_object(Bucket=s3_server.bucket, Key=key, Body=b"x", IfNoneMatch="*")
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert s3.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read() == b"x"


def test_put_if_match_refuses_a_changed_or_missing_object(
    s3: Any, s3_server: S3Server, unique_prefix: str
) -> None:
    """What fences a replay rests on: its positions object under `_state/` is replaced only if unchanged."""
    key = unique_prefix + "etag"
    first = s3.put_object(Bucket=s3_server.bucket, Key=key, Body=b"v1")["ETag"]
    s3.put_object(Bucket=s3_server.bucket, Key=key, Body=b"v2", IfMatch=first)
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=s3_server.bucket, Key=key, Body=b"v3", IfMatch=first)
    assert _error(exc) == ("PreconditionFailed", 412)
    assert s3.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read() == b"v2"
    with pytest.raises(ClientError) as gone:
        s3.put_object(Bucket=s3_server.bucket, Key=key + "-gone", Body=b"v1", IfMatch=first)
    # AWS S3 and MinIO answer 404 NoSuchKey, SeaweedFS 412: the consumer takes either as "changed"
    answers = {"minio": ("NoSuchKey", 404), "seaweedfs": ("PreconditionFailed", 412)}
    assert _error(gone) == answers[s3_server.name]
    with pytest.raises(ClientError):
        s3.head_object(Bucket=s3_server.bucket, Key=key + "-gone")


def test_a_deleted_key_is_created_again_in_a_versioned_bucket(
    s3: Any, s3_server: S3Server, unique_prefix: str
) -> None:
    """With versioning on, a delete leaves a delete marker, and a conditional create of that key
    succeeds as for a key never written: recovery deletes uncommitted pieces and writes the same
    keys again."""
    bucket = f"{s3_server.bucket}-versioned"
    if bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    key = unique_prefix + "piece"
    s3.put_object(Bucket=bucket, Key=key, Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key=key, Body=b"second", IfNoneMatch="*")
    assert _error(exc) == ("PreconditionFailed", 412)
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": key}]})
    with pytest.raises(ClientError) as head:
        s3.head_object(Bucket=bucket, Key=key)
    assert _error(head)[1] == 404
    s3.put_object(Bucket=bucket, Key=key, Body=b"again", IfNoneMatch="*")
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"again"
    versions = s3.list_object_versions(Bucket=bucket, Prefix=key)
    assert len(versions.get("Versions", [])) == 2 and len(versions.get("DeleteMarkers", [])) == 1


def test_conditional_complete_multipart_refuses_existing_key(
    s3: Any, s3_server: S3Server, unique_prefix: str
) -> None:
    key = unique_prefix + "exists"
    s3.put_object(Bucket=s3_server.bucket, Key=key, Body=b"old")
    upload_id, etags = _upload_parts(s3, s3_server.bucket, key, [b"new"])
    with pytest.raises(ClientError) as exc:
        _complete(s3, s3_server.bucket, key, upload_id, etags, IfNoneMatch="*")
    assert _error(exc) == ("PreconditionFailed", 412)
    assert s3.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read() == b"old"
    s3.abort_multipart_upload(Bucket=s3_server.bucket, Key=key, UploadId=upload_id)


@pytest.mark.parametrize("first_part_size", [1024, 5 * MiB - 1])
def test_a_non_last_part_under_5mib_is_refused(
    s3: Any, s3_server: S3Server, unique_prefix: str, first_part_size: int
) -> None:
    """S3's 5 MiB minimum for non-last parts, enforced at CompleteMultipartUpload."""
    key = unique_prefix + "small-parts"
    upload_id, etags = _upload_parts(s3, s3_server.bucket, key, [b"a" * first_part_size, b"b" * 1024])
    with pytest.raises(ClientError) as exc:
        _complete(s3, s3_server.bucket, key, upload_id, etags)
    assert _error(exc) == ("EntityTooSmall", 400)
    with pytest.raises(ClientError) as head:
        s3.head_object(Bucket=s3_server.bucket, Key=key)
    assert _error(head)[1] == 404
    # The upload survives the failed completion and can (must) be aborted.
    uploads = s3.list_multipart_uploads(Bucket=s3_server.bucket, Prefix=key).get("Uploads", [])
    assert [u["UploadId"] for u in uploads] == [upload_id]
    s3.abort_multipart_upload(Bucket=s3_server.bucket, Key=key, UploadId=upload_id)


def test_exactly_5mib_non_last_part_is_accepted(s3: Any, s3_server: S3Server, unique_prefix: str) -> None:
    key = unique_prefix + "five"
    body = [b"a" * (5 * MiB), b"b" * 10]
    upload_id, etags = _upload_parts(s3, s3_server.bucket, key, body)
    _complete(s3, s3_server.bucket, key, upload_id, etags)
    assert s3.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read() == b"".join(body)


def test_upload_part_copy_with_range_copies_exact_bytes(
    s3: Any, s3_server: S3Server, unique_prefix: str
) -> None:
    bucket = s3_server.bucket
    src_a, src_b, dst = unique_prefix + "src-a", unique_prefix + "src-b", unique_prefix + "dst"
    a = os.urandom(12 * MiB)
    b = os.urandom(3 * MiB)
    s3.put_object(Bucket=bucket, Key=src_a, Body=a)
    s3.put_object(Bucket=bucket, Key=src_b, Body=b)
    # (source, inclusive first byte, inclusive last byte); every non-last part >= 5 MiB.
    ranges = [
        (src_a, 1 * MiB + 3, 7 * MiB + 2),  # 6 MiB from an unaligned offset
        (src_a, 0, 5 * MiB - 1),  # exactly 5 MiB from the start
        (src_b, 17, 2 * MiB + 16),  # last part: small, from another object
    ]
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=dst)["UploadId"]
    etags = []
    for n, (src, first, last) in enumerate(ranges, start=1):
        resp = s3.upload_part_copy(
            Bucket=bucket,
            Key=dst,
            UploadId=upload_id,
            PartNumber=n,
            CopySource={"Bucket": bucket, "Key": src},
            CopySourceRange=f"bytes={first}-{last}",
        )
        etags.append(resp["CopyPartResult"]["ETag"])
    _complete(s3, bucket, dst, upload_id, etags)

    data = {src_a: a, src_b: b}
    expected = b"".join(data[src][first : last + 1] for src, first, last in ranges)
    got = s3.get_object(Bucket=bucket, Key=dst)["Body"].read()
    assert len(got) == len(expected) == 6 * MiB + 5 * MiB + 2 * MiB
    assert got == expected


def test_wrong_secret_key_is_refused(s3_server: S3Server) -> None:
    bad = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint,
        aws_access_key_id=s3_server.key_id,
        aws_secret_access_key=s3_server.secret + "-wrong",
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    with pytest.raises(ClientError) as exc:
        bad.list_objects_v2(Bucket=s3_server.bucket, MaxKeys=1)
    assert _error(exc) == ("SignatureDoesNotMatch", 403)
    with pytest.raises(ClientError) as exc:
        bad.put_object(Bucket=s3_server.bucket, Key="should-not-exist", Body=b"x")
    assert _error(exc)[1] == 403


def test_unknown_access_key_is_refused(s3_server: S3Server) -> None:
    bad = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint,
        aws_access_key_id="nobody",
        aws_secret_access_key="nothing",
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    with pytest.raises(ClientError) as exc:
        bad.list_objects_v2(Bucket=s3_server.bucket, MaxKeys=1)
    assert _error(exc)[1] == 403


def test_incomplete_multipart_upload_is_not_readable(
    s3: Any, s3_server: S3Server, unique_prefix: str
) -> None:
    key = unique_prefix + "incomplete"
    upload_id, _ = _upload_parts(s3, s3_server.bucket, key, [b"x" * (5 * MiB), b"y" * 100])
    try:
        with pytest.raises(ClientError) as head:
            s3.head_object(Bucket=s3_server.bucket, Key=key)
        assert _error(head)[1] == 404
        with pytest.raises(ClientError) as get:
            s3.get_object(Bucket=s3_server.bucket, Key=key)
        assert _error(get) == ("NoSuchKey", 404)
        listed = s3.list_objects_v2(Bucket=s3_server.bucket, Prefix=unique_prefix)
        assert listed.get("KeyCount", 0) == 0
    finally:
        s3.abort_multipart_upload(Bucket=s3_server.bucket, Key=key, UploadId=upload_id)
