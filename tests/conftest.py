"""Shared fixtures for tests that run against the local stack (`dev/stack up`).

The `stack` fixture starts the stack if needed (idempotent, ~0.2 s when already up, a few
seconds from cached downloads) and FAILS — never skips — when it cannot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import fault_table
import pytest
import support
from support import S3Server, StackSettings, kafka_conf, minio_server, run_stack, s3_client

REPO = Path(__file__).resolve().parent.parent


# -- taking turns on the one stack ----------------------------------------------------------------
# dev/test runs the tests that use the stack on two xdist workers. A test marked ``shares_stack``
# may run beside another such test: it only reads and writes its own topics, groups and prefixes,
# and waits for outcomes rather than for time. Every other stack test runs alone, because its
# timings (session timeouts, frozen members, outages, benchmarks) assume a quiet machine, and its
# module's tests stay on one worker (module-scoped fixtures such as a private stack start once).
# Unmarked is the safe default: a new test shares the stack only when someone decided it may.
TURNS = REPO / ".cache" / "stack-turns"


def _is_xdist_controller(config: pytest.Config) -> bool:
    return config.pluginmanager.hasplugin("dsession")


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    if _is_xdist_controller(session.config):
        fault_table.forget_workers()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Each worker wrote its part of the fault table; make it the run's one file."""
    if _is_xdist_controller(session.config):
        fault_table.merge_workers()


def _under_xdist_outside_unit(item: pytest.Item) -> bool:
    return "PYTEST_XDIST_WORKER" in os.environ and "unit" not in item.path.relative_to(REPO).parts[:2]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("shares_stack") is None and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.path.stem))


# -- what a crashed process said ------------------------------------------------------------------
_subprocess_run = subprocess.run


def _noting_run(*args: Any, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run``, which also notes what a consumer process it ran printed
    (support.note_completed), so that a failing test reports its crash lines like those of the
    processes started with a log file. Installed for the whole session (pytest_configure): the
    tests run the consumer this way in some forty places."""
    command = args[0] if args else kwargs.get("args")
    consumer = support.is_consumer_command(command)
    if consumer and kwargs.get("preexec_fn") is None:
        kwargs["preexec_fn"] = support.allow_core_dump
    started = time.time()
    try:
        done = _subprocess_run(*args, **kwargs)
    except subprocess.TimeoutExpired as timed_out:
        support.note_completed(timed_out.cmd, timed_out.output, timed_out.stderr)
        raise
    support.note_completed(done.args, done.stdout, done.stderr)
    if consumer and (told := support.core_backtrace(done.returncode, kwargs.get("cwd"), started)):
        support.CORE_BACKTRACES.append(f"python -m consumer {' '.join(map(str, command[-20:]))}\n{told}")
    return done


def pytest_configure(config: pytest.Config) -> None:
    subprocess.run = _noting_run


def pytest_unconfigure(config: pytest.Config) -> None:
    subprocess.run = _subprocess_run


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    support.STARTED_LOGS.clear()
    support.CAPTURED_OUTPUTS.clear()
    support.CORE_BACKTRACES.clear()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """A failing test's report gets, from the log of every process it started, the lines that tell
    of a crash (support.crash_lines), wherever they are in the log: the assertion's own message
    shows only a log's tail. Once per test, at the phase that failed first."""
    report = yield
    if report.failed and support.CORE_BACKTRACES:
        report.sections.append(("backtraces of the processes this test ran that crashed",
                                "\n\n".join(support.CORE_BACKTRACES)))
        support.CORE_BACKTRACES.clear()
    if report.failed and (support.STARTED_LOGS or support.CAPTURED_OUTPUTS):
        logs = []
        for path in support.STARTED_LOGS:
            with contextlib.suppress(OSError):
                logs.append((str(path), path.read_text(errors="replace")))
        told = [f"{what}:\n" + "\n".join(lines)
                for what, text in logs + support.CAPTURED_OUTPUTS if (lines := support.crash_lines(text))]
        support.STARTED_LOGS.clear()
        support.CAPTURED_OUTPUTS.clear()
        if told:
            report.sections.append(("crash lines of the processes this test started", "\n\n".join(told)))
    return report


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[None]:
    with path.open("a") as fh:
        fcntl.flock(fh, mode)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, Any, Any]:
    """Under xdist, hold the stack shared or alone for the test's setup, call and teardown. A test
    that must run alone first takes the turnstile, so the other worker starts no new shared test
    while it waits for the running one to end (a writer-preferring readers-writer lock)."""
    if not _under_xdist_outside_unit(item):
        return (yield)
    TURNS.mkdir(parents=True, exist_ok=True)
    turnstile, stack_lock = TURNS / "turnstile", TURNS / "stack"
    if item.get_closest_marker("shares_stack") is not None:
        with contextlib.ExitStack() as turn:
            with _flock(turnstile, fcntl.LOCK_SH):
                turn.enter_context(_flock(stack_lock, fcntl.LOCK_SH))
            return (yield)
    with _flock(turnstile, fcntl.LOCK_EX), _flock(stack_lock, fcntl.LOCK_EX):
        return (yield)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackSettings]:
    """The running local stack (started with `dev/stack up` if needed). Exports AWS_* and
    AWS_REGION (plus the other settings) into os.environ for code under test.

    ``TEST_STACK_DIR=<dir>``: use the stack already running in that STACK_DIR instead (started
    with ``STACK_DIR=<dir> KAFKA_PORT=… S3_PORT=… dev/stack up``; never started or stopped here).

    ``TEST_S3=minio``: the stack's S3 is a MinIO (``dev/minio``) started for the session, with the
    stack's bucket and credentials, instead of its SeaweedFS: every test that writes to "the
    stack" writes to MinIO. Tests that start a private stack of their own keep its SeaweedFS."""
    # Use the default stack regardless of a STACK_DIR/port override leaking from the caller.
    env = {k: v for k, v in os.environ.items() if k != "STACK_DIR"}
    if os.environ.get("TEST_STACK_DIR"):
        env = {k: v for k, v in env.items() if not k.startswith(("KAFKA_", "S3_", "SEAWEED_"))}
        env["STACK_DIR"] = os.environ["TEST_STACK_DIR"]
    res = run_stack("status" if "STACK_DIR" in env else "up", env=env)
    if res.returncode != 0:
        pytest.fail(
            f"`dev/stack up` failed (rc={res.returncode}); the stack tests need it.\n"
            f"stdout:\n{res.stdout}\nstderr:\n{res.stderr}",
            pytrace=False,
        )
    settings = StackSettings.from_env_lines(res.stdout)
    with contextlib.ExitStack() as on_exit:
        if _stack_s3_name() == "minio":
            server = on_exit.enter_context(minio_server(
                tmp_path_factory.mktemp("stack-minio") / "data", settings.aws_access_key_id,
                settings.aws_secret_access_key, settings.s3_bucket,
            ))
            settings = dataclasses.replace(settings, s3_endpoint=server.endpoint)
        os.environ.update(settings.as_env())
        yield settings


def _stack_s3_name() -> str:
    name = os.environ.get("TEST_S3") or "seaweedfs"
    if name not in ("seaweedfs", "minio"):
        pytest.fail(f"TEST_S3={name!r}: the stack's S3 is 'seaweedfs' (the default) or 'minio'",
                    pytrace=False)
    return name


@pytest.fixture(scope="session")
def s3(stack: StackSettings) -> Any:
    """A boto3 S3 client for the stack (path-style, no retries so failures are visible)."""
    return s3_client(stack.s3_endpoint, stack.aws_access_key_id, stack.aws_secret_access_key,
                     stack.aws_region)


@pytest.fixture(scope="session")
def stack_s3(stack: StackSettings) -> S3Server:
    """The stack's S3 server (SeaweedFS, or MinIO under ``TEST_S3=minio``), described as
    :func:`minio` describes its own."""
    return S3Server(_stack_s3_name(), stack.s3_endpoint, stack.s3_bucket, stack.aws_access_key_id,
                    stack.aws_secret_access_key)


@pytest.fixture(scope="session")
def minio(stack: StackSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real MinIO server (``dev/minio`` builds it), one per test worker, with the stack's
    credentials: the consumer reaches it with the same AWS_* environment, given its endpoint."""
    with minio_server(tmp_path_factory.mktemp("minio") / "data", stack.aws_access_key_id,
                      stack.aws_secret_access_key, stack.s3_bucket) as server:
        yield server


@pytest.fixture(params=["stack_s3", "minio"], ids=["stack-s3", "minio"])
def s3_server(request: pytest.FixtureRequest) -> S3Server:
    """Each of the two real S3 servers in turn, the stack's and a MinIO: a test that takes it runs
    once on each."""
    found: S3Server = request.getfixturevalue(request.param)
    return found


@pytest.fixture(scope="session")
def admin(stack: StackSettings) -> Any:
    """A confluent_kafka AdminClient for the stack's broker."""
    from confluent_kafka.admin import AdminClient

    return AdminClient(kafka_conf({"bootstrap.servers": stack.kafka_bootstrap}))


@pytest.fixture
def make_topic(admin: Any) -> Iterator[Callable[..., str]]:
    """Factory: ``make_topic(partitions=4) -> name`` creates a uniquely named topic and waits
    until its metadata (all partitions with a leader) is visible. Topics are deleted afterwards."""
    from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

    created: list[str] = []

    def _make(partitions: int = 4, prefix: str = "test", config: dict[str, str] | None = None) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
            operation_timeout=30,
        )
        futures[name].result(timeout=30)
        created.append(name)
        deadline = time.monotonic() + 30
        while True:
            md = admin.list_topics(topic=name, timeout=10)
            t = md.topics.get(name)
            if (
                t is not None
                and t.error is None
                and len(t.partitions) == partitions
                and all(p.leader >= 0 for p in t.partitions.values())
            ):
                return name
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {name} metadata not visible after 30s: {t}")
            time.sleep(0.1)

    yield _make
    if created:
        for fut in admin.delete_topics(created, operation_timeout=30).values():
            with contextlib.suppress(Exception):  # best-effort cleanup
                fut.result(timeout=30)


@pytest.fixture
def unique_prefix(request: pytest.FixtureRequest) -> str:
    """A fresh S3 key prefix for this test, e.g. ``tests/test_x-3f2a9c1b/`` (trailing slash)."""
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in request.node.name)[:60]
    return f"tests/{name}-{uuid.uuid4().hex[:8]}/"
