"""Infrastructure outages while the consumer runs: S3 down, a flaky network path to S3, S3 answering
every write with ``503 SlowDown``, a Kafka broker restart, and a broker that stops answering at a
SIGTERM. Real processes on a private stack
(see conftest.py ``private_stack``), so stopping a service disturbs nobody else.

After each scenario the consumer is stopped, a final ``--until-caught-up`` run finishes the work,
and ``checker.prove`` reads every final file back: every offset a row of exactly one final file,
values as produced, footers right, the group committed at the end, no stray staging object. When
the background producer failed part-way (and retried), what the topic holds is read back from
Kafka and every value must still be byte for byte one of the produced records. Each scenario
appends a row to the fault table (``checker.proven``).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from checker import Expected, Proof, finish_and_prove, prove, proven
from faultproxy import FaultProxy
from s3proxy import S3Proxy
from support import (
    FAST_EVICTION,
    Running,
    count,
    dev_stack_impl,
    run_consumer,
    start_consumer,
    static_member,
    stop_reason,
    unique,
)

from consumer.cli import settled_heap
from consumer.producer import produce
from consumer.storage import PutOutcome, RetryPolicy, S3Store, TransientStorageError

if TYPE_CHECKING:  # the fixture's class; "conftest" may name tests/conftest.py at run time
    from conftest import PrivateStack

PARTITIONS = 2
SMALL = (
    "--row-group-rows",
    "300",
    "--row-group-max-age",
    "1s",
    "--file-rows",
    "1500",
    "--batch-size",
    "250",
)
RETRY = "S3 request failed, retrying"


# -- helpers ------------------------------------------------------------------------------------


@dataclass
class BackgroundProducer:
    """Produces bursts of page_view records (indices continuing where the last burst stopped)
    until stopped or ``limit`` is reached. Errors are kept, not raised, so a broker outage shows
    up as an error list the test can inspect."""

    bootstrap: str
    topic: str
    start: int
    burst: int = 200
    pause_s: float = 0.2
    limit: int = 6_000
    produced: int = 0
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set() and self.produced < self.limit:
            try:
                produce(
                    self.bootstrap,
                    self.topic,
                    "page_view",
                    self.burst,
                    partitions=PARTITIONS,
                    start=self.start + self.produced,
                    create_topic=False,
                )
                self.produced += self.burst
            except Exception as exc:  # ProduceError or worse; partial bursts: the topic is the truth
                self.errors.append(f"{type(exc).__name__}: {exc}")
                self._stop.wait(1.0)
                continue
            self._stop.wait(self.pause_s)

    def start_thread(self) -> BackgroundProducer:
        self._thread = threading.Thread(target=self._run, name="bg-producer", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 150) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            assert not self._thread.is_alive(), "background producer did not stop"


def proc_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def stays_up(running: Running, seconds: float, what: str) -> list[int]:
    """Watch the consumer for ``seconds`` (``what``: while what lasts): it must stay up. Its RSS
    in kB, every half second."""
    samples: list[int] = []
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        assert running.proc.poll() is None, f"consumer died {what}:\n{running.log()[-4000:]}"
        samples.append(rss_kb(running.proc.pid))
        time.sleep(0.5)
    return samples


@dataclass(frozen=True)
class Scenario:
    """One scenario's own topic, group and output prefix, and the consumer's flags."""

    topic: str
    group: str
    prefix: str
    bucket: str
    args: tuple[str, ...]

    @classmethod
    def new(cls, ps: PrivateStack, name: str, args: tuple[str, ...]) -> Scenario:
        return cls(unique(name), unique("g"), f"tests/{unique(name)}/", ps.bucket, args)

    @property
    def out(self) -> str:
        return f"s3://{self.bucket}/{self.prefix.rstrip('/')}"


def finish_and_verify(
    ps: PrivateStack,
    s3: Any,
    sc: Scenario,
    *,
    fault: str,
    kind: str,
    tmp: Path,
    produced: int,
    producer_errors: list[str],
    env: dict[str, str] | None = None,
    final_run: bool = True,
) -> Proof:
    """Final ``--until-caught-up`` run (unless ``final_run`` is False: the caller already ran
    one), then ``checker.prove`` and a fault-table row. ``produced``: records 0..produced-1 were
    acknowledged; with ``producer_errors`` the topic may also hold retried ones, so what it holds
    is read back (every value must be one of the records up to the last one attempted)."""
    topic = sc.topic
    if producer_errors:
        expected = Expected.from_topic(
            ps.bootstrap, topic, "page_view", PARTITIONS, range(produced + BackgroundProducer.burst)
        )
    else:
        expected = Expected.from_topic(ps.bootstrap, topic, "page_view", PARTITIONS, range(produced))
        plain = Expected.plain(topic, "page_view", {p: len(o) for p, o in expected.good.items()})
        assert expected.records == produced and expected.good == plain.good, (
            "with no producer error the topic must hold records 0..n-1 at i % P, i // P"
        )
    common: dict[str, Any] = {
        "s3": s3,
        "bucket": ps.bucket,
        "prefix": sc.prefix,
        "bootstrap": ps.bootstrap,
        "group": sc.group,
        "expected": expected,
        "tmp": tmp,
    }
    if final_run:
        return proven(
            lambda: finish_and_prove(**common, args=sc.args, env=env or ps.consumer_env(), timeout=180),
            fault,
            kind,
            producer_errors=len(producer_errors),
        )
    return proven(lambda: prove(**common), fault, kind, producer_errors=len(producer_errors))


def stop_running(running: Running, timeout: float = 90) -> int:
    rc = running.stop(timeout=timeout)
    assert rc == 0, f"consumer exited {rc} on SIGTERM:\n{running.log()[-4000:]}"
    return rc


def retry_kinds(events: list[dict[str, Any]]) -> dict[str, int]:
    """How often each (S3 operation, error type) was retried, e.g. {"put_object/ConnectionClosedError": 3}."""
    out: dict[str, int] = {}
    for e in events:
        if e.get("event") == RETRY:
            k = f"{e.get('op')}/{e.get('error')}"
            out[k] = out.get(k, 0) + 1
    return out


def durable(events: list[dict[str, Any]]) -> int:
    return count(events, "row group durable")


# -- 1. S3 outage -------------------------------------------------------------------------------


def test_s3_outage_consumer_waits_bounded_then_resumes(private_stack: PrivateStack, tmp_path: Path) -> None:
    ps = private_stack
    s3 = ps.s3_client()
    sc = Scenario.new(ps, "s3-outage", (*SMALL, *static_member()))
    topic, group, out, args = sc.topic, sc.group, sc.out, sc.args
    first = produce(ps.bootstrap, topic, "page_view", 1_000, partitions=PARTITIONS)
    bg = BackgroundProducer(ps.bootstrap, topic, start=first.count, limit=4_000).start_thread()
    running = start_consumer(topic, group, out, *args, env=ps.consumer_env())
    try:
        running.wait_for(lambda ev: durable(ev) >= 3, timeout=60, what="row groups durable before outage")
        s3_pid = ps.terminate("s3")
        outage_start = time.monotonic()
        # longer than one retry cycle (cap 10 s)
        samples = stays_up(running, 18, "during the S3 outage")
        retries_during = count(running.events(), RETRY)
        assert retries_during >= 1, f"no '{RETRY}' during the outage:\n{running.log()[-3000:]}"
        durable_at_restart = durable(running.events())
        outage_s = time.monotonic() - outage_start
        restart_s = ps.up()  # restarts only what is down: SeaweedFS
        new_pid = ps.pid("s3")
        assert new_pid != s3_pid and proc_alive(new_pid), "dev/stack up did not restart SeaweedFS"
        running.wait_for(
            lambda ev: durable(ev) > durable_at_restart,
            timeout=60,
            what="a row group durable after the restart",
        )
        bg.stop()
        stop_running(running)
    finally:
        bg.stop()
        if running.proc.poll() is None:
            running.stop()
    retries_total = count(running.events(), RETRY)
    first_kb, max_kb = samples[0], max(samples)
    print(
        f"S3 outage: {len(samples)} RSS samples, first {first_kb // 1024} MB, max {max_kb // 1024} MB, "
        f"last {samples[-1] // 1024} MB; retries logged {retries_during} during / {retries_total} total; "
        f"SeaweedFS restart {restart_s:.1f}s; producer errors {len(bg.errors)}; "
        f"retried {retry_kinds(running.events())}"
    )
    assert max_kb < 600 * 1024, f"RSS reached {max_kb // 1024} MB during the outage"
    assert max_kb <= first_kb * 1.5, (
        f"RSS grew from {first_kb // 1024} to {max_kb // 1024} MB during the outage"
    )
    finish_and_verify(
        ps,
        s3,
        sc,
        fault=f"S3 (SeaweedFS) stopped {outage_s:.0f}s (+{restart_s:.0f}s restart)",
        kind="S3 outage",
        tmp=tmp_path,
        produced=first.count + bg.produced,
        producer_errors=bg.errors,
    )


# -- 2. flaky network to S3 ---------------------------------------------------------------------


def test_s3_through_fault_injecting_proxy(private_stack: PrivateStack, tmp_path: Path) -> None:
    ps = private_stack
    ps.up()  # idempotent; heals the stack if an earlier test left something down
    s3 = ps.s3_client()
    sc = Scenario.new(ps, "s3-proxy", (*SMALL, *static_member()))
    topic, group, out, args = sc.topic, sc.group, sc.out, sc.args
    res = produce(ps.bootstrap, topic, "page_view", 4_000, partitions=PARTITIONS)
    with FaultProxy(ps.s3_port, fault_rate=0.25, streak=3, seed=20240611, max_lifetime_s=240) as proxy:
        t0 = time.monotonic()
        done = run_consumer(topic, group, out, *args, env=ps.consumer_env(proxy.url), timeout=200)
        elapsed = time.monotonic() - t0
        counts = proxy.counts
    log = done.stdout + done.stderr
    retries = log.count(RETRY)
    kinds = retry_kinds(
        [json.loads(line) for line in log.splitlines() if line.startswith("{") and RETRY in line]
    )
    print(
        f"fault proxy: {counts}; consumer run {elapsed:.1f}s, rc {done.returncode}, "
        f"{retries} retries logged {kinds}"
    )
    assert done.returncode == 0, (
        f"consumer failed behind the fault proxy (rc {done.returncode}):\n{log[-5000:]}"
    )
    assert (
        proxy.injected >= 5
        and counts.get("drop", 0) + counts.get("reset", 0) + counts.get("truncate", 0) >= 3
    ), f"too few faults injected: {counts}"
    assert retries >= 1, "faults were injected but the consumer logged no retry"
    finish_and_verify(
        ps,
        s3,
        sc,
        fault=f"TCP proxy, 25% faulty requests in streaks of 3 {counts}",
        kind="flaky S3 network",
        tmp=tmp_path,
        produced=res.count,
        producer_errors=[],
        final_run=False,
    )


# -- 3. S3 refusing writes (503 SlowDown) -------------------------------------------------------


def test_refused_writes_keep_no_copy_of_the_body_between_attempts(
    private_stack: PrivateStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every write answered ``503 SlowDown``: what a refused attempt allocated (aiohttp's copy of
    the body, held in a reference cycle through s3fs's error) is freed before the next attempt,
    with the collector's thresholds a run sets (``settled_heap``). Before, each refused attempt
    kept one more copy: an S3 that refused a consumer's writes for a minute took it past its
    memory bound (docs/benchmarks.md, twentieth pass)."""
    ps = private_stack
    ps.up()
    for k, v in ps.consumer_env().items():
        monkeypatch.setenv(k, v)
    body = os.urandom(4 << 20)
    key = f"tests/{unique('refused')}/piece.parquet"
    attempts: list[float] = []
    with S3Proxy(ps.s3_port) as proxy:
        store = S3Store(
            ps.bucket,
            endpoint_url=proxy.url,
            retry=RetryPolicy(base=0.01, cap=0.02, max_elapsed=6.0),
            on_retry=lambda op, exc, delay: attempts.append(delay),
        )
        store.connect()
        proxy.refuse()
        with settled_heap(batch_size=5_000):
            tracemalloc.start()
            try:
                with pytest.raises(TransientStorageError, match="kept failing"):
                    store.create(key, body)
                held, _ = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
        refused = proxy.refused
        proxy.accept()
        created = store.create(key, body)
    print(
        f"refused writes: {refused} requests refused, {len(attempts)} retries, "
        f"{held / 1e6:.1f} MB still held after them"
    )
    # An attempt of ours is two requests: botocore retries a 503 once itself, after up to a second.
    assert len(attempts) >= 3, f"too few refused attempts: {len(attempts) + 1} ({refused} requests)"
    # The last attempt's garbage is left for the caller's next collection: at most one copy.
    assert held < 1.5 * len(body), (
        f"{held / 1e6:.1f} MB held after {refused} refused attempts of a {len(body) / 1e6:.1f} MB body"
    )
    assert created.outcome is PutOutcome.CREATED
    assert store.get(key) == body


def test_s3_refusing_writes_consumer_retries_then_finishes(
    private_stack: PrivateStack, tmp_path: Path
) -> None:
    ps = private_stack
    ps.up()
    s3 = ps.s3_client()
    sc = Scenario.new(ps, "s3-refusing", (*SMALL, *static_member()))
    topic, group, out, args = sc.topic, sc.group, sc.out, sc.args
    first = produce(ps.bootstrap, topic, "page_view", 1_500, partitions=PARTITIONS)
    with S3Proxy(ps.s3_port) as proxy:
        running = start_consumer(topic, group, out, *args, env=ps.consumer_env(proxy.url))
        try:
            running.wait_for(
                lambda ev: durable(ev) >= 2, timeout=60, what="row groups durable before refusals"
            )
            proxy.refuse()
            refused_at = time.monotonic()
            second = produce(
                ps.bootstrap, topic, "page_view", 1_500, partitions=PARTITIONS, start=first.count
            )
            left = max(5.0, 15 - (time.monotonic() - refused_at))  # at least 5 s, however slow producing was
            samples = stays_up(running, left, "while S3 refused writes")
            refused_s = time.monotonic() - refused_at
            retries_during = count(running.events(), RETRY)
            durable_at_accept = durable(running.events())
            refused = proxy.refused
            assert refused >= 2 and retries_during >= 1, (
                f"{refused} writes refused, {retries_during} retries logged:\n{running.log()[-3000:]}"
            )
            proxy.accept()
            running.wait_for(
                lambda ev: durable(ev) > durable_at_accept,
                timeout=60,
                what="a row group durable once S3 accepted writes again",
            )
            stop_running(running)
        finally:
            if running.proc.poll() is None:
                running.stop()
    first_kb, max_kb = samples[0], max(samples)
    print(
        f"S3 refusing writes {refused_s:.0f}s: {refused} writes refused, {retries_during} retries logged, "
        f"retried {retry_kinds(running.events())}; RSS first {first_kb // 1024} MB, max {max_kb // 1024} MB"
    )
    assert max_kb <= first_kb * 1.5, (
        f"RSS grew from {first_kb // 1024} to {max_kb // 1024} MB while S3 refused writes"
    )
    finish_and_verify(
        ps,
        s3,
        sc,
        fault=f"S3 answered 503 SlowDown to every write for {refused_s:.0f}s ({refused} refused)",
        kind="S3 refusing writes",
        tmp=tmp_path,
        produced=first.count + second.count,
        producer_errors=[],
    )


# -- 4. broker restart --------------------------------------------------------------------------


def test_kafka_broker_restart(private_stack: PrivateStack, tmp_path: Path) -> None:
    ps = private_stack
    ps.up()
    s3 = ps.s3_client()
    # Dynamic membership here: with group.instance.id set, the restarted coordinator fences the
    # (only) member with FENCED_INSTANCE_ID, which librdkafka raises as a fatal error (reported).
    sc = Scenario.new(ps, "broker", SMALL)
    topic, group, out, args = sc.topic, sc.group, sc.out, sc.args
    first = produce(ps.bootstrap, topic, "page_view", 1_000, partitions=PARTITIONS)
    bg = BackgroundProducer(ps.bootstrap, topic, start=first.count, limit=3_000).start_thread()
    running = start_consumer(topic, group, out, *args, env=ps.consumer_env())
    try:
        running.wait_for(lambda ev: durable(ev) >= 3, timeout=60, what="row groups durable before restart")
        kafka_pid = ps.terminate("kafka")
        down_at = time.monotonic()
        # A few seconds with the broker gone (waiting, not asserting on time).
        stays_up(running, 5, "with the broker down")
        down_s = time.monotonic() - down_at
        restart_s = ps.up()
        new_pid = ps.pid("kafka")
        assert new_pid != kafka_pid and proc_alive(new_pid), "dev/stack up did not restart Kafka"
        durable_at_restart = durable(running.events())
        running.wait_for(
            lambda ev: durable(ev) > durable_at_restart,
            timeout=90,
            what="a row group durable after the restart",
        )
        bg.stop()
        stop_running(running)
    finally:
        bg.stop()
        if running.proc.poll() is None:
            running.stop()
    events = running.events()
    kafka_errors = count(events, "kafka client error")
    fenced = count(events, "partition fenced: pausing it until the group settles")
    print(
        f"broker restart: broker down {down_s:.0f}s + restart {restart_s:.1f}s; "
        f"consumer logged {kafka_errors} kafka client errors, {fenced} fenced; "
        f"producer errors {len(bg.errors)} {bg.errors[:1]}"
    )
    finish_and_verify(
        ps,
        s3,
        sc,
        fault="Kafka broker SIGTERM + restart",
        kind="broker restart",
        tmp=tmp_path,
        produced=first.count + bg.produced,
        producer_errors=bg.errors,
    )


# -- 4b. a broker certificate renewed by a CA the client does not trust --------------------------


@pytest.mark.parametrize("side", ["broker", "client"])
def test_a_certificate_renewed_by_a_ca_the_other_side_does_not_trust_stops_the_run_with_status_2(
    private_stack: PrivateStack, tmp_path: Path, side: str
) -> None:
    """An operator moves the cluster to a new CA before every client follows; a broker takes its
    new keystore or truststore when it restarts. ``broker``: the broker's certificate is renewed
    by the new CA, which the client does not trust yet (TLS listener: "certificate verify
    failed"). ``client``: on the mutual-TLS listener the broker now trusts only client
    certificates of the new CA ("alert bad certificate"). Either way the run reconnects and every
    handshake fails the same way, which librdkafka retries for good: the member idled, read nothing
    and said so only in warnings. Now it stops with status 2 naming the setting to change, without
    a flush (no commit could follow: its rows are consumed again), and a run set up for the new CA
    exports every offset once, the rows of the first run included."""
    ps = private_stack
    ps.up()
    impl = dev_stack_impl()
    tls = ps.stack_dir / "tls"
    renewal = tmp_path / "renewal"
    renewed_ca = impl.make_ca(renewal, "renewed")
    old_ca = tmp_path / "old-ca.pem"  # the stack's CA as the run started with it
    old_ca.write_bytes(Path(ps.settings["KAFKA_SSL_CA_LOCATION"]).read_bytes())
    if side == "broker":
        swap = {tls / impl.TLS_BROKER_KEYSTORE:
                impl.issue_broker_keystore(renewal, "renewed", impl.TLS_BROKER_KEYSTORE).read_bytes()}
        both = tmp_path / "both-cas.pem"
        both.write_text(old_ca.read_text() + renewed_ca.read_text())
        listener = ("--bootstrap-servers", ps.settings["KAFKA_SSL_BOOTSTRAP_SERVERS"],
                    "-X", "security.protocol=SSL")
        before = (*listener, "-X", f"ssl.ca.location={old_ca}")
        after = (*listener, "-X", f"ssl.ca.location={both}")
        refusal, setting = "this client does not trust the Kafka broker's certificate (", "ssl.ca.location"
    else:
        swap = {tls / f"{impl.TLS_CA}.pem": renewed_ca.read_bytes()}  # the listener's truststore
        renewed_client = impl.issue_certificate(renewal, "renewed", "client", impl.TLS_CLIENT_CN)
        listener = ("--bootstrap-servers", ps.settings["KAFKA_MTLS_BOOTSTRAP_SERVERS"],
                    "-X", "security.protocol=SSL", "-X", f"ssl.ca.location={old_ca}")
        before = (*listener, "-X", f"ssl.certificate.location={tls / 'client.pem'}",
                  "-X", f"ssl.key.location={tls / 'client.key'}")
        after = (*listener, "-X", f"ssl.certificate.location={renewed_client}",
                 "-X", f"ssl.key.location={renewed_client.with_suffix('.key')}")
        refusal, setting = "the Kafka broker refused this client's certificate (", "ssl.certificate.location"
    originals = {path: path.read_bytes() for path in swap}
    sc = Scenario.new(ps, f"tls-renewal-{side}", (*SMALL, *after, *FAST_EVICTION))
    first = produce(ps.bootstrap, sc.topic, "page_view", 1_000, partitions=PARTITIONS)
    running = start_consumer(sc.topic, sc.group, sc.out, *SMALL, *before, *FAST_EVICTION,
                             env=ps.consumer_env())
    try:
        running.wait_for(lambda ev: durable(ev) >= 3, timeout=60, what="rows durable before the renewal")
        ps.terminate("kafka")
        for path, data in swap.items():
            path.write_bytes(data)
        ps.up()
        back = time.monotonic()
        then = produce(ps.bootstrap, sc.topic, "page_view", 600, partitions=PARTITIONS, start=first.count,
                       create_topic=False)
        assert running.proc.wait(timeout=90) == 2, running.log()[-4000:]
        waited = time.monotonic() - back
        said = stop_reason(running.log())
        assert said.startswith(refusal) and setting in said, said
        print(f"TLS renewal ({side}): stopped with status 2 {waited:.1f}s after the broker came back")
        finish_and_verify(ps, ps.s3_client(), sc, fault=f"the cluster moved to a new CA, the {side}'s "
                          "certificate first (broker restart)", kind="broker restart", tmp=tmp_path,
                          produced=first.count + then.count, producer_errors=[])
    finally:
        if running.proc.poll() is None:
            running.stop()
        if any(path.read_bytes() != data for path, data in originals.items()):
            ps.terminate("kafka")  # the module's other tests meet the stack as it was
            for path, data in originals.items():
                path.write_bytes(data)
            ps.up()


# -- 5. a server that stops answering at SIGTERM -------------------------------------------------
@pytest.mark.parametrize(("frozen", "rows"), [("kafka", "held"), ("s3", "held"), ("kafka", "flushing")])
def test_a_server_that_stops_answering_cannot_hold_a_sigterm_past_its_bound(
    private_stack: PrivateStack, tmp_path: Path, frozen: str, rows: str
) -> None:
    """The broker or the S3 server is frozen (SIGSTOP: its connections stay open and nothing
    answers, as with a host in a long pause or a network that drops packets), then the consumer
    gets SIGTERM. With rows ``held`` (no row group due), the shutdown flushes them: the flush's
    synchronous commit waits for the coordinator, or its PUT for an answer (60 s read timeout).
    With rows ``flushing``, the poll loop's own flush is blocked in its commit when the signal
    comes, so Python does not even run the handler. Both broker cases were still running 120 s
    after the SIGTERM (--shutdown-timeout 25 s). Now an exit timer ends the process at the bound
    with status 0. Thawed, a run exports every record exactly once."""
    ps = private_stack
    ps.up()
    s3 = ps.s3_client()
    timeout, over = 5.0, 8.0  # --shutdown-timeout; the timers' grace (Runner._bound_from_the_signal)
    age = "10m" if rows == "held" else "1s"
    args = ("--row-group-max-age", age, "--shutdown-timeout", f"{timeout:g}s", "--batch-size", "250",
            *FAST_EVICTION)
    sc = Scenario.new(ps, f"frozen-{frozen}", args)
    produced = produce(ps.bootstrap, sc.topic, "page_view", 2_000, partitions=PARTITIONS).count
    running = start_consumer(sc.topic, sc.group, sc.out, *sc.args, env=ps.consumer_env())
    server = ps.pid(frozen)
    try:
        running.wait_for(lambda ev: count(ev, "partitions assigned") >= 1, timeout=60, what="assignment")
        stays_up(running, 3, "reading 2,000 records")  # held: no row group is due for 10 minutes
        if rows == "flushing":  # rows the next flush (within 1 s) takes, and commits, once frozen
            produced += produce(ps.bootstrap, sc.topic, "page_view", 500, partitions=PARTITIONS,
                                start=produced, create_topic=False).count
            time.sleep(0.3)
        os.killpg(server, signal.SIGSTOP)
        try:
            time.sleep(1 if rows == "held" else 3)
            running.proc.send_signal(signal.SIGTERM)
            stopped = time.monotonic()
            status = running.proc.wait(timeout=90)
            took = time.monotonic() - stopped
        finally:
            os.killpg(server, signal.SIGCONT)
    finally:
        if running.proc.poll() is None:
            running.stop()
    assert status == 0, running.log()[-4000:]
    assert took < timeout + over + 5, f"{took:.1f}s after SIGTERM:\n{running.log()[-4000:]}"
    said = "the shutdown's flushes did not end within" if rows == "held" else "after the stop signal"
    assert said in running.log(), running.log()[-4000:]
    print(f"{frozen} frozen, rows {rows}: the process ended {took:.1f}s after SIGTERM "
          f"(bound {timeout + over:g}s)")
    what = "Kafka broker" if frozen == "kafka" else "S3 server"
    finish_and_verify(ps, s3, sc, fault=f"{what} frozen (SIGSTOP) at SIGTERM, rows {rows}",
                      kind=f"{frozen} frozen", tmp=tmp_path, produced=produced, producer_errors=[])


pytestmark = [pytest.mark.stack, pytest.mark.slow]
