"""A worker whose flush failed part-way must never write again (against real S3).

Regression: the arena was drained before the piece PUT and the commit; when the commit failed,
the shutdown flush wrote a zero-row piece for the same range and committed past the lost rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from consumer import log as logmod
from consumer.cli import make_store
from consumer.config import Config
from consumer.decoding import Decoder
from consumer.layout import Layout
from consumer.positions import PositionError, S3StatePositions
from consumer.samples import encode_raw, load_schema, make_record, parsed_schema
from consumer.worker import PartitionWorker, SharedState

# Only its own topics, groups and prefixes, and waits for outcomes: see tests/conftest.py.
pytestmark = pytest.mark.shares_stack


@dataclass
class Message:
    """The parts of a confluent_kafka.Message the worker reads."""

    _offset: int
    _value: bytes

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes:
        return b"k"

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000 + self._offset)

    def headers(self) -> None:
        return None


class FailingFirstCommit(S3StatePositions):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.failures = 1

    def commit(self, topic: str, partition: int, position: int, note: str = "") -> None:
        if self.failures:
            self.failures -= 1
            raise PositionError("coordinator unavailable (injected)")
        super().commit(topic, partition, position, note)


def _worker(stack: Any, prefix: str, positions: Any) -> PartitionWorker:
    cfg = Config(
        bootstrap_servers="unused",
        group_id="g",
        topics=("t",),
        output=f"s3://{stack.s3_bucket}/{prefix}",
        schema="page_view",
        row_group_rows=10,
    )
    store = make_store(stack.s3_bucket, stack.s3_endpoint)
    return PartitionWorker(
        "t",
        0,
        config=cfg,
        store=store,
        positions=positions,
        layout=Layout(prefix),
        decoder=Decoder("raw", schema=load_schema("page_view")),
        shared=SharedState(),
        log=logmod.get("test"),
    )


def test_failed_commit_poisons_the_worker_and_recovery_resumes_exactly(
    stack: Any, unique_prefix: str
) -> None:
    prefix = unique_prefix.rstrip("/")
    store = make_store(stack.s3_bucket, stack.s3_endpoint)
    layout = Layout(prefix)
    schema = parsed_schema("page_view")
    msgs = [Message(i, encode_raw(schema, make_record("page_view", i))) for i in range(25)]

    positions = FailingFirstCommit(store, layout)
    worker = _worker(stack, prefix, positions)
    assert worker.recover() is None
    with pytest.raises(PositionError):
        for m in msgs[:10]:  # the 10th record fills the row group: PUT succeeds, commit fails
            worker.append(m)
    assert worker.broken
    worker.close()  # shutdown path: must not write an empty piece nor commit anything
    assert positions.committed("t", 0) is None
    staged = [o.key for o in store.list(layout.staging_dir("t", 0))]
    assert len(staged) == 1, staged  # the durable but uncommitted piece only

    # The next owner recovers: nothing was committed, but S3 proves [0, 10) durable, so that
    # position is adopted and committed (as when offsets expired) and the piece is kept.
    fresh = _worker(stack, prefix, S3StatePositions(store, layout))
    assert fresh.recover() == 10
    assert [o.key for o in store.list(layout.staging_dir("t", 0))] == staged
    for m in msgs:
        fresh.append(m)
    fresh.finish()
    from consumer.inspect import list_final_files

    files = list_final_files(store, prefix)
    assert [(f.from_position, f.to_position, f.rows) for f in files] == [(0, 25, 25)]
