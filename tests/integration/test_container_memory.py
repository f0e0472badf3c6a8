"""The consumer in a container whose memory limit is below what the default budget aims at: a
real memory cgroup (v2, or v1 as on this machine) made for the test, the consumer started in it.

The default budget is fitted under the limit (with ``--processes``, shared by the members), and a
budget set by hand that the container cannot hold stops the start with exit status 2, saying what
would fit. Needs the right to make a cgroup (root, a writable cgroup file system). It skips only
where the process may not write the memory controller's tree at all (checked before trying, the
reason printed); once it may, making the cgroup and everything after it are the test's, and a
failure there fails it. CI's machine (root, cgroup v1) runs it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import REPO, consumer_cmd, log_events, unique

from consumer.budget import ALLOWANCE, SUPERVISOR_ALLOWANCE
from consumer.producer import produce

pytestmark = pytest.mark.shares_stack

MB = 1000 * 1000


def output(stack: Any, prefix: str) -> str:
    return f"s3://{stack.s3_bucket}/{prefix.rstrip('/')}"


@contextlib.contextmanager
def memory_cgroup(limit: int) -> Iterator[tuple[Path, int]]:
    """A new memory cgroup with ``limit`` bytes; yields the file a process joins it by, and the
    limit the kernel set (``limit`` rounded down to whole pages)."""
    root = Path("/sys/fs/cgroup")
    v2 = (root / "cgroup.controllers").exists() and "memory" in (root / "cgroup.controllers").read_text()
    base = root if v2 else root / "memory"
    # Only a machine that cannot run this at all skips it: no memory controller mounted, or a
    # cgroup file system this process may not write (not root, a read-only mount in a container).
    # Where it may, any failure below is the test's failure, not a skip.
    if not base.is_dir() or not os.access(base, os.W_OK):
        pytest.skip(f"{base} is not a memory cgroup tree this process may write (uid {os.geteuid()})")
    folder = base / f"consumer-test-{uuid.uuid4().hex[:8]}"
    limit_file = folder / ("memory.max" if v2 else "memory.limit_in_bytes")
    folder.mkdir()
    try:
        limit_file.write_text(str(limit))
        yield folder / "cgroup.procs", int(limit_file.read_text())
    finally:
        with contextlib.suppress(OSError):
            folder.rmdir()


def run_in(procs: Path, cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    def join() -> None:
        procs.write_text(str(os.getpid()))

    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, preexec_fn=join)


def test_the_default_budget_is_fitted_under_the_container_limit_and_a_given_one_that_cannot_fit_stops(
    stack: Any, make_topic: Any, unique_prefix: str
) -> None:
    topic, group = make_topic(partitions=2), unique("g")
    produce(stack.kafka_bootstrap, topic, "page_view", 2000, partitions=2, create_topic=False)
    with memory_cgroup(450 * MB) as (procs, limit):
        ran = run_in(procs, consumer_cmd(topic, group, output(stack, unique_prefix), "--until-caught-up"))
        assert ran.returncode == 0, ran.stderr[-3000:]
        events = log_events(ran.stderr)
        fitted = limit - limit // 10 - ALLOWANCE
        [note] = [e for e in events if e["event"] == "memory budget fitted to the container's memory limit"]
        assert (note["memory_bytes"], note["limit"], note["default"]) == (fitted, limit, 512 * 1024 * 1024)
        [plan] = [e for e in events if e["event"] == "memory plan"]
        assert plan["memory_bytes"] == fitted

        refused = run_in(procs, consumer_cmd(topic, group, output(stack, unique_prefix), "--until-caught-up",
                                             "--memory-bytes", "512MiB"))
        assert refused.returncode == 2, refused.stderr[-3000:]
        assert "consumer: config: memory-bytes 536 MB: the process aims at a peak of it + 100 MB, over the " \
               f"container's memory limit of {limit // MB} MB (cgroup)" in refused.stderr
        assert f"Set --memory-bytes to at most {fitted // MB}MB" in refused.stderr


def test_members_of_one_container_share_its_limit(stack: Any, make_topic: Any, unique_prefix: str) -> None:
    """``--processes 2`` in a 700 MB container: the supervisor hands each member half of what
    fits, as a flag, and each member's plan is that."""
    topic, group = make_topic(partitions=2), unique("g")
    produce(stack.kafka_bootstrap, topic, "page_view", 2000, partitions=2, create_topic=False)
    with memory_cgroup(700 * MB) as (procs, limit):
        ran = run_in(procs, consumer_cmd(topic, group, output(stack, unique_prefix), "--until-caught-up",
                                         "--processes", "2"))
        assert ran.returncode == 0, ran.stderr[-3000:]
        share = (limit - limit // 10 - SUPERVISOR_ALLOWANCE) // 2 - ALLOWANCE
        plans = [e for e in log_events(ran.stderr) if e["event"] == "memory plan"]
        assert len(plans) == 2 and {p["memory_bytes"] for p in plans} == {share}, plans
