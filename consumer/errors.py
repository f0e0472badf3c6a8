"""Every way a run can end, in one place: the exception types and the process exit statuses.

An operator (or a supervisor such as Kubernetes or systemd) reads the exit status, so each status
means one kind of cause and one kind of remedy. Deeper modules raise these types; the runner maps
them to statuses in :func:`exit_status`, and the CLI returns it.

====  ===========================================================================================
  0   done: stopped on request, or ``--until-caught-up``/``replay`` finished everything
  2   configuration or usage: a flag, a missing topic, a bad schema file, an ACL Kafka lacks for
      this client (READ on a topic or the group), a login Kafka refuses (SASL credentials) — fix
      the invocation, the grant or the credentials
  3   ``--on-error fail`` met a bad record: everything before it is durable and committed
  4   S3 refused or kept failing (missing bucket, bad keys, a server without conditional
      writes, an outage longer than the retry bound) — nothing undurable was committed
  5   the output or the group is in a state this process must not touch on its own: an offset
      reset into already-written files, staged pieces that do not chain, a fatal Kafka client
      error (e.g. two members with one ``group.instance.id``), positions that cannot be committed,
      a topic deleted under the run
  6   ``--until-caught-up`` gave up waiting for partitions held by other members
  7   stalled: records waited longer than ``--row-group-max-age`` + ``--stall-exit`` without
      becoming durable and committed (S3 or the group coordinator kept failing, or the memory
      budget stayed pinned); the process exits at once, as after ``kill -9`` — everything
      committed is durable, a restart consumes the rest again (see :mod:`consumer.metrics`)
====  ===========================================================================================

SIGTERM/SIGINT/SIGHUP is a request to stop: status 0 even when ``--shutdown-timeout`` ran out
before every partition was flushed (those rows were not committed and are consumed again). A
*bounded* job (``replay``, ``run --until-caught-up``) that a signal N stops before it finished
exits 128 + N instead (143 for SIGTERM, 130 for SIGINT, 129 for SIGHUP, what a shell reports for
a process the signal ended; :func:`interrupted`): 0 would tell a Kubernetes Job, an Airflow task
or a ``&&`` chain that the export is complete. What it committed is durable; running it again
resumes.
``consumer run --processes N`` exits 0 when every member's last exit was 0, else with the most
severe member status: 5 > 4 > any other crash status (7, 128 + signal, …) > 3 > 2 > 6
(:mod:`consumer.supervisor`).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_BAD_RECORD = 3
EXIT_STORAGE = 4
EXIT_FATAL = 5
EXIT_INCOMPLETE = 6
EXIT_STALLED = 7


def interrupted(signum: int) -> int:
    """The status of a bounded job stopped by signal ``signum`` before it finished: 128 + N, as a
    shell reports a process that signal ended (so schedulers see "not done"; a rerun resumes)."""
    return 128 + signum


class ConsumerStop(RuntimeError):
    """Base of the errors that end a run with a specific exit status (:attr:`status`)."""

    status = EXIT_FATAL


class UsageError(ConsumerStop):
    """The invocation cannot work as given (e.g. a topic that does not exist)."""

    status = EXIT_CONFIG


class KafkaNotAuthorized(UsageError):
    """The cluster refuses this client's principal what a run needs (its ACLs): reading a topic,
    using the group. Idling on would look alive and read nothing, for good."""


class KafkaLoginRefused(UsageError):
    """A broker refuses this client's login (SASL), at start or when a connection logs in again
    mid-run: the client can neither fetch nor commit, and a retry with the same credentials is
    refused too. Like the Java consumer's AuthenticationException, it ends the run."""


class BadRecordStop(ConsumerStop):
    """``on_error=fail`` and a record could not become a row; everything before it is durable."""

    status = EXIT_BAD_RECORD


class IntegrityError(ConsumerStop):
    """The output prefix holds something this protocol cannot continue from safely (an offset reset
    into written files, a piece removed by someone else, a file that does not read back)."""

    status = EXIT_FATAL


class FatalClientError(ConsumerStop):
    """librdkafka reported a fatal error: the client instance is unusable and must be recreated."""

    status = EXIT_FATAL


#: What a broker answers a static member that joins under KIP-848's protocol while its
#: ``group.instance.id`` is still held (UNRELEASED_INSTANCE_ID). librdkafka hands the application
#: the text of that fatal error, not its code.
_UNRELEASED_INSTANCE_ID = "instance id is still used"


#: What a broker answers a member joining under KIP-848's protocol a group that still has members
#: of the classic protocol it cannot convert (GROUP_ID_NOT_FOUND; the broker logs "Cannot upgrade
#: classic group … userData from a custom assignor would be lost": librdkafka's cooperative-sticky
#: assignor keeps its state in userData).
_CLASSIC_GROUP = "group id does not exist"


def fatal_client_hint(said: str) -> str:
    """What an operator should do about the fatal Kafka client error ``said``."""
    if _CLASSIC_GROUP in said.lower():
        return (
            "with group.protocol=consumer, the broker does not let a member join a group that "
            "still has members of the classic protocol (it cannot convert their assignor's state). "
            "Switch protocols with the group empty: stop every member, wait until their sessions "
            "have expired (session.timeout.ms, 45 s by default; static members do not leave on "
            "stop), then start them all with -X group.protocol=consumer. Committed offsets are "
            "kept."
        )
    if _UNRELEASED_INSTANCE_ID in said.lower():
        return (
            "the group.instance.id is still held by an earlier member the coordinator has not "
            "expired yet: a process killed without leaving the group (with group.protocol=consumer "
            "the broker frees the id after its group.consumer.session.timeout.ms, 45 s by default), "
            "or another live member with the same id. Start again once that time has passed "
            "(--processes restarts its members with backoff)."
        )
    return "check for a second member with the same group.instance.id, then restart."


class TopicDeleted(ConsumerStop):
    """A topic this run reads was deleted under it: it is gone from the cluster's metadata. The
    member stayed assigned and read nothing, for good, after one warning. The group's offsets went
    with the topic, so what it holds past them can be staged but never committed; and a topic
    created again under the name is another topic to Kafka."""

    status = EXIT_FATAL


def topic_deleted(topics: list[str]) -> str:
    names = ", ".join(repr(t) for t in topics)
    return (
        f"topic {names} was deleted while this consumer read it (the cluster no longer lists it). "
        "The output up to each partition's committed position is complete. The rows read past it "
        "are written to staging where S3 takes them, but no commit can follow (the group's offsets "
        "went with the topic): they stay there, uncommitted. Remove the topic from --topic, and run "
        f"`consumer finish --topic {topics[0]}` (same group and output) to make its open files final "
        "with every staged row. A topic created again under the name is another topic to Kafka: "
        "export it to a new --output prefix with a new group."
    )


class PositionNotInLog(ConsumerStop):
    """A partition's position is no longer in its log (Kafka answered OFFSET_OUT_OF_RANGE).

    librdkafka's ``auto.offset.reset`` would jump to one end of the log without a word: forward
    over records retention deleted before they were read, or back to 0 in a topic deleted and
    recreated under the same name, whose new records the worker would then drop as already
    written (their offsets are below its position). Either is a loss nobody sees, so the run
    stops and says which one it is (:func:`position_not_in_log`)."""

    status = EXIT_FATAL


def position_not_in_log(
    topic: str, partition: int, position: int, low: int | None, high: int | None, *, replay: bool = False
) -> str:
    """What happened to a partition's ``position`` given its log's watermarks now, and what to do
    (``replay``: a ``consumer replay``, which keeps its positions in S3, not in a group)."""
    head = f"{topic}[{partition}]: the position {position} is no longer in the partition's log"
    if low is not None and high is not None:
        head += f" (now [{low}, {high}))"
    if high is not None and position > high:
        again = "Replay it" if replay else "Export the new topic"
        return (
            f"{head}: the log ends before it, so the topic was deleted and recreated (or truncated). "
            "Its new records reuse offsets this output prefix already holds, so none was read. "
            f"{again} to another --output prefix" + ("." if replay else " with a new --group-id.")
        )
    if low is not None and position < low:
        go_on = (
            f"replay to another --output prefix from there (--from {partition}={low},…)"
            if replay
            else f"move the group's offset to {low} (kafka-consumer-groups --reset-offsets "
            f"--to-offset {low}) and start again"
        )
        return (
            f"{head}: records [{position}, {low}) were deleted by retention before they were read, "
            f"and nothing can bring them back. Nothing was skipped silently: to go on without them, {go_on}."
        )
    then = "replay with another --from" if replay else (
        "move the group's offset (kafka-consumer-groups --reset-offsets)")
    return (
        f"{head}: Kafka answered OFFSET_OUT_OF_RANGE. Check the topic's retention and whether it "
        f"was recreated, then {then}."
    )


class KafkaUnreachable(ConsumerStop):
    """The cluster did not answer the requests a run starts with (metadata, end offsets)."""

    status = EXIT_FATAL


class RegistryStop(ConsumerStop):
    """The schema registry stayed unreachable past ``--registry-timeout`` while a record needed
    an unseen schema id; nothing was dead-lettered, the record stays uncommitted."""

    status = EXIT_FATAL


class StorageContractError(ConsumerStop):
    """The object store does not honour a rule the protocol depends on (conditional writes)."""

    status = EXIT_STORAGE


class Incomplete(ConsumerStop):
    """``--until-caught-up`` ended with partitions not exported (held by another member)."""

    status = EXIT_INCOMPLETE
