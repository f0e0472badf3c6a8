"""A small, generic, lossless codec for the Thrift *compact* protocol.

Why this exists
---------------
Rolling a file merges already-encoded Parquet pieces without re-encoding their pages; only the
footer (a Thrift-compact ``FileMetaData``) has to be rewritten, with row groups appended and their
file offsets shifted.  For the result to be a faithful Parquet file (and byte-identical to what a
single pyarrow ``ParquetWriter`` would have produced) every footer field must survive the
decode → edit → encode round trip, including fields that a given IDL does not know about.  No
Python library does that today:

* fastparquet's bundled thrift writer silently drops ``ColumnMetaData`` fields 14–16
  (``bloom_filter_offset``/``bloom_filter_length``/``size_statistics``), which pyarrow writes;
* thriftpy2 (and any IDL-generated code) skips every field id missing from its IDL on decode,
  so a footer written by a newer Parquet writer loses data when re-encoded.

This module therefore decodes a struct into an IDL-free tree that keeps, for every field, its
numeric id, its wire type and its position, and for every container its element type(s), so the
tree can be encoded back exactly.  Callers (see :mod:`consumer.parquet_merge`) address fields by
their numeric Parquet IDL id.

Wire format notes (compact protocol)
------------------------------------
* Field header: ``(delta << 4) | type`` when ``0 < id - last_id <= 15`` (short form), otherwise a
  ``type`` byte followed by the zigzag-varint i16 id (long form).  ``last_id`` is per struct and
  is updated by both forms.
* Booleans that are struct fields have no payload: the value lives in the header's type nibble
  (1 = true, 2 = false).  Inside lists/sets/maps they are one byte (1 = true, 2 = false).
* i16/i32/i64 are zigzag varints, i8 a raw byte, double 8 bytes little-endian, binary/string a
  varint length plus the bytes.
* List/set header: ``(size << 4) | elem_type`` if ``size < 15`` else ``0xF0 | elem_type`` followed
  by a varint size.  Map header: a single ``0`` byte when empty, otherwise a varint size and one
  ``(key_type << 4) | value_type`` byte.

Encoding is canonical (the forms every Thrift library emits: short field headers whenever
possible, minimal varints, short list headers for fewer than 15 elements).  Decode → encode is
therefore byte-identical for any canonically written input, which is what pyarrow/Arrow C++ (the
Apache Thrift C++ library) writes; the unit tests check this against pyarrow's own footers.
The only information an empty map carries is its size, so its key/value types decode as 0.

Speed: footers with a few hundred row groups × hundreds of columns hold millions of values, so
the decoder is a tight recursive function over ``bytes`` indices and the encoder appends to a
single ``bytearray`` (no quadratic concatenation).
"""

from __future__ import annotations

import gc
import struct as _struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Union

__all__ = [
    "BINARY",
    "BOOL",
    "BOOL_FALSE",
    "BOOL_TRUE",
    "BYTE",
    "DOUBLE",
    "I16",
    "I32",
    "I64",
    "LIST",
    "MAP",
    "SET",
    "STOP",
    "STRUCT",
    "Field",
    "List",
    "Map",
    "Struct",
    "ThriftDecodeError",
    "Value",
    "decode_struct",
    "decode_struct_at",
    "encode_struct",
    "encode_struct_into",
    "paused_gc",
]

# Compact protocol type codes.
STOP = 0
BOOL_TRUE = 1
BOOL_FALSE = 2
BOOL = BOOL_TRUE  #: canonical type code used for a boolean field/element (value decides the nibble)
BYTE = 3
I16 = 4
I32 = 5
I64 = 6
DOUBLE = 7
BINARY = 8
LIST = 9
SET = 10
MAP = 11
STRUCT = 12

_TYPE_NAMES = {
    BOOL_TRUE: "bool",
    BOOL_FALSE: "bool",
    BYTE: "i8",
    I16: "i16",
    I32: "i32",
    I64: "i64",
    DOUBLE: "double",
    BINARY: "binary",
    LIST: "list",
    SET: "set",
    MAP: "map",
    STRUCT: "struct",
}

#: Nesting deeper than this is treated as corrupt input (Parquet footers nest ~6 levels).
MAX_DEPTH = 64

Value = Union[bool, int, float, bytes, "Struct", "List", "Map"]

_DOUBLE = _struct.Struct("<d")


class ThriftDecodeError(ValueError):
    """The input is not a well-formed compact-protocol struct (truncated, bad type, too deep)."""


@dataclass(slots=True)
class Field:
    """One struct field as it appears on the wire.

    ``ttype`` is the compact type code (``BOOL``/``BOOL_TRUE``/``BOOL_FALSE`` are all treated as
    "bool": the encoder derives the header nibble from ``value``).  ``value`` is a ``bool`` for
    bools, an ``int`` for i8/i16/i32/i64, a ``float`` for double, ``bytes`` for binary/string, a
    :class:`Struct`, a :class:`List` (for both list and set; ``ttype`` tells which) or a
    :class:`Map`.
    """

    id: int
    ttype: int
    value: Value


@dataclass(slots=True)
class List:
    """A list or set: the element type code is kept so empty containers round-trip."""

    etype: int
    items: list[Value] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Value]:
        return iter(self.items)


@dataclass(slots=True)
class Map:
    """A map as an ordered list of ``(key, value)`` pairs with both type codes."""

    ktype: int
    vtype: int
    items: list[tuple[Value, Value]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)


@dataclass(slots=True)
class Struct:
    """A struct as its fields in wire order (unknown field ids included)."""

    fields: list[Field] = field(default_factory=list)

    def find(self, fid: int) -> Field | None:
        """The first field with id ``fid``, or ``None``."""
        for f in self.fields:
            if f.id == fid:
                return f
        return None

    def get(self, fid: int, default: Value | None = None) -> Value | None:
        """The value of field ``fid``, or ``default`` when absent."""
        f = self.find(fid)
        return default if f is None else f.value

    def __contains__(self, fid: object) -> bool:
        return any(f.id == fid for f in self.fields)

    def set(self, fid: int, ttype: int, value: Value) -> None:
        """Replace field ``fid`` in place, or insert it before the first field with a larger id.

        Inserting in id order keeps the encoding identical to what an IDL-generated writer
        (which always writes fields in ascending id order) would produce.
        """
        for i, f in enumerate(self.fields):
            if f.id == fid:
                self.fields[i] = Field(fid, ttype, value)
                return
            if f.id > fid:
                self.fields.insert(i, Field(fid, ttype, value))
                return
        self.fields.append(Field(fid, ttype, value))

    def remove(self, fid: int) -> bool:
        """Drop every field with id ``fid``; return whether any was present."""
        before = len(self.fields)
        self.fields = [f for f in self.fields if f.id != fid]
        return len(self.fields) != before

    def copy(self) -> Struct:
        """A shallow copy: a new field list holding new ``Field`` objects (values shared)."""
        return Struct([Field(f.id, f.ttype, f.value) for f in self.fields])


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector (re-entrant; restores the previous state).

    A big footer is millions of small, all-reachable objects; with the GC on, every few
    thousand allocations it rescans the growing heap, which made decoding a 300 x 300 footer
    and merging 300 pieces 2-3x slower (superlinear).  The trees built here hold no cycles.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# --------------------------------------------------------------------------------------------
# Decoding


def decode_struct(data: bytes | bytearray | memoryview) -> Struct:
    """Decode ``data`` as exactly one struct; trailing bytes are an error."""
    buf = bytes(data)
    s, end = decode_struct_at(buf, 0)
    if end != len(buf):
        raise ThriftDecodeError(f"{len(buf) - end} trailing byte(s) after struct end at {end}")
    return s


def decode_struct_at(buf: bytes, pos: int) -> tuple[Struct, int]:
    """Decode one struct starting at ``pos``; return it and the offset just after its STOP."""
    with paused_gc():
        try:
            return _read_struct(buf, pos, 0)
        except IndexError:
            raise ThriftDecodeError(f"truncated input ({len(buf)} bytes)") from None
        except RecursionError:
            raise ThriftDecodeError("nesting too deep") from None


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    b = buf[pos]
    pos += 1
    if b < 0x80:
        return b, pos
    result = b & 0x7F
    shift = 7
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise ThriftDecodeError(f"varint too long at offset {pos}")


def _read_value(buf: bytes, pos: int, t: int, depth: int) -> tuple[Value, int]:
    """Read one value of compact type ``t`` (container-element context for bools)."""
    if t in (I32, I64, I16):
        b = buf[pos]
        pos += 1
        if b < 0x80:
            return (b >> 1) ^ -(b & 1), pos
        v, pos = _read_varint(buf, pos - 1)
        return (v >> 1) ^ -(v & 1), pos
    if t == BINARY:
        n = buf[pos]
        pos += 1
        if n >= 0x80:
            n, pos = _read_varint(buf, pos - 1)
        end = pos + n
        if end > len(buf):
            raise IndexError
        return buf[pos:end], end
    if t == STRUCT:
        return _read_struct(buf, pos, depth + 1)
    if t in (LIST, SET):
        return _read_list(buf, pos, depth + 1)
    if t in (BOOL_TRUE, BOOL_FALSE):
        return buf[pos] == BOOL_TRUE, pos + 1
    if t == BYTE:
        b = buf[pos]
        return (b - 256 if b > 127 else b), pos + 1
    if t == DOUBLE:
        if pos + 8 > len(buf):
            raise IndexError
        return _DOUBLE.unpack_from(buf, pos)[0], pos + 8
    if t == MAP:
        return _read_map(buf, pos, depth + 1)
    raise ThriftDecodeError(f"unknown compact type {t} at offset {pos}")


def _read_list(buf: bytes, pos: int, depth: int) -> tuple[List, int]:
    if depth > MAX_DEPTH:
        raise ThriftDecodeError("nesting too deep")
    h = buf[pos]
    pos += 1
    size = h >> 4
    etype = h & 0x0F
    if size == 15:
        size, pos = _read_varint(buf, pos)
    if size > len(buf) - pos:
        # Every element takes at least one byte (a struct at least its STOP): corrupt sizes
        # fail here instead of after a long loop.
        raise IndexError
    items: list[Value] = []
    append = items.append
    if etype == STRUCT:
        d = depth + 1
        for _ in range(size):
            s, pos = _read_struct(buf, pos, d)
            append(s)
    else:
        for _ in range(size):
            v, pos = _read_value(buf, pos, etype, depth)
            append(v)
    return List(etype, items), pos


def _read_map(buf: bytes, pos: int, depth: int) -> tuple[Map, int]:
    if depth > MAX_DEPTH:
        raise ThriftDecodeError("nesting too deep")
    size, pos = _read_varint(buf, pos)
    if size == 0:
        return Map(0, 0, []), pos
    if 2 * size > len(buf) - pos:
        raise IndexError
    kv = buf[pos]
    pos += 1
    kt = kv >> 4
    vt = kv & 0x0F
    items: list[tuple[Value, Value]] = []
    for _ in range(size):
        k, pos = _read_value(buf, pos, kt, depth)
        v, pos = _read_value(buf, pos, vt, depth)
        items.append((k, v))
    return Map(kt, vt, items), pos


def _read_struct(buf: bytes, pos: int, depth: int) -> tuple[Struct, int]:
    if depth > MAX_DEPTH:
        raise ThriftDecodeError("nesting too deep")
    fields: list[Field] = []
    append = fields.append
    last = 0
    while True:
        h = buf[pos]
        pos += 1
        t = h & 0x0F
        if t == STOP:
            if h != 0:
                raise ThriftDecodeError(f"bad field header 0x{h:02x} at offset {pos - 1}")
            return Struct(fields), pos
        delta = h >> 4
        if delta:
            fid = last + delta
        else:
            z, pos = _read_varint(buf, pos)
            fid = (z >> 1) ^ -(z & 1)
        last = fid
        if t == BOOL_TRUE:
            append(Field(fid, BOOL_TRUE, True))
        elif t == BOOL_FALSE:
            append(Field(fid, BOOL_FALSE, False))
        elif t in (I32, I64, I16):
            b = buf[pos]
            pos += 1
            if b < 0x80:
                append(Field(fid, t, (b >> 1) ^ -(b & 1)))
            else:
                v, pos = _read_varint(buf, pos - 1)
                append(Field(fid, t, (v >> 1) ^ -(v & 1)))
        else:
            val, pos = _read_value(buf, pos, t, depth)
            append(Field(fid, t, val))


# --------------------------------------------------------------------------------------------
# Encoding


def encode_struct(s: Struct) -> bytes:
    """Encode ``s`` canonically (see the module docstring)."""
    out = bytearray()
    encode_struct_into(out, s)
    return bytes(out)


def encode_struct_into(out: bytearray, s: Struct) -> None:
    """Append the encoding of ``s`` to ``out``."""
    with paused_gc():
        _write_struct(out, s, 0)


def _write_varint(out: bytearray, v: int) -> None:
    if v < 0:
        raise ValueError(f"varint must be non-negative, got {v}")
    while v > 0x7F:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def _zigzag(v: int, bits: int) -> int:
    lo = -(1 << (bits - 1))
    if not lo <= v < -lo:
        raise ValueError(f"value {v} does not fit in i{bits}")
    return (v << 1) ^ (v >> (bits - 1))


_INT_BITS = {I16: 16, I32: 32, I64: 64}


def _write_value(out: bytearray, t: int, v: Value, depth: int) -> None:
    """Write one value of type ``t`` in container-element context (bools are one byte)."""
    if t in (I32, I64, I16):
        if not isinstance(v, int):
            raise TypeError(f"expected int for {_TYPE_NAMES[t]}, got {type(v).__name__}")
        z = _zigzag(v, _INT_BITS[t])
        if z < 0x80:
            out.append(z)
        else:
            _write_varint(out, z)
    elif t == BINARY:
        if not isinstance(v, bytes | bytearray):
            raise TypeError(f"expected bytes for binary, got {type(v).__name__}")
        _write_varint(out, len(v))
        out += v
    elif t == STRUCT:
        if not isinstance(v, Struct):
            raise TypeError(f"expected Struct, got {type(v).__name__}")
        _write_struct(out, v, depth + 1)
    elif t in (LIST, SET):
        if not isinstance(v, List):
            raise TypeError(f"expected List, got {type(v).__name__}")
        _write_list(out, v, depth + 1)
    elif t in (BOOL_TRUE, BOOL_FALSE):
        out.append(BOOL_TRUE if v else BOOL_FALSE)
    elif t == BYTE:
        if not isinstance(v, int) or not -128 <= v <= 255:
            raise ValueError(f"bad i8 value {v!r}")
        out.append(v & 0xFF)
    elif t == DOUBLE:
        if not isinstance(v, float | int):
            raise TypeError(f"expected float for double, got {type(v).__name__}")
        out += _DOUBLE.pack(v)
    elif t == MAP:
        if not isinstance(v, Map):
            raise TypeError(f"expected Map, got {type(v).__name__}")
        _write_map(out, v, depth + 1)
    else:
        raise ValueError(f"unknown compact type {t}")


def _write_list(out: bytearray, lst: List, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError("nesting too deep")
    etype = lst.etype
    if not 0 < etype <= STRUCT:
        raise ValueError(f"bad list element type {etype}")
    items = lst.items
    n = len(items)
    if n < 15:
        out.append((n << 4) | etype)
    else:
        out.append(0xF0 | etype)
        _write_varint(out, n)
    if etype == STRUCT:
        d = depth + 1
        for item in items:
            if not isinstance(item, Struct):
                raise TypeError(f"expected Struct list element, got {type(item).__name__}")
            _write_struct(out, item, d)
    else:
        for item in items:
            _write_value(out, etype, item, depth)


def _write_map(out: bytearray, m: Map, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError("nesting too deep")
    if not m.items:
        out.append(0)
        return
    _write_varint(out, len(m.items))
    out.append(((m.ktype & 0x0F) << 4) | (m.vtype & 0x0F))
    for k, v in m.items:
        _write_value(out, m.ktype, k, depth)
        _write_value(out, m.vtype, v, depth)


def _write_struct(out: bytearray, s: Struct, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError("nesting too deep")
    last = 0
    for f in s.fields:
        fid = f.id
        t = f.ttype
        v = f.value
        if t in (BOOL_TRUE, BOOL_FALSE):
            t = BOOL_TRUE if v else BOOL_FALSE
        elif not 0 < t <= STRUCT:
            raise ValueError(f"bad type {t} for field {fid}")
        delta = fid - last
        if 0 < delta <= 15:
            out.append((delta << 4) | t)
        else:
            out.append(t)
            _write_varint(out, _zigzag(fid, 16))
        last = fid
        if t in (BOOL_TRUE, BOOL_FALSE):
            continue
        if t in (I32, I64, I16):
            if not isinstance(v, int):
                raise TypeError(f"field {fid}: expected int, got {type(v).__name__}")
            z = _zigzag(v, _INT_BITS[t])
            if z < 0x80:
                out.append(z)
            else:
                _write_varint(out, z)
        else:
            _write_value(out, t, v, depth)
    out.append(STOP)
