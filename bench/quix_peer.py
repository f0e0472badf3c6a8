"""The Quix Streams peer: consume a topic of raw (schemaless) Avro and write Parquet files to S3.

Run by :class:`bench.adapters.QuixAdapter` with the *peer's* interpreter (its own venv, because
quixstreams pins ``confluent-kafka<2.13`` while this project uses a newer one). It must import
nothing from ``consumer`` or ``bench``: only the standard library and quixstreams' own deps.

Configured as Quix Streams documents its S3 file sink (``S3FileSink`` + ``ParquetFormat``, one
file per partition per checkpoint; file size is steered by ``commit_interval``/``commit_every``),
with ``AvroDeserializer(schema=...)`` for schemaless Avro. Stops after ``--count`` records
(``app.run(count=..., timeout=...)``) or, in live mode, on SIGTERM. Prints one JSON line of
stats on stdout at the end; on stderr one JSON line per file written (for the time series).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--group-id", required=True)
    ap.add_argument("--schema-file", required=True)
    ap.add_argument("--bucket", required=True)
    ap.add_argument("--directory", required=True)
    ap.add_argument("--endpoint-url", required=True)
    ap.add_argument(
        "--count", type=int, default=0, help="stop after this many records (0: run until SIGTERM)"
    )
    ap.add_argument("--timeout", type=float, default=0.0)
    ap.add_argument("--commit-interval", type=float, default=5.0)
    ap.add_argument("--commit-every", type=int, default=0)
    ap.add_argument("--compression", default="zstd")
    args = ap.parse_args(argv)

    import quixstreams
    from botocore.config import Config as BotoConfig
    from quixstreams import Application
    from quixstreams.models.serializers.avro import AvroDeserializer
    from quixstreams.sinks.community.file.formats import ParquetFormat
    from quixstreams.sinks.community.file.s3 import S3FileSink

    with open(args.schema_file, encoding="utf-8") as fh:
        schema = json.load(fh)

    stats: dict[str, Any] = {"avro_bytes": 0, "s3_requests": 0, "s3_bytes_uploaded": 0, "files": 0}

    class CountingAvro(AvroDeserializer):  # type: ignore[misc]
        """The documented Avro deserializer, counting input bytes for MB/s."""

        def __call__(self, value: bytes, ctx: Any) -> Any:
            stats["avro_bytes"] += len(value)
            return super().__call__(value, ctx)

    class CountingS3Sink(S3FileSink):  # type: ignore[misc]
        """The documented S3 sink; counts requests and bytes via botocore events."""

        def setup(self) -> None:
            super().setup()

            def on_send(request: Any, **_: Any) -> None:
                stats["s3_requests"] += 1

            self._client.meta.events.register("before-send.s3", on_send)

        def _write(self, data: bytes, batch: Any) -> None:
            super()._write(data, batch)
            stats["files"] += 1
            stats["s3_bytes_uploaded"] += len(data)
            print(
                json.dumps(
                    {
                        "event": "file written",
                        "t": time.time(),
                        "partition": batch.partition,
                        "rows": batch.size,
                        "bytes": len(data),
                        "from_offset": batch.start_offset,
                    }
                ),
                file=sys.stderr,
                flush=True,
            )

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group_id,
        auto_offset_reset="earliest",
        commit_interval=args.commit_interval,
        commit_every=args.commit_every,
        state_dir=os.path.join(os.environ.get("TMPDIR", "/tmp"), f"quix-state-{args.group_id}"),
        loglevel="WARNING",
    )
    topic = app.topic(args.topic, value_deserializer=CountingAvro(schema=schema), key_deserializer="bytes")
    sink = CountingS3Sink(
        bucket=args.bucket,
        directory=args.directory,
        format=ParquetFormat(compression=args.compression),
        endpoint_url=args.endpoint_url,
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        region_name=os.environ.get("AWS_REGION", "us-east-1"),
        config=BotoConfig(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )
    sdf = app.dataframe(topic=topic)
    sdf.sink(sink)
    started = time.monotonic()
    app.run(count=args.count, timeout=args.timeout, collect=False)
    stats.update(
        seconds=round(time.monotonic() - started, 3),
        quixstreams=quixstreams.__version__,
        event="stopped",
    )
    print(json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
