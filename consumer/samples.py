"""Seeded, reproducible sample records for the three benchmark/test schemas in ``schemas/``.

The ``.avsc`` files are package data (``consumer/schemas/``, with a top-level ``schemas`` symlink
in the repository) read through :mod:`importlib.resources`, so a wheel or Docker install finds
them as well as an editable checkout does.

Why this exists: tests, benchmarks and the sample producer all need the *same* records without
storing them. Every record is a pure function of ``(schema name, seed, index)``: record ``i`` is
generated from its own ``random.Random`` seeded with a stable BLAKE2 hash of those three values,
so

* record ``i`` is identical whether you generate ``range(0, 10)`` or ``range(i, i + 1)`` — a test
  can recompute exactly what offset ``k`` of partition ``p`` must contain without replaying the
  stream, and a producer can be restarted at ``start=``;
* results do not depend on ``PYTHONHASHSEED`` (Python's built-in ``hash()`` of str is salted per
  process and must never be used for this).

Values are what fastavro writes and what the consumer must reproduce in Parquet: tz-aware UTC
``datetime`` for timestamps (millisecond-exact for ``timestamp-millis``), ``date``, ``Decimal``
quantized to the schema's scale, and UUIDs as ``str``. The variety is deliberate — map sizes
spread around a target with some empty maps, nullable fields sometimes null, occasional
non-ASCII keys and values — because those are the edge cases a map → Parquet converter gets wrong.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
import struct
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any, cast

import fastavro

from consumer import decoding
from consumer.decoding import SCHEMA_DIR, SchemaError, load_schema, schema_names

__all__ = [
    "SCHEMA_DIR",
    "SchemaError",
    "confluent_header",
    "encode_confluent",
    "encode_raw",
    "generate",
    "key_for",
    "load_schema",
    "make_record",
    "parsed_schema",
    "schema_names",
    "timestamp_ms_for",
]

#: All generated timestamps start here; a fixed instant keeps output reproducible across runs.
BASE_TIME = datetime(2024, 3, 1, 8, 0, 0, tzinfo=UTC)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CENT = Decimal("0.01")

#: Magic byte of the Confluent wire format: 0x00, then a 4-byte big-endian schema id.
CONFLUENT_MAGIC = 0
_CONFLUENT_HEADER = struct.Struct(">bI")


@lru_cache(maxsize=32)
def _parsed_cached(name_or_path: str, schema_dir: str) -> dict[str, Any]:
    # A record schema parses to a dict; fastavro's stubs only promise the wider Schema union.
    return cast(dict[str, Any], fastavro.parse_schema(load_schema(name_or_path)))


def parsed_schema(name_or_path: str) -> dict[str, Any]:
    """fastavro-parsed schema for :func:`encode_raw`/:func:`encode_confluent`, cached.

    Parsing is far more expensive than encoding one record, so callers that encode in a loop
    should parse once; the cache keys on :data:`SCHEMA_DIR` too, so overriding it is honoured.
    """
    return _parsed_cached(name_or_path, str(decoding.SCHEMA_DIR))


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


def encode_raw(parsed_schema: Any, record: dict[str, Any]) -> bytes:
    """Avro binary of one record with no framing (what a 'raw' topic carries)."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed_schema, record)
    return buf.getvalue()


def confluent_header(schema_id: int) -> bytes:
    """The 5-byte Confluent prefix: magic ``0x00`` then the schema id, 4 bytes big-endian."""
    if not 0 <= schema_id <= 0xFFFFFFFF:
        raise ValueError(f"schema id {schema_id} does not fit the 4-byte Confluent header")
    return _CONFLUENT_HEADER.pack(CONFLUENT_MAGIC, schema_id)


def encode_confluent(schema_id: int, parsed_schema: Any, record: dict[str, Any]) -> bytes:
    """Confluent wire format: ``0x00``, 4-byte big-endian schema id, then the Avro binary."""
    return confluent_header(schema_id) + encode_raw(parsed_schema, record)


# --------------------------------------------------------------------------------------------
# Per-record randomness
# --------------------------------------------------------------------------------------------


def _rng(name: str, seed: int, index: int) -> random.Random:
    """A generator private to one record: stable across processes, Python runs and ``n``."""
    digest = hashlib.blake2b(f"{name}\x00{seed}\x00{index}".encode(), digest_size=16).digest()
    return random.Random(int.from_bytes(digest, "big"))


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _map_size(rng: random.Random, mean: float, sd: float, p_empty: float) -> int:
    """Sizes spread around ``mean`` with a share of empty maps (a classic Parquet edge case)."""
    if rng.random() < p_empty:
        return 0
    return max(0, round(rng.gauss(mean, sd)))


def _millis(dt: datetime) -> datetime:
    """Truncate to whole milliseconds so timestamp-millis round-trips exactly."""
    return dt.replace(microsecond=dt.microsecond - dt.microsecond % 1000)


# --------------------------------------------------------------------------------------------
# page_view — the "small" workload
# --------------------------------------------------------------------------------------------

_PV_PATHS = ["/", "/p/", "/c/", "/s?q=", "/cart", "/acct", "/help/", "/blog/"]
_PV_DEVICES = ["DESKTOP", "MOBILE", "TABLET", "BOT"]
_PV_DEVICE_WEIGHTS = [45, 40, 10, 5]
# Short keys/values on purpose: real beacons pack many tiny tags; keeps the record ~100 bytes.
_PV_ATTRS: list[tuple[str, list[str]]] = [
    ("ab", ["a", "b", "c"]),
    ("lang", ["en", "de", "fr", "ja", "pt"]),
    ("cc", ["US", "DE", "FR", "JP", "BR", "GB"]),
    ("ref", ["g", "fb", "x", "mail", ""]),
    ("tz", ["+0", "+1", "-5", "+9"]),
    ("os", ["ios", "and", "win", "mac", "lnx"]),
    ("v", ["1", "2", "3"]),
    ("src", ["web", "app"]),
    ("exp", ["ctl", "t1", "t2"]),
    ("thm", ["dark", "lt"]),
    ("cmp", ["s24", "bf"]),
    ("rs", ["1x", "2x", "3x"]),
]
_PV_UNICODE_ATTRS: list[tuple[str, list[str]]] = [
    ("städt", ["Köln", "Zürich"]),
    ("市", ["東京", "大阪"]),
    ("emo", ["🚀", "👍🏽"]),
]


def _page_view(rng: random.Random, index: int) -> dict[str, Any]:
    ts = _millis(BASE_TIME + timedelta(milliseconds=index * 5 + rng.randrange(0, 40)))
    # Skewed user ids: a few heavy users share most views, like real traffic (and hot keys).
    user_id = rng.randrange(1, 5_000) if rng.random() < 0.7 else rng.randrange(5_000, 5_000_000)
    path = rng.choice(_PV_PATHS)
    if path.endswith(("/", "=")) and path != "/":
        path += str(rng.randrange(1, 99_999))
    attributes: dict[str, str] = {}
    for key, values in rng.sample(_PV_ATTRS, min(_map_size(rng, 7, 2.5, 0.05), len(_PV_ATTRS))):
        attributes[key] = rng.choice(values)
    if rng.random() < 0.05:
        key, values = rng.choice(_PV_UNICODE_ATTRS)
        attributes[key] = rng.choice(values)
    return {
        "event_id": _uuid(rng),
        "ts": ts,
        "user_id": user_id,
        "url": "https://ex.io" + path,
        "device": rng.choices(_PV_DEVICES, _PV_DEVICE_WEIGHTS)[0],
        "duration_ms": None if rng.random() < 0.15 else int(rng.expovariate(1 / 20_000)),
        "attributes": attributes,
    }


# --------------------------------------------------------------------------------------------
# metrics — the "wide" workload
# --------------------------------------------------------------------------------------------

_METRIC_PREFIXES = [
    "sys.cpu",
    "sys.mem",
    "sys.disk",
    "sys.net",
    "proc",
    "jvm.heap",
    "http.srv",
    "db.pool",
]
_METRIC_SUFFIXES = [
    ("user", "double"),
    ("sys", "double"),
    ("idle", "double"),
    ("used", "long"),
    ("free", "long"),
    ("errs", "long"),
    ("p99", "double"),
    ("cnt", "long"),
    ("ok", "boolean"),
    ("state", "string"),
]
#: (name, kind) — a fixed catalogue so one metric name always carries one value type, as in
#: real exporters; the union in the schema still has to cope with null and mixed kinds per map.
_METRIC_CATALOGUE: list[tuple[str, str]] = [
    (f"{p}.{s}", kind) for p in _METRIC_PREFIXES for s, kind in _METRIC_SUFFIXES
]
_METRIC_STATES = ["ok", "degraded", "down", "warming", "überlastet"]
_REGIONS = ["eu-west-1", "us-east-1", "ap-northeast-1"]
_ROLES = ["web", "api", "db", "cache", "batch"]


def _metric_map(rng: random.Random, target: int) -> dict[str, Any]:
    """~``target`` catalogue metrics with values; written for speed (1–2 draws per entry).

    This is the generator's hot loop (50 entries × every record), so each catalogue entry is
    kept with probability ``target / len(catalogue)`` — giving a binomial spread around the
    target without ``sample``/``sorted`` — and one uniform draw picks both null-ness and value.
    """
    keep = target / len(_METRIC_CATALOGUE)
    rand = rng.random
    states = _METRIC_STATES
    out: dict[str, Any] = {}
    for name, kind in _METRIC_CATALOGUE:
        if rand() >= keep:
            continue
        u = rand()
        if u < 0.03:
            out[name] = None  # reported but unreadable
        elif kind == "long":
            out[name] = int(math.exp(u * 23))  # log-uniform 1 .. ~1e10: counters of every size
        elif kind == "double":
            out[name] = round(rand() * 100, 2 if u < 0.8 else 6)
        elif kind == "boolean":
            out[name] = u < 0.97
        else:
            out[name] = states[int((u - 0.03) / 0.97 * len(states))]
    return out


def _metrics(rng: random.Random, index: int) -> dict[str, Any]:
    ts = BASE_TIME + timedelta(microseconds=index * 1_000 + rng.randrange(0, 1_000))
    role = rng.choice(_ROLES)
    region = rng.choice(_REGIONS)
    host = f"{role}-{rng.randrange(1, 200):03d}.{region}"
    metrics = _metric_map(rng, _map_size(rng, 50, 8, 0.02))
    if rng.random() < 0.05:
        metrics["custom.温度"] = round(rng.uniform(20, 90), 1)
    tags: dict[str, str] = {}
    if rng.random() >= 0.05:
        tags = {"region": region, "role": role, "env": rng.choice(["prod", "stg"])}
        if rng.random() < 0.5:
            tags["az"] = region + rng.choice("abc")
        if rng.random() < 0.3:
            tags["owner"] = rng.choice(["sre", "zoë", "data"])
    return {"host": host, "ts": ts, "metrics": metrics, "tags": tags, "day": ts.date()}


# --------------------------------------------------------------------------------------------
# order — the "nested" workload
# --------------------------------------------------------------------------------------------

_SEGMENTS = ["CONSUMER", "SMALL_BUSINESS", "ENTERPRISE", "EMPLOYEE"]
_SEGMENT_WEIGHTS = [80, 12, 5, 3]
_CARRIERS = ["dhl", "ups", "fedex", "la-poste", "ヤマト運輸"]
_SHIP_STATUSES = ["label_created", "picked_up", "in_transit", "out_for_delivery", "delivered"]
_ITEM_ATTRS: list[tuple[str, list[str]]] = [
    ("size", ["XS", "S", "M", "L", "XL", "42"]),
    ("colour", ["black", "white", "navy", "crème", "赤"]),
    ("gift_wrap", ["yes", "no"]),
    ("engraving", ["For Ana ♥", "J.K.", ""]),
]
_NOTES = ["leave at door", "call before delivery", "Bitte beim Nachbarn abgeben", "🎁 gift", ""]


def _order(rng: random.Random, index: int) -> dict[str, Any]:
    created = _millis(BASE_TIME + timedelta(milliseconds=index * 250 + rng.randrange(0, 250)))
    customer_id = rng.randrange(1, 200_000)
    email = None if rng.random() < 0.1 else f"user{customer_id}@example.com"
    n_items = 0 if rng.random() < 0.02 else min(1 + int(rng.expovariate(0.6)), 20)
    items: list[dict[str, Any]] = []
    total = Decimal(0)
    for _ in range(n_items):
        price = Decimal(round(rng.lognormvariate(3, 1) * 100)) * _CENT
        quantity = 1 if rng.random() < 0.7 else rng.randrange(2, 10)
        total += price * quantity
        attrs = {k: rng.choice(v) for k, v in rng.sample(_ITEM_ATTRS, rng.randrange(0, 4))}
        items.append(
            {
                "sku": f"SKU-{rng.randrange(10_000, 99_999)}",
                "quantity": quantity,
                "unit_price": price.quantize(_CENT),
                "attributes": attrs,
            }
        )
    shipments: dict[str, dict[str, Any]] = {}
    for s in range(rng.choice([0, 0, 1, 1, 1, 2, 3])):
        at = created + timedelta(hours=rng.randrange(1, 24))
        events = []
        for status in _SHIP_STATUSES[: rng.randrange(0, len(_SHIP_STATUSES) + 1)]:
            at += timedelta(minutes=rng.randrange(5, 600), microseconds=rng.randrange(1_000_000))
            events.append({"at": at, "status": status})
        shipments[f"S{s + 1}"] = {
            "carrier": rng.choice(_CARRIERS),
            "tracking": None if not events else f"1Z{rng.getrandbits(48):012X}",
            "events": events,
        }
    return {
        "order_id": _uuid(rng),
        "created_at": created,
        "customer": {
            "id": customer_id,
            "email": email,
            "segment": rng.choices(_SEGMENTS, _SEGMENT_WEIGHTS)[0],
        },
        "items": items,
        "shipments": shipments,
        "total": total.quantize(_CENT),
        "notes": rng.choice(_NOTES) if rng.random() < 0.2 else None,
        "order_date": created.date(),
    }


# --------------------------------------------------------------------------------------------
# Public generator API
# --------------------------------------------------------------------------------------------

_GENERATORS: dict[str, Callable[[random.Random, int], dict[str, Any]]] = {
    "page_view": _page_view,
    "metrics": _metrics,
    "order": _order,
}


def _generator(name: str) -> Callable[[random.Random, int], dict[str, Any]]:
    try:
        return _GENERATORS[name]
    except KeyError:
        raise SchemaError(f"no sample generator for schema {name!r}; known: {sorted(_GENERATORS)}") from None


def make_record(name: str, index: int, seed: int = 0) -> dict[str, Any]:
    """Record number ``index`` of stream ``(name, seed)``; equal to ``generate(...)``'s item."""
    if index < 0:
        raise ValueError(f"record index must be >= 0, got {index}")
    return _generator(name)(_rng(name, seed, index), index)


def generate(name: str, n: int, seed: int = 0, start: int = 0) -> Iterator[dict[str, Any]]:
    """Yield records ``start .. start + n - 1`` of stream ``(name, seed)``, lazily.

    Timestamps grow with the index (plus jitter), so a stream looks like live traffic starting
    at :data:`BASE_TIME`; each record is independent of ``n`` and of its neighbours.
    """
    gen = _generator(name)
    if n < 0 or start < 0:
        raise ValueError(f"n and start must be >= 0, got n={n} start={start}")
    for index in range(start, start + n):
        yield gen(_rng(name, seed, index), index)


def key_for(name: str, record: dict[str, Any]) -> bytes:
    """The Kafka key a real producer would use: the entity whose events must stay ordered."""
    if name == "page_view":
        return str(record["user_id"]).encode()
    if name == "metrics":
        return str(record["host"]).encode()
    if name == "order":
        return str(record["customer"]["id"]).encode()
    raise SchemaError(f"no key rule for schema {name!r}; known: {sorted(_GENERATORS)}")


def _to_ms(dt: datetime) -> int:
    # Integer arithmetic on timedelta: float timestamp() can be off by one millisecond.
    return (dt - _EPOCH) // timedelta(milliseconds=1)


def spread_timestamp_ms(timestamp_ms: int, index: int, hours: int) -> int:
    """Record ``index``'s Kafka timestamp moved by a shuffled whole number of hours in
    ``[0, hours)``: consecutive records of one partition land in interleaved hours, the shape of
    late and early data that a time-bucketed layout (--partition-by @timestamp) must handle.
    ``hours`` 0 or 1 leaves the timestamp as it is."""
    if hours <= 1:
        return timestamp_ms
    return timestamp_ms + ((index * 7) % hours) * 3_600_000


def timestamp_ms_for(name: str, record: dict[str, Any]) -> int:
    """Kafka record timestamp (ms since epoch) taken from the data's own event time."""
    if name == "page_view":
        return _to_ms(record["ts"])
    if name == "metrics":
        return _to_ms(record["ts"])
    if name == "order":
        return _to_ms(record["created_at"])
    raise SchemaError(f"no timestamp rule for schema {name!r}; known: {sorted(_GENERATORS)}")


def _example(name: str) -> str:
    """Record 0 of seed 0 as JSON, for documentation (``python -m consumer.samples NAME``)."""
    return json.dumps(make_record(name, 0), default=str, ensure_ascii=False, indent=2)


if __name__ == "__main__":  # pragma: no cover - documentation helper
    import sys

    for arg in sys.argv[1:] or schema_names():
        print(f"# {arg}\n{_example(arg)}")
