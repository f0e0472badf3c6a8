"""Tests for consumer.thrift_compact: wire-format details and lossless round trips.

The strongest check is decode → encode byte-identity on footers pyarrow itself wrote, for random
Arrow schemas and writer options (hypothesis).  The Arrow table generators here are reused by
test_parquet_merge.py.
"""

from __future__ import annotations

import decimal
import io
import random
import string
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer import thrift_compact as tc

# --------------------------------------------------------------------------------------------
# Random Arrow tables (shared with test_parquet_merge.py)

_LEAF_TYPES: list[pa.DataType] = [
    pa.int8(),
    pa.int16(),
    pa.int32(),
    pa.int64(),
    pa.uint8(),
    pa.uint16(),
    pa.uint32(),
    pa.uint64(),
    pa.float32(),
    pa.float64(),
    pa.string(),
    pa.binary(),
    pa.bool_(),
    pa.timestamp("ms", tz="UTC"),
    pa.timestamp("us", tz="Europe/Paris"),
    pa.timestamp("us"),
    pa.date32(),
    pa.decimal128(9, 2),
    pa.decimal128(38, 10),
]
_DICT_TYPE = pa.dictionary(pa.int32(), pa.string())

_leaf = st.sampled_from(_LEAF_TYPES)


def _map_of(value: pa.DataType, nullable: bool) -> pa.DataType:
    return pa.map_(pa.string(), pa.field("value", value, nullable=nullable))


def _extend(children: st.SearchStrategy[pa.DataType]) -> st.SearchStrategy[pa.DataType]:
    return st.one_of(
        children.map(pa.list_),
        st.lists(children, min_size=1, max_size=3).map(
            lambda ts: pa.struct([pa.field(f"f{i}", t) for i, t in enumerate(ts)])
        ),
        st.builds(_map_of, children, st.booleans()),
    )


#: Nested Arrow types; dictionaries only at the top level (pyarrow cannot build nested ones
#: from Python lists).
nested_types = st.recursive(_leaf, _extend, max_leaves=5)
column_types = st.one_of(nested_types, nested_types, nested_types, st.just(_DICT_TYPE))
map_types = st.builds(_map_of, nested_types, st.booleans())


def _int_range(t: pa.DataType) -> tuple[int, int]:
    bits = t.bit_width
    if pa.types.is_signed_integer(t):
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def random_value(t: pa.DataType, rnd: random.Random, nullable: bool = True) -> Any:
    """A random Python value of Arrow type ``t`` (None with some probability if nullable)."""
    if nullable and rnd.random() < 0.15:
        return None
    if pa.types.is_integer(t):
        lo, hi = _int_range(t)
        return rnd.choice([lo, hi, 0, rnd.randint(lo, hi), rnd.randint(-5, 5) % (hi + 1)])
    if pa.types.is_floating(t):
        return rnd.choice([0.0, -1.5, rnd.uniform(-1e6, 1e6)])
    if pa.types.is_dictionary(t):
        return rnd.choice(["alpha", "beta", "gamma", ""])
    if pa.types.is_string(t):
        return "".join(rnd.choices(string.ascii_letters + "éß€", k=rnd.randint(0, 8)))
    if pa.types.is_binary(t):
        return rnd.randbytes(rnd.randint(0, 8))
    if pa.types.is_boolean(t):
        return rnd.random() < 0.5
    if pa.types.is_timestamp(t):
        return rnd.randint(0, 1 << 40)
    if pa.types.is_date32(t):
        return rnd.randint(-10_000, 30_000)
    if pa.types.is_decimal(t):
        digits = rnd.randint(-(10**t.precision) + 1, 10**t.precision - 1)
        return decimal.Decimal(digits).scaleb(-t.scale)
    if pa.types.is_map(t):
        keys = rnd.sample(["a", "b", "c", "d", "e"], rnd.randint(0, 3))
        item = t.item_field
        return [(k, random_value(item.type, rnd, item.nullable)) for k in keys]
    if pa.types.is_list(t):
        vf = t.value_field
        return [random_value(vf.type, rnd, vf.nullable) for _ in range(rnd.randint(0, 3))]
    if pa.types.is_struct(t):
        return {f.name: random_value(f.type, rnd, f.nullable) for f in t}
    raise AssertionError(f"unhandled type {t}")


def random_table(types: list[pa.DataType], num_rows: int, seed: int) -> pa.Table:
    rnd = random.Random(seed)
    cols = {
        f"c{i}": pa.array([random_value(t, rnd) for _ in range(num_rows)], type=t)
        for i, t in enumerate(types)
    }
    return pa.table(cols)


@st.composite
def tables(draw: st.DrawFn, max_rows: int = 40, types: Any = column_types) -> pa.Table:
    col_types = draw(st.lists(types, min_size=1, max_size=4))
    num_rows = draw(st.integers(0, max_rows))
    return random_table(col_types, num_rows, draw(st.integers(0, 2**32)))


#: Writer options the consumer may vary (page index stays off: see test_parquet_merge).
writer_options = st.fixed_dictionaries(
    {
        "compression": st.sampled_from(["none", "snappy", "zstd"]),
        "write_statistics": st.booleans(),
        "use_dictionary": st.booleans(),
    }
)


def footer_of(data: bytes) -> bytes:
    assert data[-4:] == b"PAR1"
    flen = int.from_bytes(data[-8:-4], "little")
    return data[-8 - flen : -8]


def write_parquet(table: pa.Table, **opts: Any) -> bytes:
    buf = io.BytesIO()
    with pq.ParquetWriter(buf, table.schema, **opts) as w:
        w.write_table(table, row_group_size=max(1, table.num_rows // 2 or 1))
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# Hand-written wire format cases


def _roundtrip_bytes(data: bytes) -> tc.Struct:
    s = tc.decode_struct(data)
    assert tc.encode_struct(s) == data
    return s


def test_bool_fields_live_in_the_header_nibble() -> None:
    s = _roundtrip_bytes(bytes([0x11, 0x12, 0x00]))
    assert s.fields == [tc.Field(1, tc.BOOL_TRUE, True), tc.Field(2, tc.BOOL_FALSE, False)]
    # The encoder derives the nibble from the value, whatever ttype says.
    s.fields[0].value = False
    assert tc.encode_struct(s) == bytes([0x12, 0x12, 0x00])


def test_bools_in_lists_are_one_byte_each() -> None:
    s = _roundtrip_bytes(bytes([0x19, 0x31, 0x01, 0x02, 0x01, 0x00]))
    lst = s.get(1)
    assert isinstance(lst, tc.List)
    assert lst.etype == tc.BOOL_TRUE and lst.items == [True, False, True]


def test_field_id_long_form_for_big_or_negative_deltas() -> None:
    # id 1 (short), id 20 (delta 19 → long form), id 3 (negative delta → long form), id 4 short
    s = tc.Struct(
        [
            tc.Field(1, tc.I32, 5),
            tc.Field(20, tc.I32, -1),
            tc.Field(3, tc.BYTE, -2),
            tc.Field(4, tc.I64, 1 << 40),
        ]
    )
    data = tc.encode_struct(s)
    assert data[:2] == bytes([0x15, 0x0A])  # short header, zigzag(5) = 10
    assert data[2:5] == bytes([0x05, 0x28, 0x01])  # type byte, zigzag(20) = 40, zigzag(-1) = 1
    assert data[5:8] == bytes([0x03, 0x06, 0xFE])  # i8 raw byte
    assert data[8] == 0x16
    assert tc.decode_struct(data) == s


def test_lists_of_15_or_more_use_the_long_header() -> None:
    for n in (0, 1, 14, 15, 16, 300):
        s = tc.Struct([tc.Field(1, tc.LIST, tc.List(tc.I32, list(range(-n, 0))))])
        data = tc.encode_struct(s)
        assert data[1] == ((n << 4) | tc.I32 if n < 15 else 0xF0 | tc.I32)
        assert tc.decode_struct(data) == s


def test_maps_sets_doubles_and_nesting() -> None:
    inner = tc.Struct([tc.Field(1, tc.BINARY, b"x" * 200), tc.Field(2, tc.DOUBLE, -0.25)])
    s = tc.Struct(
        [
            tc.Field(1, tc.MAP, tc.Map(tc.BINARY, tc.STRUCT, [(b"k", inner), (b"", tc.Struct())])),
            tc.Field(2, tc.MAP, tc.Map(0, 0, [])),
            tc.Field(3, tc.SET, tc.List(tc.I16, [-32768, 32767])),
            tc.Field(4, tc.LIST, tc.List(tc.LIST, [tc.List(tc.BOOL_TRUE, [True]), tc.List(tc.I64)])),
            tc.Field(5, tc.LIST, tc.List(tc.MAP, [tc.Map(tc.I32, tc.BOOL_TRUE, [(1, False)])])),
            tc.Field(32767, tc.I64, -(1 << 63)),
        ]
    )
    data = tc.encode_struct(s)
    assert tc.decode_struct(data) == s
    assert tc.encode_struct(tc.decode_struct(data)) == data


def test_struct_helpers() -> None:
    s = tc.Struct([tc.Field(1, tc.I32, 1), tc.Field(5, tc.I32, 5)])
    s.set(3, tc.I32, 3)
    s.set(9, tc.I32, 9)
    s.set(5, tc.I64, 50)
    assert [(f.id, f.value) for f in s.fields] == [(1, 1), (3, 3), (5, 50), (9, 9)]
    assert s.get(5) == 50 and s.get(7) is None and s.get(7, 0) == 0
    assert 3 in s and 4 not in s
    c = s.copy()
    c.set(1, tc.I32, 100)
    assert s.get(1) == 1
    assert s.remove(3) and not s.remove(3)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "truncated"),
        (bytes([0x15]), "truncated"),  # i32 field without value
        (bytes([0x18, 0x05, 0x61]), "truncated"),  # binary shorter than its length
        (bytes([0x19, 0xF5, 0xFF, 0xFF, 0xFF, 0x0F]), "truncated"),  # absurd list size
        (bytes([0x1D, 0x00]), "unknown compact type"),
        (bytes([0x15, 0x02, 0x00, 0x00]), "trailing"),
        (bytes([0x10]), "bad field header"),
    ],
)
def test_malformed_input_raises(data: bytes, match: str) -> None:
    with pytest.raises(tc.ThriftDecodeError, match=match):
        tc.decode_struct(data)


def test_excessive_nesting_is_rejected() -> None:
    data = bytes([0x1C]) * 200 + bytes(201)
    with pytest.raises(tc.ThriftDecodeError, match="deep"):
        tc.decode_struct(data)


def test_encoder_rejects_out_of_range_ints() -> None:
    with pytest.raises(ValueError, match="i16"):
        tc.encode_struct(tc.Struct([tc.Field(1, tc.I16, 1 << 15)]))
    with pytest.raises(TypeError):
        tc.encode_struct(tc.Struct([tc.Field(1, tc.BINARY, "str")]))


# --------------------------------------------------------------------------------------------
# Generic trees (hypothesis): encode → decode gives the same tree and the same bytes

_scalar_types = st.sampled_from([tc.BOOL_TRUE, tc.BYTE, tc.I16, tc.I32, tc.I64, tc.DOUBLE, tc.BINARY])


def _scalar(t: int) -> st.SearchStrategy[Any]:
    return {
        tc.BOOL_TRUE: st.booleans(),
        tc.BYTE: st.integers(-128, 127),
        tc.I16: st.integers(-(1 << 15), (1 << 15) - 1),
        tc.I32: st.integers(-(1 << 31), (1 << 31) - 1),
        tc.I64: st.integers(-(1 << 63), (1 << 63) - 1),
        tc.DOUBLE: st.floats(allow_nan=False),
        tc.BINARY: st.binary(max_size=20),
    }[t]


@st.composite
def _typed_value(draw: st.DrawFn, depth: int) -> tuple[int, Any]:
    kinds = ["scalar"] + (["struct", "list", "set", "map"] if depth < 3 else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "scalar":
        t = draw(_scalar_types)
        return t, draw(_scalar(t))
    if kind == "struct":
        return tc.STRUCT, draw(_structs(depth + 1))
    if kind in ("list", "set"):
        et, _ = draw(_typed_value(depth + 1))
        items = draw(st.lists(_value_of(et, depth + 1), max_size=17))
        return (tc.LIST if kind == "list" else tc.SET), tc.List(et, items)
    kt = draw(_scalar_types)
    vt, _ = draw(_typed_value(depth + 1))
    pairs = draw(st.lists(st.tuples(_scalar(kt), _value_of(vt, depth + 1)), max_size=4))
    return tc.MAP, (tc.Map(kt, vt, pairs) if pairs else tc.Map(0, 0, []))


def _value_of(t: int, depth: int) -> st.SearchStrategy[Any]:
    if t == tc.STRUCT:
        return _structs(depth + 1)
    if t in (tc.LIST, tc.SET, tc.MAP):
        return _typed_value(depth).filter(lambda tv: tv[0] == t).map(lambda tv: tv[1])
    return _scalar(t)


@st.composite
def _structs(draw: st.DrawFn, depth: int = 0) -> tc.Struct:
    ids = draw(st.lists(st.integers(-(1 << 15), (1 << 15) - 1), max_size=6))
    fields = []
    for fid in ids:
        t, v = draw(_typed_value(depth))
        if t == tc.BOOL_TRUE and v is False:
            t = tc.BOOL_FALSE  # what the decoder reports for a false bool field
        fields.append(tc.Field(fid, t, v))
    return tc.Struct(fields)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_structs())
def test_generic_trees_roundtrip(s: tc.Struct) -> None:
    data = tc.encode_struct(s)
    back = tc.decode_struct(data)
    assert back == s
    assert tc.encode_struct(back) == data


# --------------------------------------------------------------------------------------------
# pyarrow footers: decode → encode is byte-identical


def _assert_footer_roundtrips(data: bytes) -> tc.Struct:
    footer = footer_of(data)
    s = tc.decode_struct(footer)
    assert tc.encode_struct(s) == footer
    return s


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tables(),
    writer_options,
    st.fixed_dictionaries(
        {
            "write_page_index": st.booleans(),
            "data_page_version": st.sampled_from(["1.0", "2.0"]),
            "write_page_checksum": st.booleans(),
            "store_schema": st.booleans(),
        }
    ),
)
def test_pyarrow_footers_roundtrip(table: pa.Table, opts: dict[str, Any], extra: dict[str, Any]) -> None:
    _assert_footer_roundtrips(write_parquet(table, **opts, **extra))


def test_pyarrow_footer_with_every_optional_feature() -> None:
    """Bloom filters, sorting columns, page index, custom metadata, statistics, big footers."""
    table = random_table(
        [pa.int64(), pa.string(), _map_of(pa.int32(), True), _DICT_TYPE, pa.float64()], 300, 7
    ).replace_schema_metadata({"k": "v" * 300})
    data = write_parquet(
        table,
        compression="zstd",
        write_page_index=True,
        bloom_filter_options={"c0": {"ndv": 100}, "c1": {"ndv": 50, "fpp": 0.01}},
        sorting_columns=[pq.SortingColumn(0)],
        data_page_size=64,
    )
    s = _assert_footer_roundtrips(data)
    rg = s.get(4)
    assert isinstance(rg, tc.List) and len(rg) == 2


def test_decode_is_fast_enough_for_big_footers() -> None:
    """100 row groups x 100 columns (~1 MB footer) decodes and re-encodes well within budget."""
    t = pa.table({f"c{i}": pa.array([1, 2, 3], pa.int64()) for i in range(100)})
    buf = io.BytesIO()
    with pq.ParquetWriter(buf, t.schema) as w:
        for _ in range(100):
            w.write_table(t)
    footer = footer_of(buf.getvalue())
    assert len(footer) > 500_000
    s = tc.decode_struct(footer)
    assert tc.encode_struct(s) == footer
