"""Avro schema resolution, checked on the schemas (pure: no I/O, no consumer imports).

Whether every record written with one schema can be read as another under the Avro
specification's "Schema Resolution" rules — fields added with defaults, removed fields, promoted
numeric types, string↔bytes, aliases of records and fields, enums and unions — and, when not, a
reason that names the field. The decoders (fastavro's ``reader_schema``, the native decoder) do
the resolving; this check runs once per schema pair so that a record is only ever handed to a
decoder with a reader schema it is known to resolve to.
"""

from __future__ import annotations

from typing import Any

__all__ = ["resolution_problem", "subject_for"]

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
#: writer type → reader types it may be read as (Avro spec, "Schema Resolution")
_PROMOTIONS: dict[str, frozenset[str]] = {
    "int": frozenset({"long", "float", "double"}),
    "long": frozenset({"float", "double"}),
    "float": frozenset({"double"}),
    "string": frozenset({"bytes"}),
    "bytes": frozenset({"string"}),
}


def subject_for(strategy: str, topic: str, avro: dict[str, Any]) -> str:
    """The subject whose latest version is the reader schema (Confluent's subject name strategies:
    TopicNameStrategy ``<topic>-value``, RecordNameStrategy ``<full name>``,
    TopicRecordNameStrategy ``<topic>-<full name>``)."""
    if strategy == "topic":
        return f"{topic}-value"
    name = str(avro.get("name", ""))
    ns = avro.get("namespace")
    full = name if "." in name or not ns else f"{ns}.{name}"
    if strategy == "record":
        return full
    if strategy == "topic-record":
        return f"{topic}-{full}"
    raise ValueError(f"unknown subject strategy {strategy!r}")


# ---------------------------------------------------------------------------------------------
# Schema-level resolution check (Avro specification, "Schema Resolution")
# ---------------------------------------------------------------------------------------------
class _Names:
    """Named types of one schema by full and short name, so references can be followed."""

    def __init__(self, schema: Any) -> None:
        self.by_name: dict[str, dict[str, Any]] = {}
        self._collect(schema, None)

    def _collect(self, t: Any, ns: str | None) -> None:
        if isinstance(t, list):
            for b in t:
                self._collect(b, ns)
            return
        if not isinstance(t, dict):
            return
        kind = t.get("type")
        if kind in ("record", "error", "enum", "fixed"):
            name = str(t.get("name", ""))
            space = t.get("namespace", ns)
            full = name if "." in name or not space else f"{space}.{name}"
            self.by_name.setdefault(full, t)
            self.by_name.setdefault(full.rsplit(".", 1)[-1], t)
            inner_ns = full.rsplit(".", 1)[0] if "." in full else None
            for f in t.get("fields", []) or []:
                self._collect(f.get("type"), inner_ns)
        elif kind == "array":
            self._collect(t.get("items"), ns)
        elif kind == "map":
            self._collect(t.get("values"), ns)
        elif isinstance(kind, (dict, list)):
            self._collect(kind, ns)

    def deref(self, t: Any) -> Any:
        """The type itself: named references replaced by their definition, ``{"type": "int"}`` by
        ``"int"`` (logical types are kept: resolution follows the underlying type)."""
        for _ in range(64):
            if isinstance(t, str) and t not in _PRIMITIVES:
                found = self.by_name.get(t) or self.by_name.get(t.rsplit(".", 1)[-1])
                if found is None:
                    return t
                t = found
            elif isinstance(t, dict) and isinstance(t.get("type"), (dict, list)):
                t = t["type"]
            elif isinstance(t, dict) and t.get("type") in _PRIMITIVES:
                return t["type"]
            elif isinstance(t, dict) and isinstance(t.get("type"), str) and t["type"] not in (
                "record", "error", "enum", "fixed", "array", "map"
            ):
                t = t["type"]
            else:
                return t
        return t


def _kind(t: Any) -> str:
    if isinstance(t, str):
        return t
    if isinstance(t, list):
        return "union"
    return str(t.get("type"))


def _short(name: Any) -> str:
    return str(name).rsplit(".", 1)[-1]


def _names_match(w: dict[str, Any], r: dict[str, Any]) -> bool:
    wn = _short(w.get("name"))
    return wn == _short(r.get("name")) or wn in {_short(a) for a in r.get("aliases", []) or []}


def resolution_problem(writer: dict[str, Any], reader: dict[str, Any]) -> str | None:
    """Why records written with ``writer`` cannot all be read as ``reader`` (None: they can).

    Checked on the schemas, before any record is read, so the decision is made once per schema
    pair and the reason names the field: ``field 'x' has no default``.
    """
    wn, rn = _Names(writer), _Names(reader)
    return _check(writer, reader, wn, rn, "", set())


def _check(w: Any, r: Any, wn: _Names, rn: _Names, path: str, seen: set[tuple[int, int]]) -> str | None:
    w, r = wn.deref(w), rn.deref(r)
    wk, rk = _kind(w), _kind(r)
    where = f"field {path!r}" if path else "the record"
    if wk == "union":
        for branch in w:
            problem = _check(branch, r, wn, rn, path, seen)
            if problem is not None:
                return problem
        return None
    if rk == "union":
        # The first branch of the reader's union that the writer's type matches (exactly first).
        for exact in (True, False):
            for branch in r:
                b = rn.deref(branch)
                if exact and _kind(b) != wk:
                    continue
                if not exact and wk not in _PROMOTIONS:
                    continue
                if not exact and _kind(b) not in _PROMOTIONS[wk]:
                    continue
                if _kind(b) in ("record", "enum", "fixed") and not _names_match(w, b):
                    continue
                return _check(w, b, wn, rn, path, seen)
        return f"{where}: writer type {wk} matches no branch of the reader's union"
    if wk in _PRIMITIVES:
        if wk == rk or rk in _PROMOTIONS.get(wk, frozenset()):
            return None
        return f"{where}: writer type {wk} cannot be read as {rk}"
    if wk != rk:
        return f"{where}: writer type {wk} cannot be read as {rk}"
    if wk == "array":
        return _check(w.get("items"), r.get("items"), wn, rn, f"{path}[]", seen)
    if wk == "map":
        return _check(w.get("values"), r.get("values"), wn, rn, f"{path}{{}}", seen)
    if not _names_match(w, r):
        return f"{where}: writer {wk} {w.get('name')!r} cannot be read as {rk} {r.get('name')!r}"
    if wk == "fixed":
        if w.get("size") != r.get("size"):
            return f"{where}: fixed size {w.get('size')} cannot be read as size {r.get('size')}"
        return None
    if wk == "enum":
        missing = [s for s in w.get("symbols", []) if s not in set(r.get("symbols", []))]
        if missing and "default" not in r:
            return f"{where}: enum symbols {missing} are not in the reader's enum, which has no default"
        return None
    # records
    key = (id(w), id(r))
    if key in seen:
        return None  # recursive types: the pair is being checked already
    seen = seen | {key}
    by_name = {f["name"]: f for f in w.get("fields", [])}
    for rf in r.get("fields", []):
        name = rf["name"]
        wf = by_name.get(name)
        if wf is None:
            wf = next((by_name[a] for a in rf.get("aliases", []) or [] if a in by_name), None)
        fpath = f"{path}.{name}" if path else name
        if wf is None:
            if "default" not in rf:
                return f"field {fpath!r} is not in the writer schema and has no default"
            continue
        problem = _check(wf["type"], rf["type"], wn, rn, fpath, seen)
        if problem is not None:
            return problem
    return None
