"""The stack's Confluent-compatible schema registry (dev/registry.py; see dev/README.md)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from support import StackSettings

CT = "application/vnd.schemaregistry.v1+json"


def _call(url: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": CT})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
def registry(stack: StackSettings) -> str:
    assert stack.schema_registry_url, "dev/stack did not print SCHEMA_REGISTRY_URL"
    return stack.schema_registry_url.rstrip("/")


def _schema(name: str) -> dict[str, Any]:
    return {
        "type": "record",
        "name": name,
        "namespace": "test.registry",
        "fields": [{"name": "attrs", "type": {"type": "map", "values": "string"}}],
    }


def test_register_and_fetch_by_id(registry: str) -> None:
    subject = f"t-{uuid.uuid4().hex[:10]}-value"
    schema = _schema(f"R{uuid.uuid4().hex[:8]}")
    text = json.dumps(schema)
    status, body = _call(f"{registry}/subjects/{subject}/versions", "POST", {"schema": text})
    assert status == 200, body
    sid = body["id"]
    assert isinstance(sid, int) and sid > 0

    # Same schema, different whitespace/key order -> same id, no new version.
    reordered = json.dumps(dict(reversed(list(schema.items()))), indent=2)
    status, again = _call(f"{registry}/subjects/{subject}/versions", "POST", {"schema": reordered})
    assert (status, again["id"]) == (200, sid)

    status, fetched = _call(f"{registry}/schemas/ids/{sid}")
    assert status == 200
    assert json.loads(fetched["schema"]) == schema

    assert _call(f"{registry}/subjects/{subject}/versions") == (200, [1])
    status, latest = _call(f"{registry}/subjects/{subject}/versions/latest")
    assert status == 200
    assert (latest["subject"], latest["version"], latest["id"]) == (subject, 1, sid)
    status, subjects = _call(f"{registry}/subjects")
    assert status == 200 and subject in subjects


def test_unknown_id_is_404_with_confluent_error_code(registry: str) -> None:
    status, body = _call(f"{registry}/schemas/ids/987654321")
    assert status == 404
    assert body["error_code"] == 40403
    assert isinstance(body["message"], str) and body["message"]
