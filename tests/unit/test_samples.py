"""Unit tests for consumer.samples: determinism, Avro round-trips, sizes, framing."""

from __future__ import annotations

import io
import json
import statistics
import struct
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import pytest

from consumer import decoding, samples

NAMES = ["metrics", "order", "page_view"]


def _normalize(value: Any) -> Any:
    """fastavro decodes logicalType uuid to uuid.UUID; the generator emits str."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {k: _normalize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalize(v) for v in value]
    return value


def _decode(parsed: Any, data: bytes) -> Any:
    return fastavro.schemaless_reader(io.BytesIO(data), parsed, None)


def test_schema_names() -> None:
    assert samples.schema_names() == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_schemas_parse_and_are_namespaced(name: str) -> None:
    schema = samples.load_schema(name)
    fastavro.parse_schema(schema)
    assert schema["type"] == "record"
    assert schema["namespace"] == "com.example.events"


def test_load_schema_by_path(tmp_path: Path) -> None:
    path = samples.SCHEMA_DIR / "page_view.avsc"
    assert samples.load_schema(str(path)) == samples.load_schema("page_view")


def test_load_schema_missing_lists_known_names() -> None:
    with pytest.raises(samples.SchemaError, match=r"no Avro schema 'nope'.*page_view"):
        samples.load_schema("nope")


def test_load_schema_invalid(tmp_path: Path) -> None:
    bad_json = tmp_path / "bad.avsc"
    bad_json.write_text("{not json")
    with pytest.raises(samples.SchemaError, match="cannot read Avro schema"):
        samples.load_schema(str(bad_json))
    bad_avro = tmp_path / "bad2.avsc"
    bad_avro.write_text(json.dumps({"type": "record", "name": "X", "fields": [{"name": "a"}]}))
    with pytest.raises(samples.SchemaError, match="invalid Avro schema"):
        samples.load_schema(str(bad_avro))
    not_record = tmp_path / "bad3.avsc"
    not_record.write_text('"string"')
    with pytest.raises(samples.SchemaError, match="must be a JSON object"):
        samples.load_schema(str(not_record))


def test_schema_dir_is_overridable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tiny.avsc").write_text(
        json.dumps({"type": "record", "name": "Tiny", "fields": [{"name": "a", "type": "int"}]})
    )
    monkeypatch.setattr(decoding, "SCHEMA_DIR", tmp_path)
    assert samples.schema_names() == ["tiny"]
    assert samples.load_schema("tiny")["name"] == "Tiny"
    assert samples.parsed_schema("tiny")["name"] == "Tiny"


@pytest.mark.parametrize("name", NAMES)
def test_generate_is_deterministic_and_index_independent(name: str) -> None:
    first = list(samples.generate(name, 50, seed=7))
    again = list(samples.generate(name, 50, seed=7))
    assert first == again
    # record i does not depend on n or start
    assert list(samples.generate(name, 10, seed=7, start=20)) == first[20:30]
    assert samples.make_record(name, 33, seed=7) == first[33]
    # a different seed gives different records
    assert list(samples.generate(name, 50, seed=8)) != first


def test_generate_rejects_unknown_name_and_bad_args() -> None:
    with pytest.raises(samples.SchemaError, match="no sample generator"):
        list(samples.generate("nope", 1))
    with pytest.raises(ValueError):
        list(samples.generate("page_view", -1))


@pytest.mark.parametrize("name", NAMES)
def test_records_round_trip_through_avro(name: str) -> None:
    parsed = samples.parsed_schema(name)
    for record in samples.generate(name, 300, seed=3):
        raw = samples.encode_raw(parsed, record)
        assert _normalize(_decode(parsed, raw)) == record


@pytest.mark.parametrize("name", NAMES)
def test_value_types_are_fastavro_native(name: str) -> None:
    record = samples.make_record(name, 0)
    if name == "page_view":
        assert isinstance(record["ts"], datetime) and record["ts"].tzinfo == UTC
        assert record["ts"].microsecond % 1000 == 0
        uuid.UUID(record["event_id"])
    elif name == "metrics":
        assert isinstance(record["ts"], datetime) and record["ts"].tzinfo == UTC
        assert isinstance(record["day"], date)
    else:
        assert isinstance(record["total"], Decimal)
        assert record["total"].as_tuple().exponent == -2
        assert isinstance(record["order_date"], date)
        assert isinstance(record["order_id"], str)


def test_variety() -> None:
    """The edge cases the converter must handle actually occur in a modest sample."""
    pvs = list(samples.generate("page_view", 2000))
    assert any(not r["attributes"] for r in pvs)
    assert any(r["duration_ms"] is None for r in pvs)
    assert any(any(not k.isascii() or not v.isascii() for k, v in r["attributes"].items()) for r in pvs)
    sizes = [len(r["attributes"]) for r in pvs]
    assert 5 <= statistics.mean(sizes) <= 9
    assert len(set(sizes)) > 5

    mets = list(samples.generate("metrics", 1000))
    values = [v for r in mets for v in r["metrics"].values()]
    kinds = {type(v) for v in values}
    assert kinds == {type(None), int, float, str, bool}
    assert 40 <= statistics.mean(len(r["metrics"]) for r in mets) <= 60

    orders = list(samples.generate("order", 1000))
    assert any(not r["shipments"] for r in orders)
    assert any(r["customer"]["email"] is None for r in orders)
    assert any(len(r["items"]) > 2 for r in orders)
    assert any(ev for r in orders for s in r["shipments"].values() for ev in s["events"])


@pytest.mark.parametrize(("name", "target"), [("page_view", 100), ("metrics", 1000)])
def test_average_encoded_size_matches_target(name: str, target: int) -> None:
    parsed = samples.parsed_schema(name)
    sizes = [len(samples.encode_raw(parsed, r)) for r in samples.generate(name, 500, seed=11)]
    assert target * 0.5 <= statistics.mean(sizes) <= target * 1.5


def test_confluent_framing() -> None:
    parsed = samples.parsed_schema("page_view")
    record = samples.make_record("page_view", 5)
    framed = samples.encode_confluent(0x01020304, parsed, record)
    assert framed[:5] == b"\x00\x01\x02\x03\x04"
    assert framed[5:] == samples.encode_raw(parsed, record)
    magic, schema_id = struct.unpack(">bI", framed[:5])
    assert (magic, schema_id) == (0, 0x01020304)
    assert _normalize(_decode(parsed, framed[5:])) == record
    with pytest.raises(ValueError):
        samples.encode_confluent(2**32, parsed, record)


def test_keys_and_timestamps() -> None:
    pv = samples.make_record("page_view", 10)
    assert samples.key_for("page_view", pv) == str(pv["user_id"]).encode()
    assert samples.timestamp_ms_for("page_view", pv) == int(pv["ts"].timestamp() * 1000)
    m = samples.make_record("metrics", 10)
    assert samples.key_for("metrics", m) == m["host"].encode()
    assert samples.timestamp_ms_for("metrics", m) == int(m["ts"].timestamp()) * 1000 + (
        m["ts"].microsecond // 1000
    )
    o = samples.make_record("order", 10)
    assert samples.key_for("order", o) == str(o["customer"]["id"]).encode()
    assert samples.timestamp_ms_for("order", o) >= samples.timestamp_ms_for(
        "order", samples.make_record("order", 0)
    )
    with pytest.raises(samples.SchemaError):
        samples.key_for("nope", {})
