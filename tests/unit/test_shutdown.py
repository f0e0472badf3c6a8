"""Bounded shutdown on the in-memory doubles: SIGTERM's flushes stop at ``--shutdown-timeout``, the
partitions left over are not committed, and a restart exports every record exactly once.

Time is a fake clock that the slow store advances, so the deadline is exercised exactly and the
test takes milliseconds.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from structlog.testing import capture_logs

from consumer.config import Config
from consumer.decoding import Decoder
from consumer.layout import Layout
from consumer.runner import GroupRunner
from consumer.samples import encode_raw, load_schema, make_record, parsed_schema
from consumer.storage import RetryPolicy, TransientStorageError
from consumer.testing import MemoryBroker, MemoryConsumer, MemoryStore, at_consume

PARTITIONS, PER_PARTITION = 4, 30


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _broker() -> MemoryBroker:
    schema = parsed_schema("page_view")
    broker = MemoryBroker()
    broker.create_topic("t", PARTITIONS)
    for p in range(PARTITIONS):
        for i in range(PER_PARTITION):
            value = encode_raw(schema, make_record("page_view", p * 1000 + i))
            broker.produce("t", value, partition=p, key=b"k")
    return broker


def _runner(broker: MemoryBroker, store: Any, clock: FakeClock | None = None, **cfg: Any) -> GroupRunner:
    config = Config(
        bootstrap_servers="memory",
        group_id="g",
        topics=("t",),
        output="s3://bucket/out",
        schema="page_view",
        **{
            "row_group_rows": 1000,  # nothing is flushed before the stop: every row waits in an arena
            "batch_size": PARTITIONS * PER_PARTITION,
            **cfg,
        },
    )
    kwargs: dict[str, Any] = {"clock": clock} if clock is not None else {}
    return GroupRunner(
        config,
        store=store,
        decoder=Decoder("raw", schema=load_schema("page_view")),
        consumer_factory=broker.consumer_factory(),
        **kwargs,
    )


def _stop_on_second_consume(runner: GroupRunner) -> None:
    # the first consume assigned all partitions and returned every record
    at_consume(runner.consumer, {2: runner.request_stop})


def _final_offsets(store: MemoryStore) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for p in range(PARTITIONS):
        key = Layout("out").final_key("t", p, 0)
        if key in store.objects:
            out[p] = pq.read_table(pa.BufferReader(store.objects[key])).column("kafka_offset").to_pylist()
    return out


@pytest.mark.parametrize("threads", [1, 8])
def test_shutdown_stops_flushing_at_the_deadline_and_a_restart_loses_nothing(
    threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One flush at a time, the deadline cuts the drain short; side by side (the default), the
    same four flushes all start at once and finish, although each PUT takes 10 s."""
    monkeypatch.setattr("consumer.side_by_side.CLOSE_THREADS", threads)
    broker, store, clock = _broker(), MemoryStore(), FakeClock()

    # Side by side, the four PUTs are in flight together and take the same 10 s: the clock moves
    # once all four have started (a thread scheduled late must not find the deadline passed by
    # PUTs it in truth ran beside). The hook sees the call (``put_if_absent``) before the store's
    # lock, as S3 would let four requests in at once.
    together = threading.Barrier(PARTITIONS, timeout=30.0) if threads > 1 else None

    def slow_piece_put(op: str, key: str) -> None:
        if not key.endswith(".piece"):
            return
        if together is None:
            if op == "put_object":
                clock.now += 10.0  # one at a time, every piece PUT takes 10 s
        elif op == "put_if_absent" and together.wait() == 0:
            clock.now += 10.0

    store.on_op = slow_piece_put
    runner = _runner(broker, store, clock, shutdown_timeout=25.0)
    _stop_on_second_consume(runner)
    assert runner.run() == 0
    committed = [broker.committed_offset("g", "t", p) for p in range(PARTITIONS)]
    pieces = len([k for k in store.objects if k.endswith(".piece")])
    if threads == 1:
        # t=0..10, 10..20, 20..30: three flushes started before the deadline (25 s); the fourth,
        # not started, left nothing staged.
        assert sorted(committed, key=str) == [PER_PARTITION] * 3 + [None], committed
        assert pieces == 3
    else:
        assert committed == [PER_PARTITION] * PARTITIONS, committed
        assert pieces == PARTITIONS
    store.on_op = None
    assert _runner(broker, store, until_caught_up=True).run() == 0
    assert _final_offsets(store) == {p: list(range(PER_PARTITION)) for p in range(PARTITIONS)}
    assert not [k for k in store.objects if "_staging/" in k]


def test_shutdown_deadline_counts_from_the_stop_request() -> None:
    """Time spent finishing the batch after SIGTERM counts against the bound."""
    broker, store, clock = _broker(), MemoryStore(), FakeClock()
    runner = _runner(broker, store, clock, shutdown_timeout=5.0)
    calls = 0

    def stop_then_stall(_consumer: MemoryConsumer) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            runner.request_stop()
            clock.now += 6.0  # the rest of the loop iteration outlived the bound

    runner.consumer.on_consume = stop_then_stall
    assert runner.run() == 0
    assert [broker.committed_offset("g", "t", p) for p in range(PARTITIONS)] == [None] * PARTITIONS
    assert not [k for k in store.objects if "_staging/" in k]


def test_a_failing_flush_on_shutdown_is_skipped_and_the_others_still_commit() -> None:
    broker, store = _broker(), MemoryStore()
    failed: list[str] = []

    def fail_p0_piece(op: str, key: str) -> None:
        if op == "put_object" and "partition=0/" in key and key.endswith(".piece") and not failed:
            failed.append(key)
            raise TransientStorageError("S3 kept failing")

    store.on_op = fail_p0_piece
    runner = _runner(broker, store)
    _stop_on_second_consume(runner)
    assert runner.run() == 0
    assert [broker.committed_offset("g", "t", p) for p in range(PARTITIONS)] == [None] + [PER_PARTITION] * 3
    assert failed
    assert _runner(broker, store, until_caught_up=True).run() == 0
    assert _final_offsets(store) == {p: list(range(PER_PARTITION)) for p in range(PARTITIONS)}


def test_stop_request_caps_the_retry_budget_of_store_and_commits() -> None:
    class RetryingStore(MemoryStore):
        retry = RetryPolicy(max_elapsed=240.0)

    broker, store, clock = _broker(), RetryingStore(), FakeClock()
    runner = _runner(broker, store, clock, shutdown_timeout=25.0)
    runner.positions.max_elapsed = 60.0  # type: ignore[attr-defined]  # as KafkaGroupPositions
    runner.request_stop()
    assert store.retry.max_elapsed == 25.0
    assert runner.positions.max_elapsed == 25.0  # type: ignore[attr-defined]
    clock.now += 20.0
    runner._cap_retries(5.0)
    assert store.retry.max_elapsed == 5.0 and store.retry.base == RetryPolicy().base


def test_a_flush_giving_up_after_the_stop_request_still_exits_0() -> None:
    """SIGTERM caps the retry budgets, so a flush in the rest of the batch may give up: that is
    the bound working (exit 0), not an S3 failure (exit 4); the other partitions still flush."""
    broker, store = _broker(), MemoryStore()
    runner = _runner(broker, store)
    runner.config = dataclasses.replace(runner.config, row_group_rows=10)
    failed: list[str] = []

    def stop_first(_consumer: MemoryConsumer) -> None:
        runner.request_stop()  # the batch this consume returns is still processed

    def fail_first_piece(op: str, key: str) -> None:
        if op == "put_object" and key.endswith(".piece") and not failed:
            failed.append(key)
            raise TransientStorageError("S3 kept failing (capped by the stop)")

    runner.consumer.on_consume = stop_first
    store.on_op = fail_first_piece
    assert runner.run() == 0
    assert failed
    committed = [broker.committed_offset("g", "t", p) for p in range(PARTITIONS)]
    # the failed partition commits nothing; the others commit what they had buffered when the
    # error ended the batch
    assert committed.count(None) == 1 and all(c for c in committed if c is not None), committed
    store.on_op = None
    assert _runner(broker, store, until_caught_up=True).run() == 0
    assert _final_offsets(store) == {p: list(range(PER_PARTITION)) for p in range(PARTITIONS)}


def test_a_retry_loop_already_running_gives_up_at_the_shutdown_bound() -> None:
    """The S3 outage began before SIGTERM: the flush's retry loop started with the full budget
    (240 s); the stop request's give_up_at ends it at the bound anyway."""
    import threading
    import time

    from consumer.storage import S3Store

    store = S3Store("bucket", endpoint_url="http://127.0.0.1:9", retry=RetryPolicy(base=0.05, cap=0.2))
    attempts = 0

    def outage() -> None:
        nonlocal attempts
        attempts += 1
        raise ConnectionError("S3 unreachable")

    broker = _broker()
    runner = _runner(broker, store, shutdown_timeout=0.5)
    timer = threading.Timer(0.5, runner.request_stop)  # SIGTERM arrives mid-outage
    timer.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(TransientStorageError):
            store._retrying("put_object", outage)
    finally:
        timer.cancel()
    assert time.monotonic() - t0 < 30  # liveness only: without the cap this loop would run 240 s
    assert attempts > 1 and store.give_up_at is not None


def test_an_s3_that_never_answers_at_start_stops_the_run_soon_and_says_what_to_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The run's first S3 request finds nothing listening (a wrong --s3-endpoint-url, or S3 not
    up): it is retried for a short while, as the first requests to Kafka are, not for the 4
    minutes an outage mid-run is waited out, and the run exits 4 naming the endpoint. Nothing is
    read from Kafka."""
    import time

    from consumer import runner as runner_module
    from consumer.errors import EXIT_STORAGE
    from consumer.storage import S3Store

    monkeypatch.setattr(runner_module, "FIRST_CONTACT_S", 1.0)  # 30 s in a run
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")  # signed, so that the request is sent
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    store = S3Store("bucket", endpoint_url="http://127.0.0.1:9", retry=RetryPolicy(base=0.05, cap=0.2))
    runner = _runner(_broker(), store, s3_endpoint_url="http://127.0.0.1:9")
    t0 = time.monotonic()
    with capture_logs() as logs:
        assert runner.run() == EXIT_STORAGE
    assert time.monotonic() - t0 < 30  # liveness only: without the bound this run would take 240 s
    stop = next(e for e in logs if e["event"] == "stopped: S3 error")
    assert stop["error"].startswith("S3 did not answer at start (S3 put_object on s3://bucket kept failing")
    assert "check --s3-endpoint-url (http://127.0.0.1:9)" in stop["error"]
    assert not [e for e in logs if e["event"] == "partitions assigned"]


def test_patience_bounds_retries_only_within_its_block_and_leaves_a_stop_s_bound_alone() -> None:
    import time

    from consumer.storage import S3Store

    def outage() -> None:
        raise ConnectionError("S3 unreachable")

    store = S3Store("bucket", endpoint_url="http://127.0.0.1:9", retry=RetryPolicy(base=0.05, cap=0.1))
    t0 = time.monotonic()
    with store.patience(0.5), pytest.raises(TransientStorageError):
        store._retrying("put_object", outage)
    assert time.monotonic() - t0 < 5  # the 240 s budget, cut to the block's bound
    assert store._patience_until is None and store.give_up_at is None  # nothing left behind
    with store.patience(30.0):
        store.give_up_at = stop = time.monotonic() + 0.5  # a stop request inside it (_cap_retries)
        with pytest.raises(TransientStorageError):
            store._retrying("put_object", outage)
    assert store.give_up_at == stop and time.monotonic() - t0 < 10


def test_a_commit_retry_loop_already_running_gives_up_at_the_shutdown_bound() -> None:
    import threading
    import time

    from confluent_kafka import KafkaError, KafkaException

    from consumer.positions import KafkaGroupPositions, PositionError

    class Unreachable:
        def commit(self, **_: Any) -> None:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))

    positions = KafkaGroupPositions(Unreachable(), max_elapsed=240.0)
    timer = threading.Timer(0.5, lambda: setattr(positions, "give_up_at", time.monotonic()))
    timer.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(PositionError):
            positions.commit("t", 0, 10)
    finally:
        timer.cancel()
    assert time.monotonic() - t0 < 30  # liveness only


def test_a_close_that_hangs_is_abandoned_after_the_deadline_with_everything_committed() -> None:
    """librdkafka can block forever in close() when a rebalance reaches it there (#4041, #4884):
    the run still ends, says so, and tells the command to exit without destroying the client."""
    import threading

    broker, store = _broker(), MemoryStore()
    runner = _runner(broker, store, until_caught_up=True, shutdown_timeout=0.2)
    runner.close_grace = 0.2
    stuck = threading.Event()
    runner.consumer.close = stuck.wait  # never set: close never returns
    try:
        assert runner.run() == 0
        assert runner.exit_without_client
    finally:
        runner.disarm_exit_timer()  # left armed for the command's os._exit; this process goes on
        stuck.set()
    committed = [broker.committed_offset("g", "t", p) for p in range(PARTITIONS)]
    assert committed == [PER_PARTITION] * PARTITIONS
    assert _final_offsets(store) == {p: list(range(PER_PARTITION)) for p in range(PARTITIONS)}


def test_a_close_that_returns_is_not_abandoned() -> None:
    broker, store = _broker(), MemoryStore()
    runner = _runner(broker, store, until_caught_up=True)
    assert runner.run() == 0
    assert not runner.exit_without_client and runner.consumer.closed


def test_a_static_member_of_the_classic_protocol_ends_without_close() -> None:
    """KIP-345: a static member does not leave the group on close, so close changes nothing the
    group sees; it is only where librdkafka can hang. The command exits without it."""
    broker, store = _broker(), MemoryStore()
    runner = _runner(broker, store, until_caught_up=True, kafka_properties={"group.instance.id": "h-0"})
    assert runner.run() == 0
    assert runner.exit_without_client and not runner.consumer.closed
    assert [broker.committed_offset("g", "t", p) for p in range(PARTITIONS)] == [PER_PARTITION] * PARTITIONS


def test_a_static_member_of_kip_848_still_closes() -> None:
    """Under KIP-848's protocol close tells the coordinator the static member left for now."""
    broker, store = _broker(), MemoryStore()
    props = {"group.instance.id": "h-0", "group.protocol": "consumer"}
    runner = _runner(broker, store, until_caught_up=True, kafka_properties=props)
    assert runner.run() == 0
    assert not runner.exit_without_client and runner.consumer.closed


_ROOT = Path(__file__).resolve().parents[2]


def _python(script: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """Run ``script`` in a Python process of its own: what it tests ends that process."""
    return subprocess.run([sys.executable, "-c", script], cwd=_ROOT, capture_output=True, timeout=timeout)

#: A run whose close blocks in C *holding the GIL*, as confluent-kafka's rebalance callback does
#: when librdkafka never answers it inside close (ctypes.PyDLL keeps the GIL during the call).
_CLOSE_HOLDS_THE_GIL = """
import ctypes, sys
from consumer.testing import MemoryStore
from tests.unit.test_shutdown import _broker, _runner
runner = _runner(_broker(), MemoryStore(), until_caught_up=True, shutdown_timeout=0.5)
runner.close_grace = 5.0  # ample time for the close thread to take the GIL first, even under load
runner.exit_timer_margin = 0.5
runner.consumer.close = lambda: ctypes.PyDLL(None).sleep(120)
code = runner.run()
print("run returned", code)
sys.exit(code)
"""


def test_a_close_stuck_holding_the_gil_still_ends_the_process_with_the_runs_status() -> None:
    """No Python code runs again once the close thread holds the GIL: the bound above cannot fire.
    The native exit timer does, with the status the run earned (0: everything was committed)."""
    proc = _python(_CLOSE_HOLDS_THE_GIL, timeout=90)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert b"close did not return" in proc.stderr and b"holds the GIL" in proc.stderr
    assert b"run returned" not in proc.stdout  # the main thread never ran again
    assert b"stopped" in proc.stdout  # said before the close


@pytest.mark.parametrize("cancel", [False, True])
def test_the_exit_timer_ends_the_process_with_its_status_unless_cancelled(cancel: bool) -> None:
    script = (
        "import sys, time\n"
        "from consumer.exit_timer import exit_after\n"
        "disarm = exit_after(0.2, 7, 'timer fired')\n"
        + ("disarm(); disarm()\n" if cancel else "")
        + "time.sleep(1.5)\n"
        "sys.exit(0)\n"
    )
    proc = _python(script)
    assert proc.returncode == (0 if cancel else 7)
    assert (b"timer fired" in proc.stderr) is not cancel


def test_without_the_extension_the_exit_timer_falls_back_to_faulthandler() -> None:
    """It still needs no GIL, but can only exit with status 1 (after every thread's stack)."""
    script = (
        "import time\n"
        "import consumer.exit_timer as et\n"
        "et._native = None\n"
        "et.exit_after(0.2, 7, 'unused')\n"
        "time.sleep(5)\n"
    )
    proc = _python(script)
    assert proc.returncode == 1
    assert b"Timeout" in proc.stderr and b"Thread" in proc.stderr


def test_an_exit_timer_nobody_holds_stays_armed() -> None:
    """The runner drops its handle when the close it guards was abandoned: the timer must still
    fire if the process is then stuck before it exits."""
    script = (
        "import gc, time\n"
        "from consumer.exit_timer import exit_after\n"
        "exit_after(0.2, 9, 'still armed')\n"
        "gc.collect()\n"
        "time.sleep(3)\n"
    )
    proc = _python(script)
    assert proc.returncode == 9 and b"still armed" in proc.stderr


#: A run whose last flush's commit never returns, as a synchronous commit waits for a group
#: coordinator the client cannot reach (its login refused mid-run: 150 s after SIGTERM on the
#: stack, against a bound of 32 s). The wait does not hold the GIL.
_COMMIT_NEVER_RETURNS = """
import sys, threading
from consumer.testing import MemoryStore, at_consume
from tests.unit.test_shutdown import _broker, _runner
runner = _runner(_broker(), MemoryStore(), shutdown_timeout=0.5)
runner.close_grace = 0.5
runner.exit_timer_margin = 0.5
at_consume(runner.consumer, {2: runner.request_stop})  # SIGTERM: the rows held are flushed
runner.consumer.commit = lambda *a, **k: threading.Event().wait()
code = runner.run()
print("run returned", code)
sys.exit(code)
"""


def test_a_flush_blocked_past_the_shutdown_bound_still_ends_the_process_with_the_runs_status() -> None:
    """The retries are capped to the deadline, but one call may block past it: the native exit
    timer bounds the flushes as it bounds the close, and nothing uncommitted was committed."""
    proc = _python(_COMMIT_NEVER_RETURNS, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert b"the shutdown's flushes did not end within" in proc.stderr and b"status 0" in proc.stderr
    assert b"run returned" not in proc.stdout


#: SIGTERM while the loop itself is blocked in a call that does not return (a flush's commit in
#: C, waiting for a broker that stopped answering): Python runs the handler only between
#: bytecodes, and the shutdown never starts. ``Event.wait`` resumes after the handler ran, as such
#: a call goes on.
_LOOP_BLOCKED_AT_SIGTERM = """
import os, signal, sys, threading
from consumer.testing import MemoryStore, at_consume
from tests.unit.test_shutdown import _broker, _runner
runner = _runner(_broker(), MemoryStore(), shutdown_timeout=0.5)
runner.close_grace = 0.5
runner.exit_timer_margin = 0.5
runner.install_signal_handlers()

def blocked():
    os.kill(os.getpid(), signal.SIGTERM)
    threading.Event().wait()

at_consume(runner.consumer, {2: blocked})
code = runner.run()
print("run returned", code)
sys.exit(code)
"""


def test_sigterm_while_the_loop_is_blocked_still_ends_the_process_at_the_bound() -> None:
    """The timer is armed from the signal itself (its wakeup fd), not when the shutdown starts."""
    proc = _python(_LOOP_BLOCKED_AT_SIGTERM, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert b"consumer: still running 2.5s after the stop signal" in proc.stderr, proc.stderr.decode()[-2000:]
    assert b"run returned" not in proc.stdout


#: A stop signal the process sends itself between two polls, through the handlers the CLI installs.
_SIGNAL_AT_CONSUME = """
import os, signal, sys
from consumer.testing import MemoryStore, at_consume
from tests.unit.test_shutdown import PER_PARTITION, _broker, _runner
# as a command started from a terminal has it, or (nohup) ignored: not what the suite inherited
signal.signal(signal.SIGHUP, signal.SIG_IGN if {nohup} else signal.SIG_DFL)
runner = _runner(_broker(), MemoryStore(), until_caught_up=True, batch_size=PER_PARTITION)
runner.install_signal_handlers()
at_consume(runner.consumer, {{2: lambda: os.kill(os.getpid(), signal.{name})}})
sys.exit(runner.run())
"""


@pytest.mark.parametrize(("name", "status"), [("SIGTERM", 143), ("SIGINT", 130), ("SIGHUP", 129)])
def test_every_stop_signal_stops_the_run_through_its_handler(name: str, status: int) -> None:
    """SIGHUP (the terminal or SSH session closed) stops the consumer as SIGTERM and Ctrl-C do:
    the handler flushes and commits, and a job stopped before it finished exits 128 + N. Left at
    its default, SIGHUP ended the process at once, mid-flush (status -1)."""
    proc = _python(_SIGNAL_AT_CONSUME.format(nohup=False, name=name))
    said = proc.stdout + proc.stderr
    assert proc.returncode == status, said.decode()[-2000:]
    assert b"stopped by a signal before the job finished" in said


def test_under_nohup_sighup_stays_ignored_and_the_job_finishes() -> None:
    """``nohup`` starts a command with SIGHUP ignored so that a closed session does not stop it:
    the consumer keeps that promise rather than installing its handler over it."""
    proc = _python(_SIGNAL_AT_CONSUME.format(nohup=True, name="SIGHUP"))
    said = proc.stdout + proc.stderr
    assert proc.returncode == 0, said.decode()[-2000:]
    assert b"stopped by a signal" not in said


# -- a bounded job stopped before it finished ------------------------------------------------
@pytest.mark.parametrize(("signum", "status"), [(15, 143), (2, 130)])
def test_until_caught_up_stopped_by_a_signal_before_it_finished_exits_128_plus_the_signal(
    signum: int, status: int
) -> None:
    """``--until-caught-up`` is a job: 0 means "every partition is committed and final", and a
    Kubernetes Job, an Airflow task or a ``&&`` chain takes it for done. Stopped by SIGTERM (or
    Ctrl-C) before that, it flushes and commits what it holds as any stop does, and exits 128 + N,
    what a shell says of a process the signal ended; it used to exit 0. A rerun finishes the job:
    every record once. A long-running member stopped the same way still exits 0 (its normal end)."""
    broker, store = _broker(), MemoryStore()
    runner = _runner(broker, store, until_caught_up=True, batch_size=PER_PARTITION)  # 1/4 a batch
    at_consume(runner.consumer, {2: lambda: runner.request_stop(signum)})
    with capture_logs() as logs:
        assert runner.run() == status
    said = [e for e in logs if e["event"].startswith("stopped by a signal before the job finished")]
    assert said and said[0]["status"] == status, logs
    assert not _final_offsets(store)  # flushed and committed, not yet final
    assert _runner(broker, store, until_caught_up=True).run() == 0
    assert _final_offsets(store) == {p: list(range(PER_PARTITION)) for p in range(PARTITIONS)}

    unbounded = _runner(_broker(), MemoryStore())
    at_consume(unbounded.consumer, {2: lambda: unbounded.request_stop(signum)})
    assert unbounded.run() == 0


def test_until_caught_up_that_finished_exits_0_whatever_comes_after() -> None:
    broker, store = _broker(), MemoryStore()
    runner = _runner(broker, store, until_caught_up=True)
    assert runner.run() == 0 and runner.finished
    # What the signal's own exit timer would exit with: a signal once the job is done is not an
    # interruption; before, it is.
    assert runner.stop_status(15) == 0
    assert _runner(broker, store, until_caught_up=True).stop_status(15) == 143
    assert _runner(broker, store).stop_status(2) == 0
