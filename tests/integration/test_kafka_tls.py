"""A run over the stack broker's TLS listener (its own CA: dev/stack_impl.ensure_tls), as against
a cluster that encrypts its connections (MSK, Confluent Cloud, most production clusters).

Trusting the broker's CA (``-X ssl.ca.location``), a run exports every offset once and `consumer
check` passes. Trusting another CA, the start stops with exit status 2 within seconds, naming
``ssl.ca.location``; it used to stop with status 5 after 10 s, blaming the address. `consumer check`
and `replay` say the same. A certificate rotated while a run consumes is a fault test
(tests/faults/test_outages.py): it needs the broker restarted.

On the mutual-TLS listener, a client certificate the broker refuses (expired) stops the start the
same way, naming ``ssl.certificate.location``; a valid one exports every offset once. A valid one
the cluster's ACLs do not cover stops the start naming its principal, as the broker writes it.

Over SASL_SSL (a login over TLS, what most managed clusters ask for) a run exports every offset
once, and an untrusted broker and a refused login are each said as themselves.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support import (
    REPO,
    assert_exactly_once,
    consumer_cmd,
    dev_stack_impl,
    download_finals,
    grant,
    read_table,
    stop_reason,
    unique,
)

from consumer.producer import produce

pytestmark = pytest.mark.shares_stack


def tls(stack: Any, ca: str | None = None) -> list[str]:
    """The flags of a client of the TLS listener that trusts ``ca`` (default: the stack's CA)."""
    if not stack.kafka_ssl_bootstrap or not stack.kafka_ssl_ca:
        pytest.fail("the stack has no TLS listener: restart it (dev/stack down; dev/stack up)")
    return ["--bootstrap-servers", stack.kafka_ssl_bootstrap, "-X", "security.protocol=SSL",
            "-X", f"ssl.ca.location={ca or stack.kafka_ssl_ca}"]


def other_ca(tmp_path: Path) -> str:
    """A CA that signed nothing the broker presents."""
    return str(dev_stack_impl().make_ca(tmp_path / "tls", "other"))


def mtls(stack: Any, certificate: Path | None = None) -> list[str]:
    """The flags of a client of the mutual-TLS listener presenting ``certificate`` (its key beside
    it, ``.key``; default: the stack's client certificate, a super user)."""
    if not stack.kafka_mtls_bootstrap or not stack.kafka_ssl_ca:
        pytest.fail("the stack has no mutual-TLS listener: restart it (dev/stack down; dev/stack up)")
    cert = certificate or Path(stack.kafka_ssl_ca).parent / "client.pem"
    return ["--bootstrap-servers", stack.kafka_mtls_bootstrap, "-X", "security.protocol=SSL",
            "-X", f"ssl.ca.location={stack.kafka_ssl_ca}", "-X", f"ssl.certificate.location={cert}",
            "-X", f"ssl.key.location={cert.with_suffix('.key')}"]


def expired_certificate(stack: Any, tmp_path: Path) -> Path:
    """A client certificate of the stack's CA, for the same name as the good one, that has expired."""
    impl = dev_stack_impl()
    cert = Path(impl.issue_certificate(stack_ca(stack, tmp_path), "ca", "expired", impl.TLS_CLIENT_CN,
                                       days=0))
    time.sleep(1.5)  # valid for the second it was made in
    return cert


def check(stack: Any, topic: str, group: str, flags: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consumer", "check", "--group-id", group, "--topic", topic, "--schema",
         "page_view", "--output", f"s3://{stack.s3_bucket}/unused", *flags],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )


def exports_every_offset_once(stack: Any, s3: Any, topic: str, group: str, out: str, prefix: str,
                              flags: list[str], produced: Any, tmp_path: Path) -> None:
    """``run --until-caught-up`` with ``flags`` exits 0 and the finals under ``prefix`` hold every
    offset ``produced`` once; ``verify`` with the same flags, up to the group's commits, says so."""
    res = subprocess.run(consumer_cmd(topic, group, out, "--until-caught-up", *flags),
                         capture_output=True, text=True, timeout=180, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    table = read_table(download_finals(s3, stack.s3_bucket, prefix, tmp_path))
    assert_exactly_once(table, produced.partition_counts)
    verified = subprocess.run(verify_cmd(topic, out, "--group-id", group, *flags),
                              capture_output=True, text=True, timeout=180, cwd=REPO)
    assert verified.returncode == 0, verified.stdout[-3000:] + verified.stderr[-3000:]


def verify_cmd(topic: str, out: str, *flags: str) -> list[str]:
    return [sys.executable, "-m", "consumer", "verify", "--topic", topic, "--output", out, *flags]


def refused_at_start(command: list[str]) -> str:
    """Run ``command``, which must stop with status 2 within 9 s (a refusal is not an outage to
    wait out): the reason it logged."""
    started = time.monotonic()
    res = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode == 2, res.stderr[-3000:]
    # the first handshake says it (about 1 s after the start); before, the 10 s wait came first
    assert time.monotonic() - started < 9, "a refusal is said at the first handshake, not after a wait"
    return stop_reason(res.stderr)


def stack_ca(stack: Any, tmp_path: Path) -> Path:
    """A work folder holding a copy of the stack CA's certificate and key (``ca``), to issue more
    client certificates of it with ``dev_stack_impl().issue_certificate``."""
    work = tmp_path / "tls"
    work.mkdir(parents=True, exist_ok=True)
    ca = Path(stack.kafka_ssl_ca)
    for name in ("ca.pem", "ca.key"):
        (work / name).write_bytes((ca.parent / name).read_bytes())
    return work


def test_a_run_over_tls_exports_every_offset_once(
    stack: Any, s3: Any, make_topic: Any, unique_prefix: str, tmp_path: Path
) -> None:
    topic, group = make_topic(partitions=2), unique("g")
    produced = produce(stack.kafka_bootstrap, topic, "page_view", 600, partitions=2, create_topic=False)
    checked = check(stack, topic, group, tls(stack))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "ok   kafka: 1 broker(s)" in checked.stdout, checked.stdout
    assert ", as User:ANONYMOUS (" in checked.stdout, checked.stdout  # TLS with no client certificate
    out = f"s3://{stack.s3_bucket}/{unique_prefix}out"
    exports_every_offset_once(stack, s3, topic, group, out, f"{unique_prefix}out/", tls(stack), produced,
                              tmp_path)


def test_a_broker_certificate_the_client_does_not_trust_stops_the_start_with_status_2_naming_ssl_ca_location(
    stack: Any, s3: Any, make_topic: Any, unique_prefix: str, tmp_path: Path
) -> None:
    topic, group = make_topic(partitions=1), unique("g")
    produce(stack.kafka_bootstrap, topic, "page_view", 50, partitions=1, create_topic=False)
    untrusting = tls(stack, other_ca(tmp_path))
    out = f"s3://{stack.s3_bucket}/{unique_prefix}out"
    for command in (consumer_cmd(topic, group, out, *untrusting),
                    [sys.executable, "-m", "consumer", "replay", "--topic", topic, "--schema", "page_view",
                     "--output", f"{out}-replay", "--log-format", "json", *untrusting],
                    [sys.executable, "-m", "consumer", "finish", "--topic", topic, "--group-id", group,
                     "--schema", "page_view", "--output", out, "--log-format", "json", *untrusting]):
        said = refused_at_start(command)
        assert said.startswith("this client does not trust the Kafka broker's certificate ("), said
        assert "certificate verify failed" in said and "ssl.ca.location" in said, said
    assert "Contents" not in s3.list_objects_v2(Bucket=stack.s3_bucket, Prefix=f"{unique_prefix}out")
    started = time.monotonic()
    verified = subprocess.run(verify_cmd(topic, out, *untrusting), capture_output=True, text=True,
                              timeout=120, cwd=REPO)
    assert verified.returncode == 2, verified.stdout[-3000:] + verified.stderr[-3000:]
    assert f"consumer: verify: Kafka at {stack.kafka_ssl_bootstrap} refused this client (" in verified.stderr
    assert "certificate verify failed" in verified.stderr and "-X security settings" in verified.stderr
    assert time.monotonic() - started < 9, "verify waited out its 15 s for a refused handshake"
    checked = check(stack, topic, group, untrusting)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "FAIL kafka: RuntimeError: this client does not trust the Kafka broker's certificate (" \
        in checked.stderr, checked.stderr


def test_a_client_certificate_the_broker_refuses_stops_the_start_with_status_2_a_valid_one_exports_once(
    stack: Any, s3: Any, make_topic: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """Mutual TLS: client certificates expire, and the job that renews them can fail. The broker
    refuses an expired one at every handshake: status 2 naming ssl.certificate.location, where the
    run used to exit 5 after 10 s blaming the address. With a valid one, every offset once."""
    topic, group = make_topic(partitions=2), unique("g")
    produced = produce(stack.kafka_bootstrap, topic, "page_view", 400, partitions=2, create_topic=False)
    refused = mtls(stack, expired_certificate(stack, tmp_path))
    out = f"s3://{stack.s3_bucket}/{unique_prefix}out"
    said = refused_at_start(consumer_cmd(topic, group, out, *refused))
    assert said.startswith("the Kafka broker refused this client's certificate ("), said
    assert "ssl.certificate.location" in said, said
    checked = check(stack, topic, group, refused)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "FAIL kafka: RuntimeError: the Kafka broker refused this client's certificate (" \
        in checked.stderr, checked.stderr

    exports_every_offset_once(stack, s3, topic, group, out, f"{unique_prefix}out/", mtls(stack), produced,
                              tmp_path)


def test_a_certificate_the_acls_do_not_cover_stops_the_start_naming_its_principal_which_granted_exports_once(
    stack: Any, s3: Any, admin: Any, make_topic: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """Mutual TLS with ACLs (MSK, Strimzi): Kafka names a certificate's client by its subject, in
    Java's RFC 2253 form (last part first, commas escaped), and ``kafka-acls`` needs that string
    exactly; the refusal used to say only "the principal the -X security settings log in as". The
    principal the message names is granted as it stands (parsed from its command), and a run then
    exports every offset once: the name is the broker's."""
    topic, group = make_topic(partitions=2), unique("g")
    produced = produce(stack.kafka_bootstrap, topic, "page_view", 300, partitions=2, create_topic=False)
    reader = mtls(stack, dev_stack_impl().issue_certificate(
        stack_ca(stack, tmp_path), "ca", "reader", "-",
        subject="/C=DE/O=Acme, Inc./OU=Data Platform/CN=etl reader #2"))
    out = f"s3://{stack.s3_bucket}/{unique_prefix}out"
    said = refused_at_start(consumer_cmd(topic, group, out, *reader))
    principal = "User:CN=etl reader \\#2,OU=Data Platform,O=Acme\\, Inc.,C=DE"
    # The group or the topic, whichever the client asks for first.
    assert said.startswith((f"Kafka does not authorize this client to read topic {topic!r} (",
                            f"Kafka does not authorize this client to use consumer group {group!r} (")), said
    assert f"rant the principal {principal} (what the -X TLS client certificate's subject" in said, said
    command = shlex.split(said[said.index("(kafka-acls "):].split(")")[0][1:])
    named = command[command.index("--allow-principal") + 1]
    assert named == principal
    checked = check(stack, topic, group, reader)
    assert checked.returncode == 1 and f"--allow-principal {shlex.quote(principal)}" in checked.stderr, \
        checked.stdout + checked.stderr

    grant(admin, ("topic", topic, "READ"), ("topic", topic, "DESCRIBE"), ("group", group, "READ"),
          principal=named)
    exports_every_offset_once(stack, s3, topic, group, out, f"{unique_prefix}out/", reader, produced,
                              tmp_path)


def sasl_ssl(stack: Any, ca: str | None = None, password: str | None = None) -> list[str]:
    """The flags of a SASL/PLAIN login over TLS (the stack's SASL user, its ACLs) trusting ``ca``."""
    if not stack.kafka_sasl_ssl_bootstrap or not stack.kafka_ssl_ca:
        pytest.fail("the stack has no SASL_SSL listener: restart it (dev/stack down; dev/stack up)")
    ((user, secret),) = dev_stack_impl().SASL_USERS.items()
    return ["--bootstrap-servers", stack.kafka_sasl_ssl_bootstrap, "-X", "security.protocol=SASL_SSL",
            "-X", "sasl.mechanism=PLAIN", "-X", f"sasl.username={user}",
            "-X", f"sasl.password={password or secret}", "-X", f"ssl.ca.location={ca or stack.kafka_ssl_ca}"]


def test_a_run_over_sasl_ssl_exports_every_offset_once(
    stack: Any, s3: Any, admin: Any, make_topic: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """A login over TLS, what Confluent Cloud, MSK with SCRAM and Aiven ask for: with its ACLs
    granted, `check` passes and a run exports every offset once."""
    topic, group = make_topic(partitions=2), unique("g")
    produced = produce(stack.kafka_bootstrap, topic, "page_view", 500, partitions=2, create_topic=False)
    ((user, _),) = dev_stack_impl().SASL_USERS.items()
    grant(admin, ("topic", topic, "READ"), ("topic", topic, "DESCRIBE"), ("group", group, "READ"),
          principal=f"User:{user}")
    checked = check(stack, topic, group, sasl_ssl(stack))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f", as User:{user} (" in checked.stdout, checked.stdout
    out = f"s3://{stack.s3_bucket}/{unique_prefix}out"
    exports_every_offset_once(stack, s3, topic, group, out, f"{unique_prefix}out/", sasl_ssl(stack),
                              produced, tmp_path)


def test_over_sasl_ssl_an_untrusted_broker_or_a_refused_login_stops_the_start_with_status_2(
    stack: Any, make_topic: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """The two refusals of a SASL_SSL start, each said as itself: the TLS handshake (another CA:
    naming ssl.ca.location, with OpenSSL's reason from a handshake of our own with the
    ``sasl_ssl://`` broker librdkafka names) comes before the login (a wrong password: naming the
    SASL settings)."""
    topic, group = make_topic(partitions=1), unique("g")
    produce(stack.kafka_bootstrap, topic, "page_view", 20, partitions=1, create_topic=False)
    out = f"s3://{stack.s3_bucket}/{unique_prefix}out"
    for flags, start in ((sasl_ssl(stack, ca=other_ca(tmp_path)),
                          "this client does not trust the Kafka broker's certificate ("),
                         (sasl_ssl(stack, password="not-the-password"),
                          "Kafka refused this client's login (")):
        said = refused_at_start(consumer_cmd(topic, group, out, *flags))
        assert said.startswith(start), said
        if "trust" in start:
            assert "ssl.ca.location" in said and "asked again, OpenSSL says: " in said, said
