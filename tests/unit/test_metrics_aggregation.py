"""--processes N with --metrics-port P: the supervisor serves P with every member's metrics merged
(issue 11, item 4). Members here are small HTTP servers serving what a member serves."""

from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from consumer.supervisor import Member, MetricsAggregator, child_command


def free_port_block(n: int) -> int:
    """A port P such that P .. P + n are free now."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n < 65535 and all(_free(base + i) for i in range(n + 1)):
            return base
    raise RuntimeError("no free port block")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def member_server(port: int, partition: int, ready: bool) -> ThreadingHTTPServer:
    text = (
        "# HELP kafka_parquet_records_consumed_total Records consumed.\n"
        "# TYPE kafka_parquet_records_consumed_total counter\n"
        f'kafka_parquet_records_consumed_total{{topic="t",partition="{partition}"}} {100 + partition}.0\n'
        "# HELP kafka_parquet_ready 1 when ready.\n"
        "# TYPE kafka_parquet_ready gauge\n"
        f"kafka_parquet_ready {1.0 if ready else 0.0}\n"
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                status, body = 200, text
            elif self.path == "/readyz":
                status, body = (200, b"ready\n") if ready else (503, b"S3 failing\n")
            else:
                status, body = 200, b"ok\n"
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def two_members() -> Iterator[tuple[MetricsAggregator, list[ThreadingHTTPServer]]]:
    base = free_port_block(3)
    servers = [member_server(base + 1, 0, True), member_server(base + 2, 1, False)]
    agg = MetricsAggregator(base, 2, host="127.0.0.1")
    agg.start()
    yield agg, servers
    agg.stop()
    for s in servers:
        s.shutdown()
        s.server_close()


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_one_port_serves_every_members_metrics(two_members: Any) -> None:
    agg, _ = two_members
    status, text = get(agg.port, "/metrics")
    assert status == 200
    fams = {f.name: f for f in text_string_to_metric_families(text)}  # a valid exposition
    consumed = fams["kafka_parquet_records_consumed"]
    assert sorted((s.labels["member"], s.labels["partition"], s.value) for s in consumed.samples) == [
        ("0", "0", 100.0),
        ("1", "1", 101.0),
    ]
    assert text.count("# TYPE kafka_parquet_records_consumed_total counter") == 1
    assert {s.labels["member"]: s.value for s in fams["kafka_parquet_member_up"].samples} == {
        "0": 1.0,
        "1": 1.0,
    }


def test_ready_only_if_every_member_is(two_members: Any) -> None:
    agg, servers = two_members
    assert get(agg.port, "/healthz")[0] == 200
    status, body = get(agg.port, "/readyz")
    assert status == 503 and "member 1" in body and "S3 failing" in body
    servers[1].shutdown()
    servers[1].server_close()
    status, text = get(agg.port, "/metrics")
    up = {
        s.labels["member"]: s.value
        for f in text_string_to_metric_families(text)
        if f.name == "kafka_parquet_member_up"
        for s in f.samples
    }
    assert up == {"0": 1.0, "1": 0.0}
    assert get(agg.port, "/healthz")[0] == 503


def test_members_serve_on_the_ports_after_the_aggregators() -> None:
    argv = child_command(["--topic", "t"], Member(1, "host-1"), metrics_port=9100)
    assert argv[argv.index("--metrics-port") + 1] == "9102"
