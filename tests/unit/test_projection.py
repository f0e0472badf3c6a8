"""Native schema resolution (consumer.projection) against fastavro's ``reader_schema`` (the
reference), on generated evolutions: fields added with defaults, removed, renamed by alias,
promoted int→long→float→double, string↔bytes, nullable and nested types. An arena of the reader
schema gets interleaved bodies of the writer and the reader schema; the native and the python
decoder must produce the same table, and the native one must really resolve natively whenever
the pair is within what the projection handles."""

from __future__ import annotations

import io
import random
from typing import Any

import fastavro
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer import native
from consumer.arena import _PROJECTIONS, Arena, SchemaStats, kafka_fields
from consumer.decoding import WriterSchema
from consumer.projection import Projection, ProjectionUnsupported
from consumer.resolution import resolution_problem
from consumer.typemap import RecordConverter

# The differential test must run wherever the suite runs (dev/bootstrap builds the extension).
assert native.available(), f"consumer._native is not built ({native.import_error()}): run dev/bootstrap"

NESTED = {
    "type": "record",
    "name": "Inner",
    "fields": [{"name": "a", "type": "int"}, {"name": "b", "type": "string"}],
}
NESTED_MORE = {  # the nested record evolved: projected one level down
    "type": "record",
    "name": "Inner",
    "fields": [{"name": "a", "type": "long"}, {"name": "b", "type": "string"},
               {"name": "c", "type": "double", "default": 0.5}],
}
OPT = {"type": "record", "name": "Opt", "fields": [{"name": "x", "type": "float"}]}
OPT_MORE = {
    "type": "record",
    "name": "Opt2",
    "aliases": ["Opt"],
    "fields": [{"name": "x", "type": "double"}, {"name": "y", "type": ["null", "string"], "default": None}],
}
#: writer type → the reader types it may become (first: unchanged)
EVOLUTIONS: dict[str, list[Any]] = {
    "int": ["int", "long", "float", "double"],
    "long": ["long", "float", "double"],
    "float": ["float", "double"],
    "double": ["double"],
    "string": ["string", "bytes"],
    "bytes": ["bytes", "string"],
    "boolean": ["boolean"],
    "null|long": [["null", "long"], ["null", "double"]],
    "nested": [NESTED, NESTED_MORE],
    "null|nested": [["null", OPT], ["null", OPT_MORE]],
    "array": [{"type": "array", "items": "string"}],
    "map": [{"type": "map", "values": "long"}],
    "enum": [{"type": "enum", "name": "Color", "symbols": ["RED", "GREEN"]},
             {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN", "BLUE"]}],
}
WRITER_TYPES: dict[str, Any] = {
    "null|long": ["null", "long"],
    "nested": NESTED,
    "null|nested": ["null", OPT],
    "array": {"type": "array", "items": "string"},
    "map": {"type": "map", "values": "long"},
    "enum": {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN"]},
}
ADDED: list[tuple[Any, Any]] = [  # (type, default) of fields the reader adds
    ("int", 7),
    ("string", "d"),
    (["null", "string"], None),
    ("double", 1.25),
    ({"type": "array", "items": "long"}, []),
    ({"type": "record", "name": "Added", "fields": [{"name": "x", "type": "long"}]}, {"x": 3}),
]


def value_of(kind: str, rnd: random.Random) -> Any:
    if kind == "int":
        return rnd.randint(-(2**31), 2**31 - 1)
    if kind == "long":
        return rnd.randint(-(2**53), 2**53)  # long→float/double: within double's exact integers
    if kind in ("float", "double"):
        return rnd.choice([0.0, 1.5, -2.25] + ([1e10, 3.0e-5] if kind == "double" else []))
    if kind == "string":
        return rnd.choice(["", "a", "héllo", "x" * 40])
    if kind == "bytes":
        return rnd.choice([b"", b"ab", "é".encode()])
    if kind == "boolean":
        return rnd.random() < 0.5
    if kind == "null|long":
        return None if rnd.random() < 0.3 else rnd.randint(-1000, 1000)
    if kind == "nested":
        return {"a": rnd.randint(-5, 5), "b": rnd.choice(["p", "q"])}
    if kind == "null|nested":
        return None if rnd.random() < 0.3 else {"x": rnd.choice([0.5, -1.25])}
    if kind == "array":
        return [rnd.choice(["s", "t"]) for _ in range(rnd.randint(0, 3))]
    if kind == "map":
        return {f"k{i}": rnd.randint(0, 9) for i in range(rnd.randint(0, 2))}
    assert kind == "enum"
    return rnd.choice(["RED", "GREEN"])


@st.composite
def evolutions(draw: Any) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    kinds = draw(st.lists(st.sampled_from(sorted(EVOLUTIONS)), min_size=1, max_size=6, unique=True))
    wfields, rfields = [], []
    for i, kind in enumerate(kinds):
        wtype = WRITER_TYPES.get(kind, kind)
        wfields.append({"name": f"f{i}", "type": wtype})
        op = draw(st.sampled_from(["keep", "evolve", "remove", "alias"]))
        if op == "remove":
            continue
        rtype = draw(st.sampled_from(EVOLUTIONS[kind])) if op != "keep" else wtype
        if op == "alias":
            rfields.append({"name": f"renamed{i}", "aliases": [f"f{i}"], "type": rtype})
        else:
            rfields.append({"name": f"f{i}", "type": rtype})
    for j, (t, default) in enumerate(draw(st.lists(st.sampled_from(ADDED), max_size=3, unique_by=repr))):
        rfields.insert(draw(st.integers(0, len(rfields))), {"name": f"new{j}", "type": t, "default": default})
    if not rfields:
        rfields.append({"name": "only", "type": "int", "default": 1})
    writer = {"type": "record", "name": "Evt", "fields": wfields}
    reader = {"type": "record", "name": "Evt", "fields": rfields}
    return writer, reader, kinds


def encode(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return buf.getvalue()


def arena(reader: WriterSchema, decoder: str) -> Arena:
    conv = RecordConverter(reader.avro, kafka_fields(("offset",)))
    return Arena(reader, conv, SchemaStats.from_schema(reader.avro), topic="t", partition=0,
                 kafka_columns=("offset",), chunk_rows=64, decoder=decoder)


def reader_record(reader: dict[str, Any], rnd: random.Random) -> dict[str, Any]:
    out = {}
    for f in reader["fields"]:
        t = f["type"]
        kind = next((k for k, v in WRITER_TYPES.items() if v == t), t if isinstance(t, str) else None)
        out[f["name"]] = value_of(kind, rnd) if kind in EVOLUTIONS or kind in ("float", "double") else f.get(
            "default", None)
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(evolutions(), st.integers(0, 2**32))
def test_native_resolution_agrees_with_fastavro(pair: tuple[dict[str, Any], dict[str, Any], list[str]],
                                                seed: int) -> None:
    wavro, ravro, kinds = pair
    assert resolution_problem(wavro, ravro) is None
    writer, reader = WriterSchema.of(wavro, 1), WriterSchema.of(ravro, 2)
    rnd = random.Random(seed)
    bodies: list[tuple[WriterSchema, bytes]] = []
    for i in range(150):
        if rnd.random() < 0.6:
            rec = {f"f{j}": value_of(k, rnd) for j, k in enumerate(kinds)}
            bodies.append((writer, encode(wavro, rec)))
        else:
            try:
                bodies.append((reader, encode(ravro, reader_record(ravro, rnd))))
            except Exception:  # a reader type the generator does not fill: writer records only
                rec = {f"f{j}": value_of(k, rnd) for j, k in enumerate(kinds)}
                bodies.append((writer, encode(wavro, rec)))
        if i % 17 == 0:  # a body that is not Avro of its writer schema: a dead letter either way
            bodies.append((writer, b"\xff" * 3))
    tables = {}
    for decoder in ("native", "python"):
        a = arena(reader, decoder)
        for off, (w, body) in enumerate(bodies):
            a.append(body, off, None, None, writer=w)
        table, dead, _ = a.drain()
        tables[decoder] = (table, [(d.offset, d.reason) for d in dead])
    nt, nd = tables["native"]
    pt, pd = tables["python"]
    assert nt.schema == pt.schema
    assert nt.to_pylist() == pt.to_pylist()
    assert [o for o, _ in nd] == [o for o, _ in pd]
    key = f"{writer.fingerprint}:{reader.fingerprint}"
    enum_changed = any(
        isinstance(f.get("type"), dict) and f["type"].get("symbols") == ["RED", "GREEN", "BLUE"]
        for f in ravro["fields"]
    )
    if not enum_changed and writer.fingerprint != reader.fingerprint:  # identical: no projection
        assert isinstance(_PROJECTIONS.get(key), Projection), "this pair should resolve natively"


def test_projection_refuses_what_it_does_not_resolve_exactly() -> None:
    w = {"type": "record", "name": "R", "fields": [{"name": "n", "type": {"type": "array", "items": NESTED}}]}
    r = {"type": "record", "name": "R",
         "fields": [{"name": "n", "type": {"type": "array", "items": NESTED_MORE}}]}
    with pytest.raises(ProjectionUnsupported, match="field 'n'"):
        Projection(w, r)


def test_bytes_that_are_not_utf8_read_as_string_are_dead_letters_on_both_paths() -> None:
    w = {"type": "record", "name": "R", "fields": [{"name": "b", "type": "bytes"}]}
    r = {"type": "record", "name": "R", "fields": [{"name": "b", "type": "string"}]}
    writer, reader = WriterSchema.of(w, 1), WriterSchema.of(r, 2)
    for decoder in ("native", "python"):
        a = arena(reader, decoder)
        a.append(encode(w, {"b": b"ok"}), 0, None, None, writer=writer)
        a.append(encode(w, {"b": b"\xff\xfe"}), 1, None, None, writer=writer)
        a.append(encode(r, {"b": "fine"}), 2, None, None)
        table, dead, _ = a.drain()
        assert table.column("b").to_pylist() == ["ok", "fine"], decoder
        assert [d.offset for d in dead] == [1], decoder
        assert table.schema.field("b").type == pa.string()
