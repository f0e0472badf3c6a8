"""The native chunk decoder: raw Avro bodies straight to Arrow, no Python object per value.

``consumer._native`` (Rust, ``native/``: Apache arrow-avro + PyO3) decodes a chunk of unframed
bodies of one writer schema, concatenated in one buffer with their end offsets, into record
batches whose schema is exactly :func:`consumer.typemap.arrow_schema` (general unions as a struct
of branches, enums as dictionaries, uuids as ``arrow.uuid``, UTC timestamps, decimals). Batches
cross into pyarrow through the Arrow C data interface.

Every body is first checked against the schema natively, exactly as fastavro reads it: a body that
is truncated, has trailing bytes, an invalid union branch or enum index, invalid UTF-8 or a bad
uuid string is reported as ``(index, reason)`` with fastavro's wording and left out of the batch,
so dead letters are the same whichever decoder runs. fastavro (``decoding.decode_bodies`` +
``typemap.RecordConverter``) stays the reference and the fallback: when the extension is missing
or a schema is unsupported natively (recursive types, a non-record top level, …)
:func:`decoder_for` returns ``None`` and logs one warning per schema.
"""

from __future__ import annotations

import array
import json
from collections.abc import Sequence
from typing import Any, Final, NamedTuple

import pyarrow as pa
import structlog

from consumer.typemap import TypeMappingError, arrow_schema

try:  # the extension is optional at import time: a source checkout without a build still runs
    from consumer import _native  # type: ignore[attr-defined]

    _IMPORT_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - depends on the build
    _native = None
    _IMPORT_ERROR = str(exc)

__all__ = [
    "Decoded",
    "NativeDecoder",
    "NativeError",
    "NativeUnsupported",
    "available",
    "decoder_for",
    "warn_once",
]

log = structlog.get_logger("consumer.native")

DECODERS: Final = ("native", "python")


class NativeError(RuntimeError):
    """The native decoder failed on a chunk (not a bad record): decode the chunk in Python."""


class NativeUnsupported(NativeError):
    """This schema cannot be decoded natively; the Python path handles it."""


def available() -> bool:
    """Whether the compiled extension could be imported."""
    return _native is not None


def import_error() -> str | None:
    return _IMPORT_ERROR


class Decoded(NamedTuple):
    """What one native decode returns. ``held_bytes`` is what the batches' buffers occupy: arrow-avro
    builds each column in a buffer that starts at 1,024 values and doubles, so a column holds up to
    twice its length, and a chunk of a few rows holds several times its size. The memory budget
    counts this, not the lengths pyarrow reports."""

    batches: list[pa.RecordBatch]
    bad: list[tuple[int, str]]
    held_bytes: int


class NativeDecoder:
    """Decodes chunks of one writer schema; build once per schema, reuse for every chunk."""

    def __init__(
        self, avro: dict[str, Any] | str, target: pa.Schema | None = None, *, batch_bytes: int | None = None
    ) -> None:
        if _native is None:
            raise NativeUnsupported(f"native extension not importable: {_IMPORT_ERROR}")
        text = avro if isinstance(avro, str) else json.dumps(avro)
        try:
            self.schema: pa.Schema = arrow_schema(avro) if target is None else target
        except TypeMappingError as exc:
            raise NativeUnsupported(str(exc)) from None
        try:
            if batch_bytes is None:  # bodies per batch: string data stays under 2 GiB per column
                self._decoder = _native.Decoder(text, self.schema)
            else:
                self._decoder = _native.Decoder(text, self.schema, batch_bytes)
        except _native.UnsupportedSchema as exc:
            raise NativeUnsupported(str(exc)) from None

    def decode_batches(
        self, raw: bytes | bytearray | memoryview, ends: array.array[int] | Sequence[int], n: int
    ) -> Decoded:
        """Every batch (split only past ~1 GiB of body bytes), the bad records and the bytes the
        batches hold."""
        if not isinstance(ends, array.array) or ends.typecode != "q":
            ends = array.array("q", ends)
        try:
            batches, bad, held = self._decoder.decode(raw, ends, n)
        except (RuntimeError, ValueError, BufferError) as exc:
            raise NativeError(str(exc)) from exc
        return Decoded(list(batches), [(int(i), str(r)) for i, r in bad], int(held))

    def decode_held(
        self, raw: bytes | bytearray | memoryview, ends: array.array[int] | Sequence[int], n: int
    ) -> tuple[pa.RecordBatch, list[tuple[int, str]], int]:
        """:meth:`decode`, plus the bytes the batch holds in memory: its buffers' capacities, up to
        twice their lengths (what ``get_total_buffer_size`` counts; see ``Decoded``)."""
        batches, bad, held = self.decode_batches(raw, ends, n)
        if len(batches) == 1:
            return batches[0], bad, held
        try:  # more than ~1 GiB of bodies in one chunk: one batch only if offsets still fit
            table = pa.Table.from_batches(batches, schema=self.schema).combine_chunks()
            (batch,) = table.to_batches(max_chunksize=None)
        except (pa.ArrowInvalid, ValueError) as exc:
            raise NativeError(f"chunk too large for one batch: {exc}") from exc
        return batch, bad, batch.get_total_buffer_size()  # a copy in Arrow's pool, sized exactly

    def decode(
        self, raw: bytes | bytearray | memoryview, ends: array.array[int] | Sequence[int], n: int
    ) -> tuple[pa.RecordBatch, list[tuple[int, str]]]:
        """One record batch of the good rows (columns of ``arrow_schema``) and ``[(index, reason)]``
        of the bad ones, in index order."""
        batch, bad, _held = self.decode_held(raw, ends, n)
        return batch, bad


_warned: set[str] = set()
_schemas: dict[str, pa.Schema] = {}
#: One decoder per writer schema for the whole process, shared by every partition's arena (the
#: runner is single-threaded and a decoder keeps no rows between calls: each call flushes). A
#: decoder costs ~0.17 MB and a schema parse plus a self-check to build; with 200 partitions, one
#: per partition was ~30 MB and 200 builds at start.
_decoders: dict[str, NativeDecoder] = {}


def warn_once(key: str, event: str, **fields: Any) -> None:
    """Log ``event`` as a warning the first time ``key`` is seen in this process."""
    if key not in _warned:
        _warned.add(key)
        log.warning(event, **fields)


def decoder_for(avro: dict[str, Any], key: str) -> NativeDecoder | None:
    """The process's native decoder for this writer schema (``key``: its fingerprint; shared by
    every partition, see ``_decoders``), or ``None`` when the
    extension is missing or the schema is unsupported natively; then one warning is logged (per
    process for a missing extension, per schema otherwise) and the caller uses fastavro."""
    if _native is None:
        warn_once(
            "import",
            "native decoder not available: decoding with fastavro (much slower)",
            reason=f"consumer._native not importable: {_IMPORT_ERROR}",
            hint="build it (dev/bootstrap, or pip install . with a Rust toolchain) or pass "
            "--decoder python to silence this",
        )
        return None
    found = _decoders.get(key)
    if found is not None:
        return found
    try:
        target = _schemas.get(key)
        if target is None:
            target = _schemas[key] = arrow_schema(avro)
        decoder = _decoders[key] = NativeDecoder(avro, target)
        return decoder
    except (NativeUnsupported, TypeMappingError) as exc:
        warn_once(
            f"schema:{key}",
            "schema not supported by the native decoder: decoding it with fastavro (slower)",
            schema=key,
            reason=str(exc),
        )
        return None
