"""``consumer run --processes N``: N members of the consumer group from one command.

Each member is a separate process (the GIL makes threads pointless for this CPU-bound work) with
its own static ``group.instance.id`` = ``<host id>-<index>`` (``--host-id``, default the hostname),
so a restarted member takes its partitions back at once instead of after the session timeout, and
N commands on N hosts with distinct host ids form one group. The supervisor:

* starts the members (``consumer run <the same flags> --processes 1 -X group.instance.id=…``);
  with ``--until-caught-up`` every member runs with it, and the command ends when all have;
* restarts a member that crashed — any exit status other than 0, 6 (``--until-caught-up`` gave up
  waiting for partitions held elsewhere: the member is done, the others go on) and the *stop*
  statuses 2 (configuration) and 3 (bad record under ``--on-error fail``), including death by a signal —
  after an exponential backoff (1 s, 2 s, 4 s … capped at 30 s; reset once a member has run 60 s);
* on a stop status stops the other members too: the same configuration fails everywhere, and a
  halted partition needs an operator, so the command must end and say so;
* forwards SIGTERM/SIGINT to every member, waits ``--shutdown-timeout`` + 5 s for them (each
  bounds its own flush by ``--shutdown-timeout``), then SIGKILLs what is left (safe: nothing
  uncommitted is ever committed) — give the pod a grace period above that;
* asks the kernel to SIGTERM the members if the supervisor itself dies (``PR_SET_PDEATHSIG``);
* shares one lock file with the members, under which each process writes its log lines, so that
  lines longer than a pipe keeps whole (a traceback) are never spliced (:class:`log.LineLock`).

Exit status: 0 when every member's last exit was 0; otherwise the most severe last exit status of
any member, in this order: 5 (integrity / fatal client), 4 (S3), any other crash status (e.g. a
member that was still waiting to be restarted, or 128+N for death by signal N), 3 (bad record),
2 (configuration), 6 (``--until-caught-up`` incomplete). A member that dies of the SIGTERM or
SIGINT it was sent during a stop (before its handlers were installed) counts as 0. With
``--until-caught-up`` (a bounded job), a signal N that stopped the command before every member
finished makes it exit 128 + N, as each member does (``errors.interrupted``): not done, a rerun
resumes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from consumer import log as logmod
from consumer.errors import (
    EXIT_BAD_RECORD,
    EXIT_CONFIG,
    EXIT_FATAL,
    EXIT_INCOMPLETE,
    EXIT_OK,
    EXIT_STORAGE,
    interrupted,
)
from consumer.signals import dump_stacks_on_request, install_stop_handler, stop_signals

#: Exit statuses after which a member is not restarted (restarting cannot help).
STOP_STATUSES = frozenset({EXIT_CONFIG, EXIT_BAD_RECORD})
_KNOWN_ORDER = (EXIT_FATAL, EXIT_STORAGE, None, EXIT_BAD_RECORD, EXIT_CONFIG, EXIT_INCOMPLETE)  # None: others

KILL_GRACE = 5.0  # seconds beyond --shutdown-timeout before stragglers are killed
POLL = 0.2


def severity(status: int) -> int:
    """Rank of an exit status for the command's own status: lower is more severe; 0 is last."""
    if status == EXIT_OK:
        return len(_KNOWN_ORDER)
    if status in _KNOWN_ORDER:
        return _KNOWN_ORDER.index(status)
    return _KNOWN_ORDER.index(None)


def overall_status(statuses: Sequence[int]) -> int:
    """0 if every member's last exit was 0, else the most severe (see the module docstring)."""
    bad = [s for s in statuses if s != EXIT_OK]
    return min(bad, key=severity) if bad else EXIT_OK


def exit_status(returncode: int) -> int:
    """A Popen return code as a shell reports it: death by signal N is 128 + N."""
    return returncode if returncode >= 0 else 128 - returncode


@dataclass(frozen=True)
class Backoff:
    base: float = 1.0
    cap: float = 30.0
    stable_after: float = 60.0  # a member that ran this long starts its backoff again from base

    def delay(self, failures: int) -> float:
        return float(min(self.cap, self.base * 2 ** max(failures - 1, 0)))


def instance_ids(host_id: str, processes: int) -> list[str]:
    host = host_id or socket.gethostname()
    return [f"{host}-{i}" for i in range(processes)]


@dataclass
class Member:
    index: int
    instance_id: str
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0  # consecutive crashes
    restart_at: float | None = None
    last_status: int | None = None  # exit status of the last run
    starts: int = 0
    stopped_unfinished: bool = False  # ended by the stop's signal, by its handler or not

    @property
    def live(self) -> bool:
        return self.proc is not None

    @property
    def settled(self) -> bool:
        """Neither running nor waiting for a restart."""
        return self.proc is None and self.restart_at is None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Supervisor:
    def __init__(
        self,
        command: Callable[[Member], list[str]],
        instance_ids: Sequence[str],
        *,
        shutdown_timeout: float,
        backoff: Backoff | None = None,
        env: dict[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        kill_grace: float = KILL_GRACE,
        bounded: bool = False,
    ) -> None:
        self.command = command
        self.kill_grace = kill_grace
        self.members = [Member(i, iid) for i, iid in enumerate(instance_ids)]
        self.shutdown_timeout = shutdown_timeout
        self.backoff = backoff or Backoff()
        self.env = env
        self.clock = clock
        self.log = logmod.get("consumer.supervisor")
        self.stop_requested = False
        #: ``--until-caught-up``: the members end by themselves once done
        self.bounded = bounded
        #: the signal that stopped the command (None: not a signal, e.g. a member's stop status)
        self.stop_signal: int | None = None
        #: the signals that stop the command, and that a member stopped by (consumer.signals)
        self.stop_signals: tuple[int, ...] = stop_signals()
        self.stopping = False
        self.kill_at: float | None = None
        #: while :meth:`run` runs, the descriptor of the file under whose lock every member and
        #: the supervisor write their log lines (inherited by each member; unlinked at once)
        self._line_lock: int | None = None

    def request_stop(self, signum: int = signal.SIGTERM, *_: Any) -> None:
        if not self.stop_requested:
            self.stop_signal = signum
        self.stop_requested = True

    def install_signal_handlers(self) -> None:
        """SIGTERM, SIGINT and SIGHUP (unless ignored, as under ``nohup``) stop every member;
        SIGUSR1 logs this process's stacks (each member answers its own; the
        ``member started`` lines give their pids) (consumer.signals)."""
        self.stop_signals = install_stop_handler(self.request_stop)
        dump_stacks_on_request()

    # -- members ---------------------------------------------------------------------------------
    def _start(self, m: Member) -> None:
        argv = self.command(m)
        env = self.env
        fds: tuple[int, ...] = ()
        if self._line_lock is not None:
            env = {**(os.environ if env is None else env), logmod.LINE_LOCK_FD_ENV: str(self._line_lock)}
            fds = (self._line_lock,)
        m.proc = subprocess.Popen(
            argv, env=env, pass_fds=fds, preexec_fn=_die_with_parent if sys.platform == "linux" else None
        )
        m.started_at = self.clock()
        m.restart_at = None
        m.starts += 1
        self.log.info(
            "member started", member=m.index, instance_id=m.instance_id, pid=m.proc.pid, run=m.starts
        )

    def _exited(self, m: Member, returncode: int, now: float) -> None:
        status = exit_status(returncode)
        m.proc = None
        m.last_status = status
        ran = round(now - m.started_at, 1)
        if self.stopping:
            died_of: dict[str, str] = {}
            if status - 128 in self.stop_signals:
                # Died of the very signal it was sent, before it had installed its handler (a
                # member that just started): nothing was consumed, so it stopped as asked. The
                # line says so: a member that ran a while should have stopped by its handler.
                # A member of a bounded job that its handler stopped before it finished exits
                # with the same number (errors.interrupted): it stopped as asked, unfinished.
                # (SIGHUP: a closed terminal reaches every member of its process group itself.)
                if returncode < 0:
                    died_of["died_of"] = signal.Signals(status - 128).name
                else:
                    died_of["unfinished_by"] = signal.Signals(status - 128).name
                status = m.last_status = EXIT_OK
                m.stopped_unfinished = True
            self.log.info("member stopped", member=m.index, status=status, ran_s=ran, **died_of)
        elif status == EXIT_OK:
            self.log.info("member finished", member=m.index, status=status, ran_s=ran)
        elif status == EXIT_INCOMPLETE:
            # --until-caught-up gave up waiting for partitions another member holds: a restart
            # would wait the same way, and the others may still be exporting theirs.
            self.log.warning(
                "member finished without catching up: not restarted", member=m.index, status=status, ran_s=ran
            )
        elif status in STOP_STATUSES:
            self.log.error(
                "member stopped with a status a restart cannot fix: stopping the others",
                member=m.index,
                status=status,
                ran_s=ran,
            )
            self.stop_requested = True
        else:
            if now - m.started_at >= self.backoff.stable_after:
                m.failures = 0
            m.failures += 1
            delay = self.backoff.delay(m.failures)
            m.restart_at = now + delay
            self.log.warning(
                "member crashed: restarting after backoff",
                member=m.index,
                status=status,
                ran_s=ran,
                restart_in_s=delay,
                consecutive_crashes=m.failures,
            )

    def _begin_stop(self, now: float) -> None:
        self.stopping = True
        self.kill_at = now + self.shutdown_timeout + self.kill_grace
        live = [m for m in self.members if m.proc is not None]
        self.log.info("stopping members", members=[m.index for m in live])
        for m in self.members:
            m.restart_at = None  # a member waiting for its restart keeps its last status
            if m.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    m.proc.send_signal(signal.SIGTERM)

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> int:
        with tempfile.TemporaryFile(prefix="consumer-log-lock-") as lock:
            self._line_lock = lock.fileno()
            logmod.share_lines(self._line_lock)
            try:
                return self._run()
            finally:
                logmod.share_lines(None)
                self._line_lock = None

    def _run(self) -> int:
        self.log.info("supervising", members=[m.instance_id for m in self.members])
        for m in self.members:
            self._start(m)
        while True:
            now = self.clock()
            if self.stop_requested and not self.stopping:
                self._begin_stop(now)
            for m in self.members:
                if m.proc is not None:
                    rc = m.proc.poll()
                    if rc is not None:
                        self._exited(m, rc, now)
                if m.restart_at is not None and not self.stop_requested and now >= m.restart_at:
                    self._start(m)
            if self.stop_requested and not self.stopping:
                continue  # a stop status just arrived: signal the others now
            if self.stopping and self.kill_at is not None and now >= self.kill_at:
                for m in self.members:
                    if m.proc is not None:
                        self.log.error(
                            "member did not stop in time: killing it", member=m.index, pid=m.proc.pid
                        )
                        m.proc.kill()
                self.kill_at = None
            if all(m.settled for m in self.members):
                break
            time.sleep(POLL)
        statuses = [m.last_status if m.last_status is not None else EXIT_OK for m in self.members]
        code = overall_status(statuses)
        if code == EXIT_OK and self.bounded and self.stop_signal is not None and any(
                m.stopped_unfinished for m in self.members):
            code = interrupted(self.stop_signal)  # the job was stopped before it was done
        self.log.info("members exited", statuses=statuses, status=code)
        return code


def child_command(run_args: Sequence[str], m: Member, metrics_port: int | None = None) -> list[str]:
    """The member's command line: the supervisor's own ``run`` flags, then ``--processes 1`` and
    the static instance id (argparse keeps the last value of a flag; ``-X`` properties merge with
    later ones winning). With a metrics port P, member i serves on P + 1 + i, and the supervisor
    serves P with every member's metrics merged (:class:`MetricsAggregator`)."""
    argv = [
        sys.executable, "-m", "consumer", "run", *run_args,
        "--processes", "1", "-X", f"group.instance.id={m.instance_id}",
    ]  # fmt: skip
    if metrics_port:
        argv += ["--metrics-port", str(metrics_port + 1 + m.index)]
    return argv


def supervise(
    run_args: Sequence[str],
    *,
    processes: int,
    host_id: str,
    shutdown_timeout: float,
    metrics_port: int | None = None,
    bounded: bool = False,
) -> int:
    """Run ``processes`` members with ``run_args`` (the flags given to ``consumer run``);
    ``bounded``: with ``--until-caught-up``."""
    env = dict(os.environ)
    env.pop("CONSUMER_PROCESSES", None)
    sup = Supervisor(
        lambda m: child_command(run_args, m, metrics_port),
        instance_ids(host_id, processes),
        shutdown_timeout=shutdown_timeout,
        env=env,
        bounded=bounded,
    )
    sup.install_signal_handlers()
    aggregator = MetricsAggregator(metrics_port, processes) if metrics_port else None
    if aggregator is not None:
        aggregator.start()
    try:
        return sup.run()
    finally:
        if aggregator is not None:
            aggregator.stop()


class MetricsAggregator:
    """One port for all members: ``/metrics`` merges every member's metrics (each sample gets a
    ``member`` label, families are merged by name so the exposition stays valid), plus
    ``kafka_parquet_member_up``; ``/healthz`` and ``/readyz`` answer 200 only if every member
    does (a member restarting is not ready). Members serve on ``port + 1 + index``."""

    def __init__(self, port: int, members: int, *, host: str = "0.0.0.0", timeout: float = 2.0) -> None:
        self.port, self.members, self.host, self.timeout = port, members, host, timeout
        self._server: Any = None

    def member_url(self, index: int, path: str) -> str:
        return f"http://127.0.0.1:{self.port + 1 + index}{path}"

    def _get(self, index: int, path: str) -> tuple[int, bytes]:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(self.member_url(index, path), timeout=self.timeout) as r:
                return int(r.status), r.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()
        except OSError as exc:
            return 0, str(exc).encode()

    def scrape(self) -> bytes:
        from prometheus_client.core import CollectorRegistry, Metric
        from prometheus_client.exposition import generate_latest
        from prometheus_client.parser import text_string_to_metric_families

        families: dict[str, Metric] = {}
        up = Metric("kafka_parquet_member_up", "1 if the member answered the last scrape", "gauge")
        for i in range(self.members):
            status, body = self._get(i, "/metrics")
            up.add_sample("kafka_parquet_member_up", {"member": str(i)}, 1.0 if status == 200 else 0.0)
            if status != 200:
                continue
            for fam in text_string_to_metric_families(body.decode("utf-8", "replace")):
                merged = families.get(fam.name)
                if merged is None:
                    merged = families[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                for smp in fam.samples:
                    merged.add_sample(smp.name, {**smp.labels, "member": str(i)}, smp.value, smp.timestamp)
        families[up.name] = up

        class _Merged:
            def collect(self) -> list[Metric]:
                return list(families.values())

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Merged())
        out: bytes = generate_latest(registry)
        return out

    def probe(self, path: str) -> tuple[bool, str]:
        bad = []
        for i in range(self.members):
            status, body = self._get(i, path)
            if status != 200:
                detail = body.decode("utf-8", "replace").strip()[:200]
                bad.append(f"member {i}: {status or 'unreachable'} {detail}")
        return not bad, "\n".join(bad) or ("ready" if path == "/readyz" else "ok")

    def start(self) -> None:
        import threading

        from consumer.metrics import http_server

        self._server = http_server(self.host, self.port, self.scrape, self.probe)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="metrics-aggregator", daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
