"""Schema evolution: which reader schema a record's writer schema is read with (pure decisions).

With Confluent framing producers upgrade one by one, so writer schema ids interleave for a while.
A Parquet file has one schema; rolling the file at every change of writer schema turns an
interleaving of v1/v2 into a file per flip. Instead every record is read with the file's *reader
schema* under Avro's schema-resolution rules (fields added with defaults, removed fields, promoted
numeric types, string↔bytes, aliases), and the file changes only when a newer schema cannot be
read as the current one.

The policy (:func:`choose_reader`), for a record of writer schema W while the file's reader is C
and the newest version of the subject the registry held when an unseen id last arrived is L:

1. W resolves to C and C is not older than W → same file (an old producer's record in a new file).
2. W resolves to L → reader L (a roll if C was another schema; the first file of a partition).
3. W is newer than C (or there is no C) → a new file with W's own schema.
4. Otherwise W is older and cannot be read as C → a dead letter saying why.

"Newer" compares versions of the subject; when either schema is not registered under it, the
registry ids (which Confluent registries hand out increasing). Nothing here performs I/O: the
worker gathers W, C, L and their versions (from :class:`consumer.decoding.Decoder`) and applies
the decision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from consumer.decoding import WriterSchema
from consumer.resolution import resolution_problem, subject_for

__all__ = [
    "Decision",
    "VersionedSchema",
    "choose_reader",
    "newer",
    "resolution_problem",
    "subject_for",
]

# ---------------------------------------------------------------------------------------------
# The policy
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VersionedSchema:
    """A schema with its version in the subject (None when it is not registered under it)."""

    schema: WriterSchema
    version: int | None

    def label(self) -> str:
        sid = "?" if self.schema.schema_id is None else str(self.schema.schema_id)
        return f"schema id {sid} (version {self.version if self.version is not None else '?'})"


def newer(a: VersionedSchema, b: VersionedSchema) -> bool:
    """Whether ``a`` is a later schema of the subject than ``b``: by version, else by id."""
    if a.version is not None and b.version is not None:
        return a.version > b.version
    ai, bi = a.schema.schema_id, b.schema.schema_id
    return ai is not None and bi is not None and ai > bi


@dataclass(frozen=True)
class Decision:
    """The reader schema for the record (None: dead letter with ``reason``)."""

    reader: VersionedSchema | None
    reason: str = ""


def choose_reader(
    writer: VersionedSchema,
    current: VersionedSchema | None,
    latest: VersionedSchema | None,
    problem: Callable[[WriterSchema, WriterSchema], str | None],
) -> Decision:
    """The reader schema of a record of ``writer`` (see the module docstring for the policy);
    ``problem(writer, reader)`` is :func:`resolution_problem` (cached by the caller)."""
    w = writer.schema
    if current is not None:
        c = current.schema
        if c.fingerprint == w.fingerprint:
            return Decision(current)
        if not newer(writer, current) and problem(w, c) is None:
            return Decision(current)
    readable_as_latest = latest is not None and (
        latest.schema.fingerprint == w.fingerprint or problem(w, latest.schema) is None
    )
    if latest is not None and readable_as_latest and (current is None or not newer(current, latest)):
        return Decision(latest)
    if current is None or newer(writer, current):
        return Decision(writer)
    reason = problem(w, current.schema) or "not resolvable"
    return Decision(
        None,
        f"writer {writer.label()} cannot be read as {current.label()}, the reader schema of the "
        f"open file, and is older: {reason}"[:300],
    )
