"""Command line: ``consumer run | replay | finish | check | produce | show | verify``.

Every ``run`` flag is also an environment variable (``CONSUMER_<FLAG>``, e.g.
``CONSUMER_ROW_GROUP_BYTES=8MiB``) and a key of the optional TOML file (``--config``). Invalid
configuration fails fast with one line per problem and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

# Process-wide settings read when pyarrow is first imported (consumer.config), so they are set
# before it; an operator's own value wins.
# - pyarrow imports numpy, whose OpenBLAS starts a pool of spinning worker threads at import: about
#   0.1 CPU-second per process start, for linear algebra this consumer never does.
# - Arrow's default pool (mimalloc) kept 30–60 MB more resident than the system allocator at the
#   same CPU (docs/benchmarks.md, fourth pass): on `wide` the peak went over --memory-bytes +
#   100 MB with it (627–641 MB against 637) and stays under without (572–611).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

from consumer import config as cfgmod
from consumer import container
from consumer import log as logmod
from consumer.budget import fit_to_limit

_RUN_FLAGS: list[tuple[str, dict[str, Any]]] = [
    ("--bootstrap-servers", {"help": "Kafka bootstrap servers (KAFKA_BOOTSTRAP_SERVERS)"}),
    ("--group-id", {"help": "consumer group id"}),
    ("--topic", {"dest": "topics", "action": "append", "help": "topic to consume (repeatable)"}),
    ("--output", {"help": "s3://bucket/prefix for Parquet output"}),
    ("--s3-endpoint-url", {"help": "S3 endpoint for S3-compatible servers (S3_ENDPOINT_URL)"}),
    ("--s3-sse", {"choices": cfgmod.S3_SSE, "help": "server-side encryption sent with every object "
                  "written, for a bucket policy that demands it (default: the bucket's own)"}),
    ("--s3-sse-kms-key-id", {"help": "with --s3-sse aws:kms: the KMS key (id, ARN or alias)"}),
    ("--framing", {"choices": cfgmod.FRAMINGS, "help": "raw Avro or Confluent wire format"}),
    ("--schema", {"help": "writer schema for raw framing: a name in schemas/ or an .avsc path"}),
    ("--schema-registry-url", {"help": "Confluent-compatible registry (SCHEMA_REGISTRY_URL)"}),
    ("--row-group-rows", {"help": "flush a row group at this many rows"}),
    ("--row-group-bytes", {"help": "flush a row group at about this encoded size, e.g. 16MiB"}),
    ("--row-group-max-age", {"help": "flush (and commit) at least this often, e.g. 60s"}),
    ("--file-rows", {"help": "roll the file at this many rows"}),
    ("--file-bytes", {"help": "roll the file at about this size, e.g. 256MiB"}),
    ("--file-max-age", {"help": "roll the file at this age, e.g. 1h ('none' to disable)"}),
    ("--partition-by", {"help": "time-bucketed layout, e.g. 'dt={ts:%%Y-%%m-%%d}/hr={ts:%%H}' (field path or "
                        "@timestamp; see docs/design.md); default: topic=/partition= only"}),
    ("--timezone", {"help": "IANA time zone the --partition-by buckets are formatted in (UTC)"}),
    ("--bucket-grace", {"help": "roll a bucket's file once records are this far past its end (10m)"}),
    ("--max-open-buckets", {"help": "open bucket files per partition; above it the oldest rolls (8)"}),
    ("--compression", {"choices": cfgmod.COMPRESSIONS}),
    ("--kafka-columns", {"help": f"comma list of {','.join(cfgmod.KAFKA_COLUMNS)}"}),
    ("--memory-bytes", {"help": "process-wide budget for buffered rows, e.g. 512MiB"}),
    ("--on-error", {"choices": cfgmod.ON_ERROR, "help": "bad records: dead-letter or fail"}),
    ("--decoder", {"choices": cfgmod.DECODERS,
                   "help": "Avro chunk decoder: native (Rust, default) or python (fastavro)"}),
    ("--schema-evolution", {"choices": cfgmod.SCHEMA_EVOLUTIONS,
                            "help": "confluent framing: resolve writer schemas to one reader schema "
                            "per file (default), or roll a file at every writer schema change"}),
    ("--subject-strategy", {"choices": cfgmod.SUBJECT_STRATEGIES,
                            "help": "subject whose latest version is the reader schema: topic "
                            "(<topic>-value, default), record (record full name), topic-record"}),
    ("--registry-timeout", {"help": "registry unreachable this long while a new schema id waits: "
                            "exit (5m); until then the partition pauses and retries"}),
    ("--batch-size", {"help": "records per consume() call (fewer, for large records, while the process is "
                      "over its memory plan's soft limit)"}),
    ("--log-format", {"choices": ("auto", "json", "console")}),
    ("--log-level", {}),
    ("--metrics-port", {"help": "serve Prometheus /metrics, /healthz and /readyz on this port (off)"}),
    ("--stall-timeout", {"help": "records waiting this long past --row-group-max-age raise the stall "
                         "alarm: error logs, /readyz 503 (5m)"}),
    ("--stall-exit", {"help": "… and this long: exit with status 7 (15m; 'none' never exits)"}),
    ("--accept-topic-id", {"help": "continue output read from an earlier topic of the same name from the "
                           "topic with this id (KIP-516): only for a topic moved to another cluster "
                           "with its offsets kept; recovery names the id when it stops"}),
    ("--orphan-grace", {"help": "static membership: partitions owned by no group member this long "
                        "make one member rejoin so the group rebalances (30s; 0 never)"}),
]


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    for flag, kw in _RUN_FLAGS:
        p.add_argument(flag, default=None, **kw)
    p.add_argument(
        "--until-caught-up",
        action="store_true",
        default=None,
        help="exit 0 once every partition of the topics (this member's and the others') is "
        "committed at the end offsets seen at start and every file is final; exit 6 naming the "
        "partitions still held elsewhere after --caught-up-timeout",
    )
    p.add_argument("--caught-up-timeout", default=None,
                   help="how long --until-caught-up waits for partitions other members hold (300s)")
    p.add_argument("--shutdown-timeout", default=None,
                   help="SIGTERM/SIGINT/SIGHUP: flush and commit what fits in this time, then exit 0 (25s); "
                   "rows that did not make it are consumed again after a restart")
    p.add_argument(
        "-X",
        dest="kafka_properties",
        action="append",
        metavar="KEY=VALUE",
        help="any librdkafka consumer property (repeatable)",
    )
    p.add_argument("--config", help="TOML config file (CONSUMER_CONFIG)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="consumer", description="Kafka Avro map records → Parquet on S3, exactly once."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="consume topics into Parquet files on S3")
    _add_run_flags(run)
    run.add_argument(
        "--processes",
        default=None,
        help="run this many group members, each its own process with the static group.instance.id "
        "<host id>-<index>, supervised: crashed members restart with backoff, SIGTERM reaches all "
        "(default 1: this process is the member)",
    )
    run.add_argument("--host-id", default=None,
                     help="prefix of the members' group.instance.id with --processes (default: hostname)")

    replay = sub.add_parser(
        "replay",
        help="re-export a bounded slice of history to its own prefix (no group; resumable; idempotent)",
    )
    _add_run_flags(replay)
    replay.add_argument(
        "--from",
        dest="start",
        default=None,
        help="beginning (default) | 0=100,1=250 | ts:<epoch ms> | ISO time",
    )
    replay.add_argument(
        "--to",
        dest="stop",
        default=None,
        help="end offsets seen at start (default) | 0=900,1=999 | ts:<epoch ms> | ISO time",
    )

    finish = sub.add_parser(
        "finish",
        help="make final the open files no run will finish: of a topic deleted from the cluster (its "
        "last rows are staged only), or in an output the group moved from; exits 0 when every one is "
        "final",
        description="After a topic is deleted, its files left open by the group's last run stay "
        "staged: no run can consume the topic again to finish them. This job checks that the "
        "cluster says the topic does not exist, then rolls every staged file of it (with the same "
        "--group-id and --output as the runs) to its final file, keeping every staged row. The same "
        "for an output the group has moved from (--output changed, and the group's commits of every "
        "staged partition name the new one): each file is finished where the new output begins. "
        "Otherwise a topic that exists is refused: `consumer run --topic <t> --until-caught-up` "
        "finishes its files.",
    )
    _add_run_flags(finish)

    check = sub.add_parser(
        "check",
        help="validate the run configuration and probe Kafka, S3 and the registry (health checks)",
        description="Reads the configuration like `run` (flags, CONSUMER_* environment, --config) "
        "and checks it, then the brokers and topics, the bucket, the registry (confluent framing) "
        "and, with --group-active, that the group has a member. Exit status: 0 all passed, "
        "1 a check failed, 2 invalid configuration.",
    )
    _add_run_flags(check)
    check.add_argument(
        "--group-active",
        action="store_true",
        help="also require the consumer group to have at least one member",
    )
    check.add_argument(
        "--write",
        action="store_true",
        help="also write under the output prefix what `run` probes at start (an object under "
        "_probe/, created once and refused twice: conditional writes by PUT and multipart), then "
        "delete it",
    )
    check.add_argument("--timeout", type=float, default=10.0, help="seconds per probe (default 10)")

    prod = sub.add_parser("produce", help="produce seeded sample Avro records to a topic")
    prod.add_argument("--bootstrap-servers", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    prod.add_argument("--topic", required=True)
    prod.add_argument("--schema", default="page_view", help="name in schemas/ (page_view, metrics, order)")
    prod.add_argument("--count", type=int, default=10_000)
    prod.add_argument("--partitions", type=int, default=4)
    prod.add_argument("--seed", type=int, default=0)
    prod.add_argument("--start", type=int, default=0, help="index of the first record to produce")
    prod.add_argument("--spread-hours", type=int, default=0,
                      help="shift Kafka timestamps by a shuffled 0..N-1 hours (late/early data)")
    prod.add_argument("--framing", choices=cfgmod.FRAMINGS, default="raw")
    prod.add_argument("--schema-registry-url", default=os.environ.get("SCHEMA_REGISTRY_URL"))

    show = sub.add_parser("show", help="list final files, row groups, rows and sizes under a prefix")
    show.add_argument("--output", default=os.environ.get("CONSUMER_OUTPUT"), help="s3://bucket/prefix")
    show.add_argument("--s3-endpoint-url", default=os.environ.get("S3_ENDPOINT_URL"))
    show.add_argument("--sample", type=int, default=0, help="also print this many rows of the first file")

    ver = sub.add_parser(
        "verify",
        help="check the output against Kafka: no loss, no duplicates, only valid final files",
        description="Exit status: 0 if every invariant holds, 1 if one is violated, 2 when it could "
        "not verify (a usage error, Kafka did not answer, or S3 refused or failed a read).",
    )
    ver.add_argument("--output", default=os.environ.get("CONSUMER_OUTPUT"), help="s3://bucket/prefix")
    ver.add_argument("--topic", required=True)
    ver.add_argument(
        "--bootstrap-servers",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
        help="Kafka bootstrap servers (KAFKA_BOOTSTRAP_SERVERS); without it only the files are checked",
    )
    who = ver.add_mutually_exclusive_group()
    who.add_argument(
        "--group-id",
        default=os.environ.get("CONSUMER_GROUP_ID"),
        help="check up to this group's committed offsets (CONSUMER_GROUP_ID); default: end offsets",
    )
    who.add_argument(
        "--committed", metavar="P=OFFSET,…", help="check up to these positions, e.g. 0=123,1=456"
    )
    ver.add_argument(
        "--contiguous",
        action="store_true",
        help="assume every offset in [low watermark, committed) exists (fast; wrong for "
        "compacted or transactional topics)",
    )
    ver.add_argument(
        "--allow-staging",
        action="store_true",
        help="staged pieces are fine (a consumer is live or will resume)",
    )
    ver.add_argument("--partition-by", default=os.environ.get("CONSUMER_PARTITION_BY"),
                     help="the run's --partition-by template: bucket folders are checked against it "
                     "(every row in the bucket its time says)")
    ver.add_argument("--timezone", default=os.environ.get("CONSUMER_TIMEZONE") or "UTC",
                     help="the run's --timezone (UTC)")
    ver.add_argument("--since", metavar="WHEN",
                     help="check for loss only from here on, for an output kept N days by a lifecycle "
                     "rule: a duration before now (7d, 36h), an ISO time, ts:<epoch ms> or "
                     "PARTITION=OFFSET,…; duplicates and files are checked everywhere")
    ver.add_argument("--with-output", metavar="s3://bucket/prefix", action="append", default=[],
                     help="another output the group wrote this topic to before --output moved "
                     "(repeatable): its files count as this output's, so every offset must be in "
                     "exactly one of them")
    ver.add_argument("--json", action="store_true", help="print the report as JSON")
    ver.add_argument("--s3-endpoint-url", default=os.environ.get("S3_ENDPOINT_URL"))
    ver.add_argument("-X", dest="kafka_properties", action="append", metavar="KEY=VALUE", default=[],
                     help="a librdkafka property of its Kafka clients (repeatable): the run's -X security "
                     "settings (TLS, SASL); group.* properties are not used")
    return parser


def make_store(bucket: str, endpoint_url: str | None, region: str = "us-east-1",
               encryption: dict[str, str] | None = None) -> Any:
    from consumer.storage import S3Store

    log = logmod.get("consumer.storage")

    def on_retry(op: str, exc: BaseException, delay: float) -> None:
        log.warning(
            "S3 request failed, retrying",
            op=op,
            error=type(exc).__name__,
            detail=str(exc)[:200],
            retry_in_s=round(delay, 2),
        )

    store = S3Store(bucket, endpoint_url=endpoint_url, region=region, on_retry=on_retry,
                    encryption=encryption)
    if store.equal_parts:
        log.info("the endpoint takes multipart uploads of equal parts only (Cloudflare R2): rolls "
                 "compose final files in 8 MiB parts, across piece boundaries through this process")
    return store


def connected(store: Any, command: str) -> bool:
    """Build ``store``'s S3 client now (``S3Store.connect``; no request is sent). What botocore
    refuses there, an endpoint URL, an AWS_PROFILE that does not exist or keys given in part, is
    said as ``consumer: <command>: S3 client: …``; False then (exit 2). Built later, at the first
    request, it came out as a traceback."""
    try:
        store.connect()
    except Exception as exc:
        print(f"consumer: {command}: S3 client: {type(exc).__name__}: {exc}", file=sys.stderr)
        return False
    return True


def _store_of(config: cfgmod.Config) -> Callable[[str], Any]:
    """Another bucket's store, made at its first use and kept: the output a group moved to there,
    which a run going back and ``consumer finish`` read (consumer.worker.SharedState.store_of).
    Same endpoint, region and credentials as the run's own bucket."""

    @functools.cache
    def store_of(bucket: str) -> Any:
        other = make_store(bucket, config.s3_endpoint_url, config.s3_region, config.s3_encryption())
        other.connect()
        return other

    return store_of


@contextlib.contextmanager
def settled_heap(batch_size: int) -> Iterator[None]:
    """Keep Python's cycle collector out of the record path while a run lasts.

    Each ``consume()`` creates ``batch_size`` Message objects that the collector tracks, all alive
    until the batch is dispatched, and frees them together afterwards. With the default gen-0
    threshold (700) every batch set off several collections that promoted the live Messages to
    older generations, and then full collections that walked the whole heap: pyarrow, botocore's
    service models, every module. That was 0.79 of 7.8 CPU-seconds on 1M ``page_view`` records
    (docs/benchmarks.md). So, once start-up is over: freeze what exists (it lives as long as the
    process; the collector stops walking it) and set the gen-0 threshold above a batch, so a
    collection only runs when container objects really accumulate. Records never form cycles;
    the rare cyclic garbage (exceptions with tracebacks) is still collected, a little later.

    The collector is turned on here if the process entry paused it for start-up
    (:mod:`consumer.__main__`). No collection runs before the freeze: the few thousand objects of
    start-up garbage it would find cost less memory than the walk over the whole heap costs time
    (0.03-0.06 CPU-s). Restored on exit, so an in-process caller (tests) gets its collector back
    as it was.
    """
    thresholds, was_enabled = gc.get_threshold(), gc.isenabled()
    gc.freeze()
    gc.set_threshold(max(thresholds[0], 4 * batch_size), *thresholds[1:])
    gc.enable()
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
        if not was_enabled:
            gc.disable()


def fit_to_container(config: cfgmod.Config, given: frozenset[str]) -> cfgmod.Config:
    """``config`` with ``--memory-bytes`` fitted under the container's memory limit, if it is the
    default (:func:`consumer.budget.fit_to_limit`); ConfigError for a budget given by hand that the
    container cannot hold. ``--processes N`` members share the limit: the supervisor hands each its
    share as a flag."""
    budget, problem = fit_to_limit(config.memory_bytes, container.memory_limit(), config.processes,
                                   given="memory_bytes" in given)
    if problem is not None:
        raise cfgmod.ConfigError([problem])
    return replace(config, memory_bytes=budget)


def cmd_run(args: argparse.Namespace) -> int:
    replay = args.command == "replay"
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config", "start", "stop")}
    if replay and not flags.get("group_id"):
        flags["group_id"] = "consumer-replay"  # librdkafka wants one; a replay never commits to it
    try:
        loaded, given = cfgmod.load_given(flags, config_file=args.config)
        config = fit_to_container(loaded, given).validated()
    except cfgmod.ConfigError as exc:
        for problem in exc.problems:
            print(f"consumer: config: {problem}", file=sys.stderr)
        return 2
    logmod.configure(config.log_format, config.log_level)
    if config.memory_bytes != loaded.memory_bytes:
        logmod.get("consumer.cli").info(
            "memory budget fitted to the container's memory limit", memory_bytes=config.memory_bytes,
            default=loaded.memory_bytes, limit=container.memory_limit(), processes=config.processes,
        )
    from consumer.decoding import Decoder, load_schema
    from consumer.registry import SchemaRegistryClient
    from consumer.runner import GroupRunner, Runner, resident_bytes

    try:
        schema = load_schema(config.schema) if config.framing == "raw" and config.schema else None
    except Exception as exc:
        print(f"consumer: config: schema {config.schema!r}: {exc}", file=sys.stderr)
        return 2
    if args.command == "run" and config.processes > 1:
        from consumer.supervisor import supervise

        gc.enable()  # the supervisor lives as long as its members; the entry paused the collector

        return supervise(
            [*args.run_args, "--memory-bytes", str(config.memory_bytes)]
            if config.memory_bytes != loaded.memory_bytes else args.run_args,
            processes=config.processes,
            host_id=config.host_id,
            shutdown_timeout=config.shutdown_timeout,
            metrics_port=getattr(config, "metrics_port", None),
            bounded=config.until_caught_up,
        )
    registry = SchemaRegistryClient(config.schema_registry_url) if config.schema_registry_url else None
    decoder = Decoder(config.framing, schema=schema, registry=registry)
    store = make_store(config.bucket, config.s3_endpoint_url, config.s3_region, config.s3_encryption())
    if not connected(store, "config"):
        return 2
    if replay:
        from consumer.replay import Bound, ReplayRunner

        try:
            start, stop = Bound.parse(args.start), Bound.parse(args.stop)
        except ValueError as exc:
            print(f"consumer: replay: {exc}", file=sys.stderr)
            return 2
    try:
        if replay:
            runner: Runner = ReplayRunner(
                config, store=store, decoder=decoder, start=start, stop=stop, process_rss=resident_bytes
            )
        elif args.command == "finish":
            from consumer.finish import FinishRunner

            runner = FinishRunner(config, store=store, decoder=decoder, process_rss=resident_bytes,
                                  store_of=_store_of(config))
        else:
            runner = GroupRunner(config, store=store, decoder=decoder, process_rss=resident_bytes,
                                 store_of=_store_of(config))
    except cfgmod.ConfigError as exc:
        for problem in exc.problems:
            print(f"consumer: config: {problem}", file=sys.stderr)
        return 2
    runner.install_signal_handlers()
    from consumer.metrics import Observer

    observer = Observer(runner, port=config.metrics_port)
    try:
        observer.start()
    except OSError as exc:
        print(f"consumer: config: metrics port {config.metrics_port}: {exc}", file=sys.stderr)
        runner.consumer.close()
        return 2
    try:
        with settled_heap(config.batch_size):
            code = runner.run()
    finally:
        observer.stop()
    if runner.exit_without_client:
        # librdkafka is stuck inside close(), or close was skipped (a static member): destroying
        # the client at exit would block or close it after all. Everything durable is written and
        # committed; end the process here.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def cmd_check(args: argparse.Namespace) -> int:
    """Exit 0 if the configuration is valid and every dependency answers, 1 if not, 2 on bad config."""
    from consumer.check import run_checks
    from consumer.decoding import load_schema

    flags = {k: v for k, v in vars(args).items()
             if k not in ("command", "config", "group_active", "timeout", "write")}
    try:
        loaded, given = cfgmod.load_given(flags, config_file=args.config)
        config = fit_to_container(loaded, given).validated()
    except cfgmod.ConfigError as exc:
        for problem in exc.problems:
            print(f"consumer: config: {problem}", file=sys.stderr)
        return 2
    if config.framing == "raw" and config.schema:
        try:
            load_schema(config.schema)
        except Exception as exc:
            print(f"consumer: config: schema {config.schema!r}: {exc}", file=sys.stderr)
            return 2
    print(f"ok   config: valid ({config.framing} framing, topics {', '.join(config.topics)})")
    if (limit := container.memory_limit()) is not None:
        mb = 1000 * 1000
        lowered = " (the default, lowered to fit)" if config.memory_bytes < loaded.memory_bytes else ""
        print(f"ok   memory: --memory-bytes {config.memory_bytes // mb} MB{lowered}, + 100 MB for each of "
              f"{config.processes} member(s), fits the container's limit of {limit // mb} MB")
    results = run_checks(config, timeout=args.timeout, group_active=args.group_active, write=args.write)
    for result in results:
        print(result.line(), file=sys.stdout if result.ok else sys.stderr)
    return 0 if all(r.ok for r in results) else 1


def cmd_produce(args: argparse.Namespace) -> int:
    from consumer.producer import ProduceError, produce
    from consumer.registry import RegistryError

    if not args.bootstrap_servers:
        print("consumer: produce: pass --bootstrap-servers or set KAFKA_BOOTSTRAP_SERVERS", file=sys.stderr)
        return 2
    try:
        result = produce(
            args.bootstrap_servers,
            args.topic,
            args.schema,
            args.count,
            partitions=args.partitions,
            seed=args.seed,
            framing=args.framing,
            registry_url=args.schema_registry_url,
            start=args.start,
            spread_hours=args.spread_hours,
        )
    except (ProduceError, RegistryError) as exc:
        print(f"consumer: produce: {exc}", file=sys.stderr)
        return 1
    print(
        f"produced {result.count} {args.schema} records to {result.topic} "
        f"({len(result.partition_counts)} partitions, {args.framing} framing"
        + (f", schema id {result.schema_id}" if result.schema_id is not None else "")
        + f") in {result.elapsed_s:.1f}s"
    )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from consumer.errors import EXIT_STORAGE
    from consumer.inspect import describe_output
    from consumer.storage import FIRST_CONTACT_S, StorageError

    if not args.output:
        print("consumer: show: pass --output s3://bucket/prefix", file=sys.stderr)
        return 2
    try:
        bucket, prefix = cfgmod.split_output(args.output)
    except ValueError as exc:
        print(f"consumer: show: {exc}", file=sys.stderr)
        return 2
    store = make_store(bucket, args.s3_endpoint_url)
    if not connected(store, "show"):
        return 2
    try:
        store.reach(f"{prefix}/" if prefix else "", FIRST_CONTACT_S)
        print(describe_output(store, prefix, sample_rows=args.sample))
    except StorageError as exc:
        print(f"consumer: show: {exc}", file=sys.stderr)
        return EXIT_STORAGE
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Exit 0 if the output holds every invariant, 1 if not, 2 when it could not verify (usage,
    Kafka not answering)."""
    import json
    import time

    from consumer.storage import StorageError
    from consumer.verify import parse_committed, parse_since, verify

    if not args.output:
        print("consumer: verify: pass --output s3://bucket/prefix (or set CONSUMER_OUTPUT)", file=sys.stderr)
        return 2
    try:
        bucket, prefix = cfgmod.split_output(args.output)
        committed = parse_committed(args.committed) if args.committed else None
        since = parse_since(args.since, time.time()) if args.since else None
        others = [cfgmod.split_output(o) for o in args.with_output]
        properties = {k: v for k, v in cfgmod.parse_properties(args.kafka_properties).items()
                      if not k.startswith("group.")}  # its clients never join a group
    except ValueError as exc:
        print(f"consumer: verify: {exc}", file=sys.stderr)
        return 2
    store = make_store(bucket, args.s3_endpoint_url)
    stores = {bucket: store}
    for other_bucket, _ in others:
        stores.setdefault(other_bucket, make_store(other_bucket, args.s3_endpoint_url))
    if not all(connected(s, "verify") for s in stores.values()):
        return 2
    try:
        report = verify(
            store,
            prefix,
            args.topic,
            bootstrap_servers=args.bootstrap_servers,
            kafka_config=properties,
            group_id=None if committed is not None else args.group_id,
            committed=committed,
            contiguous=args.contiguous,
            allow_staging=args.allow_staging,
            partition_by=args.partition_by,
            timezone=args.timezone,
            since=since,
            with_outputs=[(stores[b], p) for b, p in others],
        )
    except ValueError as exc:
        print(f"consumer: verify: {exc}", file=sys.stderr)
        return 2
    except StorageError as exc:  # not a finding about the output: S3 did not let it be read
        print(f"consumer: verify: could not read the output, so nothing was verified: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_json(), indent=2) if args.json else report.to_text())
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None, *, collector_paused: bool = False) -> int:
    """Run one command. ``collector_paused``: the process entry turned the cycle collector off for
    start-up (:mod:`consumer.__main__`); a run turns it back on when its start-up is over
    (:func:`settled_heap`), every other command here but ``check``.

    ``check`` (the compose health check, run every few seconds) keeps it off to its end. Its Kafka
    clients live only in the probes' forked children (:mod:`consumer.check`), which inherit the
    collector off: an AdminClient's results are delivered on librdkafka's own thread, and a
    collection that starts there and finalizes a client destroys it on that thread, which crashes
    the process (confluent-kafka-python PR 2129, which turns the collector off around such calls
    for the same reason). A check lives for seconds; what it leaves for the collector is small."""
    args = build_parser().parse_args(argv)
    if collector_paused and args.command not in ("run", "replay", "finish", "check"):
        gc.enable()
    words = list(sys.argv[1:] if argv is None else argv)
    args.run_args = words[words.index("run") + 1 :] if args.command == "run" else []  # for --processes
    handlers = {
        "run": cmd_run,
        "replay": cmd_run,
        "finish": cmd_run,
        "check": cmd_check,
        "produce": cmd_produce,
        "show": cmd_show,
        "verify": cmd_verify,
    }
    return handlers[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
