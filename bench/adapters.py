"""Systems under test. A peer is one small adapter: ``prepare`` (install/configure), ``run`` (start
the process, sampled), ``collect`` (turn its output and what it wrote into the common figures).

Both adapters read the same topic and write into the same S3 server, each under its own prefix.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from bench.common import (
    OURS_VENV,
    PEER_VENV,
    REPO,
    ProcResult,
    SampledProcess,
    Stack,
    child_env,
    json_lines,
    parquet_files,
    summarize_files,
)

MB = 1_000_000


@dataclass
class RunContext:
    stack: Stack
    run_id: str
    workload: str
    schema: str
    topic: str
    partitions: int
    records: int
    log_dir: Path
    #: consumer settings (ours: CLI flags; peer: its own knobs) — recorded in the results.
    settings: dict[str, Any] = field(default_factory=dict)
    live: bool = False
    max_age_s: float = 2.0


class Adapter(Protocol):
    name: str

    def prepare(self, ctx: RunContext) -> None: ...

    def run(self, ctx: RunContext) -> SampledProcess: ...

    def collect(self, ctx: RunContext, res: ProcResult) -> dict[str, Any]: ...

    def group_id(self, ctx: RunContext) -> str: ...

    def prefix(self, ctx: RunContext) -> str: ...


def common_figures(
    ctx: RunContext,
    res: ProcResult,
    records: int,
    avro_bytes: int,
    files: list[dict[str, Any]],
    s3_requests: int,
    s3_uploaded: int,
    s3_copied: int,
    progress: list[tuple[float, int]],
) -> dict[str, Any]:
    wall = max(res.wall_s, 1e-9)
    return {
        "returncode": res.returncode,
        "records": records,
        "avro_bytes": avro_bytes,
        "wall_s": round(res.wall_s, 3),
        "records_per_s": round(records / wall),
        "mb_per_s": round(avro_bytes / MB / wall, 3),
        "cpu_s": round(res.cpu_s, 3),
        "cpu_s_per_m_records": round(res.cpu_s / records * 1e6, 2) if records else None,
        "records_per_cpu_s": round(records / res.cpu_s) if res.cpu_s else None,
        "peak_rss_mb": round(res.peak_rss / MB, 1),
        "rss_per_partition_mb": round(res.peak_rss / MB / ctx.partitions, 1),
        "output": summarize_files(files),
        "s3_requests": s3_requests,
        "s3_bytes_uploaded": s3_uploaded,
        "s3_bytes_copied": s3_copied,
        "s3_write_per_input_byte": round((s3_uploaded + s3_copied) / avro_bytes, 3) if avro_bytes else None,
        "s3_requests_per_mb_input": round(s3_requests / (avro_bytes / MB), 3) if avro_bytes else None,
        "output_bytes_per_input_byte": round(summarize_files(files)["bytes"] / avro_bytes, 3)
        if avro_bytes
        else None,
        "series": {
            "rss": [(s.t, s.rss) for s in res.samples],
            "cpu": [(s.t, s.cpu_s) for s in res.samples],
            "records": progress,
        },
    }


def _iso_to_epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


class OursAdapter:
    """This project's consumer (``python -m consumer run``)."""

    name = "ours"

    def __init__(self, extra_args: list[str] | None = None, profile_to: Path | None = None) -> None:
        self.extra_args = list(extra_args or [])
        self.profile_to = profile_to

    def group_id(self, ctx: RunContext) -> str:
        return f"bench-{ctx.run_id}-ours{'-prof' if self.profile_to else ''}"

    def prefix(self, ctx: RunContext) -> str:
        return f"bench/{ctx.run_id}/ours{'-prof' if self.profile_to else ''}"

    def argv(self, ctx: RunContext) -> list[str]:
        args = [
            "run",
            "--group-id",
            self.group_id(ctx),
            "--topic",
            ctx.topic,
            "--schema",
            ctx.schema,
            "--output",
            f"s3://{ctx.stack.bucket}/{self.prefix(ctx)}",
            "--s3-endpoint-url",
            ctx.stack.s3_endpoint,
            "--log-format",
            "json",
        ]
        if ctx.live:
            args += ["--row-group-max-age", f"{ctx.max_age_s}s"]
        else:
            args += ["--until-caught-up"]
        args += self.extra_args
        return args

    def prepare(self, ctx: RunContext) -> None:
        settings = ctx.settings.setdefault("ours", {})
        settings["args"] = self.extra_args or ["(defaults)"]
        if self.profile_to is None:
            ensure_ours_venv()
            settings["environment"] = ".cache/bench-ours-venv"

    def run(self, ctx: RunContext) -> SampledProcess:
        env = child_env(ctx.stack)
        if self.profile_to is not None:  # the stage profile needs bench/ and cProfile: the dev venv
            argv = [sys.executable, "-m", "bench.profile_stages", str(self.profile_to), "--", *self.argv(ctx)]
            name = "ours-profile"
        else:
            argv = [str(OURS_VENV / "bin" / "python"), "-m", "consumer", *self.argv(ctx)]
            env["PYTHONPATH"] = str(REPO)
            name = "ours"
        return SampledProcess(argv, env, ctx.log_dir, f"{ctx.workload}-{name}")

    def collect(self, ctx: RunContext, res: ProcResult) -> dict[str, Any]:
        events = json_lines(res.stderr)
        stopped = next((e for e in reversed(events) if e.get("event") == "stopped"), {})
        if res.returncode != 0 or not stopped:
            tail = "\n".join(res.stderr.splitlines()[-15:])
            raise RuntimeError(f"our consumer failed (rc={res.returncode}):\n{tail}")
        rgs = [e for e in events if e.get("event") == "row group durable"]
        rolls = [e for e in events if e.get("event") == "file rolled"]
        start_epoch = res_start_epoch(res)
        progress: list[tuple[float, int]] = []
        total = 0
        for e in rgs:
            total += int(e.get("rows", 0))
            progress.append((round(_iso_to_epoch(e["timestamp"]) - start_epoch, 3), total))
        files = parquet_files(ctx.stack, self.prefix(ctx))
        out = common_figures(
            ctx,
            res,
            int(stopped.get("records", 0)),
            int(stopped.get("avro_bytes", 0)),
            files,
            int(stopped.get("s3_requests", 0)),
            int(stopped.get("s3_bytes_uploaded", 0)),
            int(stopped.get("s3_bytes_copied", 0)),
            progress,
        )
        out["internal"] = {
            k: v for k, v in stopped.items() if k not in ("event", "level", "timestamp", "group")
        }
        out["log_timings_ms"] = {
            "row_group_encode": round(sum(float(e.get("encode_ms", 0)) for e in rgs), 1),
            "row_group_put_commit": round(sum(float(e.get("put_commit_ms", 0)) for e in rgs), 1),
            "roll": round(sum(float(e.get("ms", 0)) for e in rolls), 1),
            "row_groups_logged": len(rgs),
            "rolls_logged": len(rolls),
        }
        return out


def res_start_epoch(res: ProcResult) -> float:
    return res.start_epoch


class QuixAdapter:
    """Quix Streams (PyPI ``quixstreams``): ``S3FileSink`` + ``ParquetFormat`` + ``AvroDeserializer``.

    Runs in its own venv (``.cache/bench-peer-venv``, created on first use) because quixstreams
    pins ``confluent-kafka<2.13``, older than this project's.
    """

    name = "quixstreams"

    def __init__(self, commit_interval: float = 5.0, compression: str = "zstd") -> None:
        self.commit_interval = commit_interval
        self.compression = compression
        self.python = str(PEER_VENV / "bin" / "python")

    def group_id(self, ctx: RunContext) -> str:
        return f"bench-{ctx.run_id}-quix"

    def prefix(self, ctx: RunContext) -> str:
        # The sink allows only [a-zA-Z0-9 ._/] in its directory.
        return f"bench/{ctx.run_id.replace('-', '_')}/quix"

    def prepare(self, ctx: RunContext) -> None:
        ensure_peer_venv()
        version = subprocess.run(
            [
                self.python,
                "-c",
                "import quixstreams, importlib.metadata as m;"
                " print(quixstreams.__version__, m.version('confluent-kafka'))",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        ctx.settings["quixstreams"] = {
            "version": version[0],
            "confluent_kafka": version[1],
            "commit_interval_s": ctx.max_age_s if ctx.live else self.commit_interval,
            "format": f"ParquetFormat(compression={self.compression!r})",
            "deserializer": "AvroDeserializer(schema=<writer schema>)",
        }

    def run(self, ctx: RunContext) -> SampledProcess:
        argv = [
            self.python,
            str(REPO / "bench" / "quix_peer.py"),
            "--bootstrap",
            ctx.stack.bootstrap,
            "--topic",
            ctx.topic,
            "--group-id",
            self.group_id(ctx),
            "--schema-file",
            str(REPO / "schemas" / f"{ctx.schema}.avsc"),
            "--bucket",
            ctx.stack.bucket,
            "--directory",
            self.prefix(ctx),
            "--endpoint-url",
            ctx.stack.s3_endpoint,
            "--compression",
            self.compression,
            "--commit-interval",
            str(ctx.max_age_s if ctx.live else self.commit_interval),
        ]
        if not ctx.live:
            # Stop once every record was processed; the timeout is a safety net only.
            argv += ["--count", str(ctx.records), "--timeout", "60"]
        return SampledProcess(argv, child_env(ctx.stack), ctx.log_dir, f"{ctx.workload}-quix")

    def collect(self, ctx: RunContext, res: ProcResult) -> dict[str, Any]:
        stopped = next((e for e in reversed(json_lines(res.stdout)) if e.get("event") == "stopped"), {})
        if res.returncode != 0 or not stopped:
            tail = "\n".join(res.stderr.splitlines()[-15:])
            raise RuntimeError(f"quixstreams peer failed (rc={res.returncode}):\n{tail}")
        start_epoch = res_start_epoch(res)
        progress: list[tuple[float, int]] = []
        total = 0
        for e in json_lines(res.stderr):
            if e.get("event") == "file written":
                total += int(e["rows"])
                progress.append((round(float(e["t"]) - start_epoch, 3), total))
        files = parquet_files(ctx.stack, self.prefix(ctx))
        out = common_figures(
            ctx,
            res,
            sum(f["rows"] for f in files),
            int(stopped.get("avro_bytes", 0)),
            files,
            int(stopped.get("s3_requests", 0)),
            int(stopped.get("s3_bytes_uploaded", 0)),
            0,
            progress,
        )
        out["internal"] = stopped
        return out


def ensure_ours_venv() -> None:
    """A venv with only our runtime dependencies (pyproject's ``dependencies``), at the versions
    the dev venv has, running this checkout's code (PYTHONPATH). What a user runs (the Docker image
    installs the wheel without extras), and how the Quix peer runs: the dev venv adds packages the
    consumer never uses but pays for at start-up, because libraries import them when they are
    present (numpy, which matplotlib pulls in, by pyarrow; rich, which import-linter pulls in, by
    structlog): about 0.2 CPU-s per start."""
    import tomllib
    from importlib.metadata import distributions, version

    py = OURS_VENV / "bin" / "python"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = "\n".join(
        sorted(
            {
                f"{d.metadata['Name']}=={d.version}"
                for d in distributions()
                if d.metadata["Name"] and d.metadata["Name"] != project["name"]
            }
        )
    )
    marker = OURS_VENV / "pins.txt"  # the dev venv's versions it was built with
    if py.exists() and marker.exists() and marker.read_text() == pins:
        compile_ours()
        return
    print(f"creating {OURS_VENV} (runtime dependencies, pyarrow {version('pyarrow')}) …", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(OURS_VENV)], check=True)
    constraints = OURS_VENV / "constraints.txt"
    constraints.write_text(pins + "\n")
    deps = project["dependencies"]
    subprocess.run([str(py), "-m", "pip", "install", "-q", "-c", str(constraints), *deps], check=True)
    marker.write_text(pins)
    compile_ours()


def compile_ours() -> None:
    """Bring ``consumer/__pycache__`` up to date, as installing the wheel does (pip compiles what
    it installs). Without it, a checkout edited since its bytecode was written (or a shell with
    ``PYTHONDONTWRITEBYTECODE``) compiles every changed module again at each start: 0.1-0.15
    CPU-s per run that no user pays."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([str(OURS_VENV / "bin" / "python"), "-m", "compileall", "-q", str(REPO / "consumer")],
                   check=True, env=env)


def ensure_peer_venv() -> None:
    py = PEER_VENV / "bin" / "python"
    ok = (
        py.exists()
        and subprocess.run(
            [str(py), "-c", "import quixstreams, boto3, pyarrow, fastavro"], capture_output=True
        ).returncode
        == 0
    )
    if ok:
        return
    print(f"creating the peer venv {PEER_VENV} (quixstreams[s3,parquet,avro]) …", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "quixstreams[s3,parquet,avro]"], check=True)


class FloorAdapter:
    """The consume floor (bench/floor_peer.py): a bare confluent-kafka loop touching value, offset,
    timestamp and key of every record — what merely reading the topic costs in Python."""

    name = "floor"

    def group_id(self, ctx: RunContext) -> str:
        return f"bench-{ctx.run_id}-floor"

    def prefix(self, ctx: RunContext) -> str:
        return f"bench/{ctx.run_id}/floor"

    def prepare(self, ctx: RunContext) -> None:
        ctx.settings["floor"] = {"loop": "consume(5000) touching value/offset/timestamp/key"}

    def run(self, ctx: RunContext) -> SampledProcess:
        argv = [
            sys.executable, str(REPO / "bench" / "floor_peer.py"), "--bootstrap", ctx.stack.bootstrap,
            "--topic", ctx.topic, "--group-id", self.group_id(ctx), "--count", str(ctx.records),
        ]
        return SampledProcess(argv, child_env(ctx.stack), ctx.log_dir, f"{ctx.workload}-floor")

    def collect(self, ctx: RunContext, res: ProcResult) -> dict[str, Any]:
        stopped = next((e for e in reversed(json_lines(res.stdout)) if e.get("event") == "stopped"), {})
        if res.returncode != 0 or not stopped:
            raise RuntimeError(f"floor peer failed (rc={res.returncode}): {res.stderr[-1500:]}")
        return common_figures(
            ctx, res, int(stopped["records"]), int(stopped["avro_bytes"]), [], 0, 0, 0, []
        )


ADAPTERS: dict[str, type[OursAdapter] | type[QuixAdapter] | type[FloorAdapter]] = {
    "ours": OursAdapter,
    "quixstreams": QuixAdapter,
    "floor": FloorAdapter,
}
