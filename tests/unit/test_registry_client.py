"""SchemaRegistryClient against a tiny real HTTP registry on 127.0.0.1 (no mocks)."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from consumer import samples
from consumer.registry import (
    RegistryError,
    RegistryUnavailable,
    SchemaRegistryClient,
    UnknownSchemaId,
)


@dataclass
class FakeRegistry:
    """State of the in-process registry: schemas by id, subjects, and a request log."""

    base_path: str = ""
    credentials: tuple[str, str] | None = None
    schemas: dict[int, str] = field(default_factory=dict)
    schema_types: dict[int, str] = field(default_factory=dict)
    subjects: dict[str, list[int]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    auth_headers: list[str | None] = field(default_factory=list)
    fail_next: list[int] = field(default_factory=list)  # statuses to answer before real replies
    url: str = ""

    def count(self, method: str, path: str) -> int:
        return sum(1 for r in self.requests if r == (method, self.base_path + path))


def _handler(reg: FakeRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
            pass

        def _reply(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self, method: str) -> None:
            reg.requests.append((method, self.path))
            reg.auth_headers.append(self.headers.get("Authorization"))
            if reg.fail_next:
                self._reply(reg.fail_next.pop(0), {"error_code": 50301, "message": "busy"})
                return
            if reg.credentials is not None:
                token = base64.b64encode(":".join(reg.credentials).encode()).decode()
                if self.headers.get("Authorization") != f"Basic {token}":
                    self._reply(401, {"error_code": 401, "message": "Unauthorized"})
                    return
            if not self.path.startswith(reg.base_path + "/"):
                self._reply(404, {"error_code": 404, "message": "HTTP 404 Not Found"})
                return
            parts = self.path[len(reg.base_path) :].strip("/").split("/")
            if method == "GET" and parts == ["subjects"]:
                self._reply(200, sorted(reg.subjects))
            elif method == "GET" and parts[:2] == ["schemas", "ids"] and len(parts) == 3:
                text = reg.schemas.get(int(parts[2]))
                if text is None:
                    self._reply(404, {"error_code": 40403, "message": "Schema not found"})
                else:
                    body = {"schema": text}
                    if int(parts[2]) in reg.schema_types:
                        body["schemaType"] = reg.schema_types[int(parts[2])]
                    self._reply(200, body)
            elif method == "GET" and parts[:2] == ["schemas", "ids"] and parts[3:] == ["versions"]:
                sid = int(parts[2])
                if sid not in reg.schemas:
                    self._reply(404, {"error_code": 40403, "message": "Schema not found"})
                else:
                    self._reply(200, [{"subject": subj, "version": ids.index(sid) + 1}
                                      for subj, ids in reg.subjects.items() if sid in ids])
            elif method == "GET" and len(parts) == 4 and parts[::2] == ["subjects", "versions"]:
                ids = reg.subjects.get(parts[1])
                if not ids:
                    self._reply(404, {"error_code": 40401, "message": f"Subject '{parts[1]}' not found."})
                else:
                    self._reply(200, {"subject": parts[1], "version": len(ids), "id": ids[-1],
                                      "schema": reg.schemas[ids[-1]]})
            elif method == "POST" and len(parts) == 3 and parts[::2] == ["subjects", "versions"]:
                length = int(self.headers["Content-Length"])
                payload = json.loads(self.rfile.read(length))
                text = payload["schema"]
                try:
                    json.loads(text)
                except ValueError:
                    self._reply(422, {"error_code": 42201, "message": "Invalid schema"})
                    return
                if "incompatible" in text:
                    self._reply(
                        409,
                        {
                            "error_code": 409,
                            "message": "Schema being registered is incompatible with an earlier schema",
                        },
                    )
                    return
                known = [i for i, existing in reg.schemas.items() if existing == text]
                sid = known[0] if known else len(reg.schemas) + 1
                reg.schemas[sid] = text
                reg.subjects.setdefault(parts[1], []).append(sid)
                self._reply(200, {"id": sid})
            else:
                self._reply(404, {"error_code": 404, "message": "HTTP 404 Not Found"})

        def do_GET(self) -> None:
            self._route("GET")

        def do_POST(self) -> None:
            self._route("POST")

    return Handler


def _serve(reg: FakeRegistry) -> Iterator[FakeRegistry]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(reg))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    reg.url = f"http://127.0.0.1:{server.server_address[1]}{reg.base_path}"
    try:
        yield reg
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def registry() -> Iterator[FakeRegistry]:
    yield from _serve(FakeRegistry())


@pytest.fixture
def apicurio() -> Iterator[FakeRegistry]:
    yield from _serve(FakeRegistry(base_path="/apis/ccompat/v7"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_register_then_fetch_by_id_is_cached(registry: FakeRegistry) -> None:
    schema = samples.load_schema("page_view")
    client = SchemaRegistryClient(registry.url)
    schema_id = client.register("pv-value", schema)
    assert schema_id == 1
    assert registry.subjects == {"pv-value": [1]}

    # registering the same schema again is answered from the client cache
    assert client.register("pv-value", schema) == 1
    assert registry.count("POST", "/subjects/pv-value/versions") == 1

    fetched = client.schema_by_id(schema_id)
    assert fetched == schema
    for _ in range(5):
        assert client.schema_by_id(schema_id) is fetched
    assert registry.count("GET", "/schemas/ids/1") == 1


def test_register_accepts_string_and_distinct_schemas_get_distinct_ids(
    registry: FakeRegistry,
) -> None:
    client = SchemaRegistryClient(registry.url + "/")  # trailing slash tolerated
    a = client.register("a-value", json.dumps(samples.load_schema("metrics")))
    b = client.register("b-value", samples.load_schema("order"))
    assert (a, b) == (1, 2)
    assert client.schema_by_id(2)["name"] == "Order"
    assert client.subjects() == ["a-value", "b-value"]


def test_subject_is_url_quoted(registry: FakeRegistry) -> None:
    client = SchemaRegistryClient(registry.url)
    client.register("odd/subject name", {"type": "string"})
    assert ("POST", "/subjects/odd%2Fsubject%20name/versions") in registry.requests


def test_unknown_schema_id(registry: FakeRegistry) -> None:
    client = SchemaRegistryClient(registry.url)
    with pytest.raises(UnknownSchemaId, match=r"schema id 42 is not known") as info:
        client.schema_by_id(42)
    assert info.value.schema_id == 42
    assert isinstance(info.value, RegistryError)
    assert registry.url in str(info.value)


def test_base_url_with_path(apicurio: FakeRegistry) -> None:
    client = SchemaRegistryClient(apicurio.url)
    schema_id = client.register("t-value", samples.load_schema("page_view"))
    assert client.schema_by_id(schema_id)["name"] == "PageView"
    assert apicurio.count("GET", f"/schemas/ids/{schema_id}") == 1


def test_wrong_base_path_is_not_mistaken_for_unknown_id(apicurio: FakeRegistry) -> None:
    # Forgot /apis/ccompat/v7: the server's generic 404 must not look like a poison message.
    root = apicurio.url.removesuffix(apicurio.base_path)
    apicurio.schemas[1] = json.dumps({"type": "string"})
    with pytest.raises(RegistryError, match=r"check the registry URL") as info:
        SchemaRegistryClient(root).schema_by_id(1)
    assert not isinstance(info.value, UnknownSchemaId)


def test_primitive_schema_is_wrapped(registry: FakeRegistry) -> None:
    registry.schemas[7] = '"string"'
    assert SchemaRegistryClient(registry.url).schema_by_id(7) == {"type": "string"}


def test_incompatible_schema_message(registry: FakeRegistry) -> None:
    client = SchemaRegistryClient(registry.url)
    with pytest.raises(RegistryError, match=r"HTTP 409.*incompatible.*compatibility level"):
        client.register("x-value", {"type": "record", "name": "incompatible", "fields": []})


def test_invalid_json_schema_rejected_locally(registry: FakeRegistry) -> None:
    with pytest.raises(RegistryError, match="not valid JSON"):
        SchemaRegistryClient(registry.url).register("x-value", "{nope")
    assert registry.requests == []


def test_retries_transient_5xx(registry: FakeRegistry) -> None:
    registry.fail_next = [503, 502]
    client = SchemaRegistryClient(registry.url, retries=3, backoff=0.01)
    assert client.register("s-value", {"type": "string"}) == 1


def test_persistent_5xx_is_unavailable(registry: FakeRegistry) -> None:
    registry.fail_next = [503] * 10
    client = SchemaRegistryClient(registry.url, retries=2, backoff=0.01)
    with pytest.raises(RegistryUnavailable, match=r"failed 3 times, last: HTTP 503 busy"):
        client.subjects()
    assert len(registry.requests) == 3


def test_server_down_is_unavailable_with_clear_message() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    client = SchemaRegistryClient(url, timeout=1.0, retries=2, backoff=0.01)
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable) as info:
        client.schema_by_id(1)
    assert time.monotonic() - started < 5  # bounded
    message = str(info.value)
    assert url in message
    assert "unavailable" in message and "failed 3 times" in message
    assert "Connection" in message or "refused" in message
    assert "check that the registry is running" in message


def test_auth_sent_and_never_shown(registry: FakeRegistry) -> None:
    registry.credentials = ("alice", "s3cret")
    url_with_creds = registry.url.replace("http://", "http://alice:s3cret@")
    client = SchemaRegistryClient(url_with_creds)
    assert "s3cret" not in client.url and "s3cret" not in repr(client)
    assert client.register("a-value", {"type": "string"}) == 1

    explicit = SchemaRegistryClient(registry.url, auth=("alice", "s3cret"))
    assert explicit.schema_by_id(1) == {"type": "string"}

    wrong = SchemaRegistryClient(registry.url, auth=("alice", "wrong"))
    with pytest.raises(RegistryError, match=r"HTTP 401.*check the registry credentials") as info:
        wrong.schema_by_id(1)
    assert "wrong" not in str(info.value) and "s3cret" not in str(info.value)


def test_bad_url_rejected_without_leaking_password() -> None:
    with pytest.raises(ValueError, match="must look like") as info:
        SchemaRegistryClient("ftp://bob:hunter2@host")
    assert "hunter2" not in str(info.value)


def test_non_avro_schema_type(registry: FakeRegistry) -> None:
    registry.schemas[3] = 'syntax = "proto3"; message M {}'
    registry.schema_types[3] = "PROTOBUF"
    with pytest.raises(RegistryError, match=r"is a PROTOBUF schema.*only decodes Avro"):
        SchemaRegistryClient(registry.url).schema_by_id(3)


def test_unparseable_schema_text(registry: FakeRegistry) -> None:
    registry.schemas[4] = "{broken"
    with pytest.raises(RegistryError, match="schema id 4 is not valid JSON"):
        SchemaRegistryClient(registry.url).schema_by_id(4)


def test_cache_is_thread_safe(registry: FakeRegistry) -> None:
    registry.schemas[1] = json.dumps(samples.load_schema("order"))
    client = SchemaRegistryClient(registry.url)
    results: list[dict[str, Any]] = []

    def fetch() -> None:
        for _ in range(20):
            results.append(client.schema_by_id(1))

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 160
    assert all(r is results[0] for r in results)
    assert registry.count("GET", "/schemas/ids/1") <= 8


def test_latest_version_and_versions_of_an_id(registry: FakeRegistry) -> None:
    """The two lookups schema evolution needs (Confluent: GET /subjects/{s}/versions/latest and
    GET /schemas/ids/{id}/versions): never cached, since a subject's latest version moves."""
    client = SchemaRegistryClient(registry.url)
    v1 = client.register("t-value", {"type": "record", "name": "R", "fields": []})
    assert client.latest_version("t-value") == (v1, 1)
    v2 = client.register("t-value", {"type": "record", "name": "R", "fields": [
        {"name": "a", "type": "int", "default": 0}]})
    assert client.latest_version("t-value") == (v2, 2)
    assert client.versions_of_id(v1) == [("t-value", 1)]
    assert client.versions_of_id(v2) == [("t-value", 2)]
    assert client.latest_version("no-such-value") is None
    with pytest.raises(UnknownSchemaId):
        client.versions_of_id(999)
    assert registry.count("GET", "/subjects/t-value/versions/latest") == 2
