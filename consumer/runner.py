"""Runners: the poll loop that feeds partition workers, shared by group members and replays.

A runner owns the Kafka consumer and nothing about files. :class:`Runner` is the one loop: poll a
batch, hand each record to its partition's :class:`~consumer.worker.PartitionWorker`, flush and
roll what is due, keep the process inside its memory budget, and ask the concrete runner whether
the run is done. The two runners differ only in how partitions arrive and when a run ends:

* :class:`GroupRunner` — a long-running member of a consumer group. Partitions arrive by
  rebalance: on assignment a worker recovers before anything is fetched (the recovered position
  becomes the partition's start offset); on revocation the worker makes its rows durable and
  commits; on a lost assignment the worker is dropped without writing. With
  ``--until-caught-up`` it ends when *every* partition of the subscribed topics — its own and the
  other members' — is committed at the end offsets seen at start and every file is final.
* :class:`~consumer.replay.ReplayRunner` — manual assignment over a bounded range.

Exit statuses and the errors behind them live in :mod:`consumer.errors`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from itertools import groupby
from operator import methodcaller
from typing import Any

from consumer import faults, first_contact, group_requests
from consumer import log as logmod
from consumer.budget import MemoryPlan, batch_messages, fetch_bytes, fetch_response_bytes
from consumer.config import Config, ConfigError, admin_config
from consumer.decoding import Decoder
from consumer.errors import (
    EXIT_BAD_RECORD,
    EXIT_CONFIG,
    EXIT_FATAL,
    EXIT_INCOMPLETE,
    EXIT_OK,
    EXIT_STORAGE,
    ConsumerStop,
    FatalClientError,
    Incomplete,
    KafkaLoginRefused,
    KafkaNotAuthorized,
    KafkaUnreachable,
    PositionNotInLog,
    TopicDeleted,
    UsageError,
    fatal_client_hint,
    interrupted,
    position_not_in_log,
    topic_deleted,
)
from consumer.exit_timer import exit_after
from consumer.gather import partition_runs
from consumer.kafka_names import (
    ALL_BROKERS_DOWN,
    PARTITION_EOF,
    TP,
    UNKNOWN_TOPIC_OR_PART,
    GroupView,
    broker_untrusted,
    login_refused,
    not_authorized,
)
from consumer.layout import Layout
from consumer.orphans import OrphanWatch
from consumer.positions import KafkaGroupPositions, PartitionFenced, PositionError, PositionStore
from consumer.principal import client_principal
from consumer.side_by_side import close_all, recover_each
from consumer.signals import dump_stacks_on_request, install_stop_handler, on_arrival
from consumer.storage import (
    FIRST_CONTACT_S,
    REFUSED_HINT,
    FatalStorageError,
    ObjectStore,
    RetryPolicy,
    TransientStorageError,
    probe_conditional_writes,
    refusal,
)
from consumer.tail_probe import Tail, TailProbe, probe_config
from consumer.tls_probe import why_untrusted
from consumer.worker import PartitionState, PartitionWorker, SharedState

__all__ = [
    "EXIT_BAD_RECORD",
    "EXIT_CONFIG",
    "EXIT_FATAL",
    "EXIT_INCOMPLETE",
    "EXIT_OK",
    "EXIT_STORAGE",
    "TP",
    "GroupRunner",
    "Runner",
]

_AUTO_OFFSET_RESET = -140  # the position is not in the log and auto.offset.reset is "error"
_STATE = -172  # e.g. incremental_assign() under an eager rebalance protocol
_OFFSET_BEGINNING, _OFFSET_END, _OFFSET_INVALID = -2, -1, -1001
_LOOK_AT_OTHERS_EVERY = 2.0  # seconds, --until-caught-up (GroupRunner._check_others)
_TOPIC_ID_FOR = 10.0  # seconds one answer about a topic's id serves recoveries (Runner._topic_id_now)
_TOPIC_ID_QUIET = 30.0  # … and after no answer, seconds flushes go on without asking
_KAFKA_VIEW_EVERY = 1.0  # seconds between notes of the partitions' watermarks (Runner._note_kafka_view)
#: where a partition with no position starts, by -X auto.offset.reset (config.AUTO_OFFSET_RESETS);
#: "error" leaves it to librdkafka, whose error then stops the run
_FRESH_START = {"smallest": _OFFSET_BEGINNING, "earliest": _OFFSET_BEGINNING, "beginning": _OFFSET_BEGINNING,
                "largest": _OFFSET_END, "latest": _OFFSET_END, "end": _OFFSET_END}

# confluent_kafka.Message methods, called from C by map()/groupby() over a consumed batch.
_msg_error = methodcaller("error")
_msg_len = methodcaller("__len__")
_msg_partition = methodcaller("partition")


def _msg_tp(msg: Any) -> tuple[str, int]:
    return (msg.topic(), msg.partition())

_FATAL = -150  # reported on a message as a plain error whose fatal() is False
#: librdkafka's "desired partition is no longer available" and Kafka's UNKNOWN_TOPIC_OR_PART: what
#: the client says once a topic it reads is deleted (Runner._check_topics_still_exist asks first)
_TOPIC_GONE = frozenset({-190, UNKNOWN_TOPIC_OR_PART})
_MISSING_TOPIC_EVERY = 30.0  # seconds between warnings about a subscribed topic that does not exist
_ORPHAN_LOOK_EVERY = 10.0  # seconds between looks at the group's assignment (static members)
_ORPHAN_LOOK_BACKOFF = 60.0  # … after a look the cluster did not answer (each may block up to 5 s)
_DESCRIBE_WAIT = 5.0  # seconds a look at a consumer group waits for the coordinator (Runner._describe)


@dataclass
class RunStats:
    """Counters of the whole run; workers fold theirs in when they retire, so no worker object
    outlives its partition (200 rebalances must not keep 800 workers' buffers alive)."""

    records: int = 0
    bytes_in: int = 0
    row_groups: int = 0
    files: int = 0
    rebalances: int = 0  # assignments received (consumer.metrics)
    fenced: int = 0  # commits refused: partition fenced
    orphan_rejoins: int = 0  # rejoins that handed out partitions no member owned (consumer/orphans.py)
    started: float = field(default_factory=time.monotonic)

    def retire(self, worker: PartitionWorker) -> None:
        self.row_groups += worker.row_groups
        self.files += worker.files_rolled
        worker.row_groups = worker.files_rolled = 0

    def summary(self, store: ObjectStore) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return {
            "records": self.records,
            "avro_bytes": self.bytes_in,
            "seconds": round(elapsed, 2),
            "records_per_s": round(self.records / elapsed),
            "row_groups": self.row_groups,
            "files": self.files,
            "s3_requests": sum(store.stats.requests.values()),
            "s3_bytes_uploaded": store.stats.bytes_uploaded,
            "s3_bytes_copied": store.stats.bytes_copied_server_side,
            "s3_retries": store.stats.retries,
        }


def resident_bytes() -> int:
    """This process's resident set size (0 where /proc is not available)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def release_unused_memory() -> None:
    """Hand memory freed inside the allocator back to the operating system: Arrow's pool is the
    system allocator (consumer.cli), where ``release_unused`` is glibc's ``malloc_trim``. It also
    covers the native decoder's batches, which Rust allocates from the same heap. A few ms."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


#: The least time (seconds) between two trims while RSS is over the memory plan's soft limit,
#: and between two log lines saying so.
TRIM_SECONDS = 1.0
#: The same between two trims as the flushes of a revoke, a shutdown or a run's end start (one
#: flush takes longer than this; 200 small partitions do not trim 200 times).
RELIEF_SECONDS = 0.1
SAY_SECONDS = 60.0


def _fatal_client_error(err: Any) -> FatalClientError:
    return FatalClientError(
        f"fatal Kafka client error: {err}. Nothing uncommitted was written as committed; "
        + fatal_client_hint(str(err))
    )


class Runner:
    """The shared poll loop. Subclasses implement :meth:`_start` (subscribe or assign) and
    :meth:`_done` (None while the run goes on, else its exit status), and may filter records in
    :meth:`_accept`."""

    #: seconds ``consumer.close()`` may take beyond the shutdown deadline before it is abandoned
    close_grace = 5.0
    #: seconds after that before the native exit timer ends a process whose close holds the GIL
    exit_timer_margin = 2.0
    #: a ``consumer replay`` (positions kept in S3, no group): what its stop messages advise
    replaying = False
    #: whether a connection refused at start (S3's, every broker's) ends the first-contact waits
    #: at once: for a command an operator runs and waits for (``finish``). A run and a replay are
    #: started beside their servers (compose, a pod) and give one still starting those waits.
    refused_connection_is_an_answer = False

    def __init__(
        self,
        config: Config,
        *,
        store: ObjectStore,
        decoder: Decoder,
        consumer_factory: Callable[[dict[str, Any]], Any] | None = None,
        positions_factory: Callable[[Any], PositionStore] | None = None,
        clock: Callable[[], float] = time.monotonic,
        process_rss: Callable[[], int] | None = None,
        describe_group: Callable[[str], GroupView | None] | None = None,
        topic_id: Callable[[str, bool], str | None] | None = None,
        store_of: Callable[[str], ObjectStore] | None = None,
    ) -> None:
        self.config = config
        #: The process's resident bytes when the run starts (the entry point passes
        #: :func:`resident_bytes`; the in-memory doubles leave it out: 0).
        self._process_rss = process_rss or (lambda: 0)
        self.memory = MemoryPlan.of(config.memory_bytes, config.row_group_bytes)
        #: what the next ``consume()`` asks for: ``--batch-size``, fewer for large records
        #: (consumer.budget.batch_messages)
        self.batch_messages = config.batch_size
        #: the process's RSS at the loop's last reading (:meth:`_buffers_now`; 0 before the first)
        self.last_rss = 0
        self.store = store
        self.decoder = decoder
        self.clock = clock
        self.layout = Layout(config.prefix)
        self._topics = tuple(config.topics)
        self.shared = SharedState()
        #: an AdminClient, made at the first look at a consumer group (:meth:`_describe`)
        self._admin: Any = None
        self._admin_lock = threading.Lock()
        #: group → its describe request, still in flight or last answered (:meth:`_describe`)
        self._group_asks: dict[str, Future[Any]] = {}
        self._group_asks_lock = threading.Lock()
        self.shared.describe_group = describe_group or self._describe_other_group
        #: topic → (when asked, its id): recoveries of one rebalance share one answer
        self._topic_ids: dict[str, tuple[float, str | None]] = {}
        self._topic_id_failed = False  # said once as a warning, then at debug level
        # Against a real cluster the AdminClient says it; the in-memory doubles only when given.
        self.shared.topic_id = topic_id or (self._topic_id_now if consumer_factory is None else None)
        self.shared.store_of = store_of
        self.log = logmod.get("consumer.runner", group=config.group_id)
        self.workers: dict[TP, PartitionWorker] = {}
        self.stop_requested = False
        #: the signal that asked for the stop (request_stop); a bounded job's status names it
        self.stop_signal: int = signal.SIGTERM
        #: the bounded job did all it was run for (_done said so): a signal now is not an interruption
        self.finished = False
        self.stop_requested_at: float | None = None  # on self.clock: the shutdown deadline counts from here
        self.stats = RunStats()
        self._callback_error: BaseException | None = None
        #: a broker down is reported many times a second: one line per kind every 30 s
        self._kafka_errors = logmod.Throttle()
        self._fatal_client = False
        self.closing = False
        #: the command must end the process with ``os._exit``, not destroy the Kafka client (see
        #: :meth:`_close_consumer`): close hung, or was skipped for a static member
        self.exit_without_client = False
        #: Disarms the exit timer that :meth:`_close_consumer` leaves armed when it abandons a
        #: close (the process is to end at once; the timer ends it if something holds it up). Only
        #: a caller that keeps the process alive after such a run (a test) calls it.
        self.disarm_exit_timer: Callable[[], None] = lambda: None
        self._disarm_flush_bound: Callable[[], None] = lambda: None
        #: the client's first error event but "all brokers down" (which says no more than the
        #: request's failure): why the first requests failed, said at start
        self._first_kafka_error: str | None = None
        #: whether the client said every broker is down (refused, not found or dropped at the handshake)
        self._every_broker_down = False
        #: whether a handshake of our own already asked why a broker's certificate is not trusted
        self._tls_probed = False
        #: whom a refusal names (what -X logs in as; the client certificate is read once, as
        #: librdkafka read it at start)
        self._principal = client_principal(config.kafka_properties)
        #: the client said a topic or partition is unknown: whether a topic read was deleted is
        #: asked after the next poll (:meth:`_check_topics_still_exist`)
        self._topic_may_be_gone = False
        #: a topic this run read was deleted under it: the client is not closed (_close_consumer)
        self._topic_deleted = False
        self.budget_paused = False
        #: the arenas' share now: the plan's, squeezed while RSS is over its soft limit
        self.buffers_budget = self.memory.buffers
        self._trimmed_at = self._squeeze_said_at = float("-inf")
        self._next_kafka_view = 0.0
        self._trim_lock = threading.Lock()
        self.registry_paused: set[TP] = set()  # partitions waiting for the schema registry
        self.heartbeat: float | None = None  # self.clock() of the poll loop's last iteration (health)
        if consumer_factory is None:
            from confluent_kafka import Consumer

            consumer_factory = Consumer
        self._consumer_factory = consumer_factory
        try:
            self.consumer = consumer_factory(self._kafka_config())
        except Exception as exc:  # librdkafka refuses a property or a combination of them
            said = logmod.kafka_said(exc)
            if said is None:
                raise
            problem = f"the Kafka client refused its configuration: {said} (check the -X properties)"
            raise ConfigError([problem]) from exc
        self.positions: PositionStore = (
            positions_factory(self.consumer) if positions_factory is not None else KafkaGroupPositions(
                self.consumer, group=config.group_id or None,
                principal=self._principal)
        )

    def _kafka_config(self) -> dict[str, Any]:
        fetch = fetch_bytes(self.config.memory_bytes)
        conf: dict[str, Any] = {
            "bootstrap.servers": self.config.bootstrap_servers,
            "group.id": self.config.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            # librdkafka's prefetch is memory the arenas do not see: its queue is bounded by 1/16
            # of --memory-bytes (1–32 MiB; 1/64 of that per partition, each fetch response by a
            # quarter of it, 1-4 MiB: consumer.budget says why), and the memory plan sets twice
            # the queue aside.
            "queued.max.messages.kbytes": fetch // 1024,
            "fetch.max.bytes": fetch_response_bytes(self.config.memory_bytes),
            "max.partition.fetch.bytes": max(64 << 10, min(1 << 20, fetch // 64)),
            # librdkafka also keeps up to queued.min.messages per partition (100,000 by default),
            # beyond what the byte limit counts (its own bookkeeping per message): one per KiB of
            # the fetch size, 1,000-100,000.
            "queued.min.messages": max(1000, min(100_000, fetch // 1024)),
            # When a queue is full librdkafka waits this long before fetching for it again (1 s by
            # default): the loop drained it long before, and stood idle. 20 ms: 1M page_view
            # records took 5.5-6.4 s of wall time instead of 10.6-10.8 s, for the same CPU.
            "fetch.queue.backoff.ms": 20,
            "error_cb": self._on_kafka_error,
            "logger": logmod.LibrdkafkaLog(self.log, debugging="debug" in self.config.kafka_properties),
        }
        if not self.config.consumer_protocol:
            # the classic protocol's incremental rebalances; under KIP-848's the coordinator
            # assigns (-X group.remote.assignor), and librdkafka refuses a client-side assignor
            conf["partition.assignment.strategy"] = "cooperative-sticky"
        conf.update(self.config.kafka_properties)
        # -X auto.offset.reset says only where a partition with no position starts (earliest by
        # default; the assign callback seeks there). A position the log no longer holds stops the
        # run (PositionNotInLog) instead of jumping to an end of the log without a word.
        conf["auto.offset.reset"] = "error"
        return conf

    @property
    def _fresh_start(self) -> int:
        """The offset a partition with no committed position and nothing in S3 starts from."""
        reset = str(self.config.kafka_properties.get("auto.offset.reset", "earliest"))
        return _FRESH_START.get(reset, _OFFSET_INVALID)

    def _on_kafka_error(self, err: Any) -> None:
        if self._of_a_group_not_used(err):
            return
        fatal = bool(err.fatal())
        if err.code() == ALL_BROKERS_DOWN:
            self._every_broker_down = True
        elif self._first_kafka_error is None:
            self._first_kafka_error = str(err.str())
        if err.code() in _TOPIC_GONE:
            self._topic_may_be_gone = True
        held = self._kafka_errors.admit(str(err))
        if held is not None or fatal:
            more = {"repeated": held} if held else {}
            self.log.warning("kafka client error", error=str(err), fatal=fatal, **more)
        if fatal:
            self._callback_error = _fatal_client_error(err)
        elif self._callback_error is None:  # the loop raises it after its poll
            if (said := self._not_authorized(err, None)) is not None:
                self._callback_error = KafkaNotAuthorized(said)
            elif (said := login_refused(err.code(), err.str(), self._why_untrusted(err),
                                         self.config.kafka_properties)) is not None:
                self._callback_error = KafkaLoginRefused(said)

    def _why_untrusted(self, err: Any) -> str | None:
        """OpenSSL's reason, asked with a handshake of our own, when ``err`` is a broker certificate
        this client does not trust (librdkafka says only "certificate verify failed"); the run
        stops on it, so this is asked once a run (the client repeats the error while it closes)."""
        if self._tls_probed or not broker_untrusted(err.code(), str(err.str())):
            return None
        self._tls_probed = True
        return why_untrusted(str(err.str()), self.config.kafka_properties)

    def _topic_not_found(self, missing: Sequence[str]) -> ConsumerStop:
        """Why the topics ``missing`` are not in the cluster's metadata: a topic this client may not
        describe is left out of it as if it did not exist, so each is asked for by name, and the
        broker's answer tells an ACL to grant (KafkaNotAuthorized) from a name to check."""
        for topic in missing:
            with contextlib.suppress(Exception):
                info = self.consumer.list_topics(topic=topic, timeout=10.0).topics.get(topic)
                said = None if info is None or info.error is None else self._not_authorized(info.error, topic)
                if said is not None:
                    return KafkaNotAuthorized(said)
        return UsageError(
            f"topic {', '.join(repr(t) for t in missing)} does not exist on "
            f"{self.config.bootstrap_servers}: check the name (--topic)"
        )

    def _not_authorized(self, err: Any, topic: str | None) -> str | None:
        """Why to stop (status 2) when the cluster refuses this client an ACL the run needs: a
        topic it may not read, a group it may not use; None for any other error. librdkafka
        reports those and carries on, so the member stayed in the group reading nothing, for good,
        after one warning (or, with --until-caught-up, waited out its timeout and blamed other
        members). The Java client throws from poll() and Kafka Connect fails the task; here the
        buffered rows are flushed and committed as at a SIGTERM, and the message names the ACL."""
        return not_authorized(err.code(), topic, self.config.group_id, str(err), self._principal)

    def _new_worker(self, topic: str, partition: int) -> PartitionWorker:
        return PartitionWorker(
            topic,
            partition,
            config=self.config,
            store=self.store,
            positions=self.positions,
            layout=self.layout,
            decoder=self.decoder,
            shared=self.shared,
            log=self.log,
            clock=self.clock,
        )

    def _retire(self, key: TP) -> PartitionWorker | None:
        worker = self.workers.pop(key, None)
        self.registry_paused.discard(key)  # a pause flag left behind is cleared on re-assignment
        if worker is not None:
            self.stats.retire(worker)
        return worker

    # -- lifecycle -------------------------------------------------------------------------------
    def request_stop(self, signum: int = signal.SIGTERM, *_: Any) -> None:
        """SIGTERM, SIGINT or SIGHUP: finish the current batch, then :meth:`_shutdown` within
        ``--shutdown-timeout`` of this moment. S3 and commit retries that start from now on are
        capped to that bound already, so a flush running into an outage cannot outlive it."""
        if self.stop_requested_at is None:
            self.stop_requested_at = self.clock()
            self.stop_signal = signum
            self._cap_retries(self.config.shutdown_timeout)
        self.stop_requested = True

    @property
    def bounded(self) -> bool:
        """A job that ends by itself once its work is done (``replay``, ``--until-caught-up``):
        stopped before that, it has not done what it was run for, and its status says so."""
        return self.replaying or self.config.until_caught_up

    def stop_status(self, signum: int) -> int:
        """What a stop by signal ``signum`` earns now: 0, or for a bounded job that has not
        finished, 128 + the signal (errors.interrupted)."""
        return interrupted(signum) if self.bounded and not self.finished else EXIT_OK

    def _stopped_on_request(self) -> int:
        """The status of a run that ended because it was asked to (:meth:`request_stop`)."""
        status = self.stop_status(self.stop_signal)
        if status == EXIT_OK:
            return status
        self.log.warning(
            "stopped by a signal before the job finished: what it committed is durable, and "
            "running it again resumes",
            signal=signal.Signals(self.stop_signal).name, status=status,
        )
        return status

    def _cap_retries(self, seconds: float) -> None:
        """Bound the retry time of the store's and the position store's calls to ``seconds`` from
        now (S3Store's RetryPolicy.max_elapsed and give_up_at, KafkaGroupPositions' max_elapsed
        and give_up_at; other stores have no retries to cap). A retry loop already running gives
        up at the bound too; a single request in flight keeps its own timeout."""
        seconds = max(seconds, 0.0)
        policy = getattr(self.store, "retry", None)
        if isinstance(policy, RetryPolicy):
            self.store.retry = dataclasses.replace(  # type: ignore[attr-defined]
                policy, max_elapsed=min(policy.max_elapsed, seconds)
            )
        if isinstance(getattr(self.positions, "max_elapsed", None), (int, float)):
            self.positions.max_elapsed = min(self.positions.max_elapsed, seconds)  # type: ignore[attr-defined]
        # … and a retry loop already running (S3 outage in the flush the signal interrupted) gives
        # up at the same moment: S3Store / KafkaGroupPositions check give_up_at every round.
        give_up_at = time.monotonic() + seconds
        for target in (self.store, self.positions):
            current = getattr(target, "give_up_at", False)
            if current is None or isinstance(current, float):
                target.give_up_at = give_up_at if current is None else min(current, give_up_at)  # type: ignore[union-attr]

    def _warn_if_deleted_versions_pile_up(self) -> None:
        """Every roll deletes the staged pieces it merged: in a bucket that keeps every version they
        stay, about the output's size again, unless a lifecycle rule expires noncurrent versions.
        Said once at start; nothing else changes (the protocol works the same on such a bucket)."""
        staging = self.layout.staging_root()
        if self.store.keeps_deleted_versions(staging):
            self.log.warning(
                "the bucket keeps every version and no lifecycle rule expires noncurrent versions "
                "of the staging folder: each staged piece stays after its roll deletes it (about "
                "the output's size again)",
                staging=staging,
                hint="add a lifecycle rule that expires noncurrent versions under the prefix's "
                "_staging/, _state/, _newest_final/, _rolled/ and _moved/ folders (README, 'S3 servers "
                "and buckets')",
            )

    def _warn_if_staging_expires(self) -> None:
        """A lifecycle rule that expires current objects of the staging folder (a rule on the
        whole prefix, meant to keep N days of output) also expires staged pieces: committed rows
        of files not yet final. Files roll within --file-max-age, so that takes a group down
        longer than the rule's age, or files kept open that long; the partition then stops with
        status 5 and its rows are in no file. Said once at start; the run is the same."""
        staging = self.layout.staging_root()
        rule = self.store.expires_current(staging)
        if rule is not None:
            self.log.warning(
                "a lifecycle rule expires current objects of the staging folder: a staged piece "
                "older than that (a group down that long, or a file open that long) holds "
                "committed rows in no other file, and its partition will stop with status 5",
                staging=staging,
                rule=rule,
                file_max_age=self.config.file_max_age,
                hint="limit the rule to the final files (<prefix>/topic=) and _dead_letters/ "
                "(README, 'Keeping N days of output')",
            )

    def _warn_of_open_files_not_subscribed(self) -> None:
        """Files left open by a topic taken out of ``--topic``: a revoke stages and commits what a
        partition holds and leaves its file open for the next owner to resume, so once no member
        subscribes to the topic, those committed rows stay in staged pieces, which no query reads,
        for good. Said once at start (one LIST of the staging folder); one bounded run of that
        topic makes every file final. Members of the group that still subscribe to it (another
        deployment, a rollout half done) resume them themselves."""
        staged = self.layout.staged_partitions(o.key for o in self.store.list(self.layout.staging_root()))
        for topic, partitions in sorted(staged.items()):
            if topic in self.config.topics:
                continue
            self.log.warning(
                "this output holds open files of a topic this run does not consume: their staged "
                "pieces hold committed rows that are in no final file, and stay so while no member "
                "of the group consumes the topic",
                topic=topic,
                partitions=sorted(partitions),
                hint=f"if the topic was taken out of --topic, run once with this group and output: "
                f"consumer run --topic {topic} --until-caught-up (it makes every file of the topic "
                f"final, then exits); if it was deleted from the cluster: consumer finish --topic {topic}",
            )

    def install_signal_handlers(self) -> None:
        """SIGTERM, SIGINT and SIGHUP (unless ignored, as under ``nohup``) ask for a stop; SIGUSR1
        logs every thread's stack, SIGUSR2 writes it without the GIL (consumer.signals)."""
        self._bound_from_the_signal(install_stop_handler(self.request_stop))
        dump_stacks_on_request()

    def _bound_from_the_signal(self, signals: tuple[signal.Signals, ...]) -> None:
        """Arm the native exit timer the moment a stop signal arrives, for the whole stop.

        Python runs :meth:`request_stop` only once the main thread is back in Python code, and a
        synchronous commit in a flush of the loop blocks in C until librdkafka answers: with the
        broker frozen, a minute and more. The signal reaches the wakeup fd at once, though, so a
        thread reading it arms the timer then: --shutdown-timeout + 8 s from the signal, one second
        after the shutdown's own timers (which know the run's status) would have fired. It ends
        the process with the status a stop request earns: 0, or 128 + N for a bounded job that had
        not finished (:meth:`_stopped_on_request`). The thread is consumer.signals' (:func:`on_arrival`)."""
        bound = self.config.shutdown_timeout + self.close_grace + self.exit_timer_margin + 1.0
        armed = threading.Lock()

        def arm(signum: int) -> None:
            if not armed.acquire(blocking=False):  # armed by the first stop signal, for the stop
                return
            status = self.stop_status(signum)
            exit_after(
                bound, status,
                f"consumer: still running {bound:g}s after the stop signal (--shutdown-timeout "
                f"{self.config.shutdown_timeout:g}s): a call to Kafka or S3 is blocked. Exiting with "
                f"status {status}: everything committed is durable, and rows not committed are "
                "consumed again",
            )

        on_arrival(signals, arm)

    def run(self) -> int:
        """Run until stopped or done; the process exit status (see :mod:`consumer.errors`)."""
        self.log.info("starting", config=self.config.redacted())
        self._plan_memory()
        code = EXIT_OK
        try:
            with self._first_contact_with_s3():
                probe_conditional_writes(self.store, self.layout.probe_key(uuid.uuid4().hex),
                                         if_match=self.replaying)
            self._warn_if_deleted_versions_pile_up()
            self._warn_if_staging_expires()
            self._warn_of_open_files_not_subscribed()
            self._start_talking_to_kafka()
            code = self._loop()
        except ConsumerStop as exc:
            code = exc.status
            self.log.error(f"stopped: {type(exc).__name__}", error=str(exc), status=code)
        except (FatalStorageError, TransientStorageError, PositionError) as exc:
            code = self._stopped_by(exc)
        except Exception as exc:
            refused = refusal(exc)
            if refused is not None:  # an answer that will not change: say so, do not ask for a restart
                self.log.error("stopped: S3 refused a request", error=refused, hint=REFUSED_HINT)
                code = EXIT_STORAGE
            else:
                code = self._unexpected(exc)
        finally:
            self._shutdown(status=code)
        return code

    def _start_talking_to_kafka(self) -> None:
        """:meth:`_start`, whose metadata and offset requests are the run's first to the cluster:
        a client error there is an address, network or security setting, said as such."""
        try:
            self._start()
        except Exception as exc:
            said = logmod.kafka_said(exc)
            if said is None:
                raise
            with contextlib.suppress(Exception):  # the client's error events say why, once served
                self.consumer.poll(0)
            if isinstance(self._callback_error, KafkaLoginRefused):
                self._fatal_client = True
                raise self._callback_error from exc
            if self._first_kafka_error:  # e.g. "Connection refused", a TLS handshake's reason
                said = f"{said}; librdkafka: {self._first_kafka_error}"
            raise KafkaUnreachable(
                f"the first requests to Kafka failed ({said}): check --bootstrap-servers "
                f"({self.config.bootstrap_servers}), that the brokers are up and reachable from here, "
                "and the -X security settings (`consumer check` tries each). Nothing was read or written."
            ) from exc

    def _first_metadata(self, topic: str | None = None) -> Any:
        """The cluster's metadata (of ``topic``), the run's first request to it
        (:mod:`consumer.first_contact`): waited for up to 10 s, but a refused login or certificate
        stops the wait at once."""
        return first_contact.metadata(self.consumer, 10.0, self._refused_at_first_contact, topic)

    def _refused_at_first_contact(self) -> bool:
        with contextlib.suppress(Exception):  # the error events (_on_error) of the tries so far
            self.consumer.poll(0)
        return isinstance(self._callback_error, KafkaLoginRefused) or (
            self.refused_connection_is_an_answer and self._every_broker_down)

    def _unexpected(self, exc: Exception) -> int:
        self.log.error(
            "stopped: unexpected error; everything committed is durable, restart me",
            error=f"{type(exc).__name__}: {exc}",
            exc_info=exc,  # a bug of ours: where it happened is what a report needs
        )
        return EXIT_FATAL

    @contextlib.contextmanager
    def _first_contact_with_s3(self) -> Iterator[None]:
        """The start-up probe is the run's first S3 request. A server that does not answer then is
        most often a wrong endpoint (--s3-endpoint-url) or one not up yet: like the first requests
        to Kafka (about 10 s), it is given ``storage.FIRST_CONTACT_S`` seconds rather than the 4 minutes
        an outage in the middle of a run is waited out, and the run exits 4 saying what to check.
        Before, it retried for 4 minutes before saying only that requests kept failing."""
        patience = getattr(self.store, "patience", None)
        if patience is None:  # a store without retries (the in-memory doubles)
            yield
            return
        try:
            with patience(FIRST_CONTACT_S, refused_is_an_answer=self.refused_connection_is_an_answer):
                yield
        except TransientStorageError as exc:
            if self.stop_requested_at is not None:
                raise  # the stop's own bound (_stopped_by)
            where = self.config.s3_endpoint_url or f"AWS S3, region {self.config.s3_region}"
            raise FatalStorageError(
                f"S3 did not answer at start ({exc}): check --s3-endpoint-url ({where}) and that the "
                "server is up and reachable from here (`consumer check` tries it). Nothing was read "
                "or written."
            ) from exc

    def _stopped_by(self, exc: Exception) -> int:
        """Exit status of an S3 or commit error that ended the loop."""
        if self.stop_requested_at is not None and isinstance(exc, (TransientStorageError, PositionError)):
            # After SIGTERM the retry budgets are capped to --shutdown-timeout (request_stop): giving
            # up is the bounded shutdown working, not a failure. That partition's rows stay
            # uncommitted (its worker is broken); the others are still flushed in _shutdown.
            self.log.warning("stop requested: a flush gave up within the shutdown bound", error=str(exc))
            return self._stopped_on_request()
        if isinstance(exc, PositionError):
            self.log.error(
                "stopped: cannot read or commit positions (Kafka coordinator unavailable too long)",
                error=str(exc),
            )
            return EXIT_FATAL
        self.log.error("stopped: S3 error", error=str(exc))
        return EXIT_STORAGE

    def _describe_other_group(self, group: str) -> GroupView | None:
        """Another consumer group as the coordinator sees it (recovery asks before adopting what
        that group wrote; the worker says it when there is no answer): None when it does not answer."""
        try:
            return self._describe(group)
        except Exception as exc:
            self.log.debug("describing a consumer group failed", other_group=group, error=str(exc))
            return None

    def _admin_client(self) -> Any:
        """The AdminClient, made at its first use (from any thread: recoveries run side by side)."""
        from confluent_kafka.admin import AdminClient

        with self._admin_lock:
            if self._admin is None:
                conf: dict[str, Any] = {**admin_config(self.config), "logger": logmod.LibrdkafkaLog(self.log)}
                self._admin = AdminClient(conf)
            return self._admin

    def _topic_id_now(self, topic: str, fresh: bool) -> str | None:
        """The topic's id (KIP-516) as the cluster says it, for the workers' checks that they read
        the topic their output came from: asked now when ``fresh`` (before a flush), else an
        answer up to ``_TOPIC_ID_FOR`` seconds old will do (recoveries). None when the cluster
        does not say (Kafka before 2.8, no DESCRIBE on the topic, no answer): the check is then
        skipped, with one warning, and not asked again for ``_TOPIC_ID_QUIET`` seconds."""
        from confluent_kafka import TopicCollection

        now = self.clock()
        with self._admin_lock:
            known = self._topic_ids.get(topic)
        if known is not None:
            asked_at, answer = known
            if answer is None and now - asked_at < _TOPIC_ID_QUIET:
                return None  # a broker outage must not add the request's timeout to every flush
            if answer is not None and not fresh and now - asked_at < _TOPIC_ID_FOR:
                return answer
        try:
            asked = self._admin_client().describe_topics(TopicCollection([topic]), request_timeout=5.0)
            desc = asked[topic].result()
            said = str(desc.topic_id) if desc.topic_id is not None else ""
            topic_id = said if said.strip("A=") else None  # all zeros: the broker has no ids
            if topic_id is None:
                raise ValueError("the broker gave no topic id")
        except Exception as exc:
            level = self.log.debug if self._topic_id_failed else self.log.warning
            self._topic_id_failed = True
            level("could not read the topic's id: a topic deleted and created again under its name "
                  "is not detected by this recovery", topic=topic, error=str(exc))
            topic_id = None
        with self._admin_lock:
            self._topic_ids[topic] = (now, topic_id)
        return topic_id

    def _describe(self, group: str) -> GroupView:
        """A consumer group as the coordinator sees it, through the AdminClient; raises when it
        does not answer within ``_DESCRIBE_WAIT``. librdkafka never times the request out itself
        (that can crash the process: consumer.group_requests); one still unanswered is waited for
        again instead of sending another, so a coordinator that does not answer holds one request
        per group."""
        from confluent_kafka import ConsumerGroupState

        with self._group_asks_lock:
            asked = self._group_asks.get(group)
            if asked is None or asked.done():
                asked = group_requests.describe(self._admin_client(), group)
                self._group_asks[group] = asked
        desc = group_requests.answer(asked, _DESCRIBE_WAIT)
        return GroupView(
            stable=desc.state == ConsumerGroupState.STABLE,
            members={
                m.member_id: frozenset((tp.topic, tp.partition) for tp in m.assignment.topic_partitions)
                for m in desc.members
            },
        )

    def _start(self) -> None:
        raise NotImplementedError

    def _done(self, now: float) -> int | None:
        raise NotImplementedError

    def _accept(self, tp: TP, batch: list[Any]) -> list[Any]:
        """The records of one partition's batch this run takes (all, unless a subclass bounds it)."""
        return batch

    def _by_partition(self, msgs: list[Any]) -> Iterator[tuple[TP, list[Any], int]]:
        """A consumed batch as runs of one partition each, in order (librdkafka returns records in
        per-partition runs, so there are few), with each run's value bytes. With one topic the
        runs are cut in one native pass (:func:`consumer.gather.partition_runs`); fetch errors,
        rare, and several topics take the slow path (``map`` and ``groupby``)."""
        if len(self._topics) == 1:
            runs = partition_runs(msgs)
            if runs is not None:
                topic = self._topics[0]
                for partition, start, end, nbytes in runs:
                    yield (topic, partition), msgs[start:end], nbytes
                return
        if any(map(_msg_error, msgs)):
            good = []
            for msg in msgs:
                err = msg.error()
                if err is None:
                    good.append(msg)
                else:
                    self._fetch_error(err, msg)
            msgs = good
        key = _msg_partition if len(self._topics) == 1 else _msg_tp
        for k, group in groupby(msgs, key=key):
            run = list(group)
            tp = (self._topics[0], k) if len(self._topics) == 1 else k
            yield tp, run, sum(map(_msg_len, run))

    def _after_poll(self) -> None:
        """Work that must wait until librdkafka finished a rebalance (runs after every poll)."""

    # -- the loop --------------------------------------------------------------------------------
    def _loop(self) -> int:
        cfg = self.config
        while not self.stop_requested:
            msgs = self.consumer.consume(num_messages=self.batch_messages, timeout=cfg.poll_timeout)
            self._raise_callback_error()
            if self._topic_may_be_gone:
                self._check_topics_still_exist()
            self._after_poll()
            consumed_bytes = 0
            for tp, run, run_bytes in self._by_partition(msgs):
                consumed_bytes += run_bytes
                worker = self.workers.get(tp)
                if worker is None:
                    continue
                batch = self._accept(tp, run)
                if not batch:
                    continue
                n = len(batch)
                nbytes = run_bytes if batch is run else sum(map(_msg_len, batch))
                self.stats.records += n
                self.stats.bytes_in += nbytes
                worker.counters.records += n  # per-partition counts for metrics: no metric call here
                worker.counters.bytes += nbytes
                self._guard(worker, worker.append_batch, batch)
                if worker.waiting:
                    self._registry_pause(worker)
            now = self.heartbeat = self.clock()
            unseen = []  # no log end noted yet (just assigned): noted at every batch until it is
            for worker in list(self.workers.values()):
                if worker.retry_due(now):
                    self._guard(worker, worker.retry_waiting)
                    if not worker.waiting:
                        self._registry_resume(worker)
                if worker.flush_due(now):
                    self._guard(worker, worker.flush)
                if worker.roll_due(now):
                    self._guard(worker, worker.roll_aged)
                if worker.log_end is None:
                    unseen.append(worker)
            self._enforce_memory_budget(now)
            if now >= self._next_kafka_view:
                self._next_kafka_view = now + _KAFKA_VIEW_EVERY
                self._note_kafka_view(list(self.workers.values()))
            elif unseen:
                self._note_kafka_view(unseen)
            self.batch_messages = self._next_batch_messages(len(msgs), consumed_bytes)
            code = self._done(now)
            if code is not None:
                self.finished = code == EXIT_OK
                return code
        return self._stopped_on_request()

    def _check_topics_still_exist(self) -> None:
        """Stop (TopicDeleted, status 5) when a topic this run holds partitions of is gone from the
        cluster's metadata: the client said a partition or topic is unknown. Asked, not assumed:
        the same codes can come while a leader moves. No answer proves nothing: asked again at
        the client's next such word."""
        self._topic_may_be_gone = False
        gone = self._gone_from_the_cluster({w.topic for w in self.workers.values()})
        if gone:
            self._topic_deleted = True
            raise TopicDeleted(topic_deleted(gone))

    def _gone_from_the_cluster(self, topics: set[str]) -> list[str]:
        """Those of ``topics`` the cluster's metadata no longer lists (deleted); none when it did
        not answer, which proves nothing."""
        try:
            md = self.consumer.list_topics(timeout=10.0)
        except Exception:
            return []
        return [t for t in sorted(topics) if t not in md.topics
                or getattr(md.topics[t].error, "code", lambda: None)() == UNKNOWN_TOPIC_OR_PART]

    def _note_kafka_view(self, workers: list[PartitionWorker]) -> None:
        """Note, for the metrics, these partitions' log end offset (librdkafka's cached watermarks:
        no request) and, where nothing is buffered, the position read past
        (PartitionWorker.log_end, .read_past). From the loop thread: confluent-kafka 2.16 held a
        scrape's ``get_watermark_offsets`` back while this thread sat in ``consume()``, 1-12 s
        per scrape here, past Prometheus's 10 s scrape timeout. And here, between batches, every
        record consumed has reached its worker, so a worker with nothing pending has every
        record below the position committed: what lies between is transaction markers and
        aborted records, which a lag counted from the committed offset would report as work
        forever."""
        from confluent_kafka import TopicPartition

        for w in workers:
            with contextlib.suppress(Exception):  # not known now: the next note
                marks = self.consumer.get_watermark_offsets(TopicPartition(w.topic, w.partition), cached=True)
                if marks and marks[1] is not None and marks[1] >= 0:
                    w.log_end = int(marks[1])
        idle = [w for w in workers if w.state is PartitionState.READY
                and not w.pending and not w.waiting and w.committed is not None]
        if not idle:
            return
        try:
            positions = self.consumer.position([TopicPartition(w.topic, w.partition) for w in idle])
        except Exception:  # the next note
            return
        for w, tp in zip(idle, positions, strict=True):
            if tp.error is None and w.committed is not None and tp.offset > w.committed:
                w.read_past = int(tp.offset)

    # -- registry outage -------------------------------------------------------------------------
    def _registry_pause(self, worker: PartitionWorker) -> None:
        """A record of the partition waits for an unreachable registry: stop fetching it (its
        held-back records stay in the worker, uncommitted) until the worker's retry succeeds."""
        from confluent_kafka import TopicPartition

        key = (worker.topic, worker.partition)
        if key not in self.registry_paused:
            self.registry_paused.add(key)
            with contextlib.suppress(Exception):
                self.consumer.pause([TopicPartition(*key)])

    def _registry_resume(self, worker: PartitionWorker) -> None:
        from confluent_kafka import TopicPartition

        key = (worker.topic, worker.partition)
        if key in self.registry_paused:
            self.registry_paused.discard(key)
            if not self.budget_paused:
                with contextlib.suppress(Exception):
                    self.consumer.resume([TopicPartition(*key)])

    def _raise_callback_error(self) -> None:
        if self._callback_error is not None:
            err, self._callback_error = self._callback_error, None
            if isinstance(err, (FatalClientError, KafkaLoginRefused)):
                # A client refused its login cannot commit either: a commit would wait for a
                # coordinator it cannot reach (minutes), so the shutdown does not flush.
                self._fatal_client = True
            raise err

    def _of_a_group_not_used(self, err: Any) -> bool:
        """Whether ``err`` concerns a consumer group this run never uses: none here (a replay's;
        see ReplayRunner)."""
        return False

    def _fetch_error(self, err: Any, msg: Any) -> None:
        if err.code() == PARTITION_EOF or self._of_a_group_not_used(err):
            return
        if err.code() == _AUTO_OFFSET_RESET:
            raise self._position_not_in_log(msg.topic(), msg.partition(), msg.offset(), str(err))
        if (said := self._not_authorized(err, msg.topic())) is not None:
            raise KafkaNotAuthorized(said)
        if err.fatal() or err.code() == _FATAL:
            # e.g. "Static consumer fenced by other consumer with same group.instance.id": the
            # client is unusable; idling on would look alive and do nothing, forever.
            self._fatal_client = True
            raise _fatal_client_error(err)
        self.log.warning("fetch error", error=str(err))

    def _position_not_in_log(self, topic: str, partition: int, offset: int, said: str) -> PositionNotInLog:
        """Kafka refused to fetch from a partition's position: which loss it would have been."""
        from confluent_kafka import TopicPartition

        worker = self.workers.get((topic, partition))
        position = worker.next_pos if worker is not None and worker.next_pos is not None else offset
        low = high = None
        with contextlib.suppress(Exception):
            low, high = self.consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=5.0)
        problem = position_not_in_log(topic, partition, position, low, high, replay=self.replaying)
        self.log.error("position not in the log", topic=topic, partition=partition, position=position,
                       low=low, high=high, kafka=said)
        return PositionNotInLog(problem)

    def _guard(self, worker: PartitionWorker, fn: Callable[..., None], *args: Any) -> None:
        """Run a worker step; on fencing, stop touching the partition (see subclasses)."""
        try:
            fn(*args)
        except PartitionFenced as exc:
            self._fenced(worker, exc)

    def _fenced(self, worker: PartitionWorker, exc: PartitionFenced) -> None:
        raise exc

    def _finish_all(self, workers: list[PartitionWorker]) -> list[PartitionWorker]:
        """``finish()`` of each of ``workers`` side by side (consumer.side_by_side); the ones that
        finished without an error. A fenced one is handled as :meth:`_guard` does; any other error
        is raised once every finish has run (the first in ``workers``' order)."""
        if not workers:
            return []
        failed: BaseException | None = None
        finished = []
        for c in close_all(workers, piece_bytes=self.config.row_group_bytes, finish=True,
                           before_each=self._relieve_memory):
            if isinstance(c.error, PartitionFenced):
                self._fenced(c.worker, c.error)
            elif c.error is not None:
                failed = failed or c.error
            else:
                finished.append(c.worker)
        if failed is not None:
            raise failed
        return finished

    # -- memory ----------------------------------------------------------------------------------
    def _plan_memory(self) -> None:
        """Share ``--memory-bytes`` out now that the process has started (consumer.budget)."""
        cfg = self.config
        self.memory = plan = MemoryPlan.of(cfg.memory_bytes, cfg.row_group_bytes, self._process_rss())
        mb = 1_000_000
        parts = {"buffers_mb": round(plan.buffers / mb, 1), "fetch_mb": round(plan.fetch / mb, 1),
                 "flush_mb": round(plan.flush / mb, 1), "process_mb": round(plan.process / mb, 1)}
        if plan.too_small:
            self.log.warning(
                "--memory-bytes is too small for this process: peak RSS may pass it + 100 MB",
                memory_bytes=cfg.memory_bytes, hint=f"give it at least {plan.smallest_sufficient // mb} MB "
                "(or a smaller --row-group-bytes)", **parts)
        else:
            self.log.info("memory plan", memory_bytes=cfg.memory_bytes, **parts)
        self.buffers_budget = plan.buffers

    def _buffers_now(self, now: float, total: int) -> int:
        """:attr:`buffers_budget` for the process's RSS now (consumer.budget: the soft limit), read
        once per consumed batch (12 µs; a batch of small records takes 30 ms to arrive, and
        checking less often let RSS pass the bound by what arrived in between). Over the soft
        limit, freed memory goes back first (at most once per :data:`TRIM_SECONDS`), so that only
        what is still held counts against the arenas. ``now``: the loop's clock reading."""
        plan = self.memory
        rss = self._process_rss()
        if self._hand_back(rss, now, TRIM_SECONDS):
            rss = self._process_rss()
        self.last_rss = rss
        budget = plan.buffers_at(rss, total)
        if budget < plan.buffers <= self.buffers_budget and now - self._squeeze_said_at >= SAY_SECONDS:
            self._squeeze_said_at = now  # at a tight budget this comes and goes every few seconds
            self.log.info("process memory over the plan's soft limit: buffering less",
                          rss=rss, soft_limit=plan.soft_limit, buffers=budget)
        self.buffers_budget = budget
        return budget

    def _next_batch_messages(self, consumed: int, consumed_bytes: int) -> int:
        """What the next ``consume()`` asks for: ``--batch-size``; while the process is over its
        plan's soft limit (:meth:`_buffers_now`), fewer when records are large, so that a batch
        holds about one fetch response (consumer.budget.batch_messages). Measured on ``wide``
        (1 KB records) at 128MiB: with 5,000 records a batch, peak RSS passed the bound in 7 of 59
        runs, by up to 4.3 MB; capped, in none of 23 (the highest 230.1 MB of 234.2). Only over the
        soft limit: batches of 4,194 instead of 5,000 made a 512MiB run of the same records 7 %
        longer, at the same CPU (docs/benchmarks.md, nineteenth pass)."""
        if not self.memory.over(self.last_rss):
            return self.config.batch_size
        return batch_messages(
            self.config.batch_size, self.batch_messages, consumed, consumed_bytes, self.memory.batch
        )

    def _relieve_memory(self) -> None:
        """As each of the flushes of a revoke, a shutdown or the end of a run starts (no poll loop
        watches them): over the plan's soft limit, hand what is free (what the flushes before it
        let go of) back to the system before this one takes more. Measured on ``wide`` (4
        partitions, 512MiB), the last flushes and rolls of a caught-up run took the peak from
        about 600 to 633–694 MB, over the bound of 637, each one's memory coming on top of the
        previous one's."""
        self._hand_back(self._process_rss(), self.clock(), RELIEF_SECONDS)

    def _hand_back(self, rss: int, now: float, every: float) -> bool:
        """Whether freed memory was handed back to the system now: only with ``rss`` over the
        plan's soft limit, and at most once every ``every`` seconds (the flushes' threads call it
        too, hence the lock)."""
        with self._trim_lock:
            if not self.memory.over(rss) or now - self._trimmed_at < every:
                return False
            self._trimmed_at = now
        release_unused_memory()
        return True

    def _enforce_memory_budget(self, now: float) -> None:
        """Keep buffered bytes under the arenas' share of ``--memory-bytes`` (:meth:`_buffers_now`).

        Flushing early is only worth it for a partition holding a useful row group (at least
        1/16 of the row-group byte target, 1 MiB at most): flushing hundreds of partitions of a few
        rows each would make one-row row groups and a PUT+commit per poll. When no partition is
        worth flushing and the total is over the plan's share, fetching pauses instead, until age
        flushes bring the total below 3/4 of that share.

        The share squeezed by RSS (:meth:`_buffers_now`) only flushes early; it does not pause:
        with 200 partitions at 128MiB the arenas held 33 MB and librdkafka most of the rest, and
        pausing on RSS made the run 35 % longer for a peak 4 % lower, still over the bound.
        """
        floor = min(self.config.row_group_bytes // 16, 1 << 20)
        total = sum(w.buffered_bytes for w in self.workers.values())
        squeezed = self._buffers_now(now, total)
        while total > squeezed:
            candidates = [w for w in self.workers.values() if w.pending and w.buffered_bytes >= floor]
            if not candidates:
                break
            largest = max(candidates, key=lambda w: w.buffered_bytes)
            before = largest.buffered_bytes
            self.log.info(
                "memory budget reached: flushing largest arena early",
                topic=largest.topic,
                partition=largest.partition,
                bytes=before,
            )
            self._guard(largest, largest.flush)
            after = largest.buffered_bytes if self.workers.get((largest.topic, largest.partition)) else 0
            if after >= before:
                break
            total -= before - after
        budget = self.memory.buffers
        if total > budget and not self.budget_paused:
            self.log.warning("memory budget reached with only small buffers: pausing fetch", bytes=total)
            self._pause_fetch(True)
        elif self.budget_paused and total <= budget * 3 // 4:
            self.log.info("memory below budget again: resuming fetch", bytes=total)
            self._pause_fetch(False)

    def _pause_fetch(self, pause: bool) -> None:
        from confluent_kafka import TopicPartition

        tps = [TopicPartition(t, p) for (t, p), w in self.workers.items()
               if w.state is PartitionState.READY and (pause or (t, p) not in self.registry_paused)]
        with contextlib.suppress(Exception):
            (self.consumer.pause if pause else self.consumer.resume)(tps)
        self.budget_paused = pause

    # -- shutdown --------------------------------------------------------------------------------
    def _shutdown(self, *, status: int) -> None:
        """Make every partition's buffered rows durable and committed, within
        ``--shutdown-timeout`` of the stop request (or of now, when the run ended by itself).

        The partitions are flushed side by side (consumer.side_by_side), their S3 and commit
        retries capped to the time left. A flush not started by the deadline is skipped: its rows
        were never committed, so the next owner consumes them again, and its open files stay
        staged and resume (nothing uncommitted is ever committed)."""
        faults.point("during_shutdown")
        self.closing = True
        start = self.stop_requested_at if self.stop_requested_at is not None else self.clock()
        deadline = start + self.config.shutdown_timeout
        self._disarm_flush_bound = self._arm_flush_bound(deadline, status)
        try:
            self._flush_and_close(deadline, status)
        finally:
            self._disarm_flush_bound()

    def _arm_flush_bound(self, deadline: float, status: int) -> Callable[[], None]:
        """The native exit timer over the shutdown's flushes, until :meth:`_close_consumer` arms
        its own: the retries are capped to the deadline, but one call can block past it. A
        synchronous commit waits for a group coordinator it cannot reach (its login refused, the
        coordinator's broker cut off) up to the session timeout, and longer: after SIGTERM a run
        whose login was refused went on for 150 s. Ending the process then loses nothing: what
        was not committed is consumed again, and an S3 write cut short is a crash the protocol
        recovers from."""
        wait = max(deadline - self.clock(), 0.0) + self.close_grace + self.exit_timer_margin
        sys.stdout.flush()  # the timer ends the process without flushing what Python buffered
        sys.stderr.flush()
        return exit_after(
            wait, status,
            f"consumer: the shutdown's flushes did not end within {wait:.1f}s (--shutdown-timeout "
            f"{self.config.shutdown_timeout:g}s, then {self.close_grace + self.exit_timer_margin:g}s "
            f"more): a call to Kafka or S3 is blocked. Exiting with status {status}: everything "
            "committed is durable, and rows not committed are consumed again",
        )

    def _flush_and_close(self, deadline: float, status: int) -> None:
        if self._callback_error is not None:
            self.log.warning("error in a rebalance callback", error=str(self._callback_error))
        workers = list(self.workers.values())
        left = [w.where for w in workers if w.pending]
        if not self._fatal_client and deadline > self.clock():  # a dead client cannot commit
            self._cap_retries(deadline - self.clock())
            closed = close_all(workers, piece_bytes=self.config.row_group_bytes,
                               go_on=lambda: self.clock() < deadline, before_each=self._relieve_memory)
            left = [c.worker.where for c in closed if c.worker.pending]  # broken, halted or skipped
            for c in closed:
                if c.error is not None:  # the others were still flushed; nothing uncommitted is lost
                    self.log.warning("could not flush on shutdown", topic=c.worker.topic,
                                     partition=c.worker.partition, error=str(c.error))
        for key in list(self.workers):
            self._retire(key)
        if left:
            self.log.warning(
                "shutdown: buffered rows of these partitions were not made durable; they stay "
                "uncommitted and are consumed again by the partition's next owner",
                partitions=left,
                shutdown_timeout_s=self.config.shutdown_timeout,
                deadline_passed=self.clock() >= deadline,
            )
        # Every offset is committed and nothing below commits: the run's summary is final.
        self.log.info("stopped", clean=status == EXIT_OK, **self.stats.summary(self.store))
        self._close_consumer(deadline, status)

    def _keeps_client_open(self) -> bool:
        """Whether ending the process without ``consumer.close()`` is what the group would see
        anyway (a static member: see :class:`GroupRunner`)."""
        return False

    def _close_consumer(self, deadline: float, status: int) -> None:
        """``consumer.close()``, bounded by the shutdown deadline plus :attr:`close_grace`.

        librdkafka can block forever inside close when a rebalance reaches the member there: the
        rebalance callback's assign (or its query of the rebalance protocol) waits on a group
        handler that has already stopped (librdkafka issues #4041 and #4884). It happens when a
        member ends (SIGTERM, ``--until-caught-up``) just as another member's session expires.
        Walking away is safe: every offset was committed synchronously before this point and
        close commits nothing (auto commit is off), so the group only sees this member's session
        expire, as after a crash. The process must then end without destroying the client, which
        would block the same way: :attr:`exit_without_client` tells the command to ``os._exit``.

        confluent-kafka makes those calls from its rebalance callback holding the GIL, so a close
        stuck there stops every Python thread, this wait included. The native exit timer
        (:mod:`consumer.exit_timer`) needs no GIL: it ends the process with ``status`` shortly after
        this wait would have.

        After a topic was deleted under the run (TopicDeleted) the member ends without close too:
        librdkafka has aborted there (status -6 instead of 5, seen once on the stack; its issue
        #2963 is a refcount assertion once a subscribed topic is deleted). Nothing is lost by it:
        no commit of that topic can succeed, and the group sees the member's session expire."""
        import threading

        if self._keeps_client_open() or self._topic_deleted:
            self.exit_without_client = True
            return
        done = threading.Event()
        failed: list[BaseException] = []

        def close() -> None:
            try:
                self.consumer.close()
            except BaseException as exc:  # reported below, from the runner's own thread
                failed.append(exc)
            finally:
                done.set()

        wait = max(deadline - self.clock(), 0.0) + self.close_grace
        sys.stdout.flush()  # the timer ends the process without flushing what Python buffered
        sys.stderr.flush()
        self._disarm_flush_bound()  # the close's own timer takes over
        self.disarm_exit_timer = exit_after(
            wait + self.exit_timer_margin, status,
            f"consumer: the Kafka client's close did not return within {wait:.0f}s and holds the "
            f"GIL: exiting with status {status} without it (every offset was already committed; "
            "the group sees this member's session expire)",
        )
        threading.Thread(target=close, name="kafka-close", daemon=True).start()
        if not done.wait(wait):  # the timer stays armed: the command exits before it fires
            self.exit_without_client = True
            self.log.warning(
                "consumer close did not return: exiting without it (every offset was already "
                "committed; the group sees this member's session expire)",
                waited_s=round(wait, 1),
            )
        else:
            self.disarm_exit_timer()
            if failed:
                self.log.warning("consumer close failed", error=str(failed[0]))


class GroupRunner(Runner):
    """A member of a consumer group (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        *,
        group_view: Callable[[], GroupView | None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(config, **kwargs)
        self.shared.group_id = config.group_id  # named in every piece (a replay names none)
        self.shared.output = config.output  # named in every commit's note (consumer.positions)
        #: Static members look for partitions no member owns (consumer/orphans.py says why).
        #: Under KIP-848's protocol the coordinator moves partitions itself: no hole to look for.
        static = bool(config.kafka_properties.get("group.instance.id")) and not config.consumer_protocol
        self._static = static
        self._orphans = OrphanWatch(config.orphan_grace) if static and config.orphan_grace > 0 else None
        self._group_view = group_view or self._describe_group
        self._next_orphan_look = self.clock() + min(_ORPHAN_LOOK_EVERY, config.orphan_grace / 2)
        self._describe_failed = False  # said once as a warning, then at debug level
        self.fenced: set[TP] = set()  # paused after a refused commit, until a rebalance settles
        self.assigned_once = False
        self._rebalanced = False
        self._resume: set[TP] = set()  # assigned again after being paused: resume after the poll
        self._lost: set[TP] = set()  # reported lost, not settled yet (_settle_lost)
        self.targets: dict[TP, int] = {}  # --until-caught-up: end offsets of every partition at start
        self.exported: set[TP] = set()  # … partitions proven committed at their target, files final
        self._missing_topics: list[str] = []
        self._missing_warned = 0.0
        #: when to look at the other members' partitions next (--until-caught-up): every 2 s, the
        #: first time 2 s after the start, when a member of a settled group has its partitions and
        #: a lone member, owning them all, needs no second client to look (consumer.tail_probe)
        self._next_check = self.clock() + _LOOK_AT_OTHERS_EVERY
        self._waiting_since: float | None = None
        self._tail_probe: TailProbe | None = None  # made at the first short committed offset

    @property
    def missing_topics(self) -> list[str]:
        """Subscribed topics that did not exist at the last check, while nothing was ever assigned
        (the member idles and warns; ``/readyz`` says so)."""
        return [] if self.assigned_once else list(self._missing_topics)

    def _keeps_client_open(self) -> bool:
        """A static member of the classic protocol (``--processes`` members) does not leave the
        group on close (KIP-345: the coordinator keeps its partitions until its session expires,
        so a restart gets them back without a rebalance): close would change nothing the group
        sees, and it is where librdkafka can hang (:meth:`Runner._close_consumer`). So the member
        ends without it. Under KIP-848's protocol close does tell the coordinator: it is kept."""
        return self._static

    def _shutdown(self, *, status: int) -> None:
        if self._tail_probe is not None:  # not a group member: its close is quick
            with contextlib.suppress(Exception):
                self._tail_probe.close()
        self._settle_lost()  # lost partitions of a listed topic are not this shutdown's to flush
        super()._shutdown(status=status)

    # -- start -----------------------------------------------------------------------------------
    def _start(self) -> None:
        missing = self._missing(self.config.topics)
        if missing and self.config.until_caught_up:
            raise self._topic_not_found(missing)
        self._missing_topics = missing
        if self.config.until_caught_up:
            self.targets = self._end_offsets()
        self._subscribe()

    def _subscribe(self) -> None:
        self.consumer.subscribe(
            list(self.config.topics),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    def _missing(self, topics: tuple[str, ...]) -> list[str]:
        md = self._first_metadata()
        return [t for t in topics if t not in md.topics or md.topics[t].error is not None]

    def _end_offsets(self) -> dict[TP, int]:
        from confluent_kafka import TopicPartition

        md = self.consumer.list_topics(timeout=10.0)
        out: dict[TP, int] = {}
        for topic in self.config.topics:
            for p in sorted(md.topics[topic].partitions):
                low, high = self.consumer.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=10.0, cached=False
                )
                if high > low:
                    out[(topic, p)] = int(high)
        return out

    # -- rebalance callbacks ---------------------------------------------------------------------
    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        if self.closing:
            # An assignment that reaches us inside close(): we are leaving, so recovering (and
            # reading committed offsets from a closing consumer) would only stall the exit.
            self.log.info("assignment during shutdown ignored", partitions=len(partitions))
            return
        self.assigned_once = True
        self.stats.rebalances += 1
        self._rebalanced = True
        again = [(tp.topic, tp.partition) for tp in partitions if (tp.topic, tp.partition) in self._lost]
        if again:  # lost and assigned again within one poll: their topic exists
            self._lost.difference_update(again)
            self._drop_lost(again)
        try:
            for tp in partitions:
                key = (tp.topic, tp.partition)
                # Paused earlier (fenced, caught up, memory): librdkafka keeps a partition's pause
                # across revoke and re-assignment, so it must be resumed explicitly.
                self._resume.add(key)
                self.fenced.discard(key)
            workers = [self._new_worker(tp.topic, tp.partition) for tp in partitions]
            outcomes = recover_each(workers)
            failed = next((r.error for r in outcomes if r.error is not None
                           and not isinstance(r.error, PartitionFenced)), None)
            if failed is not None:
                raise failed
            for tp, r in zip(partitions, outcomes, strict=True):
                if r.error is None:  # fenced ones: fetched from the committed offset, paused below
                    tp.offset = r.position if r.position is not None else self._fresh_start
                    self.workers[(tp.topic, tp.partition)] = r.worker
            if partitions:
                self._take(consumer, partitions)
            for r in outcomes:
                if isinstance(r.error, PartitionFenced):
                    self._fenced(r.worker, r.error)
            self.log.info("partitions assigned", partitions=[f"{t.topic}[{t.partition}]" for t in partitions])
        except BaseException as exc:  # surfaced from the poll loop; librdkafka would swallow it
            self._callback_error = exc

    @staticmethod
    def _take(consumer: Any, partitions: list[Any]) -> None:
        """Assign ``partitions`` from the offsets recovery chose. confluent-kafka ignores offsets
        written into the callback's list: unless the callback assigns, it assigns that list as
        librdkafka gave it, and fetching starts at the committed offset, or by auto.offset.reset."""
        from confluent_kafka import KafkaException

        try:
            consumer.incremental_assign(partitions)  # cooperative-sticky, and KIP-848's protocol
        except KafkaException as exc:
            if exc.args[0].code() != _STATE:
                raise
            consumer.assign(partitions)  # an eager assignor (-X partition.assignment.strategy=range)

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        for key in keys:
            self.fenced.discard(key)
            self._resume.discard(key)
        workers = [w for key in keys if (w := self.workers.get(key)) is not None]
        relieve = self._relieve_memory
        for c in close_all(workers, piece_bytes=self.config.row_group_bytes, before_each=relieve):
            if isinstance(c.error, PartitionFenced):
                self.log.warning("revoked partition already fenced", error=str(c.error),
                                 topic=c.worker.topic, partition=c.worker.partition)
            elif c.error is not None and self._callback_error is None:
                self._callback_error = c.error
        for key in keys:
            self._retire(key)
        self.log.info("partitions revoked", partitions=[f"{t.topic}[{t.partition}]" for t in partitions])

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        """Partitions the group took away without a revoke: settled after the poll
        (:meth:`_settle_lost`), not here. The first version asked the cluster from inside this
        callback, and CI then saw librdkafka abort twice in a later close (status -6)."""
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self.fenced.discard(key)
            self._resume.discard(key)
            self._lost.add(key)

    def _settle_lost(self) -> list[str]:
        """The partitions reported lost since the last poll. Those of a topic the cluster still
        lists (this member was expelled) are dropped without writing: another member may own them
        now. Those of a deleted topic (librdkafka also reports lost the partitions of a topic its
        metadata no longer lists) are kept, and their topics returned: no one else can own them,
        and the rows held are the only copy left, so the run stops (TopicDeleted, status 5) and
        its shutdown stages them. Before, they were dropped too, and the member idled with no
        partition, for good."""
        if not self._lost:
            return []
        lost, self._lost = sorted(self._lost), set()
        gone = self._gone_from_the_cluster({t for t, _ in lost})
        self._drop_lost([key for key in lost if key[0] not in gone])
        if gone:
            self._topic_deleted = True
        return gone

    def _drop_lost(self, keys: list[TP]) -> None:
        """Lost partitions of a topic that exists: dropped without writing, as another member may
        own them now. One line for all of them."""
        for key in keys:
            self._retire(key)
        if keys:
            self.log.warning("partitions lost: dropped without writing",
                             partitions=[f"{t}[{p}]" for t, p in keys])

    def _after_poll(self) -> None:
        from confluent_kafka import TopicPartition

        if gone := self._settle_lost():
            raise TopicDeleted(topic_deleted(gone))
        if self._resume:
            keys = [k for k in self._resume if k in self.workers]
            self._resume.clear()
            if keys and not self.budget_paused:
                with contextlib.suppress(Exception):
                    self.consumer.resume([TopicPartition(*k) for k in keys])
        if self._rebalanced:
            self._rebalanced = False
            if self.fenced:
                self._recover_fenced()
        if self._orphans is not None and not self.stop_requested:
            self._look_for_orphans()
        if self._missing_topics and not self.assigned_once:
            now = self.clock()
            if now - self._missing_warned >= _MISSING_TOPIC_EVERY:
                self._missing_warned = now
                self._missing_topics = self._missing(tuple(self._missing_topics))
                if self._missing_topics:
                    self.log.warning(
                        "subscribed topic does not exist: waiting for it to be created",
                        topics=self._missing_topics,
                    )

    # -- partitions no member owns ----------------------------------------------------------------
    def _look_for_orphans(self) -> None:
        """Now and then, ask the coordinator who owns what; if :class:`OrphanWatch` says this
        member should heal partitions no member owns, leave the group and join again so it
        rebalances. Our own partitions are revoked as in any rebalance (flushed, committed) and
        the cooperative assignor gives them back."""
        assert self._orphans is not None
        now = self.clock()
        if now < self._next_orphan_look:
            return
        self._next_orphan_look = now + min(_ORPHAN_LOOK_EVERY, self._orphans.grace / 2)
        try:
            partitions = []
            for topic in self.config.topics:  # only our topics' metadata, not the cluster's
                meta = self.consumer.list_topics(topic, timeout=5.0).topics.get(topic)
                if meta is not None and meta.error is None:
                    partitions += [(topic, p) for p in meta.partitions]
            me = str(self.consumer.memberid() or "")
        except Exception as exc:  # metadata unavailable now: look again later
            self.log.debug("could not read the subscription's partitions", error=str(exc))
            self._next_orphan_look = now + _ORPHAN_LOOK_BACKOFF
            return
        view = self._group_view() if me else None
        if view is None and me:  # no answer: do not block the poll loop on it every 10 s
            self._next_orphan_look = now + _ORPHAN_LOOK_BACKOFF
        heal = self._orphans.look(now, view, partitions, me)
        if not heal:
            return
        self.log.warning(
            "partitions owned by no member of the group: rejoining so the group rebalances",
            partitions=[f"{t}[{p}]" for t, p in sorted(heal)],
            unowned_for_s=self._orphans.grace,
            hint="a static member that died in the middle of a cooperative rebalance leaves this "
            "behind; one rebalance hands them out (consumer/orphans.py)",
        )
        self.stats.orphan_rejoins += 1
        self.consumer.unsubscribe()
        self._subscribe()

    def _describe_group(self) -> GroupView | None:
        """This group as the coordinator sees it; None when it does not answer."""
        try:
            return self._describe(self.config.group_id)
        except Exception as exc:
            say = self.log.debug if self._describe_failed else self.log.warning
            self._describe_failed = True
            say(
                "could not ask the coordinator who owns which partition: partitions no member owns "
                "go unnoticed until it answers (describing a group needs DESCRIBE on it)",
                error=str(exc),
            )
            return None

    # -- fencing ---------------------------------------------------------------------------------
    def _fenced(self, worker: PartitionWorker, exc: PartitionFenced) -> None:
        """A fenced member must not recover on its own: its idea of the assignment may be stale,
        and recovery deletes staged objects past the committed position — which, for a zombie,
        could be the new owner's piece an instant before the new owner commits it. So the
        partition is paused and forgotten; only when a rebalance completes and Kafka still assigns
        it to us is it recovered again (:meth:`_recover_fenced`), or when it is assigned anew."""
        from confluent_kafka import TopicPartition

        key = (worker.topic, worker.partition)
        self.log.warning(
            "partition fenced: pausing it until the group settles",
            error=str(exc),
            topic=worker.topic,
            partition=worker.partition,
        )
        if self.workers.get(key) is worker:
            self._retire(key)
        self.fenced.add(key)
        self.stats.fenced += 1
        with contextlib.suppress(Exception):
            self.consumer.pause([TopicPartition(*key)])

    def _recover_fenced(self) -> None:
        """After a rebalance: partitions fenced earlier that Kafka still assigns to us are ours in
        the new generation, so recovering them is safe now."""
        from confluent_kafka import TopicPartition

        owned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        keys = [key for key in sorted(self.fenced) if key in owned and key not in self.workers]
        workers = [self._new_worker(*key) for key in keys]
        outcomes = recover_each(workers)
        self.fenced.clear()
        for key, r in zip(keys, outcomes, strict=True):
            if isinstance(r.error, PartitionFenced):  # fenced again: the group moved on meanwhile
                self._fenced(r.worker, r.error)
                continue
            if r.error is not None:
                raise r.error
            self.workers[key] = r.worker
            target = r.position if r.position is not None else self._fresh_start
            if target != _OFFSET_INVALID:  # (-X auto.offset.reset=error: librdkafka's own error)
                self.consumer.seek(TopicPartition(key[0], key[1], target))
            self.consumer.resume([TopicPartition(*key)])
            self.log.info("fenced partition recovered after rebalance", topic=key[0], partition=key[1])

    # -- until caught up -------------------------------------------------------------------------
    def _done(self, now: float) -> int | None:
        if not self.config.until_caught_up:
            return None
        from confluent_kafka import TopicPartition

        # Our own partitions: finish each as it reaches its target, then stop fetching it.
        reached = []
        for key, worker in list(self.workers.items()):
            target = self.targets.get(key, 0)
            if key in self.exported or worker.state is not PartitionState.READY or worker.waiting:
                continue
            pos = worker.next_pos if worker.next_pos is not None else -1
            if pos < target:
                fetched = self.consumer.position([TopicPartition(*key)])[0].offset
                if fetched < target:
                    continue
            elif pos > target and not worker.counters.records:
                self._check_position_in_log(key, pos)  # past the end seen at start, reading nothing
            reached.append(worker)
        for worker in self._finish_all(reached):
            if worker.finished:
                key = (worker.topic, worker.partition)
                self.exported.add(key)
                with contextlib.suppress(Exception):
                    self.consumer.pause([TopicPartition(*key)])
        if set(self.targets) <= self.exported:
            self.log.info("caught up: every partition of the topics is committed and final")
            return EXIT_OK
        # The others' partitions: proven done by the group's committed offsets and empty staging.
        if now >= self._next_check:
            self._next_check = now + _LOOK_AT_OTHERS_EVERY
            self._check_others()
            if set(self.targets) <= self.exported:
                self.log.info("caught up: every partition of the topics is committed and final")
                return EXIT_OK
        if not all(k in self.exported for k in self.workers):
            self._waiting_since = None  # our own work is not done: not waiting for others yet
        elif self._waiting_since is None:
            self._waiting_since = now
        if self._waiting_since is not None and now - self._waiting_since > self.config.caught_up_timeout:
            left = sorted(set(self.targets) - self.exported)
            raise Incomplete(
                f"not caught up after waiting {self.config.caught_up_timeout:.0f}s for other members: "
                f"{', '.join(f'{t}[{p}]' for t, p in left)} not committed at the end offsets seen at "
                "start or with files still open (another member holds them); rerun when they are free"
            )
        return None

    def _check_position_in_log(self, key: TP, pos: int) -> None:
        """A recovered position beyond the log's end (the topic was recreated under its name) would
        read as caught up at once, before librdkafka's fetch says the position is out of range."""
        from confluent_kafka import TopicPartition

        try:
            _, high = self.consumer.get_watermark_offsets(TopicPartition(*key), timeout=5.0, cached=False)
        except Exception:  # not known now: librdkafka's fetch will tell
            return
        if pos > high:
            raise self._position_not_in_log(key[0], key[1], pos, "the position is past the log's end")

    def _check_others(self) -> None:
        """Prove other members' partitions exported: committed at their target (or with nothing
        left to read below it) and no file still open (empty staging). Read from outside the
        group (:mod:`consumer.tail_probe` says why)."""
        todo = [k for k in self.targets if k not in self.exported and k not in self.workers]
        if not todo:
            return
        if self._tail_probe is None:
            self._tail_probe = TailProbe(self._consumer_factory, probe_config(self._kafka_config()))
        try:
            offsets = self._tail_probe.committed(todo)
        except Exception as exc:
            self.log.warning("could not read committed offsets of other members", error=str(exc))
            return
        done = [k for k, offset in offsets.items() if offset >= self.targets[k]]
        short = {k: offset for k, offset in offsets.items() if offset < self.targets[k]}
        probed = self._nothing_left(short) if short and all(k in self.exported for k in self.workers) else []
        for key in done + probed:  # (probed only while this member waits for the others)
            if not self.store.list(self.layout.staging_dir(*key)):
                self.exported.add(key)
                if key in probed:
                    self.log.info("partition exported: nothing left to read between its committed "
                                  "offset and the end offset (transaction markers or aborted records)",
                                  topic=key[0], partition=key[1], committed=short[key],
                                  end_offset=self.targets[key])

    def _nothing_left(self, committed: dict[TP, int]) -> list[TP]:
        """Partitions whose committed offset stops short of the target with no record left below
        it (a transactional topic's last markers, aborted records)."""
        assert self._tail_probe is not None
        try:
            tails = self._tail_probe.tails(committed, self.targets)
        except Exception as exc:  # the next check asks again
            self.log.warning("could not read other members' partitions past their committed offsets",
                             error=str(exc))
            return []
        return [k for k, tail in tails.items() if tail is Tail.EMPTY]
