"""What was written: final files under a prefix with their row groups, rows, sizes and schema.

Reads only footers (one ranged GET per file), so it is cheap on large buckets; the schema is
decoded by handing pyarrow the footer wrapped in a minimal Parquet envelope.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from consumer.layout import Layout
from consumer.parquet_merge import MAGIC, read_key_value_metadata, read_layout
from consumer.storage import ObjectStore


@dataclass(frozen=True)
class FinalFile:
    key: str
    size: int
    rows: int
    row_groups: int
    from_position: int | None
    to_position: int | None
    footer: bytes


def read_footer(store: ObjectStore, key: str, size: int) -> tuple[bytes, int, int]:
    """(footer bytes, rows, row groups) of a Parquet object, fetching only its tail."""
    layout = read_layout(lambda start, end: store.get(key, start, end), size)
    return layout.footer, layout.num_rows, layout.num_row_groups


def list_final_files(store: ObjectStore, prefix: str) -> list[FinalFile]:
    base = f"{prefix}/" if prefix else ""
    out = []
    for obj in store.list(base):
        rel = obj.key[len(base) :]
        if rel.startswith("_") or Layout.parse_final_name(obj.key) is None:
            continue
        footer, rows, groups = read_footer(store, obj.key, obj.size)
        kv = read_key_value_metadata(footer)
        out.append(
            FinalFile(
                obj.key,
                obj.size,
                rows,
                groups,
                int(kv["kafka.from_position"]) if "kafka.from_position" in kv else None,
                int(kv["kafka.to_position"]) if "kafka.to_position" in kv else None,
                footer,
            )
        )
    return out


def parquet_metadata(footer: bytes) -> pq.FileMetaData:
    """pyarrow's view of a footer alone, handed over in a minimal Parquet envelope."""
    envelope = MAGIC + footer + struct.pack("<I", len(footer)) + MAGIC
    return pq.read_metadata(pa.BufferReader(envelope))


def arrow_schema_of(footer: bytes) -> pa.Schema:
    return parquet_metadata(footer).schema.to_arrow_schema()


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def describe_output(store: ObjectStore, prefix: str, sample_rows: int = 0) -> str:
    files = list_final_files(store, prefix)
    staged = [o for o in store.list(f"{prefix}/_staging/" if prefix else "_staging/")]
    dead = [o for o in store.list(f"{prefix}/_dead_letters/" if prefix else "_dead_letters/")]
    lines = [f"final files under {prefix or '(bucket root)'}/: {len(files)}"]
    for f in files:
        lines.append(
            f"  {f.key}  {human_bytes(f.size):>10}  {f.row_groups:>3} row groups  {f.rows:>9} rows  "
            f"positions [{f.from_position}, {f.to_position})"
        )
    total_rows = sum(f.rows for f in files)
    total_bytes = sum(f.size for f in files)
    lines.append(
        f"total: {total_rows} rows in {sum(f.row_groups for f in files)} row groups, "
        f"{human_bytes(total_bytes)}"
    )
    lines.append(f"staged pieces (in-progress files): {len(staged)}; dead-letter objects: {len(dead)}")
    if files:
        schema = arrow_schema_of(files[0].footer)
        lines.append("schema of the first file:")
        lines.extend("  " + line for line in str(schema).splitlines() if not line.startswith("--"))
        if sample_rows > 0:
            table = pq.read_table(io.BytesIO(store.get(files[0].key))).slice(0, sample_rows)
            lines.append(f"first {table.num_rows} rows:")
            for row in table.to_pylist():
                lines.append("  " + _short(row))
    return "\n".join(lines)


def _short(row: Any, limit: int = 300) -> str:
    text = repr(row)
    return text if len(text) <= limit else text[:limit] + "…"
