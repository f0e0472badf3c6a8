"""Row-group encoding: an Arrow table → one standalone in-memory Parquet file (a "piece").

Every piece of a file is written with the *same* fixed writer options and schema, exactly one row
group, and the page index off, so that pieces can later be concatenated into one final file by
rewriting only the footer (see :mod:`consumer.parquet_merge`). With the page index on, OffsetIndex
structures would hold absolute page offsets that the merge would have to rewrite as well; until
that is done and tested it stays off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_FINGERPRINT_KEY = "consumer.schema_fingerprint"


@dataclass(frozen=True)
class WriterOptions:
    compression: str = "zstd"
    compression_level: int | None = None
    use_dictionary: bool = True
    write_statistics: bool = True
    data_page_size: int = 1024 * 1024

    def kwargs(self) -> dict[str, Any]:
        return {
            "compression": None if self.compression == "none" else self.compression,
            "compression_level": self.compression_level,
            "use_dictionary": self.use_dictionary,
            "write_statistics": self.write_statistics,
            "data_page_size": self.data_page_size,
            "write_page_index": False,
            "version": "2.6",
            "store_schema": True,
        }


def encode_piece(
    table: pa.Table, options: WriterOptions, fingerprint: str, extra: dict[str, str] | None = None
) -> bytes:
    """Encode ``table`` as a one-row-group Parquet file; the file identity (``fingerprint``) and
    ``extra`` key/values (birth time, Avro schema) ride in its metadata.

    A table with 0 rows (every record of the range went to the dead-letter output) still yields a
    valid piece with no row group, so the position chain stays unbroken.
    """
    schema = table.schema.with_metadata({**(extra or {}), SCHEMA_FINGERPRINT_KEY: fingerprint})
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, schema, **options.kwargs()) as writer:
        if table.num_rows:
            writer.write_table(table.replace_schema_metadata(schema.metadata),
                               row_group_size=table.num_rows)
    data: bytes = sink.getvalue().to_pybytes()
    return data
