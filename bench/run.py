"""Benchmark harness: preload a seeded workload, run our consumer and a peer on it, measure.

    python -m bench.run                       # small: ours + Quix Streams + the consume floor, profile
    python -m bench.run --all                 # every workload + stage profile + live commit latency
    python -m bench.run --workload wide --records 20000 --partitions 4 --peer none
    python -m bench.run --latency-only --rate 2000 --duration 20

Results: ``bench/results/<run id>.json`` and ``bench/results/latest.json``; then
``python -m bench.report`` writes docs/benchmarks.md. See docs/benchmarks.md for what is measured.
"""

from __future__ import annotations

import argparse
import compileall
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.adapters import ADAPTERS, OursAdapter, QuixAdapter, RunContext
from bench.common import (
    REPO,
    RESULTS,
    WORKLOADS,
    Stack,
    client_logger,
    machine_info,
    percentile,
    stack_settings,
    write_json,
)
from bench.profile_stages import stage_split

# Long enough that start-up does not dominate the figures: our start-up, join and exit cost about
# 0.9 CPU-s whatever the run, which was a fifth of a 1M `small` run and over a quarter of a 200k
# `nested` one (the minimums). At these sizes it is under about a tenth of our CPU, and a
# long-lived consumer's rate is what the figures should show (docs/benchmarks.md, fourteenth pass).
DEFAULT_RECORDS = {"small": 3_000_000, "wide": 500_000, "nested": 1_000_000}
RATIO_KEYS = (
    "records_per_s",
    "mb_per_s",
    "records_per_cpu_s",
    "cpu_s_per_m_records",
    "peak_rss_mb",
    "rss_per_partition_mb",
    "wall_s",
    "s3_requests",
    "s3_write_per_input_byte",
    "output_bytes_per_input_byte",
)
OUTPUT_RATIO_KEYS = ("files", "row_groups", "bytes", "file_bytes_mean", "row_group_bytes_mean")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- preload ---------------------------------------------------------------------------------------
def _end_offsets(stack: Stack, topic: str) -> dict[int, int] | None:
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient

    md = AdminClient({"bootstrap.servers": stack.bootstrap, "logger": client_logger("admin")}).list_topics(
        topic=topic, timeout=10
    )
    info = md.topics.get(topic)
    if info is None or info.error is not None or not info.partitions:
        return None
    c = Consumer(
        {"bootstrap.servers": stack.bootstrap, "group.id": "bench-probe", "enable.auto.commit": False,
         "logger": client_logger("probe")}
    )
    try:
        return {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in sorted(info.partitions)
        }
    finally:
        c.close()


def preload(stack: Stack, workload: str, records: int, partitions: int, seed: int) -> str:
    """A topic holding records 0..N-1 of the seeded workload; reused when it already does."""
    from consumer.producer import produce

    schema = WORKLOADS[workload]
    topic = f"bench-{workload}-n{records}-p{partitions}-s{seed}"
    ends = _end_offsets(stack, topic)
    if ends is not None and len(ends) == partitions and sum(ends.values()) == records:
        log(f"reusing preloaded topic {topic}")
        return topic
    if ends is not None:  # half-written by an interrupted run: use a fresh name
        topic = f"{topic}-{uuid.uuid4().hex[:6]}"
    log(f"preloading {records} {workload} ({schema}) records into {topic} ({partitions} partitions)")
    res = produce(stack.bootstrap, topic, schema, records, partitions=partitions, seed=seed)
    log(f"preloaded in {res.elapsed_s:.1f}s")
    return topic


# -- one throughput run ----------------------------------------------------------------------------
def run_system(ctx: RunContext, adapter: Any, timeout_s: float = 900) -> dict[str, Any]:
    adapter.prepare(ctx)
    log(f"{adapter.name}: consuming {ctx.topic}")
    proc = adapter.run(ctx)
    res = proc.wait(timeout_s)
    figures: dict[str, Any] = adapter.collect(ctx, res)
    log(
        f"{adapter.name}: {figures['records']} records in {figures['wall_s']}s = "
        f"{figures['records_per_s']}/s, {figures['cpu_s_per_m_records']} CPU s/M, "
        f"peak RSS {figures['peak_rss_mb']} MB, {figures['output']['files']} files"
    )
    return figures


def ratios(ours: dict[str, Any], peer: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}

    def r(a: Any, b: Any) -> float | None:
        return round(a / b, 3) if isinstance(a, int | float) and isinstance(b, int | float) and b else None

    for k in RATIO_KEYS:
        out[k] = r(ours.get(k), peer.get(k))
    for k in OUTPUT_RATIO_KEYS:
        out[f"output.{k}"] = r(ours.get("output", {}).get(k), peer.get("output", {}).get(k))
    for k in ("p50_ms", "p99_ms", "max_ms"):
        if k in ours.get("latency", {}):
            out[f"latency.{k}"] = r(ours["latency"].get(k), peer.get("latency", {}).get(k))
    return out


def cleanup(stack: Stack, prefix: str) -> None:
    from bench.common import s3_client

    s3 = s3_client(stack)
    keys: list[dict[str, str]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=stack.bucket, Prefix=prefix + "/"):
        keys.extend({"Key": o["Key"]} for o in page.get("Contents", []))
    for i in range(0, len(keys), 500):
        s3.delete_objects(Bucket=stack.bucket, Delete={"Objects": keys[i : i + 500], "Quiet": True})


def run_workload(
    stack: Stack,
    run_id: str,
    workload: str,
    records: int,
    partitions: int,
    seed: int,
    peers: list[str],
    profile: bool,
    ours_args: list[str],
    log_dir: Path,
    keep_output: bool,
    startup: bool = True,
    repeat: int = 1,
) -> dict[str, Any]:
    topic = preload(stack, workload, records, partitions, seed)
    out: dict[str, Any] = {"topic": topic, "records": records, "partitions": partitions, "systems": {}}
    adapters: list[Any] = [OursAdapter(ours_args)] + [ADAPTERS[p]() for p in peers]
    runs: dict[str, list[dict[str, Any]]] = {a.name: [] for a in adapters}
    for k in range(repeat):  # the systems alternate, so a slow minute of the machine hits each
        for adapter in adapters:
            ctx = RunContext(stack, repeat_id(run_id, k), workload, WORKLOADS[workload], topic, partitions,
                             records, log_dir)
            runs[adapter.name].append(run_system(ctx, adapter))
            out.setdefault("settings", {}).update(ctx.settings)
            if not keep_output:
                cleanup(stack, adapter.prefix(ctx))
    for name, figures in runs.items():
        out["systems"][name] = median_run(figures)
    if profile:
        prof_path = log_dir / f"{workload}-ours.prof"
        adapter = OursAdapter(ours_args, profile_to=prof_path)
        ctx = RunContext(stack, run_id, workload, WORKLOADS[workload], topic, partitions, records, log_dir)
        log("ours under cProfile (stage split; throughput of this run is not reported)")
        proc = adapter.run(ctx)
        res = proc.wait(900)
        if res.returncode != 0:
            raise RuntimeError(f"profiled run failed:\n{res.stderr[-2000:]}")
        out["profile"] = stage_split(str(prof_path))
        out["profile"]["wall_s_under_profiler"] = round(res.wall_s, 2)
        log(f"top stage: {out['profile']['top_stage']}")
        if not keep_output:
            cleanup(stack, adapter.prefix(ctx))
    if startup:
        measure_startup(
            stack, run_id, workload, partitions, seed, adapters, out, log_dir, keep_output, repeat
        )
    for peer in peers:
        out.setdefault("ratios", {})[peer] = ratios(out["systems"]["ours"], out["systems"][peer])
    return out


def repeat_id(run_id: str, k: int) -> str:
    """The run id of repetition ``k``: a group and an output prefix of its own (a second run in
    the first one's group would find every offset committed and read nothing)."""
    return run_id if k == 0 else f"{run_id}-r{k}"


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of the run with the median CPU (the lower middle of an even count), every run's
    CPU-seconds per million records beside them. One whole run is reported, not a mix of runs, so
    its figures stay consistent with each other; on this shared machine one run can be 15 % off."""
    chosen = dict(sorted(runs, key=lambda f: f["cpu_s"])[(len(runs) - 1) // 2])
    if len(runs) > 1:
        chosen["repeats_cpu_s_per_m_records"] = [f["cpu_s_per_m_records"] for f in runs]
    return chosen


#: Records of the start-up run: enough for every partition to see records, files and a commit.
STARTUP_RECORDS = 1_000


def measure_startup(
    stack: Stack,
    run_id: str,
    workload: str,
    partitions: int,
    seed: int,
    adapters: list[Any],
    out: dict[str, Any],
    log_dir: Path,
    keep_output: bool,
    repeat: int = 1,
) -> None:
    """Each system once more on a topic of 1,000 records: what a run costs besides its records
    (imports, client set-up, group join, the final flush and exit). The whole-process figures
    above include it once; subtracting it gives the steady-state cost per record a long-lived
    group pays, so a reader can tell a gap in start-up from a gap per record. With ``repeat``,
    the median of as many start-up runs."""
    topic = preload(stack, workload, STARTUP_RECORDS, partitions, seed)
    schema, n, logs = WORKLOADS[workload], STARTUP_RECORDS, log_dir / "startup"
    tiny_runs: dict[str, list[dict[str, Any]]] = {a.name: [] for a in adapters}
    for k in range(repeat):
        for adapter in adapters:
            rid = repeat_id(f"{run_id}-startup", k)
            ctx = RunContext(stack, rid, workload, schema, topic, partitions, n, logs)
            tiny_runs[adapter.name].append(run_system(ctx, adapter))
            if not keep_output:
                cleanup(stack, adapter.prefix(ctx))
    for adapter in adapters:
        tiny = median_run(tiny_runs[adapter.name])
        figures = out["systems"][adapter.name]
        figures["startup_cpu_s"] = tiny["cpu_s"]
        figures.update(steady_state(figures["records"], figures["cpu_s"], tiny["records"], tiny["cpu_s"]))


def steady_state(records: int, cpu_s: float, startup_records: int, startup_cpu_s: float) -> dict[str, Any]:
    """Records per CPU-second beyond a start-up run's cost (None when the difference is not
    positive: a run too short to tell them apart)."""
    extra_records, extra_cpu = records - startup_records, cpu_s - startup_cpu_s
    if extra_records <= 0 or extra_cpu <= 0:
        return {"steady_records_per_cpu_s": None, "steady_cpu_us_per_record": None}
    return {
        "steady_records_per_cpu_s": round(extra_records / extra_cpu),
        "steady_cpu_us_per_record": round(extra_cpu / extra_records * 1e6, 2),
    }


# -- live commit latency ---------------------------------------------------------------------------
def _wait_group_stable(stack: Stack, group: str, timeout_s: float) -> None:
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": stack.bootstrap, "logger": client_logger("admin")})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            desc = admin.describe_consumer_groups([group], request_timeout=5)[group].result()
            if desc.state == ConsumerGroupState.STABLE and desc.members:
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"group {group} did not become stable within {timeout_s}s")


def run_latency(
    stack: Stack,
    run_id: str,
    adapter: Any,
    workload: str,
    partitions: int,
    rate: float,
    duration: float,
    max_age: float,
    seed: int,
    log_dir: Path,
    keep_output: bool,
) -> dict[str, Any]:
    """Produce at ``rate`` records/s with current timestamps while the system consumes; poll the
    group's committed offsets every 100 ms and match them to the produce time of those offsets."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    from consumer import samples
    from consumer.producer import ensure_topic

    schema = WORKLOADS[workload]
    topic = f"bench-live-{run_id}-{adapter.name}"
    ensure_topic(stack.bootstrap, topic, partitions)
    n = int(rate * duration)
    ctx = RunContext(
        stack, run_id, workload, schema, topic, partitions, n, log_dir, live=True, max_age_s=max_age
    )
    adapter.prepare(ctx)
    log(f"{adapter.name}: live stream {rate:.0f} records/s for {duration:.0f}s, max age {max_age}s")
    proc = adapter.run(ctx)
    group = adapter.group_id(ctx)
    _wait_group_stable(stack, group, 90)

    produced: list[list[tuple[int, float]]] = [[] for _ in range(partitions)]  # (offset, ts_s)
    done = threading.Event()

    def produce_loop() -> None:
        producer = Producer({"bootstrap.servers": stack.bootstrap, "linger.ms": 5, "acks": "all",
                             "logger": client_logger("producer")})
        parsed = samples.parsed_schema(schema)

        def on_delivery(err: Any, msg: Any) -> None:
            if err is None:
                produced[msg.partition()].append((msg.offset(), msg.timestamp()[1] / 1000))

        start = time.time()
        for i, record in enumerate(samples.generate(schema, n, seed=seed)):
            target = start + i / rate
            delay = target - time.time()
            if delay > 0:
                producer.poll(delay)
            producer.produce(
                topic,
                value=samples.encode_raw(parsed, record),
                partition=i % partitions,
                timestamp=int(time.time() * 1000),
                on_delivery=on_delivery,
            )
            producer.poll(0)
        producer.flush(30)
        done.set()

    thread = threading.Thread(target=produce_loop, daemon=True)
    thread.start()
    watcher = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": group, "enable.auto.commit": False,
                        "logger": client_logger("watcher")})
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    seen = [0] * partitions  # index into produced[p] of the first not-yet-committed record
    latencies: list[float] = []
    deadline: float | None = None
    while True:
        try:
            committed = watcher.committed(tps, timeout=5)
        except Exception:
            committed = []
        now = time.time()
        for tp in committed:
            lst = produced[tp.partition]
            i = seen[tp.partition]
            while i < len(lst) and tp.offset >= 0 and lst[i][0] < tp.offset:
                latencies.append(now - lst[i][1])
                i += 1
            seen[tp.partition] = i
        if done.is_set():
            if deadline is None:
                deadline = time.monotonic() + max_age * 5 + 30
            if len(latencies) >= sum(len(x) for x in produced) or time.monotonic() > deadline:
                break
        time.sleep(0.1)
    watcher.close()
    proc.terminate()
    res = proc.wait(120)
    figures = adapter.collect(ctx, res)
    total = sum(len(x) for x in produced)
    figures["latency"] = {
        "rate_per_s": rate,
        "duration_s": duration,
        "max_age_s": max_age,
        "produced": total,
        "committed_matched": len(latencies),
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "max_ms": round(max(latencies) * 1000, 1) if latencies else None,
    }
    figures["settings"] = ctx.settings
    log(
        f"{adapter.name}: commit latency p50 {figures['latency']['p50_ms']} ms, "
        f"p99 {figures['latency']['p99_ms']} ms"
    )
    if not keep_output:
        cleanup(stack, adapter.prefix(ctx))
    return figures


# -- CLI -------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--workload", action="append", choices=sorted(WORKLOADS), help="repeatable; default small"
    )
    ap.add_argument("--all", action="store_true", help="every workload, the stage profile and live latency")
    ap.add_argument(
        "--records", type=int, help="records per workload (default: small 3M, wide 500k, nested 1M)"
    )
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--peer", action="append", choices=[*sorted(k for k in ADAPTERS if k != "ours"), "none"])
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run every system this many times, alternating, and report each one's median run",
    )
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument(
        "--no-startup", action="store_true", help="skip the 1,000-record start-up runs (steady-state figures)"
    )
    ap.add_argument("--latency", action="store_true", help="also the live commit-latency mode")
    ap.add_argument("--latency-only", action="store_true")
    ap.add_argument("--rate", type=float, default=2000.0, help="live mode: records/s")
    ap.add_argument("--duration", type=float, default=20.0, help="live mode: seconds of producing")
    ap.add_argument(
        "--max-age", type=float, default=2.0, help="live mode: --row-group-max-age / commit interval"
    )
    ap.add_argument(
        "--ours-arg",
        action="append",
        default=[],
        help="extra consumer flag (repeatable), e.g. --ours-arg=--row-group-rows=20000",
    )
    ap.add_argument("--keep-output", action="store_true", help="keep the Parquet files in S3")
    ap.add_argument("--out", type=Path, help="results JSON (default bench/results/<run id>.json)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stack = stack_settings()
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]
    log_dir = RESULTS / "logs" / run_id
    workloads = list(WORKLOADS) if args.all else (args.workload or ["small"])
    peers = [] if args.peer and "none" in args.peer else (args.peer or ["quixstreams", "floor"])
    latency = args.all or args.latency or args.latency_only
    result: dict[str, Any] = {
        "kind": "bench",
        "run_id": run_id,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["python -m bench.run", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(),
        "stack": {"kafka": stack.bootstrap, "s3": stack.s3_endpoint, "bucket": stack.bucket},
        "workloads": {},
    }
    # Byte-compile the package as pip does at install time: with PYTHONDONTWRITEBYTECODE set (as
    # in some shells and CI) an editable checkout would otherwise recompile every module in every
    # run, and start-up would count compile time no installed consumer pays.
    compileall.compile_dir(str(REPO / "consumer"), quiet=1)
    t0 = time.monotonic()
    if not args.latency_only:
        for w in workloads:
            result["workloads"][w] = run_workload(
                stack,
                run_id,
                w,
                args.records or DEFAULT_RECORDS[w],
                args.partitions,
                args.seed,
                peers,
                profile=not args.no_profile,
                ours_args=args.ours_arg,
                log_dir=log_dir,
                keep_output=args.keep_output,
                startup=not args.no_startup,
                repeat=max(1, args.repeat),
            )
    if latency:
        lat: dict[str, Any] = {"workload": "small", "partitions": args.partitions, "systems": {}}
        for adapter in [OursAdapter(args.ours_arg), *(QuixAdapter() for p in peers if p == "quixstreams")]:
            lat["systems"][adapter.name] = run_latency(
                stack,
                run_id,
                adapter,
                "small",
                args.partitions,
                args.rate,
                args.duration,
                args.max_age,
                args.seed,
                log_dir,
                args.keep_output,
            )
        for p in peers:
            if p in lat["systems"]:
                lat.setdefault("ratios", {})[p] = ratios(lat["systems"]["ours"], lat["systems"][p])
        result["latency"] = lat
    result["total_s"] = round(time.monotonic() - t0, 1)
    out = args.out or RESULTS / f"{run_id}.json"
    write_json(out, result)
    if args.out is None:
        write_json(RESULTS / "latest.json", result)
    log(f"results: {out} in {result['total_s']}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
