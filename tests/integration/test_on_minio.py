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
    REPO,
    assert_exactly_once,
    assert_values_as_produced,
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


def _cli(server: S3Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consumer", *args], capture_output=True, text=True, timeout=180, cwd=REPO,
        env={**os.environ, "S3_ENDPOINT_URL": server.endpoint},
    )


def test_check_run_verify_show_and_replay_on_minio(
    stack: Any, minio: S3Server, unique_prefix: str, tmp_path: Path
) -> None:
    topic, group = unique("minio"), unique("g")
    res = produce(stack.kafka_bootstrap, topic, "page_view", 6_000, partitions=2, seed=3)
    out = f"s3://{minio.bucket}/{unique_prefix}live"
    budgets = ("--row-group-rows", "500", "--file-rows", "2000")

    check = _cli(minio, "check", "--group-id", group, "--topic", topic, "--schema", "page_view",
                 "--output", out, "--write")
    assert check.returncode == 0, check.stdout + check.stderr[-3000:]
    assert "writable, with conditional writes (PUT and multipart)" in check.stdout

    run = run_consumer(topic, group, out, *budgets, env={"S3_ENDPOINT_URL": minio.endpoint})
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
