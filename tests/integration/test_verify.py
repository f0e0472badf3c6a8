"""The verifier against the real stack: real records, the real consumer, then real corruption.

One topic is produced and consumed once per module (the expensive part); each test copies that
output to its own prefix server-side and corrupts the copy, so tests stay independent and fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import kafka_conf

from consumer.cli import make_store
from consumer.layout import Layout
from consumer.producer import produce
from consumer.verify import VerifyReport, verify

# Only its own topics, groups and prefixes, and waits for outcomes: see tests/conftest.py.
pytestmark = pytest.mark.shares_stack

REPO = Path(__file__).resolve().parents[2]
N = 10_000  # 5000 per partition → files of 2000, 2000, 1000 rows per partition


@dataclass(frozen=True)
class Output:
    topic: str
    group: str
    prefix: str  # the pristine output; tests copy it
    bucket: str
    bootstrap: str
    endpoint: str


@pytest.fixture(scope="module")
def consumed(stack: Any, s3: Any) -> Iterator[Output]:
    topic = f"verify-{uuid.uuid4().hex[:10]}"
    group = f"g-{topic}"
    prefix = f"tests/verify-{uuid.uuid4().hex[:8]}"
    produce(stack.kafka_bootstrap, topic, "page_view", N, partitions=2)
    subprocess.run(
        [sys.executable, "-m", "consumer", "run", "--group-id", group, "--topic", topic, "--schema",
         "page_view", "--output", f"s3://{stack.s3_bucket}/{prefix}", "--row-group-rows", "500",
         "--file-rows", "2000", "--until-caught-up", "--log-format", "json"],
        env={**os.environ, **stack.as_env()}, check=True, timeout=120, capture_output=True, cwd=REPO,
    )
    yield Output(topic, group, prefix, stack.s3_bucket, stack.kafka_bootstrap, stack.s3_endpoint)
    from confluent_kafka.admin import AdminClient

    with contextlib.suppress(Exception):
        admin = AdminClient(kafka_conf({"bootstrap.servers": stack.kafka_bootstrap}))
        for fut in admin.delete_topics([topic]).values():
            fut.result(timeout=30)


def _keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    out: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        out.extend(o["Key"] for o in page.get("Contents", []))
    return out


@pytest.fixture
def copy(consumed: Output, s3: Any) -> str:
    """A private copy of the consumed output; returns its prefix."""
    dst = f"tests/verify-copy-{uuid.uuid4().hex[:8]}"
    for key in _keys(s3, consumed.bucket, consumed.prefix):
        s3.copy_object(Bucket=consumed.bucket, Key=dst + key[len(consumed.prefix):],
                       CopySource={"Bucket": consumed.bucket, "Key": key})
    return dst


def _finals(s3: Any, out: Output, prefix: str, partition: int) -> list[str]:
    return sorted(k for k in _keys(s3, out.bucket, prefix)
                  if k.endswith(".parquet") and f"/partition={partition}/" in k)


def _verify(out: Output, prefix: str, **kw: Any) -> VerifyReport:
    store = make_store(out.bucket, out.endpoint)
    kw.setdefault("bootstrap_servers", out.bootstrap)
    return verify(store, prefix, out.topic, **kw)


def _cli(out: Output, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consumer", "verify", "--output", f"s3://{out.bucket}/{prefix}",
         "--topic", out.topic, *args],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": out.bootstrap, "S3_ENDPOINT_URL": out.endpoint},
    )


def test_clean_output_verifies_in_every_mode(consumed: Output) -> None:
    for kw in ({"group_id": consumed.group}, {}, {"contiguous": True}, {"group_id": consumed.group,
                                                                        "contiguous": True}):
        r = _verify(consumed, consumed.prefix, **kw)
        assert r.ok, (kw, r.to_text())
        assert [p.partition for p in r.partitions] == [0, 1]
        for p in r.partitions:
            half = N // 2
            assert (p.committed, p.expected, p.present, p.rows, p.files) == (half, half, half, half, 3)
            assert p.missing == [] and p.duplicate_count == 0 and p.beyond_committed == 0
        assert r.bad_files == [] and r.staging_objects == [] and r.dead_letters == 0
    # Without a broker only the files are checked: still no duplicates or bad files.
    r = _verify(consumed, consumed.prefix, bootstrap_servers=None)
    assert r.ok, r.to_text()
    assert sum(p.present for p in r.partitions) == N


def test_given_positions_below_the_end_report_rows_ahead_without_failing(consumed: Output) -> None:
    r = _verify(consumed, consumed.prefix, committed={0: 1000, 1: 4999})
    assert r.ok, r.to_text()
    by = {p.partition: p for p in r.partitions}
    assert (by[0].expected, by[0].beyond_committed) == (1000, 4000)
    assert (by[1].expected, by[1].beyond_committed) == (4999, 1)


def test_deleted_final_file_is_reported_as_a_missing_range(consumed: Output, s3: Any, copy: str) -> None:
    victim = _finals(s3, consumed, copy, 1)[1]  # the second file: offsets [2000, 4000)
    assert Layout.parse_final_name(victim) == (consumed.topic, 1, 2000)
    s3.delete_object(Bucket=consumed.bucket, Key=victim)
    for kw in ({"group_id": consumed.group}, {"contiguous": True}):
        r = _verify(consumed, copy, **kw)
        assert not r.ok
        p1 = r.partitions[1]
        assert p1.missing == [(2000, 4000)] and p1.missing_count == 2000 and p1.present == 3000, kw
        assert r.partitions[0].ok and r.bad_files == []
        assert "MISSING=2000 in 1 range(s): [2000, 4000)" in r.to_text()


def test_dead_letters_count_as_present(consumed: Output, s3: Any, copy: str) -> None:
    victim = _finals(s3, consumed, copy, 0)[2]  # offsets [4000, 5000)
    s3.delete_object(Bucket=consumed.bucket, Key=victim)
    lines = "".join(json.dumps({"topic": consumed.topic, "partition": 0, "offset": o, "reason": "t"}) + "\n"
                    for o in range(4000, 5000))
    key = Layout(copy).dead_letter_key(consumed.topic, 0, 4000, 5000)
    s3.put_object(Bucket=consumed.bucket, Key=key, Body=lines.encode())
    r = _verify(consumed, copy, group_id=consumed.group)
    assert r.ok, r.to_text()
    assert r.dead_letters == 1000 and r.partitions[0].dead_letters == 1000 and r.partitions[0].present == 4000


def test_copied_final_file_is_reported_as_duplicates_and_bad_file(
        consumed: Output, s3: Any, copy: str) -> None:
    src = _finals(s3, consumed, copy, 0)[0]  # offsets [0, 2000)
    dst = Layout(copy).final_key(consumed.topic, 0, 7)
    s3.copy_object(Bucket=consumed.bucket, Key=dst, CopySource={"Bucket": consumed.bucket, "Key": src})
    r = _verify(consumed, copy, group_id=consumed.group)
    assert not r.ok
    p0 = r.partitions[0]
    assert p0.duplicate_count == 2000 and p0.duplicated == list(range(100)) and p0.missing == []
    assert p0.present == 5000 and p0.rows == 7000 and p0.files == 4
    reasons = dict(r.bad_files)
    assert "kafka.from_position is 0" in reasons[dst]
    assert "overlap" in reasons[dst]
    assert "DUPLICATED=2000" in r.to_text()


def test_garbage_parquet_is_a_bad_file(consumed: Output, s3: Any, copy: str) -> None:
    key = Layout(copy).final_key(consumed.topic, 1, 99_999)
    s3.put_object(Bucket=consumed.bucket, Key=key, Body=b"this is not parquet" * 100)
    stray = f"{copy}/topic={consumed.topic}/partition=1/oops.parquet"
    s3.put_object(Bucket=consumed.bucket, Key=stray, Body=b"PAR1")
    r = _verify(consumed, copy, group_id=consumed.group)
    assert not r.ok
    reasons = dict(r.bad_files)
    assert set(reasons) == {key, stray}
    assert "not a readable Parquet file" in reasons[key]
    assert "unexpected .parquet object" in reasons[stray]
    assert all(p.missing == [] and p.duplicate_count == 0 for p in r.partitions)


def test_staging_objects_fail_unless_allowed(consumed: Output, s3: Any, copy: str) -> None:
    key = Layout(copy).staging_dir(consumed.topic, 0) + "junk"
    s3.put_object(Bucket=consumed.bucket, Key=key, Body=b"x")
    r = _verify(consumed, copy, group_id=consumed.group)
    assert not r.ok and r.staging_objects == [key]
    assert all(p.ok for p in r.partitions) and r.bad_files == []
    assert _verify(consumed, copy, group_id=consumed.group, allow_staging=True).ok


def test_staged_piece_covers_offsets_not_yet_rolled(consumed: Output, s3: Any, copy: str) -> None:
    """A stopped consumer's committed-but-unrolled rows live in pieces: not loss, but not final."""
    victim = _finals(s3, consumed, copy, 1)[2]  # offsets [4000, 5000): re-stage it as one piece
    body = s3.get_object(Bucket=consumed.bucket, Key=victim)["Body"].read()
    s3.delete_object(Bucket=consumed.bucket, Key=victim)
    piece = Layout(copy).piece_key(consumed.topic, 1, 4000, 4000, 5000)
    s3.put_object(Bucket=consumed.bucket, Key=piece, Body=body)
    r = _verify(consumed, copy, group_id=consumed.group, allow_staging=True)
    assert r.ok, r.to_text()
    assert r.partitions[1].staged == 1000 and r.partitions[1].present == 4000
    assert not _verify(consumed, copy, group_id=consumed.group).ok


def test_cli_exit_status_text_and_json(consumed: Output, s3: Any, copy: str) -> None:
    ok = _cli(consumed, consumed.prefix, "--group-id", consumed.group)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[-1].startswith("OK: 2 partitions, 6 final files, 10000 rows")

    s3.delete_object(Bucket=consumed.bucket, Key=_finals(s3, consumed, copy, 0)[0])
    bad = _cli(consumed, copy, "--committed", "0=5000,1=5000", "--json")
    assert bad.returncode == 1, bad.stderr
    doc = json.loads(bad.stdout)
    assert doc["ok"] is False and doc["partitions"][0]["missing"] == [[0, 2000]]

    assert _cli(consumed, copy, "--committed", "zero=1").returncode == 2
    missing_topic = subprocess.run(
        [sys.executable, "-m", "consumer", "verify", "--output", f"s3://{consumed.bucket}/{copy}",
         "--topic", f"no-such-{uuid.uuid4().hex[:8]}"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": consumed.bootstrap,
             "S3_ENDPOINT_URL": consumed.endpoint},
    )
    assert missing_topic.returncode == 2 and "not found" in missing_topic.stderr
