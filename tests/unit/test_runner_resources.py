"""The runner's resources on the in-memory broker (issue 8, items 10 and 11): no retired worker
outlives its partition, and the memory budget pauses fetching instead of flushing hundreds of
tiny row groups."""

from __future__ import annotations

import gc
import time
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from consumer.budget import MemoryPlan
from consumer.testing import MemoryBroker, MemoryConsumer, MemoryStore, memory_runner, page_view_broker
from consumer.verify import verify
from consumer.worker import PartitionWorker


def live_workers() -> int:
    gc.collect()
    return sum(isinstance(o, PartitionWorker) for o in gc.get_objects())


def test_rebalances_keep_no_retired_workers() -> None:
    """200 revoke/assign cycles of 4 partitions: workers are dropped, their counters kept."""
    broker, store = page_view_broker(4, 0), MemoryStore()
    r = memory_runner(broker, store)
    before = live_workers()
    tps = [TopicPartition("t", p) for p in range(4)]
    for _ in range(200):
        r._on_assign(r.consumer, [TopicPartition("t", p) for p in range(4)])
        assert len(r.workers) == 4
        r._on_revoke(r.consumer, tps)
    assert r.workers == {} and not hasattr(r, "retired")
    assert live_workers() == before


def test_memory_budget_pauses_fetch_rather_than_flushing_tiny_row_groups() -> None:
    """60 partitions each holding a few rows exceed a tiny budget: no partition holds a useful row
    group, so nothing is flushed early (no one-row row groups); fetching pauses instead."""
    broker, store = page_view_broker(60, 30), MemoryStore()
    r = memory_runner(broker, store, memory_bytes=20_000, row_group_max_age=3600.0, batch_size=200)
    seen: list[tuple[bool, int]] = []

    def watch(consumer: MemoryConsumer) -> None:
        pieces = sum(1 for k in store.objects if k.endswith(".piece"))
        seen.append((r.budget_paused, pieces))
        if len(seen) == 12:
            r.request_stop()

    r.consumer.on_consume = watch
    assert r.run() == 0
    assert any(paused for paused, _ in seen), seen
    assert all(pieces == 0 for _, pieces in seen), seen  # nothing flushed early by the budget
    # Shutdown made everything durable: one piece per partition that had rows.
    pieces = [k for k in store.objects if k.endswith(".piece")]
    assert len(pieces) <= 60


def test_a_run_keeps_the_cycle_collector_out_of_the_batch_and_restores_it() -> None:
    """During a run, start-up objects are frozen and a consumed batch cannot set off a collection
    (gen-0 threshold above the batch); afterwards the caller's collector is as it was."""
    from consumer.cli import settled_heap

    before = gc.get_threshold()
    with settled_heap(batch_size=5000):
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] >= 4 * 5000 and gc.get_threshold()[1:] == before[1:]
        collections = sum(s["collections"] for s in gc.get_stats())
        batch = [[i] for i in range(5000)]  # one batch of tracked containers, like consume()'s
        del batch
        assert sum(s["collections"] for s in gc.get_stats()) == collections
        # cyclic garbage is still collected once containers really accumulate
        cycles = []
        for _ in range(30_000):
            a: list[object] = []
            a.append(a)
            cycles.append(a)
        del cycles
        assert sum(s["collections"] for s in gc.get_stats()) > collections
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_a_run_turns_on_the_collector_its_entry_paused_for_start_up_and_pauses_it_again() -> None:
    """The process entry pauses the collector before the first import; the run turns it on once
    start-up is over, with the start-up heap frozen, and leaves it as it found it."""
    from consumer.cli import settled_heap

    gc.disable()
    try:
        with settled_heap(batch_size=5000):
            assert gc.isenabled() and gc.get_freeze_count() > 0
        assert not gc.isenabled() and gc.get_freeze_count() == 0
    finally:
        gc.enable()


@pytest.mark.parametrize("command,on", [("verify", True), ("check", False)])
def test_the_entry_pauses_the_collector_until_the_command_is_known(command: str, on: bool) -> None:
    """``python -m consumer`` / the console script: the collector is off while the command line
    and its imports load, then on for every command but a run (which turns it on itself) and a
    check (which keeps it off: no collection on librdkafka's thread, consumer.cli.main)."""
    import subprocess
    import sys

    probe = (
        "import gc, sys, consumer.cli as cli\n"
        "seen = []\n"
        "def cmd(args):\n"
        "    seen.append(gc.isenabled())\n"
        "    return 0\n"
        f"cli.cmd_{command} = cmd\n"
        "orig = cli.build_parser\n"
        "def build_parser():\n"
        "    seen.append(gc.isenabled())\n"
        "    return orig()\n"
        "cli.build_parser = build_parser\n"
        "import consumer.__main__ as entry\n"
        f"entry.main(['{command}', '--output', 's3://b/p', '--topic', 't'])\n"
        "print(seen, gc.isenabled(), gc.get_freeze_count() > 10000)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    # ... and when the command returns, the heap is frozen: the interpreter's shutdown does not
    # walk it with full collections just before the process exits.
    assert out.stdout.split("\n")[0] == f"[False, {on}] {on} True"


def test_a_run_without_partition_by_does_not_import_pyarrow_compute() -> None:
    """Importing pyarrow.compute builds a wrapper per Arrow kernel (~0.07 CPU-s at every start);
    only a bucketed layout, schema promotion and verify compute, and they import it themselves."""
    import subprocess
    import sys

    probe = (
        "import sys, consumer.__main__, consumer.cli, consumer.runner, consumer.worker, "
        "consumer.arena, consumer.metrics, consumer.replay; print('pyarrow.compute' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_command_sets_its_process_defaults_before_pyarrow_and_the_operator_wins() -> None:
    """No OpenBLAS thread pool (pyarrow imports numpy, whose OpenBLAS would spin up worker threads
    at every start) and Arrow on the system allocator (less resident memory than mimalloc): both
    set by the command line before pyarrow is imported; an operator's values win."""
    import os
    import subprocess
    import sys

    probe = (
        "import consumer.cli, os, pyarrow as pa; "
        "print(os.environ['OPENBLAS_NUM_THREADS'], pa.default_memory_pool().backend_name)"
    )
    names = ("OPENBLAS_NUM_THREADS", "ARROW_DEFAULT_MEMORY_POOL")
    env = {k: v for k, v in os.environ.items() if k not in names}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "system"]
    env |= {"OPENBLAS_NUM_THREADS": "4", "ARROW_DEFAULT_MEMORY_POOL": "mimalloc"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["4", "mimalloc"]


def test_the_runner_plans_its_memory_when_the_run_starts_and_names_a_budget_too_small() -> None:
    """The arenas are held to --memory-bytes less prefetch, encoding and the started process
    beyond 100 MB (consumer.budget), measured when the run starts; a budget too small for the
    process is named at start, with the least that fits."""
    from structlog.testing import capture_logs

    from consumer.budget import MemoryPlan

    broker, store = page_view_broker(1, 0), MemoryStore()
    big = memory_runner(broker, store)
    big._process_rss = lambda: 130_000_000
    with capture_logs() as logs:
        big._plan_memory()
    assert big.memory == MemoryPlan.of(big.config.memory_bytes, big.config.row_group_bytes, 130_000_000)
    assert big.memory.process == 30_000_000 and not big.memory.too_small
    assert [e["event"] for e in logs] == ["memory plan"]

    small = memory_runner(broker, store, memory_bytes=32 << 20, row_group_bytes=8 << 20)
    small._process_rss = lambda: 130_000_000
    with capture_logs() as logs:
        small._plan_memory()
    assert small.memory.too_small and small.memory.buffers == 8 << 20
    (warning,) = logs
    assert warning["log_level"] == "warning" and "too small" in warning["event"]
    assert f"at least {small.memory.smallest_sufficient // 1_000_000} MB" in warning["hint"]


def test_rss_over_the_soft_limit_hands_memory_back_then_flushes_the_largest_arenas_early(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The plan is an estimate: when the process's RSS passes the plan's soft limit anyway
    (librdkafka, the allocator's free lists), freed memory goes back first (at most once a second)
    and what is still over comes off the arenas' share, so the largest flush early. It does not
    pause fetching; the same run below the soft limit flushes nothing early."""
    from structlog.testing import capture_logs

    import consumer.runner as runner_mod

    plan = MemoryPlan.of(8 << 20, 256 << 10, 100_000_000)
    seconds = [0.0]

    def run(over: int) -> tuple[int, int, int, int]:
        trims: list[None] = []
        broker, store = page_view_broker(2, 3000), MemoryStore()
        r = memory_runner(broker, store, memory_bytes=8 << 20, row_group_bytes=256 << 10,
                          row_group_max_age=3600.0, batch_size=100)
        # the poll loop's trims (the shutdown's flushes have their own: the next test)
        monkeypatch.setattr(runner_mod, "release_unused_memory", lambda: r.closing or trims.append(None))
        readings = iter([100_000_000])  # at start (the plan), then over the soft limit by `over`
        r._process_rss = lambda: next(readings, plan.soft_limit + over)
        held, paused, polls = [0], [False], [0]

        def watch(consumer: MemoryConsumer) -> None:
            held[0] = max(held[0], sum(w.buffered_bytes for w in r.workers.values()))
            paused[0] |= r.budget_paused
            polls[0] += 1
            if polls[0] == 60:
                r.request_stop()

        r.consumer.on_consume = watch
        began = time.monotonic()
        with capture_logs() as logs:
            assert r.run() == 0
        seconds[0] = time.monotonic() - began
        assert r.memory == plan and not paused[0]
        early = sum(1 for e in logs if e["event"] == "memory budget reached: flushing largest arena early")
        return early, len(trims), held[0], sum("soft limit" in e["event"] for e in logs)

    early, trims, held, said = run(-1)
    assert (early, trims, said) == (0, 0, 0) and plan.buffers // 4 < held < plan.buffers
    early, trims, held, said = run(500_000)
    assert early >= 1 and said == 1
    assert held <= plan.buffers // 4 + 500_000 + 100 * 2_000  # the squeezed share plus a batch
    assert 1 <= trims <= 1 + seconds[0] / runner_mod.TRIM_SECONDS  # at most once a second


@pytest.mark.parametrize("over", [-1, 500_000])
def test_the_last_flushes_of_a_run_hand_memory_back_when_over_the_soft_limit(
    monkeypatch: pytest.MonkeyPatch, over: int
) -> None:
    """No poll loop watches RSS while a run that caught up finishes its partitions, so each flush
    that ends there hands back what it let go of when the process is over the soft limit (on
    `wide`, without it, the last flushes and rolls took the peak over the bound)."""
    import consumer.runner as runner_mod

    trims: list[None] = []
    monkeypatch.setattr(runner_mod, "release_unused_memory", lambda: trims.append(None))
    monkeypatch.setattr(runner_mod, "RELIEF_SECONDS", 0.0)  # (else at most one every 0.1 s)
    broker, store = page_view_broker(3, 50), MemoryStore()
    r = memory_runner(broker, store, until_caught_up=True)
    finishing = [False]
    real_finish_all = r._finish_all

    def finish_all(workers: list[Any]) -> list[Any]:
        finishing[0] = True
        try:
            return real_finish_all(workers)
        finally:
            finishing[0] = False
            finished.append(len(trims))

    finished: list[int] = []
    r._finish_all = finish_all
    readings = iter([100_000_000])  # at start (the plan); then below, or over, the soft limit
    r._process_rss = lambda: next(readings, r.memory.soft_limit + (over if finishing[0] else -1))
    assert r.run() == 0
    assert finished == [3 if over > 0 else 0]  # once per partition finished
    committed = dict.fromkeys(range(3), 50)
    assert {p: broker.committed_offset("g", "t", p) for p in range(3)} == committed
    assert verify(store, "out", "t", committed=committed, contiguous=True).ok


def test_librdkafka_prefetch_follows_the_budget_and_yields_to_x_settings() -> None:
    """The queue takes 1/16 of --memory-bytes, a fetch response a quarter of that (1-4 MiB: the
    messages of a response keep all of it alive, consumer.budget); -X still decides."""
    broker, store = page_view_broker(1, 0), MemoryStore()
    conf = memory_runner(broker, store, memory_bytes=128 << 20).consumer.conf
    assert conf["queued.max.messages.kbytes"] == 8 << 10
    assert conf["fetch.max.bytes"] == 2 << 20
    assert conf["max.partition.fetch.bytes"] == 128 << 10 <= conf["fetch.max.bytes"]
    big = memory_runner(broker, store, memory_bytes=4 << 30).consumer.conf
    assert big["queued.max.messages.kbytes"] == 32 << 10 and big["fetch.max.bytes"] == 4 << 20
    mine = memory_runner(broker, store, kafka_properties={"fetch.max.bytes": str(50 << 20)}).consumer.conf
    assert mine["fetch.max.bytes"] == str(50 << 20)



@pytest.mark.parametrize("over", [-1, 500_000])
def test_over_the_soft_limit_large_records_are_consumed_about_one_fetch_response_at_a_time(over: int) -> None:
    """--batch-size counts records; the memory plan counts a consumed batch as one fetch response
    (1 MiB at this budget). Over the plan's soft limit, after a batch of 100 KB records the loop
    asks for about ten at a time; under it, --batch-size stays. Either way every record ends up
    durable and committed, in files that verify."""
    from consumer.samples import encode_raw, make_record, parsed_schema

    schema = parsed_schema("page_view")
    broker, store = MemoryBroker(), MemoryStore()
    broker.create_topic("t", 1)
    def large(i: int) -> bytes:
        return encode_raw(schema, {**make_record("page_view", i), "url": "u" * 100_000})

    for i in range(70):
        broker.produce("t", large(i))
    r = memory_runner(broker, store, memory_bytes=16 << 20, row_group_bytes=1 << 20, batch_size=50,
                      row_group_max_age=3600.0, until_caught_up=True)
    plan = MemoryPlan.of(16 << 20, 1 << 20, 100_000_000)
    readings = iter([100_000_000])  # at start (the plan), then `over` the soft limit
    r._process_rss = lambda: next(readings, plan.soft_limit + over)
    asked: list[int] = []
    consume = r.consumer.consume

    def counted(num_messages: int = 1, timeout: float = -1) -> list[Any]:
        asked.append(num_messages)
        got: list[Any] = consume(num_messages, timeout)
        return got

    r.consumer.consume = counted
    assert r.run() == 0
    assert r.memory == plan and plan.batch == 1 << 20
    each = len(large(0))
    if over < 0:
        assert asked[:2] == [50, 50] and set(asked) == {50}  # 50 records, then the last 20
    else:
        assert len(asked) >= 3 and asked[0] == 50  # nothing known yet: --batch-size
        assert abs(asked[1] - (1 << 20) // each) <= 1  # ten records of ~100 KB
        assert set(asked[2:]) == {asked[1]}  # the same again, and after an empty batch
    assert broker.committed_offset("g", "t", 0) == 70
    assert verify(store, "out", "t", committed={0: 70}, contiguous=True).ok
