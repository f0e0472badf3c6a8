"""Tests for consumer.parquet_merge.

The strong test: pieces written one row group each, merged, must be byte-identical to one
``ParquetWriter`` writing the same row groups with the same options (page index off).
Metadata replacement is checked by reading back with pyarrow and DuckDB.
"""

from __future__ import annotations

import io
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer import parquet_merge as pm
from consumer import thrift_compact as tc

sys.path.insert(0, str(Path(__file__).parent))
from test_thrift_compact import (
    footer_of,
    map_types,
    random_table,
    tables,
    writer_options,
)

MAP_STR_INT = pa.map_(pa.string(), pa.int64())


def write_piece(table: pa.Table, schema: pa.Schema | None = None, **opts: Any) -> bytes:
    """One piece: a whole file holding ``table`` as exactly one row group."""
    buf = io.BytesIO()
    with pq.ParquetWriter(buf, schema or table.schema, **opts) as w:
        w.write_table(table, row_group_size=max(1, table.num_rows))
    return buf.getvalue()


def slices(table: pa.Table, sizes: Sequence[int]) -> list[pa.Table]:
    out, off = [], 0
    for n in sizes:
        out.append(table.slice(off, n))
        off += n
    return out


def reference(parts: Sequence[pa.Table], schema: pa.Schema, **opts: Any) -> bytes:
    """What a single writer produces for the same row groups."""
    buf = io.BytesIO()
    with pq.ParquetWriter(buf, schema, **opts) as w:
        for part in parts:
            w.write_table(part, row_group_size=max(1, part.num_rows))
    return buf.getvalue()


def same_rows(a: pa.Table, b: pa.Table) -> bool:
    """Equal contents, ignoring chunking, schema metadata and per-chunk dictionaries."""

    def norm(t: pa.Table) -> pa.Table:
        cols = [c.cast(c.type.value_type) if pa.types.is_dictionary(c.type) else c for c in t.columns]
        return pa.table(cols, names=t.column_names)

    return bool(norm(a).equals(norm(b)))


def _sizes_for(num_rows: int) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, max(num_rows, 1)), min_size=1, max_size=6)


def _split(num_rows: int, cuts: list[int]) -> list[int]:
    """Turn random cut points into slice sizes covering all rows (0-size slices allowed)."""
    points = sorted(min(c, num_rows) for c in cuts)
    sizes, prev = [], 0
    for p in [*points, num_rows]:
        sizes.append(p - prev)
        prev = p
    return sizes


# --------------------------------------------------------------------------------------------
# Byte identity with a single writer


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), tables(max_rows=60), writer_options)
def test_merge_is_byte_identical_to_one_writer(
    data: st.DataObject, table: pa.Table, opts: dict[str, Any]
) -> None:
    sizes = _split(table.num_rows, data.draw(_sizes_for(table.num_rows)))
    parts = slices(table, sizes)
    pieces = [write_piece(p, table.schema, **opts) for p in parts]
    merged = pm.merge_pieces(pieces)
    assert merged == reference(parts, table.schema, **opts)
    layouts = [pm.piece_layout(p) for p in pieces]
    assert pm.final_size(layouts) == len(merged)
    bodies = b"".join(p[4 : lay.footer_start] for p, lay in zip(pieces, layouts, strict=True))
    assert pm.MAGIC + bodies + pm.merged_trailer(layouts) == merged


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), tables(max_rows=80, types=map_types), writer_options)
def test_map_columns_merge_byte_identical(data: st.DataObject, table: pa.Table, opts: dict[str, Any]) -> None:
    sizes = _split(table.num_rows, data.draw(_sizes_for(table.num_rows)))
    parts = slices(table, sizes)
    merged = pm.merge_pieces([write_piece(p, table.schema, **opts) for p in parts])
    assert merged == reference(parts, table.schema, **opts)
    assert same_rows(pq.read_table(io.BytesIO(merged)), table)


def test_single_piece_merges_to_itself() -> None:
    piece = write_piece(random_table([MAP_STR_INT, pa.string()], 20, 1))
    assert pm.merge_pieces([piece]) == piece


def test_pieces_without_row_groups_are_allowed() -> None:
    table = random_table([MAP_STR_INT, pa.int32()], 30, 2)
    empty = io.BytesIO()
    pq.ParquetWriter(empty, table.schema).close()
    assert pm.piece_layout(empty.getvalue()).num_row_groups == 0
    assert pm.piece_layout(empty.getvalue()).body_len == 0
    parts = slices(table, [10, 20])
    pieces = [empty.getvalue(), write_piece(parts[0]), empty.getvalue(), write_piece(parts[1])]
    merged = pm.merge_pieces(pieces)
    assert merged == reference(parts, table.schema)
    assert pm.merge_pieces([empty.getvalue()]) == empty.getvalue()


def test_many_pieces_many_columns() -> None:
    table = random_table([pa.int64(), pa.string(), MAP_STR_INT] * 10, 400, 3)
    parts = slices(table, [4] * 100)
    merged = pm.merge_pieces([write_piece(p) for p in parts])
    assert merged == reference(parts, table.schema)


# --------------------------------------------------------------------------------------------
# key/value metadata


def _duckdb_check(path: Path, num_rows: int, num_row_groups: int) -> dict[str, str]:
    con = duckdb.connect()
    try:
        # Decode every column (as Arrow: Python timestamptz conversion would need pytz).
        rows = con.sql("select * from read_parquet(?)", params=[str(path)]).to_arrow_table()
        assert rows.num_rows == num_rows
        (rgs,) = con.execute(
            "select count(distinct row_group_id) from parquet_metadata(?)", [str(path)]
        ).fetchone() or (None,)
        assert rgs == num_row_groups
        kv = con.execute("select key, value from parquet_kv_metadata(?)", [str(path)]).fetchall()
    finally:
        con.close()
    return {bytes(k).decode(): bytes(v).decode() for k, v in kv}


def test_key_value_metadata_is_set_and_arrow_schema_kept(tmp_path: Path) -> None:
    table = random_table([MAP_STR_INT, pa.string(), pa.timestamp("ms", tz="UTC")], 50, 4)
    table = table.replace_schema_metadata({"writer": "piece", "keep": "me"})
    parts = slices(table, [10, 0, 15, 25])
    pieces = [write_piece(p) for p in parts]
    kv = {"kafka.topic": "t", "kafka.offsets": "0-49", "writer": "merged", "é": "ü"}
    merged = pm.merge_pieces(pieces, key_value_metadata=kv)

    meta = pm.read_key_value_metadata(pm.piece_layout(merged).footer)
    assert list(meta) == ["writer", "keep", "ARROW:schema", "kafka.topic", "kafka.offsets", "é"]
    assert meta["writer"] == "merged" and meta["keep"] == "me" and meta["é"] == "ü"
    original = pm.read_key_value_metadata(pm.piece_layout(pieces[0]).footer)
    assert meta["ARROW:schema"] == original["ARROW:schema"]

    # Only the metadata differs from the single-writer file: same rows, same row groups.
    back = pq.read_table(io.BytesIO(merged))
    assert same_rows(back, table)
    # pyarrow quirk: when ARROW:schema is present, the Arrow schema metadata comes from the
    # serialized schema only; the file's own key/value metadata is in FileMetaData.metadata.
    assert back.schema.metadata == {b"writer": b"piece", b"keep": b"me"}
    pf = pq.ParquetFile(io.BytesIO(merged))
    assert pf.metadata.metadata[b"kafka.offsets"] == b"0-49"
    assert pf.metadata.metadata[b"writer"] == b"merged"
    ref = pq.ParquetFile(io.BytesIO(reference(parts, table.schema)))
    assert pf.metadata.num_rows == 50 and pf.metadata.num_row_groups == 4
    for i in range(4):
        assert pf.metadata.row_group(i).to_dict() == ref.metadata.row_group(i).to_dict()

    path = tmp_path / "merged.parquet"
    path.write_bytes(merged)
    duck_kv = _duckdb_check(path, 50, 4)
    assert duck_kv["kafka.topic"] == "t" and duck_kv["writer"] == "merged"


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.data(),
    tables(max_rows=40),
    writer_options,
    st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=20), max_size=4),
)
def test_metadata_replacement_reads_back_everywhere(
    data: st.DataObject, table: pa.Table, opts: dict[str, Any], kv: dict[str, str]
) -> None:
    kv.pop("ARROW:schema", None)
    sizes = _split(table.num_rows, data.draw(_sizes_for(table.num_rows)))
    parts = slices(table, sizes)
    merged = pm.merge_pieces([write_piece(p, table.schema, **opts) for p in parts], kv)
    meta = pm.read_key_value_metadata(pm.piece_layout(merged).footer)
    assert {k: meta[k] for k in kv} == kv
    assert "ARROW:schema" in meta
    back = pq.read_table(io.BytesIO(merged))
    assert same_rows(back, table)
    pf = pq.ParquetFile(io.BytesIO(merged))
    assert pf.metadata.num_row_groups == len(parts)
    assert [pf.metadata.row_group(i).num_rows for i in range(len(parts))] == sizes
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "merged.parquet"
        path.write_bytes(merged)
        duck_kv = _duckdb_check(path, table.num_rows, len(parts))
    assert {k: duck_kv[k] for k in kv} == kv


# --------------------------------------------------------------------------------------------
# Layout from a tail, errors


def test_read_piece_layout_from_a_tail_reports_needed_bytes() -> None:
    piece = write_piece(random_table([MAP_STR_INT], 10, 5))
    full = pm.piece_layout(piece)
    with pytest.raises(pm.ParquetMergeError, match=r"needs the last \d+ bytes") as ei:
        pm.read_piece_layout(piece[-8:], len(piece))
    needed = ei.value.needed
    assert needed == len(full.footer) + 8
    lay = pm.read_piece_layout(piece[-needed:], len(piece))
    assert lay == full
    assert lay.footer_start + len(lay.footer) + 8 == lay.size == len(piece)
    assert lay.body_start == 4 and lay.body_len == lay.footer_start - 4
    assert lay.num_rows == 10 and lay.num_row_groups == 1
    assert pm.footer_length(piece[-8:]) == len(full.footer)
    assert pm.read_piece_layout(piece[-needed - 100 :], len(piece)) == full


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d[:-4] + b"PAR2", "bad magic at end"),
        (lambda d: d[:-4] + b"PARE", "encrypted"),
        (lambda d: b"XXXX" + d[4:], "bad magic at start"),
        (lambda d: d[:-8] + (10**6).to_bytes(4, "little") + b"PAR1", "does not fit"),
        (lambda d: d[:8], "too small"),
        (lambda d: d[:-9] + b"\x0d" + d[-8:], "corrupt or truncated footer"),
    ],
)
def test_bad_pieces_raise_clear_errors(mutate: Any, match: str) -> None:
    piece = write_piece(random_table([pa.int32()], 5, 6))
    with pytest.raises(pm.ParquetMergeError, match=match):
        pm.piece_layout(mutate(piece))


def test_footer_length_needs_8_bytes() -> None:
    with pytest.raises(pm.ParquetMergeError) as ei:
        pm.footer_length(b"PAR1")
    assert ei.value.needed == 8


def test_schema_mismatch_is_refused() -> None:
    a = write_piece(random_table([pa.int32()], 5, 7))
    b = write_piece(random_table([pa.int64()], 5, 7))
    with pytest.raises(pm.ParquetMergeError, match="schema mismatch: piece 1"):
        pm.merge_pieces([a, b])
    nullable = pa.schema([pa.field("c0", pa.int32(), nullable=False)])
    c = write_piece(random_table([pa.int32()], 5, 8).cast(nullable))
    with pytest.raises(pm.ParquetMergeError, match="schema mismatch"):
        pm.merge_pieces([a, c])
    with pytest.raises(pm.ParquetMergeError, match="no pieces"):
        pm.merged_trailer([])


def test_page_index_is_refused() -> None:
    """OffsetIndex page locations are absolute offsets outside the footer: they would be stale."""
    table = random_table([MAP_STR_INT, pa.int64()], 20, 9)
    pieces = [write_piece(p, write_page_index=True) for p in slices(table, [10, 10])]
    with pytest.raises(pm.ParquetMergeError, match="page index not supported"):
        pm.merge_pieces(pieces)
    with pytest.raises(pm.ParquetMergeError, match="page index not supported"):
        pm.merge_pieces(pieces[:1])


def test_bloom_filters_are_shifted_correctly(tmp_path: Path) -> None:
    """Bloom filters sit at the end of each piece body: the merge is valid, not byte-identical
    (one writer puts all bloom filters after the last row group)."""
    table = random_table([pa.string(), pa.int64()], 60, 10)
    opts = {"bloom_filter_options": {"c0": {"ndv": 20}, "c1": {"ndv": 20}}}
    parts = slices(table, [20, 40])
    pieces = [write_piece(p, **opts) for p in parts]
    merged = pm.merge_pieces(pieces)
    layouts = [pm.piece_layout(p) for p in pieces]

    def bloom(data: bytes, rg: int, col: int) -> tuple[int, bytes]:
        fmd = tc.decode_struct(footer_of(data))
        rgs = fmd.get(4)
        assert isinstance(rgs, tc.List)
        row_group = rgs.items[rg]
        assert isinstance(row_group, tc.Struct)
        cols = row_group.get(1)
        assert isinstance(cols, tc.List)
        cc = cols.items[col]
        assert isinstance(cc, tc.Struct)
        md = cc.get(3)
        assert isinstance(md, tc.Struct)
        off, length = md.get(14), md.get(15)
        assert isinstance(off, int) and isinstance(length, int)
        return off, data[off : off + length]

    for col in (0, 1):
        off0, bf0 = bloom(pieces[1], 0, col)
        off, bf = bloom(merged, 1, col)
        assert off == off0 + layouts[0].body_len and bf == bf0
    assert same_rows(pq.read_table(io.BytesIO(merged)), table)
    path = tmp_path / "bloom.parquet"
    path.write_bytes(merged)
    _duckdb_check(path, 60, 2)


def _rewrite_footer(piece: bytes, edit: Any) -> bytes:
    lay = pm.piece_layout(piece)
    fmd = tc.decode_struct(lay.footer)
    edit(fmd)
    footer = tc.encode_struct(fmd)
    return piece[: lay.footer_start] + footer + len(footer).to_bytes(4, "little") + pm.MAGIC


def test_ordinals_are_renumbered_and_nonzero_chunk_offsets_shifted() -> None:
    """pyarrow writes neither RowGroup.ordinal nor a non-zero ColumnChunk.file_offset; other
    writers do, so both are exercised on synthetic footers."""
    table = random_table([pa.int64(), pa.string()], 30, 11)

    def add(fmd: tc.Struct) -> None:
        rgs = fmd.get(4)
        assert isinstance(rgs, tc.List)
        for rg in rgs.items:
            assert isinstance(rg, tc.Struct)
            assert 7 not in rg  # pyarrow quirk: no ordinal
            rg.set(7, tc.I16, 0)
            cols = rg.get(1)
            assert isinstance(cols, tc.List)
            for cc in cols.items:
                assert isinstance(cc, tc.Struct)
                assert cc.get(2) == 0  # pyarrow quirk: ColumnChunk.file_offset is always 0
                md = cc.get(3)
                assert isinstance(md, tc.Struct)
                cc.set(2, tc.I64, md.get(9))

    pieces = [_rewrite_footer(write_piece(p), add) for p in slices(table, [10, 10, 10])]
    merged = pm.merge_pieces(pieces)
    fmd = tc.decode_struct(footer_of(merged))
    rgs = fmd.get(4)
    assert isinstance(rgs, tc.List)
    ordinals, chunk_offsets = [], []
    for rg in rgs.items:
        assert isinstance(rg, tc.Struct)
        ordinals.append(rg.get(7))
        cols = rg.get(1)
        assert isinstance(cols, tc.List)
        for cc in cols.items:
            assert isinstance(cc, tc.Struct)
            md = cc.get(3)
            assert isinstance(md, tc.Struct)
            chunk_offsets.append((cc.get(2), md.get(9)))
    assert ordinals == [0, 1, 2]
    assert all(a == b for a, b in chunk_offsets)
    assert same_rows(pq.read_table(io.BytesIO(merged)), table)
