"""Schema resolution on Arrow batches: a chunk decoded natively with its *writer* schema, then
projected onto the *reader* schema's columns.

The native decoder checks every body against the writer schema (exactly as fastavro reads it) and
decodes it to the writer's Arrow columns. Resolving to the reader is then column work: a reader
field the writer has (by name or by one of the reader field's aliases) is taken as it is when both
sides are the same Avro type, or cast when Avro promotes it (int→long→float→double, string↔bytes,
also inside ``["null", T]``); a field the writer lacks is its default, repeated; a writer field
the reader lacks is dropped; a record field whose record changed gets the same treatment one
level down. Anything else — an enum, array, map or general union that changed — raises
:class:`ProjectionUnsupported` and the caller resolves that schema pair
with fastavro's ``reader_schema`` (the reference), so results are the same either way
(tests/unit/test_projection.py checks both paths against each other on generated evolutions).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import fastavro
import fastavro.schema
import pyarrow as pa

from consumer.typemap import RecordConverter, arrow_schema

__all__ = ["Projection", "ProjectionUnsupported"]

#: writer primitive → reader primitives it is promoted to (Avro specification)
_PROMOTE = {
    "int": ("long", "float", "double"),
    "long": ("float", "double"),
    "float": ("double",),
    "string": ("bytes",),
    "bytes": ("string",),
}


class ProjectionUnsupported(ValueError):
    """This writer → reader pair is not resolved on Arrow columns; use fastavro for it."""


def _inner(t: Any) -> Any:
    """``T`` of ``["null", T]`` / ``[T, "null"]``, else ``t`` itself."""
    if isinstance(t, list) and len(t) == 2 and "null" in t:
        return t[1] if t[0] == "null" else t[0]
    return t


def _canonical(t: Any) -> str:
    return json.dumps(t, sort_keys=True, separators=(",", ":"))


def _primitive(t: Any) -> str | None:
    if isinstance(t, str):
        return t
    if isinstance(t, dict) and isinstance(t.get("type"), str) and "logicalType" not in t:
        return str(t["type"])
    return None


@dataclass(frozen=True)
class _Take:
    index: int


@dataclass(frozen=True)
class _Cast:
    index: int
    to: pa.DataType


@dataclass(frozen=True)
class _Const:
    value: pa.Array  # one row: the default


@dataclass(frozen=True)
class _Nested:
    """A record field whose record changed: its struct's children projected in turn."""

    index: int
    to: pa.StructType
    plan: list[_Step]


_Step = _Take | _Cast | _Const | _Nested


def _short(name: Any) -> str:
    return str(name).rsplit(".", 1)[-1]


def _is_record(t: Any) -> bool:
    return isinstance(t, dict) and t.get("type") == "record"


def _plan(
    w: dict[str, Any], r: dict[str, Any], wtypes: list[pa.Field], rtypes: list[pa.Field]
) -> list[_Step]:
    """The steps that turn the columns of writer record ``w`` into those of reader record ``r``
    (both expanded: named types inlined; ``*types``: their Arrow fields)."""
    wfields = {f["name"]: (i, f) for i, f in enumerate(w.get("fields", []))}
    plan: list[_Step] = []
    missing: list[tuple[int, dict[str, Any]]] = []
    for j, rf in enumerate(r.get("fields", [])):
        found = wfields.get(rf["name"]) or next(
            (wfields[a] for a in rf.get("aliases", []) or [] if a in wfields), None
        )
        target = rtypes[j].type
        if found is None:
            missing.append((j, rf))
            plan.append(_Const(pa.array([], target)))  # filled below
            continue
        i, wf = found
        wt, rt = _inner(wf["type"]), _inner(rf["type"])
        if _canonical(wt) == _canonical(rt) and wtypes[i].type == target:
            plan.append(_Take(i))
            continue
        wp, rp = _primitive(wt), _primitive(rt)
        if wp is not None and rp is not None and rp in _PROMOTE.get(wp, ()):
            plan.append(_Cast(i, target))
            continue
        if (
            _is_record(wt) and _is_record(rt)
            and isinstance(wtypes[i].type, pa.StructType) and isinstance(target, pa.StructType)
            and (_short(wt.get("name")) == _short(rt.get("name"))
                 or _short(wt.get("name")) in {_short(a) for a in rt.get("aliases", []) or []})
        ):
            plan.append(_Nested(i, target, _plan(wt, rt, list(wtypes[i].type), list(target))))
            continue
        raise ProjectionUnsupported(f"field {rf['name']!r}: {_canonical(wt)} → {_canonical(rt)}")
    if missing:
        defaults = _defaults(r, [rf for _, rf in missing])
        for j, rf in missing:
            plan[j] = _Const(defaults.column(defaults.schema.get_field_index(rf["name"])))
    return plan


def _defaults(reader: dict[str, Any], missing: list[dict[str, Any]]) -> pa.RecordBatch:
    """One row holding the defaults of the reader fields the writer lacks, built by fastavro
    (an empty body read as those fields) and the type mapping: the same values the reference
    path produces."""
    base = {k: v for k, v in reader.items() if k not in ("fields", "aliases", "doc")}
    sub = {**base, "fields": missing}
    empty = {**base, "fields": []}
    try:
        record = fastavro.schemaless_reader(
            io.BytesIO(b""), fastavro.parse_schema(empty), fastavro.parse_schema(sub)
        )
        if not isinstance(record, dict):
            raise TypeError("defaults did not read as a record")
        return RecordConverter(sub).to_batch([record])
    except Exception as exc:
        raise ProjectionUnsupported(f"defaults not mappable: {exc}") from None


def _apply(plan: list[_Step], columns: list[pa.Array], n: int) -> list[pa.Array]:
    out: list[pa.Array] = []
    zeros: pa.Array | None = None
    for p in plan:
        if isinstance(p, _Take):
            out.append(columns[p.index])
        elif isinstance(p, _Cast):
            import pyarrow.compute as pc  # only a promotion computes (consumer/bucketing.py: why)

            # int/long → float/double round like a C cast (the Avro promotion); other casts stay
            # safe, so bytes that are not UTF-8 are refused, never passed through
            out.append(pc.cast(columns[p.index], p.to, safe=not pa.types.is_floating(p.to)))
        elif isinstance(p, _Nested):
            struct = columns[p.index]
            if struct.offset:
                struct = pa.concat_arrays([struct])  # children below read from offset 0
            children = [struct.field(k) for k in range(struct.type.num_fields)]
            mask = struct.is_null() if struct.null_count else None
            out.append(pa.StructArray.from_arrays(_apply(p.plan, children, len(struct)), fields=list(p.to),
                                                  mask=mask))
        else:
            if zeros is None:
                zeros = pa.array([0] * n, pa.int32())
            out.append(p.value.take(zeros))
    return out


class Projection:
    """Writer-schema batches → reader-schema batches, planned once per (writer, reader) pair."""

    def __init__(self, writer: dict[str, Any], reader: dict[str, Any]) -> None:
        try:
            wx: dict[str, Any] = fastavro.schema.expand_schema(writer)  # type: ignore[assignment]
            rx: dict[str, Any] = fastavro.schema.expand_schema(reader)  # type: ignore[assignment]
            self.writer_schema = arrow_schema(writer)
            self.schema = arrow_schema(reader)
        except Exception as exc:
            raise ProjectionUnsupported(f"schemas not mappable: {exc}") from None
        self.plan = _plan(wx, rx, list(self.writer_schema), list(self.schema))

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The reader's value columns of a batch of the writer's (ArrowInvalid when a cast
        refuses a value, e.g. bytes that are not UTF-8: the caller decodes that chunk with
        fastavro, which turns exactly that record into a dead letter)."""
        columns = _apply(self.plan, batch.columns, batch.num_rows)
        return pa.RecordBatch.from_arrays(columns, schema=self.schema)
