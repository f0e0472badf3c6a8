"""``consumer check``: validate a run's configuration and probe what it depends on.

Meant for container health checks and for "why does it not start" on a new deployment. It reads
the configuration exactly as ``consumer run`` does (flags ← environment ← ``--config`` file), so
inside the consumer's container it checks the settings the running process was started with.

What a passing check proves, and what it does not:

* ``config``: the settings validate (the same rules as ``run``) and a raw-framing writer schema
  loads — the process would not exit 2 on start;
* ``kafka``: the brokers answer a metadata request and every configured topic exists;
* ``s3``: the bucket answers a one-key LIST under the output prefix with the process's
  credentials (a missing bucket or a rejected key fails; nothing is written); a lifecycle rule
  that expires current objects of the staging folder is named on the ``ok`` line. With
  ``--write``, also what ``run`` probes at start: an object under ``<prefix>/_probe/`` is created,
  created again with a PUT and with a multipart upload (both must be refused: conditional
  writes), and deleted — credentials that may only read, or a server that ignores the condition,
  fail here instead of at the first start;
* ``registry`` (confluent framing only): the registry answers ``GET /subjects``;
* ``group`` (only with ``--group-active``): the consumer group has at least one member. A member
  whose poll loop stops for ``max.poll.interval.ms`` (5 min by default) is removed from the group,
  so this is the one check that says something about a *running* consumer — but it cannot tell
  which member is alive when several share the group, and it says nothing about whether records
  are being made durable. Progress, lag and freshness belong to metrics (issue 11 items 1–2).

Exit status: 0 every check passed, 1 some check failed (one ``FAIL`` line each), 2 invalid
configuration.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from consumer import config as cfgmod
from consumer import first_contact, group_requests
from consumer import log as logmod
from consumer.kafka_names import (
    CERTIFICATE_REFUSED,
    UNKNOWN_TOPIC_OR_PART,
    UNTRUSTED_CERTIFICATE,
    Principal,
    broker_untrusted,
    login_refused,
    not_authorized,
)
from consumer.layout import Layout
from consumer.principal import client_principal


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"


def _run(name: str, probe: Callable[[], str]) -> CheckResult:
    started = time.monotonic()
    try:
        detail = probe()
    except Exception as exc:  # every failure becomes one readable line
        text = str(exc)[:1200] or ("no answer within the timeout" if isinstance(exc, TimeoutError) else "")
        return CheckResult(name, False, f"{type(exc).__name__}: {text}")
    return CheckResult(name, True, f"{detail} ({time.monotonic() - started:.2f}s)")


#: How often a Kafka probe is tried when its process dies by a signal (:func:`_in_child`).
KAFKA_PROBE_TRIES = 2


def _in_child(name: str, probe: Callable[[], str]) -> CheckResult:
    """:func:`_run` of ``probe`` in a forked child process, tried again when the child dies by a
    signal; what it died of is said on the result's line either way.

    Why: a Kafka probe runs librdkafka, whose own threads block every signal, so a native crash
    there ends the process at once, with no stack and no line (consumer/group_requests.py and
    :func:`_group_refused` name two such crashes and avoid them; more may be unknown). A health
    check that dies says nothing about what it checked; this one says which probe died of what
    and still reports the others. The parent never starts a librdkafka thread, so the checks
    after it run in a process without them."""
    died: list[str] = []
    for _ in range(KAFKA_PROBE_TRIES):
        result, signalled = _fork_run(name, probe)
        if signalled:
            died.append(signalled)
        if result is not None:
            if died:
                said = " and ".join(died)
                return CheckResult(name, result.ok, f"{result.detail}; an earlier try of this probe died of "
                                                     f"{said} (a native crash, most likely in librdkafka)")
            return result
    return CheckResult(name, False, f"the probe's process died of {' and then '.join(died)} in each of "
                                    f"{len(died)} tries, before it could answer: a native crash, most likely "
                                    "in librdkafka (consumer/group_requests.py); run the check again, and "
                                    "report it with the broker's version if it keeps failing")


def _fork_run(name: str, probe: Callable[[], str]) -> tuple[CheckResult | None, str | None]:
    """``probe``'s result from a forked child (None if it gave none) and the signal the child died
    of (None if it exited)."""
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the probe, its result on the pipe, and an exit without clean-up
        status = 0
        try:
            os.close(read_end)
            result = _run(name, probe)
            with os.fdopen(write_end, "w") as out:
                json.dump([result.ok, result.detail], out)
        except BaseException:
            status = 70
        finally:
            with contextlib.suppress(BaseException):  # what the probe printed, then no clean-up
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end) as inp:
        said = inp.read()
    _, status = os.waitpid(pid, 0)
    signalled = signal.Signals(os.WTERMSIG(status)).name if os.WIFSIGNALED(status) else None
    try:
        ok, detail = json.loads(said)
    except ValueError:
        if signalled:
            return None, signalled
        return CheckResult(name, False, f"the probe's process exited with status "
                                        f"{os.waitstatus_to_exitcode(status)} without an answer"), None
    return CheckResult(name, bool(ok), str(detail)), signalled


@contextlib.contextmanager
def _admin(config: cfgmod.Config, lines: logmod.ClientLines) -> Iterator[Any]:
    """An AdminClient, destroyed on this thread when the check is done. Dropped instead, it would
    wait for the cycle collector (it and ``lines`` refer to each other), which may run on any
    thread, librdkafka's own among them: a client destroyed there crashes the process
    (confluent-kafka-python issues 1761 and 2129)."""
    from confluent_kafka.admin import AdminClient

    conf: dict[str, Any] = {**cfgmod.admin_config(config), "logger": lines, "error_cb": lines.error}
    with AdminClient(conf) as admin:
        yield lines.watch(admin)


def check_kafka(config: cfgmod.Config, timeout: float) -> str:
    lines = logmod.ClientLines()
    with _admin(config, lines) as admin:
        return _check_kafka(admin, lines, config, timeout)


def _check_kafka(admin: Any, lines: logmod.ClientLines, config: cfgmod.Config, timeout: float) -> str:
    def refused_yet() -> bool:  # a refused login or certificate, or no broker taking the connection
        admin.poll(0)
        return _refusal(lines, config) is not None or lines.every_broker_down

    try:
        md = first_contact.metadata(admin, timeout, refused_yet)
    except Exception as exc:
        explained = lines.explain(exc)  # serves the client's queued events first
        refused = _refusal(lines, config)
        # A refused handshake's log line can come before its error event (a broker transport
        # failure first): wait a moment for the event that says which certificate, not longer.
        deadline = time.monotonic() + TLS_EVENT_WAIT
        while refused is None and _tls_said(lines.first_error) and time.monotonic() < deadline:
            admin.poll(0.1)
            refused = _refusal(lines, config)
        raise RuntimeError(refused or explained) from exc
    problems: list[str] = []
    sizes: list[str] = []
    principal = client_principal(config.kafka_properties)
    for topic in config.topics:
        t = md.topics.get(topic)
        if t is None:
            # A topic the principal may not describe is left out of the listing; asked by name,
            # the broker says which (an ACL), as the run does at start.
            with contextlib.suppress(Exception):
                t = admin.list_topics(topic=topic, timeout=timeout).topics.get(topic)
        error = None if t is None else t.error
        said = None if error is None else not_authorized(error.code(), topic, config.group_id, str(error),
                                                         principal)
        if said is not None:
            problems.append(said)
        elif t is None or (t.error is not None and t.error.code() == UNKNOWN_TOPIC_OR_PART):
            problems.append(f"topic {topic!r} does not exist")
        elif t.error is not None:
            problems.append(f"topic {topic!r}: {t.error}")
        else:
            sizes.append(f"{topic}[{len(t.partitions)}]")
    said = _group_refused(config, config.topics[0], timeout, principal, lines) if (
        not problems and config.group_id) else None
    if said:
        problems.append(said)
    if problems:
        raise RuntimeError("; ".join(problems))
    # Whom the grants are for: what an operator writing ACLs for this client needs to know.
    who = f", as {principal.name}" if principal else ""
    return f"{len(md.brokers)} broker(s), topics {', '.join(sizes)}{who}"


#: Seconds ``check`` waits for the error event of a TLS refusal it has only a log line of.
TLS_EVENT_WAIT = 2.0


def _refusal(lines: logmod.ClientLines, config: cfgmod.Config) -> str | None:
    """What to tell the operator about the first of the client's error events that is a refused
    login or certificate (consumer.kafka_names.login_refused), or None."""
    for event in lines.events:
        said = login_refused(event.code(), str(event.str()), _why_untrusted(event, config),
                             config.kafka_properties)
        if said is not None:
            return said
    return None


def _tls_said(line: str | None) -> bool:
    """Whether librdkafka's error line is about a certificate (refused by either side)."""
    return line is not None and (UNTRUSTED_CERTIFICATE in line
                                 or CERTIFICATE_REFUSED.search(line) is not None)


def _why_untrusted(event: Any, config: cfgmod.Config) -> str | None:
    """OpenSSL's reason when ``event`` is a broker certificate this client does not trust."""
    from consumer.tls_probe import why_untrusted

    said = str(event.str())
    return why_untrusted(said, config.kafka_properties) if broker_untrusted(event.code(), said) else None


def _group_refused(
    config: cfgmod.Config, topic: str, timeout: float, principal: Principal | None, lines: logmod.ClientLines
) -> str | None:
    """What to grant when the principal may not use the consumer group (one OffsetFetch of
    ``topic``'s first partition, what the run's first read of its positions is); None when it may,
    or the answer says nothing.

    Asked by a consumer of the group that never subscribes, so it never joins the group. Not by the
    AdminClient's ``list_consumer_group_offsets``: librdkafka answers that request's
    NOT_COORDINATOR by asking the client's group handle to find the coordinator again, and an
    AdminClient has none, so it dereferences NULL on its own thread and the process dies with no
    line (librdkafka issue 5040, still in 2.16). A fresh broker answers so while it loads the
    group's offsets partition: that was the compose health check's SIGSEGV in CI, caught in a core
    at its first check of a fresh stack."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    def refusal(err: Any) -> str | None:
        code = getattr(err, "code", None)
        return not_authorized(code(), None, config.group_id, str(err), principal) if callable(code) else None

    conf = {**cfgmod.admin_config(config), "group.id": config.group_id, "enable.auto.commit": False,
            "logger": lines, "error_cb": lines.error}
    deadline = time.monotonic() + timeout
    consumer = Consumer(conf)
    try:
        while True:
            try:
                consumer.committed([TopicPartition(topic, 0)],
                                   timeout=max(0.05, min(1.0, deadline - time.monotonic())))
                return None
            except KafkaException as exc:
                if said := refusal(exc.args[0] if exc.args else None):
                    return said
            # A refused FindCoordinator is not the OffsetFetch's error: the group handle keeps
            # asking, and says why on the consumer's queue (and the error callback).
            while (msg := consumer.poll(0)) is not None:
                if said := refusal(msg.error()):
                    return said
            for event in lines.events:
                if said := refusal(event):
                    return said
            if time.monotonic() >= deadline:
                return None
    except Exception:
        return None
    finally:
        consumer.close()  # on this thread (see _admin); it never joined, so it leaves nothing


def check_s3(config: cfgmod.Config, timeout: float, write: bool = False) -> str:
    from consumer.storage import RetryPolicy, S3Store, probe_conditional_writes

    store = S3Store(
        config.bucket,
        endpoint_url=config.s3_endpoint_url,
        region=config.s3_region,
        encryption=config.s3_encryption(),
        retry=RetryPolicy(base=0.2, cap=1.0, max_elapsed=timeout),
        connect_timeout=min(5.0, timeout),
        read_timeout=timeout,
    )
    # One bounded LIST under the prefix (GET, so S3 names the error: NoSuchBucket, AccessDenied,
    # SignatureDoesNotMatch all raise; a refused connection at once); nothing is written.
    store.reach(f"{config.prefix}/" if config.prefix else "", timeout)
    layout = Layout(config.prefix)
    if write:
        probe_conditional_writes(store, layout.probe_key(uuid.uuid4().hex))
    rule = store.expires_current(layout.staging_root())
    staged = layout.staged_partitions(o.key for o in store.list(layout.staging_root()))
    unfinished = sorted(t for t in staged if t not in config.topics)
    return f"bucket {config.bucket!r} reachable" + (
        f" at {config.s3_endpoint_url}" if config.s3_endpoint_url else ""
    ) + ("; writable, with conditional writes (PUT and multipart)" if write else "") + (
        f"; warning: lifecycle {rule} expires staged pieces too (README, 'Keeping N days of output')"
        if rule else "") + (
        f"; warning: open files of topics not in --topic: {', '.join(unfinished)} (README, 'Taking a "
        "topic out of --topic')" if unfinished else "")


def check_registry(config: cfgmod.Config, timeout: float) -> str:
    from consumer.registry import SchemaRegistryClient

    assert config.schema_registry_url
    client = SchemaRegistryClient(config.schema_registry_url, timeout=timeout, retries=1)
    subjects = client.subjects()
    return f"{client.url} answers ({len(subjects)} subject(s))"


def check_group(config: cfgmod.Config, timeout: float) -> str:
    lines = logmod.ClientLines()
    with _admin(config, lines) as admin:
        asked = group_requests.describe(admin, config.group_id)
        try:
            desc: Any = group_requests.answer(asked, timeout)
        except Exception as exc:
            raise RuntimeError(lines.explain(exc)) from exc
    members = list(desc.members or [])
    state = getattr(desc.state, "name", str(desc.state))
    if not members:
        raise RuntimeError(f"group {config.group_id!r} has no members (state {state})")
    return f"group {config.group_id!r} {state} with {len(members)} member(s)"


def run_checks(
    config: cfgmod.Config, *, timeout: float = 10.0, group_active: bool = False, write: bool = False
) -> list[CheckResult]:
    """Probe every dependency of ``config`` (assumed valid); one result per check, in order. The
    Kafka probes run first, each in a child process of its own (:func:`_in_child`)."""
    kafka = _in_child("kafka", lambda: check_kafka(config, timeout))
    group = _in_child("group", lambda: check_group(config, timeout)) if group_active else None
    results = [kafka, _run("s3", lambda: check_s3(config, timeout, write))]
    if config.framing == "confluent" and config.schema_registry_url:
        results.append(_run("registry", lambda: check_registry(config, timeout)))
    if group is not None:
        results.append(group)
    return results
