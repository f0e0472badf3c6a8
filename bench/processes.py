"""1 vs N member processes from one command (``consumer run --processes N``), in one benchmark run.

    python -m bench.processes                        # 600k page_view records, 4 partitions, 1 and 2
    python -m bench.processes --records 100000 --counts 1,2,4

Each count consumes the same preloaded topic (``bench.run.preload``) into its own prefix with
``--until-caught-up`` and a fresh group. Measured, from ``/proc`` every 0.2 s and the logs:

* wall time and records/s of the whole command (start to exit of the last member);
* CPU-seconds of each process: every member, the supervisor, and the stack's Kafka, S3
  (SeaweedFS) and registry processes; the machine's busy CPU-seconds (``/proc/stat``) against
  the cores × wall available, so "other" = load that is neither ours nor the stack's;
* where a member's time goes, from its log: encode (Arrow → Parquet piece), PUT + commit, rolls.

Results: ``bench/results/processes-<time>.json`` and a Markdown table on stdout (pasted into
docs/benchmarks.md by hand, with the explanation).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    CLK_TCK,
    REPO,
    RESULTS,
    Stack,
    _proc_tree,
    child_env,
    json_lines,
    machine_info,
    parquet_files,
    stack_settings,
    summarize_files,
    write_json,
)
from bench.run import log, preload


def _cpu_s(pid: int) -> float | None:
    """utime + stime of one process (not its children), None if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU-seconds of the machine since boot, from /proc/stat."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = parts[3] + parts[4]  # idle + iowait
    total = sum(parts[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


def stack_pids() -> dict[str, int]:
    """Kafka, S3 and registry pids of the running stack (``$STACK_DIR/pids`` or .cache/stack)."""
    stack_dir = Path(os.environ.get("STACK_DIR") or REPO / ".cache" / "stack")
    out: dict[str, int] = {}
    for name in ("kafka", "s3", "registry"):
        f = stack_dir / "pids" / f"{name}.pid"
        if f.exists():
            try:
                out[name] = int(f.read_text().strip())
            except ValueError:
                continue
    return out


def _tree_cpu(pid: int) -> float:
    return sum(_cpu_s(p) or 0.0 for p in _proc_tree(pid))


class TreeSampler:
    """Last-seen CPU-seconds of every process under ``root`` (members exit before the end, so
    their CPU is taken from the last sample: ≤ 0.2 s of it can be missed at the very end)."""

    def __init__(self, root: int, interval: float = 0.2) -> None:
        self.root = root
        self.interval = interval
        self.cpu: dict[int, float] = {}
        self.cmd: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for p in _proc_tree(self.root):
                c = _cpu_s(p)
                if c is not None:
                    self.cpu[p] = c
                    if p not in self.cmd:
                        self.cmd[p] = _cmdline(p)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_count(stack: Stack, topic: str, records: int, n: int, run_id: str, log_dir: Path) -> dict[str, Any]:
    import subprocess

    prefix = f"bench/{run_id}/processes-{n}"
    argv = [
        sys.executable, "-m", "consumer", "run",
        "--group-id", f"bench-{run_id}-p{n}", "--topic", topic, "--schema", "page_view",
        "--output", f"s3://{stack.bucket}/{prefix}", "--s3-endpoint-url", stack.s3_endpoint,
        "--log-format", "json", "--until-caught-up",
    ]  # fmt: skip
    if n > 1:
        argv += ["--processes", str(n), "--host-id", f"bench-{run_id}"]
    stack_before = {name: _tree_cpu(pid) for name, pid in stack_pids().items()}
    busy0, total0 = _machine_busy()
    log_dir.mkdir(parents=True, exist_ok=True)
    err_path = log_dir / f"processes-{n}.stderr"
    t0 = time.monotonic()
    with err_path.open("wb") as err:
        proc = subprocess.Popen(argv, env=child_env(stack), cwd=REPO, stdout=err, stderr=subprocess.STDOUT)
        sampler = TreeSampler(proc.pid)
        code = proc.wait(timeout=1800)
    wall = time.monotonic() - t0
    sampler.stop()
    busy1, total1 = _machine_busy()
    stack_cpu = {
        # two decimals: a warm broker serves a tiny run in a few hundredths of a CPU-second
        name: round(_tree_cpu(pid) - stack_before.get(name, 0.0), 2) for name, pid in stack_pids().items()
    }
    text = err_path.read_text(errors="replace")
    if code != 0:
        raise RuntimeError(f"--processes {n} failed (rc={code}):\n" + "\n".join(text.splitlines()[-15:]))
    events = json_lines(text)
    members = {p: c for p, c in sampler.cpu.items() if p != proc.pid or n == 1}
    supervisor_cpu = sampler.cpu.get(proc.pid, 0.0) if n > 1 else 0.0
    rgs = [e for e in events if e.get("event") == "row group durable"]
    rolls = [e for e in events if e.get("event") == "file rolled"]
    stopped = [e for e in events if e.get("event") == "stopped"]
    files = summarize_files(parquet_files(stack, prefix))
    if files["rows"] != records:
        raise RuntimeError(f"--processes {n}: {files['rows']} rows in the output, expected {records}")
    member_cpu = sorted((round(c, 1) for c in members.values()), reverse=True)
    ours = sum(members.values()) + supervisor_cpu
    busy = busy1 - busy0
    cores = (total1 - total0) / wall if wall else 0.0
    result = {
        "processes": n,
        "exit_status": code,
        "wall_s": round(wall, 1),
        "records_per_s": round(records / wall),
        "member_cpu_s": member_cpu,
        "supervisor_cpu_s": round(supervisor_cpu, 2),
        "ours_cpu_s": round(ours, 1),
        "stack_cpu_s": stack_cpu,
        "machine_busy_cpu_s": round(busy, 1),
        "machine_cpu_s_available": round(total1 - total0, 1),
        "cores_seen": round(cores, 2),
        "other_cpu_s": round(busy - ours - sum(stack_cpu.values()), 1),
        "encode_s": round(sum(e.get("encode_ms", 0) for e in rgs) / 1000, 1),
        "put_commit_s": round(sum(e.get("put_commit_ms", 0) for e in rgs) / 1000, 1),
        "roll_s": round(sum(e.get("ms", 0) for e in rolls) / 1000, 1),
        "row_groups": len(rgs),
        "files": files,
        "members_records": [e.get("records") for e in stopped],
        "members_seconds": [e.get("seconds") for e in stopped],
        "commands": sorted({c[:200] for c in sampler.cmd.values()}),
    }
    log(
        f"--processes {n}: {records} records in {result['wall_s']}s = {result['records_per_s']}/s; "
        f"members CPU {member_cpu} s, stack {stack_cpu}, machine busy {result['machine_busy_cpu_s']} "
        f"of {result['machine_cpu_s_available']} CPU-s"
    )
    return result


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| processes | wall s | records/s | CPU-s per member | Kafka CPU-s | S3 CPU-s "
        "| machine busy / available CPU-s | encode s | PUT+commit s | roll s | row groups |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        members = " + ".join(f"{c:.1f}" for c in r["member_cpu_s"])
        if r["processes"] > 1:
            members += f" (+ supervisor {r['supervisor_cpu_s']:.1f})"
        lines.append(
            f"| {r['processes']} | {r['wall_s']} | {r['records_per_s']:,} | {members} | "
            f"{r['stack_cpu_s'].get('kafka', 0)} | {r['stack_cpu_s'].get('s3', 0)} | "
            f"{r['machine_busy_cpu_s']} / {r['machine_cpu_s_available']} | {r['encode_s']} | "
            f"{r['put_commit_s']} | {r['roll_s']} | {r['row_groups']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=600_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--counts", default="1,2", help="member counts to compare, e.g. 1,2")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    stack = stack_settings()
    topic = preload(stack, "small", args.records, args.partitions, args.seed)
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:4]
    log_dir = RESULTS / "logs" / f"processes-{run_id}"
    results = []
    for n in [int(c) for c in args.counts.split(",") if c.strip()]:
        results.append(run_count(stack, topic, args.records, n, run_id, log_dir))
    out = {
        "run_id": run_id,
        "topic": topic,
        "records": args.records,
        "partitions": args.partitions,
        "machine": machine_info(),
        "results": results,
    }
    path = write_json(RESULTS / f"processes-{run_id}.json", out)
    log(f"results: {path}")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
