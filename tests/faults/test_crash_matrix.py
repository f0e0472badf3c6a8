"""Crash matrix: kill the consumer (os._exit, as kill -9) at every named point of the protocol,
restart it, let it finish with --until-caught-up, and prove the output with ``checker.prove``:
every (partition, offset) is a row of exactly one final file or (a bad record) a dead letter of
exactly one object, values as produced, footers right, the group committed at the end, nothing
left in staging. Eight cases run on input with bad records (tombstones and malformed bodies)
in the range, so dead letters are written, crashed around and recovered too.

Each case appends a row to the fault table (see ``checker.proven``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from checker import (
    Expected,
    Proof,
    committed_positions,
    finish_and_prove,
    produce_with_bad,
    prove,
    proven,
    summary,
)
from support import S3Server, final_keys, list_keys, run_consumer, start_consumer, static_member, unique

from consumer.faults import FAULT_EXIT_CODE
from consumer.producer import produce

# Only its own topics, groups and prefixes, and waits for outcomes: see tests/conftest.py.
pytestmark = pytest.mark.shares_stack


def case(point: str, nth: int, *marks: pytest.MarkDecorator) -> Any:
    return pytest.param(point, nth, id=f"{point}-{nth}", marks=marks)


# (point, occurrence): small budgets so every point is reached several times per run.
CASES = [
    case("before_piece_put", 1),
    case("before_piece_put", 5),
    case("after_piece_put", 1),
    case("after_piece_put", 4),
    case("after_commit", 2),
    case("after_commit", 7),
    case("after_marker_put", 1),
    case("after_marker_put", 2),
    case("after_final_put", 1),
    case("after_final_put", 3),
    case("after_piece_delete", 1),
    case("after_piece_delete", 2),
    case("during_recovery", 1),
    case("during_recovery", 2),
    case("during_shutdown", 1),
]
# Bad records at known positions of a 2-partition topic of 2 × 2,000 good records: the first
# position (a file that starts with a dead letter), around row-group (300 rows) and file (900
# rows) boundaries, a run of 40, and the very last position of partition 0 (a range that ends with
# a dead letter). Every kind the consumer dead-letters in raw framing.
BAD: dict[tuple[int, int], str] = {
    (0, 0): "tombstone",
    (0, 299): "truncated",
    (0, 300): "trailing",
    (0, 612): "empty",
    (0, 905): "tombstone",
    **{(0, o): ("truncated", "trailing", "empty", "tombstone")[o % 4] for o in range(1_300, 1_340)},
    (0, 2_045): "trailing",  # 2,000 good + 46 bad: the last position
    (1, 17): "empty",
    (1, 450): "tombstone",
    (1, 899): "truncated",
    (1, 1_555): "trailing",
}
BAD_CASES = [
    case("after_dead_letter_put", 1),
    case("after_dead_letter_put", 3),
    case("before_piece_put", 2),
    case("after_piece_put", 3),
    case("after_commit", 1),
    case("after_commit", 4),
    case("after_marker_put", 1),
    case("during_recovery", 2),
]
SMALL = ("--row-group-rows", "300", "--file-rows", "900", "--batch-size", "250")


def crash_then_prove(
    stack: Any,
    server: S3Server,
    prefix: str,
    tmp: Path,
    expected: Expected,
    faults: list[str],
    args: tuple[str, ...],
    kind: str,
) -> Proof:
    """Run the consumer once per fault spec (each must crash at its point), then finish, prove and
    record the scenario (also when only the footers' avro.schema is missing: a known bug). The
    output goes to ``server``: the stack's SeaweedFS or a MinIO."""
    group = unique("g")
    out = f"s3://{server.bucket}/{prefix.rstrip('/')}"
    env = {"S3_ENDPOINT_URL": server.endpoint}
    for spec in faults:
        crashed = run_consumer(
            expected.topic, group, out, *args, schema=expected.schema, env={**env, "CONSUMER_FAULT": spec}
        )
        assert crashed.returncode == FAULT_EXIT_CODE, (
            f"fault {spec} was not reached (exit {crashed.returncode}):\n{crashed.stderr[-3000:]}"
        )
    return proven(
        lambda: finish_and_prove(
            s3=server.client(),
            bucket=server.bucket,
            prefix=prefix,
            bootstrap=stack.kafka_bootstrap,
            group=group,
            expected=expected,
            tmp=tmp,
            args=args,
            env=env,
        ),
        " → ".join(faults),
        kind if server.name == "seaweedfs" else f"{kind}, on {server.name}",
    )


def kill_once_then_prove(stack: Any, server: S3Server, prefix: str, tmp: Path, point: str, nth: int) -> None:
    """4,000 ``page_view`` records on 2 partitions, one kill at ``point`` (the ``nth`` time it is
    reached), then finish and prove the output on ``server``."""
    topic = unique("crash")
    res = produce(stack.kafka_bootstrap, topic, "page_view", 4_000, partitions=2)
    expected = Expected.plain(topic, "page_view", res.partition_counts)
    args = (*SMALL, *static_member())
    crash_then_prove(stack, server, prefix, tmp, expected, [f"{point}:{nth}"], args, "kill at point")


@pytest.mark.parametrize(("point", "nth"), CASES)
def test_kill_at_point_then_recover(
    stack: Any, stack_s3: S3Server, unique_prefix: str, tmp_path: Path, point: str, nth: int
) -> None:
    kill_once_then_prove(stack, stack_s3, unique_prefix, tmp_path, point, nth)


# Kills with the output on MinIO (dev/minio) instead: each point follows a different S3 call the
# protocol rests on (a conditional create, a replace of the marker if unchanged, a roll's compose,
# recovery's listing), here as a second server implements it. The mid-merge kill is below.
MINIO_CASES = [
    case("after_piece_put", 1),
    case("after_marker_put", 2),
    case("after_final_put", 1),
    case("during_recovery", 1),
]


@pytest.mark.parametrize(("point", "nth"), MINIO_CASES)
def test_kill_at_point_then_recover_on_minio(
    stack: Any, minio: S3Server, unique_prefix: str, tmp_path: Path, point: str, nth: int
) -> None:
    kill_once_then_prove(stack, minio, unique_prefix, tmp_path, point, nth)


@pytest.fixture(scope="module")
def versioned_minio(minio: S3Server) -> S3Server:
    """The MinIO, with a bucket of its own that keeps every version of every key (S3 versioning)."""
    server = dataclasses.replace(minio, name="minio, versioned bucket", bucket=f"{minio.bucket}-versioned")
    s3 = server.client()
    if server.bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=server.bucket)
    s3.put_bucket_versioning(Bucket=server.bucket, VersioningConfiguration={"Status": "Enabled"})
    return server


@pytest.mark.parametrize(("point", "nth"), [case("after_piece_put", 2), case("after_final_put", 1)])
def test_kill_at_point_then_recover_in_a_versioned_bucket(
    stack: Any, versioned_minio: S3Server, unique_prefix: str, tmp_path: Path, point: str, nth: int
) -> None:
    """Buckets with versioning on: recovery deletes uncommitted pieces and the next run creates the
    same keys again (``If-None-Match: *`` must see a delete marker as no object), and a roll deletes
    the pieces it merged. Every deleted staged object stays behind as a noncurrent version, which
    is what the README's lifecycle rule for versioned buckets is for."""
    kill_once_then_prove(stack, versioned_minio, unique_prefix, tmp_path, point, nth)
    s3 = versioned_minio.client()
    listed = s3.list_object_versions(Bucket=versioned_minio.bucket, Prefix=unique_prefix)
    kept = [v for v in listed.get("Versions", []) if "/_staging/" in v["Key"] and not v["IsLatest"]]
    markers = [m for m in listed.get("DeleteMarkers", []) if "/_staging/" in m["Key"]]
    assert kept and markers, "deleted staged pieces stay as noncurrent versions behind delete markers"


@pytest.mark.parametrize(("point", "nth"), BAD_CASES)
def test_kill_at_point_with_bad_records_in_range(
    stack: Any, stack_s3: S3Server, unique_prefix: str, tmp_path: Path, point: str, nth: int
) -> None:
    """The same with 50 bad records among the 4,000 good ones: dead letters are written before the
    piece of their range, so a crash between the two (``after_dead_letter_put``) or around the
    piece and the commit leaves dead letters of an uncommitted range, which recovery must remove and
    the next run write again, once."""
    topic = unique("crash-bad")
    expected = produce_with_bad(stack.kafka_bootstrap, topic, "page_view", 4_000, 2, BAD)
    assert expected.bad_count == len(BAD)
    args = (*SMALL, *static_member())
    kind = f"kill at point, {len(BAD)} bad records in range"
    crash_then_prove(stack, stack_s3, unique_prefix, tmp_path, expected, [f"{point}:{nth}"], args, kind)


def test_repeated_kills_at_different_points(
    stack: Any, stack_s3: S3Server, unique_prefix: str, tmp_path: Path
) -> None:
    """Several crashes in a row, at different points, before the run may finish; bad records in
    the input, so one of the crashes falls between a dead-letter PUT and its piece PUT."""
    topic = unique("crash-seq")
    bad = {**BAD, (2, 0): "tombstone", (2, 1_000): "empty", (2, 1_001): "truncated"}
    expected = produce_with_bad(stack.kafka_bootstrap, topic, "page_view", 12_000, 3, bad)
    sequence = [
        "after_piece_put:3",
        "after_dead_letter_put:2",
        "after_marker_put:1",
        "during_recovery:2",
        "after_final_put:2",
        "after_commit:5",
        "before_piece_put:2",
    ]
    args = (*SMALL, *static_member())
    kind = f"seven kills in a row, {len(bad)} bad records in range"
    crash_then_prove(stack, stack_s3, unique_prefix, tmp_path, expected, sequence, args, kind)


@pytest.mark.parametrize("server_name", ["stack_s3", "minio"])
def test_kill_mid_merge_of_a_multipart_final_file(
    stack: Any, request: pytest.FixtureRequest, unique_prefix: str, tmp_path: Path, server_name: str
) -> None:
    """Pieces ≥ 5 MiB are assembled server-side with UploadPartCopy; a crash between parts leaves an
    unfinished multipart upload that is never visible, and recovery aborts it and redoes the roll.
    On SeaweedFS and on MinIO."""
    server: S3Server = request.getfixturevalue(server_name)
    s3 = server.client()
    topic = unique("crash-merge")
    group = unique("g")
    out = f"s3://{server.bucket}/{unique_prefix.rstrip('/')}"
    env = {"S3_ENDPOINT_URL": server.endpoint}
    res = produce(stack.kafka_bootstrap, topic, "metrics", 40_000, partitions=1)
    expected = Expected.plain(topic, "metrics", res.partition_counts)
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
    crashed = run_consumer(topic, group, out, *big, schema="metrics",
                           env={**env, "CONSUMER_FAULT": "mid_merge:1"})
    assert crashed.returncode == FAULT_EXIT_CODE, crashed.stderr[-3000:]
    finals = [k for k, _ in list_keys(s3, server.bucket, unique_prefix) if k.endswith(".parquet")]
    assert finals == [], "an unfinished multipart upload must not be visible"
    done = run_consumer(topic, group, out, *big, schema="metrics", env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    copied = summary(done.stderr)["s3_bytes_copied"]
    assert copied >= 5 * 2**20, f"expected server-side UploadPartCopy of ≥ 5 MiB pieces, copied {copied}"
    assert s3.list_multipart_uploads(Bucket=server.bucket, Prefix=unique_prefix).get("Uploads", []) == []
    proven(
        lambda: prove(
            s3=s3,
            bucket=server.bucket,
            prefix=unique_prefix,
            bootstrap=stack.kafka_bootstrap,
            group=group,
            expected=expected,
            tmp=tmp_path,
        ),
        "mid_merge:1",
        "kill between UploadPartCopy parts" + ("" if server.name == "seaweedfs" else f", on {server.name}"),
        s3_bytes_copied=copied,
    )


def test_clean_stop_with_everything_committed_then_finish(
    stack: Any, s3: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """Not a crash: a member consumes everything, is stopped with SIGTERM (files stay open, as a
    restart must not close a file early), and a ``--until-caught-up`` run finishes the files. The
    situation every group and outage scenario ends in, made deterministic."""
    topic = unique("clean-stop")
    res = produce(stack.kafka_bootstrap, topic, "page_view", 2_000, partitions=2)
    expected = Expected.plain(topic, "page_view", res.partition_counts)
    group = unique("g")
    out = f"s3://{stack.s3_bucket}/{unique_prefix.rstrip('/')}"
    # 1,000 records a partition in row groups of 250: everything is committed by the row budget
    # (the age budget is pinned by test_rows_after_a_row_group_flush_commit_by_age).
    args = ("--row-group-rows", "250", "--row-group-max-age", "1s", "--batch-size", "250", *static_member())
    running = start_consumer(topic, group, out, *args)
    try:
        committed: dict[int, int] = {}

        def all_committed() -> bool:
            assert running.proc.poll() is None, (
                f"consumer exited {running.proc.returncode}:\n{running.log()[-3000:]}"
            )
            committed.update(committed_positions(stack.kafka_bootstrap, group, topic, 2))
            return committed == expected.ends

        wait_until(
            all_committed,
            60,
            lambda: f"commits {committed} to reach {expected.ends}:\n{running.log()[-3000:]}",
        )
        assert running.stop() == 0, running.log()[-3000:]
    finally:
        if running.proc.poll() is None:
            running.proc.kill()
    assert final_keys(s3, stack.s3_bucket, unique_prefix) == [], "a clean stop does not close files"
    proven(
        lambda: finish_and_prove(
            s3=s3,
            bucket=stack.s3_bucket,
            prefix=unique_prefix,
            bootstrap=stack.kafka_bootstrap,
            group=group,
            expected=expected,
            tmp=tmp_path,
            args=args,
        ),
        "SIGTERM with everything committed, then --until-caught-up",
        "clean stop, files resumed and rolled with no new record",
    )


def test_rows_after_a_row_group_flush_commit_by_age(stack: Any, unique_prefix: str) -> None:
    """A long-running member with 1,000 records a partition and row groups of 300: the last 100
    rows of each partition are below the row budget and must be committed by the age budget (1 s),
    or the group's lag never reaches 0 on a quiet topic."""
    topic = unique("age-tail")
    res = produce(stack.kafka_bootstrap, topic, "page_view", 2_000, partitions=2)
    group = unique("g")
    out = f"s3://{stack.s3_bucket}/{unique_prefix.rstrip('/')}"
    args = ("--row-group-rows", "300", "--row-group-max-age", "1s", "--batch-size", "250")
    running = start_consumer(topic, group, out, *args)
    committed: dict[int, int] = {}
    try:

        def all_committed() -> bool:
            assert running.proc.poll() is None, (
                f"consumer exited {running.proc.returncode}:\n{running.log()[-3000:]}"
            )
            committed.update(committed_positions(stack.kafka_bootstrap, group, topic, 2))
            return committed == res.partition_counts

        wait_until(all_committed, 30, lambda: f"commits {committed} to reach {res.partition_counts}")
    finally:
        assert running.stop() == 0, running.log()[-3000:]


def wait_until(pred: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what()}"
        time.sleep(0.5)


# -- the time-bucketed layout (--partition-by) ----------------------------------------------------
# Every fault point, on a small topic whose Kafka timestamps spread over five shuffled hours (so
# consecutive records of a partition go to different buckets, late and early), with bad records
# in the range. At most 3 open buckets and a 2 h grace: files roll by the bound, by the grace, by
# rows and at the end, and late records reopen buckets already final.
BUCKETED = (
    "--partition-by", "dt={@timestamp:%Y-%m-%d}/hr={@timestamp:%H}",
    "--max-open-buckets", "3", "--bucket-grace", "2h",
    "--row-group-rows", "60", "--file-rows", "90", "--batch-size", "60",
)
BUCKETED_BAD: dict[tuple[int, int], str] = {(0, 0): "tombstone", (0, 61): "truncated", (1, 130): "empty"}
BUCKETED_CASES = [
    case("after_dead_letter_put", 1),
    case("before_piece_put", 3),
    case("after_piece_put", 2),
    case("after_commit", 2),
    case("after_marker_put", 1),
    case("after_final_put", 2),
    case("after_piece_delete", 1),
    case("during_recovery", 2),
    case("during_shutdown", 1),
]


@pytest.mark.parametrize(("point", "nth"), BUCKETED_CASES)
def test_kill_at_point_in_the_bucketed_layout(
    stack: Any, stack_s3: S3Server, unique_prefix: str, tmp_path: Path, point: str, nth: int
) -> None:
    topic = unique("crash-bucket")
    expected = produce_with_bad(
        stack.kafka_bootstrap, topic, "page_view", 400, 2, BUCKETED_BAD, spread_hours=5
    )
    args = (*BUCKETED, *static_member())
    kind = f"kill at point, bucketed layout (5 shuffled hours), {len(BUCKETED_BAD)} bad records"
    crash_then_prove(stack, stack_s3, unique_prefix, tmp_path, expected, [f"{point}:{nth}"], args, kind)


# -- a kill in the run's last roll, then two restarts ---------------------------------------------
# One partition, default budgets: the only roll is the last one, when the run has caught up (under
# --partition-by, of two bucket files: records in two shuffled hours). The first restart finishes
# what the kill left with nothing new to read, and the second one must find what a roll leaves.
LAST_ROLL_ARGS = {
    "plain": (),
    "bucketed": ("--partition-by", "dt={@timestamp:%Y-%m-%d}/hr={@timestamp:%H}", "--max-open-buckets", "3",
                 "--bucket-grace", "2h"),
}
LAST_ROLL_CASES = [
    pytest.param(layout, f"{point}:{nth}", id=f"{layout}-{point}-{nth}")
    for layout, nths in (("plain", 1), ("bucketed", 2))
    for point in ("after_marker_put", "after_final_put", "after_piece_delete")
    for nth in range(1, nths + 1)
] + [pytest.param(layout, "during_shutdown:1", id=f"{layout}-during_shutdown-1") for layout in LAST_ROLL_ARGS]


def _kill_in_the_last_roll(stack: Any, server: S3Server, prefix: str, layout: str, point: str,
                           before_restart: Callable[[str], None] = lambda _group: None,
                           ) -> tuple[Expected, str, str, dict[str, str], tuple[str, ...]]:
    """300 records on one partition, a run killed at ``point``, ``before_restart(group)``, and a
    restart that must exit 0: (expected, group, output, env, args)."""
    topic = unique("crash-last-roll")
    expected = produce_with_bad(stack.kafka_bootstrap, topic, "page_view", 300, 1, {},
                                spread_hours=2 if layout == "bucketed" else 0)
    group = unique("g")
    out = f"s3://{server.bucket}/{prefix.rstrip('/')}"
    env = {"S3_ENDPOINT_URL": server.endpoint}
    args = (*LAST_ROLL_ARGS[layout], *static_member())
    crashed = run_consumer(topic, group, out, *args, env={**env, "CONSUMER_FAULT": point})
    assert crashed.returncode == FAULT_EXIT_CODE, f"{point} not reached:\n{crashed.stderr[-3000:]}"
    before_restart(group)
    restarted = run_consumer(topic, group, out, *args, env=env)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    return expected, group, out, env, args


@pytest.mark.parametrize(("layout", "point"), LAST_ROLL_CASES)
def test_a_kill_in_the_last_roll_then_two_restarts(
    stack: Any, stack_s3: S3Server, unique_prefix: str, tmp_path: Path, layout: str, point: str
) -> None:
    """Killed after the last marker of a roll of two bucket files (before its re-commit, while the
    first one's said "staged": the other was still open), the first restart finished the roll from
    its marker and left that note; the second restart stopped (status 5), taking the files for ones
    deleted from _staging/. Every point of the last roll is now proven after two restarts."""
    expected, group, _out, env, args = _kill_in_the_last_roll(stack, stack_s3, unique_prefix, layout, point)
    proven(
        lambda: finish_and_prove(s3=stack_s3.client(), bucket=stack_s3.bucket, prefix=unique_prefix,
                                 bootstrap=stack.kafka_bootstrap, group=group, expected=expected,
                                 tmp=tmp_path, args=args, env=env),
        f"{point} → restart → restart",
        f"kill in the last roll, {layout} layout" + (" (2 hours)" if layout == "bucketed" else ""),
    )


def test_a_kill_after_the_last_marker_then_offsets_expired_then_two_restarts(
    stack: Any, stack_s3: S3Server, admin: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """Under --partition-by, killed after the last marker of a roll of two bucket files, and the
    group's offsets expire (deleted here) before the restart. The restart adopts the position from
    S3 with a "staged" note (pieces end there) and finishes the roll from its marker; the note
    stayed "staged", and the next restart stopped (status 5), taking the files for ones deleted."""

    def expire_offsets(group: str) -> None:
        deadline = time.monotonic() + 60  # the killed static member's session expires first
        while True:
            try:
                admin.delete_consumer_groups([group])[group].result(timeout=30)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    expected, group, _out, env, args = _kill_in_the_last_roll(
        stack, stack_s3, unique_prefix, "bucketed", "after_marker_put:2", expire_offsets)
    proven(
        lambda: finish_and_prove(s3=stack_s3.client(), bucket=stack_s3.bucket, prefix=unique_prefix,
                                 bootstrap=stack.kafka_bootstrap, group=group, expected=expected,
                                 tmp=tmp_path, args=args, env=env),
        "after_marker_put:2 → offsets expired → restart → restart",
        "kill in the last roll, offsets expired, bucketed layout (2 hours)",
    )


def test_a_kill_after_the_last_marker_then_output_expired_between_two_restarts(
    stack: Any, stack_s3: S3Server, unique_prefix: str
) -> None:
    """Plain layout: killed after the roll's marker, before its re-commit; the first restart
    finished the roll and left the flush's "staged" note. A lifecycle rule then expired the final
    file and its name (here: deleted between the restarts), and the second restart stopped
    (status 5), saying the records were in no file. Expired output is no loss: it goes on."""
    expected, group, out, env, args = _kill_in_the_last_roll(stack, stack_s3, unique_prefix, "plain",
                                                             "after_marker_put:1")
    s3 = stack_s3.client()
    assert len(final_keys(s3, stack_s3.bucket, unique_prefix)) == 1
    expired = [k for k, _size in list_keys(s3, stack_s3.bucket, unique_prefix) if "/_staging/" not in k]
    s3.delete_objects(Bucket=stack_s3.bucket, Delete={"Objects": [{"Key": k} for k in expired]})
    again = run_consumer(expected.topic, group, out, *args, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert committed_positions(stack.kafka_bootstrap, group, expected.topic, 1) == {0: 300}
    assert list_keys(s3, stack_s3.bucket, unique_prefix) == [], "nothing written again"
