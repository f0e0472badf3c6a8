"""A replay keeps its positions in S3 (``_state/…``), one object per partition, and fences a second
replay of the same prefix with conditional writes: each commit creates the object only if absent,
or replaces it only if its ETag is still the one this writer read or wrote. That holds only if the
ETag it keeps is never another writer's. Two windows let one in: a HEAD after the commit's PUT,
and a HEAD after the read's GET. Another replay's write landing in either made this writer take its
ETag, so this writer's next commit overwrote it instead of being refused. And the replay that is
refused must say that another replay writes the prefix, not that an unexpected error happened."""

from __future__ import annotations

import io
from collections.abc import Callable
from unittest.mock import patch

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from consumer import side_by_side
from consumer.config import Config
from consumer.decoding import Decoder
from consumer.layout import Layout
from consumer.positions import PartitionFenced, S3StatePositions
from consumer.replay import Bound, ReplayRunner
from consumer.samples import encode_raw, load_schema, make_record, parsed_schema
from consumer.testing import Crash, MemoryBroker, MemoryStore, at_consume, crash_at_request, md5_etag

LAYOUT = Layout("out")
KEY = LAYOUT.state_key("t", 0)


def _between(store: MemoryStore, nth: int, action: Callable[[], None]) -> list[bool]:
    """Run ``action`` once, as the ``nth`` request on the state object from now starts."""
    seen, fired = [0], [False]

    def hook(_op: str, key: str) -> None:
        if key != KEY or fired[0] or store.inside_a_call():  # a call's own requests: part of it
            return
        seen[0] += 1
        if seen[0] == nth:
            fired[0] = True
            action()

    store.on_op = hook
    return fired


def _other_replay_commits(store: MemoryStore, position: int) -> Callable[[], None]:
    def act() -> None:
        other = S3StatePositions(store, LAYOUT)
        other.committed("t", 0)
        other.commit("t", 0, position)

    return act


def test_another_replays_write_just_after_a_commit_fences_this_one() -> None:
    store = MemoryStore()
    mine = S3StatePositions(store, LAYOUT)
    fired = _between(store, 2, _other_replay_commits(store, 20))  # the request after the PUT
    mine.commit("t", 0, 10)
    store.on_op = None
    if not fired[0]:  # no request after the PUT any more: the other replay writes right after it
        _other_replay_commits(store, 20)()
    with pytest.raises(PartitionFenced, match="changed by another writer"):
        mine.commit("t", 0, 30)
    assert store.get(KEY) == b'{"topic": "t", "partition": 0, "position": 20}'


def test_another_replays_write_in_the_middle_of_a_read_fences_this_one() -> None:
    store = MemoryStore()
    S3StatePositions(store, LAYOUT).commit("t", 0, 10)
    mine = S3StatePositions(store, LAYOUT)
    _between(store, 2, _other_replay_commits(store, 20))  # between the read's two requests
    assert mine.committed("t", 0) in (10, 20)
    store.on_op = None
    with pytest.raises(PartitionFenced, match="changed by another writer"):
        mine.commit("t", 0, 30)
    assert store.get(KEY) == b'{"topic": "t", "partition": 0, "position": 20}'


class LostReplies(MemoryStore):
    """S3Store retries a PUT whose reply was lost; the retry's own If-Match refuses it (412),
    though the first attempt took effect. Here every replace does that."""

    def replace_if_match(self, key: str, data: bytes, etag: str) -> str | None:
        super().replace_if_match(key, data, etag)
        return None


def test_a_commit_whose_reply_was_lost_is_not_taken_for_another_writer() -> None:
    store = LostReplies()
    mine = S3StatePositions(store, LAYOUT)
    mine.commit("t", 0, 10)
    mine.commit("t", 0, 20)  # took effect, then refused on retry: the object holds its bytes
    mine.commit("t", 0, 30)
    assert store.get(KEY) == b'{"topic": "t", "partition": 0, "position": 30}'
    # Another writer's bytes behind a refused replace are still another writer's.
    MemoryStore.replace_if_match(store, KEY, b'{"position": 99}', md5_etag(store.get(KEY)))
    with pytest.raises(PartitionFenced, match="changed by another writer"):
        mine.commit("t", 0, 40)
    assert store.get(KEY) == b'{"position": 99}'


def test_two_replays_of_one_prefix_the_fenced_one_says_so_and_a_rerun_completes_the_slice() -> None:
    """A replay started twice: the second runs (and stops) in the middle of the first. The first's
    next commit is refused: status 5 naming the other replay, not "unexpected error … restart me".
    A replay run again afterwards completes the slice, every offset in one final file."""
    broker, store = MemoryBroker(), MemoryStore()
    broker.create_topic("t", 1)
    for i in range(200):
        broker.produce("t", encode_raw(parsed_schema("page_view"), make_record("page_view", i)), key=b"k")

    def replay() -> ReplayRunner:
        config = Config(bootstrap_servers="memory", group_id="consumer-replay", topics=("t",),
                        output="s3://bucket/out", schema="page_view", row_group_rows=10, batch_size=5)
        return ReplayRunner(config, store=store, decoder=Decoder("raw", schema=load_schema("page_view")),
                            start=Bound.parse("0=0"), stop=Bound.parse("0=200"),
                            consumer_factory=broker.consumer_factory())

    def second() -> None:
        other = replay()
        at_consume(other.consumer, {6: other.request_stop})
        assert other.run() == 143  # SIGTERM before it finished: 128 + 15, not "done"

    first = replay()
    at_consume(first.consumer, {4: second})
    with capture_logs() as logs:
        assert first.run() == 5
    (stop,) = [e for e in logs if e["event"].startswith("stopped:")]
    assert stop["event"] == "stopped: IntegrityError", stop
    assert "t[0]: another replay writes this output prefix" in stop["error"]
    assert replay().run() == 0
    offsets = [o for k, v in store.objects.items() if k.endswith(".parquet") and "/_" not in k
               for o in pq.read_table(io.BytesIO(v)).column("kafka_offset").to_pylist()]
    assert sorted(offsets) == list(range(200))
    assert not [k for k in store.objects if "/_staging/" in k]


@settings(max_examples=80, deadline=None)
@given(
    first_for=st.integers(1, 12),
    second_for=st.one_of(st.none(), st.integers(1, 12)),
    second_dies_at=st.one_of(st.none(), st.integers(1, 60)),
    first_dies_at=st.one_of(st.none(), st.integers(1, 40)),
    row_group_rows=st.sampled_from([7, 10, 25]),
    file_rows=st.sampled_from([None, 30, 50]),
)
def test_two_replays_of_one_slice_interleaved_leave_every_offset_once(
    first_for: int, second_for: int | None, second_dies_at: int | None, first_dies_at: int | None,
    row_group_rows: int, file_rows: int | None,
) -> None:
    """The first replay runs ``first_for`` batches; a second copy of it then runs ``second_for``
    batches (None: to its end) or is killed at its ``second_dies_at``-th S3 request; the first
    goes on, and may be killed at its ``first_dies_at``-th request from then. The first ends well
    or says another replay writes the prefix (status 5); a replay run again then completes the
    slice: every offset in exactly one final file, nothing staged."""
    broker, store = MemoryBroker(), MemoryStore()
    broker.create_topic("t", 2)
    for i in range(120):
        broker.produce("t", encode_raw(parsed_schema("page_view"), make_record("page_view", i)),
                       partition=i % 2, key=b"k")

    def replay() -> ReplayRunner:
        config = Config(bootstrap_servers="memory", group_id="consumer-replay", topics=("t",),
                        output="s3://bucket/out", schema="page_view", row_group_rows=row_group_rows,
                        file_rows=file_rows, batch_size=5)
        return ReplayRunner(config, store=store, decoder=Decoder("raw", schema=load_schema("page_view")),
                            start=Bound.parse("0=0,1=0"), stop=Bound.parse("0=60,1=60"),
                            consumer_factory=broker.consumer_factory())

    def second() -> None:
        other = replay()
        if second_for is not None:
            at_consume(other.consumer, {second_for + 1: other.request_stop})
        if second_dies_at is not None:
            store.on_op = crash_at_request(second_dies_at)
        try:
            assert other.run() in (0, 5, 143)  # 143: stopped before its end
        except Crash:
            pass
        finally:
            store.on_op = None if first_dies_at is None else crash_at_request(first_dies_at)

    with patch.object(side_by_side, "RECOVERY_THREADS", 1), patch.object(side_by_side, "CLOSE_THREADS", 1):
        first = replay()
        at_consume(first.consumer, {first_for + 1: second})
        with capture_logs() as logs:
            try:
                code = first.run()
            except Crash:
                code = None
        store.on_op = None
        stops = [e for e in logs if e["event"].startswith("stopped:")]
        fenced = code == 5 and "another replay writes this output prefix" in stops[0]["error"]
        assert code in (0, None) or fenced, stops
        assert replay().run() == 0
    offsets: dict[int, list[int]] = {0: [], 1: []}
    for key, data in store.objects.items():
        if key.endswith(".parquet") and "/_" not in key:
            t = pq.read_table(io.BytesIO(data), columns=["kafka_partition", "kafka_offset"])
            for p, o in zip(t.column(0).to_pylist(), t.column(1).to_pylist(), strict=True):
                offsets[p].append(o)
    assert {p: sorted(v) for p, v in offsets.items()} == {0: list(range(60)), 1: list(range(60))}
    assert not [k for k in store.objects if "/_staging/" in k]
