"""The batch path of Confluent framing (``framing_runs`` + ``PartitionWorker.append_batch``) against
the record-by-record path (``Decoder.split`` + ``PartitionWorker.append``), the reference.

Hypothesis draws runs of framed values — two schema ids, an unknown id, bad bodies, values too
short for a header, a wrong magic byte, tombstones — and cuts them into consumed batches at random
points. Both paths must write the same final files, the same dead letters (offset, reason, value)
and commit the same position.
"""

from __future__ import annotations

from typing import Any

import fastavro
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer import log as logmod
from consumer.config import Config
from consumer.decoding import BadRecord, Decoder, framing_runs
from consumer.layout import Layout
from consumer.registry import UnknownSchemaId
from consumer.samples import encode_raw, load_schema, make_record, parsed_schema
from consumer.testing import MemoryPositions, MemoryStore, Message, exported
from consumer.worker import PartitionWorker, SharedState

PAGE_VIEW = load_schema("page_view")
SMALL = {"type": "record", "name": "Small", "fields": [{"name": "s", "type": "string"}]}
SCHEMAS: dict[int, Any] = {1: PAGE_VIEW, 2: SMALL}
SMALL_PARSED = fastavro.parse_schema(SMALL)
PAGE_VIEW_PARSED = parsed_schema("page_view")
CONFIG = Config(
    bootstrap_servers="unused",
    group_id="g",
    topics=("t",),
    output="s3://bucket/out",
    framing="confluent",
    row_group_rows=10,
    file_rows=30,
)


class Registry:
    """Schemas by id; an id it does not hold is unknown, as a real registry answers."""

    def __init__(self) -> None:
        self.calls = 0

    def schema_by_id(self, schema_id: int) -> Any:
        self.calls += 1
        if schema_id not in SCHEMAS:
            raise UnknownSchemaId(f"no schema {schema_id}")
        return SCHEMAS[schema_id]

    # No subjects: under --schema-evolution resolve each writer schema is its own reader.
    def latest_version(self, subject: str) -> tuple[int, int] | None:
        return None

    def versions_of_id(self, schema_id: int) -> list[tuple[str, int]]:
        return []


def framed(schema_id: int, body: bytes) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + body


def page_view(i: int) -> bytes:
    return encode_raw(PAGE_VIEW_PARSED, make_record("page_view", i))


def small(i: int) -> bytes:
    return encode_raw(SMALL_PARSED, {"s": f"s{i}"})


# What a value of each kind is, given its offset (bodies differ per offset).
KINDS = {
    "pv": lambda i: framed(1, page_view(i)),
    "small": lambda i: framed(2, small(i)),
    "pv_trailing": lambda i: framed(1, page_view(i) + b"\x00"),
    "pv_as_small": lambda i: framed(2, page_view(i)),
    "unknown_id": lambda i: framed(9, small(i)),
    "empty": lambda i: b"",
    "short": lambda i: b"\x00\x00\x00",
    "header_only": lambda i: framed(1, b""),
    "bad_magic": lambda i: b"\x01" + framed(1, page_view(i))[1:],
    "tombstone": lambda i: None,
}
# Mostly long runs of good records, as a real topic has.
kind = st.sampled_from(list(KINDS))
runs = st.lists(st.tuples(kind, st.integers(1, 25)), min_size=1, max_size=6)


def make_worker(store: MemoryStore, positions: MemoryPositions, registry: Registry) -> PartitionWorker:
    return PartitionWorker(
        "t",
        0,
        config=CONFIG,
        store=store,
        positions=positions,
        layout=Layout("out"),
        decoder=Decoder("confluent", registry=registry),  # type: ignore[arg-type]
        shared=SharedState(),
        log=logmod.get("test"),
    )



@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs=runs, cuts=st.lists(st.integers(1, 40), min_size=1, max_size=8))
def test_batch_path_matches_record_by_record(runs: list[tuple[str, int]], cuts: list[int]) -> None:
    msgs: list[Message] = []
    for k, count in runs:
        for _ in range(count):
            i = len(msgs)
            msgs.append(Message(i, KINDS[k](i), key=f"k{i}".encode(), timestamp=1_700_000_000_000 + i))
    results = []
    for batched in (False, True):
        store, positions, registry = MemoryStore(), MemoryPositions(), Registry()
        w = make_worker(store, positions, registry)
        w.recover()
        if batched:
            i, c = 0, 0
            while i < len(msgs):
                step = cuts[c % len(cuts)]
                w.append_batch(msgs[i : i + step])
                i, c = i + step, c + 1
        else:
            for m in msgs:
                w.append(m)
        w.finish()
        results.append(exported(store, positions))
    assert results[1] == results[0]
    assert results[0]["committed"] == len(msgs)


values = st.lists(
    st.one_of(
        st.builds(framed, st.sampled_from([0, 1, 2, 255, 2**32 - 1]), st.binary(max_size=6)),
        st.binary(max_size=7),
    ),
    max_size=30,
)


@given(values)
def test_framing_runs_agree_with_split(vals: list[bytes]) -> None:
    """Runs cover the values in order without gaps; a run's id is what ``Decoder.split`` reads
    from each of its values, and a ``None`` run holds only values ``split`` rejects for framing."""
    runs = framing_runs(vals)
    pos = 0
    for start, end, _ in runs:
        assert start == pos < end
        pos = end
    assert pos == len(vals)
    ids: list[int] = []

    class Echo:
        def schema_by_id(self, schema_id: int) -> Any:
            ids.append(schema_id)
            return SMALL

    for start, end, schema_id in runs:
        assert all(vals[i][:5] == vals[start][:5] for i in range(start, end))
        for v in vals[start:end]:
            d = Decoder("confluent", registry=Echo())  # type: ignore[arg-type]
            ids.clear()
            try:
                _, body = d.split(v)
            except BadRecord as exc:
                assert schema_id is None and "not Confluent wire format" in exc.reason
                continue
            assert schema_id is not None and ids == [schema_id] and bytes(body) == v[5:]
