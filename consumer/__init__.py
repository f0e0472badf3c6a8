"""Kafka Avro map records → Parquet on S3, exactly once.

Where a record goes, by module name:

    runner (group membership, polling)
      → worker (one partition's state machine)
        → decoding (framing + Avro) → arena (buffered columns) → rowgroup (Parquet piece)
        → storage (S3, conditional writes) + positions (committed offsets)
        → parquet_merge / thrift_compact (roll: pieces → one final file)
"""

__version__ = "0.1.0"
