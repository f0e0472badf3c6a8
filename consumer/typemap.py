"""Avro → Arrow/Parquet type mapping and fast conversion of decoded Avro records.

Two jobs live here, because they must agree exactly:

* :func:`arrow_schema` maps an Avro writer schema to the Arrow schema whose Parquet
  rendering is our on-disk contract (MAP logical type for Avro maps, UTC-adjusted
  TIMESTAMP for ``timestamp-*``, DECIMAL, UUID, ...). See ``docs/types.md``.
* :class:`RecordConverter` turns ``fastavro.schemaless_reader`` output (plain dicts,
  lists, datetimes, Decimals, UUIDs) into an Arrow ``RecordBatch`` of that schema.

Performance design: everything pyarrow can convert natively (scalars, records, lists,
maps given as ``dict``, enums as ``str`` into dictionary arrays, datetimes, Decimals,
UUIDs into ``fixed_size_binary(16)``) is handed to ``pa.array`` in one call per
column. Python only touches values on the paths leading to a *general* union, because
only Python can pick the union branch from the value's Python type. For those paths a
plan is built once per schema: records are split into column lists, maps/arrays are
flattened into offsets + one flat value list, and the union is split into one list per
branch, each of which goes back to ``pa.array``.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from itertools import accumulate, chain
from operator import itemgetter
from typing import Any, Final, TypeAlias

import pyarrow as pa

__all__ = ["RecordConverter", "TypeMappingError", "arrow_schema"]

AvroSchema: TypeAlias = dict[str, Any] | list[Any] | str


class TypeMappingError(ValueError):
    """The Avro schema (or a value) cannot be represented in the columnar schema."""


_PRIMITIVES: Final[dict[str, pa.DataType]] = {
    "null": pa.null(),
    "boolean": pa.bool_(),
    "int": pa.int32(),
    "long": pa.int64(),
    "float": pa.float32(),
    "double": pa.float64(),
    "bytes": pa.binary(),
    "string": pa.string(),
}

# Logical types keyed like fastavro's LOGICAL_READERS ("<underlying>-<logical>"), so we
# convert exactly the logical types fastavro converts; any other combination is, per the
# Avro spec, ignored and the underlying type is used.
_SIMPLE_LOGICAL: Final[dict[str, pa.DataType]] = {
    "long-timestamp-millis": pa.timestamp("ms", tz="UTC"),
    "long-timestamp-micros": pa.timestamp("us", tz="UTC"),
    # fastavro 1.13 does not convert *-nanos and hands us the raw int, which pyarrow
    # accepts for a timestamp column as well (and so would a future datetime).
    "long-timestamp-nanos": pa.timestamp("ns", tz="UTC"),
    "long-local-timestamp-millis": pa.timestamp("ms"),
    "long-local-timestamp-micros": pa.timestamp("us"),
    "long-local-timestamp-nanos": pa.timestamp("ns"),
    "int-date": pa.date32(),
    "int-time-millis": pa.time32("ms"),
    "long-time-micros": pa.time64("us"),
}

_ENUM_TYPE: Final[pa.DataType] = pa.dictionary(pa.int32(), pa.string())
_UUID_STORAGE: Final[pa.DataType] = pa.binary(16)
_INT32_MIN: Final[int] = -(2**31)
_INT32_MAX: Final[int] = 2**31 - 1
_NoneType: Final[type] = type(None)


def _uuid_type() -> pa.DataType:
    """Arrow's canonical UUID extension type, or plain string on old pyarrow.

    ``pa.uuid()`` (pyarrow >= 18) is written as Parquet ``FIXED_LEN_BYTE_ARRAY(16)`` with
    the UUID logical type, which DuckDB reads as ``UUID`` and pyarrow reads back as
    ``uuid.UUID`` -- 16 bytes per value instead of 36 and a real type for queries.
    """
    factory = getattr(pa, "uuid", None)
    return factory() if factory is not None else pa.string()


_UUID_TYPE: Final[pa.DataType] = _uuid_type()
_UUID_IS_EXTENSION: Final[bool] = not pa.types.is_string(_UUID_TYPE)


# --------------------------------------------------------------------------- plan nodes


class _Node:
    """One Avro type in the conversion plan.

    ``arrow_type`` is the final type; ``storage_type`` is the same type with extension
    types replaced by their storage (``pa.array`` cannot build nested extension types
    from Python objects, but a cast storage → extension is cheap). ``needs_python`` is
    true when some value below this node must be inspected in Python (general unions).
    """

    arrow_type: pa.DataType
    storage_type: pa.DataType
    needs_python: bool = False

    def convert(self, values: list[Any]) -> pa.Array:
        """Convert Python values (``None`` allowed for null) into an array of arrow_type."""
        arr = pa.array(values, type=self.storage_type)
        if self.storage_type != self.arrow_type:
            arr = arr.cast(self.arrow_type)
        return arr


class _Leaf(_Node):
    def __init__(self, arrow_type: pa.DataType, storage_type: pa.DataType | None = None):
        self.arrow_type = arrow_type
        self.storage_type = arrow_type if storage_type is None else storage_type


class _RecordNode(_Node):
    """Avro record → struct. Python-side work only for fields that need it."""

    def __init__(self, name: str, fields: list[tuple[str, _Node, bool]]) -> None:
        self.name = name
        self.names = [f[0] for f in fields]
        self.children = [f[1] for f in fields]
        self.fields = [pa.field(n, c.arrow_type, nullable=nl) for n, c, nl in fields]
        storage_fields = [pa.field(n, c.storage_type, nullable=nl) for n, c, nl in fields]
        self.arrow_type = pa.struct(self.fields)
        self.storage_type = pa.struct(storage_fields)
        self.needs_python = any(c.needs_python for c in self.children)
        self.field_set = frozenset(self.names)
        # Fields pyarrow can convert straight from the dicts, in one pa.array call.
        self._direct = [i for i, c in enumerate(self.children) if not c.needs_python]
        self._direct_type = pa.struct([storage_fields[i] for i in self._direct])
        self._python = [i for i, c in enumerate(self.children) if c.needs_python]

    def child_arrays(self, values: list[Any]) -> list[pa.Array]:
        """Arrays for every field, in field order; ``values`` may contain ``None``."""
        out: list[pa.Array | None] = [None] * len(self.children)
        if self._direct:
            grp = pa.array(values, type=self._direct_type)
            for j, i in enumerate(self._direct):
                child = grp.field(j)
                node = self.children[i]
                if node.storage_type != node.arrow_type:
                    child = child.cast(node.arrow_type)
                out[i] = child
        if self._python:
            has_null = None in values
            for i in self._python:
                name = self.names[i]
                if has_null:
                    col = [None if v is None else v.get(name) for v in values]
                else:
                    try:
                        col = list(map(itemgetter(name), values))
                    except KeyError:
                        col = [v.get(name) for v in values]
                out[i] = self.children[i].convert(col)
        return [a for a in out if a is not None]

    def convert(self, values: list[Any]) -> pa.Array:
        if not self.needs_python:
            return super().convert(values)
        mask = _null_mask(values)
        return pa.StructArray.from_arrays(self.child_arrays(values), fields=self.fields, mask=mask)


class _ArrayNode(_Node):
    """Avro array → list<element>."""

    def __init__(self, item: _Node, item_nullable: bool) -> None:
        self.item = item
        self.arrow_type = pa.list_(pa.field("element", item.arrow_type, nullable=item_nullable))
        self.storage_type = pa.list_(
            pa.field("element", item.storage_type, nullable=item_nullable)
        )
        self.needs_python = item.needs_python

    def convert(self, values: list[Any]) -> pa.Array:
        if not self.needs_python:
            return super().convert(values)
        mask = _null_mask(values)
        if mask is not None:
            values = [() if v is None else v for v in values]
        offsets = pa.array(accumulate(map(len, values), initial=0), type=pa.int32())
        items = self.item.convert(list(chain.from_iterable(values)))
        return pa.ListArray.from_arrays(offsets, items, type=self.arrow_type, mask=mask)


class _MapNode(_Node):
    """Avro map<string, T> → Arrow map<string, T> (Parquet MAP, string keys)."""

    def __init__(self, value: _Node, value_nullable: bool) -> None:
        self.value = value
        self.arrow_type = pa.map_(
            pa.string(), pa.field("value", value.arrow_type, nullable=value_nullable)
        )
        self.storage_type = pa.map_(
            pa.string(), pa.field("value", value.storage_type, nullable=value_nullable)
        )
        self.needs_python = value.needs_python

    def convert(self, values: list[Any]) -> pa.Array:
        if not self.needs_python:
            return super().convert(values)  # pa.array takes dicts for map types
        mask = _null_mask(values)
        if mask is not None:
            values = [_EMPTY_MAP if v is None else v for v in values]
        offsets = pa.array(accumulate(map(len, values), initial=0), type=pa.int32())
        keys = pa.array(list(chain.from_iterable(values)), type=pa.string())
        items = self.value.convert(list(chain.from_iterable(map(dict.values, values))))
        return pa.MapArray.from_arrays(offsets, keys, items, type=self.arrow_type, mask=mask)


_EMPTY_MAP: Final[dict[str, Any]] = {}


class _Branch:
    """One non-null branch of a general union: its column name, plan and value test.

    ``py_types`` are the Python types fastavro produces for this branch; ``strict``
    decides between several branches claiming the same Python type (int vs long,
    string vs enum, several records, ...).
    """

    def __init__(
        self,
        column: str,
        node: _Node,
        py_types: tuple[type, ...],
        strict: Callable[[Any], bool] | None = None,
        full_name: str | None = None,
    ) -> None:
        self.column = column
        self.node = node
        self.py_types = py_types
        self.strict = strict
        self.full_name = full_name
        self.is_record = isinstance(node, _RecordNode)


class _UnionNode(_Node):
    """General union → struct with one optional field per non-null branch.

    Exactly one field is set per non-null value; a null value makes the struct null.
    """

    def __init__(self, branches: list[_Branch], nullable: bool, avro_desc: str) -> None:
        self.branches = branches
        self.nullable = nullable
        self.avro_desc = avro_desc
        self.fields = [pa.field(b.column, b.node.arrow_type, nullable=True) for b in branches]
        self.arrow_type = pa.struct(self.fields)
        self.storage_type = pa.struct(
            [pa.field(b.column, b.node.storage_type, nullable=True) for b in branches]
        )
        self.needs_python = True
        # Candidate branches per Python type; for dicts records come before maps because a
        # decoded record dict always has exactly the record's field names as keys.
        cands: dict[type, list[int]] = {}
        for idx, b in enumerate(branches):
            for t in b.py_types:
                cands.setdefault(t, []).append(idx)
        if dict in cands:
            cands[dict].sort(key=lambda i: not branches[i].is_record)
        self._cands = cands
        # Unambiguous Python types resolve with one dict lookup (the hot path).
        self._fast: dict[type, int] = {t: c[0] for t, c in cands.items() if len(c) == 1}
        # None is accepted even for a union without "null": the parent (a null record,
        # list or map slot) hands its children None placeholders.
        self._fast[_NoneType] = -1
        self._by_name: dict[str, int] = {}
        for idx, b in enumerate(branches):
            if b.full_name is not None:
                self._by_name.setdefault(b.full_name, idx)
                self._by_name.setdefault(b.full_name.rsplit(".", 1)[-1], idx)

    def _resolve(self, v: Any) -> tuple[int, Any]:
        """Pick the branch for a value the fast lookup could not decide."""
        cands = self._cands.get(type(v))
        if cands is None:
            # fastavro's return_record_name / return_named_type: ("name", value)
            if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str):
                idx = self._by_name.get(v[0])
                if idx is not None:
                    return idx, v[1]
            cands = [
                i for i, b in enumerate(self.branches) if isinstance(v, b.py_types)
            ]
            if not cands:
                raise TypeMappingError(
                    f"value {v!r} of type {type(v).__name__} matches no branch of union "
                    f"{self.avro_desc}"
                )
        for i in cands:
            strict = self.branches[i].strict
            if strict is None or strict(v):
                return i, v
        return cands[0], v

    def convert(self, values: list[Any]) -> pa.Array:
        n = len(values)
        cols: list[list[Any]] = [[None] * n for _ in self.branches]
        used = [False] * len(self.branches)
        has_null = False
        fast_get = self._fast.get
        for j, v in enumerate(values):
            k = fast_get(type(v))
            if k is None:
                k, v = self._resolve(v)
            if k < 0:
                has_null = True
                continue
            cols[k][j] = v
            used[k] = True
        children = [
            b.node.convert(cols[k]) if used[k] else pa.nulls(n, type=b.node.arrow_type)
            for k, b in enumerate(self.branches)
        ]
        mask = pa.array([v is None for v in values], type=pa.bool_()) if has_null else None
        return pa.StructArray.from_arrays(children, fields=self.fields, mask=mask)


def _null_mask(values: list[Any]) -> pa.Array | None:
    if None not in values:
        return None
    return pa.array([v is None for v in values], type=pa.bool_())


# --------------------------------------------------------------------------- schema walk


class _Mapper:
    """Resolves names (with namespaces) and builds the plan for one Avro schema."""

    def __init__(self) -> None:
        self.named: dict[str, Any] = {}
        self.stack: list[str] = []

    @staticmethod
    def _fullname(schema: Mapping[str, Any], namespace: str | None) -> str:
        name = schema.get("name")
        if not isinstance(name, str) or not name:
            raise TypeMappingError(f"named Avro type without a name: {schema!r}")
        if "." in name:
            return name
        ns = schema.get("namespace", namespace)
        return f"{ns}.{name}" if ns else name

    def _lookup(self, name: str, namespace: str | None) -> tuple[str, Any]:
        candidates = [name] if "." in name else ([f"{namespace}.{name}"] if namespace else [])
        candidates.append(name)
        for c in candidates:
            if c in self.named:
                return c, self.named[c]
        raise TypeMappingError(f"unknown Avro type name {name!r}")

    def node(self, schema: Any, namespace: str | None) -> tuple[_Node, bool]:
        """Return (plan node, nullable) for an Avro schema."""
        if isinstance(schema, list):
            return self._union(schema, namespace)
        if isinstance(schema, str):
            if schema in _PRIMITIVES:
                return _Leaf(_PRIMITIVES[schema]), schema == "null"
            full, definition = self._lookup(schema, namespace)
            if full in self.stack:
                raise TypeMappingError(
                    f"recursive Avro type {full!r} (references itself via "
                    f"{' -> '.join([*self.stack[self.stack.index(full):], full])}) "
                    "cannot be mapped to a columnar schema"
                )
            ns = full.rsplit(".", 1)[0] if "." in full else None
            return self._named(definition, full, ns)
        if not isinstance(schema, Mapping):
            raise TypeMappingError(f"invalid Avro schema: {schema!r}")
        typ = schema.get("type")
        if isinstance(typ, (list, Mapping)):
            return self.node(typ, namespace)
        if typ in ("record", "error", "enum", "fixed"):
            full = self._fullname(schema, namespace)
            if full in self.stack:
                raise TypeMappingError(f"recursive Avro type {full!r} cannot be columnar")
            self.named[full] = schema
            ns = full.rsplit(".", 1)[0] if "." in full else None
            return self._named(schema, full, ns)
        if typ == "array":
            item, item_null = self.node(schema.get("items"), namespace)
            return _ArrayNode(item, item_null), False
        if typ == "map":
            value, value_null = self.node(schema.get("values"), namespace)
            return _MapNode(value, value_null), False
        if typ in _PRIMITIVES:
            logical = schema.get("logicalType")
            if isinstance(logical, str):
                mapped = self._logical(typ, logical, schema)
                if mapped is not None:
                    return mapped, False
            return _Leaf(_PRIMITIVES[typ]), typ == "null"
        if isinstance(typ, str):
            return self.node(typ, namespace)  # {"type": "SomeNamedType"}
        raise TypeMappingError(f"invalid Avro schema: {schema!r}")

    def _named(self, schema: Mapping[str, Any], full: str, ns: str | None) -> tuple[_Node, bool]:
        typ = schema["type"]
        if typ == "enum":
            # Built as string, then cast: pa.array fills a non-nullable dictionary child of
            # a null struct with index 0 into an empty dictionary (an invalid array), while
            # a string child gets "" and casts to a valid dictionary array.
            return _Leaf(_ENUM_TYPE, pa.string()), False
        if typ == "fixed":
            size = schema.get("size")
            if not isinstance(size, int) or size < 0:
                raise TypeMappingError(f"fixed {full!r} needs a non-negative integer size")
            logical = schema.get("logicalType")
            if isinstance(logical, str):
                mapped = self._logical("fixed", logical, schema)
                if mapped is not None:
                    return mapped, False
            return _Leaf(pa.binary(size)), False
        # record / error
        fields = schema.get("fields")
        if not isinstance(fields, list):
            raise TypeMappingError(f"record {full!r} has no 'fields' list")
        if not fields:
            raise TypeMappingError(
                f"record {full!r} has no fields; Parquet cannot store an empty group"
            )
        self.stack.append(full)
        try:
            out: list[tuple[str, _Node, bool]] = []
            for f in fields:
                child, nullable = self.node(f["type"], ns)
                out.append((f["name"], child, nullable))
        finally:
            self.stack.pop()
        return _RecordNode(full, out), False

    def _logical(self, base: str, logical: str, schema: Mapping[str, Any]) -> _Node | None:
        key = f"{base}-{logical}"
        if key in _SIMPLE_LOGICAL:
            return _Leaf(_SIMPLE_LOGICAL[key])
        if logical == "uuid" and (base == "string" or schema.get("size") == 16):
            # fastavro yields uuid.UUID for string-uuid and 16 raw bytes for fixed-uuid;
            # fixed_size_binary(16) accepts both, then a cast makes it the extension type.
            if _UUID_IS_EXTENSION:
                return _Leaf(_UUID_TYPE, _UUID_STORAGE)
            return _Leaf(pa.string())
        if logical == "decimal" and base in ("bytes", "fixed"):
            precision = schema.get("precision")
            scale = schema.get("scale", 0)
            if not isinstance(precision, int) or not isinstance(scale, int):
                raise TypeMappingError(f"decimal needs integer precision/scale: {schema!r}")
            if not 0 < precision <= 76 or not 0 <= scale <= precision:
                raise TypeMappingError(
                    f"decimal(precision={precision}, scale={scale}) is outside what Arrow "
                    "decimal128/decimal256 can store (1 <= precision <= 76, 0 <= scale <= "
                    "precision)"
                )
            if precision > 38:
                return _Leaf(pa.decimal256(precision, scale))
            return _Leaf(pa.decimal128(precision, scale))
        return None  # unknown or misplaced logical type: the underlying type (Avro spec)

    def _union(self, schema: list[Any], namespace: str | None) -> tuple[_Node, bool]:
        if not schema:
            raise TypeMappingError("empty Avro union")
        nullable = False
        members: list[tuple[Any, _Node]] = []
        for member in schema:
            if member == "null" or (isinstance(member, Mapping) and member.get("type") == "null"):
                nullable = True
                continue
            node, _ = self.node(member, namespace)
            members.append((member, node))
        if not members:
            return _Leaf(pa.null()), True
        if len(members) == 1:
            return members[0][1], nullable
        branches = [self._branch(m, node, namespace) for m, node in members]
        _dedupe_columns(branches)
        desc = json.dumps(schema, default=str)
        if len(desc) > 200:
            desc = desc[:197] + "..."
        return _UnionNode(branches, nullable, desc), nullable

    def _branch(self, member: Any, node: _Node, namespace: str | None) -> _Branch:
        """Describe a union member: column name and the Python values fastavro yields."""
        schema = member
        full: str | None = None
        if isinstance(member, str) and member not in _PRIMITIVES:
            full, schema = self._lookup(member, namespace)
        elif isinstance(member, Mapping) and isinstance(member.get("type"), str):
            if member["type"] in ("record", "error", "enum", "fixed"):
                full = self._fullname(member, namespace)
            elif member["type"] not in _PRIMITIVES and member["type"] not in ("array", "map"):
                full, schema = self._lookup(member["type"], namespace)
        typ = schema if isinstance(schema, str) else schema.get("type")
        short = full.rsplit(".", 1)[-1] if full else str(typ)
        t = node.arrow_type
        if isinstance(node, _RecordNode):
            fs = node.field_set
            return _Branch(short, node, (dict,), lambda v: v.keys() == fs, full)
        if isinstance(node, _MapNode):
            return _Branch("map", node, (dict,))
        if isinstance(node, _ArrayNode):
            return _Branch("array", node, (list, tuple))
        if typ == "enum":
            symbols = frozenset(schema.get("symbols", ()))
            return _Branch(short, node, (str,), lambda v: v in symbols, full)
        if (t == _UUID_TYPE and _UUID_IS_EXTENSION) or (
            pa.types.is_string(t) and isinstance(schema, Mapping)
            and schema.get("logicalType") == "uuid"
        ):
            if typ == "fixed":
                return _Branch(short, node, (uuid.UUID, bytes), _len_is(16), full)
            return _Branch(short, node, (uuid.UUID,), None, full)
        if pa.types.is_timestamp(t):
            if t.unit == "ns":
                return _Branch(short, node, (int, _dt.datetime), None, full)
            if t.tz is not None:
                return _Branch(short, node, (_dt.datetime,), _is_aware, full)
            return _Branch(short, node, (_dt.datetime,), _is_naive, full)
        if pa.types.is_decimal(t):
            return _Branch(short, node, (decimal.Decimal,), None, full)
        if pa.types.is_date(t):
            return _Branch(short, node, (_dt.date,), None, full)
        if pa.types.is_time(t):
            return _Branch(short, node, (_dt.time,), None, full)
        if typ == "fixed":
            size = t.byte_width
            return _Branch(short, node, (bytes,), _len_is(size), full)
        simple: dict[str, tuple[tuple[type, ...], Callable[[Any], bool] | None]] = {
            "boolean": ((bool,), None),
            "int": ((int,), _fits_int32),
            "long": ((int,), None),
            "float": ((float,), None),
            "double": ((float,), None),
            "string": ((str,), None),
            "bytes": ((bytes,), None),
        }
        py_types, strict = simple.get(str(typ), ((object,), None))
        return _Branch(short, node, py_types, strict, full)


def _fits_int32(v: Any) -> bool:
    return _INT32_MIN <= v <= _INT32_MAX  # type: ignore[no-any-return]


def _is_aware(v: Any) -> bool:
    return v.tzinfo is not None


def _is_naive(v: Any) -> bool:
    return v.tzinfo is None


def _len_is(size: int) -> Callable[[Any], bool]:
    return lambda v: len(v) == size


def _dedupe_columns(branches: list[_Branch]) -> None:
    """Named types with equal short names in different namespaces: use the full name."""
    seen: dict[str, int] = {}
    for b in branches:
        seen[b.column] = seen.get(b.column, 0) + 1
    for b in branches:
        if seen[b.column] > 1 and b.full_name:
            b.column = b.full_name.replace(".", "_")
    taken: set[str] = set()
    for b in branches:
        base, n = b.column, 1
        while b.column in taken:
            n += 1
            b.column = f"{base}_{n}"
        taken.add(b.column)


def _load(avro_schema: AvroSchema) -> Any:
    if isinstance(avro_schema, str):
        text = avro_schema.strip()
        if text[:1] in ("{", "[", '"'):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise TypeMappingError(f"Avro schema is not valid JSON: {exc}") from exc
    return avro_schema


def _top_record(avro_schema: AvroSchema, mapper: _Mapper | None = None) -> _RecordNode:
    schema = _load(avro_schema)
    typ = schema.get("type") if isinstance(schema, Mapping) else schema
    if typ not in ("record", "error"):
        shown = typ if isinstance(typ, str) else json.dumps(schema, default=str)[:100]
        raise TypeMappingError(f"top-level Avro schema must be a record, got {shown!r}")
    node, _ = (mapper or _Mapper()).node(schema, None)
    assert isinstance(node, _RecordNode)
    return node


# --------------------------------------------------------------------------- public API


def arrow_schema(avro_schema: AvroSchema) -> pa.Schema:
    """Arrow schema for a top-level Avro record (raw JSON, JSON text or fastavro-parsed).

    Avro fields that are not nullable (no ``"null"`` in a union) become non-nullable
    Arrow fields, i.e. Parquet ``required`` columns.
    """
    return pa.schema(_top_record(avro_schema).fields)


def decimal_refusal_reason(precision: int, scale: int) -> str:
    """The dead-letter reason for a decimal with more than ``precision`` digits."""
    return (f"value not representable in the column types: a decimal with more than {precision} "
            f"digits does not fit decimal({precision}, {scale})")


def _decimal_refusal(schema: Any, value: Any, mapper: _Mapper, namespace: str | None) -> str | None:
    """The first decimal below ``value`` (decoded from ``schema``) beyond its precision; names are
    resolved as the plan resolved them (``mapper``)."""
    if value is None:
        return None
    if isinstance(schema, str):
        if schema in _PRIMITIVES:
            return None
        full, schema = mapper._lookup(schema, namespace)
        namespace = full.rsplit(".", 1)[0] if "." in full else None
    if isinstance(schema, list):  # a union: every branch the value could have come from
        for branch in schema:
            if (reason := _decimal_refusal(branch, value, mapper, namespace)) is not None:
                return reason
        return None
    if not isinstance(schema, Mapping):
        return None
    t = schema.get("type")
    if isinstance(t, (Mapping, list)) or (isinstance(t, str) and t not in _PRIMITIVES and t not in _COMPLEX):
        return _decimal_refusal(t, value, mapper, namespace)
    if schema.get("logicalType") == "decimal" and t in ("bytes", "fixed"):
        scale = schema.get("scale", 0)
        if isinstance(value, decimal.Decimal) and value.is_finite() and value.as_tuple().exponent != -scale:
            return decimal_refusal_reason(schema["precision"], scale)
        return None
    if t in ("record", "error"):
        full = mapper._fullname(schema, namespace)
        namespace = full.rsplit(".", 1)[0] if "." in full else None
        if isinstance(value, tuple) and len(value) == 2:
            value = value[1]  # (name, record) of a union branch
        if isinstance(value, Mapping):
            for f in schema.get("fields", []):
                if (reason := _decimal_refusal(f.get("type"), value.get(f.get("name")), mapper, namespace)):
                    return reason
    elif t == "array" and isinstance(value, list):
        for item in value:
            if (reason := _decimal_refusal(schema.get("items"), item, mapper, namespace)) is not None:
                return reason
    elif t == "map" and isinstance(value, Mapping):
        for item in value.values():
            if (reason := _decimal_refusal(schema.get("values"), item, mapper, namespace)) is not None:
                return reason
    return None


_COMPLEX: Final = frozenset({"record", "error", "enum", "fixed", "array", "map"})


class RecordConverter:
    """Converts fastavro-decoded records of one writer schema into Arrow record batches.

    Built once per writer schema (the plan is the expensive part); ``to_batch`` is then
    called per batch of decoded dicts. Values are expected as produced by
    ``fastavro.schemaless_reader`` with default options (logical types converted);
    records inside unions may also be given as ``(name, dict)`` tuples
    (``return_record_name=True``), which is the only way to tell apart two record
    branches with the same field names.
    """

    def __init__(self, avro_schema: AvroSchema, extra_fields: Sequence[pa.Field] = ()) -> None:
        self._avro = _load(avro_schema)
        self._mapper = _Mapper()  # its named types resolve names for decimal_refusal too
        self._root = _top_record(avro_schema, self._mapper)
        self._extra = list(extra_fields)
        self.schema: pa.Schema = pa.schema([*self._root.fields, *self._extra])
        self._avro_schema = pa.schema(self._root.fields)
        self._required = [
            i for i, f in enumerate(self._root.fields) if not f.nullable
        ]

    def decimal_refusal(self, record: Any) -> str | None:
        """Why ``record`` holds a decimal its column cannot store, or None.

        A decimal with more digits than its precision: fastavro reads it anyway, rounded to that
        many significant digits (so its exponent is no longer ``-scale``), and pyarrow refuses it
        in words that change with the size of the value. This reason is the one the native
        decoder gives for the same bytes (``native/src/validate.rs``, ``decimal_overflow``), so a
        dead letter reads the same whichever decoder ran."""
        return _decimal_refusal(self._avro, record, self._mapper, None)

    def to_batch(
        self, records: list[dict[str, Any]], extra_columns: Sequence[pa.Array] = ()
    ) -> pa.RecordBatch:
        """Convert decoded records; ``extra_columns`` line up with ``extra_fields``."""
        if len(extra_columns) != len(self._extra):
            raise ValueError(
                f"expected {len(self._extra)} extra columns, got {len(extra_columns)}"
            )
        n = len(records)
        arrays: list[pa.Array] = self._root.child_arrays(records) if n else [
            pa.array([], type=f.type) for f in self._root.fields
        ]
        for i in self._required:
            if arrays[i].null_count:
                raise TypeMappingError(
                    f"field {self._root.names[i]!r} is not nullable in the Avro schema "
                    "but a record has no value for it"
                )
        for field, col in zip(self._extra, extra_columns, strict=True):
            if len(col) != n:
                raise ValueError(f"extra column {field.name!r} has {len(col)} rows, want {n}")
            if col.type != field.type:
                col = col.cast(field.type)
            arrays.append(col)
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)
