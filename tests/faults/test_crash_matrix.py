"""Crash matrix: kill the consumer (os._exit, as kill -9) at every named point of the protocol,
restart it, let it finish with --until-caught-up, and prove the invariants on every output file:
no missing offset, no duplicated offset, every final file valid, no stray staging objects.

Each case appends a row to the fault table (``FAULT_TABLE`` file, JSON lines) that
docs/guarantees.md is generated from.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from support import (
    REPO,
    assert_exactly_once,
    download_finals,
    list_keys,
    read_table,
    run_consumer,
    staging_keys,
    unique,
)

from consumer.faults import FAULT_EXIT_CODE
from consumer.producer import produce

TABLE = Path(os.environ.get("FAULT_TABLE", REPO / ".cache" / "fault-table.jsonl"))

# (point, occurrence): small budgets so every point is reached several times per run.
CASES = [
    ("before_piece_put", 1),
    ("before_piece_put", 5),
    ("after_piece_put", 1),
    ("after_piece_put", 4),
    ("after_commit", 2),
    ("after_commit", 7),
    ("after_marker_put", 1),
    ("after_marker_put", 2),
    ("after_final_put", 1),
    ("after_final_put", 3),
    ("after_piece_delete", 1),
    ("after_piece_delete", 2),
    ("during_recovery", 1),
    ("during_recovery", 2),
    ("during_shutdown", 1),
]
SMALL = ("--row-group-rows", "300", "--file-rows", "900", "--batch-size", "250")


def static_member() -> tuple[str, ...]:
    """Static group membership: a restarted process replaces its killed predecessor at once
    instead of waiting out the session timeout (as production deployments should, too)."""
    return ("-X", f"group.instance.id={unique('member')}", "-X", "session.timeout.ms=10000")


def record(row: dict[str, Any]) -> None:
    TABLE.parent.mkdir(parents=True, exist_ok=True)
    with TABLE.open("a") as fh:
        fh.write(json.dumps(row) + "\n")


def record_pass(fault: str, kind: str, records: int, final_files: int, **extra: Any) -> None:
    """A scenario whose invariants were just proven (the assertions ran before this)."""
    record(
        {
            "fault": fault,
            "kind": kind,
            "records": records,
            "final_files": final_files,
            "missing": 0,
            "duplicated": 0,
            "stray_staging": 0,
            "result": "pass",
            **extra,
        }
    )


def finish_and_check(
    stack: Any,
    s3: Any,
    topic: str,
    group: str,
    out: str,
    prefix: str,
    tmp: Path,
    counts: dict[int, int],
    extra: tuple[str, ...],
) -> int:
    done = run_consumer(topic, group, out, *extra)
    assert done.returncode == 0, done.stderr[-4000:]
    assert staging_keys(s3, stack.s3_bucket, prefix) == [], "stray staging objects"
    paths = download_finals(s3, stack.s3_bucket, prefix, tmp)
    table = read_table(paths)  # every final file parses
    assert_exactly_once(table, counts)
    return len(paths)


@pytest.mark.parametrize(("point", "nth"), CASES, ids=[f"{p}-{n}" for p, n in CASES])
def test_kill_at_point_then_recover(
    stack: Any, s3: Any, unique_prefix: str, tmp_path: Path, point: str, nth: int
) -> None:
    topic = unique("crash")
    group = unique("g")
    out = f"s3://{stack.s3_bucket}/{unique_prefix.rstrip('/')}"
    res = produce(stack.kafka_bootstrap, topic, "page_view", 4_000, partitions=2)
    args = (*SMALL, *static_member())
    crashed = run_consumer(topic, group, out, *args, env={"CONSUMER_FAULT": f"{point}:{nth}"})
    assert crashed.returncode == FAULT_EXIT_CODE, (
        f"fault {point}:{nth} was not reached (exit {crashed.returncode}):\n{crashed.stderr[-3000:]}"
    )
    files = finish_and_check(
        stack, s3, topic, group, out, unique_prefix, tmp_path, res.partition_counts, args
    )
    record_pass(f"{point}:{nth}", "kill at point", res.count, files)


def test_repeated_kills_at_different_points(stack: Any, s3: Any, unique_prefix: str, tmp_path: Path) -> None:
    """Several crashes in a row, at different points, before the run may finish."""
    topic = unique("crash-seq")
    group = unique("g")
    out = f"s3://{stack.s3_bucket}/{unique_prefix.rstrip('/')}"
    res = produce(stack.kafka_bootstrap, topic, "page_view", 6_000, partitions=3)
    sequence = [
        "after_piece_put:3",
        "after_marker_put:1",
        "during_recovery:2",
        "after_final_put:2",
        "after_commit:5",
        "before_piece_put:2",
    ]
    args = (*SMALL, *static_member())
    for spec in sequence:
        crashed = run_consumer(topic, group, out, *args, env={"CONSUMER_FAULT": spec})
        assert crashed.returncode == FAULT_EXIT_CODE, (spec, crashed.stderr[-3000:])
    files = finish_and_check(
        stack, s3, topic, group, out, unique_prefix, tmp_path, res.partition_counts, args
    )
    record_pass(" → ".join(sequence), "six kills in a row", res.count, files)


def test_kill_mid_merge_of_a_multipart_final_file(
    stack: Any, s3: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """Pieces ≥ 5 MiB are assembled server-side with UploadPartCopy; a crash between parts leaves an
    unfinished multipart upload that is never visible, and recovery aborts it and redoes the roll."""
    topic = unique("crash-merge")
    group = unique("g")
    out = f"s3://{stack.s3_bucket}/{unique_prefix.rstrip('/')}"
    res = produce(stack.kafka_bootstrap, topic, "metrics", 40_000, partitions=1)
    big = (
        "--compression",
        "none",
        "--row-group-bytes",
        "6MiB",
        "--row-group-rows",
        "1000000",
        "--file-bytes",
        "64MiB",
        *static_member(),
    )
    crashed = run_consumer(topic, group, out, *big, schema="metrics", env={"CONSUMER_FAULT": "mid_merge:1"})
    assert crashed.returncode == FAULT_EXIT_CODE, crashed.stderr[-3000:]
    finals = [k for k, _ in list_keys(s3, stack.s3_bucket, unique_prefix) if k.endswith(".parquet")]
    assert finals == [], "an unfinished multipart upload must not be visible"
    done = run_consumer(topic, group, out, *big, schema="metrics")
    assert done.returncode == 0, done.stderr[-4000:]
    assert '"s3_bytes_copied": 0' not in done.stderr, "expected server-side UploadPartCopy"
    assert staging_keys(s3, stack.s3_bucket, unique_prefix) == []
    uploads = s3.list_multipart_uploads(Bucket=stack.s3_bucket, Prefix=unique_prefix).get("Uploads", [])
    assert uploads == [], "the interrupted multipart upload was aborted"
    paths = download_finals(s3, stack.s3_bucket, unique_prefix, tmp_path)
    assert_exactly_once(read_table(paths), res.partition_counts)
    record_pass("mid_merge:1", "kill between UploadPartCopy parts", res.count, len(paths))
