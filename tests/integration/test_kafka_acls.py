"""A client the cluster does not authorize or whose login it refuses, on the stack broker's SASL
listener (it applies ACLs; see dev/stack_impl.py): the run stops with exit status 2 and names the
ACL to grant or the login settings to check, instead of
idling in the group reading nothing after one warning (or, with --until-caught-up, waiting out
its timeout and blaming other members), as it did. Java's consumer throws from poll() there and
Kafka Connect fails the task.

Each case is one ACL missing: DESCRIBE/READ on the topic at start, READ on the group at start,
and READ on the topic taken away while the run consumes (the rows it held are committed; granted
again, a new run exports the rest, every offset once). And a SCRAM password changed while a run
consumes, as an operator rotating credentials does: the next login is refused.
"""

from __future__ import annotations

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
    download_finals,
    grant,
    read_table,
    staging_keys,
    start_consumer,
    stop_reason,
    unique,
)

from consumer.producer import produce

pytestmark = pytest.mark.shares_stack

USER, SECRET = "consumer-test", "consumer-test-secret"  # dev/stack_impl.SASL_USERS


def sasl(stack: Any, mechanism: str = "PLAIN", user: str = USER, password: str = SECRET) -> list[str]:
    if not stack.kafka_sasl_bootstrap:
        pytest.fail("the stack has no SASL listener: restart it (dev/stack down; dev/stack up)")
    return ["--bootstrap-servers", stack.kafka_sasl_bootstrap, "-X", "security.protocol=SASL_PLAINTEXT",
            "-X", f"sasl.mechanism={mechanism}", "-X", f"sasl.username={user}",
            "-X", f"sasl.password={password}"]


def scram_password(admin: Any, user: str, password: str) -> None:
    """Make ``user`` a SCRAM-SHA-256 login with ``password``, or change its password
    (AlterUserScramCredentials, what ``kafka-configs --alter --add-config SCRAM-SHA-256=…`` does)."""
    from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4096)
    upsert = UserScramCredentialUpsertion(user, info, password.encode())
    for f in admin.alter_user_scram_credentials([upsert]).values():
        f.result(timeout=30)


def run(stack: Any, topic: str, group: str, out: str, *extra: str,
        login: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = consumer_cmd(topic, group, out, "--until-caught-up", "--caught-up-timeout", "60s",
                       *(sasl(stack) if login is None else login), *extra)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=REPO)


def check(stack: Any, topic: str, group: str) -> subprocess.CompletedProcess[str]:
    """`consumer check` as the test user: what `run` would meet, one line per dependency."""
    return subprocess.run(
        [sys.executable, "-m", "consumer", "check", "--group-id", group, "--topic", topic, "--schema",
         "page_view", "--output", f"s3://{stack.s3_bucket}/unused", *sasl(stack)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )


def test_a_topic_the_client_may_not_read_stops_the_start_naming_the_acl(
    stack: Any, admin: Any, make_topic: Any, unique_prefix: str
) -> None:
    topic, group = make_topic(partitions=1), unique("g")
    produce(stack.kafka_bootstrap, topic, "page_view", 100, partitions=1, create_topic=False)
    grant(admin, ("group", group, "READ"), principal=f"User:{USER}")
    checked = check(stack, topic, group)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert f"FAIL kafka: RuntimeError: Kafka does not authorize this client to read topic {topic!r}" \
        in checked.stderr
    out = f"s3://{stack.s3_bucket}/{unique_prefix}out"
    for extra in ((), ("--until-caught-up",)):  # a long-running member too (it used to idle)
        cmd = consumer_cmd(topic, group, out, *sasl(stack), *extra)
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
        assert res.returncode == 2, res.stderr[-3000:]
        said = stop_reason(res.stderr)
        assert said.startswith(f"Kafka does not authorize this client to read topic {topic!r} ("), said
        grant_line = f"--allow-principal User:{USER} --operation Read --operation Describe --topic {topic}"
        assert grant_line in said, said
    replay = subprocess.run(
        [sys.executable, "-m", "consumer", "replay", "--topic", topic, "--schema", "page_view",
         "--output", f"{out}-replay", "--log-format", "json", *sasl(stack)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert replay.returncode == 2, replay.stderr[-3000:]
    said = stop_reason(replay.stderr)
    assert said.startswith(f"Kafka does not authorize this client to read topic {topic!r}"), said


def test_finish_of_a_topic_the_client_may_not_describe_is_refused_naming_the_acl_and_finishes_nothing(
    stack: Any, s3: Any, admin: Any, make_topic: Any, unique_prefix: str
) -> None:
    """``consumer finish`` goes on only when the cluster says the topic does not exist. A topic
    this principal may not describe is left out of what the cluster says, as a deleted one is:
    taken for deleted, its open files would be finished while a run may still write them. It is
    refused with status 2, naming the ACL, and the open files stay as they are."""
    topic, group = make_topic(partitions=1), unique("g")
    produce(stack.kafka_bootstrap, topic, "page_view", 100, partitions=1, create_topic=False)
    out = f"s3://{stack.s3_bucket}/{unique_prefix}out"
    member = start_consumer(topic, group, out, "--row-group-rows", "50")  # as the admin: no ACL
    try:
        member.wait_for(lambda ev: sum(e.get("rows", 0) for e in ev if e.get("event") == "row group durable")
                        == 100, what="100 rows durable")
    finally:
        assert member.stop() == 0, member.log()[-3000:]
    staged = staging_keys(s3, stack.s3_bucket, f"{unique_prefix}out/")
    assert staged
    grant(admin, ("group", group, "READ"), principal=f"User:{USER}")
    res = subprocess.run(
        [sys.executable, "-m", "consumer", "finish", "--group-id", group, "--topic", topic, "--schema",
         "page_view", "--output", out, "--log-format", "json", *sasl(stack)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert res.returncode == 2, res.stderr[-3000:]
    said = stop_reason(res.stderr)
    assert said.startswith(f"Kafka does not authorize this client to read topic {topic!r}"), said
    assert f"--allow-principal User:{USER} --operation Read --operation Describe --topic {topic}" in said
    assert staging_keys(s3, stack.s3_bucket, f"{unique_prefix}out/") == staged


def test_a_group_the_client_may_not_use_stops_the_start_naming_the_acl(
    stack: Any, admin: Any, make_topic: Any, unique_prefix: str
) -> None:
    topic, group = make_topic(partitions=2), unique("g")
    produce(stack.kafka_bootstrap, topic, "page_view", 100, partitions=2, create_topic=False)
    grant(admin, ("topic", topic, "READ"), ("topic", topic, "DESCRIBE"), principal=f"User:{USER}")
    checked = check(stack, topic, group)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert f"Kafka does not authorize this client to use consumer group {group!r}" in checked.stderr
    started = time.monotonic()
    res = run(stack, topic, group, f"s3://{stack.s3_bucket}/{unique_prefix}out")
    assert res.returncode == 2, res.stderr[-3000:]
    assert time.monotonic() - started < 50  # not the --caught-up-timeout of 60 s it used to wait out
    said = stop_reason(res.stderr)
    assert said.startswith(f"Kafka does not authorize this client to use consumer group {group!r} ("), said
    assert f"--allow-principal User:{USER} --operation Read --group {group}" in said, said


def test_a_replay_needs_no_group_acl_a_principal_granted_the_topic_replays_every_offset_once(
    stack: Any, s3: Any, admin: Any, make_topic: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """A replay joins no group and commits to none (its positions are objects beside its output),
    yet librdkafka's consumer looks up the coordinator of the group it is configured with
    (``consumer-replay``): granted only the topic, the principal was refused that group and the
    replay stopped with status 2 asking for a group ACL it never uses."""
    topic = make_topic(partitions=2)
    produced = produce(stack.kafka_bootstrap, topic, "page_view", 300, partitions=2, create_topic=False)
    grant(admin, ("topic", topic, "READ"), ("topic", topic, "DESCRIBE"), principal=f"User:{USER}")
    out = f"s3://{stack.s3_bucket}/{unique_prefix}replay"
    replay = subprocess.run(
        [sys.executable, "-m", "consumer", "replay", "--topic", topic, "--schema", "page_view",
         "--output", out, "--log-format", "json", *sasl(stack)],
        capture_output=True, text=True, timeout=180, cwd=REPO,
    )
    assert replay.returncode == 0, replay.stderr[-3000:]
    table = read_table(download_finals(s3, stack.s3_bucket, f"{unique_prefix}replay/", tmp_path))
    assert_exactly_once(table, produced.partition_counts)


@pytest.mark.parametrize("taken", ["topic", "group"])
def test_read_taken_away_mid_run_stops_it_and_granted_again_a_new_run_exports_every_offset_once(
    stack: Any, s3: Any, admin: Any, make_topic: Any, unique_prefix: str, tmp_path: Path, taken: str
) -> None:
    """READ on the topic (the next fetch is refused) or on the group (the next commit is: it used
    to stop with status 5 blaming an unavailable coordinator)."""
    topic, group = make_topic(partitions=2), unique("g")
    first = produce(stack.kafka_bootstrap, topic, "page_view", 400, partitions=2, create_topic=False)
    acls = (("topic", topic, "READ"), ("topic", topic, "DESCRIBE"), ("group", group, "READ"))
    grant(admin, *acls, principal=f"User:{USER}")
    out = f"s3://{stack.s3_bucket}/{unique_prefix}out"
    # A member refused its group cannot leave it: the next run waits out its session, kept short.
    running = start_consumer(topic, group, out, "--row-group-max-age", "1s", "-X", "session.timeout.ms=6000",
                             *sasl(stack))
    try:
        running.wait_for(lambda ev: sum(e.get("event") == "row group durable" for e in ev) >= 2,
                         what="both partitions' first rows durable")
        grant(admin, (taken, topic if taken == "topic" else group, "READ"), revoke=True,
              principal=f"User:{USER}")
        then = produce(stack.kafka_bootstrap, topic, "page_view", 400, partitions=2, start=400,
                       create_topic=False)
        assert running.proc.wait(timeout=60) == 2, running.log()[-3000:]
    finally:
        running.stop()
    said = stop_reason(running.log())
    what = f"read topic {topic!r} (" if taken == "topic" else "use "
    assert said.startswith(f"Kafka does not authorize this client to {what}"), said
    assert f"--allow-principal User:{USER} --operation Read" in said, said  # a commit's refusal too
    grant(admin, *acls, principal=f"User:{USER}")
    res = run(stack, topic, group, out)
    assert res.returncode == 0, res.stderr[-3000:]
    table = read_table(download_finals(s3, stack.s3_bucket, f"{unique_prefix}out/", tmp_path))
    assert_exactly_once(table, {p: first.partition_counts[p] + then.partition_counts[p] for p in range(2)})


def test_a_password_changed_mid_run_stops_it_at_the_next_login_and_the_new_one_exports_every_offset_once(
    stack: Any, s3: Any, admin: Any, make_topic: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """The broker makes SCRAM connections log in again every few seconds (KIP-368,
    dev/stack_impl.SCRAM_REAUTH_MS), as a cluster with connections.max.reauth.ms does. Before, the
    member then idled for good, warning, and a flush's commit waited for a coordinator it could not
    reach: after SIGTERM the process went on for 150 s, against a bound of 32. Now the refused
    login stops the run with status 2 within seconds, without a flush; the old password is refused
    at start (status 2, not 5 blaming the address) and by `consumer check` (its `kafka` line says
    so); the new one exports
    every offset once."""
    topic, group, user = make_topic(partitions=2), unique("g"), unique("scram")
    scram_password(admin, user, "first-secret")
    grant(admin, ("topic", topic, "READ"), ("topic", topic, "DESCRIBE"), ("group", group, "READ"),
          principal=f"User:{user}")
    first = produce(stack.kafka_bootstrap, topic, "page_view", 400, partitions=2, create_topic=False)
    out = f"s3://{stack.s3_bucket}/{unique_prefix}out"
    old = sasl(stack, "SCRAM-SHA-256", user, "first-secret")
    running = start_consumer(topic, group, out, "--row-group-max-age", "1s", "-X", "session.timeout.ms=6000",
                             *old)
    try:
        running.wait_for(lambda ev: sum(e.get("event") == "row group durable" for e in ev) >= 2,
                         what="both partitions' first rows durable")
        scram_password(admin, user, "second-secret")
        changed = time.monotonic()
        then = produce(stack.kafka_bootstrap, topic, "page_view", 400, partitions=2, start=400,
                       create_topic=False)
        assert running.proc.wait(timeout=90) == 2, running.log()[-3000:]
        assert time.monotonic() - changed < 45  # a login every 5 s; the shutdown flushes nothing
    finally:
        running.stop()
    said = stop_reason(running.log())
    assert said.startswith("Kafka refused this client's login ("), said
    assert "SCRAM-SHA-256" in said and "sasl.username and sasl.password" in said, said
    assert "second-secret" not in running.log() and "first-secret" not in running.log()

    started = time.monotonic()
    res = run(stack, topic, group, out, login=old)
    assert res.returncode == 2, res.stderr[-3000:]
    assert time.monotonic() - started < 30
    assert stop_reason(res.stderr).startswith("Kafka refused this client's login ("), res.stderr[-3000:]
    checked = subprocess.run(
        [sys.executable, "-m", "consumer", "check", "--group-id", group, "--topic", topic, "--schema",
         "page_view", "--output", f"s3://{stack.s3_bucket}/unused", *old],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert checked.returncode == 1 and "FAIL kafka" in checked.stderr, checked.stdout + checked.stderr
    assert "FAIL kafka: RuntimeError: Kafka refused this client's login (" in checked.stderr, checked.stderr
    assert "SASL authentication error" in checked.stderr, checked.stderr

    res = run(stack, topic, group, out, login=sasl(stack, "SCRAM-SHA-256", user, "second-secret"))
    assert res.returncode == 0, res.stderr[-3000:]
    table = read_table(download_finals(s3, stack.s3_bucket, f"{unique_prefix}out/", tmp_path))
    assert_exactly_once(table, {p: first.partition_counts[p] + then.partition_counts[p] for p in range(2)})
