"""The native gather (``consumer._native.gather`` / ``partition_runs``) against the Python maps it
replaces (``gather_python`` / ``partition_runs_python``), on the in-memory ``Message`` double and on
real ``confluent_kafka.Message`` objects; ``Arena.append_joined`` against ``append_many``; and the
raw-framing batch path (which now meets tombstones inside a gathered cut) against record by record.
"""

from __future__ import annotations

import array
from typing import Any

import confluent_kafka
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# The differential tests must run wherever the suite runs (dev/bootstrap builds the extension):
# a missing build is an import error here, not a skip.
from consumer import _native as native  # type: ignore[attr-defined]
from consumer import gather as gather_mod
from consumer import log as logmod
from consumer.arena import Arena, SchemaStats, kafka_fields
from consumer.config import Config
from consumer.decoding import Decoder, WriterSchema
from consumer.gather import Gathered, gather_python, partition_runs_python
from consumer.layout import Layout
from consumer.samples import encode_raw, load_schema, make_record, parsed_schema
from consumer.testing import MemoryPositions, MemoryStore, Message, exported
from consumer.typemap import RecordConverter
from consumer.worker import PartitionWorker, SharedState

PAGE_VIEW = load_schema("page_view")
PAGE_VIEW_PARSED = parsed_schema("page_view")


def real(
    offset: int,
    value: bytes | None,
    *,
    partition: int = 0,
    key: bytes | None = None,
    timestamp: int | None = None,
    headers: list[tuple[str, bytes | None]] | None = None,
    error: Any = None,
) -> Any:
    """A real confluent_kafka.Message (constructible since confluent-kafka 2.4)."""
    ts = (0, -1) if timestamp is None else (1, timestamp)
    return confluent_kafka.Message(
        topic="t", partition=partition, offset=offset, key=key, value=value, headers=headers,
        timestamp=ts, error=error,
    )


def memory(offset: int, value: bytes | None, **fields: Any) -> Any:
    """The in-memory double of :func:`real`, with the same keyword arguments."""
    return Message(offset, value, **fields)


record = st.fixed_dictionaries({
    "value": st.one_of(st.binary(min_size=5, max_size=40), st.binary(max_size=4), st.none()),
    "key": st.one_of(st.none(), st.binary(max_size=8)),
    "timestamp": st.one_of(st.none(), st.integers(0, 2**62)),
    "headers": st.one_of(
        st.none(), st.lists(st.tuples(st.text(max_size=4), st.one_of(st.none(), st.binary(max_size=4))),
                            max_size=3)),
    "partition": st.integers(0, 2),
})


def build(kind: Any, recs: list[dict[str, Any]]) -> list[Any]:
    return [kind(1000 + i, **r) for i, r in enumerate(recs)]


#: How a drawn run is built: all real ``Message`` objects (the native pass calls their C methods
#: directly), all doubles (ordinary method calls), or mixed (the direct calls hold only for objects
#: of the first message's type; the others must still be read through their own methods).
kinds = st.sampled_from(["real", "memory", "mixed"])


def build_as(kind: str, recs: list[dict[str, Any]]) -> list[Any]:
    if kind == "mixed":
        return [(real if i % 3 else memory)(1000 + i, **r) for i, r in enumerate(recs)]
    return build(real if kind == "real" else memory, recs)


@settings(max_examples=200, deadline=None)
@given(recs=st.lists(record, max_size=30), data=st.data(), strip=st.sampled_from([0, 5]),
       base=st.integers(0, 2**40), want_headers=st.booleans(), kind=kinds)
def test_native_gather_matches_the_python_maps(
    recs: list[dict[str, Any]], data: st.DataObject, strip: int, base: int, want_headers: bool, kind: str
) -> None:
    msgs = build_as(kind, recs)
    start = data.draw(st.integers(0, len(msgs)))
    end = data.draw(st.integers(start, len(msgs)))
    try:
        expected: Gathered | str | None = gather_python(msgs, start, end, strip, base, want_headers)
    except ValueError:
        expected = "ValueError"
    try:
        got = native.gather(msgs, start, end, strip, base, want_headers)
        actual: Gathered | str | None = None if got is None else Gathered(*got)
    except ValueError:
        actual = "ValueError"
    assert actual == expected


def test_gather_of_a_run_reads_every_field() -> None:
    msgs = [real(7, b"\x00\x00\x00\x00\x01ab", key=b"k", timestamp=5, headers=[("h", b"v")]),
            real(8, b"\x00\x00\x00\x00\x01", timestamp=None)]
    g = gather_mod.gather(msgs, 0, 2, 5, 100, True)
    assert g is not None
    assert g.data == b"ab"
    assert list(array.array("q", g.ends)) == [102, 102]
    assert list(array.array("q", g.offsets)) == [7, 8]
    assert list(array.array("q", g.timestamps)) == [5, -1]
    assert (g.keys, g.key_bytes, g.headers) == ([b"k", None], 1, [[("h", b"v")], None])


def test_a_tombstone_makes_the_gather_give_up_and_a_short_value_is_an_error() -> None:
    assert gather_mod.gather([memory(1, b"abcdef"), memory(2, None)], 0, 2, 0, 0, False) is None
    with pytest.raises(ValueError, match="shorter than its 5-byte header"):
        gather_mod.gather([memory(1, b"abc")], 0, 1, 5, 0, False)


@settings(max_examples=150, deadline=None)
@given(recs=st.lists(record, max_size=30), errors=st.lists(st.booleans(), max_size=30),
       kind=kinds)
def test_native_partition_runs_match_groupby(
    recs: list[dict[str, Any]], errors: list[bool], kind: str
) -> None:
    err = confluent_kafka.KafkaError(confluent_kafka.KafkaError._PARTITION_EOF)
    for r, e in zip(recs, errors, strict=False):
        r["error"] = err if e else None
    msgs = build_as(kind, recs)
    assert native.partition_runs(msgs) == partition_runs_python(msgs)


def arena() -> Arena:
    schema = WriterSchema.of(PAGE_VIEW)
    conv = RecordConverter(PAGE_VIEW, kafka_fields(("offset", "timestamp", "key", "headers")))
    return Arena(schema, conv, SchemaStats.from_schema(PAGE_VIEW), topic="t", partition=0,
                 kafka_columns=("offset", "timestamp", "key", "headers"), chunk_rows=8)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(1, 8), min_size=1, max_size=6))
def test_append_joined_matches_append_many(cuts: list[int]) -> None:
    msgs = [memory(i, encode_raw(PAGE_VIEW_PARSED, make_record("page_view", i)), key=b"k" * (i % 3),
                   timestamp=None if i % 4 == 0 else 1_700_000_000_000 + i, headers=[("h", b"x")])
            for i in range(sum(cuts))]
    a, b = arena(), arena()
    i = 0
    for c in cuts:
        c = min(c, a.chunk_room)
        run = msgs[i : i + c]
        a.append_many([m.value() for m in run], [m.offset() for m in run], [m.timestamp()[1] for m in run],
                      [m.key() for m in run], [m.headers() for m in run])
        g = gather_mod.gather(msgs, i, i + c, 0, b.raw_end, True)
        assert g is not None
        b.append_joined(g.data, g.ends, g.offsets, g.timestamps, g.keys, g.key_bytes, g.headers)
        i += c
    ta, da, _ = a.drain()
    tb, db, _ = b.drain()
    assert ta.equals(tb) and da == db


def test_append_joined_refuses_ends_of_another_base() -> None:
    b = arena()
    g = gather_mod.gather([memory(0, b"\x00")], 0, 1, 0, 3, False)
    assert g is not None
    with pytest.raises(ValueError, match="base=raw_end"):
        b.append_joined(g.data, g.ends, g.offsets, g.timestamps, g.keys, g.key_bytes, g.headers)


# -- the raw-framing batch path against record by record ------------------------------------------
RAW = Config(bootstrap_servers="unused", group_id="g", topics=("t",), output="s3://bucket/out",
             framing="raw", schema="page_view", row_group_rows=7, file_rows=20,
             kafka_columns=("offset", "timestamp", "key", "headers"))
KINDS = {
    "pv": lambda i: encode_raw(PAGE_VIEW_PARSED, make_record("page_view", i)),
    "trailing": lambda i: encode_raw(PAGE_VIEW_PARSED, make_record("page_view", i)) + b"\x00",
    "empty": lambda i: b"",
    "tombstone": lambda i: None,
}
raw_runs = st.lists(st.tuples(st.sampled_from(list(KINDS)), st.integers(1, 20)), min_size=1, max_size=5)



@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs=raw_runs, cuts=st.lists(st.integers(1, 30), min_size=1, max_size=6))
def test_raw_batch_path_with_tombstones_matches_record_by_record(
    runs: list[tuple[str, int]], cuts: list[int]
) -> None:
    msgs: list[Message] = []
    for k, count in runs:
        for _ in range(count):
            i = len(msgs)
            msgs.append(Message(i, KINDS[k](i), key=f"k{i}".encode() if i % 3 else None,
                                timestamp=None if i % 5 == 0 else 1_700_000_000_000 + i,
                                headers=[("n", str(i).encode())] if i % 2 else None))
    results = []
    for batched in (False, True):
        store, positions = MemoryStore(), MemoryPositions()
        w = PartitionWorker("t", 0, config=RAW, store=store, positions=positions, layout=Layout("out"),
                            decoder=Decoder("raw", schema=PAGE_VIEW), shared=SharedState(),
                            log=logmod.get("test"))
        w.recover()
        if batched:
            i, c = 0, 0
            while i < len(msgs):
                w.append_batch(msgs[i : i + cuts[c % len(cuts)]])
                i, c = i + cuts[c % len(cuts)], c + 1
        else:
            for m in msgs:
                w.append(m)
        w.finish()
        results.append(exported(store, positions))
    assert results[1] == results[0]
    assert results[0]["committed"] == len(msgs)
