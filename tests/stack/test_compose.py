"""Static checks of docker-compose.yml and the Dockerfile (no Docker engine needed)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
STACK_VARS = {
    "KAFKA_BOOTSTRAP_SERVERS",
    "S3_ENDPOINT_URL",
    "S3_BUCKET",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "SCHEMA_REGISTRY_URL",
}
LONG_RUNNING = ("kafka", "s3", "registry", "consumer")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svc = compose["services"]
    assert isinstance(svc, dict)
    return svc


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_expected_services(services: dict[str, dict[str, Any]]) -> None:
    assert {"kafka", "s3", "registry", "init", "consumer"} <= set(services)


def test_kafka_is_kraft(services: dict[str, dict[str, Any]]) -> None:
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = _env(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    for key in (
        "KAFKA_NODE_ID",
        "KAFKA_CONTROLLER_QUORUM_VOTERS",
        "KAFKA_CONTROLLER_LISTENER_NAMES",
        "KAFKA_LISTENERS",
        "KAFKA_ADVERTISED_LISTENERS",
        "CLUSTER_ID",
    ):
        assert env.get(key), key
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"


def test_s3_and_registry_images(services: dict[str, dict[str, Any]]) -> None:
    assert re.match(r"(chrislusf/seaweedfs|minio/minio)[:@]", services["s3"]["image"])
    assert re.match(
        r"(apicurio/apicurio-registry|confluentinc/cp-schema-registry)[:@]",
        services["registry"]["image"],
    )
    s3_args = " ".join(services["s3"].get("command") or [])
    if "seaweedfs" in services["s3"]["image"]:
        assert "-s3.config=" in s3_args  # keys enforced, not "accept anything"
        assert "-s3.allowDeleteBucketNotEmpty=false" in s3_args


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_long_running_services_have_healthchecks(services: dict[str, dict[str, Any]], name: str) -> None:
    hc = services[name].get("healthcheck")
    assert hc and hc.get("test") and not hc.get("disable"), name


@pytest.mark.parametrize("name", ["kafka", "s3", "registry"])
def test_ports_published_on_localhost(services: dict[str, dict[str, Any]], name: str) -> None:
    ports = services[name].get("ports") or []
    assert ports, name
    assert all(str(p).startswith("127.0.0.1:") for p in ports), ports


def test_dev_stack_host_ports_match(services: dict[str, dict[str, Any]]) -> None:
    published = {str(p).split(":")[1] for s in ("kafka", "s3", "registry") for p in services[s]["ports"]}
    assert published == {"19092", "18333", "18081"}


def test_depends_on_conditions(services: dict[str, dict[str, Any]]) -> None:
    allowed = {"service_healthy", "service_completed_successfully"}
    for name, svc in services.items():
        deps = svc.get("depends_on")
        if deps is None:
            continue
        assert isinstance(deps, dict), f"{name}: depends_on must use the long form with conditions"
        for dep, spec in deps.items():
            assert dep in services, (name, dep)
            assert spec.get("condition") in allowed, (name, dep, spec)
            expected = "service_completed_successfully" if dep == "init" else "service_healthy"
            assert spec["condition"] == expected, (name, dep)
    consumer_deps = services["consumer"]["depends_on"]
    assert set(consumer_deps) == {"kafka", "s3", "registry", "init"}


def test_init_is_one_shot_creating_bucket_and_topic(services: dict[str, dict[str, Any]]) -> None:
    init = services["init"]
    assert "healthcheck" not in init
    assert init.get("restart", "no") == "no"
    script = " ".join(init.get("command") or []) + " ".join(init.get("entrypoint") or [])
    assert "create_bucket" in script
    assert "create_topics" in script


def test_consumer_built_from_project_dockerfile(services: dict[str, dict[str, Any]]) -> None:
    consumer = services["consumer"]
    build = consumer["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    assert (REPO / context / dockerfile).resolve() == (REPO / "Dockerfile").resolve()
    assert consumer.get("command") in (["run"], "run")


def test_consumer_environment_matches_dev_stack(services: dict[str, dict[str, Any]]) -> None:
    env = _env(services["consumer"])
    assert env.keys() >= STACK_VARS
    assert {"CONSUMER_TOPICS", "CONSUMER_GROUP_ID", "CONSUMER_OUTPUT"} <= env.keys()
    assert env["CONSUMER_OUTPUT"].startswith(f"s3://{env['S3_BUCKET']}/")
    assert env["KAFKA_BOOTSTRAP_SERVERS"].split(":")[0] == "kafka"
    assert env["S3_ENDPOINT_URL"].startswith("http://s3:")


def test_dev_stack_prints_the_same_variables() -> None:
    """The names the consumer gets in compose are the names `dev/stack` prints."""
    import sys

    sys.path.insert(0, str(REPO / "dev"))
    try:
        import stack_impl
    finally:
        sys.path.pop(0)
    printed = set(stack_impl.Config.from_env().settings())
    assert printed >= STACK_VARS


def test_dockerfile() -> None:
    text = (REPO / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    assert any(re.search(r"\bpip install \.(\s|$)", ln) for ln in lines)
    assert 'ENTRYPOINT ["consumer"]' in lines
    assert 'CMD ["run"]' in lines
