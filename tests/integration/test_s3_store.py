"""The consumer's own S3 client (:class:`consumer.storage.S3Store`) against two real servers, the
stack's SeaweedFS and a MinIO (``dev/minio``): every call the protocol makes, with the answers it
depends on. The in-memory double (``consumer.testing``) is checked against the same rules in the
unit tests; this is where the rules meet servers that implement them on their own.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import uuid
from typing import TYPE_CHECKING, Any
from unittest import mock
from urllib.parse import urlsplit

import botocore.auth
import pytest
from s3proxy import S3Proxy
from support import REPO, run_consumer

from consumer.check import check_s3
from consumer.config import Config
from consumer.errors import StorageContractError
from consumer.producer import produce
from consumer.storage import (
    CopyRange,
    FatalStorageError,
    PutOutcome,
    S3Store,
    Segment,
    probe_conditional_writes,
)

if TYPE_CHECKING:
    from support import S3Server

# Only its own prefixes, and a MinIO of its worker: see tests/conftest.py.
pytestmark = pytest.mark.shares_stack

MiB = 1024 * 1024


def _port(s3_server: S3Server) -> int:
    port = urlsplit(s3_server.endpoint).port
    assert port is not None
    return port


def _store(s3_server: S3Server, **kw: Any) -> S3Store:
    return S3Store(s3_server.bucket, endpoint_url=s3_server.endpoint, **kw)


def test_conditional_creates_and_replaces(s3_server: S3Server, unique_prefix: str) -> None:
    store = _store(s3_server)
    probe_conditional_writes(store, unique_prefix + "probe")  # raises on a server that ignores them
    assert store.head(unique_prefix + "probe") is None  # the probe leaves nothing behind:
    assert store.abort_uploads(unique_prefix + "probe") == 0  # its refused upload was aborted
    probe_conditional_writes(store, unique_prefix + "probe", if_match=True)  # a replay's
    assert store.head(unique_prefix + "probe") is None
    key = unique_prefix + "piece"
    created = store.create(key, b"piece-1")
    assert created.outcome is PutOutcome.CREATED and created.etag
    # a retry after a lost reply finds its own bytes; anyone else's bytes are someone else's
    assert store.put_if_absent(key, b"piece-1") is PutOutcome.EXISTS_SAME
    assert store.put_if_absent(key, b"piece-2") is PutOutcome.EXISTS_OTHER
    assert store.get(key) == b"piece-1"
    replaced = store.replace_if_match(key, b"piece-3", created.etag)
    assert replaced and replaced == store.head(key).etag  # the reply's ETag: the object's now
    assert store.replace_if_match(key, b"piece-4", created.etag) is None  # changed since
    assert store.replace_if_match(unique_prefix + "gone", b"x", created.etag) is None  # absent
    assert store.get(key) == b"piece-3"
    assert store.head(unique_prefix + "gone") is None


def test_user_metadata_of_a_create_comes_back_from_a_head(s3_server: S3Server, unique_prefix: str) -> None:
    """The rolled marker names its writer in user metadata (``x-amz-meta-<name>``): the names the
    worker gives it, with a dot and an underscore, come back in lower case from a HEAD, whatever
    case the server answers in; a listing carries none."""
    store = _store(s3_server)
    key = unique_prefix + "marker"
    meta = {"kafka.group_id": "b%C3%A9%2F%C3%BC%25", "consumer.replay": "true"}
    assert store.put_if_absent(key, b"", meta) is PutOutcome.CREATED
    info = store.head(key)
    assert info is not None and dict(info.metadata) == meta
    assert store.put_if_absent(key, b"", meta) is PutOutcome.EXISTS_SAME  # a retry's
    assert [o.metadata for o in store.list(unique_prefix)] == [{}]
    store.create(unique_prefix + "plain", b"x")
    assert store.head(unique_prefix + "plain").metadata == {}


@pytest.mark.parametrize("equal_parts", [False, True], ids=["s3-parts", "equal-parts"])
def test_compose_copies_big_ranges_and_uploads_small_ones(
    s3_server: S3Server, unique_prefix: str, equal_parts: bool
) -> None:
    """A roll's compose: pieces of ≥ 5 MiB copied server-side, smaller ones and the footer passed
    through the client; with ``equal_parts`` (R2's rule) every part but the last is 8 MiB. Both
    plans must complete on a server that enforces the 5 MiB minimum, and give the same bytes."""
    store = _store(s3_server, equal_parts=equal_parts)
    big, small = os.urandom(11 * MiB), os.urandom(MiB + 17)
    store.create(unique_prefix + "big", big)
    store.create(unique_prefix + "small", small)
    segments: list[Segment] = [
        CopyRange(unique_prefix + "small", 0, len(small)),
        CopyRange(unique_prefix + "big", 3, len(big)),
        CopyRange(unique_prefix + "small", 5, len(small)),
        b"footer",
    ]
    final = unique_prefix + "final"
    assert store.compose(final, segments) is PutOutcome.CREATED
    assert store.get(final) == small + big[3:] + small[5:] + b"footer"
    if not equal_parts:
        # the big range never passed through the client
        assert store.stats.bytes_copied_server_side >= 5 * MiB
    # composing over an existing object is refused and leaves no upload behind
    assert store.compose(final, [b"other", *segments[1:]]) is PutOutcome.EXISTS_OTHER
    assert store.get(final) == small + big[3:] + small[5:] + b"footer"
    assert store.abort_uploads(final) == 0


def test_an_upload_left_by_a_crash_is_invisible_and_aborted(s3_server: S3Server, unique_prefix: str) -> None:
    """What recovery meets after a kill mid-roll: an unfinished multipart upload to the final key."""
    key = unique_prefix + "final"
    s3 = s3_server.client()
    upload = s3.create_multipart_upload(Bucket=s3_server.bucket, Key=key)["UploadId"]
    s3.upload_part(Bucket=s3_server.bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"x" * (5 * MiB))
    store = _store(s3_server)
    assert store.head(key) is None
    assert [o.key for o in store.list(unique_prefix)] == []
    assert store.abort_uploads(key) == 1
    assert store.abort_uploads(key) == 0
    assert store.compose(key, [b"whole"]) is PutOutcome.CREATED


def test_keeps_deleted_versions_reads_versioning_and_lifecycle(
    s3_server: S3Server, unique_prefix: str
) -> None:
    """What the warning at start rests on: off, on without a rule, on with a rule for the folder."""
    staging = unique_prefix + "_staging/"
    assert _store(s3_server).keeps_deleted_versions(staging) is False
    s3, bucket = s3_server.client(), f"{s3_server.bucket}-lifecycle"
    if bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    versioned = S3Store(bucket, endpoint_url=s3_server.endpoint)
    assert versioned.keeps_deleted_versions(staging) is True
    rule = {"ID": "staging", "Status": "Enabled", "Filter": {"Prefix": staging},
            "NoncurrentVersionExpiration": {"NoncurrentDays": 1}}
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [rule]})
    try:
        assert versioned.keeps_deleted_versions(staging) is False
        assert versioned.keeps_deleted_versions("elsewhere/_staging/") is True
    finally:
        s3.delete_bucket_lifecycle(Bucket=bucket)


def test_expires_current_reads_the_lifecycle_rules_the_server_keeps(
    s3_server: S3Server, unique_prefix: str
) -> None:
    """What the warning about expiring staged pieces rests on: no rule; a rule keeping 30 days of
    the whole prefix (names it); one on the final files only (the README's, nothing said)."""
    staging = unique_prefix + "_staging/"
    s3, bucket = s3_server.client(), f"{s3_server.bucket}-expiry"
    if bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=bucket)
    store = S3Store(bucket, endpoint_url=s3_server.endpoint)
    assert store.expires_current(staging) is None
    for rule_prefix, said in ((unique_prefix, "rule 'keep' after 30 days"), (unique_prefix + "topic=", None)):
        rule = {"ID": "keep", "Status": "Enabled", "Filter": {"Prefix": rule_prefix},
                "Expiration": {"Days": 30}}
        s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [rule]})
        try:
            assert store.expires_current(staging) == said
            # `consumer check` names such a rule on its s3 line, which stays ok.
            config = Config(bootstrap_servers="unused", group_id="g", topics=("t",), schema="page_view",
                            output=f"s3://{bucket}/{unique_prefix.rstrip('/')}",
                            s3_endpoint_url=s3_server.endpoint)
            line = check_s3(config, 10.0)
            assert line.startswith(f"bucket {bucket!r} reachable")
            warned = "warning: lifecycle rule 'keep' after 30 days expires staged pieces" in line
            assert warned == bool(said)
        finally:
            s3.delete_bucket_lifecycle(Bucket=bucket)


def test_check_with_write_probes_conditional_writes_and_leaves_nothing_behind(
    s3_server: S3Server, unique_prefix: str
) -> None:
    """`consumer check --write` runs what `run` probes at start, before a deployment first starts."""
    config = Config(bootstrap_servers="unused", group_id="g", topics=("t",), schema="page_view",
                    output=f"s3://{s3_server.bucket}/{unique_prefix.rstrip('/')}",
                    s3_endpoint_url=s3_server.endpoint)
    line = check_s3(config, 10.0, write=True)
    assert "reachable" in line and "writable, with conditional writes (PUT and multipart)" in line
    listed = s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix=unique_prefix)
    assert listed.get("KeyCount", 0) == 0
    uploads = s3_server.client().list_multipart_uploads(Bucket=s3_server.bucket, Prefix=unique_prefix)
    assert not uploads.get("Uploads")


@pytest.mark.parametrize(
    ("what", "said"),
    [
        ("all", r"does not honour conditional writes \(a second PUT with If-None-Match: \* .* was CREATED"),
        ("completes", r"honours conditional writes on PutObject but not on CompleteMultipartUpload"),
        ("if-match", r"does not honour If-Match on PutObject"),
    ],
)
def test_the_probe_refuses_a_real_server_that_ignores_conditional_writes(
    s3_server: S3Server, unique_prefix: str, what: str, said: str
) -> None:
    """The server answers writes as one that ignores the conditions (a proxy drops them and signs
    the requests again): everywhere, only on multipart completions, or only If-Match (what a replay
    needs). The start-up probe names which, and leaves nothing behind."""
    with S3Proxy(_port(s3_server)) as proxy:
        proxy.ignore_conditions(what, s3_server.key_id, s3_server.secret)
        store = S3Store(s3_server.bucket, endpoint_url=proxy.url)
        with pytest.raises(StorageContractError, match=said):
            probe_conditional_writes(store, unique_prefix + "probe", if_match=True)
        assert proxy.ignored >= 1
        assert store.head(unique_prefix + "probe") is None
    uploads = s3_server.client().list_multipart_uploads(Bucket=s3_server.bucket, Prefix=unique_prefix)
    assert not uploads.get("Uploads")


def test_run_and_check_refuse_a_real_server_that_ignores_conditional_writes(
    stack: Any, s3_server: S3Server, unique_prefix: str
) -> None:
    """`consumer check --write` and `consumer run` on a server that ignores If-None-Match: status
    1 and 4, saying so, before any record is read or offset committed; nothing left in S3."""
    topic, group = f"lax-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    produce(stack.kafka_bootstrap, topic, "page_view", 100, partitions=1)
    with S3Proxy(_port(s3_server)) as proxy:
        proxy.ignore_conditions("all", s3_server.key_id, s3_server.secret)
        out = f"s3://{s3_server.bucket}/{unique_prefix}live"
        env = {**os.environ, "S3_ENDPOINT_URL": proxy.url}
        check = subprocess.run(
            [sys.executable, "-m", "consumer", "check", "--group-id", group, "--topic", topic,
             "--schema", "page_view", "--output", out, "--write"],
            capture_output=True, text=True, timeout=120, cwd=REPO, env=env,
        )
        assert check.returncode == 1, check.stdout + check.stderr[-3000:]
        assert "does not honour conditional writes" in check.stdout + check.stderr
        run = run_consumer(topic, group, out, env={"S3_ENDPOINT_URL": proxy.url}, timeout=120)
        assert run.returncode == 4, run.stderr[-3000:]
        assert "does not honour conditional writes" in run.stderr and "partitions assigned" not in run.stderr
    listed = s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix=unique_prefix)
    assert listed.get("KeyCount", 0) == 0


def test_a_clock_hours_off_stops_at_once_and_says_to_set_the_clock(
    s3_server: S3Server, unique_prefix: str
) -> None:
    """Requests signed two hours off the server's clock: both servers answer 403
    RequestTimeTooSkewed. Retrying gets the same answer and the credentials are not at fault, so
    the store stops after one request and names the clock (it used to say "check credentials")."""
    store = _store(s3_server)
    signed_at = botocore.auth.get_current_datetime

    def two_hours_behind(*args: Any, **kwargs: Any) -> datetime.datetime:
        return signed_at(*args, **kwargs) - datetime.timedelta(hours=2)

    with (
        mock.patch.object(botocore.auth, "get_current_datetime", two_hours_behind),
        pytest.raises(FatalStorageError, match="RequestTimeTooSkewed") as stopped,
    ):
        store.create(unique_prefix + "skewed", b"x")
    assert "clock is more than 15 minutes off" in str(stopped.value)
    assert store.stats.requests["put_object"] == 1  # no retry
    assert store.head(unique_prefix + "skewed") is None  # nothing written
