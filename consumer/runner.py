"""The group runner: a long-running member of a consumer group that feeds partition workers.

It owns the Kafka consumer and nothing about files: on assignment it creates one
:class:`~consumer.worker.PartitionWorker` per partition and lets it recover before any record is
fetched (the recovered position becomes the partition's start offset); it polls in batches and
hands each record to its worker; it enforces the process-wide memory budget by flushing the
largest arena early; on revocation it lets the worker make its rows durable and commit; on a lost
assignment it drops the worker without writing (someone else owns the partition now); on
SIGTERM/SIGINT it makes everything durable and leaves the group.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from consumer import faults
from consumer import log as logmod
from consumer.config import Config
from consumer.decoding import Decoder
from consumer.layout import Layout
from consumer.positions import KafkaGroupPositions, PartitionFenced, PositionError, PositionStore
from consumer.storage import FatalStorageError, ObjectStore, TransientStorageError
from consumer.worker import BadRecordStop, IntegrityError, PartitionWorker, SharedState

EXIT_OK, EXIT_CONFIG, EXIT_BAD_RECORD, EXIT_STORAGE, EXIT_FATAL = 0, 2, 3, 4, 5

TP = tuple[str, int]


@dataclass
class RunStats:
    records: int = 0
    bytes_in: int = 0
    started: float = field(default_factory=time.monotonic)

    def summary(self, workers_done: list[PartitionWorker], store: ObjectStore) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return {
            "records": self.records,
            "avro_bytes": self.bytes_in,
            "seconds": round(elapsed, 2),
            "records_per_s": round(self.records / elapsed),
            "row_groups": sum(w.row_groups for w in workers_done),
            "files": sum(w.files_rolled for w in workers_done),
            "s3_requests": sum(store.stats.requests.values()),
            "s3_bytes_uploaded": store.stats.bytes_uploaded,
            "s3_bytes_copied": store.stats.bytes_copied_server_side,
            "s3_retries": store.stats.retries,
        }


class GroupRunner:
    def __init__(
        self,
        config: Config,
        *,
        store: ObjectStore,
        decoder: Decoder,
        consumer_factory: Callable[[dict[str, Any]], Any] | None = None,
        positions_factory: Callable[[Any], PositionStore] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.decoder = decoder
        self.layout = Layout(config.prefix)
        self.shared = SharedState()
        self.log = logmod.get("consumer.runner", group=config.group_id)
        self.workers: dict[TP, PartitionWorker] = {}
        self.retired: list[PartitionWorker] = []
        self.end_offsets: dict[TP, tuple[int, int]] = {}
        self.assigned_once = False
        self.stop_requested = False
        self.stats = RunStats()
        self._callback_error: BaseException | None = None
        self.fenced: set[TP] = set()
        self.closing = False
        self._rebalanced = False
        if consumer_factory is None:
            from confluent_kafka import Consumer

            consumer_factory = Consumer
        self.consumer = consumer_factory(self._kafka_config())
        self.positions: PositionStore = (positions_factory or KafkaGroupPositions)(self.consumer)

    def _kafka_config(self) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "bootstrap.servers": self.config.bootstrap_servers,
            "group.id": self.config.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            "isolation.level": "read_committed",
            # Bound librdkafka's prefetch queue: it is memory we do not see in the arenas.
            "queued.max.messages.kbytes": 32768,
            "error_cb": self._on_kafka_error,
        }
        conf.update(self.config.kafka_properties)
        return conf

    def _on_kafka_error(self, err: Any) -> None:
        self.log.warning("kafka client error", error=str(err), fatal=bool(err.fatal()))
        if err.fatal():
            self._callback_error = RuntimeError(f"fatal Kafka client error: {err}")

    # -- rebalance callbacks ---------------------------------------------------------------------
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
        )

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        if self.closing:
            # An assignment that reaches us inside close(): we are leaving, so recovering (and
            # reading committed offsets from a closing consumer) would only stall the exit.
            self.log.info("assignment during shutdown ignored", partitions=len(partitions))
            return
        self.assigned_once = True
        self._rebalanced = True
        try:
            for tp in partitions:
                self.fenced.discard((tp.topic, tp.partition))
                key = (tp.topic, tp.partition)
                worker = self._new_worker(tp.topic, tp.partition)
                pos = worker.recover()
                if pos is not None:
                    tp.offset = pos
                self.workers[key] = worker
                if self.config.until_caught_up:
                    low, high = consumer.get_watermark_offsets(tp, timeout=10.0, cached=False)
                    self.end_offsets[key] = (low, high)
            self.log.info("partitions assigned", partitions=[f"{t.topic}[{t.partition}]" for t in partitions])
        except BaseException as exc:  # surfaced from the poll loop; librdkafka would swallow it
            self._callback_error = exc

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        for tp in partitions:
            self.fenced.discard((tp.topic, tp.partition))
            worker = self.workers.pop((tp.topic, tp.partition), None)
            if worker is None:
                continue
            try:
                worker.close()
            except PartitionFenced as exc:
                self.log.warning(
                    "revoked partition already fenced", error=str(exc), topic=tp.topic, partition=tp.partition
                )
            except BaseException as exc:
                self._callback_error = exc
            self.retired.append(worker)
        self.log.info("partitions revoked", partitions=[f"{t.topic}[{t.partition}]" for t in partitions])

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        for tp in partitions:
            self.fenced.discard((tp.topic, tp.partition))
            worker = self.workers.pop((tp.topic, tp.partition), None)
            if worker is not None:
                self.retired.append(worker)
        self.log.warning(
            "partitions lost: dropped without writing",
            partitions=[f"{t.topic}[{t.partition}]" for t in partitions],
        )

    # -- main loop -------------------------------------------------------------------------------
    def request_stop(self, *_: Any) -> None:
        self.stop_requested = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def run(self) -> int:
        """Consume until stopped (or caught up); the process exit code."""
        self.log.info("starting", config=self.config.redacted())
        self.consumer.subscribe(
            list(self.config.topics),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        code = EXIT_OK
        try:
            code = self._loop()
        except BadRecordStop as exc:
            self.log.error("stopped on a bad record", error=str(exc))
            code = EXIT_BAD_RECORD
        except (FatalStorageError, TransientStorageError) as exc:
            self.log.error("stopped: S3 error", error=str(exc))
            code = EXIT_STORAGE
        except IntegrityError as exc:
            self.log.error("stopped: output integrity", error=str(exc))
            code = EXIT_FATAL
        except PositionError as exc:
            self.log.error("stopped: cannot commit positions (Kafka coordinator unavailable too long)",
                           error=str(exc))
            code = EXIT_FATAL
        except Exception as exc:  # e.g. a fatal librdkafka error (static member fenced)
            self.log.error("stopped: unexpected error; everything committed is durable, restart me",
                           error=f"{type(exc).__name__}: {exc}")
            code = EXIT_FATAL
        finally:
            self._shutdown(clean=code == EXIT_OK)
        return code

    def _loop(self) -> int:
        cfg = self.config
        while not self.stop_requested:
            msgs = self.consumer.consume(num_messages=cfg.batch_size, timeout=cfg.poll_timeout)
            if self._callback_error is not None:
                err, self._callback_error = self._callback_error, None
                raise err
            if self._rebalanced:
                self._rebalanced = False
                if self.fenced:
                    self._recover_fenced()
            for msg in msgs:
                fetch_error = msg.error()
                if fetch_error is not None:
                    if fetch_error.code() == -191:  # _PARTITION_EOF
                        continue
                    self.log.warning("fetch error", error=str(fetch_error))
                    continue
                worker = self.workers.get((str(msg.topic()), int(msg.partition() or 0)))
                if worker is None:
                    continue
                self.stats.records += 1
                value = msg.value()
                self.stats.bytes_in += len(value) if value else 0
                self._guard(worker, worker.append, msg)
            now = time.monotonic()
            for worker in list(self.workers.values()):
                if worker.flush_due(now):
                    self._guard(worker, worker.flush)
                if worker.roll_due(now):
                    self._guard(worker, worker.finish)
            self._enforce_memory_budget()
            if cfg.until_caught_up and self._caught_up():
                for worker in list(self.workers.values()):
                    self._guard(worker, worker.finish)
                self.log.info("caught up: every assigned partition reached its end offset")
                return EXIT_OK
        return EXIT_OK

    def _guard(self, worker: PartitionWorker, fn: Callable[..., None], *args: Any) -> None:
        """Run a worker step; on fencing, stop touching the partition until a rebalance settles.

        A fenced member must not recover on its own: its idea of the assignment may be stale, and
        recovery deletes staged objects past the committed position — which, for a zombie, could
        be the new owner's piece an instant before the new owner commits it. So the partition is
        paused and forgotten; only when a rebalance completes and Kafka still assigns it to us is
        it recovered again (see :meth:`_recover_fenced`).
        """
        try:
            fn(*args)
        except PartitionFenced as exc:
            from confluent_kafka import TopicPartition

            key = (worker.topic, worker.partition)
            self.log.warning(
                "partition fenced: pausing it until the group settles",
                error=str(exc),
                topic=worker.topic,
                partition=worker.partition,
            )
            if self.workers.get(key) is worker:
                del self.workers[key]
                self.retired.append(worker)
            self.fenced.add(key)
            with contextlib.suppress(Exception):
                self.consumer.pause([TopicPartition(*key)])

    def _recover_fenced(self) -> None:
        """After a rebalance: partitions fenced earlier that Kafka still assigns to us are ours in
        the new generation, so recovering them is safe now."""
        from confluent_kafka import TopicPartition

        owned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        for key in sorted(self.fenced):
            if key in owned and key not in self.workers:
                worker = self._new_worker(*key)
                pos = worker.recover()
                self.workers[key] = worker
                tp = TopicPartition(key[0], key[1], pos if pos is not None else -2)
                self.consumer.seek(tp)
                self.consumer.resume([TopicPartition(*key)])
                self.log.info("fenced partition recovered after rebalance", topic=key[0], partition=key[1])
        self.fenced.clear()

    def _enforce_memory_budget(self) -> None:
        total = sum(w.buffered_bytes for w in self.workers.values())
        while total > self.config.memory_bytes and self.workers:
            largest = max(self.workers.values(), key=lambda w: w.buffered_bytes)
            if not largest.pending:
                break
            before = largest.buffered_bytes
            self.log.info(
                "memory budget reached: flushing largest arena early",
                topic=largest.topic,
                partition=largest.partition,
                bytes=before,
            )
            self._guard(largest, largest.flush)
            total -= before - largest.buffered_bytes
            if largest.buffered_bytes >= before:
                break

    def _caught_up(self) -> bool:
        if not self.assigned_once or self.fenced:
            return False
        for key, worker in self.workers.items():
            low, high = self.end_offsets.get(key, (0, 0))
            if high <= low:
                continue
            pos = worker.next_pos if worker.next_pos is not None else -1
            if pos < high:
                from confluent_kafka import TopicPartition

                fetched = self.consumer.position([TopicPartition(*key)])[0].offset
                if fetched < high:
                    return False
        return True

    def _shutdown(self, *, clean: bool) -> None:
        faults.point("during_shutdown")
        self.closing = True
        if self._callback_error is not None:
            self.log.warning("error in a rebalance callback", error=str(self._callback_error))
        for worker in list(self.workers.values()):
            try:
                worker.close()
            except Exception as exc:  # keep closing the others; nothing uncommitted is lost
                self.log.warning(
                    "could not flush on shutdown",
                    topic=worker.topic,
                    partition=worker.partition,
                    error=str(exc),
                )
        self.retired.extend(self.workers.values())
        self.workers.clear()  # the revoke callback during close() then has nothing left to do
        try:
            self.consumer.close()
        except Exception as exc:
            self.log.warning("consumer close failed", error=str(exc))
        self.log.info("stopped", clean=clean, **self.stats.summary(self.retired, self.store))
