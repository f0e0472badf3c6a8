"""No stop without a cause: a worker's own history never makes recovery stop.

Recovery stops (exit 5) when S3 no longer holds what the commits say it does: pieces deleted by
someone else, a position moved by an operator into a row group. A stop the consumer's own
actions caused would halt a production group for nothing. Here a hypothesis-drawn history of one
partition, in the plain and in the time-bucketed layout — batches of good and bad records, flushes,
clean restarts and crashes at any store request — must recover every time without an
IntegrityError, and in the end every offset is in exactly one final file or dead letter.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace

import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st
from test_bucketed import BASE, make_worker, msg, staged

from consumer.testing import Crash, MemoryPositions, MemoryStore, crash_at_request
from consumer.worker import PartitionWorker

CONFIGS = {
    "plain": replace(BASE, partition_by=None, row_group_rows=4, file_rows=9),
    "bucketed": replace(BASE, row_group_rows=4, file_rows=6, max_open_buckets=2),
}

step = st.one_of(
    st.tuples(st.just("records"), st.integers(1, 7)),
    st.tuples(st.just("flush"), st.just(0)),
    st.tuples(st.just("restart"), st.just(0)),
    st.tuples(st.just("crash"), st.integers(1, 12)),
)


def _exported(store: MemoryStore) -> list[int]:
    """Every offset in a final file or a dead letter, with repeats."""
    out: list[int] = []
    for key, data in store.objects.items():
        if key.endswith(".parquet") and "/_" not in f"/{key}":
            out += pq.read_table(io.BytesIO(data)).column("kafka_offset").to_pylist()
        elif "_dead_letters/" in key:
            out += [json.loads(line)["offset"] for line in data.decode().splitlines()]
    return sorted(out)


@settings(max_examples=120, deadline=None)
@given(
    layout=st.sampled_from(sorted(CONFIGS)),
    steps=st.lists(step, max_size=24),
    bad=st.sets(st.integers(0, 170), max_size=40),
)
def test_a_worker_s_own_history_never_makes_recovery_stop(
    layout: str, steps: list[tuple[str, int]], bad: set[int]
) -> None:
    store, positions = MemoryStore(), MemoryPositions()
    cfg = CONFIGS[layout]

    def start() -> tuple[PartitionWorker, int]:
        w = make_worker(store, positions, cfg)
        return w, w.recover() or 0  # an IntegrityError here is the failure this test looks for

    w, nxt = start()
    for what, n in steps:
        if what == "records":
            for i in range(nxt, nxt + n):
                w.append(msg(i, bad=i in bad))
            nxt += n
        elif what == "flush":
            w.flush()
        elif what == "restart":
            w.close()
            w, nxt = start()
        else:  # crash at the n-th store request of the next records and flush
            store.on_op = crash_at_request(n)
            try:
                for i in range(nxt, nxt + 5):
                    w.append(msg(i, bad=i in bad))
                w.flush()
            except Crash:
                pass
            finally:
                store.on_op = None
            w, nxt = start()  # Kafka sends again from the committed position
    w.finish()
    assert staged(store) == []
    assert _exported(store) == list(range(nxt))
    assert positions.committed("t", 0) in ({nxt} if nxt else {0, None})  # 0: adopted from S3
