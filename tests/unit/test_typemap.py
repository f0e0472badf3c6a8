"""Tests for consumer.typemap: Avro → Arrow mapping rules and value round trips.

Round trips go through the real pipeline: fastavro.schemaless_writer →
fastavro.schemaless_reader → RecordConverter → Parquet file → pyarrow and DuckDB.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import string
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import fastavro
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.typemap import RecordConverter, TypeMappingError, arrow_schema

UTC = dt.UTC
ENUM_T = pa.dictionary(pa.int32(), pa.string())


def _rec(*fields: tuple[str, Any], name: str = "R") -> dict[str, Any]:
    return {"type": "record", "name": name, "fields": [{"name": n, "type": t} for n, t in fields]}


def _one(avro_type: Any) -> pa.Field:
    return arrow_schema(_rec(("f", avro_type))).field("f")


def _decode_all(schema: Any, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    parsed = fastavro.parse_schema(schema)
    out = []
    for r in records:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, r)
        buf.seek(0)
        out.append(fastavro.schemaless_reader(buf, parsed))
    return out


def _write(tmp: Path, batch: pa.RecordBatch) -> Path:
    path = tmp / "t.parquet"
    pq.write_table(pa.Table.from_batches([batch]), path)
    return path


# ----------------------------------------------------------------------------- mapping

MAPPING_CASES: list[tuple[str, Any, pa.DataType, bool]] = [
    ("null", "null", pa.null(), True),
    ("boolean", "boolean", pa.bool_(), False),
    ("int", "int", pa.int32(), False),
    ("long", "long", pa.int64(), False),
    ("float", "float", pa.float32(), False),
    ("double", "double", pa.float64(), False),
    ("bytes", "bytes", pa.binary(), False),
    ("string", "string", pa.string(), False),
    ("string-as-dict", {"type": "string"}, pa.string(), False),
    ("nullable-first", ["null", "long"], pa.int64(), True),
    ("nullable-last", ["string", "null"], pa.string(), True),
    ("single-branch-union", ["long"], pa.int64(), False),
    ("only-null-union", ["null"], pa.null(), True),
    ("enum", {"type": "enum", "name": "E", "symbols": ["A", "B"]}, ENUM_T, False),
    ("fixed", {"type": "fixed", "name": "F", "size": 5}, pa.binary(5), False),
    ("array", {"type": "array", "items": "long"},
     pa.list_(pa.field("element", pa.int64(), nullable=False)), False),
    ("array-nullable-items", {"type": "array", "items": ["null", "string"]},
     pa.list_(pa.field("element", pa.string())), False),
    ("map", {"type": "map", "values": "string"},
     pa.map_(pa.string(), pa.field("value", pa.string(), nullable=False)), False),
    ("map-nullable", {"type": "map", "values": ["null", "double"]},
     pa.map_(pa.string(), pa.float64()), False),
    ("map-of-map", {"type": "map", "values": {"type": "map", "values": "int"}},
     pa.map_(pa.string(), pa.field("value", pa.map_(
         pa.string(), pa.field("value", pa.int32(), nullable=False)), nullable=False)), False),
    ("map-of-record", {"type": "map", "values": _rec(("x", "int"), name="V")},
     pa.map_(pa.string(), pa.field(
         "value", pa.struct([pa.field("x", pa.int32(), nullable=False)]), nullable=False)),
     False),
    ("record", _rec(("a", "int"), ("b", ["null", "string"]), name="Sub"),
     pa.struct([pa.field("a", pa.int32(), nullable=False), pa.field("b", pa.string())]),
     False),
    ("ts-millis", {"type": "long", "logicalType": "timestamp-millis"},
     pa.timestamp("ms", tz="UTC"), False),
    ("ts-micros", {"type": "long", "logicalType": "timestamp-micros"},
     pa.timestamp("us", tz="UTC"), False),
    ("ts-nanos", {"type": "long", "logicalType": "timestamp-nanos"},
     pa.timestamp("ns", tz="UTC"), False),
    ("local-ts-millis", {"type": "long", "logicalType": "local-timestamp-millis"},
     pa.timestamp("ms"), False),
    ("local-ts-micros", {"type": "long", "logicalType": "local-timestamp-micros"},
     pa.timestamp("us"), False),
    ("date", {"type": "int", "logicalType": "date"}, pa.date32(), False),
    ("time-millis", {"type": "int", "logicalType": "time-millis"}, pa.time32("ms"), False),
    ("time-micros", {"type": "long", "logicalType": "time-micros"}, pa.time64("us"), False),
    ("decimal-bytes", {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2},
     pa.decimal128(12, 2), False),
    ("decimal-fixed", {"type": "fixed", "name": "D", "size": 16, "logicalType": "decimal",
                       "precision": 38, "scale": 10}, pa.decimal128(38, 10), False),
    ("decimal-no-scale", {"type": "bytes", "logicalType": "decimal", "precision": 5},
     pa.decimal128(5, 0), False),
    ("decimal256", {"type": "bytes", "logicalType": "decimal", "precision": 50, "scale": 5},
     pa.decimal256(50, 5), False),
    ("uuid-string", {"type": "string", "logicalType": "uuid"}, pa.uuid(), False),
    ("uuid-fixed", {"type": "fixed", "name": "U", "size": 16, "logicalType": "uuid"},
     pa.uuid(), False),
    ("uuid-fixed-wrong-size", {"type": "fixed", "name": "U", "size": 8, "logicalType": "uuid"},
     pa.binary(8), False),
    ("unknown-logical", {"type": "string", "logicalType": "json"}, pa.string(), False),
    ("misplaced-logical", {"type": "int", "logicalType": "timestamp-millis"}, pa.int32(), False),
    ("duration-is-fixed", {"type": "fixed", "name": "Dur", "size": 12, "logicalType": "duration"},
     pa.binary(12), False),
    ("general-union", ["null", "long", "double", "string", "boolean"],
     pa.struct([("long", pa.int64()), ("double", pa.float64()), ("string", pa.string()),
                ("boolean", pa.bool_())]), True),
    ("general-union-no-null", ["int", "string"],
     pa.struct([("int", pa.int32()), ("string", pa.string())]), False),
    ("union-named-and-complex", [
        "null", _rec(("x", "int"), name="ns.Point"), {"type": "map", "values": "long"},
        {"type": "array", "items": "string"}, {"type": "enum", "name": "Color", "symbols": ["R"]},
        {"type": "fixed", "name": "Four", "size": 4},
        {"type": "long", "logicalType": "timestamp-millis"}],
     pa.struct([
         ("Point", pa.struct([pa.field("x", pa.int32(), nullable=False)])),
         ("map", pa.map_(pa.string(), pa.field("value", pa.int64(), nullable=False))),
         ("array", pa.list_(pa.field("element", pa.string(), nullable=False))),
         ("Color", ENUM_T), ("Four", pa.binary(4)), ("long", pa.timestamp("ms", tz="UTC"))]),
     True),
    ("union-same-short-name", [_rec(("x", "int"), name="a.P"), _rec(("y", "int"), name="b.P")],
     pa.struct([("a_P", pa.struct([pa.field("x", pa.int32(), nullable=False)])),
                ("b_P", pa.struct([pa.field("y", pa.int32(), nullable=False)]))]), False),
]


@pytest.mark.parametrize(
    ("avro_type", "arrow_type", "nullable"),
    [c[1:] for c in MAPPING_CASES],
    ids=[c[0] for c in MAPPING_CASES],
)
def test_type_mapping(avro_type: Any, arrow_type: pa.DataType, nullable: bool) -> None:
    field = _one(avro_type)
    assert field.type == arrow_type, f"{field.type} != {arrow_type}"
    assert field.nullable is nullable


def test_field_order_kept_and_docs_ignored() -> None:
    schema = {"type": "record", "name": "R", "doc": "x", "fields": [
        {"name": n, "type": "int", "doc": "d", "default": 1} for n in "zyxabc"]}
    assert arrow_schema(schema).names == list("zyxabc")


def test_named_references_with_namespaces() -> None:
    schema = {
        "type": "record", "name": "Outer", "namespace": "com.ex",
        "fields": [
            {"name": "a", "type": {"type": "enum", "name": "Kind", "symbols": ["X", "Y"]}},
            {"name": "b", "type": "Kind"},
            {"name": "c", "type": "com.ex.Kind"},
            {"name": "d", "type": {"type": "fixed", "name": "H", "namespace": "other",
                                   "size": 3}},
            {"name": "e", "type": "other.H"},
            {"name": "f", "type": _rec(("v", "long"), name="Inner")},
            {"name": "g", "type": ["null", "Inner"]},
            {"name": "h", "type": {"type": "map", "values": "com.ex.Inner"}},
        ],
    }
    s = arrow_schema(schema)
    assert s.field("b").type == ENUM_T and s.field("c").type == ENUM_T
    assert s.field("e").type == pa.binary(3)
    assert s.field("g").type == s.field("f").type and s.field("g").nullable
    assert s.field("h").type.item_type == s.field("f").type
    # fastavro-parsed schemas and JSON text are accepted too and give the same result
    assert arrow_schema(fastavro.parse_schema(schema)) == s
    assert arrow_schema(json.dumps(schema)) == s


def test_extra_fields_appended() -> None:
    conv = RecordConverter(_rec(("a", "int")), [pa.field("kafka_offset", pa.int64(), False)])
    assert conv.schema.names == ["a", "kafka_offset"]
    batch = conv.to_batch([{"a": 1}, {"a": 2}], [pa.array([10, 11], pa.int64())])
    assert batch.schema == conv.schema
    assert batch.to_pylist() == [{"a": 1, "kafka_offset": 10}, {"a": 2, "kafka_offset": 11}]
    with pytest.raises(ValueError, match="extra columns"):
        conv.to_batch([{"a": 1}])


def test_empty_batch() -> None:
    conv = RecordConverter(_rec(("m", {"type": "map", "values": ["null", "long", "string"]})))
    batch = conv.to_batch([])
    assert batch.num_rows == 0 and batch.schema == conv.schema


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("top", ["string", {"type": "map", "values": "int"}, ["null", "int"],
                                 '"long"', {"type": "enum", "name": "E", "symbols": ["A"]}])
def test_top_level_must_be_record(top: Any) -> None:
    with pytest.raises(TypeMappingError, match="top-level Avro schema must be a record, got"):
        arrow_schema(top)
    with pytest.raises(TypeMappingError, match="top-level Avro schema must be a record"):
        RecordConverter(top)


@pytest.mark.parametrize("schema", [
    {"type": "record", "name": "Node", "fields": [
        {"name": "v", "type": "int"}, {"name": "next", "type": ["null", "Node"]}]},
    {"type": "record", "name": "Tree", "namespace": "t", "fields": [
        {"name": "kids", "type": {"type": "array", "items": "t.Tree"}}]},
    {"type": "record", "name": "A", "fields": [{"name": "b", "type": {
        "type": "record", "name": "B", "fields": [
            {"name": "a", "type": {"type": "map", "values": "A"}}]}}]},
])
def test_recursive_types_refused(schema: dict[str, Any]) -> None:
    name = schema["name"] if "namespace" not in schema else f"{schema['namespace']}.Tree"
    with pytest.raises(TypeMappingError, match=rf"recursive Avro type '{name}'"):
        arrow_schema(schema)


def test_reused_named_type_is_not_recursive() -> None:
    inner = _rec(("x", "int"), name="P")
    s = arrow_schema(_rec(("a", inner), ("b", "P"), ("c", {"type": "array", "items": "P"})))
    assert s.field("a").type == s.field("b").type


@pytest.mark.parametrize(("schema", "match"), [
    (_rec(("a", "Missing")), "unknown Avro type name 'Missing'"),
    (_rec(("a", [])), "empty Avro union"),
    (_rec(("a", _rec(name="Empty"))), "no fields"),
    (_rec(("a", {"type": "bytes", "logicalType": "decimal", "precision": 80})), "decimal"),
])
def test_other_schema_errors(schema: dict[str, Any], match: str) -> None:
    with pytest.raises(TypeMappingError, match=match):
        arrow_schema(schema)


def test_value_errors_are_clear() -> None:
    conv = RecordConverter(_rec(("u", ["long", "string"])))
    with pytest.raises(TypeMappingError, match="matches no branch"):
        conv.to_batch([{"u": 1.5}])
    with pytest.raises(TypeMappingError, match="not nullable"):
        conv.to_batch([{"u": None}])
    with pytest.raises(TypeMappingError, match="not nullable"):
        RecordConverter(_rec(("a", "long"))).to_batch([{"b": 1}])


# ----------------------------------------------------------------------------- unions


UNION_SCHEMA = _rec(
    ("u", ["null", "long", "double", "string", "boolean"]),
    ("m", {"type": "map", "values": ["null", "long", "double", "string", "boolean"]}),
    ("n", ["null", "int", {"type": "enum", "name": "E", "symbols": ["A", "B"]}, "string",
           {"type": "map", "values": "int"}, _rec(("x", "int"), ("y", "int"), name="XY"),
           {"type": "fixed", "name": "F2", "size": 2}, "bytes",
           # after bytes: fastavro's writer would put bytes into an array<long> branch
           {"type": "array", "items": ["null", "long", "string"]}]),
    ("lg", ["null", {"type": "string", "logicalType": "uuid"},
            {"type": "long", "logicalType": "timestamp-micros"},
            {"type": "int", "logicalType": "date"},
            {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 3}]),
)

UUID1 = uuid.UUID("12345678-1234-5678-1234-567812345678")
# (u, m, n, expected n branch, lg, expected lg branch)
UNION_VALUES: list[tuple[Any, Any, Any, str | None, Any, str | None]] = [
    (None, {}, None, None, None, None),
    (True, {"a": None, "b": False}, 5, "int", UUID1, "string"),
    (7, {"a": 1, "b": 2.5, "c": "s", "d": True}, "A", "E",
     dt.datetime(2024, 2, 29, 12, 0, 0, 123456, tzinfo=UTC), "long"),
    (2.5, {"x": 0}, "not-a-symbol", "string", dt.date(1999, 12, 31), "int"),
    ("str", {"x": "y"}, {"x": 1, "y": 2}, "XY", Decimal("-123456.789"), "bytes"),
    (False, {"k": 0.0}, {"x": 1}, "map", None, None),
    (0, {}, [1, None, "z"], "array", None, None),
    (1.0, {}, b"\x00\x01\x02", "bytes", None, None),
    ("", {}, b"\x00\x01", "F2", None, None),
]


def test_union_branch_names() -> None:
    s = arrow_schema(UNION_SCHEMA)
    assert [f.name for f in s.field("n").type] == [
        "int", "E", "string", "map", "XY", "F2", "bytes", "array"]
    # logical types are named by their Avro (underlying) type
    assert [f.name for f in s.field("lg").type] == ["string", "long", "int", "bytes"]
    assert s.field("lg").type.field("string").type == pa.uuid()


def _set_branches(v: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if v is None else {k: x for k, x in v.items() if x is not None}


def test_general_union_branches(tmp_path: Path) -> None:
    records = [{"u": u, "m": m, "n": n, "lg": lg} for u, m, n, _, lg, _ in UNION_VALUES]
    decoded = _decode_all(UNION_SCHEMA, records)
    batch = RecordConverter(UNION_SCHEMA).to_batch(decoded)
    batch.validate(full=True)
    rows = batch.to_pylist()
    py_branch = {bool: "boolean", int: "long", float: "double", str: "string"}
    for (u, m, n, n_branch, lg, lg_branch), row in zip(UNION_VALUES, rows, strict=True):
        if u is None:
            assert row["u"] is None
        else:
            assert _set_branches(row["u"]) == {py_branch[type(u)]: u}
            assert type(row["u"][py_branch[type(u)]]) is type(u)
        got_map = dict(row["m"])
        assert got_map.keys() == m.keys()
        for k, v in m.items():
            assert got_map[k] is None if v is None else _set_branches(got_map[k]) == {
                py_branch[type(v)]: v}
        got_n = _set_branches(row["n"])
        if n_branch is None:
            assert got_n is None
        else:
            assert got_n is not None and list(got_n) == [n_branch]
            want = n
            if n_branch == "map":
                want = list(n.items())
            if n_branch == "array":
                want = [None if x is None else {"long": x if isinstance(x, int) else None,
                                                "string": x if isinstance(x, str) else None}
                        for x in n]
            assert got_n[n_branch] == want
        assert _set_branches(row["lg"]) == (None if lg_branch is None else {lg_branch: lg})
    # Parquet (pyarrow and DuckDB) see the same structs
    path = _write(tmp_path, batch)
    assert pq.read_table(path).to_pylist() == rows
    # (DuckDB → Python for TIMESTAMPTZ needs pytz, so timestamps are compared as epoch µs)
    duck = duckdb.sql(f"select u, m, lg.string, epoch_us(lg.long), lg.int, lg.bytes "
                      f"from '{path}'").fetchall()
    for (du, dm, *dlg), row in zip(duck, rows, strict=True):
        assert du == row["u"]
        assert dm == dict(row["m"])
        lgr = row["lg"] or dict.fromkeys(["string", "long", "int", "bytes"])
        assert dlg == [lgr["string"], _us(lgr["long"]), lgr["int"], lgr["bytes"]]


def _us(ts: dt.datetime | None) -> int | None:
    """Microseconds since the epoch, exactly (no float rounding)."""
    if ts is None:
        return None
    return (ts - dt.datetime(1970, 1, 1, tzinfo=UTC)) // dt.timedelta(microseconds=1)


def test_union_of_records_by_fields_and_by_name() -> None:
    a = _rec(("x", "int"), name="A")
    b = _rec(("x", "int"), ("y", "int"), name="B")
    c = _rec(("x", "int"), name="C")
    conv = RecordConverter(_rec(("u", ["null", a, b, c, {"type": "map", "values": "int"}])))
    batch = conv.to_batch([
        {"u": {"x": 1}}, {"u": {"x": 1, "y": 2}}, {"u": ("C", {"x": 3})}, {"u": {"z": 9}},
        {"u": None}])
    rows = [None if r["u"] is None else {k for k, v in r["u"].items() if v is not None}
            for r in batch.to_pylist()]
    # same field set as A and C: the first declared wins unless the record name is given
    assert rows == [{"A"}, {"B"}, {"C"}, {"map"}, None]


def test_union_int_vs_long_and_float_vs_double() -> None:
    conv = RecordConverter(_rec(("u", ["int", "long", "float", "double"])))
    rows = conv.to_batch([{"u": 1}, {"u": 2**31}, {"u": 1.5}]).to_pylist()
    assert [next(k for k, v in r["u"].items() if v is not None) for r in rows] == [
        "int", "long", "float"]


def test_nested_union_inside_nullable_record_and_arrays(tmp_path: Path) -> None:
    inner = _rec(("v", ["null", "long", "string"]), ("w", "int"), name="Inner")
    schema = _rec(
        ("r", ["null", inner]),
        ("a", {"type": "array", "items": ["null", "Inner"]}),
        ("aa", ["null", {"type": "array", "items": {"type": "map", "values": ["long", "string"]}}]),
    )
    records = [
        {"r": None, "a": [], "aa": None},
        {"r": {"v": "x", "w": 1}, "a": [None, {"v": 2, "w": 3}], "aa": [{}, {"k": 1, "j": "s"}]},
        {"r": {"v": None, "w": 2}, "a": [{"v": None, "w": 0}], "aa": []},
    ]
    decoded = _decode_all(schema, records)
    batch = RecordConverter(schema).to_batch(decoded)
    batch.validate(full=True)
    rows = batch.to_pylist()
    assert rows[0] == {"r": None, "a": [], "aa": None}
    assert rows[1]["r"] == {"v": {"long": None, "string": "x"}, "w": 1}
    assert rows[1]["a"] == [None, {"v": {"long": 2, "string": None}, "w": 3}]
    assert rows[1]["aa"] == [[], [("k", {"long": 1, "string": None}),
                                  ("j", {"long": None, "string": "s"})]]
    assert rows[2]["r"] == {"v": None, "w": 2}
    path = _write(tmp_path, batch)
    assert pq.read_table(path).to_pylist() == rows


# ----------------------------------------------------------------------------- round trips

LOGICAL_SCHEMA = {
    "type": "record", "name": "Logical", "namespace": "t",
    "fields": [
        {"name": "ts_ms", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "ts_us", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "lts_ms", "type": {"type": "long", "logicalType": "local-timestamp-millis"}},
        {"name": "lts_us", "type": {"type": "long", "logicalType": "local-timestamp-micros"}},
        {"name": "d", "type": {"type": "int", "logicalType": "date"}},
        {"name": "t_ms", "type": {"type": "int", "logicalType": "time-millis"}},
        {"name": "t_us", "type": {"type": "long", "logicalType": "time-micros"}},
        {"name": "dec", "type": {"type": "bytes", "logicalType": "decimal", "precision": 20,
                                 "scale": 4}},
        {"name": "decf", "type": {"type": "fixed", "name": "DF", "size": 8,
                                  "logicalType": "decimal", "precision": 18, "scale": 2}},
        {"name": "dec256", "type": {"type": "bytes", "logicalType": "decimal", "precision": 60,
                                    "scale": 10}},
        {"name": "u", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "uf", "type": {"type": "fixed", "name": "UF", "size": 16, "logicalType": "uuid"}},
        {"name": "un", "type": ["null", {"type": "string", "logicalType": "uuid"}]},
        {"name": "mu", "type": {"type": "map", "values": {"type": "string",
                                                          "logicalType": "uuid"}}},
        {"name": "e", "type": {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN"]}},
        {"name": "me", "type": {"type": "map", "values": "Color"}},
        {"name": "fx", "type": {"type": "fixed", "name": "F3", "size": 3}},
        {"name": "b", "type": "bytes"},
        {"name": "f", "type": "float"},
        {"name": "mts", "type": {"type": "map", "values": ["null", {
            "type": "long", "logicalType": "timestamp-millis"}]}},
    ],
}


def _logical_records() -> list[dict[str, Any]]:
    out = []
    for i in range(5):
        out.append({
            "ts_ms": dt.datetime(2024, 3, 10, 1, 2, 3, 456000 + i * 1000, tzinfo=UTC),
            "ts_us": dt.datetime(1969, 12, 31, 23, 59, 59, 999999 - i, tzinfo=UTC),
            "lts_ms": dt.datetime(2030, 1, 1, 0, 0, 0, 1000 * i),
            "lts_us": dt.datetime(2000, 6, 15, 12, 30, 0, 123457 + i),
            "d": dt.date(1970, 1, 1) + dt.timedelta(days=i * 1000 - 3000),
            "t_ms": dt.time(23, 59, 59, 999000),
            "t_us": dt.time(0, 0, 0, i + 1),
            "dec": Decimal(f"{'-' if i % 2 else ''}1234567890123456.{i:04d}"),
            "decf": Decimal(f"9999999999999999.{i:02d}"),
            "dec256": Decimal(f"12345678901234567890123456789012345678901234567890.{i:010d}"),
            "u": uuid.UUID(int=i * 2**100 + 17),
            "uf": uuid.UUID(int=i + 99).bytes,
            "un": None if i % 2 else uuid.UUID(int=i),
            "mu": {f"k{j}": uuid.UUID(int=j) for j in range(i)},
            "e": ["RED", "GREEN"][i % 2],
            "me": {"x": "GREEN", "y": "RED"} if i else {},
            "fx": bytes([i, 0, 255]),
            "b": bytes(range(i)),
            "f": 1.5 * i,
            "mts": {"a": None, "b": dt.datetime(2024, 1, 1, tzinfo=UTC)} if i else {},
        })
    return out


def test_logical_types_round_trip(tmp_path: Path) -> None:
    records = _logical_records()
    decoded = _decode_all(LOGICAL_SCHEMA, records)
    conv = RecordConverter(LOGICAL_SCHEMA, [pa.field("kafka_offset", pa.int64(), False)])
    batch = conv.to_batch(decoded, [pa.array(range(5), pa.int64())])
    batch.validate(full=True)
    path = _write(tmp_path, batch)

    back = pq.read_table(path)
    assert back.schema.field("u").type == pa.uuid()
    assert back.schema.field("ts_ms").type == pa.timestamp("ms", tz="UTC")
    for rec, row in zip(records, back.to_pylist(), strict=True):
        assert row["ts_ms"] == rec["ts_ms"] and row["ts_us"] == rec["ts_us"]
        assert row["lts_ms"] == rec["lts_ms"] and row["lts_us"] == rec["lts_us"]
        assert row["d"] == rec["d"] and row["t_ms"] == rec["t_ms"] and row["t_us"] == rec["t_us"]
        assert row["dec"] == rec["dec"] and row["decf"] == rec["decf"]
        assert row["dec256"] == rec["dec256"]
        assert row["u"] == rec["u"] and row["uf"] == uuid.UUID(bytes=rec["uf"])
        assert row["un"] == rec["un"]
        assert dict(row["mu"]) == rec["mu"] and dict(row["me"]) == rec["me"]
        assert row["e"] == rec["e"] and row["fx"] == rec["fx"] and row["b"] == rec["b"]
        assert row["f"] == rec["f"] and dict(row["mts"]) == rec["mts"]

    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    cols = ("epoch_us(ts_ms), epoch_us(ts_us), lts_ms, lts_us, d, t_ms, t_us, dec, decf, "
            "u, uf, un, mu, e, me, fx, b")
    duck = con.execute(f"select {cols}, kafka_offset from '{path}' order by kafka_offset")
    for rec, row in zip(records, duck.fetchall(), strict=True):
        (ts_ms, ts_us, lts_ms, lts_us, d, t_ms, t_us, dec, decf, u, uf, un, mu, e, me, fx,
         b, _off) = row
        assert ts_ms == _us(rec["ts_ms"]) and ts_us == _us(rec["ts_us"])
        assert lts_ms == rec["lts_ms"] and lts_us == rec["lts_us"]
        assert d == rec["d"] and t_ms == rec["t_ms"] and t_us == rec["t_us"]
        assert dec == rec["dec"] and decf == rec["decf"]
        assert u == rec["u"] and uf == uuid.UUID(bytes=rec["uf"]) and un == rec["un"]
        assert mu == rec["mu"] and me == rec["me"] and e == rec["e"]
        assert fx == rec["fx"] and b == rec["b"]
    # DuckDB has no 256-bit decimal: it reads DECIMAL(60,10) as DOUBLE (documented)
    dec256 = con.execute(f"select dec256 from '{path}'").fetchall()
    assert [r[0] for r in dec256] == pytest.approx([float(r["dec256"]) for r in records])
    types = dict(con.execute(f"select column_name, column_type from (describe '{path}')")
                 .fetchall())
    assert types["u"] == "UUID" and types["mu"] == "MAP(VARCHAR, UUID)"
    assert types["ts_ms"] == "TIMESTAMP WITH TIME ZONE" and types["lts_us"] == "TIMESTAMP"
    assert types["dec"] == "DECIMAL(20,4)"


def _parquet_leaves(path: Path) -> dict[str, tuple[str, str]]:
    """Column path → (physical type, logical type string) from the Parquet footer."""
    schema = pq.ParquetFile(path).schema
    out = {}
    for i in range(len(schema)):
        col = schema.column(i)
        out[col.path] = (col.physical_type, str(col.logical_type))
    return out


def test_parquet_physical_and_logical_types(tmp_path: Path) -> None:
    decoded = _decode_all(LOGICAL_SCHEMA, _logical_records())
    path = _write(tmp_path, RecordConverter(LOGICAL_SCHEMA).to_batch(decoded))
    leaves = _parquet_leaves(path)
    assert leaves["ts_ms"] == ("INT64", "Timestamp(isAdjustedToUTC=true, timeUnit=milliseconds, "
                               "is_from_converted_type=false, force_set_converted_type=false)")
    assert leaves["ts_us"][1].startswith(
        "Timestamp(isAdjustedToUTC=true, timeUnit=microseconds")
    assert leaves["lts_us"][1].startswith(
        "Timestamp(isAdjustedToUTC=false, timeUnit=microseconds")
    assert leaves["d"] == ("INT32", "Date")
    assert leaves["t_ms"][0] == "INT32" and leaves["t_ms"][1].startswith("Time(")
    assert leaves["dec"] == ("FIXED_LEN_BYTE_ARRAY", "Decimal(precision=20, scale=4)")
    assert leaves["decf"] == ("INT64", "Decimal(precision=18, scale=2)") or leaves["decf"][
        1] == "Decimal(precision=18, scale=2)"
    assert leaves["u"] == ("FIXED_LEN_BYTE_ARRAY", "UUID")
    assert leaves["uf"] == ("FIXED_LEN_BYTE_ARRAY", "UUID")
    assert leaves["mu.key_value.key"] == ("BYTE_ARRAY", "String")
    assert leaves["mu.key_value.value"] == ("FIXED_LEN_BYTE_ARRAY", "UUID")
    assert leaves["e"] == ("BYTE_ARRAY", "String")
    assert leaves["fx"] == ("FIXED_LEN_BYTE_ARRAY", "None")
    # the map itself is a MAP-annotated group with string keys
    text = str(pq.ParquetFile(path).schema)
    assert "mu (Map)" in text and "me (Map)" in text and "mts (Map)" in text
    assert "required fixed_len_byte_array(16) field_id=-1 u (UUID)" in text


# ----------------------------------------------------------------------------- property tests

_NAME = st.text(string.ascii_lowercase, min_size=1, max_size=6)


class _SchemaGen:
    """Draws a random Avro schema (bounded depth) and a value strategy for it."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw
        self.counter = 0

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def leaf(self) -> tuple[Any, st.SearchStrategy[Any]]:
        kind = self.draw(st.sampled_from([
            "boolean", "int", "long", "float", "double", "string", "bytes", "enum", "fixed",
            "ts-ms", "ts-us", "lts-us", "date", "time-ms", "time-us", "decimal", "uuid",
        ]))
        utc_dt = st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1),
                              timezones=st.just(UTC))
        if kind == "boolean":
            return "boolean", st.booleans()
        if kind == "int":
            return "int", st.integers(-(2**31), 2**31 - 1)
        if kind == "long":
            return "long", st.integers(-(2**63), 2**63 - 1)
        if kind == "float":
            return "float", st.floats(width=32, allow_nan=False)
        if kind == "double":
            return "double", st.floats(allow_nan=False)
        if kind == "string":
            return "string", st.text(max_size=8)
        if kind == "bytes":
            return "bytes", st.binary(max_size=8)
        if kind == "enum":
            syms = self.draw(st.lists(st.sampled_from(list("ABCDEFG")), min_size=1, max_size=4,
                                      unique=True))
            return ({"type": "enum", "name": self.fresh("E"), "symbols": syms},
                    st.sampled_from(syms))
        if kind == "fixed":
            size = self.draw(st.integers(1, 6))
            return ({"type": "fixed", "name": self.fresh("F"), "size": size},
                    st.binary(min_size=size, max_size=size))
        if kind == "ts-ms":
            return ({"type": "long", "logicalType": "timestamp-millis"},
                    utc_dt.map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)))
        if kind == "ts-us":
            return {"type": "long", "logicalType": "timestamp-micros"}, utc_dt
        if kind == "lts-us":
            return ({"type": "long", "logicalType": "local-timestamp-micros"},
                    st.datetimes(min_value=dt.datetime(1900, 1, 1),
                                 max_value=dt.datetime(2200, 1, 1)))
        if kind == "date":
            return {"type": "int", "logicalType": "date"}, st.dates()
        if kind == "time-ms":
            return ({"type": "int", "logicalType": "time-millis"},
                    st.times().map(lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000)))
        if kind == "time-us":
            return {"type": "long", "logicalType": "time-micros"}, st.times()
        if kind == "decimal":
            precision = self.draw(st.sampled_from([1, 9, 18, 38, 50]))
            scale = self.draw(st.integers(0, precision))
            return ({"type": "bytes", "logicalType": "decimal", "precision": precision,
                     "scale": scale},
                    st.integers(-(10**precision) + 1, 10**precision - 1).map(
                        # exact: Decimal.scaleb would round to the context's 28 digits
                        lambda i, s=scale: Decimal(f"{i}E-{s}")))
        return {"type": "string", "logicalType": "uuid"}, st.uuids()

    def general_union(self) -> tuple[Any, st.SearchStrategy[Any]]:
        pool = {"long": st.integers(-(2**63), 2**63 - 1), "double": st.floats(allow_nan=False),
                "string": st.text(max_size=5), "boolean": st.booleans(),
                "bytes": st.binary(max_size=4)}
        names = self.draw(st.lists(st.sampled_from(sorted(pool)), min_size=2, max_size=4,
                                   unique=True))
        with_null = self.draw(st.booleans())
        strat = st.one_of(*[pool[n] for n in names])
        if with_null:
            return ["null", *names], st.none() | strat
        return names, strat

    def schema(self, depth: int) -> tuple[Any, st.SearchStrategy[Any]]:
        options = ["leaf", "union"] + (["record", "array", "map", "nullable"] if depth > 0 else [])
        kind = self.draw(st.sampled_from(options))
        if kind == "leaf":
            return self.leaf()
        if kind == "union":
            return self.general_union()
        if kind == "nullable":
            inner, strat = self.schema(depth - 1)
            if isinstance(inner, list):  # unions cannot nest
                return inner, strat
            order = self.draw(st.booleans())
            return (["null", inner] if order else [inner, "null"]), st.none() | strat
        if kind == "array":
            inner, strat = self.schema(depth - 1)
            return {"type": "array", "items": inner}, st.lists(strat, max_size=3)
        if kind == "map":
            inner, strat = self.schema(depth - 1)
            return ({"type": "map", "values": inner},
                    st.dictionaries(st.text(max_size=4), strat, max_size=3))
        return self.record(depth - 1)

    def record(self, depth: int) -> tuple[dict[str, Any], st.SearchStrategy[Any]]:
        n = self.draw(st.integers(1, 4))
        names = self.draw(st.lists(_NAME, min_size=n, max_size=n, unique=True))
        fields, strats = [], {}
        for nm in names:
            sch, strat = self.schema(depth)
            fields.append({"name": nm, "type": sch})
            strats[nm] = strat
        return ({"type": "record", "name": self.fresh("R"), "fields": fields},
                st.fixed_dictionaries(strats))


@st.composite
def schema_and_records(draw: st.DrawFn) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    gen = _SchemaGen(draw)
    schema, strat = gen.record(depth=2)
    records = draw(st.lists(strat, min_size=1, max_size=5))
    return schema, records


def _canonical(value: Any, avro: Any, named: dict[str, Any]) -> Any:
    """Expected Arrow (to_pylist) value for an Avro value, as the mapping rules define it."""
    if isinstance(avro, str) and avro in named:
        avro = named[avro]
    if isinstance(avro, list):
        non_null = [b for b in avro if b != "null"]
        if value is None:
            return None
        if len(non_null) == 1:
            return _canonical(value, non_null[0], named)
        py = {"long": int, "double": float, "string": str, "boolean": bool, "bytes": bytes}
        return {b: (value if type(value) is py[b] else None) for b in non_null}
    if isinstance(avro, dict):
        t = avro["type"]
        if t in ("record", "enum", "fixed"):
            named[avro["name"]] = avro
        if t == "record":
            return {f["name"]: _canonical(value[f["name"]], f["type"], named)
                    for f in avro["fields"]}
        if t == "array":
            return [_canonical(v, avro["items"], named) for v in value]
        if t == "map":
            return [(k, _canonical(v, avro["values"], named)) for k, v in value.items()]
    return value


@settings(max_examples=int(os.environ.get("TYPEMAP_EXAMPLES", "150")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(schema_and_records())
def test_property_round_trip(tmp_path_factory: pytest.TempPathFactory,
                             data: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    schema, records = data
    decoded = _decode_all(schema, records)
    conv = RecordConverter(schema)
    batch = conv.to_batch(decoded)
    batch.validate(full=True)
    assert batch.schema == arrow_schema(schema)
    expected = [_canonical(r, schema, {}) for r in decoded]
    assert batch.to_pylist() == expected
    path = tmp_path_factory.mktemp("prop") / "p.parquet"
    pq.write_table(pa.Table.from_batches([batch]), path)
    assert pq.read_table(path).to_pylist() == expected
    # DuckDB reads every file we write (values compared in the targeted tests above)
    assert duckdb.sql(f"select count(*) from '{path}'").fetchall() == [(len(records),)]


# ----------------------------------------------------------------------------- throughput


def test_decimal_refusal_finds_a_decimal_beyond_its_precision_through_named_types() -> None:
    """fastavro rounds such a decimal to its precision, so its exponent is no longer -scale; the
    decimal may sit behind a name, in a union, an array or a record of another namespace."""
    from decimal import Context

    avro = {"type": "record", "name": "R", "namespace": "a.b", "fields": [
        {"name": "x", "type": {"type": "fixed", "name": "Money", "size": 8, "logicalType": "decimal",
                               "precision": 5, "scale": 2}},
        {"name": "ys", "type": {"type": "array", "items": ["null", "Money"]}},
        {"name": "z", "type": ["null", {"type": "record", "name": "Inner", "namespace": "c",
                                        "fields": [{"name": "m", "type": "a.b.Money"}]}]},
    ]}
    c = RecordConverter(json.dumps(avro))
    ok, bad = Decimal("123.45"), Context(prec=5).create_decimal(10**7).scaleb(-2)
    said = "value not representable in the column types: a decimal with more than 5 digits does not fit "
    said += "decimal(5, 2)"
    assert c.decimal_refusal({"x": ok, "ys": [None, ok], "z": {"m": ok}}) is None
    assert c.decimal_refusal({"x": bad, "ys": [], "z": None}) == said
    assert c.decimal_refusal({"x": ok, "ys": [None, bad], "z": None}) == said
    assert c.decimal_refusal({"x": ok, "ys": [], "z": ("c.Inner", {"m": bad})}) == said
