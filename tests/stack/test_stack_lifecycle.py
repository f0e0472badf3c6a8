"""`dev/stack` lifecycle: a second stack on other ports in a temporary STACK_DIR (reusing the
cached downloads) comes up, is idempotent, reports status, and `down` leaves no process running."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest
from botocore.config import Config
from support import pick_stack_ports, run_stack

if TYPE_CHECKING:
    from support import StackSettings

REPO = Path(__file__).resolve().parents[2]
SETTING_KEYS = {
    "KAFKA_BOOTSTRAP_SERVERS",
    "KAFKA_SASL_BOOTSTRAP_SERVERS",
    "KAFKA_SSL_BOOTSTRAP_SERVERS",
    "KAFKA_SSL_CA_LOCATION",
    "KAFKA_MTLS_BOOTSTRAP_SERVERS",
    "KAFKA_SASL_SSL_BOOTSTRAP_SERVERS",
    "S3_ENDPOINT_URL",
    "S3_BUCKET",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_REGION",
    "SCHEMA_REGISTRY_URL",
}


def _pick_ports() -> dict[str, str]:
    return pick_stack_ports(10000, 12000)  # below the ephemeral ports; apart from faults and metrics


def _run(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return run_stack(*args, env=env, timeout=timeout)


def _parse(stdout: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)


def _pids(stack_dir: Path) -> dict[str, int]:
    return {p.stem: int(p.read_text()) for p in (stack_dir / "pids").glob("*.pid")}


def _running(pid: int) -> bool:
    """True when the process exists and is not a zombie (an exited child nobody reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@pytest.fixture
def second_stack_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "S3_", "SEAWEED_"))}
    env.pop("REGISTRY_PORT", None)
    env.update(_pick_ports())
    env["STACK_DIR"] = str(tmp_path / "stack2")
    return env


def _check_on_a_fresh_broker(settings: dict[str, str]) -> None:
    """``consumer check`` of a new group against a broker just started, while it loads the groups'
    offsets partitions. An AdminClient's ListConsumerGroupOffsets answered NOT_COORDINATOR there
    crashed the check's probe (librdkafka issue 5040) in one of two or three fresh stacks; the
    check survived by trying again, and its line said so. It must not need to."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": settings["KAFKA_BOOTSTRAP_SERVERS"]})
    for future in admin.create_topics([NewTopic("fresh", 2, 1)]).values():
        future.result(30)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "S3_", "AWS_"))}, **settings}
    checked = subprocess.run(
        [sys.executable, "-m", "consumer", "check", "--group-id", "g-fresh", "--topic", "fresh", "--schema",
         "page_view", "--output", f"s3://{settings['S3_BUCKET']}/fresh", "--timeout", "5"],
        capture_output=True, text=True, timeout=120, cwd=REPO, env=env,
    )
    said = checked.stdout + checked.stderr
    assert checked.returncode == 0, said
    assert "ok   kafka: 1 broker(s), topics fresh[2]" in said and "died of" not in said, said


def test_second_stack_up_status_idempotent_down(
    stack: StackSettings, second_stack_env: dict[str, str]
) -> None:
    env = second_stack_env
    stack_dir = Path(env["STACK_DIR"])
    try:
        t0 = time.monotonic()
        up = _run(["up"], env)
        assert up.returncode == 0, up.stderr
        first_up_s = time.monotonic() - t0
        settings = _parse(up.stdout)
        assert set(settings) == SETTING_KEYS, up.stdout  # stdout carries only KEY=VALUE lines
        assert settings["KAFKA_BOOTSTRAP_SERVERS"] == f"127.0.0.1:{env['KAFKA_PORT']}"
        assert settings["S3_ENDPOINT_URL"] == f"http://127.0.0.1:{env['S3_PORT']}"
        assert settings["SCHEMA_REGISTRY_URL"] == f"http://127.0.0.1:{env['REGISTRY_PORT']}"
        assert settings["KAFKA_BOOTSTRAP_SERVERS"] != stack.kafka_bootstrap

        pids = _pids(stack_dir)
        assert set(pids) == {"kafka", "s3", "registry"}
        assert all(_running(pid) for pid in pids.values())
        assert (stack_dir / "logs" / "kafka.log").exists()
        # Downloads are shared: the second stack does not get its own jars.
        assert not (stack_dir / "kafka" / "libs").exists()

        # The second stack's S3 really works with the dev credentials, and the bucket exists.
        s3 = boto3.client(
            "s3",
            endpoint_url=settings["S3_ENDPOINT_URL"],
            aws_access_key_id=settings["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=settings["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )
        s3.put_object(Bucket=settings["S3_BUCKET"], Key="probe", Body=b"2nd")
        assert s3.get_object(Bucket=settings["S3_BUCKET"], Key="probe")["Body"].read() == b"2nd"
        _check_on_a_fresh_broker(settings)

        # status: same lines, exit 0 — even without the port variables (read from STACK_DIR).
        status = _run(["status"], {**os.environ, "STACK_DIR": str(stack_dir)})
        assert status.returncode == 0, status.stderr
        assert _parse(status.stdout) == settings
        env_out = _run(["env"], env)
        assert _parse(env_out.stdout) == settings

        # up again: idempotent, same processes, fast.
        t1 = time.monotonic()
        again = _run(["up"], env)
        assert again.returncode == 0, again.stderr
        assert time.monotonic() - t1 < 10
        assert _parse(again.stdout) == settings
        assert _pids(stack_dir) == pids
        print(f"second stack: first up {first_up_s:.1f}s, repeated up {time.monotonic() - t1:.2f}s")
    finally:
        down = _run(["down"], env)
    assert down.returncode == 0, down.stderr

    # No process recorded by the second stack is still running; PID files are gone.
    still = {name: pid for name, pid in pids.items() if _running(pid)}
    assert still == {}, f"still running after down: {still}"
    assert list((stack_dir / "pids").glob("*.pid")) == []

    status = _run(["status"], env)
    assert status.returncode == 1
    assert "not running" in status.stderr

    # down is idempotent; reset wipes the state folder.
    assert _run(["down"], env).returncode == 0
    assert _run(["reset"], env).returncode == 0
    assert not stack_dir.exists()

    # The default stack was not touched.
    assert _run(["status"], {k: v for k, v in os.environ.items() if k != "STACK_DIR"}).returncode == 0


def test_default_stack_up_is_idempotent(stack: StackSettings) -> None:
    env = {k: v for k, v in os.environ.items() if k != "STACK_DIR"}
    default_dir = REPO / ".cache" / "stack"
    before = _pids(default_dir)
    res = _run(["up"], env)
    assert res.returncode == 0, res.stderr
    assert _pids(default_dir) == before
    assert _parse(res.stdout)["KAFKA_BOOTSTRAP_SERVERS"] == stack.kafka_bootstrap
