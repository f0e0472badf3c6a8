"""The time-bucketed layout (--partition-by) on the real stack: a stream whose Kafka timestamps span
five shuffled hours gives several dt=/hr= folders, readable as one table by pyarrow.dataset with
the bucket columns recovered from the path, and `consumer verify` finds it exact. The same with
`consumer replay`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest
from support import REPO, download_finals, final_keys, run_consumer, staging_keys, unique

from consumer.producer import produce

# Only its own topics, groups and prefixes, and waits for outcomes: see tests/conftest.py.
pytestmark = pytest.mark.shares_stack

TEMPLATE = "dt={@timestamp:%Y-%m-%d}/hr={@timestamp:%H}"
ARGS = ("--partition-by", TEMPLATE, "--row-group-rows", "100", "--max-open-buckets", "3")


def verify_cli(out: str, topic: str, bootstrap: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consumer", "verify", "--output", out, "--topic", topic,
         "--bootstrap-servers", bootstrap, "--partition-by", TEMPLATE, *extra],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )


def hive_table(paths: list[Path], root: Path) -> Any:
    return ds.dataset([str(p) for p in paths], format="parquet", partitioning="hive",
                      partition_base_dir=str(root)).to_table()


def test_bucketed_run_gives_hour_folders_read_as_one_table_and_verify_is_exact(
    stack: Any, s3: Any, unique_prefix: str, tmp_path: Path
) -> None:
    topic = unique("bucketed")
    produce(stack.kafka_bootstrap, topic, "page_view", 1_000, partitions=2, spread_hours=5)
    group = unique("g")
    out = f"s3://{stack.s3_bucket}/{unique_prefix.rstrip('/')}"
    done = run_consumer(topic, group, out, *ARGS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert staging_keys(s3, stack.s3_bucket, unique_prefix) == []
    keys = final_keys(s3, stack.s3_bucket, unique_prefix)
    folders = {k.split(f"topic={topic}/")[1].rsplit("/partition=", 1)[0] for k in keys}
    assert len(folders) == 5 and all(f.startswith("dt=2024-03-01/hr=") for f in folders), folders
    paths = download_finals(s3, stack.s3_bucket, unique_prefix, tmp_path)
    table = hive_table(paths, tmp_path / f"topic={topic}")
    assert table.num_rows == 1_000
    assert {"dt", "hr"} <= set(table.column_names)
    # Every row's folder is the hour of its Kafka timestamp (UTC).
    stamps = table.column("kafka_timestamp").to_pylist()
    hours = table.column("hr").to_pylist()
    assert all(f"{int(h):02d}" == ts.strftime("%H") for h, ts in zip(hours, stamps, strict=True))
    ok = verify_cli(out, topic, stack.kafka_bootstrap, "--group-id", group)
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-2000:]


def test_replay_writes_the_bucketed_layout_too(
    stack: Any, s3: Any, unique_prefix: str, tmp_path: Path
) -> None:
    topic = unique("bucketed-replay")
    produce(stack.kafka_bootstrap, topic, "page_view", 600, partitions=2, spread_hours=3)
    out = f"s3://{stack.s3_bucket}/{unique_prefix.rstrip('/')}"
    res = subprocess.run(
        [sys.executable, "-m", "consumer", "replay", "--topic", topic, "--schema", "page_view",
         "--output", out, "--log-format", "json", *ARGS],
        capture_output=True, text=True, timeout=180, cwd=REPO,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    keys = final_keys(s3, stack.s3_bucket, unique_prefix)
    assert len({k.rsplit("/partition=", 1)[0] for k in keys}) == 3
    ok = verify_cli(out, topic, stack.kafka_bootstrap)
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-2000:]
