"""An operator's day with the output on MinIO instead of SeaweedFS: the same commands, the same
output. ``check`` probes the bucket, ``run`` consumes with rolls of several pieces, ``verify`` and
``show`` read the prefix back, and ``replay`` re-exports the topic to a prefix of its own. The
kills of the crash matrix on MinIO are in tests/faults/test_crash_matrix.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from support import (
    FAST_EVICTION,
    REPO,
    assert_exactly_once,
    assert_values_as_produced,
    consumer_cmd,
    download_finals,
    read_table,
    run_consumer,
    staging_keys,
    unique,
)

from consumer.producer import produce

if TYPE_CHECKING:
    from support import S3Server

# Only its own topics, groups and prefixes, and a MinIO of its worker: see tests/conftest.py.
pytestmark = pytest.mark.shares_stack


def _cli_as(
    server: S3Server, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consumer", *args], capture_output=True, text=True, timeout=180, cwd=REPO,
        env={**os.environ, "S3_ENDPOINT_URL": server.endpoint, **(env or {})},
    )


def readme_policy(bucket: str, prefix: str) -> dict[str, Any]:
    """The IAM policy README's *Permissions* shows, for ``bucket`` and ``prefix``: the test and
    the README cannot drift apart."""
    text = (REPO / "README.md").read_text()
    block = text.split("**Permissions.**", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    policy: dict[str, Any] = json.loads(block.replace("BUCKET", bucket).replace("PREFIX", prefix.rstrip("/")))
    return policy


def credentials_under(server: S3Server, policy: dict[str, Any]) -> dict[str, str]:
    """Temporary credentials that may do only what ``policy`` allows: MinIO's STS AssumeRole with a
    session policy, which MinIO enforces on every request as AWS enforces an IAM policy."""
    import boto3

    sts = boto3.client("sts", endpoint_url=server.endpoint, aws_access_key_id=server.key_id,
                       aws_secret_access_key=server.secret, region_name="us-east-1")
    said = sts.assume_role(RoleArn="arn:minio:iam:::role/consumer-test", RoleSessionName="consumer-test",
                           Policy=json.dumps(policy), DurationSeconds=3600)["Credentials"]
    return {"AWS_ACCESS_KEY_ID": said["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": said["SecretAccessKey"],
            "AWS_SESSION_TOKEN": said["SessionToken"]}


@pytest.mark.parametrize("credentials", ["root", "readme-policy"])
def test_check_run_verify_show_and_replay_on_minio(
    stack: Any, minio: S3Server, unique_prefix: str, tmp_path: Path, credentials: str
) -> None:
    """The whole day, with the server's root user and with credentials that may do no more than the
    README's policy allows (so the policy is enough, and stays so)."""
    topic, group = unique("minio"), unique("g")
    res = produce(stack.kafka_bootstrap, topic, "page_view", 6_000, partitions=2, seed=3)
    out = f"s3://{minio.bucket}/{unique_prefix}live"
    budgets = ("--row-group-rows", "500", "--file-rows", "2000")
    env = (credentials_under(minio, readme_policy(minio.bucket, unique_prefix))
           if credentials == "readme-policy" else {})

    def _cli(server: S3Server, *args: str) -> subprocess.CompletedProcess[str]:
        return _cli_as(server, *args, env=env)

    check = _cli(minio, "check", "--group-id", group, "--topic", topic, "--schema", "page_view",
                 "--output", out, "--write")
    assert check.returncode == 0, check.stdout + check.stderr[-3000:]
    assert "writable, with conditional writes (PUT and multipart)" in check.stdout

    run = run_consumer(topic, group, out, *budgets, env={"S3_ENDPOINT_URL": minio.endpoint, **env})
    assert run.returncode == 0, run.stderr[-4000:]
    s3 = minio.client()
    assert staging_keys(s3, minio.bucket, unique_prefix + "live") == []
    paths = download_finals(s3, minio.bucket, unique_prefix + "live/", tmp_path / "live")
    assert len(paths) == 4  # 3,000 rows a partition: files of 2,000 and 1,000
    table = read_table(paths)
    assert_exactly_once(table, res.partition_counts)
    assert_values_as_produced(table, "page_view", partitions=2, seed=3)

    verify = _cli(minio, "verify", "--output", out, "--topic", topic, "--group-id", group, "--json")
    assert verify.returncode == 0, verify.stdout + verify.stderr[-3000:]
    report = json.loads(verify.stdout)
    assert report["ok"] is True, report
    assert [(p["partition"], p["present"], p["missing"]) for p in report["partitions"]] == [
        (0, 3_000, []),
        (1, 3_000, []),
    ]
    show = _cli(minio, "show", "--output", out)
    assert show.returncode == 0, show.stderr[-3000:]
    assert show.stdout.count(".parquet") == 4

    again = f"s3://{minio.bucket}/{unique_prefix}replayed"
    replay = _cli(minio, "replay", "--topic", topic, "--schema", "page_view", "--output", again,
                  *budgets, "--log-format", "json")
    assert replay.returncode == 0, replay.stderr[-4000:]
    replayed = download_finals(s3, minio.bucket, unique_prefix + "replayed/", tmp_path / "replayed")
    assert [p.relative_to(tmp_path / "replayed") for p in replayed] == [
        p.relative_to(tmp_path / "live") for p in paths
    ]
    assert read_table(replayed).sort_by("kafka_offset").equals(table.sort_by("kafka_offset"))


def test_without_delete_permission_run_stops_at_start_and_names_the_permission(
    stack: Any, minio: S3Server, unique_prefix: str
) -> None:
    """Credentials that may write but not delete (a common bucket policy): a roll could publish a
    file and never remove its pieces, and recovery could not clear a crash's leftovers. The start-up
    probe meets it: `check --write` fails (exit 1) and `run` exits 4, both naming s3:DeleteObject
    and the README's list, before any record is read or offset committed."""
    topic, group = unique("minio"), unique("g")
    produce(stack.kafka_bootstrap, topic, "page_view", 500, partitions=1, seed=3)
    policy = readme_policy(minio.bucket, unique_prefix)
    for statement in policy["Statement"]:
        statement["Action"] = [a for a in statement["Action"] if a != "s3:DeleteObject"]
    env = {"S3_ENDPOINT_URL": minio.endpoint, **credentials_under(minio, policy)}
    check = _cli_as(minio, "check", "--group-id", group, "--topic", topic, "--schema", "page_view",
                    "--output", f"s3://{minio.bucket}/{unique_prefix}live", "--write", env=env)
    assert check.returncode == 1, check.stdout + check.stderr[-3000:]
    assert "the credentials need s3:DeleteObject" in check.stderr, check.stdout + check.stderr[-3000:]
    run = run_consumer(topic, group, f"s3://{minio.bucket}/{unique_prefix}live", env=env)
    assert run.returncode == 4, run.stderr[-3000:]
    assert "S3 delete_objects on s3://" in run.stderr and "AccessDenied" in run.stderr, run.stderr[-3000:]
    assert "the credentials need s3:DeleteObject on the bucket and prefix (README, Permissions)" in run.stderr
    assert "partitions assigned" not in run.stderr
    s3 = minio.client()
    listed = s3.list_objects_v2(Bucket=minio.bucket, Prefix=unique_prefix).get("Contents", [])
    left = [o["Key"] for o in listed]
    assert all("/_probe/" in k for k in left), left  # only the probes it could not remove


def test_verify_that_s3_does_not_let_read_says_it_could_not_verify_instead_of_blaming_the_files(
    stack: Any, minio: S3Server, unique_prefix: str
) -> None:
    """`verify` exits 1 when the output breaks an invariant and 2 when it could not tell. With
    credentials that may list but not read (a common read-only policy missing s3:GetObject), or
    with none at all, every file used to be reported "not a readable Parquet file" with exit 1:
    a monitoring job would page someone about a corrupt output that is fine. Now the S3 refusal
    is said as such (exit 2, naming the permission or the missing credentials), and `show` exits
    4, the S3 status of the other commands, with the same words instead of a traceback."""
    topic, group = unique("minio-ro"), unique("g")
    produce(stack.kafka_bootstrap, topic, "page_view", 1_000, partitions=1, seed=3)
    out = f"s3://{minio.bucket}/{unique_prefix}live"
    run = run_consumer(topic, group, out, "--row-group-rows", "500",
                       env={"S3_ENDPOINT_URL": minio.endpoint})
    assert run.returncode == 0, run.stderr[-4000:]
    policy = readme_policy(minio.bucket, unique_prefix)
    for statement in policy["Statement"]:
        statement["Action"] = [a for a in statement["Action"] if a != "s3:GetObject"]
    list_only = credentials_under(minio, policy)
    no_credentials = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_CONFIG_FILE": "/nonexistent",
                      "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_EC2_METADATA_DISABLED": "true"}
    no_such_profile = {**no_credentials, "AWS_PROFILE": "no-such-profile"}
    unread = "could not read the output, so nothing was verified: S3"
    for env, said, why in ((list_only, f"{unread} get_object", "the credentials need s3:GetObject"),
                           (no_credentials, f"{unread} list_objects_v2", "no S3 credentials were found"),
                           (no_such_profile, "S3 client: ProfileNotFound", "profile (no-such-profile)")):
        verify = _cli_as(minio, "verify", "--output", out, "--topic", topic, env=env)
        assert verify.returncode == 2, verify.stdout + verify.stderr[-3000:]
        assert verify.stderr.startswith(f"consumer: verify: {said}"), verify.stderr[-3000:]
        assert why in verify.stderr and "Traceback" not in verify.stderr, verify.stderr[-3000:]
        assert "not a readable Parquet file" not in verify.stdout
    show = _cli_as(minio, "show", "--output", out, env=no_credentials)
    assert show.returncode == 4, show.stdout + show.stderr[-3000:]
    assert show.stderr.startswith("consumer: show: S3 list_objects_v2 on s3://"), show.stderr[-3000:]
    assert "no S3 credentials were found" in show.stderr and "Traceback" not in show.stderr


@pytest.mark.parametrize("sse", [("AES256",), ("aws:kms", "consumer-test-key")], ids=["sse-s3", "sse-kms"])
def test_every_object_a_run_writes_is_encrypted_as_asked_across_a_kill(
    stack: Any, unique_prefix: str, tmp_path: Path, sse: tuple[str, ...]
) -> None:
    """A bucket policy that refuses unencrypted writes (common in enterprises) needs the
    encryption header on every write: `--s3-sse` sends it with each PutObject and
    CreateMultipartUpload, as Kafka Connect's `s3.ssea.name` does. On a MinIO with a KMS key, every
    object a run leaves (final files, state and markers), through a kill and a resume, is encrypted
    as asked, `check --write` writes its probe so, and the rows are every offset once. Under SSE-KMS
    an ETag is not the MD5 of the bytes: the resume's checks of what the killed run wrote (a piece
    PUT again finds its own) run on a real server that says so."""
    from support import minio_server

    from consumer.faults import FAULT_EXIT_CODE

    flags = ["--s3-sse", sse[0], *(["--s3-sse-kms-key-id", sse[1]] if len(sse) > 1 else [])]
    topic, group = unique("sse"), unique("g")
    res = produce(stack.kafka_bootstrap, topic, "page_view", 4_000, partitions=2, seed=5)
    with minio_server(tmp_path / "minio", stack.aws_access_key_id, stack.aws_secret_access_key,
                      "sse-bucket", kms_key="consumer-test-key") as server:
        out = f"s3://{server.bucket}/{unique_prefix}live"
        check = _cli_as(server, "check", "--group-id", group, "--topic", topic, "--schema", "page_view",
                        "--output", out, "--write", *flags)
        assert check.returncode == 0, check.stdout + check.stderr[-3000:]
        env = {"S3_ENDPOINT_URL": server.endpoint}
        budgets = ("--row-group-rows", "500", "--file-rows", "1500", *FAST_EVICTION, *flags)
        killed = subprocess.run(
            consumer_cmd(topic, group, out, "--until-caught-up", *budgets), capture_output=True,
            text=True, timeout=180, cwd=REPO,
            env={**os.environ, **env, "CONSUMER_FAULT": "after_piece_put:3"},
        )
        assert killed.returncode == FAULT_EXIT_CODE, killed.stderr[-3000:]
        run = run_consumer(topic, group, out, *budgets, env=env)
        assert run.returncode == 0, run.stderr[-4000:]
        s3 = server.client()
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=server.bucket)
                for o in page.get("Contents", [])]
        assert any(k.endswith(".parquet") for k in keys) and any("/_state/" in k or "/_newest_final/" in k
                                                                  for k in keys), keys
        for key in keys:
            head = s3.head_object(Bucket=server.bucket, Key=key)
            assert head.get("ServerSideEncryption") == sse[0], (key, head)
            if len(sse) > 1:
                assert sse[1] in head.get("SSEKMSKeyId", ""), (key, head)
        assert staging_keys(s3, server.bucket, unique_prefix + "live") == []
        table = read_table(download_finals(s3, server.bucket, unique_prefix + "live/", tmp_path / "out"))
        assert_exactly_once(table, res.partition_counts)
