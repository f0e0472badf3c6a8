"""Operating a long-running consumer: Prometheus metrics, health endpoints and the stall alarm.

Every metric this process exports is defined here, in one custom :class:`CollectorRegistry` per
:class:`Observer` (never the global registry, so tests build fresh ones). Almost everything is read
*at scrape time* from counters the runner, the workers and the store keep anyway (``store.stats``,
the workers' positions and buffers, :class:`PartitionCounters`), so the hot path pays nothing: the
runner counts records per worker with two integer additions, and the only metric pushed as an
event is the commit latency histogram (once per row group). A scrape never calls the Kafka client:
confluent-kafka held a scrape's ``get_watermark_offsets`` back while the loop thread sat in
``consume()`` (1-12 s a scrape on an idle member, past Prometheus's 10 s scrape timeout), so the
loop notes each partition's log end offset and read-past position itself
(``Runner._note_kafka_view``).

HTTP (``--metrics-port``, off by default), one small threaded server:

* ``/metrics`` — Prometheus text format.
* ``/healthz`` — liveness: 200 while the poll loop iterated (or S3 requests were attempted) within
  :data:`LIVENESS_SECONDS`; 503 means the loop is wedged and a restart is the cure.
* ``/readyz`` — readiness: 200 when the loop runs, every assigned partition is recovered, the last
  commit attempt succeeded, S3 is not failing, no partition holds records back for the schema
  registry, every subscribed topic exists and nothing is stalled; else 503 with the reasons.

The stall alarm (:meth:`Observer.check`, run every second by a watchdog thread even without a
metrics port): records that wait longer than ``--row-group-max-age`` + ``--stall-timeout`` without
becoming durable and committed mean the consumer is stalled (S3 or the group coordinator keeps
failing, or the memory budget is pinned). Then an error is logged every interval, the
``kafka_parquet_stalled`` gauge is 1 and ``/readyz`` answers 503; once they waited
``--row-group-max-age`` + ``--stall-exit`` the process exits with status 7
(:data:`consumer.errors.EXIT_STALLED`) at once — like ``kill -9``, which the protocol is built
for: everything committed is durable, the rest is consumed again after the restart.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from consumer import log as logmod
from consumer.errors import EXIT_STALLED

if TYPE_CHECKING:
    from consumer.runner import Runner

PREFIX = "kafka_parquet_"

#: Liveness: the poll loop (or, inside a long S3 retry, the store) showed life this recently.
LIVENESS_SECONDS = 120.0
#: Readiness: the poll loop iterated this recently (a flush or roll blocked on S3 holds it).
READY_LOOP_SECONDS = 30.0
#: Readiness: S3 requests have been failing (none succeeded since) for this long.
S3_FAILING_SECONDS = 10.0

#: Dead-letter reason classes: the label values of ``kafka_parquet_dead_letters_total``.
REASONS = (
    "tombstone",
    "bad_framing",
    "unknown_schema",
    "unmappable_schema",
    "unrepresentable_value",
    "malformed",
    "other",
)

COMMIT_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)


def reason_class(reason: str) -> str:
    """The fixed class of a dead letter's free-text reason (see :data:`REASONS`)."""
    r = reason.lower()
    if "tombstone" in r:
        return "tombstone"
    if "confluent wire format" in r or "magic" in r:
        return "bad_framing"
    if "unknown schema id" in r:
        return "unknown_schema"
    if "cannot be mapped" in r or "cannot be used" in r or "not an avro record schema" in r:
        return "unmappable_schema"
    if "not representable" in r:
        return "unrepresentable_value"
    if "malformed" in r or "not a record" in r or "trailing bytes" in r:
        return "malformed"
    return "other"


@dataclass(slots=True)
class PartitionCounters:
    """Monotonic per-partition counts for the whole process life. They live in the process-wide
    :class:`~consumer.worker.SharedState`, so a partition revoked and assigned again keeps counting
    where it was (a counter must never go down). Written by the loop thread, read by scrapes."""

    records: int = 0  # records handed to the worker (the runner adds them per record)
    bytes: int = 0  # their Avro value bytes
    rows: int = 0  # rows made durable and committed
    row_groups: int = 0
    row_group_bytes: int = 0  # bytes of the staged pieces
    commits: int = 0
    files: int = 0  # files rolled (made final)
    file_bytes: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)  # reason class → count

    def durable(self, rows: int, size: int) -> None:
        self.rows += rows
        self.row_groups += 1
        self.row_group_bytes += size

    def rolled(self, size: int) -> None:
        self.files += 1
        self.file_bytes += size

    def dead(self, reasons: Iterable[str]) -> None:
        self.dead_letters.update(reason_class(r) for r in reasons)


@dataclass(frozen=True)
class Health:
    alive: bool
    ready: bool
    stalled: bool
    reasons: tuple[str, ...]  # why not ready (or not alive), one line each


class _ObservedPositions:
    """Wraps the runner's position store: commit outcomes and the commit latency, no other change."""

    def __init__(self, inner: Any, observer: Observer) -> None:
        self._inner = inner
        self._observer = observer

    def committed(self, topic: str, partition: int) -> int | None:
        out: int | None = self._inner.committed(topic, partition)
        return out

    def note(self, topic: str, partition: int) -> str:
        out: str = self._inner.note(topic, partition)
        return out

    def commit(self, topic: str, partition: int, position: int, note: str = "") -> None:
        try:
            self._inner.commit(topic, partition, position, note)
        except BaseException as exc:
            self._observer._commit_failed(exc)
            raise
        self._observer._commit_done(topic, partition)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # e.g. the runner capping ``max_elapsed`` at shutdown must reach the real store
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._inner, name, value)


class Observer:
    """Metrics, health and the stall watchdog of one :class:`~consumer.runner.Runner`.

    Create it after the runner and before ``runner.run()`` (it wraps ``runner.positions``), then
    :meth:`start` it; :meth:`stop` at the end.
    """

    def __init__(
        self,
        runner: Runner,
        *,
        registry: CollectorRegistry | None = None,
        port: int | None = None,
        host: str = "0.0.0.0",
        stall_timeout: float | None = None,
        stall_exit: float | None = None,
        exit: Callable[[int], Any] = os._exit,
    ) -> None:
        self.runner = runner
        cfg = runner.config
        self.stall_timeout = cfg.stall_timeout if stall_timeout is None else stall_timeout
        self.stall_exit = cfg.stall_exit if stall_exit is None else stall_exit
        self.port = port
        self.host = host
        self._exit = exit
        self.clock = runner.clock
        self.log = logmod.get("consumer.metrics")
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.commit_latency = Histogram(
            "commit_latency_seconds",
            "Seconds from the first record buffered to the commit that made it durable",
            ["topic"],
            namespace="kafka_parquet",
            buckets=COMMIT_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.commit_failing_since: float | None = None
        self.commit_error: str | None = None
        self.last_commit_at: float | None = None
        self.stalled_since: float | None = None
        self._last_stall_log = float("-inf")
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server: ThreadingHTTPServer | None = None
        runner.positions = _ObservedPositions(runner.positions, self)
        self.registry.register(_Collector(self))
        with contextlib.suppress(Exception):  # /proc missing (not Linux): no process metrics
            ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    # -- commit observation ----------------------------------------------------------------------
    def _commit_done(self, topic: str, partition: int) -> None:
        now = self.clock()
        self.last_commit_at = now
        self.commit_failing_since = self.commit_error = None
        worker = self.runner.workers.get((topic, partition))
        if worker is None:
            return  # recovery's commit: the worker is not registered yet
        worker.counters.commits += 1
        if worker.first_append_at is not None:  # a flush (not a roll's fencing re-commit)
            self.commit_latency.labels(topic).observe(max(0.0, now - worker.first_append_at))

    def _commit_failed(self, exc: BaseException) -> None:
        if self.commit_failing_since is None:
            self.commit_failing_since = self.clock()
        self.commit_error = type(exc).__name__

    # -- health ----------------------------------------------------------------------------------
    def _oldest_wait(self, now: float) -> tuple[float, list[str]]:
        """Seconds the oldest uncommitted buffered record has waited, and the partitions waiting."""
        oldest, waiting = 0.0, []
        for w in _workers(self.runner):
            if w.pending and w.first_append_at is not None:
                age = now - w.first_append_at
                oldest = max(oldest, age)
                if age > self.runner.config.row_group_max_age:
                    waiting.append(w.where)
        return oldest, waiting

    def health(self) -> Health:
        now = self.clock()
        cfg = self.runner.config
        reasons: list[str] = []
        beat: float | None = getattr(self.runner, "heartbeat", None)
        s3 = self.runner.store.stats
        s3_beat = getattr(s3, "last_request_at", None)
        mono = time.monotonic()
        loop_age = None if beat is None else now - beat
        alive = loop_age is None or loop_age <= LIVENESS_SECONDS or (
            s3_beat is not None and mono - s3_beat <= LIVENESS_SECONDS
        )
        if not alive:
            reasons.append(f"poll loop has not iterated for {loop_age:.0f}s")
        if loop_age is None:
            reasons.append("starting: poll loop not running yet")
        elif loop_age > READY_LOOP_SECONDS:
            reasons.append(f"poll loop busy for {loop_age:.0f}s (blocked on S3 or the group coordinator?)")
        for topic in getattr(self.runner, "missing_topics", ()):
            reasons.append(f"subscribed topic {topic!r} does not exist: nothing to consume until created")
        for w in _workers(self.runner):
            if w.state.value != "ready":
                reasons.append(f"{w.where} is {w.state.value}")
            held = getattr(w, "waiting", None)
            if held:
                reasons.append(
                    f"{w.where} holds {len(held)} records back: the schema registry is unreachable "
                    "for a new schema id (retrying; nothing is dead-lettered)"
                )
        failing_since = getattr(s3, "failing_since", None)
        if failing_since is not None and mono - failing_since >= S3_FAILING_SECONDS:
            reasons.append(f"S3 requests failing for {mono - failing_since:.0f}s")
        if self.commit_failing_since is not None:
            reasons.append(f"last commit attempt failed ({self.commit_error})")
        oldest, waiting = self._oldest_wait(now)
        stalled = oldest > cfg.row_group_max_age + self.stall_timeout
        if stalled:
            reasons.append(
                f"stalled: records waited {oldest:.0f}s without becoming durable ({', '.join(waiting)})"
            )
        return Health(alive, alive and not reasons, stalled, tuple(reasons))

    def check(self) -> Health:
        """One watchdog tick: log a stall every interval, exit with status 7 past ``stall_exit``."""
        h = self.health()
        now = self.clock()
        if not h.stalled:
            if self.stalled_since is not None:
                self.log.info("stall over: records are being made durable again",
                              stalled_s=round(now - self.stalled_since, 1))
            self.stalled_since = None
            return h
        if self.stalled_since is None:
            self.stalled_since = now
        oldest, waiting = self._oldest_wait(now)
        every = max(1.0, min(60.0, self.stall_timeout / 2))
        if now - self._last_stall_log >= every:
            self._last_stall_log = now
            self.log.error(
                "stalled: records wait without becoming durable and committed",
                oldest_wait_s=round(oldest, 1),
                partitions=waiting,
                reasons=list(h.reasons),
                stall_timeout_s=self.stall_timeout,
                exit_after_s=self.stall_exit,
            )
        if self.stall_exit is not None and oldest > self.runner.config.row_group_max_age + self.stall_exit:
            self.log.error(
                "stalled past --stall-exit: exiting with status 7 so a supervisor restarts the "
                "process (everything committed is durable; the rest is consumed again)",
                oldest_wait_s=round(oldest, 1),
                status=EXIT_STALLED,
            )
            self._exit(EXIT_STALLED)
        return h

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        watchdog = threading.Thread(target=self._watch, name="stall-watchdog", daemon=True)
        watchdog.start()
        self._threads.append(watchdog)
        if self.port is not None:
            self._server = _server(self, self.host, self.port)
            self.port = self._server.server_address[1]
            serve = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)
            serve.start()
            self._threads.append(serve)
            self.log.info("metrics and health endpoints listening", port=self.port,
                          paths=["/metrics", "/healthz", "/readyz"])

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for t in self._threads:
            t.join(timeout=5)

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.check()
            except Exception as exc:  # never let the watchdog die silently
                self.log.warning("stall watchdog error", error=f"{type(exc).__name__}: {exc}")

    def scrape(self) -> bytes:
        out: bytes = generate_latest(self.registry)
        return out


def _workers(runner: Runner) -> list[Any]:
    """A snapshot of the runner's workers (the loop thread may change the dict meanwhile)."""
    for _ in range(5):
        with contextlib.suppress(RuntimeError):
            return list(runner.workers.values())
    return []


class _Collector(Collector):
    """Everything read at scrape time."""

    def __init__(self, observer: Observer) -> None:
        self.o = observer

    def collect(self) -> Iterator[Metric]:
        o = self.o
        runner = o.runner
        now = o.clock()
        tp_labels = ["topic", "partition"]

        def counter(name: str, doc: str, labels: list[str] | None = None) -> CounterMetricFamily:
            return CounterMetricFamily(PREFIX + name, doc, labels=labels if labels is not None else tp_labels)

        def gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
            return GaugeMetricFamily(PREFIX + name, doc, labels=labels if labels is not None else tp_labels)

        records = counter("records_consumed", "Kafka records handed to a partition worker")
        consumed = counter("consumed_bytes", "Avro value bytes of the records consumed")
        rows = counter("rows_durable", "Rows made durable in a staged row group and committed")
        groups = counter("row_groups_durable", "Row groups (staged pieces) made durable and committed")
        group_bytes = counter("row_group_bytes", "Bytes of the row groups made durable")
        commits = counter("commits", "Successful offset commits")
        files = counter("files_rolled", "Files rolled: pieces merged into a final Parquet file")
        file_bytes = counter("file_bytes", "Bytes of the final files rolled")
        dead = counter("dead_letters", "Bad records written to _dead_letters/, by reason class",
                       [*tp_labels, "reason"])
        counts: dict[tuple[str, int], Any] = dict(getattr(runner.shared, "counters", {}))
        for (topic, partition), c in sorted(counts.items()):
            lv = [topic, str(partition)]
            records.add_metric(lv, c.records)
            consumed.add_metric(lv, c.bytes)
            rows.add_metric(lv, c.rows)
            groups.add_metric(lv, c.row_groups)
            group_bytes.add_metric(lv, c.row_group_bytes)
            commits.add_metric(lv, c.commits)
            files.add_metric(lv, c.files)
            file_bytes.add_metric(lv, c.file_bytes)
            for reason, n in sorted(dict(c.dead_letters).items()):
                dead.add_metric([*lv, reason], n)
        yield from (records, consumed, rows, groups, group_bytes, commits, files, file_bytes, dead)

        buffered = gauge("buffered_bytes", "Bytes buffered for rows and dead letters not yet durable")
        lag = gauge("lag_offsets",
                    "Log end offset minus the committed position, or minus the position read past "
                    "transaction markers and aborted records when that is further (offsets to consume; "
                    "0 when caught up, on a transactional topic too)")
        end = gauge("log_end_offset",
                    "High watermark as last fetched (librdkafka's cached watermarks, noted every second), "
                    "never below the committed position")
        committed = gauge("committed_offset", "Committed position: every offset below it is durable in S3")
        fresh = gauge("freshness_seconds",
                      "Seconds the oldest buffered record has waited since the partition's last commit "
                      "(0 when nothing waits)")
        held = gauge("registry_held_records",
                     "Records held back (uncommitted, fetching paused) while the schema registry is "
                     "unreachable for a new schema id; 0 normally")
        open_files = 0
        total_buffered = 0
        workers = _workers(runner)
        for w in sorted(workers, key=lambda w: (w.topic, w.partition)):
            lv = [w.topic, str(w.partition)]
            b = w.buffered_bytes
            total_buffered += b
            buffered.add_metric(lv, b)
            open_files += len(w.files)
            pos = w.committed
            if pos is not None:
                committed.add_metric(lv, pos)
            high = w.log_end  # noted by the loop thread: a scrape never calls the Kafka client
            if high is not None:
                # Noted up to a second ago: the records committed since prove the log reaches further
                # (a dashboard's log end below the committed offset was a CI test's flake).
                high = max(high, pos or 0)
                end.add_metric(lv, high)
                if pos is not None:
                    lag.add_metric(lv, max(0, high - max(pos, w.read_past or 0)))
            waited = now - w.first_append_at if w.pending and w.first_append_at is not None else 0.0
            fresh.add_metric(lv, max(0.0, waited))
            held.add_metric(lv, len(getattr(w, "waiting", None) or ()))
        yield from (buffered, lag, end, committed, fresh, held)

        yield _single(GaugeMetricFamily, "memory_buffered_bytes",
                      "Bytes buffered by all partitions (compare with the budget)", total_buffered)
        yield _single(GaugeMetricFamily, "memory_budget_bytes", "--memory-bytes: the process's budget",
                      runner.config.memory_bytes)
        yield _single(GaugeMetricFamily, "memory_buffer_budget_bytes",
                      "The buffered rows' share of --memory-bytes (what memory_buffered_bytes is held to; "
                      "lower while the process's RSS is over the memory plan's soft limit)",
                      runner.buffers_budget)
        yield _single(GaugeMetricFamily, "fetch_paused", "1 while fetching is paused by the memory budget",
                      int(bool(runner.budget_paused)))
        yield _single(GaugeMetricFamily, "open_files", "In-progress files (staged pieces, not rolled yet)",
                      open_files)
        yield _single(GaugeMetricFamily, "assigned_partitions", "Partitions this process owns", len(workers))

        st = runner.stats
        yield _single(CounterMetricFamily, "rebalances", "Partition assignments received (rebalances)",
                      getattr(st, "rebalances", 0))
        yield _single(CounterMetricFamily, "fenced", "Commits refused: partition fenced (owned by another "
                      "member or a stale generation)", getattr(st, "fenced", 0))
        yield _single(CounterMetricFamily, "orphan_rejoins", "Rejoins that made the group hand out "
                      "partitions no member owned (static membership)", getattr(st, "orphan_rejoins", 0))

        s3 = runner.store.stats
        reqs = CounterMetricFamily(PREFIX + "s3_requests", "S3 requests attempted", labels=["op"])
        errs = CounterMetricFamily(PREFIX + "s3_errors", "S3 requests that failed (transient or fatal)",
                                   labels=["op"])
        rets = CounterMetricFamily(PREFIX + "s3_retries", "S3 requests retried after a transient error",
                                   labels=["op"])
        for op, n in sorted(dict(s3.requests).items()):
            reqs.add_metric([op], n)
        for op, n in sorted(dict(getattr(s3, "errors", {})).items()):
            errs.add_metric([op], n)
        for op, n in sorted(dict(getattr(s3, "retries_by_op", {})).items()):
            rets.add_metric([op], n)
        yield from (reqs, errs, rets)
        up = CounterMetricFamily(PREFIX + "s3_transferred_bytes", "Bytes moved by S3 requests",
                                 labels=["direction"])
        up.add_metric(["upload"], s3.bytes_uploaded)
        up.add_metric(["download"], s3.bytes_downloaded)
        up.add_metric(["server_side_copy"], s3.bytes_copied_server_side)
        yield up

        h = o.health()
        beat = getattr(runner, "heartbeat", None)
        yield _single(GaugeMetricFamily, "poll_loop_age_seconds", "Seconds since the poll loop last iterated",
                      0.0 if beat is None else max(0.0, now - beat))
        yield _single(GaugeMetricFamily, "ready", "1 when /readyz answers 200", int(h.ready))
        yield _single(GaugeMetricFamily, "stalled",
                      "1 while records wait longer than --row-group-max-age + --stall-timeout",
                      int(h.stalled))
        yield _single(GaugeMetricFamily, "stall_timeout_seconds", "--stall-timeout", o.stall_timeout)


def _single(kind: Any, name: str, doc: str, value: float) -> Metric:
    m: Metric = kind(PREFIX + name, doc, value=value)
    return m


def _server(observer: Observer, host: str, port: int) -> ThreadingHTTPServer:
    def probe(path: str) -> tuple[bool, str]:
        h = observer.health()
        if path == "/readyz":
            return h.ready, "ready" if h.ready else "\n".join(h.reasons)
        return h.alive, "ok" if h.alive else "\n".join(h.reasons)

    return http_server(host, port, observer.scrape, probe)


def http_server(
    host: str, port: int, scrape: Callable[[], bytes], probe: Callable[[str], tuple[bool, str]]
) -> ThreadingHTTPServer:
    """``/metrics`` from ``scrape()``; ``/healthz`` (alias ``/livez``) and ``/readyz`` answer 200 or
    503 from ``probe(path)`` → (ok, text). Shared by a member and by the ``--processes``
    supervisor's aggregation (consumer.supervisor.MetricsAggregator)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, scrape(), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/livez", "/readyz"):
                ok, text = probe("/readyz" if path == "/readyz" else "/healthz")
                self._text(200 if ok else 503, text)
            else:
                self._text(404, "not found: /metrics, /healthz, /readyz")

        def _text(self, status: int, body: str) -> None:
            self._reply(status, (body + "\n").encode(), "text/plain; charset=utf-8")

        def _reply(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: quiet
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server
