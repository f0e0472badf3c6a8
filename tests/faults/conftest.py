"""Fixtures for the fault tests.

``fault_run`` (session, autouse) starts a fresh results file for the fault table (see
``tests/fault_table.py``) and records every fault test's outcome in it, so ``dev/fault-report`` builds the
table from this run alone.

Fixtures for fault tests that break the infrastructure itself:

``private_stack`` is a second `dev/stack` (Kafka + SeaweedFS + registry) in its own STACK_DIR
under a temporary folder, on free ports, so a test may stop S3 or the broker without disturbing
anyone using the default stack. It is brought ``down`` at the end of the module even on failure.
Only PIDs the private stack recorded (``$STACK_DIR/pids/<service>.pid``) are ever signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fault_table
import pytest
from support import pick_stack_ports as support_pick_ports
from support import run_stack

REPO = Path(__file__).resolve().parents[2]


def pick_stack_ports() -> dict[str, str]:
    """A free block below the ephemeral ports, apart from test_stack_lifecycle.py's and
    test_metrics_stack.py's."""
    return support_pick_ports(12000, 15000)


def proc_alive(pid: int) -> bool:
    """True when the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@dataclass
class PrivateStack:
    stack_dir: Path
    env: dict[str, str]
    settings: dict[str, str] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)

    # -- dev/stack ---------------------------------------------------------------------------
    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run_stack(*args, env=self.env, timeout=timeout)

    def up(self) -> float:
        """`dev/stack up` (starts whatever is down); returns the seconds it took."""
        t0 = time.monotonic()
        res = self.run("up")
        if res.returncode != 0:
            raise AssertionError(f"private `dev/stack up` failed:\n{res.stderr[-4000:]}")
        self.settings = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
        self.log.append(res.stderr)
        return time.monotonic() - t0

    def down(self) -> subprocess.CompletedProcess[str]:
        return self.run("down")

    # -- services ----------------------------------------------------------------------------
    def pid(self, service: str) -> int:
        return int((self.stack_dir / "pids" / f"{service}.pid").read_text().strip())

    def pids(self) -> dict[str, int]:
        return {p.stem: int(p.read_text()) for p in (self.stack_dir / "pids").glob("*.pid")}

    def terminate(self, service: str, timeout: float = 30) -> int:
        """SIGTERM the service by its recorded PID (it leads its own process group, as
        `dev/stack down` signals it) and wait until it is gone; SIGKILL after ``timeout``."""
        pid = self.pid(service)
        assert proc_alive(pid), f"{service} (pid {pid}) is not running"
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                return pid
            except PermissionError:
                os.kill(pid, sig)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and proc_alive(pid):
                time.sleep(0.1)
            if not proc_alive(pid):
                return pid
        raise AssertionError(f"{service} (pid {pid}) survived SIGKILL")

    # -- clients -----------------------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        return self.settings["KAFKA_BOOTSTRAP_SERVERS"]

    @property
    def bucket(self) -> str:
        return self.settings["S3_BUCKET"]

    @property
    def s3_port(self) -> int:
        return int(self.env["S3_PORT"])

    def consumer_env(self, s3_endpoint: str | None = None) -> dict[str, str]:
        s = self.settings
        region = s.get("AWS_REGION", "us-east-1")
        return {
            "KAFKA_BOOTSTRAP_SERVERS": s["KAFKA_BOOTSTRAP_SERVERS"],
            "S3_ENDPOINT_URL": s3_endpoint or s["S3_ENDPOINT_URL"],
            "S3_BUCKET": s["S3_BUCKET"],
            "AWS_ACCESS_KEY_ID": s["AWS_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": s["AWS_SECRET_ACCESS_KEY"],
            "AWS_REGION": region,
            "AWS_DEFAULT_REGION": region,
        }

    def s3_client(self) -> Any:
        import boto3
        from botocore.config import Config

        s = self.settings
        return boto3.client(
            "s3",
            endpoint_url=s["S3_ENDPOINT_URL"],
            aws_access_key_id=s["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=s["AWS_SECRET_ACCESS_KEY"],
            region_name=s.get("AWS_REGION", "us-east-1"),
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 3, "mode": "standard"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )


@pytest.fixture(scope="module")
def private_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateStack]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KAFKA_", "S3_", "SEAWEED_")) and k not in ("REGISTRY_PORT", "STACK_DIR")
    }
    env.update(pick_stack_ports())
    stack_dir = tmp_path_factory.mktemp("private-stack") / "stack"
    env["STACK_DIR"] = str(stack_dir)
    ps = PrivateStack(stack_dir, env)
    try:
        ps.up()
        yield ps
    finally:
        recorded = ps.pids() if (stack_dir / "pids").exists() else {}
        down = ps.down()
        still = {n: p for n, p in recorded.items() if proc_alive(p)}
        if down.returncode != 0 or still:
            # Last resort, still only by the PIDs this stack recorded.
            for pid in still.values():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
        assert down.returncode == 0, f"private `dev/stack down` failed:\n{down.stderr[-2000:]}"


# -- the fault table's run ------------------------------------------------------------------------


_deselected: list[str] = []


def pytest_deselected(items: list[pytest.Item]) -> None:
    _deselected.extend(i.nodeid for i in items if "faults/" in i.nodeid)


@pytest.fixture(scope="session", autouse=True)
def fault_run(request: pytest.FixtureRequest) -> Iterator[str]:
    """One results file per run: created afresh here (naming the fault tests this run selected
    and left out), closed with a ``finished`` line."""
    selected = [i.nodeid for i in request.session.items if "faults/" in i.nodeid]
    ran = {n.split("::", 1)[0].rsplit("/", 1)[-1] for n in [*selected, *_deselected]}
    not_collected = [
        f"tests/faults/{f.name}" for f in sorted(Path(__file__).parent.glob("test_*.py")) if f.name not in ran
    ]
    run_id = fault_table.start_run(selected, sorted(set(_deselected)) + not_collected)
    yield run_id
    fault_table.end_run()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    rep = yield
    if rep.when == "call" or (rep.when == "setup" and not rep.passed):
        if hasattr(rep, "wasxfail"):
            outcome = "xfail" if rep.skipped else "xpass"
        else:
            outcome = {"passed": "passed", "failed": "failed", "skipped": "skipped"}[rep.outcome]
            if rep.when == "setup" and rep.failed:
                outcome = "error"
        detail = getattr(rep, "wasxfail", "") or (str(rep.longrepr)[-500:] if rep.failed else "")
        fault_table.record_outcome(item.nodeid, outcome, detail)
    return rep
