"""Shared helpers for integration and fault tests: run the real consumer, read back every output
file, and check the invariants (every (partition, offset) exactly once, values as produced)."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
STACK_BIN = REPO / "dev" / "stack"
#: ``consumer run`` flags for a member that may end without leaving its group (SIGKILL, SIGSTOP,
#: or an exit while the broker cannot be reached): the broker evicts it after 6 s (its minimum
#: session timeout) instead of 45 s, so the next member's join does not wait that out. What the
#: tests prove does not depend on how long that takes.
FAST_EVICTION = ("-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=1000")


def run_stack(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run `dev/stack <args>`; stdout = KEY=VALUE lines, stderr = progress."""
    return subprocess.run(
        [sys.executable, str(STACK_BIN), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def ephemeral_ports() -> range:
    """The kernel's local ports for outgoing connections. Any client socket of the suite (Kafka,
    S3, HTTP) may take one of them at any moment, so a server port picked there can be taken
    between the pick and the server's bind (seen once in CI: a private stack's SeaweedFS port)."""
    try:
        lo, hi = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        lo, hi = 32768, 60999
    return range(lo, hi + 1)


def pick_stack_ports(lo: int, hi: int) -> dict[str, str]:
    """Ports for a second stack: Kafka 2, registry 1, SeaweedFS S3_PORT..S3_PORT+8 plus its admin
    gRPC at S3_PORT+8+10000. A random block in [lo, hi) where all of them are free and none is
    an ephemeral port (:func:`ephemeral_ports`)."""
    import random

    rng = random.Random()
    ephemeral = ephemeral_ports()
    for _ in range(200):
        base = rng.randrange(lo, hi, 20)
        ports = [*range(base, base + 19), base + 10 + 8 + 10000]
        if not any(p in ephemeral for p in ports) and all(port_free(p) for p in ports):
            return {
                "KAFKA_PORT": str(base),
                "KAFKA_CONTROLLER_PORT": str(base + 1),
                "REGISTRY_PORT": str(base + 2),
                "S3_PORT": str(base + 10),
            }
    raise RuntimeError("no free port block found")


def pick_server_port(lo: int = 20000, hi: int = 30000) -> int:
    """A free port for a server a test starts, outside the ephemeral range (:func:`ephemeral_ports`)."""
    import random

    rng, ephemeral = random.Random(), ephemeral_ports()
    for _ in range(200):
        port = rng.randrange(lo, hi)
        if port not in ephemeral and port_free(port):
            return port
    raise RuntimeError(f"no free port in [{lo}, {hi})")


def s3_client(endpoint: str, key_id: str, secret: str, region: str = "us-east-1") -> Any:
    """A boto3 S3 client for a test server (path-style, no retries so failures are visible)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        region_name=region,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1, "mode": "standard"},
            # Only send checksums when the operation requires them: SeaweedFS and older
            # S3-compatibles do not all understand the newer default CRC trailers.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


@dataclass(frozen=True)
class S3Server:
    """One S3-compatible server the tests write to: the stack's SeaweedFS, or a MinIO."""

    name: str
    endpoint: str
    bucket: str
    key_id: str
    secret: str

    def client(self) -> Any:
        return s3_client(self.endpoint, self.key_id, self.secret)


@contextlib.contextmanager
def minio_server(data: Path, key_id: str, secret: str, bucket: str,
                 kms_key: str | None = None) -> Iterator[S3Server]:
    """A real MinIO server (built by ``dev/minio``) on a free port, storing under ``data``, its
    root user ``key_id``/``secret`` and ``bucket`` created; stopped by its PID on exit. With
    ``kms_key`` (a name) it has a KMS of one static key of that name, so it takes server-side
    encryption (SSE-S3 and SSE-KMS) as AWS S3 does."""
    built = subprocess.run([str(REPO / "dev" / "minio")], capture_output=True, text=True, timeout=1800)
    if built.returncode != 0:
        raise RuntimeError(f"dev/minio failed (rc={built.returncode}):\n{built.stderr[-3000:]}")
    binary = built.stdout.strip().splitlines()[-1]
    data.mkdir(parents=True, exist_ok=True)
    log_path = data.parent / f"{data.name}.log"
    for _ in range(3):  # a port taken between the pick and MinIO's bind: pick again
        port = pick_server_port()
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(data.parent),
            "MINIO_ROOT_USER": key_id,
            "MINIO_ROOT_PASSWORD": secret,
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
        }
        if kms_key:
            env["MINIO_KMS_SECRET_KEY"] = f"{kms_key}:{base64.b64encode(os.urandom(32)).decode()}"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [binary, "server", str(data), "--quiet", "--address", f"127.0.0.1:{port}",
                 "--console-address", f"127.0.0.1:{pick_server_port()}"],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )
        endpoint = f"http://127.0.0.1:{port}"
        try:
            if _wait_ready(proc, endpoint + "/minio/health/ready", log_path, timeout=60):
                server = S3Server("minio", endpoint, bucket, key_id, secret)
                server.client().create_bucket(Bucket=bucket)
                yield server
                return
        finally:
            if proc.poll() is None:
                proc.terminate()  # by its PID: the process started here
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    raise RuntimeError(f"MinIO did not start:\n{log_path.read_text(errors='replace')[-3000:]}")


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log_path: Path, timeout: float) -> bool:
    """True once ``url`` answers 200; False if ``proc`` exits first (its port was taken)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                return True
        time.sleep(0.2)
    raise RuntimeError(f"MinIO not ready at {url} after {timeout:.0f}s:\n"
                       f"{log_path.read_text(errors='replace')[-3000:]}")


def kafka_conf(conf: dict[str, Any]) -> dict[str, Any]:
    """A test's own Kafka client configuration: ``conf`` and a logger, so that librdkafka's lines
    (a topic deleted under a producer still open, a broker restarting) go through ``logging``,
    which pytest shows with a failing test, instead of raw onto the run's stderr."""
    return {**conf, "logger": logging.getLogger("tests.kafka")}


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def describe_group(admin: Any, group: str, wait: float = 30.0) -> Any:
    """A consumer group as its coordinator describes it, waited for up to ``wait`` seconds; sent so
    that librdkafka never times the request out itself (consumer/group_requests.py: that can crash
    the process, here a test's worker)."""
    from consumer import group_requests

    return group_requests.answer(group_requests.describe(admin, group), wait)


def static_member() -> tuple[str, ...]:
    """Static group membership: a restarted process replaces its killed predecessor at once
    instead of waiting out the session timeout (as production deployments should, too)."""
    return ("-X", f"group.instance.id={unique('member')}", "-X", "session.timeout.ms=10000")


def consumer_cmd(topic: str, group: str, output: str, *extra: str, schema: str = "page_view") -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "consumer",
        "run",
        "--group-id",
        group,
        "--topic",
        topic,
        "--output",
        output,
        "--log-format",
        "json",
    ]
    if "--framing" not in extra:
        cmd += ["--schema", schema]
    return cmd + list(extra)


def run_consumer(
    topic: str,
    group: str,
    output: str,
    *extra: str,
    schema: str = "page_view",
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run ``consumer run … --until-caught-up`` to completion; raises with its log on failure."""
    cmd = consumer_cmd(topic, group, output, "--until-caught-up", *extra, schema=schema)
    res = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, cwd=REPO
    )
    return res


#: The log files of the processes the running test started (:func:`start_consumer`,
#: :func:`note_log`). A failing test's report gets the lines of them that tell of a crash
#: (tests/conftest.py): the assertion shows a log's tail, and an abort's own line (librdkafka's
#: assertion) comes before the interpreter's dump of every thread's stack, which can fill that tail.
STARTED_LOGS: list[Path] = []

_CRASH_LINE = re.compile(
    r"Assertion .* failed|assert: |Fatal Python error|Segmentation fault|core dumped|panicked at|"
    r"Traceback \(most recent call last\)|^\w+(Error|Exception): "
)


def note_log(path: Path) -> Path:
    """``path``, noted as the log of a process the running test started (:data:`STARTED_LOGS`)."""
    STARTED_LOGS.append(path)
    return path


#: What the consumer processes the running test ran to their end with ``subprocess.run`` printed,
#: kept in memory rather than in a file: (the command, its stdout and stderr). Reported like
#: :data:`STARTED_LOGS`; tests/conftest.py notes every such run (:func:`note_completed`).
CAPTURED_OUTPUTS: list[tuple[str, str]] = []


def note_completed(args: Any, stdout: str | bytes | None, stderr: str | bytes | None) -> None:
    """Note what a finished (or timed-out) process printed in :data:`CAPTURED_OUTPUTS`, if it ran
    the consumer (``python -m consumer …``) and its output was captured."""
    command = _consumer_argv(args)
    if command is None:
        return
    text = "".join(t.decode(errors="replace") if isinstance(t, bytes) else t for t in (stdout, stderr) if t)
    if text:
        CAPTURED_OUTPUTS.append((f"run {len(CAPTURED_OUTPUTS) + 1} of this test: python -m "
                                 + " ".join(command[:2]), text))


#: Backtraces of the consumer processes the running test ran that died by a signal with a core
#: dump (:func:`core_backtrace`), reported beside the crash lines.
CORE_BACKTRACES: list[str] = []

#: signals whose default action dumps core: a native crash, not a kill the test sent
_DUMPING = {signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGILL, signal.SIGFPE}


def _consumer_argv(args: Any) -> list[str] | None:
    """``consumer`` and what follows it, if ``args`` (as given to subprocess) runs
    ``python -m consumer …``; else None."""
    argv = [str(a) for a in args] if isinstance(args, (list, tuple)) else str(args).split()
    at = argv.index("-m") + 1 if "-m" in argv else len(argv)
    return argv[at:] if argv[at:at + 1] == ["consumer"] else None


def is_consumer_command(args: Any) -> bool:
    """Whether ``args`` (as given to subprocess) runs ``python -m consumer …``."""
    return _consumer_argv(args) is not None


def allow_core_dump() -> None:
    """In the child between fork and exec: let a native crash dump core. librdkafka's threads block
    every signal, so a fault on one of them ends the process with no stack on stderr (consumer/
    group_requests.py); the core is then the only witness of where it was."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_CORE)[1]  # as far as this user may: never raise here
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))


def core_backtrace(returncode: int, cwd: str | os.PathLike[str] | None, since: float) -> str | None:
    """Every thread's backtrace from the core a process that died by ``-returncode`` left in
    ``cwd`` (the kernel's core_pattern here is ``core``), which is then deleted; a line saying why
    there is none otherwise; None when the process did not die of a native crash."""
    if returncode >= 0 or -returncode not in _DUMPING:
        return None
    name = signal.Signals(-returncode).name
    core = Path(cwd or os.getcwd()) / "core"
    try:
        if core.stat().st_mtime < since:
            raise FileNotFoundError(core)
    except OSError:
        pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
        return f"{name}: no core file at {core} (kernel core_pattern: {pattern!r})"
    try:
        gdb = _subprocess_run_plain(
            ["gdb", "-batch", "-nx", "-iex", "set auto-load safe-path /", "-ex", "info threads",
             "-ex", "thread apply all bt 40", "-ex", "thread apply all py-bt", sys.executable, str(core)],
            capture_output=True, text=True, timeout=180)
        return f"{name}, backtrace from {core}:\n{gdb.stdout[-20000:]}{gdb.stderr[-2000:]}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{name}: core at {core}, but gdb failed: {exc}"
    finally:
        core.unlink(missing_ok=True)


#: subprocess.run as it was before tests/conftest.py noted every run (gdb's is not noted)
_subprocess_run_plain = subprocess.run


def crash_lines(text: str, limit: int = 60) -> list[str]:
    """The lines of a process's log that tell of a crash, each with the line after it (where an
    assertion or a fatal error names its place), at most ``limit`` of them. Only lines that are
    not the consumer's own JSON events: a crash is told on stderr, by C code or the interpreter."""
    lines = text.splitlines()
    keep: list[int] = []
    for i, line in enumerate(lines):
        if not line.startswith("{") and _CRASH_LINE.search(line):
            keep += [j for j in (i, i + 1) if j < len(lines) and (not keep or j > keep[-1])]
    return [f"{i + 1}: {lines[i]}" for i in keep[:limit]]


@dataclass
class Running:
    """A consumer process started in the background, with its log in a file."""

    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        return log_events(self.log())

    def wait_for(
        self, pred: Callable[[list[dict[str, Any]]], bool], timeout: float = 60, what: str = "condition"
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred(self.events()):
                return
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"consumer exited ({self.proc.returncode}) before {what}:\n{self.log()[-4000:]}"
                )
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}:\n{self.log()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"consumer did not stop within {timeout}s:\n{self.log()[-4000:]}") from None


def start_consumer(
    topic: str,
    group: str,
    output: str,
    *extra: str,
    schema: str = "page_view",
    env: dict[str, str] | None = None,
    until_caught_up: bool = False,
    new_session: bool = False,
) -> Running:
    """``consumer run …`` in the background, its output in a log file. ``new_session``: as a
    command run from a terminal is, in a session and process group of its own (``os.killpg``
    then reaches it and its children, as a closed terminal's SIGHUP does) and with SIGHUP at its
    default action (a suite run under ``nohup`` would hand it down ignored)."""
    args = list(extra) + (["--until-caught-up"] if until_caught_up else [])
    cmd = consumer_cmd(topic, group, output, *args, schema=schema)
    log_path = note_log(Path(tempfile.mkstemp(prefix="consumer-", suffix=".log")[1]))
    fh = open(log_path, "wb")  # noqa: SIM115 - handed to the child process
    proc = subprocess.Popen(
        cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=REPO,
        preexec_fn=_as_from_a_terminal if new_session else None,
    )
    return Running(proc, log_path)


def _as_from_a_terminal() -> None:  # runs in the child between fork and exec
    os.setsid()
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def member_starts(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The supervisor's ``member started`` events (``--processes``): member, run and pid."""
    return [e for e in events if e.get("event") == "member started"]


def start_two_members_writing(
    topic: str, group: str, output: str, *extra: str, host: str, new_session: bool = False
) -> Running:
    """``consumer run --processes 2 --host-id host``, once both members run and one has written a
    row group."""
    sup = start_consumer(topic, group, output, *extra, "--processes", "2", "--host-id", host,
                         new_session=new_session)
    sup.wait_for(
        lambda ev: sum(1 for e in ev if e.get("event") == "starting") == 2
        and any(e.get("event") == "row group durable" for e in ev),
        timeout=120,
        what="both members running and writing",
    )
    return sup


def log_events(text: str) -> list[dict[str, Any]]:
    """The JSON lines of a consumer log (``--log-format json``), parsed."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
    return out


def count(events: Iterable[dict[str, Any]], event: str) -> int:
    return sum(1 for e in events if e.get("event") == event)


# -- reading output ------------------------------------------------------------------------------


def list_keys(s3: Any, bucket: str, prefix: str) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out += [(o["Key"], o["Size"]) for o in page.get("Contents", [])]
    return out


def final_keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    return sorted(
        k
        for k, _ in list_keys(s3, bucket, prefix)
        if k.endswith(".parquet") and "/_" not in k[len(prefix) :] and not k[len(prefix) :].startswith("_")
    )


def staging_keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    return [k for k, _ in list_keys(s3, bucket, prefix.rstrip("/") + "/_staging/")]


def download_finals(s3: Any, bucket: str, prefix: str, dest: Path) -> list[Path]:
    """Download every final file under ``prefix`` into ``dest`` (keeping the Hive layout)."""
    paths = []
    for key in final_keys(s3, bucket, prefix):
        path = dest / key[len(prefix) :].lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        paths.append(path)
    return paths


def read_table(paths: Sequence[Path]) -> pa.Table:
    tables = [pq.read_table(p) for p in paths]
    return pa.concat_tables(tables) if tables else pa.table({})


def offsets_by_partition(table: pa.Table) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for p, o in zip(
        table.column("kafka_partition").to_pylist(), table.column("kafka_offset").to_pylist(), strict=True
    ):
        out.setdefault(p, []).append(o)
    return out


def assert_exported_exactly_once(
    s3: Any, bucket: str, prefix: str, dest: Path, per_partition: dict[int, int]
) -> pa.Table:
    """Nothing is left staged under ``prefix``, and its final files, read back, hold every offset
    of every partition exactly once. The table, for further checks."""
    assert staging_keys(s3, bucket, prefix) == []
    table = read_table(download_finals(s3, bucket, prefix, dest))
    assert table.num_rows == sum(per_partition.values())
    assert_exactly_once(table, per_partition)
    return table


def assert_exactly_once(table: pa.Table, per_partition: dict[int, int]) -> None:
    """Every offset 0..count-1 of every partition appears exactly once."""
    got = offsets_by_partition(table)
    for p, n in per_partition.items():
        offs = sorted(got.get(p, []))
        assert len(offs) == len(set(offs)), f"partition {p}: {len(offs) - len(set(offs))} duplicated offsets"
        missing = set(range(n)) - set(offs)
        assert not missing, f"partition {p}: {len(missing)} missing offsets, e.g. {sorted(missing)[:10]}"
        assert offs == list(range(n)), (
            f"partition {p}: unexpected offsets {sorted(set(offs) - set(range(n)))[:10]}"
        )
    extra = set(got) - set(per_partition)
    assert not extra, f"rows for unexpected partitions {extra}"


def duckdb_counts(paths: Sequence[Path]) -> tuple[int, int]:
    """(rows, distinct (partition, offset)) as DuckDB reads the files."""
    import duckdb

    files = [str(p) for p in paths]
    con = duckdb.connect()
    rows, distinct = con.execute(
        "select count(*), count(distinct (kafka_partition, kafka_offset)) from read_parquet(?)", [files]
    ).fetchone()  # type: ignore[misc]
    return int(rows), int(distinct)


# -- expected values ------------------------------------------------------------------------------


_Convert = Callable[[Any], Any]
_PY_TYPES: dict[str, type] = {"long": int, "double": float, "string": str, "boolean": bool, "bytes": bytes}


def _same(value: Any) -> Any:
    return value


def _compiled(avro: Any, named: dict[str, _Convert], expected: bool) -> _Convert:
    """One function per schema node, made once per schema rather than walked once per value:
    ``expected`` turns an Avro value into the Arrow ``to_pylist`` value the type mapping promises;
    otherwise it puts an Arrow row's map entries in key order, so maps compare key by key whatever
    their order. A named type is looked up when a value meets it (a record may refer to itself)."""
    if isinstance(avro, str):
        if avro in named:
            return lambda value: named[avro](value)
        return _same
    if isinstance(avro, list):
        non_null = [b for b in avro if b != "null"]
        if len(non_null) == 1:
            one = _compiled(non_null[0], named, expected)
            return lambda value: None if value is None else one(value)
        if not expected:
            return _same
        # A union of several types is a struct of branches: the value sits in the branch of its type.
        branches = [(b, _PY_TYPES.get(b)) if isinstance(b, str) else (b.get("name", b["type"]), None)
                    for b in non_null]
        return lambda value: None if value is None else {
            name: (value if py is not None and type(value) is py else None) for name, py in branches
        }
    if not isinstance(avro, dict):
        return _same
    kind, logical = avro["type"], avro.get("logicalType")
    if kind in ("record", "enum", "fixed"):
        named[avro["name"]] = _same  # replaced below for a record, once its fields are compiled
    if expected and logical == "uuid":
        import uuid as uuidmod

        return lambda value: uuidmod.UUID(str(value))
    if kind == "record":
        fields = [(f["name"], _compiled(f["type"], named, expected)) for f in avro["fields"]]

        def record(value: Any) -> Any:
            if value is None:
                return None
            at = value.__getitem__ if expected else value.get
            return {name: convert(at(name)) for name, convert in fields}

        named[avro["name"]] = record
        return record
    if kind == "array":
        item = _compiled(avro["items"], named, expected)
        return lambda value: None if value is None else [item(v) for v in value]
    if kind == "map":
        entry = _compiled(avro["values"], named, expected)
        if entry is _same:
            return lambda value: None if value is None else sorted(
                value.items() if expected else value)
        return lambda value: None if value is None else sorted(
            (k, entry(v)) for k, v in (value.items() if expected else value))
    if isinstance(kind, (dict, list)):
        return _compiled(kind, named, expected)
    return _same


def assert_values_as_produced(
    table: pa.Table,
    schema_name: str,
    partitions: int,
    seed: int = 0,
    every: int = 1,
    index: Callable[[int, int], int] | None = None,
    spread_hours: int = 0,
) -> int:
    """Row values equal the records the sample producer generated (record i → partition i % P,
    offset i // P, or ``index(partition, offset)`` when given), and so do the ``kafka_key`` and
    ``kafka_timestamp`` columns when present. ``every`` > 1 compares a deterministic subset
    (offsets are always checked)."""
    from consumer.samples import key_for, load_schema, make_record, spread_timestamp_ms, timestamp_ms_for

    avro = load_schema(schema_name)
    parts = table.column("kafka_partition").to_pylist()
    offs = table.column("kafka_offset").to_pylist()
    keys = table.column("kafka_key").to_pylist() if "kafka_key" in table.column_names else None
    stamps = (
        table.column("kafka_timestamp").cast(pa.int64()).to_pylist()
        if "kafka_timestamp" in table.column_names
        else None
    )
    values = table.select([f["name"] for f in avro["fields"]])
    expect, normalise = _compiled(avro, {}, expected=True), _compiled(avro, {}, expected=False)
    checked = 0
    for idx, row in zip(range(0, table.num_rows, every), _rows(values, every), strict=True):
        i = index(parts[idx], offs[idx]) if index else offs[idx] * partitions + parts[idx]
        record = make_record(schema_name, i, seed)
        expected = expect(record)
        got = normalise(row)
        if got != expected:
            diff = {k: (got[k], expected[k]) for k in expected if got.get(k) != expected[k]}
            raise AssertionError(f"row {parts[idx]}:{offs[idx]} differs from record {i}: {str(diff)[:2000]}")
        if keys is not None and keys[idx] != key_for(schema_name, record):
            raise AssertionError(f"row {parts[idx]}:{offs[idx]}: kafka_key {keys[idx]!r} is not record {i}'s")
        want_ts = spread_timestamp_ms(timestamp_ms_for(schema_name, record), i, spread_hours)
        if stamps is not None and stamps[idx] != want_ts:
            raise AssertionError(
                f"row {parts[idx]}:{offs[idx]}: kafka_timestamp {stamps[idx]} is not record {i}'s {want_ts}"
            )
        checked += 1
    return checked


def _rows(table: pa.Table, every: int, chunk: int = 2048) -> Iterator[dict[str, Any]]:
    """Rows 0, every, 2·every, … of ``table`` as ``to_pylist`` dicts, converted a chunk at a time
    (a scalar at a time costs five times as much; the whole table at once, a copy of it in Python
    objects)."""
    wanted = range(0, table.num_rows, every)
    for start in range(0, len(wanted), chunk):
        at = wanted[start:start + chunk]
        part = table.slice(at[0], len(at)) if every == 1 else table.take(pa.array(at, pa.int64()))
        yield from part.to_pylist()


def read_footer_metadata(path: Path) -> dict[str, str]:
    md = pq.read_metadata(path).metadata or {}
    return {k.decode(): v.decode() for k, v in md.items() if not k.startswith(b"ARROW:")}


def parquet_bytes(data: bytes) -> pa.Table:
    return pq.read_table(io.BytesIO(data))


# The stack's settings as `dev/stack up|status|env` print them (used by tests/conftest.py's
# `stack` fixture; here, not in conftest, because two conftest modules share that module name).
@dataclass(frozen=True)
class StackSettings:
    kafka_bootstrap: str
    s3_endpoint: str
    s3_bucket: str
    aws_access_key_id: str
    aws_secret_access_key: str
    schema_registry_url: str | None
    aws_region: str = "us-east-1"
    #: The broker's listener that asks for a login and applies ACLs (dev/stack_impl.SASL_USERS).
    kafka_sasl_bootstrap: str | None = None
    #: The broker's TLS listener and the CA file its clients trust (dev/stack_impl.ensure_tls).
    kafka_ssl_bootstrap: str | None = None
    kafka_ssl_ca: str | None = None
    #: The listener that also asks for a client certificate (client.pem/client.key beside the CA).
    kafka_mtls_bootstrap: str | None = None
    kafka_sasl_ssl_bootstrap: str | None = None

    @staticmethod
    def from_env_lines(text: str) -> StackSettings:
        env = parse_env_lines(text)
        missing = [
            k
            for k in (
                "KAFKA_BOOTSTRAP_SERVERS",
                "S3_ENDPOINT_URL",
                "S3_BUCKET",
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
            )
            if k not in env
        ]
        if missing:
            raise RuntimeError(f"dev/stack output lacks {missing}: {text!r}")
        return StackSettings(
            kafka_bootstrap=env["KAFKA_BOOTSTRAP_SERVERS"],
            s3_endpoint=env["S3_ENDPOINT_URL"],
            s3_bucket=env["S3_BUCKET"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            schema_registry_url=env.get("SCHEMA_REGISTRY_URL") or None,
            aws_region=env.get("AWS_REGION", "us-east-1"),
            kafka_sasl_bootstrap=env.get("KAFKA_SASL_BOOTSTRAP_SERVERS") or None,
            kafka_ssl_bootstrap=env.get("KAFKA_SSL_BOOTSTRAP_SERVERS") or None,
            kafka_ssl_ca=env.get("KAFKA_SSL_CA_LOCATION") or None,
            kafka_mtls_bootstrap=env.get("KAFKA_MTLS_BOOTSTRAP_SERVERS") or None,
            kafka_sasl_ssl_bootstrap=env.get("KAFKA_SASL_SSL_BOOTSTRAP_SERVERS") or None,
        )

    def as_env(self) -> dict[str, str]:
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap,
            "S3_ENDPOINT_URL": self.s3_endpoint,
            "S3_BUCKET": self.s3_bucket,
            "AWS_ACCESS_KEY_ID": self.aws_access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.aws_secret_access_key,
            "AWS_REGION": self.aws_region,
            "AWS_DEFAULT_REGION": self.aws_region,
        }
        if self.schema_registry_url:
            env["SCHEMA_REGISTRY_URL"] = self.schema_registry_url
        return env


def parse_env_lines(text: str) -> dict[str, str]:
    """Parse `KEY=VALUE` lines as printed by `dev/stack up|status|env`."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        out[key.strip()] = value.strip()
    return out


def stop_reason(stderr: str) -> str:
    """The error of a run's ``stopped: …`` event (its JSON log), or ''."""
    return next((e["error"] for e in log_events(stderr) if e["event"].startswith("stopped: ")), "")


def dev_stack_impl() -> Any:
    """``dev/stack_impl``, the stack's own code: its TLS helpers (``make_ca``,
    ``issue_broker_keystore``) make the certificates of a CA the broker does not use."""
    import importlib.util

    if "stack_impl" in sys.modules:
        return sys.modules["stack_impl"]
    spec = importlib.util.spec_from_file_location("stack_impl", REPO / "dev" / "stack_impl.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["stack_impl"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def grant(admin: Any, *grants: tuple[str, str, str], principal: str, revoke: bool = False) -> None:
    """ACLs for ``principal`` (``User:…``): (``"topic"``/``"group"``, name, ``"READ"``/``"DESCRIBE"``),
    granted (CreateAcls) or taken away (DeleteAcls)."""
    from confluent_kafka.admin import (
        AclBinding,
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    kinds = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP}
    bindings = [AclBinding(kinds[kind], name, ResourcePatternType.LITERAL, principal, "*",
                           getattr(AclOperation, op), AclPermissionType.ALLOW) for kind, name, op in grants]
    if revoke:
        filters = [AclBindingFilter(b.restype, b.name, b.resource_pattern_type, b.principal, b.host,
                                    b.operation, b.permission_type) for b in bindings]
        futures = admin.delete_acls(filters)
    else:
        futures = admin.create_acls(bindings)
    for f in futures.values():
        f.result(timeout=30)
