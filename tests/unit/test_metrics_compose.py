"""The compose stack's Prometheus and Grafana files agree with the compose file and the exporter.

Static and fast: the scrape target is the consumer's service name and CONSUMER_METRICS_PORT;
``promtool check config`` accepts the Prometheus file; Grafana's provisioning points at that
Prometheus and at the mounted dashboard folder; every dashboard query is valid PromQL
(``promtool check rules``) and names only metrics the exporter really exposes. The queries run
against a real Prometheus in tests/stack/test_metrics_stack.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "dev" / "compose"
DASHBOARD = COMPOSE_DIR / "grafana" / "dashboards" / "kafka-parquet-consumer.json"


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def promql(expr: str, rate_interval: str = "1m") -> str:
    """A dashboard expression as plain PromQL (Grafana's $__rate_interval substituted)."""
    return expr.replace("$__rate_interval", rate_interval)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return data


def _env(service: dict[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in (service.get("environment") or {}).items()}


def test_prometheus_scrapes_the_consumer_metrics_port(compose: dict[str, Any]) -> None:
    services = compose["services"]
    port = _env(services["consumer"])["CONSUMER_METRICS_PORT"]
    published = [str(p) for p in services["consumer"]["ports"]]
    assert any(p.endswith(f":{port}") and p.startswith("127.0.0.1:") for p in published), published
    prom = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "consumer")
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"consumer:{port}"]
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in services["prometheus"]["volumes"]}
    mounted = (REPO / mounts["/etc/prometheus/prometheus.yml"]).resolve()
    assert mounted == (COMPOSE_DIR / "prometheus.yml").resolve()
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_promtool_accepts_the_prometheus_config() -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool not installed: run dev/prometheus (dev/test does)"
    r = subprocess.run([promtool, "check", "config", "--syntax-only", str(COMPOSE_DIR / "prometheus.yml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards(compose: dict[str, Any]) -> None:
    services = compose["services"]
    grafana = services["grafana"]
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in grafana["volumes"]}
    provisioning = (REPO / mounts["/etc/grafana/provisioning"]).resolve()
    assert provisioning == COMPOSE_DIR / "grafana" / "provisioning"
    ds = yaml.safe_load((COMPOSE_DIR / "grafana/provisioning/datasources/prometheus.yml").read_text())
    source = ds["datasources"][0]
    assert source["type"] == "prometheus"
    prom_port = str(services["prometheus"]["ports"][0]).rsplit(":", 1)[1]
    assert source["url"] == f"http://prometheus:{prom_port}"
    providers = yaml.safe_load((COMPOSE_DIR / "grafana/provisioning/dashboards/dashboards.yml").read_text())
    path = providers["providers"][0]["options"]["path"]
    assert (REPO / mounts[path]).resolve() == DASHBOARD.parent
    dash = json.loads(DASHBOARD.read_text())
    uids = {t["datasource"]["uid"] for p in dash["panels"] for t in p["targets"]}
    assert uids == {source["uid"]}
    home = _env(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{path}/{DASHBOARD.name}"


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    text = " ".join(dashboard_exprs())
    for metric in ("lag_offsets", "freshness_seconds", "records_consumed_total",
                   "commit_latency_seconds_bucket", "s3_errors_total", "memory_buffered_bytes",
                   "memory_budget_bytes"):
        assert f"kafka_parquet_{metric}" in text, metric


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool not installed: run dev/prometheus (dev/test does)"
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": promql(e)} for i, e in enumerate(dashboard_exprs())
    ]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    r = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dashboard_names_only_metrics_the_exporter_exposes() -> None:
    from prometheus_client.parser import text_string_to_metric_families
    from test_metrics import _broker, _runner  # the in-memory run of the unit tests

    from consumer.metrics import Observer
    from consumer.testing import MemoryStore

    runner = _runner(_broker(2, 25, bad=1), MemoryStore(), row_group_rows=10, until_caught_up=True)
    observer = Observer(runner, registry=CollectorRegistry(auto_describe=True), exit=lambda code: None)
    assert runner.run() == 0
    text = observer.scrape().decode()
    exposed = {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}
    exposed |= {"kafka_parquet_lag_offsets", "kafka_parquet_freshness_seconds"}  # live workers only
    used = set(re.findall(r"\b(kafka_parquet_[a-z_]+|process_[a-z_]+)\b", " ".join(dashboard_exprs())))
    assert used and used <= exposed, used - exposed
