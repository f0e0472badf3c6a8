"""Group faults with real member processes: a zombie member (SIGSTOP past the session timeout, then
SIGCONT) and a rebalance storm (members started, SIGKILLed and SIGTERMed at random while records
keep arriving).

Each test ends the same way: stop every member, run one last ``--until-caught-up`` member, then prove
the output with ``checker.prove`` (every offset 0..n-1 of every partition a row of exactly one final
file, values as produced, footers right, the group committed at the end, no staging object left)
and with :func:`consumer.verify.verify`. Each appends a row to the fault table
(``checker.proven``).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from checker import Expected, MissingWriterSchema, Proof, proven
from checker import finish_and_prove as prove_output
from support import (
    FAST_EVICTION,
    Running,
    staging_keys,
    start_consumer,
    unique,
)

from consumer.cli import make_store
from consumer.producer import produce
from consumer.verify import verify

PARTITIONS = 4
# Small row groups and files, flushed at least every second: every member writes all the time, so
# each fault lands between a PUT and a commit, or in the middle of a file, somewhere.
SMALL = ("--row-group-rows", "100", "--file-rows", "500", "--row-group-max-age", "1s", "--batch-size", "100")

NOTICED = (
    "partitions lost: dropped without writing",
    "partition fenced: pausing it until the group settles",
    "partitions revoked",
    "revoked partition already fenced",
)


class Feeder:
    """Produces records ``0, 1, 2, …`` (record ``i`` → partition ``i % PARTITIONS``) in chunks from a
    background thread until stopped; knows exactly how many records each partition received."""

    def __init__(self, bootstrap: str, topic: str, chunk: int, pause: float, seed: int = 0,
                 spread_hours: int = 0) -> None:
        self.bootstrap = bootstrap
        self.spread_hours = spread_hours  # Kafka timestamps over shuffled hours (bucketed layout)
        self.topic = topic
        self.chunk = chunk
        self.pause = pause
        self.rng = random.Random(seed)
        self.total = 0
        self.counts = dict.fromkeys(range(PARTITIONS), 0)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"feeder-{topic}", daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.produce(self.rng.randint(self.chunk // 2, self.chunk))
                self._stop.wait(self.pause)
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def produce(self, n: int) -> None:
        res = produce(
            self.bootstrap,
            self.topic,
            "page_view",
            n,
            partitions=PARTITIONS,
            start=self.total,
            create_topic=False,
            spread_hours=self.spread_hours,
        )
        assert res.count == n, (res.count, n)
        self.total += n
        for p, c in res.partition_counts.items():
            self.counts[p] += c

    def start(self) -> Feeder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)
        assert not self._thread.is_alive(), "producer thread did not stop"
        if self.error is not None:
            raise AssertionError(f"producing failed: {self.error!r}") from self.error


class StallingProxy:
    """A TCP proxy in front of S3 for one member. While the gate is closed, bytes from the member
    are held (not forwarded), so the member's next S3 request hangs half-sent; opening the gate lets
    it reach S3 late — after the group has moved on."""

    def __init__(self, upstream: str) -> None:
        url = urlsplit(upstream)
        self.upstream = (url.hostname or "127.0.0.1", url.port or 80)
        self.held: list[str] = []  # first line of each request that hit the closed gate
        self._gate = threading.Event()
        self._gate.set()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, up, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, gated: bool) -> None:
        with contextlib.suppress(OSError), src, dst:
            while data := src.recv(65536):
                if gated and not self._gate.is_set():
                    self.held.append(data.split(b"\r\n", 1)[0].decode(errors="replace")[:200])
                    self._gate.wait()
                dst.sendall(data)

    def close_gate(self) -> None:
        self._gate.clear()

    def open_gate(self) -> None:
        self._gate.set()

    def close(self) -> None:
        self._gate.set()
        self._server.close()


def owned(events: Sequence[dict[str, Any]]) -> set[str]:
    """The partitions ("topic[p]") a member believes it owns, from its own log."""
    mine: set[str] = set()
    for e in events:
        name = e.get("event")
        if name == "partitions assigned":
            mine |= set(e.get("partitions", []))
        elif name in ("partitions revoked", "partitions lost: dropped without writing"):
            mine -= set(e.get("partitions", []))
        elif name == "partition fenced: pausing it until the group settles":
            mine.discard(f"{e.get('topic')}[{e.get('partition')}]")
        elif name == "fenced partition recovered after rebalance":
            mine.add(f"{e.get('topic')}[{e.get('partition')}]")
    return mine


def durable_partitions(events: Sequence[dict[str, Any]]) -> set[str]:
    return {
        f"{e.get('topic')}[{e.get('partition')}]" for e in events if e.get("event") == "row group durable"
    }


def wait_until(pred: Callable[[], bool], timeout: float, what: str, logs: Sequence[Running] = ()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        for r in logs:
            if r.proc.poll() is not None:
                raise AssertionError(f"member exited ({r.proc.returncode}) before {what}:\n{r.log()[-4000:]}")
        time.sleep(0.2)
    tails = "\n\n".join(f"--- {r.log_path}\n{r.log()[-2500:]}" for r in logs)
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


def reap(members: Sequence[Running]) -> None:
    """Last resort on a failing test: continue and kill our own member processes (by their Popen)."""
    for r in members:
        if r.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(r.proc.pid, signal.SIGCONT)
            r.proc.kill()
        with contextlib.suppress(Exception):
            r.proc.wait(timeout=30)


def finish_and_prove(
    stack: Any,
    s3: Any,
    topic: str,
    group: str,
    prefix: str,
    tmp: Path,
    counts: dict[int, int],
    extra: tuple[str, ...],
    fault: str,
    kind: str,
    spread_hours: int = 0,
    **row: Any,
) -> Proof:
    """One last ``--until-caught-up`` member, then ``checker.prove`` and ``verify``; records the
    scenario's row. A ``--partition-by`` in ``extra`` is passed on to both checks."""
    expected = Expected.plain(topic, "page_view", counts)
    expected.spread_hours = spread_hours
    template = extra[extra.index("--partition-by") + 1] if "--partition-by" in extra else None

    def both() -> Proof:
        try:
            proof = prove_output(
                s3=s3,
                bucket=stack.s3_bucket,
                prefix=prefix,
                bootstrap=stack.kafka_bootstrap,
                group=group,
                expected=expected,
                tmp=tmp,
                args=extra,
            )
        except MissingWriterSchema as exc:
            agrees_with_verify(exc.proof)
            raise
        agrees_with_verify(proof)
        return proof

    def agrees_with_verify(proof: Proof) -> None:
        report = verify(
            make_store(stack.s3_bucket, stack.s3_endpoint),
            prefix.rstrip("/"),
            topic,
            bootstrap_servers=stack.kafka_bootstrap,
            group_id=group,
            partition_by=template,
        )
        assert report.ok, report.to_text()
        assert {p.partition: p.committed for p in report.partitions} == counts, report.to_text()
        assert sum(p.present for p in report.partitions) == sum(counts.values()), report.to_text()
        assert report.files == proof.final_files, report.to_text()

    return proven(both, fault, kind, **row)


@pytest.mark.parametrize("mid_put", [False, True], ids=["frozen", "frozen-mid-s3-request"])
def test_zombie_member_is_fenced_and_corrupts_nothing(
    stack: Any, s3: Any, make_topic: Callable[..., str], unique_prefix: str, tmp_path: Path, mid_put: bool
) -> None:
    """Three members; one is frozen (SIGSTOP) past the session timeout while records keep coming, the
    others take over its partitions and write; then it is thawed (SIGCONT) with rows of its old
    partitions still buffered. It must notice it lost them and not disturb the new owners' output.

    ``mid_put``: the zombie reaches S3 through a :class:`StallingProxy` whose gate is closed just
    before the freeze, so the zombie is frozen in the middle of an S3 request (normally a piece
    PUT) that only reaches S3 after the thaw — a write that lands late, after the new owners wrote
    that range, followed by the zombie's commit attempt."""
    topic = make_topic(partitions=PARTITIONS, prefix="zombie")
    group = unique("g-zombie")
    out = f"s3://{stack.s3_bucket}/{unique_prefix.rstrip('/')}"
    args = (*SMALL, *FAST_EVICTION)
    feeder = Feeder(stack.kafka_bootstrap, topic, chunk=200, pause=0.4, seed=1)
    feeder.produce(1_000)
    feeder.start()
    proxy = StallingProxy(stack.s3_endpoint) if mid_put else None
    zombie_env = {"S3_ENDPOINT_URL": proxy.url} if proxy else None
    members = [start_consumer(topic, group, out, *args, env=zombie_env if i == 0 else None) for i in range(3)]
    t0 = time.monotonic()
    try:
        everything = {f"{topic}[{p}]" for p in range(PARTITIONS)}

        def settled() -> bool:
            sets = [owned(m.events()) for m in members]
            return all(sets) and set().union(*sets) == everything and sum(map(len, sets)) == PARTITIONS

        wait_until(settled, 60, "three members sharing the four partitions", members)
        # The future zombie: a member that is writing its partitions right now.
        zombie = members[0] if proxy else max(members, key=lambda m: len(owned(m.events())))
        lost = owned(zombie.events())
        wait_until(lambda: lost <= durable_partitions(zombie.events()), 30, "zombie writing", members)
        others = [m for m in members if m is not zombie]
        marks = [len(m.events()) for m in others]
        if proxy:
            proxy.close_gate()
            wait_until(lambda: bool(proxy.held), 30, "the zombie's next S3 request", members)

        os.kill(zombie.proc.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        stopped_wall = time.time()
        # What the zombie logged up to the freeze is legitimate (it still owned its partitions,
        # and a row group whose PUT passed before the gate closed may commit in the meantime);
        # everything after this mark happened after the thaw.
        zombie_mark = len(zombie.events())

        def taken_over() -> bool:
            new_events = [e for m, k in zip(others, marks, strict=True) for e in m.events()[k:]]
            return lost <= durable_partitions(new_events) and lost <= set().union(
                *(owned(m.events()) for m in others)
            )

        wait_until(taken_over, 45, "the others taking over the zombie's partitions and writing", others)
        time.sleep(max(0.0, 12 - (time.monotonic() - stopped_at)))  # frozen ≥ 2× the session timeout
        frozen_s = time.monotonic() - stopped_at
        os.kill(zombie.proc.pid, signal.SIGCONT)
        if proxy:
            time.sleep(2)  # the zombie's Kafka client sees its session expired …
            proxy.open_gate()  # … and only then does its held S3 request land

        def noticed() -> bool:
            return any(e.get("event") in NOTICED for e in zombie.events()[zombie_mark:])

        wait_until(noticed, 45, "the zombie noticing it lost its partitions", members)
        time.sleep(4)  # keep producing a bit with the zombie back in the group
        feeder.stop()
        codes = [m.stop(signal.SIGTERM, timeout=90) for m in members]
    finally:
        reap(members)
        if proxy:
            proxy.close()
        with contextlib.suppress(AssertionError):
            feeder.stop()
    assert codes == [0, 0, 0], (codes, [m.log()[-3000:] for m in members])

    after = zombie.events()[zombie_mark:]
    seen = [e["event"] for e in after if e.get("event") in NOTICED]
    assert seen, f"zombie never noticed:\n{zombie.log()[-4000:]}"
    # What the zombie wrote after it was thawed (a late PUT is allowed; a commit cannot succeed).
    late_durable = [
        e
        for e in after
        if e.get("event") == "row group durable" and f"{e['topic']}[{e['partition']}]" in lost
    ]
    # Until it noticed, the zombie must not have committed anything for the partitions it lost.
    first_notice = next(i for i, e in enumerate(after) if e.get("event") in NOTICED)
    # A flush whose PUT and commit began before the freeze may have been accepted by the broker
    # before it (the member still owned the partition then) and logged only after the thaw: only
    # a flush that began after the freeze proves a stale commit.
    stale = [e for e in late_durable if after.index(e) < first_notice and _began_at(e) > stopped_wall]
    assert not stale, f"zombie made a row group durable for a lost partition before noticing: {stale}"

    # Staged objects nobody owns any more (e.g. the zombie's late piece) wait for the next recovery.
    leftover = staging_keys(s3, stack.s3_bucket, unique_prefix)
    proof = finish_and_prove(
        stack,
        s3,
        topic,
        group,
        unique_prefix,
        tmp_path,
        feeder.counts,
        args,
        f"SIGSTOP one of 3 members for {frozen_s:.0f}s (session timeout 6s), then SIGCONT"
        + (f"; frozen inside S3 request {proxy.held[0]!r}, which lands after the thaw" if proxy else ""),
        "zombie member",
        zombie_partitions=sorted(lost),
        zombie_noticed=sorted(set(seen)),
        zombie_row_groups_after_thaw=len(late_durable),
        zombie_errors_after_thaw=[e["error"] for e in after if "error" in e][:5],
        staging_objects_before_final_run=len(leftover),
        seconds_before_final_run=round(time.monotonic() - t0, 1),
    )
    assert proof.records == feeder.total


def _frozen(pid: int) -> bool:
    """Whether the process stopped itself (state 'T' in /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0] == "T"


def test_a_member_frozen_in_its_recovery_leaves_the_new_owner_s_rows_alone(
    stack: Any, s3: Any, make_topic: Callable[..., str], unique_prefix: str, tmp_path: Path
) -> None:
    """A member stops dead in the middle of recovering its assignment (SIGSTOP at the
    ``during_recovery`` point: it has read the committed positions, it has not listed S3 yet),
    past the session timeout. Another member takes every partition over, stages rows past those
    positions and commits them. Then the first one is thawed and goes on with its recovery from
    the positions it read: the new owner's pieces look like strays past them. It must find out
    that the partitions are no longer its own before it deletes anything (it deleted them; the next
    recovery then stopped with status 5, the rows in no file)."""
    topic = make_topic(partitions=PARTITIONS, prefix="frozen-recovery")
    group = unique("g-frozen-recovery")
    out = f"s3://{stack.s3_bucket}/{unique_prefix.rstrip('/')}"
    args = (*SMALL, *FAST_EVICTION)
    everything = {f"{topic}[{p}]" for p in range(PARTITIONS)}
    feeder = Feeder(stack.kafka_bootstrap, topic, chunk=200, pause=0.4, seed=2)
    feeder.produce(1_000)
    members: list[Running] = []
    t0 = time.monotonic()
    try:
        # Every partition staged and committed, no file rolled yet (250 rows each, files of 500).
        first = start_consumer(topic, group, out, *args)
        members.append(first)
        wait_until(lambda: durable_partitions(first.events()) == everything, 90, "the first member writing",
                   members)  # fmt: skip
        assert first.stop(signal.SIGTERM, timeout=90) == 0, first.log()[-3000:]
        zombie = start_consumer(topic, group, out, *args, env={"CONSUMER_FAULT": "during_recovery:1:freeze"})
        members.append(zombie)
        wait_until(lambda: _frozen(zombie.proc.pid), 90, "the member freezing in its recovery", [zombie])
        frozen_at = time.monotonic()
        feeder.start()
        owner = start_consumer(topic, group, out, *args)
        members.append(owner)

        # The owner's row groups start at 250, the positions the frozen member read: past them.
        wait_until(lambda: durable_partitions(owner.events()) == everything, 90,
                   "the new owner writing every partition", [owner])  # fmt: skip
        frozen_s = time.monotonic() - frozen_at
        mark = len(zombie.events())
        os.kill(zombie.proc.pid, signal.SIGCONT)

        def noticed() -> bool:
            return any(e.get("event") in NOTICED for e in zombie.events()[mark:])

        wait_until(noticed, 60, "the thawed member noticing it lost its partitions", [zombie, owner])
        time.sleep(4)  # records keep coming with both members in the group
        feeder.stop()
        codes = [m.stop(signal.SIGTERM, timeout=90) for m in (zombie, owner)]
    finally:
        reap(members)
        with contextlib.suppress(AssertionError, RuntimeError):  # (RuntimeError: never started)
            feeder.stop()
    assert codes == [0, 0], (codes, [m.log()[-3000:] for m in (zombie, owner)])
    after = zombie.events()[mark:]
    fenced = [e for e in after if e.get("event") == "partition fenced: pausing it until the group settles"]
    proof = finish_and_prove(
        stack,
        s3,
        topic,
        group,
        unique_prefix,
        tmp_path,
        feeder.counts,
        args,
        f"SIGSTOP a member inside its recovery (positions read, S3 not listed) for {frozen_s:.0f}s "
        "(session timeout 6s) while another member takes over and writes, then SIGCONT",
        "member frozen mid-recovery",
        fenced_recoveries=len(fenced),
        zombie_errors_after_thaw=[e["error"] for e in after if "error" in e][:5],
        seconds_before_final_run=round(time.monotonic() - t0, 1),
    )
    assert proof.records == feeder.total


BUCKETED = ("--partition-by", "dt={@timestamp:%Y-%m-%d}/hr={@timestamp:%H}", "--max-open-buckets", "3",
            "--bucket-grace", "2h")


@pytest.mark.parametrize("layout", ["plain", "bucketed"])
def test_rebalance_storm(
    stack: Any, s3: Any, make_topic: Callable[..., str], unique_prefix: str, tmp_path: Path, layout: str
) -> None:
    """Up to three members started, SIGKILLed and SIGTERMed at random (seeded) every 2–5 s for 40 s
    (25 s in the bucketed layout) while records arrive continuously; then one last member finishes
    and the output is proven.
    ``bucketed``: the same with --partition-by on records whose timestamps spread over five
    shuffled hours, so every partition feeds several open bucket files at once."""
    seed = 20240611
    rng = random.Random(seed)
    topic = make_topic(partitions=PARTITIONS, prefix="storm")
    group = unique("g-storm")
    out = f"s3://{stack.s3_bucket}/{unique_prefix.rstrip('/')}"
    spread = 5 if layout == "bucketed" else 0
    storm_s = 40 if layout == "plain" else 25  # the bucketed proof reads ~300 files: a shorter storm
    args = (*SMALL, *FAST_EVICTION, *(BUCKETED if spread else ()))
    feeder = Feeder(stack.kafka_bootstrap, topic, chunk=300, pause=0.3, seed=seed,
                    spread_hours=spread).start()
    live: dict[str, Running] = {}
    stopping: dict[str, Running] = {}
    killed: list[Running] = []
    actions: list[str] = []
    serial = 0
    t0 = time.monotonic()

    def start() -> None:
        nonlocal serial
        serial += 1
        name = f"m{serial}"
        live[name] = start_consumer(topic, group, out, *args)
        actions.append(f"{time.monotonic() - t0:.1f}s start {name}")

    try:
        for _ in range(3):
            start()
        while time.monotonic() - t0 < storm_s:
            time.sleep(rng.uniform(2, 5))
            for name, r in list(live.items()):  # a member must never die on its own
                assert r.proc.poll() is None, f"{name} exited {r.proc.returncode}:\n{r.log()[-4000:]}"
            if not live or (len(live) < 3 and rng.random() < 0.5):
                start()
                continue
            name = rng.choice(sorted(live))
            victim = live.pop(name)
            if rng.random() < 0.5:
                victim.proc.send_signal(signal.SIGKILL)
                victim.proc.wait(timeout=30)
                killed.append(victim)
                actions.append(f"{time.monotonic() - t0:.1f}s SIGKILL {name}")
            else:
                victim.proc.send_signal(signal.SIGTERM)  # it shuts down while the storm goes on
                stopping[name] = victim
                actions.append(f"{time.monotonic() - t0:.1f}s SIGTERM {name}")
        feeder.stop()
        for name, r in live.items():
            r.proc.send_signal(signal.SIGTERM)
            stopping[name] = r
            actions.append(f"{time.monotonic() - t0:.1f}s SIGTERM {name} (end)")
        live.clear()
        codes = {name: r.stop(signal.SIGTERM, timeout=90) for name, r in stopping.items()}
        stopped_s = time.monotonic() - t0
    finally:
        reap([*live.values(), *stopping.values(), *killed])
        with contextlib.suppress(AssertionError):
            feeder.stop()
    # A member SIGTERMed before it installed its signal handlers dies of the signal; else it exits 0.
    bad = {n: c for n, c in codes.items() if c not in (0, -signal.SIGTERM)}
    assert not bad, (bad, {n: stopping[n].log()[-3000:] for n in bad})
    members = [*stopping.values(), *killed]
    rebalances = sum(1 for m in members for e in m.events() if e.get("event") == "partitions assigned")
    fenced = sum(
        1
        for m in members
        for e in m.events()
        if e.get("event") in NOTICED[:2] or e.get("event") == NOTICED[3]
    )

    proof = finish_and_prove(
        stack,
        s3,
        topic,
        group,
        unique_prefix,
        tmp_path,
        feeder.counts,
        args,
        f"rebalance storm, seed {seed}: " + "; ".join(actions),
        "members started / SIGKILLed / SIGTERMed at random" + (", bucketed layout" if spread else ""),
        spread_hours=spread,
        members=serial,
        assignments=rebalances,
        lost_or_fenced_events=fenced,
        exit_codes=codes,
        seconds_storm_and_stop=round(stopped_s, 1),
    )
    assert proof.records == feeder.total


def _began_at(event: dict[str, Any]) -> float:
    """Wall-clock start of a 'row group durable' flush: its log time minus its encode, PUT and
    commit durations (structlog's ISO timestamp is when the commit's reply was handled)."""
    logged = datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()
    return logged - (float(event.get("encode_ms", 0)) + float(event.get("put_commit_ms", 0))) / 1000
