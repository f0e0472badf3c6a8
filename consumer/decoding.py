"""Decoding: from a Kafka value to (writer schema, Avro body) to a Python record.

Two framings:

* ``raw`` — the value is schemaless Avro binary written with one known schema (a name from
  ``schemas/`` or an ``.avsc`` path).
* ``confluent`` — magic byte 0, a 4-byte big-endian schema id, then the Avro body; the writer schema
  is fetched from a Confluent-compatible registry once per id and cached (ids are immutable).

Framing is split from decoding so the arena can hold raw bodies and decode a whole chunk at once.
Every record is decoded with fastavro's schemaless reader, the reference decoder that defines
correct results, and must consume its body *exactly*: trailing bytes mean the writer used another
schema, and accepting them would silently turn garbage into rows. A batch decoder that parses
concatenated bodies in one call cannot see record boundaries, which is why it is not used here.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from importlib.resources.abc import Traversable
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import Any

import fastavro
import structlog

from consumer.registry import (
    Registry,
    RegistryError,
    RegistryUnavailable,
    UnknownSchemaId,
)
from consumer.resolution import resolution_problem

_log = structlog.get_logger(__name__)


class BadRecord(ValueError):
    """A record that cannot become a row; ``reason`` says why (never the payload)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


__all__ = [
    "CONFLUENT_HEADER",
    "SCHEMA_DIR",
    "BadRecord",
    "Decoder",
    "RegistryError",
    "RegistryUnavailable",
    "SchemaError",
    "WriterSchema",
    "decode_bodies",
    "framing_runs",
    "load_schema",
    "schema_names",
]


@dataclass(frozen=True)
class WriterSchema:
    """A writer schema as parsed JSON plus what decoding needs, built once per schema."""

    avro: dict[str, Any]
    schema_id: int | None = None
    parsed: Any = field(default=None, compare=False, repr=False)
    fingerprint: str = ""

    @classmethod
    def of(cls, avro: dict[str, Any], schema_id: int | None = None) -> WriterSchema:
        canonical = json.dumps(avro, sort_keys=True, separators=(",", ":"))
        return cls(
            avro=avro,
            schema_id=schema_id,
            parsed=fastavro.parse_schema(avro),
            fingerprint=hashlib.sha256(canonical.encode()).hexdigest()[:16],
        )


def decode_one(parsed: Any, body: bytes | memoryview) -> dict[str, Any]:
    """Decode one schemaless Avro body; :class:`BadRecord` unless it parses and fills ``body`` exactly."""
    bio = io.BytesIO(body)
    try:
        record = fastavro.schemaless_reader(bio, parsed, None)
    except Exception as exc:  # fastavro raises EOFError, ValueError, IndexError, UnicodeError…
        raise BadRecord(f"malformed Avro: {type(exc).__name__}: {exc}"[:300]) from None
    rest = len(body) - bio.tell()
    if rest:
        raise BadRecord(f"malformed Avro: {rest} trailing bytes after the record (wrong schema?)")
    if not isinstance(record, dict):
        raise BadRecord("top-level Avro value is not a record")
    return record


def decode_bodies(
    schema: WriterSchema,
    bodies: Sequence[bytes | memoryview],
    reader_schema: WriterSchema | None = None,
) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """Decode many bodies: (records that decoded, [(index, reason)] for those that did not).

    With ``reader_schema`` (another schema than the writer's) every record is resolved to it
    by fastavro (Avro schema resolution: defaults, promotions, aliases, removed fields)."""
    parsed = schema.parsed
    target = (
        reader_schema.parsed
        if reader_schema is not None and reader_schema.fingerprint != schema.fingerprint
        else None
    )
    reader = fastavro.schemaless_reader
    BytesIO = io.BytesIO
    good: list[dict[str, Any]] = []
    bad: list[tuple[int, str]] = []
    for i, body in enumerate(bodies):
        bio = BytesIO(body)
        try:
            record = reader(bio, parsed, None)
            if bio.tell() != len(body):
                raise BadRecord(
                    f"malformed Avro: {len(body) - bio.tell()} trailing bytes after the record "
                    "(wrong schema?)"
                )
            if target is not None:
                # Read as the writer first: fastavro *skips* fields the reader lacks without
                # noticing a truncated body, so only a full read with the writer schema proves the
                # body is one record of it; then resolve.
                bio.seek(0)
                record = reader(bio, parsed, target)
        except BadRecord as exc:
            bad.append((i, exc.reason))
            continue
        except Exception as exc:
            bad.append((i, f"malformed Avro: {type(exc).__name__}: {exc}"[:300]))
            continue
        if not isinstance(record, dict):
            bad.append((i, "top-level Avro value is not a record"))
            continue
        good.append(record)
    return good, bad


#: Bytes before the Avro body in Confluent framing: magic byte 0 and a 4-byte big-endian schema id.
CONFLUENT_HEADER = 5
_header = itemgetter(slice(0, CONFLUENT_HEADER))


def framing_runs(values: Sequence[bytes]) -> list[tuple[int, int, int | None]]:
    """Cut Confluent-framed values into runs of one 5-byte header: ``(start, end, schema id)``,
    the id ``None`` for a run whose values are not well framed (too short, wrong magic byte).

    The batch path's splitter: per value only C-level slicing and comparison (``map`` +
    ``groupby``), so a run of one schema id is found without a Python step per record. It only
    says where runs are; every value of a ``None`` run still goes through :meth:`Decoder.split`,
    which gives the reason it is bad, exactly as record-by-record appends do.
    """
    out: list[tuple[int, int, int | None]] = []
    start = 0
    for head, group in groupby(map(_header, values)):
        end = start + len(list(group))
        framed = len(head) == CONFLUENT_HEADER and head[0] == 0
        out.append((start, end, int.from_bytes(head[1:], "big") if framed else None))
        start = end
    return out


class Decoder:
    """Splits Kafka values into (writer schema, body); one per process, shared by all workers."""

    def __init__(
        self,
        framing: str,
        *,
        schema: dict[str, Any] | None = None,
        registry: Registry | None = None,
    ) -> None:
        if framing not in ("raw", "confluent"):
            raise ValueError(f"unknown framing {framing!r}")
        if framing == "raw" and schema is None:
            raise ValueError("raw framing needs a writer schema")
        if framing == "confluent" and registry is None:
            raise ValueError("confluent framing needs a schema registry")
        self.framing = framing
        self.registry = registry
        self._raw = WriterSchema.of(schema) if schema is not None else None
        self._by_id: dict[int, WriterSchema] = {}
        self._bad_ids: dict[int, str] = {}  # ids whose schema cannot be used: each record is bad
        # Schema evolution (confluent framing): versions of ids per subject, and the newest
        # version of each subject seen when an unseen id arrived (see consumer.evolution).
        self._versions: dict[tuple[int, str], int | None] = {}
        self._latest: dict[str, tuple[WriterSchema, int]] = {}
        self._problems: dict[tuple[str, str], str | None] = {}

    @property
    def raw_schema(self) -> WriterSchema | None:
        """The one writer schema of raw framing (None with Confluent framing)."""
        return self._raw if self.framing == "raw" else None

    def split(self, value: bytes | None) -> tuple[WriterSchema, memoryview]:
        """(writer schema, Avro body) of a Kafka value.

        Raises :class:`BadRecord` for values that are wrong in themselves (null, bad magic byte,
        unknown schema id). :class:`RegistryUnavailable` is *not* a bad record: the record is fine
        and the registry is down, so it propagates and the worker stops without committing it.
        """
        if value is None:
            raise BadRecord("null value (tombstone): nothing to decode")
        if self._raw is not None and self.framing == "raw":
            return self._raw, memoryview(value)
        if len(value) < CONFLUENT_HEADER or value[0] != 0:
            first = f"0x{value[0]:02x}" if value else "empty value"
            raise BadRecord(
                f"not Confluent wire format (first byte {first}, expected magic 0x00 + 4-byte "
                "schema id): is the topic raw Avro? then use --framing raw --schema …"
            )
        (schema_id,) = struct.unpack_from(">I", value, 1)
        return self.schema_for_id(schema_id), memoryview(value)[CONFLUENT_HEADER:]

    def cached(self, schema_id: int | None) -> WriterSchema | None:
        """The writer schema of an id already fetched and usable, else ``None`` (then
        :meth:`split` fetches it, or says why its records are bad)."""
        return None if schema_id is None else self._by_id.get(schema_id)

    def schema_for_id(self, schema_id: int) -> WriterSchema:
        ws = self._by_id.get(schema_id)
        if ws is not None:
            return ws
        assert self.registry is not None
        bad = self._bad_ids.get(schema_id)
        if bad is not None:
            raise BadRecord(bad)
        try:
            avro = self.registry.schema_by_id(schema_id)
            if not isinstance(avro, dict) or avro.get("type") != "record":
                raise BadRecord(f"schema id {schema_id} is not an Avro record schema")
            ws = WriterSchema.of(avro, schema_id)
        except UnknownSchemaId:
            raise BadRecord(
                f"unknown schema id {schema_id}: the registry has no such schema "
                "(produced against another registry?)"
            ) from None
        except RegistryUnavailable:
            raise  # the registry is down, the record is fine: stop without committing it
        except BadRecord as exc:
            self._bad_ids[schema_id] = exc.reason
            raise
        except Exception as exc:  # RegistryError (PROTOBUF/JSON schema, not JSON), invalid Avro
            reason = f"schema id {schema_id} cannot be used: {type(exc).__name__}: {exc}"[:300]
            self._bad_ids[schema_id] = reason
            raise BadRecord(reason) from None
        self._by_id[schema_id] = ws
        return ws


    def subject_info(
        self, schema: WriterSchema, subject: str
    ) -> tuple[int | None, tuple[WriterSchema, int] | None]:
        """(version of ``schema`` in ``subject``, (newest schema of the subject, its version)).

        The registry is asked once per (id, subject): which versions hold the id, and the newest
        version of the subject *now* — so the reader schema moves forward exactly when an unseen
        id arrives. :class:`RegistryUnavailable` propagates with nothing cached, so the retry asks
        again; other registry answers that cannot be used leave the subject without a reader
        schema (then each writer schema is its own reader, as with ``--schema-evolution roll``).
        """
        sid = schema.schema_id
        if sid is None or self.registry is None:
            return None, self._latest.get(subject)
        key = (sid, subject)
        if key not in self._versions:
            try:
                versions = dict(self.registry.versions_of_id(sid))
                latest = self.registry.latest_version(subject)
            except RegistryUnavailable:
                raise
            except RegistryError as exc:
                _log.warning("schema versions unavailable: no reader schema for this subject",
                             subject=subject, schema_id=sid, error=str(exc)[:300])
                versions, latest = {}, None
            if latest is not None:
                lid, lver = latest
                try:
                    ls = self.schema_for_id(lid)
                except BadRecord as exc:
                    _log.warning("newest schema of the subject cannot be a reader schema",
                                 subject=subject, schema_id=lid, reason=exc.reason)
                else:
                    known = self._latest.get(subject)
                    if known is None or lver >= known[1]:
                        self._latest[subject] = (ls, lver)
            self._versions[key] = versions.get(subject)
        return self._versions[key], self._latest.get(subject)

    def resolution_problem(self, writer: WriterSchema, reader: WriterSchema) -> str | None:
        """Why ``writer``'s records cannot be read as ``reader`` (None: they can); cached per pair."""
        key = (writer.fingerprint, reader.fingerprint)
        if key not in self._problems:
            self._problems[key] = (
                None if key[0] == key[1] else resolution_problem(writer.avro, reader.avro)
            )
        return self._problems[key]


# --------------------------------------------------------------------------------------------
# Schema files: the writer schema of raw framing (a name from the package's schemas or a path)
# --------------------------------------------------------------------------------------------
#: Folder holding the ``*.avsc`` files: the package's own ``schemas`` resource folder (a plain
#: :class:`~pathlib.Path` for normal installs, any :class:`Traversable` for zipped ones). A module
#: attribute (read at call time, not import time) so tools and tests can point it elsewhere:
#: ``samples.SCHEMA_DIR = Path(...)``.
SCHEMA_DIR: Traversable = files("consumer") / "schemas"


class SchemaError(ValueError):
    """A schema name/path that does not exist or does not hold a valid Avro schema."""


def schema_names() -> list[str]:
    """Names (file stems) of the schemas in :data:`SCHEMA_DIR`, sorted."""
    if not SCHEMA_DIR.is_dir():
        return []
    return sorted(
        p.name.removesuffix(".avsc") for p in SCHEMA_DIR.iterdir() if p.name.endswith(".avsc") and p.is_file()
    )


def load_schema(name_or_path: str) -> dict[str, Any]:
    """Load and validate an Avro schema, returning the plain JSON dict (not fastavro's parsed form).

    ``name_or_path`` is either a name from :func:`schema_names` (``"page_view"``) or a path to an
    ``.avsc`` file. The plain dict is what a schema registry wants; pass it to
    :func:`parsed_schema`/``fastavro.parse_schema`` for encoding. Raises :class:`SchemaError`
    saying what was looked for and what exists, because a typo in a CLI flag should not end in a
    bare ``FileNotFoundError``.
    """
    candidate = SCHEMA_DIR / f"{name_or_path}.avsc"
    path: Traversable = candidate if candidate.is_file() else Path(name_or_path)
    if not path.is_file():
        raise SchemaError(
            f"no Avro schema {name_or_path!r}: expected one of {schema_names()} "
            f"(from {SCHEMA_DIR}) or a path to an existing .avsc file"
        )
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SchemaError(f"cannot read Avro schema {str(path)!r}: {exc}") from exc
    if not isinstance(schema, dict):
        raise SchemaError(
            f"Avro schema {str(path)!r} must be a JSON object (a record), got {type(schema).__name__}"
        )
    try:
        fastavro.parse_schema(schema)
    except Exception as exc:  # fastavro raises several unrelated types for bad schemas
        raise SchemaError(f"invalid Avro schema {str(path)!r}: {exc}") from exc
    return schema
