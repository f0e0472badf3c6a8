"""Configuration: one typed object, filled from defaults ← config file ← environment ← flags.

Every setting has a flag and an environment variable (``CONSUMER_<NAME>``; the stack's standard
names such as ``KAFKA_BOOTSTRAP_SERVERS`` and ``S3_ENDPOINT_URL`` are honoured too) and may sit in
a TOML config file. Credentials are deliberately *not* settings: S3 keys come from the standard AWS
chain (environment, profile, instance role) so they never travel through flags that end up in shell
history, process listings or logs. librdkafka properties pass through untouched (``-X key=value``)
and are redacted when logged if they look secret.

Validation collects every problem before failing, one clear line each, so a bad deployment is
fixed in one round trip instead of one error at a time.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from consumer.bucketing import TemplateError, parse_template

KAFKA_COLUMNS = ("topic", "partition", "offset", "timestamp", "key", "headers")
COMPRESSIONS = ("zstd", "snappy", "gzip", "lz4", "brotli", "none")
ON_ERROR = ("dead-letter", "fail")
#: S3's server-side encryption a bucket policy may demand on every write (``x-amz-server-side-
#: encryption``): S3-managed keys, a KMS key, or two layers of KMS (what Kafka Connect's S3 sink
#: calls ``s3.ssea.name``).
S3_SSE = ("AES256", "aws:kms", "aws:kms:dsse")
DECODERS = ("native", "python")  # native: consumer._native (Rust); python: fastavro
FRAMINGS = ("raw", "confluent")
SCHEMA_EVOLUTIONS = ("resolve", "roll")  # resolve: one reader schema per file; roll: file per writer
SUBJECT_STRATEGIES = ("topic", "record", "topic-record")  # Confluent subject name strategies
_SECRET_HINTS = ("password", "passphrase", "secret", "token", "key.pem", "jaas", "credentials")

MIN_S3_PART = 5 * 1024 * 1024


#: librdkafka's spellings of ``auto.offset.reset``; here it only says where a partition with no
#: committed position starts (a position the log no longer holds always stops the run).
AUTO_OFFSET_RESETS = ("smallest", "earliest", "beginning", "largest", "latest", "end", "error")


class ConfigError(ValueError):
    """Invalid configuration; ``problems`` holds one human-readable line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Config:
    """Everything a consumer run needs. Sizes are bytes, durations seconds."""

    bootstrap_servers: str = ""
    group_id: str = ""
    topics: tuple[str, ...] = ()
    output: str = ""  # s3://bucket/prefix
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    #: sent with every object this consumer writes (None: the bucket's default encryption)
    s3_sse: str | None = None
    s3_sse_kms_key_id: str | None = None  # with aws:kms: that key, not the account's default
    framing: str = "raw"
    schema: str | None = None  # a name from schemas/ or a path to an .avsc (raw framing)
    schema_registry_url: str | None = None
    # Byte budget first: 8 MiB encoded lands every piece above S3's 5 MiB part minimum, so a roll
    # copies bodies server-side instead of downloading and re-uploading them; the row count is
    # only a safety bound for tiny records.
    row_group_rows: int = 1_000_000
    row_group_bytes: int = 8 * 1024 * 1024
    row_group_max_age: float = 60.0
    file_rows: int | None = None
    file_bytes: int = 256 * 1024 * 1024
    file_max_age: float | None = 3600.0
    compression: str = "zstd"
    kafka_columns: tuple[str, ...] = ("partition", "offset", "timestamp", "key")
    memory_bytes: int = 512 * 1024 * 1024
    on_error: str = "dead-letter"
    decoder: str = "native"  # chunk decoder; python (fastavro) is the reference and the fallback
    # Confluent framing: resolve every writer schema to one reader schema per file (Avro schema
    # resolution), or roll the file at every writer schema change (the old behaviour).
    schema_evolution: str = "resolve"
    subject_strategy: str = "topic"  # where the reader (latest version) is looked up
    registry_timeout: float = 300.0  # registry down this long while a new schema id waits: exit
    until_caught_up: bool = False
    caught_up_timeout: float = 300.0  # how long --until-caught-up waits for other members' partitions
    # static members: partitions owned by no member this long make this member rejoin (0: never);
    # consumer/orphans.py says why
    orphan_grace: float = 30.0
    shutdown_timeout: float = 25.0  # SIGTERM → exit bound (below Kubernetes' 30 s grace period)
    processes: int = 1  # group members run from one command (consumer/supervisor.py)
    host_id: str = ""  # static group.instance.id prefix with --processes; "" = the hostname
    batch_size: int = 5000
    poll_timeout: float = 0.5
    kafka_properties: Mapping[str, str] = field(default_factory=dict)
    log_format: str = "auto"  # auto | json | console
    log_level: str = "info"
    metrics_port: int | None = None  # Prometheus /metrics, /healthz, /readyz (consumer.metrics); off
    stall_timeout: float = 300.0  # records waiting this long past row-group-max-age: stall alarm
    stall_exit: float | None = 900.0  # … this long: exit 7 so a supervisor restarts us (None: never)
    partition_by: str | None = None  # time-bucketed layout template (consumer/bucketing.py); None: plain
    # the one new topic id (KIP-516) recovery may continue older output from: a topic moved to
    # another cluster with its offsets kept (PartitionWorker._refuse_another_incarnation)
    accept_topic_id: str | None = None
    timezone: str = "UTC"  # IANA zone the buckets are formatted in
    bucket_grace: float = 600.0  # a bucket file rolls once the watermark is this far past its end
    max_open_buckets: int = 8  # open bucket files per partition (the oldest rolls above it)

    # -- derived ---------------------------------------------------------------------------
    @property
    def bucket(self) -> str:
        return split_output(self.output)[0]

    @property
    def prefix(self) -> str:
        return split_output(self.output)[1]

    @property
    def consumer_protocol(self) -> bool:
        """True when ``-X group.protocol=consumer``: KIP-848's rebalance protocol (Kafka 4.0 and
        later), where the coordinator computes assignments and moves partitions one by one. The
        client then takes no assignor, session timeout or heartbeat interval of its own (the
        broker's ``group.consumer.*`` settings hold them), and there is no two-round cooperative
        rebalance to leave partitions unowned (consumer/orphans.py)."""
        return self.kafka_properties.get("group.protocol", "classic").strip().lower() == "consumer"

    def s3_encryption(self) -> dict[str, str]:
        """The server-side encryption arguments of every S3 write (PutObject,
        CreateMultipartUpload), or none for the bucket's default."""
        out = {"ServerSideEncryption": self.s3_sse} if self.s3_sse else {}
        if self.s3_sse_kms_key_id:
            out["SSEKMSKeyId"] = self.s3_sse_kms_key_id
        return out

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict safe to log: secret-looking librdkafka properties masked."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("schema_registry_url", "s3_endpoint_url") and value:
                value = re.sub(r"//[^/@]*@", "//***@", value)
            if f.name == "kafka_properties":
                value = {
                    k: ("***" if any(h in k.lower() for h in _SECRET_HINTS) else v) for k, v in value.items()
                }
            out[f.name] = value
        return out

    def problems(self, *, need_group: bool = True) -> list[str]:
        """Every reason this configuration cannot run, one line each (empty when valid)."""
        p: list[str] = []
        if not self.bootstrap_servers:
            p.append("bootstrap servers missing: pass --bootstrap-servers or set KAFKA_BOOTSTRAP_SERVERS")
        if need_group and not self.group_id:
            p.append("group id missing: pass --group-id or set CONSUMER_GROUP_ID")
        if not self.topics:
            p.append("no topics: pass --topic (repeatable) or set CONSUMER_TOPICS=a,b")
        for t in self.topics:
            if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", t):
                p.append(f"topic {t!r} is not a valid Kafka topic name")
        if not self.output:
            p.append("output missing: pass --output s3://bucket/prefix or set CONSUMER_OUTPUT")
        else:
            try:
                split_output(self.output)
            except ValueError as exc:
                p.append(str(exc))
        if self.framing not in FRAMINGS:
            p.append(f"framing {self.framing!r} unknown: use one of {', '.join(FRAMINGS)}")
        if self.framing == "raw" and not self.schema:
            p.append("raw framing needs a writer schema: pass --schema NAME|PATH.avsc")
        if self.framing == "confluent" and not self.schema_registry_url:
            p.append("confluent framing needs --schema-registry-url (or SCHEMA_REGISTRY_URL)")
        if self.s3_sse is not None and self.s3_sse not in S3_SSE:
            p.append(f"s3-sse {self.s3_sse!r} unknown: use one of {', '.join(S3_SSE)}")
        if self.s3_sse_kms_key_id and not (self.s3_sse or "").startswith("aws:kms"):
            p.append("s3-sse-kms-key-id names a KMS key: pass --s3-sse aws:kms (or aws:kms:dsse) too")
        if self.compression not in COMPRESSIONS:
            p.append(f"compression {self.compression!r} unknown: use one of {', '.join(COMPRESSIONS)}")
        for c in self.kafka_columns:
            if c not in KAFKA_COLUMNS:
                p.append(f"kafka column {c!r} unknown: use some of {', '.join(KAFKA_COLUMNS)}")
        if self.on_error not in ON_ERROR:
            p.append(f"on-error {self.on_error!r} unknown: use one of {', '.join(ON_ERROR)}")
        if self.decoder not in DECODERS:
            p.append(f"decoder {self.decoder!r} unknown: use one of {', '.join(DECODERS)}")
        if self.schema_evolution not in SCHEMA_EVOLUTIONS:
            p.append(f"schema-evolution {self.schema_evolution!r} unknown: use one of "
                     f"{', '.join(SCHEMA_EVOLUTIONS)}")
        if self.subject_strategy not in SUBJECT_STRATEGIES:
            p.append(f"subject-strategy {self.subject_strategy!r} unknown: use one of "
                     f"{', '.join(SUBJECT_STRATEGIES)}")
        if self.registry_timeout <= 0:
            p.append("registry-timeout must be positive, e.g. 5m")
        for name in ("row_group_rows", "row_group_bytes", "file_bytes", "memory_bytes", "batch_size"):
            if getattr(self, name) <= 0:
                p.append(f"{name.replace('_', '-')} must be positive")
        if self.file_rows is not None and self.file_rows <= 0:
            p.append("file-rows must be positive")
        if self.shutdown_timeout <= 0:
            p.append("shutdown-timeout must be positive")
        if self.processes < 1:
            p.append("processes must be at least 1")
        if self.row_group_max_age <= 0:
            p.append("row-group-max-age must be positive")
        if self.file_max_age is not None and self.file_max_age <= 0:
            p.append("file-max-age must be positive")
        if self.memory_bytes < self.row_group_bytes:
            p.append(
                f"memory-bytes ({self.memory_bytes}) is smaller than one row group "
                f"({self.row_group_bytes}): raise --memory-bytes or lower --row-group-bytes"
            )
        if self.log_format not in ("auto", "json", "console"):
            p.append("log-format must be auto, json or console")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            p.append(f"metrics-port {self.metrics_port} is not a TCP port (0-65535; 0 picks a free one)")
        if self.stall_timeout <= 0:
            p.append("stall-timeout must be positive")
        if self.orphan_grace < 0:
            p.append("orphan-grace must be 0 (never rejoin) or a positive duration")
        if self.stall_exit is not None and self.stall_exit <= self.stall_timeout:
            p.append(f"stall-exit ({self.stall_exit:g}s) must be longer than stall-timeout "
                     f"({self.stall_timeout:g}s), or 'none' to never exit on a stall")
        if self.partition_by is not None:
            try:
                parse_template(self.partition_by, self.timezone)
            except TemplateError as exc:
                p.append(str(exc))
        elif self.timezone != "UTC":
            p.append("--timezone only applies with --partition-by: add a template or drop --timezone")
        if self.bucket_grace < 0:
            p.append("bucket-grace must not be negative")
        if self.max_open_buckets < 1:
            p.append("max-open-buckets must be at least 1")
        for k in self.kafka_properties:
            if k in ("enable.auto.commit", "enable.auto.offset.store"):
                p.append(f"-X {k} is managed by the consumer (offsets are committed only when durable)")
        p += self._flags_given_as_properties()
        reset = self.kafka_properties.get("auto.offset.reset")
        if reset is not None and reset not in AUTO_OFFSET_RESETS:
            p.append(
                f"-X auto.offset.reset={reset} unknown: use earliest or latest (where a partition with no "
                "committed position starts), or error (such a partition stops the run)"
            )
        return p

    def _flags_given_as_properties(self) -> list[str]:
        """``-X`` properties that say what a flag says, differently. librdkafka would take the
        ``-X`` value (it is applied last), while the consumer describes, fences and names its files
        by the flag's group, and names the flag's brokers in its errors: with ``-X group.id`` the
        group that commits would not be the group the protocol checks. Given once, or twice
        alike, they are fine. Under ``--processes N`` each member's ``group.instance.id`` comes
        from ``--host-id``, and a ``-X`` one would be silently replaced."""
        p: list[str] = []
        for key, flag, given, why in (
            ("group.id", "--group-id", self.group_id, "librdkafka would commit to the -X group while the "
             "consumer checks, fences and names its files by the --group-id one"),
            ("bootstrap.servers", "--bootstrap-servers", self.bootstrap_servers, "librdkafka would read "
             "from the -X brokers while the consumer's messages name the --bootstrap-servers ones"),
        ):
            said = self.kafka_properties.get(key)
            if said is not None and said != given:
                p.append(f"-X {key}={said} disagrees with {flag} {given or '(not given)'}: {why}; give "
                         f"it once, with {flag}, and drop -X {key}")
        if self.processes > 1 and "group.instance.id" in self.kafka_properties:
            p.append(f"-X group.instance.id is set for each member by --processes {self.processes} "
                     "(<host id>-<index>): drop it, and choose the ids' prefix with --host-id")
        return p

    def validated(self, *, need_group: bool = True) -> Config:
        problems = self.problems(need_group=need_group)
        if problems:
            raise ConfigError(problems)
        return self


def split_output(output: str) -> tuple[str, str]:
    m = re.match(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(.*))?$", output)
    if not m:
        raise ValueError(f"output {output!r} must look like s3://bucket/prefix")
    return m.group(1), (m.group(2) or "").strip("/")


# -- parsing helpers (used by the CLI and the config file) ----------------------------------------

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "ki": 1024,
    "mi": 1024**2,
    "gi": 1024**3,
}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_size(text: str | int) -> int:
    """``'16MiB'`` → 16777216; ``'8MB'`` → 8000000; plain numbers are bytes."""
    if isinstance(text, int):
        return text
    m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$", text)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"size {text!r} not understood: use e.g. 1048576, 64MiB, 8MB")
    return int((Decimal(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]).to_integral_value(ROUND_HALF_UP))


def parse_duration(text: str | float | int) -> float:
    """``'500ms'`` → 0.5; ``'5m'`` → 300; plain numbers are seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$", text)
    if not m or m.group(2).lower() not in _DURATION_UNITS:
        raise ValueError(f"duration {text!r} not understood: use e.g. 500ms, 30s, 5m, 1h")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]


def parse_list(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(text, (list, tuple)):
        return tuple(str(t).strip() for t in text if str(t).strip())
    return tuple(t.strip() for t in text.split(",") if t.strip())


def parse_bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"boolean {text!r} not understood: use true or false")


def parse_properties(items: list[str] | str) -> dict[str, str]:
    """``['a=1', 'b=2']`` or ``'a=1,b=2'`` → dict; rejects items without '='."""
    if isinstance(items, str):
        items = [i for i in items.split(",") if i.strip()]
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"librdkafka property {item!r} must be key=value")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


#: Prefixes of librdkafka properties only a consumer takes (CONFIGURATION.md, scope C). An
#: AdminClient given one warns on stderr (CONFWARN), once per property and client.
_CONSUMER_ONLY = (
    "group.", "partition.assignment.", "session.timeout.", "heartbeat.", "coordinator.query.",
    "max.poll.", "enable.auto.", "auto.commit.", "auto.offset.", "queued.", "fetch.",
    "max.partition.fetch.", "offset.store.", "isolation.level", "enable.partition.eof", "check.crcs",
    "consume.",
)  # fmt: skip


def admin_config(config: Config) -> dict[str, Any]:
    """An AdminClient's configuration for the cluster ``config`` consumes from: the bootstrap
    servers and the ``-X`` properties (security, client id, sockets…) but not the consumer-only
    ones, which librdkafka would warn about on stderr."""
    props = {k: v for k, v in config.kafka_properties.items() if not k.startswith(_CONSUMER_ONLY)}
    return {"bootstrap.servers": config.bootstrap_servers, **props}


_OPTIONAL = {"file_rows", "file_max_age", "schema", "schema_registry_url", "s3_endpoint_url", "s3_sse",
             "s3_sse_kms_key_id",
             "metrics_port", "stall_exit", "partition_by", "accept_topic_id"}
_CONVERTERS: dict[str, Any] = {
    "topics": parse_list,
    "kafka_columns": parse_list,
    "row_group_rows": int,
    "file_rows": int,
    "batch_size": int,
    "row_group_bytes": parse_size,
    "file_bytes": parse_size,
    "memory_bytes": parse_size,
    "row_group_max_age": parse_duration,
    "file_max_age": parse_duration,
    "poll_timeout": parse_duration,
    "until_caught_up": parse_bool,
    "caught_up_timeout": parse_duration,
    "orphan_grace": parse_duration,
    "shutdown_timeout": parse_duration,
    "processes": int,
    "kafka_properties": parse_properties,
    "metrics_port": int,
    "stall_timeout": parse_duration,
    "stall_exit": parse_duration,
    "registry_timeout": parse_duration,
    "bucket_grace": parse_duration,
    "max_open_buckets": int,
}

# Standard variable names that the local stack (and most deployments) already export.
ENV_ALIASES = {
    "bootstrap_servers": ("KAFKA_BOOTSTRAP_SERVERS",),
    "s3_endpoint_url": ("S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
    "schema_registry_url": ("SCHEMA_REGISTRY_URL",),
    "s3_region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
}


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in table.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, name + "."))
        elif isinstance(v, bool):
            out[name] = "true" if v else "false"
        else:
            out[name] = str(v)
    return out


def env_name(name: str) -> str:
    return "CONSUMER_" + name.upper()


def _convert(name: str, raw: Any, source: str, problems: list[str]) -> Any:
    if name in _OPTIONAL and (raw is None or raw == "" or str(raw).lower() == "none"):
        return None
    conv = _CONVERTERS.get(name)
    try:
        if conv is None:
            return str(raw)
        if conv is parse_properties and isinstance(raw, Mapping):
            return {str(k): str(v) for k, v in raw.items()}
        return conv(raw)
    except (ValueError, TypeError) as exc:
        problems.append(f"{source}: {exc}")
        return None


def load(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
) -> Config:
    """Build a :class:`Config`: defaults ← TOML file ← environment ← flags (later wins).

    ``flags`` holds already-typed or raw-string values keyed by field name; ``None`` values mean
    "not given". Raises :class:`ConfigError` listing every unparsable value; call
    :meth:`Config.validated` afterwards for cross-field checks.
    """
    return load_given(flags, env, config_file)[0]


def load_given(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
) -> tuple[Config, frozenset[str]]:
    """:func:`load`, and the names of the settings the file, the environment or the flags gave
    (the others are defaults, which the entry point may fit to where it runs)."""
    env = os.environ if env is None else env
    flags = flags or {}
    names = {f.name for f in fields(Config)}
    problems: list[str] = []
    values: dict[str, Any] = {}

    config_file = config_file or env.get("CONSUMER_CONFIG")
    if config_file:
        try:
            data = tomllib.loads(Path(config_file).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError([f"config file {config_file}: {exc}"]) from exc
        kafka_table = data.pop("kafka", None)
        if isinstance(kafka_table, dict):
            # Unquoted dotted keys (sasl.password = "…") are nested tables in TOML: flatten them
            # back into librdkafka's dotted property names.
            data["kafka_properties"] = _flatten(kafka_table)
        for key, raw in data.items():
            name = key.replace("-", "_")
            if name not in names:
                problems.append(f"config file {config_file}: unknown setting {key!r}")
                continue
            values[name] = _convert(name, raw, f"config file {config_file}: {key}", problems)

    for name in names:
        for var in (env_name(name), *ENV_ALIASES.get(name, ())):
            if var in env and env[var] != "":
                values[name] = _convert(name, env[var], f"environment {var}", problems)
                break

    for name, raw in flags.items():
        if raw is None or name not in names:
            continue
        if name == "kafka_properties":
            merged = dict(values.get("kafka_properties") or {})
            merged.update(_convert(name, raw, "flag -X", problems) or {})
            values[name] = merged
        else:
            values[name] = _convert(name, raw, f"flag --{name.replace('_', '-')}", problems)

    if problems:
        raise ConfigError(problems)
    given = {k: v for k, v in values.items() if v is not None or k in _OPTIONAL}
    return replace(Config(), **given), frozenset(given)
