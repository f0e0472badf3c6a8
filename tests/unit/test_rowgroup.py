"""Per-column writer options of a piece (consumer.rowgroup): no dictionary where values are unique
by nature, statistics on every column outside lists and maps; values and schema unchanged, and
pieces still merge into one valid file."""

from __future__ import annotations

import io

import fastavro
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from consumer import parquet_merge as pm
from consumer import samples
from consumer.arena import kafka_fields
from consumer.rowgroup import WriterOptions, encode_piece, parquet_leaves
from consumer.typemap import RecordConverter

COLUMNS = ["partition", "offset", "timestamp", "key"]


def table_of(name: str, n: int, start: int = 0) -> pa.Table:
    schema, parsed = samples.load_schema(name), samples.parsed_schema(name)
    records = [  # as the decoder hands them over (e.g. uuid objects)
        fastavro.schemaless_reader(io.BytesIO(samples.encode_raw(parsed, r)), parsed, None)
        for r in samples.generate(name, n, seed=start)
    ]
    batch = RecordConverter(schema).to_batch(records)
    kafka = pa.table(
        {
            "kafka_partition": pa.array([0] * n, pa.int32()),
            "kafka_offset": pa.array(range(start, start + n), pa.int64()),
            "kafka_timestamp": pa.array([1_700_000_000_000 + i for i in range(n)], pa.timestamp("ms", "UTC")),
            "kafka_key": pa.array([b"k"] * n, pa.binary()),
        }
    )
    table = pa.Table.from_batches([batch])
    for f in kafka_fields(COLUMNS):
        table = table.append_column(f, kafka.column(f.name).cast(f.type))
    return table


def column_chunks(data: bytes) -> dict[str, pq.ColumnChunkMetaData]:
    md = pq.ParquetFile(pa.BufferReader(data)).metadata
    rg = md.row_group(0)
    return {rg.column(i).path_in_schema: rg.column(i) for i in range(rg.num_columns)}


def test_page_view_unique_columns_are_plain_and_the_rest_dictionary_encoded() -> None:
    table = table_of("page_view", 2000)
    chunks = column_chunks(encode_piece(table, WriterOptions(), "id"))
    for path in ("kafka_offset", "kafka_timestamp", "event_id", "ts"):
        assert not chunks[path].has_dictionary_page, path
    for path in ("url", "device", "attributes.key_value.key", "attributes.key_value.value"):
        assert chunks[path].has_dictionary_page, path


@pytest.mark.parametrize("name", ["page_view", "order", "metrics"])
def test_statistics_on_every_column_outside_lists_and_maps(name: str) -> None:
    table = table_of(name, 500)
    chunks = column_chunks(encode_piece(table, WriterOptions(), "id"))
    leaves = {leaf.path: leaf.repetition for leaf in parquet_leaves(table.schema)}
    assert set(leaves) == set(chunks)
    assert any(rep == 0 for rep in leaves.values())
    for path, chunk in chunks.items():
        assert chunk.is_stats_set == (leaves[path] == 0), path
    if name == "order":  # a field of a nested record keeps its statistics (engines prune on it)
        assert any("." in p and rep == 0 for p, rep in leaves.items())


@pytest.mark.parametrize("name", ["page_view", "order", "metrics"])
def test_values_are_unchanged_and_pieces_merge(name: str) -> None:
    a, b = table_of(name, 300), table_of(name, 200, start=300)
    pieces = [encode_piece(t, WriterOptions(), "id") for t in (a, b)]
    for piece, expected in zip(pieces, (a, b), strict=True):
        got = pq.read_table(pa.BufferReader(piece))
        assert got.schema.remove_metadata() == expected.schema and got.to_pylist() == expected.to_pylist()
    merged = pm.merge_pieces(pieces)
    assert pq.read_table(pa.BufferReader(merged)).to_pylist() == pa.concat_tables([a, b]).to_pylist()


def test_the_rules_are_part_of_the_file_identity() -> None:
    """A file opened under other per-column rules rolls rather than mixing pieces."""
    assert repr(WriterOptions()) != repr(WriterOptions(column_rules=1))
    assert repr(WriterOptions()) != repr(WriterOptions(dictionary_page_size=1 << 20))


def test_a_column_with_too_many_distinct_values_falls_back_to_plain_and_a_real_dictionary_stays() -> None:
    """Past ``dictionary_page_size`` bytes of dictionary the rest of a column chunk is plain; a
    column with few distinct values keeps its dictionary. Values are the same either way."""
    n = 20_000
    table = pa.table(
        {
            "unique": pa.array([f"tracking-{i * 2654435761 % 10**12:012d}" for i in range(n)]),  # > 64 KiB
            "few": pa.array([f"segment-{i % 40}" for i in range(n)]),
        }
    )
    piece = encode_piece(table, WriterOptions(), "id")
    assert pq.read_table(pa.BufferReader(piece)).to_pylist() == table.to_pylist()
    roomy = encode_piece(table, WriterOptions(dictionary_page_size=1 << 20), "id")

    def dictionary_bytes(data: bytes, column: str) -> int:
        chunk = column_chunks(data)[column]
        assert chunk.has_dictionary_page
        return int(chunk.data_page_offset - chunk.dictionary_page_offset)

    # the unique column stopped at the limit (Arrow's default would have gone on hashing)...
    assert dictionary_bytes(piece, "unique") * 4 < dictionary_bytes(roomy, "unique")
    # ... while a real dictionary is whole under both
    assert dictionary_bytes(piece, "few") == dictionary_bytes(roomy, "few")
    assert len(piece) < len(roomy)
