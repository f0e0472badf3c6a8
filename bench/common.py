"""Shared pieces of the benchmark harness: stack settings, machine info, the /proc sampler, S3 listing."""

from __future__ import annotations

import json
import logging
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
PEER_VENV = REPO / ".cache" / "bench-peer-venv"
#: Ours runs with its runtime dependencies only, as the Docker image installs them; see
#: :func:`bench.adapters.ensure_ours_venv`.
OURS_VENV = REPO / ".cache" / "bench-ours-venv"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

#: Reference workloads: name → schema in schemas/.
WORKLOADS: dict[str, str] = {"small": "page_view", "wide": "metrics", "nested": "order"}


@dataclass(frozen=True)
class Stack:
    bootstrap: str
    s3_endpoint: str
    bucket: str
    env: dict[str, str]


def client_logger(name: str) -> logging.Logger:
    """A ``logger`` for the harness's own Kafka clients (``{"logger": client_logger(...)}``): their
    librdkafka lines come out as ``[bench <name>] LEVEL message`` on stderr, beside the harness's
    own, instead of librdkafka's raw ``%5|1796…|PARTCNT|rdkafka#producer-1|`` format."""
    logger = logging.getLogger(f"bench.{name}")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"[bench {name}] %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def stack_settings() -> Stack:
    """Settings of the running local stack (``dev/stack env``), overridable by the environment."""
    out = subprocess.run(
        [sys.executable, str(REPO / "dev" / "stack"), "env"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    env: dict[str, str] = {}
    for line in out.splitlines():
        if "=" in line and not line.startswith("#"):
            k, _, v = line.partition("=")
            env[k.strip()] = v.strip()
    env.setdefault("AWS_REGION", "us-east-1")
    env["AWS_DEFAULT_REGION"] = env["AWS_REGION"]
    return Stack(env["KAFKA_BOOTSTRAP_SERVERS"], env["S3_ENDPOINT_URL"], env["S3_BUCKET"], env)


def child_env(stack: Stack) -> dict[str, str]:
    env = dict(os.environ)
    env.update(stack.env)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def machine_info() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pyarrow": _version("pyarrow"),
        "confluent_kafka": _version("confluent-kafka"),
        "fastavro": _version("fastavro"),
        "loadavg_at_start": list(os.getloadavg()),
    }


# -- process sampling ------------------------------------------------------------------------------
def _proc_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc/*/stat ppid)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def _rss_cpu(pid: int) -> tuple[int, float]:
    """(RSS bytes, CPU seconds incl. waited-for children) of one process, (0, 0) if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        rss = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
                break
    except (OSError, IndexError, ValueError):
        return 0, 0.0
    # fields[0] is state (field 3); utime/stime/cutime/cstime are fields 14-17.
    ticks = sum(int(x) for x in fields[11:15])
    return rss, ticks / CLK_TCK


@dataclass
class Sample:
    t: float
    rss: int
    cpu_s: float


@dataclass
class ProcResult:
    returncode: int
    wall_s: float
    cpu_s: float
    peak_rss: int
    samples: list[Sample] = field(default_factory=list)
    stdout: str = ""
    stderr: str = ""
    start_epoch: float = 0.0


class SampledProcess:
    """A child process whose RSS and CPU time (with descendants) is sampled every ``interval`` s."""

    def __init__(
        self,
        argv: Sequence[str],
        env: dict[str, str],
        log_dir: Path,
        name: str,
        interval: float = 0.1,
        cwd: Path = REPO,
    ) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.out_path = log_dir / f"{name}.stdout"
        self.err_path = log_dir / f"{name}.stderr"
        self._out = self.out_path.open("wb")
        self._err = self.err_path.open("wb")
        self.started = time.monotonic()
        self.start_epoch = time.time()
        self.proc = subprocess.Popen(list(argv), env=env, cwd=cwd, stdout=self._out, stderr=self._err)
        self.interval = interval
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, cpu = 0, 0.0
            for p in _proc_tree(self.proc.pid):
                r, c = _rss_cpu(p)
                rss += r
                cpu += c
            if rss:
                self.samples.append(Sample(round(time.monotonic() - self.started, 3), rss, round(cpu, 3)))
            self._stop.wait(self.interval)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> ProcResult:
        """Reap the child (``wait4``: exact CPU time of it and its waited-for children)."""
        deadline = time.monotonic() + timeout
        status = None
        ru = None
        while time.monotonic() < deadline:
            pid, st, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                status, ru = st, usage
                break
            time.sleep(0.05)
        if status is None:
            self.proc.kill()
            _, status, ru = os.wait4(self.proc.pid, 0)
        wall = time.monotonic() - self.started
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self._stop.set()
        self._thread.join()
        self._out.close()
        self._err.close()
        cpu = ru.ru_utime + ru.ru_stime if ru else (self.samples[-1].cpu_s if self.samples else 0.0)
        peak = max([s.rss for s in self.samples] + [ru.ru_maxrss * 1024 if ru else 0])
        return ProcResult(
            returncode=self.proc.returncode,
            wall_s=wall,
            cpu_s=cpu,
            peak_rss=peak,
            samples=self.samples,
            stdout=self.out_path.read_text(errors="replace"),
            stderr=self.err_path.read_text(errors="replace"),
            start_epoch=self.start_epoch,
        )


def json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


# -- S3 --------------------------------------------------------------------------------------------
def s3_client(stack: Stack) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=stack.s3_endpoint,
        aws_access_key_id=stack.env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=stack.env["AWS_SECRET_ACCESS_KEY"],
        region_name=stack.env["AWS_REGION"],
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def parquet_files(stack: Stack, prefix: str) -> list[dict[str, Any]]:
    """Visible Parquet files under ``prefix`` (path parts starting with ``_`` are hidden) with
    their size, rows and row groups (footer only)."""
    import io

    import pyarrow.parquet as pq

    s3 = s3_client(stack)
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=stack.bucket, Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            key, size = obj["Key"], int(obj["Size"])
            rel = key[len(prefix) + 1 :]
            if not key.endswith(".parquet") or any(part.startswith(("_", ".")) for part in rel.split("/")):
                continue
            tail_len = min(size, 1 << 20)
            tail = s3.get_object(Bucket=stack.bucket, Key=key, Range=f"bytes={size - tail_len}-{size - 1}")[
                "Body"
            ].read()
            footer_len = int.from_bytes(tail[-8:-4], "little")
            if footer_len + 8 > len(tail):
                tail = s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read()
            # A minimal envelope: magic + (nothing) + footer + length + magic; pyarrow reads only the footer.
            envelope = b"PAR1" + tail[-(footer_len + 8) :]
            md = pq.read_metadata(io.BytesIO(envelope))
            out.append({"key": key, "bytes": size, "rows": md.num_rows, "row_groups": md.num_row_groups})
    return out


def summarize_files(files: list[dict[str, Any]]) -> dict[str, Any]:
    sizes = sorted(f["bytes"] for f in files)
    rgs = sum(f["row_groups"] for f in files)
    total = sum(sizes)
    return {
        "files": len(files),
        "row_groups": rgs,
        "rows": sum(f["rows"] for f in files),
        "bytes": total,
        "file_bytes_mean": round(total / len(files)) if files else 0,
        "file_bytes_min": sizes[0] if sizes else 0,
        "file_bytes_max": sizes[-1] if sizes else 0,
        "row_group_bytes_mean": round(total / rgs) if rgs else 0,
    }


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path
