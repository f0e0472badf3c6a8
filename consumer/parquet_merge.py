"""Merge Parquet "pieces" into one final Parquet file without re-encoding any page.

Why
---
Each row group is first written (by pyarrow, fixed writer options, one row group per piece, page
index off) as a standalone Parquet object, so it can be committed to S3 on its own.  Rolling a
file must then produce one Parquet file holding all those row groups.  Re-reading and re-writing
the data would cost CPU and could change the encoding; instead the page bytes are concatenated
verbatim and only the footer is rebuilt::

    final = b"PAR1" + body(piece_1) + ... + body(piece_n) + merged_footer + len_le32 + b"PAR1"

where ``body(p)`` is ``p[4:footer_start]``.  The merged footer is the first piece's
``FileMetaData`` with ``num_rows`` summed and every piece's row groups appended, each with its
absolute file offsets shifted by the number of body bytes that precede that piece's body
(``position_in_final - 4``).  With the page index off this is byte-identical to what a single
``ParquetWriter`` writing the same row groups produces (the unit tests check exactly that).

The footer is handled by :mod:`consumer.thrift_compact`, a lossless generic codec, because no
Python Thrift/Parquet library round-trips every footer field (see that module's docstring).

Offsets shifted (Parquet IDL field ids): ``RowGroup.file_offset`` (5); ``ColumnChunk.file_offset``
(2, written as 0 by pyarrow, shifted only when non-zero); ``ColumnMetaData`` (``ColumnChunk``
field 3) ``data_page_offset`` (9), ``index_page_offset`` (10), ``dictionary_page_offset`` (11),
``bloom_filter_offset`` (14).  An offset of 0 means "none" (position 0 is the magic) and is left
alone: pyarrow writes ``data_page_offset = 0`` for the column chunks of an empty row group.
``RowGroup.ordinal`` (7), when present, is renumbered 0..n-1.

Bloom filters (pyarrow ``bloom_filter_options``) are merged correctly, since they are written
inside the piece body and only referenced by ``bloom_filter_offset``; but a single writer puts
all bloom filters after the last row group, so that merged file is valid, not byte-identical.

The page index is refused: ``OffsetIndex``/``ColumnIndex`` structures live *outside* the footer,
and the OffsetIndex's ``PageLocation.offset`` values are absolute file positions that would be
stale after concatenation (fixing them would mean rewriting bytes inside the bodies).  Encrypted
footers (``PARE``) are not supported either.

This module is pure bytes logic and deliberately does not import pyarrow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from consumer import thrift_compact as tc

__all__ = [
    "MAGIC",
    "ParquetMergeError",
    "PieceLayout",
    "final_size",
    "footer_length",
    "merge_pieces",
    "merged_trailer",
    "piece_layout",
    "read_key_value_metadata",
    "read_piece_layout",
]

MAGIC = b"PAR1"
_MAGIC_ENCRYPTED = b"PARE"

# FileMetaData field ids
_FMD_SCHEMA = 2
_FMD_NUM_ROWS = 3
_FMD_ROW_GROUPS = 4
_FMD_KV = 5
# RowGroup
_RG_COLUMNS = 1
_RG_FILE_OFFSET = 5
_RG_ORDINAL = 7
# ColumnChunk
_CC_FILE_PATH = 1
_CC_FILE_OFFSET = 2
_CC_META = 3
_CC_OFFSET_INDEX_OFFSET = 4
_CC_COLUMN_INDEX_OFFSET = 6
# ColumnMetaData offsets
_CMD_OFFSETS = (9, 10, 11, 14)  # data_page, index_page, dictionary_page, bloom_filter
# KeyValue
_KV_KEY = 1
_KV_VALUE = 2

_I16_MAX = 0x7FFF


class ParquetMergeError(ValueError):
    """A piece cannot be read or merged.

    ``needed`` is set when the caller passed too short a tail: it is the number of trailing bytes
    of the object that :func:`read_piece_layout` needs (footer length + 8).
    """

    def __init__(self, message: str, *, needed: int | None = None) -> None:
        super().__init__(message)
        self.needed = needed


@dataclass(frozen=True)
class PieceLayout:
    """Where the parts of one piece object are, plus its (still encoded) footer."""

    size: int  # total bytes of the piece object
    footer_start: int  # offset where the thrift footer begins (= size - 8 - footer_len)
    footer: bytes  # the thrift-encoded FileMetaData of the piece
    num_rows: int
    num_row_groups: int

    @property
    def body_start(self) -> int:
        return 4

    @property
    def body_len(self) -> int:
        return self.footer_start - 4


def footer_length(tail8: bytes) -> int:
    """The footer length stored in the last 8 bytes of a Parquet object (validates ``PAR1``).

    ``tail8`` may be longer than 8 bytes; only its last 8 are used.
    """
    if len(tail8) < 8:
        raise ParquetMergeError(f"need the last 8 bytes of the object, got {len(tail8)}", needed=8)
    magic = bytes(tail8[-4:])
    if magic != MAGIC:
        if magic == _MAGIC_ENCRYPTED:
            raise ParquetMergeError("bad magic: encrypted footer (PARE) is not supported")
        raise ParquetMergeError(f"bad magic at end of object: {magic!r}, expected {MAGIC!r}")
    return int.from_bytes(tail8[-8:-4], "little")


def _decode_footer(footer: bytes) -> tc.Struct:
    try:
        return tc.decode_struct(footer)
    except tc.ThriftDecodeError as e:
        raise ParquetMergeError(f"corrupt or truncated footer ({len(footer)} bytes): {e}") from e


def _row_groups(fmd: tc.Struct) -> list[tc.Value]:
    rgs = fmd.get(_FMD_ROW_GROUPS)
    if rgs is None:
        return []
    if not isinstance(rgs, tc.List) or rgs.etype != tc.STRUCT:
        raise ParquetMergeError("footer field row_groups (4) is not a list of structs")
    return rgs.items


def _int_field(s: tc.Struct, fid: int, what: str) -> int:
    v = s.get(fid)
    if not isinstance(v, int) or isinstance(v, bool):
        raise ParquetMergeError(f"footer field {what} ({fid}) missing or not an integer")
    return v


def read_layout(fetch: Callable[[int, int], bytes], size: int, guess: int = 64 * 1024) -> PieceLayout:
    """Layout of an object of ``size`` bytes that is read through ``fetch(start, end)`` (a ranged
    GET): one request for the last ``guess`` bytes, and a second one only if the footer is larger."""
    tail = fetch(max(0, size - guess), size)
    try:
        return read_piece_layout(tail, size)
    except ParquetMergeError as exc:
        if not exc.needed or exc.needed <= len(tail):
            raise
        return read_piece_layout(fetch(max(0, size - exc.needed), size), size)


def read_piece_layout(tail: bytes, size: int) -> PieceLayout:
    """Parse the layout of a piece from its last ``len(tail)`` bytes and its total ``size``.

    Lets a caller fetch only a suffix of an S3 object (a ranged GET).  If ``tail`` is shorter
    than footer + 8 bytes, raises :class:`ParquetMergeError` with ``needed`` set to that count
    so the caller can fetch exactly enough and retry.
    """
    if len(tail) > size:
        raise ParquetMergeError(f"tail ({len(tail)} bytes) is longer than the object ({size})")
    if size < 12:
        raise ParquetMergeError(f"object of {size} bytes is too small to be a Parquet file")
    flen = footer_length(tail)
    needed = flen + 8
    if needed + 4 > size:
        raise ParquetMergeError(
            f"footer length {flen} does not fit in an object of {size} bytes (truncated object?)"
        )
    if len(tail) < needed:
        raise ParquetMergeError(
            f"tail too short: footer needs the last {needed} bytes, got {len(tail)}",
            needed=needed,
        )
    if len(tail) == size and bytes(tail[:4]) != MAGIC:
        raise ParquetMergeError(f"bad magic at start of object: {bytes(tail[:4])!r}")
    footer = bytes(tail[len(tail) - needed : len(tail) - 8])
    num_rows, num_row_groups = _footer_counts(footer)
    return PieceLayout(
        size=size,
        footer_start=size - needed,
        footer=footer,
        num_rows=num_rows,
        num_row_groups=num_row_groups,
    )


@lru_cache(maxsize=64)
def _footer_counts(footer: bytes) -> tuple[int, int]:
    """A footer's row and row-group counts. Remembered for the last few footers, because one piece
    is laid out again and again (a roll, then the recoveries and ``finish`` runs after a crash) and
    decoding a wide footer in Python costs milliseconds; a footer that does not decode raises
    every time. At most 64 footers of a few KB each are kept."""
    fmd = _decode_footer(footer)
    return _int_field(fmd, _FMD_NUM_ROWS, "num_rows"), len(_row_groups(fmd))


def piece_layout(data: bytes) -> PieceLayout:
    """:func:`read_piece_layout` for a whole piece held in memory (also checks the head magic)."""
    if bytes(data[:4]) != MAGIC:
        raise ParquetMergeError(f"bad magic at start of object: {bytes(data[:4])!r}")
    return read_piece_layout(data, len(data))


def read_key_value_metadata(footer: bytes) -> dict[str, str]:
    """The footer's ``key_value_metadata`` as a dict (a key without a value maps to ``""``).

    Strings are decoded as UTF-8 with ``surrogateescape`` so no byte is lost.
    """
    return {k: v for k, v in _kv_pairs(_decode_footer(footer))}


def _kv_pairs(fmd: tc.Struct) -> list[tuple[str, str]]:
    kv = fmd.get(_FMD_KV)
    if kv is None:
        return []
    if not isinstance(kv, tc.List):
        raise ParquetMergeError("footer field key_value_metadata (5) is not a list")
    out: list[tuple[str, str]] = []
    for item in kv.items:
        if not isinstance(item, tc.Struct):
            raise ParquetMergeError("key_value_metadata entry is not a struct")
        key = item.get(_KV_KEY)
        value = item.get(_KV_VALUE, b"")
        if not isinstance(key, bytes) or not isinstance(value, bytes):
            raise ParquetMergeError("key_value_metadata entry without a binary key/value")
        out.append((key.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")))
    return out


def _with_key_value_metadata(fmd: tc.Struct, updates: Mapping[str, str]) -> None:
    """Set/replace keys in ``fmd``'s key_value_metadata, keeping every other entry.

    Existing keys (e.g. ``ARROW:schema``, which pyarrow needs to restore Arrow types) keep their
    position and get the new value; new keys are appended in ``updates`` order.
    """
    if not updates:
        return
    kv = fmd.get(_FMD_KV)
    entries: list[tc.Value] = list(kv.items) if isinstance(kv, tc.List) else []
    pending = {k.encode("utf-8", "surrogateescape"): v for k, v in updates.items()}
    new_entries: list[tc.Value] = []
    for item in entries:
        if isinstance(item, tc.Struct):
            key = item.get(_KV_KEY)
            if isinstance(key, bytes) and key in pending:
                item = item.copy()
                item.set(_KV_VALUE, tc.BINARY, pending.pop(key).encode("utf-8", "surrogateescape"))
        new_entries.append(item)
    for key, value in pending.items():
        new_entries.append(
            tc.Struct(
                [
                    tc.Field(_KV_KEY, tc.BINARY, key),
                    tc.Field(_KV_VALUE, tc.BINARY, value.encode("utf-8", "surrogateescape")),
                ]
            )
        )
    fmd.set(_FMD_KV, tc.LIST, tc.List(tc.STRUCT, new_entries))


def _shift(s: tc.Struct, fid: int, delta: int) -> None:
    """Add ``delta`` to offset field ``fid`` if present and non-zero.

    Zero is never a real position (bytes 0..3 are the magic) and writers use it as "none":
    pyarrow writes ``ColumnChunk.file_offset = 0`` always, and ``data_page_offset = 0`` for a
    column chunk of an empty row group (only its dictionary page is written).  A single writer
    keeps those zeros, so must we.
    """
    f = s.find(fid)
    if f is None:
        return
    if not isinstance(f.value, int) or isinstance(f.value, bool):
        raise ParquetMergeError(f"offset field {fid} is not an integer")
    if f.value != 0:
        f.value += delta


def _shift_row_group(rg: tc.Value, delta: int, ordinal: int, piece: int) -> tc.Struct:
    """Move every absolute offset of row group ``rg`` by ``delta``, in place.

    In place because the tree was decoded by :func:`merged_trailer` itself and is not shared;
    copying ~10^5 column chunks would cost seconds on big footers.
    """
    if not isinstance(rg, tc.Struct):
        raise ParquetMergeError(f"piece {piece}: row group is not a struct")
    _shift(rg, _RG_FILE_OFFSET, delta)
    ordf = rg.find(_RG_ORDINAL)
    if ordf is not None:
        if ordinal > _I16_MAX:
            raise ParquetMergeError(f"too many row groups for an i16 ordinal: {ordinal + 1}")
        ordf.value = ordinal
    cols = rg.find(_RG_COLUMNS)
    if cols is None or not isinstance(cols.value, tc.List):
        raise ParquetMergeError(f"piece {piece}: row group without a columns list")
    for cc in cols.value.items:
        if not isinstance(cc, tc.Struct):
            raise ParquetMergeError(f"piece {piece}: column chunk is not a struct")
        if _CC_OFFSET_INDEX_OFFSET in cc or _CC_COLUMN_INDEX_OFFSET in cc:
            raise ParquetMergeError(
                f"piece {piece}: page index not supported (column chunk has an offset/column "
                "index whose absolute page offsets would be stale after merging); write pieces "
                "with write_page_index=False"
            )
        if _CC_FILE_PATH in cc:
            raise ParquetMergeError(f"piece {piece}: column chunk refers to an external file (file_path)")
        _shift(cc, _CC_FILE_OFFSET, delta)
        md = cc.get(_CC_META)
        if md is not None:
            if not isinstance(md, tc.Struct):
                raise ParquetMergeError(f"piece {piece}: ColumnMetaData is not a struct")
            for fid in _CMD_OFFSETS:
                _shift(md, fid, delta)
    return rg


def merged_trailer(
    pieces: Sequence[PieceLayout],
    key_value_metadata: Mapping[str, str] | None = None,
) -> bytes:
    """``merged_footer + footer length (4 bytes LE) + b"PAR1"`` for the pieces, in order.

    Every piece must have the same schema (``FileMetaData`` field 2 identical) and no page index;
    otherwise :class:`ParquetMergeError`.  Pieces with 0 row groups are allowed (they contribute
    no rows; their body is normally empty).  ``key_value_metadata`` sets/replaces keys of the
    first piece's key/value metadata (``ARROW:schema`` and other keys are kept).
    """
    with tc.paused_gc():  # see tc.paused_gc: big merged footers are millions of objects
        return _merged_trailer(pieces, key_value_metadata)


def _merged_trailer(pieces: Sequence[PieceLayout], key_value_metadata: Mapping[str, str] | None) -> bytes:
    if not pieces:
        raise ParquetMergeError("nothing to merge: no pieces")
    base = _decode_footer(pieces[0].footer)
    schema = base.get(_FMD_SCHEMA)
    if schema is None:
        raise ParquetMergeError("piece 0: footer has no schema (field 2)")
    row_groups: list[tc.Value] = []
    num_rows = 0
    delta = 0  # body bytes before the current piece's body == its position in final - 4
    for i, piece in enumerate(pieces):
        fmd = base if i == 0 else _decode_footer(piece.footer)
        if i and fmd.get(_FMD_SCHEMA) != schema:
            raise ParquetMergeError(f"schema mismatch: piece {i} has a different schema than piece 0")
        if piece.body_len < 0:
            raise ParquetMergeError(f"piece {i}: footer_start {piece.footer_start} is before 4")
        num_rows += _int_field(fmd, _FMD_NUM_ROWS, "num_rows")
        for rg in _row_groups(fmd):
            row_groups.append(_shift_row_group(rg, delta, len(row_groups), i))
        delta += piece.body_len
    merged = base.copy()
    merged.set(_FMD_NUM_ROWS, tc.I64, num_rows)
    merged.set(_FMD_ROW_GROUPS, tc.LIST, tc.List(tc.STRUCT, row_groups))
    if key_value_metadata:
        _with_key_value_metadata(merged, key_value_metadata)
    out = bytearray()
    tc.encode_struct_into(out, merged)
    flen = len(out)
    out += flen.to_bytes(4, "little")
    out += MAGIC
    return bytes(out)


def final_size(
    pieces: Sequence[PieceLayout],
    key_value_metadata: Mapping[str, str] | None = None,
    *,
    trailer: bytes | None = None,
) -> int:
    """Size of the merged file without materialising it: ``4 + sum(body_len) + len(trailer)``.

    Pass ``trailer`` (from :func:`merged_trailer`) to avoid building the footer twice.
    """
    if trailer is None:
        trailer = merged_trailer(pieces, key_value_metadata)
    return len(MAGIC) + sum(p.body_len for p in pieces) + len(trailer)


def merge_pieces(
    datas: Sequence[bytes],
    key_value_metadata: Mapping[str, str] | None = None,
) -> bytes:
    """The whole merged file in memory: ``PAR1 + bodies + merged_trailer``."""
    layouts = [piece_layout(d) for d in datas]
    trailer = merged_trailer(layouts, key_value_metadata)
    out = bytearray(MAGIC)
    for d, lay in zip(datas, layouts, strict=True):
        out += memoryview(d)[lay.body_start : lay.footer_start]
    out += trailer
    return bytes(out)
