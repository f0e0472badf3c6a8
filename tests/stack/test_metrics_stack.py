"""Metrics and probes of a real consumer under load, checked with real Prometheus parts.

One test, in steps: a consumer runs with ``--metrics-port`` while a producer keeps writing; its
``/metrics`` text passes ``promtool check metrics`` and holds every metric of issue 11 with
plausible values; a real Prometheus server (Debian's package, installed by ``dev/prometheus``;
its own temporary config and data dir, on a free loopback port, stopped by its PID) scrapes it
and answers queries; then S3 is stopped, ``/readyz`` turns 503 (``/healthz`` stays 200: retrying
S3 is not a wedged loop), S3 is started again and ``/readyz`` returns to 200.

S3 is stopped only on a stack this test may disturb: ``TEST_STACK_DIR`` when it names a stack
other than the default one (``.cache/stack``), otherwise a private stack on free ports (as
tests/faults/conftest.py ``private_stack`` does), brought down at the end. Services are signalled
only by the PIDs their stack recorded.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import REPO, Running, count, kafka_conf, pick_stack_ports, run_stack, start_consumer, unique

from consumer.producer import produce

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_metrics_compose import dashboard_exprs, promql  # the provisioned dashboard's queries

pytestmark = pytest.mark.stack

PARTITIONS = 2
ARGS = ("--row-group-rows", "300", "--row-group-max-age", "1s", "--file-rows", "1500",
        "--batch-size", "250", "--memory-bytes", "64MiB", "--row-group-bytes", "4MiB")


# -- a stack whose S3 may be stopped --------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@dataclass
class Stack:
    dir: Path
    env: dict[str, str]
    private: bool
    settings: dict[str, str] = field(default_factory=dict)

    def up(self) -> None:
        res = run_stack("up", env=self.env, timeout=300)
        assert res.returncode == 0, f"`dev/stack up` failed:\n{res.stderr[-3000:]}"
        self.settings = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)

    def stop_service(self, service: str, timeout: float = 30) -> int:
        """SIGTERM by the recorded PID (a process-group leader, as `dev/stack down` signals it)."""
        pid = int((self.dir / "pids" / f"{service}.pid").read_text().strip())
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                return pid
            except PermissionError:
                os.kill(pid, sig)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if not _alive(pid):
                return pid
        raise AssertionError(f"{service} (pid {pid}) survived SIGKILL")

    def consumer_env(self) -> dict[str, str]:
        s = self.settings
        keys = ("KAFKA_BOOTSTRAP_SERVERS", "S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        env = {k: s[k] for k in keys}
        env["AWS_REGION"] = env["AWS_DEFAULT_REGION"] = s.get("AWS_REGION", "us-east-1")
        return env


@pytest.fixture(scope="module")
def outage_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    given = os.environ.get("TEST_STACK_DIR")
    default = (REPO / ".cache" / "stack").resolve()
    base = {k: v for k, v in os.environ.items() if k != "STACK_DIR"}
    if given and Path(given).resolve() != default:
        env = {k: v for k, v in base.items() if not k.startswith(("KAFKA_", "S3_", "SEAWEED_"))}
        env["STACK_DIR"] = given
        stack = Stack(Path(given), env, private=False)
    else:
        env = {k: v for k, v in base.items()
               if not k.startswith(("KAFKA_", "S3_", "SEAWEED_")) and k != "REGISTRY_PORT"}
        env.update(pick_stack_ports(15000, 18000))  # apart from test_stack_lifecycle.py and faults
        d = tmp_path_factory.mktemp("metrics-stack") / "stack"
        env["STACK_DIR"] = str(d)
        stack = Stack(d, env, private=True)
    try:
        stack.up()
        yield stack
    finally:
        if stack.private:
            run_stack("down", env=stack.env, timeout=300)
        else:
            stack.up()  # whatever this test stopped runs again


@pytest.fixture(scope="module")
def prometheus_bin() -> Path:
    """Debian's prometheus package (promtool + server), installed by dev/prometheus if missing."""
    res = subprocess.run([str(REPO / "dev" / "prometheus")], capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        pytest.fail(f"dev/prometheus failed: {res.stderr[-2000:]}", pytrace=False)
    return Path(res.stdout.strip().splitlines()[-1])


# -- helpers ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http(url: str, timeout: float = 10) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def total(m: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    assert name in m, f"{name} missing from the scrape"
    return sum(v for lv, v in m[name] if all(lv.get(k) == x for k, x in labels.items()))


def wait(pred: Any, timeout: float, what: str, running: Running | None = None) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        if running is not None and running.proc.poll() is not None:
            raise AssertionError(f"consumer exited ({running.proc.returncode}) before {what}:\n"
                                 f"{running.log()[-4000:]}")
        time.sleep(0.5)
    raise AssertionError(f"timed out ({timeout:.0f}s) waiting for {what}; last: {last!r}"
                         + (f"\n{running.log()[-3000:]}" if running else ""))


class Producer:
    """Keeps producing small bursts (the consumer has work while S3 is down)."""

    def __init__(self, bootstrap: str, topic: str, start: int) -> None:
        self.bootstrap, self.topic, self.next = bootstrap, topic, start
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop_event.is_set() and self.next < 60_000:
            with contextlib.suppress(Exception):
                produce(self.bootstrap, self.topic, "page_view", 100, partitions=PARTITIONS,
                        start=self.next, create_topic=False)
                self.next += 100
            self.stop_event.wait(0.3)

    def __enter__(self) -> Producer:
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop_event.set()
        self.thread.join(60)


def produce_bad_records(bootstrap: str, topic: str) -> None:
    from confluent_kafka import Producer as KafkaProducer

    p = KafkaProducer(kafka_conf({"bootstrap.servers": bootstrap}))
    p.produce(topic, value=None, key=b"tombstone", partition=0)
    p.produce(topic, value=b"\x99 not avro at all", key=b"garbage", partition=1)
    assert p.flush(30) == 0


@contextlib.contextmanager
def prometheus_server(bindir: Path, tmp: Path, target: str) -> Iterator[str]:
    """A real Prometheus scraping ``target`` every second; yields its base URL."""
    port = free_port()
    cfg = tmp / "prometheus.yml"
    cfg.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: consumer\n    static_configs:\n"
        f"      - targets: ['{target}']\n"
    )
    check = subprocess.run([str(bindir / "promtool"), "check", "config", str(cfg)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [str(bindir / "prometheus"), f"--config.file={cfg}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait(lambda: proc.poll() is not None or _ok(base + "/-/ready"), 90, "prometheus ready")
        assert proc.poll() is None, (tmp / "prometheus.log").read_text()[-3000:]
        yield base
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # by its PID: the process this test started
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def _ok(url: str) -> bool:
    with contextlib.suppress(Exception):
        return http(url, timeout=3)[0] == 200
    return False


def query(base: str, promql: str) -> list[dict[str, Any]]:
    status, body = http(f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}")
    assert status == 200, body
    data = json.loads(body)
    assert data["status"] == "success", data
    result: list[dict[str, Any]] = data["data"]["result"]
    return result


# -- the test -----------------------------------------------------------------------------------


def test_metrics_promtool_prometheus_and_probes_through_an_s3_outage(
    outage_stack: Stack, prometheus_bin: Path, tmp_path: Path
) -> None:
    st = outage_stack
    env = st.consumer_env()
    bootstrap, bucket = env["KAFKA_BOOTSTRAP_SERVERS"], st.settings["S3_BUCKET"]
    topic, group = unique("metrics"), unique("g-metrics")
    out = f"s3://{bucket}/tests/{topic}"
    first = produce(bootstrap, topic, "page_view", 4_000, partitions=PARTITIONS)
    produce_bad_records(bootstrap, topic)
    port = free_port()
    running = start_consumer(topic, group, out, *ARGS, "--metrics-port", str(port), "--stall-timeout",
                             "10m", "--stall-exit", "none", env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        with Producer(bootstrap, topic, first.count) as producer:
            # 1. the scrape under load
            wait(lambda: count(running.events(), "file rolled") >= 2, 120, "two files rolled", running)
            # dead letters are counted when their range is made durable (by age at the latest)
            durable_dl = lambda: count(running.events(), "dead letters durable") >= 2  # noqa: E731
            wait(durable_dl, 120, "both dead letters durable", running)
            status, text = http(base + "/metrics")
            assert status == 200
            lint = subprocess.run([str(prometheus_bin / "promtool"), "check", "metrics"],
                                  input=text.encode(), capture_output=True, timeout=60)
            assert lint.returncode == 0, (lint.stdout + lint.stderr).decode()
            m = samples(text)
            check_plausible(m, consumed_at_least=3_000)

            # 2. a real Prometheus scrapes it and answers queries
            with prometheus_server(prometheus_bin, tmp_path, f"127.0.0.1:{port}") as prom:
                up = wait(lambda: query(prom, 'up{job="consumer"} == 1'), 60, "target up in Prometheus")
                assert up[0]["value"][1] == "1"
                rows = wait(lambda: query(prom, "sum(kafka_parquet_rows_durable_total)"), 60,
                            "rows in Prometheus")
                assert float(rows[0]["value"][1]) > 0
                lag = wait(lambda: query(prom, "kafka_parquet_lag_offsets"), 30, "lag series")
                assert {r["metric"]["partition"] for r in lag} == {"0", "1"}
                rate_q = "sum(rate(kafka_parquet_records_consumed_total[15s]))"
                rate = wait(lambda: [r for r in query(prom, rate_q) if float(r["value"][1]) > 0], 60,
                            "a positive consumption rate")
                assert float(rate[0]["value"][1]) > 0
                p99 = wait(lambda: query(prom, "histogram_quantile(0.99, sum by (le) "
                                              "(kafka_parquet_commit_latency_seconds_bucket))"), 30, "p99")
                assert p99[0]["value"][1] not in ("NaN",)
                # every query of the provisioned Grafana dashboard runs, and those that must have
                # data under load have it
                empty = [e for e in dashboard_exprs() if not query(prom, promql(e, "15s"))]
                allowed_empty = ("s3_errors_total", "s3_retries_total", "fenced_total", "dead_letters_total")
                assert all(any(a in e for a in allowed_empty) for e in empty), empty

            # 3. probes through an S3 outage
            assert http(base + "/readyz")[0] == 200, http(base + "/readyz")
            st.stop_service("s3")
            try:
                status, body = wait(lambda: (r := http(base + "/readyz"))[0] == 503 and r, 120,
                                    "/readyz 503 with S3 stopped", running)
                assert "S3" in body or "poll loop busy" in body, body
                assert http(base + "/healthz")[0] == 200  # retrying S3 is not a wedged loop
            finally:
                st.up()  # starts what is down: SeaweedFS
            wait(lambda: http(base + "/readyz")[0] == 200, 180, "/readyz 200 after S3 is back", running)
            after = samples(http(base + "/metrics")[1])
            assert total(after, "kafka_parquet_s3_errors_total") > 0
            assert total(after, "kafka_parquet_s3_retries_total") > 0
            assert total(after, "kafka_parquet_ready") == 1
            assert producer.next > first.count
        assert running.stop(timeout=90) == 0, running.log()[-4000:]
    finally:
        if running.proc.poll() is None:
            running.stop(timeout=90)


def check_plausible(m: dict[str, list[tuple[dict[str, str], float]]], *, consumed_at_least: int) -> None:
    p = "kafka_parquet_"
    records = total(m, p + "records_consumed_total")
    rows = total(m, p + "rows_durable_total")
    assert records >= consumed_at_least and 0 < rows <= records
    assert total(m, p + "consumed_bytes_total") > records * 20  # page_view records are ~100+ bytes
    assert {lv["partition"] for lv, _ in m[p + "records_consumed_total"]} == {"0", "1"}
    assert total(m, p + "row_groups_durable_total") >= rows / 300
    assert total(m, p + "row_group_bytes_total") > 0
    assert total(m, p + "commits_total") >= total(m, p + "row_groups_durable_total")
    assert total(m, p + "files_rolled_total") >= 2
    assert total(m, p + "file_bytes_total") > 1000 * total(m, p + "files_rolled_total")
    assert total(m, p + "dead_letters_total", reason="tombstone") == 1
    assert total(m, p + "dead_letters_total", reason="malformed") == 1
    assert total(m, p + "commit_latency_seconds_count") >= total(m, p + "row_groups_durable_total") - 2
    assert 0 <= total(m, p + "commit_latency_seconds_sum") / total(m, p + "commit_latency_seconds_count") < 60
    assert total(m, p + "s3_requests_total", op="put_object") >= total(m, p + "row_groups_durable_total")
    assert total(m, p + "memory_budget_bytes") == 64 * 1024 * 1024
    assert 0 <= total(m, p + "memory_buffered_bytes") <= 64 * 1024 * 1024
    assert len(m[p + "buffered_bytes"]) == PARTITIONS
    assert 0 <= total(m, p + "open_files") <= PARTITIONS
    assert total(m, p + "assigned_partitions") == PARTITIONS
    assert total(m, p + "rebalances_total") >= 1
    assert total(m, p + "fenced_total") == 0
    for (lv, end), (lv2, committed) in zip(m[p + "log_end_offset"], m[p + "committed_offset"], strict=True):
        assert lv == lv2 and end >= committed >= 0
    assert all(v >= 0 for _, v in m[p + "lag_offsets"]) and len(m[p + "lag_offsets"]) == PARTITIONS
    assert all(0 <= v < 120 for _, v in m[p + "freshness_seconds"])
    assert total(m, p + "stalled") == 0 and total(m, p + "ready") == 1
    assert 0 <= total(m, p + "poll_loop_age_seconds") < 30
    assert total(m, "process_resident_memory_bytes") > 10 * 1024 * 1024


def test_stall_alarm_on_a_real_s3_outage_exits_with_status_7(outage_stack: Stack) -> None:
    """S3 stopped for longer than --stall-exit: error logs while stalled, then exit status 7 (the
    loop itself is blocked inside S3 retries; the watchdog thread ends the process)."""
    st = outage_stack
    env = st.consumer_env()
    bootstrap, bucket = env["KAFKA_BOOTSTRAP_SERVERS"], st.settings["S3_BUCKET"]
    topic, group = unique("stall"), unique("g-stall")
    first = produce(bootstrap, topic, "page_view", 1_000, partitions=PARTITIONS)
    port = free_port()
    running = start_consumer(topic, group, f"s3://{bucket}/tests/{topic}", *ARGS, "--metrics-port", str(port),
                             "--stall-timeout", "4s", "--stall-exit", "12s", env=env)
    try:
        with Producer(bootstrap, topic, first.count):
            wait(lambda: count(running.events(), "row group durable") >= 2, 120, "row groups", running)
            st.stop_service("s3")
            try:
                rc = running.proc.wait(timeout=120)
            finally:
                st.up()
        events = running.events()
        assert rc == 7, running.log()[-4000:]
        stalled = [e for e in events if str(e.get("event", "")).startswith("stalled")]
        assert len(stalled) >= 2 and all(e.get("level") == "error" for e in stalled), stalled
        assert any("status 7" in str(e.get("event")) for e in stalled)
    finally:
        if running.proc.poll() is None:
            running.stop(timeout=90)
