"""A small Confluent-compatible schema registry for the dev stack (stdlib only).

Implements the subset of the Confluent Schema Registry REST API that serializers and our tests use:

  POST /subjects/{subject}/versions          {"schema": "...", "schemaType"?, "references"?}
                                              -> {"id": n}
  POST /subjects/{subject}                   lookup -> {"subject","id","version","schema"}
  GET  /schemas/ids/{id}                     -> {"schema": "..."} (+ "schemaType" unless AVRO)
  GET  /schemas/ids/{id}/versions            -> [{"subject","version"}]
  GET  /subjects                             -> ["subject", ...]
  GET  /subjects/{subject}/versions          -> [1, 2, ...]
  GET  /subjects/{subject}/versions/{v}      -> {"subject","version","id","schema"}; v = n|latest|-1
  GET  /config, GET /config/{subject}        -> {"compatibilityLevel": "NONE"}
  DELETE /subjects/{subject}                 -> [versions]

Identical schemas (compared after parsing JSON and re-serialising with sorted keys) get the same
global id, across subjects, as in Confluent. State is persisted to a JSON file so restarts keep ids.
No compatibility checking is done. Errors use Confluent's body {"error_code": n, "message": "..."}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class RegistryError(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def canonical(schema: str, schema_type: str) -> str:
    if schema_type in ("AVRO", "JSON"):
        try:
            return json.dumps(json.loads(schema), sort_keys=True, separators=(",", ":"))
        except ValueError as e:
            raise RegistryError(422, 42201, f"Invalid schema: {e}") from e
    return schema.strip()


class Store:
    """schemas: id -> {schema, schemaType, references}; subjects: name -> [id per version]."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.schemas: dict[int, dict[str, Any]] = {}
        self.subjects: dict[str, list[int]] = {}
        if path.exists():
            data = json.loads(path.read_text())
            self.schemas = {int(k): v for k, v in data.get("schemas", {}).items()}
            self.subjects = {k: list(v) for k, v in data.get("subjects", {}).items()}

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = {"schemas": {str(k): v for k, v in self.schemas.items()}, "subjects": self.subjects}
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.path)

    def _find(self, canon: str, schema_type: str) -> int | None:
        for sid, s in self.schemas.items():
            if s["canonical"] == canon and s["schemaType"] == schema_type:
                return sid
        return None

    def register(self, subject: str, schema: str, schema_type: str, refs: list[Any]) -> int:
        canon = canonical(schema, schema_type)
        with self.lock:
            sid = self._find(canon, schema_type)
            versions = self.subjects.setdefault(subject, [])
            if sid is not None and sid in versions:
                return sid
            if sid is None:
                sid = max(self.schemas, default=0) + 1
                self.schemas[sid] = {
                    "schema": schema,
                    "schemaType": schema_type,
                    "references": refs,
                    "canonical": canon,
                }
            versions.append(sid)
            self._save()
            return sid

    def get(self, sid: int) -> dict[str, Any]:
        with self.lock:
            s = self.schemas.get(sid)
        if s is None:
            raise RegistryError(404, 40403, "Schema not found")
        return s

    def versions(self, subject: str) -> list[int]:
        with self.lock:
            v = self.subjects.get(subject)
        if not v:
            raise RegistryError(404, 40401, "Subject not found")
        return list(v)

    def lookup(self, subject: str, schema: str, schema_type: str) -> tuple[int, int]:
        versions = self.versions(subject)
        canon = canonical(schema, schema_type)
        for i, sid in enumerate(versions):
            s = self.get(sid)
            if s["canonical"] == canon and s["schemaType"] == schema_type:
                return sid, i + 1
        raise RegistryError(404, 40403, "Schema not found")

    def delete_subject(self, subject: str) -> list[int]:
        versions = self.versions(subject)
        with self.lock:
            del self.subjects[subject]
            self._save()
        return list(range(1, len(versions) + 1))


def schema_body(s: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"schema": s["schema"]}
    if s["schemaType"] != "AVRO":
        body["schemaType"] = s["schemaType"]
    if s.get("references"):
        body["references"] = s["references"]
    return body


class Handler(BaseHTTPRequestHandler):
    store: Store
    server_version = "dev-registry/1"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        print(f"{self.address_string()} {format % args}", flush=True)

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict[str, Any]:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b"{}"
        try:
            body = json.loads(raw or b"{}")
        except ValueError as e:
            raise RegistryError(400, 400, f"Invalid JSON body: {e}") from e
        if not isinstance(body, dict):
            raise RegistryError(400, 400, "Body must be a JSON object")
        return body

    def _dispatch(self, method: str) -> None:
        parts = [unquote(p) for p in urlsplit(self.path).path.split("/") if p]
        try:
            status, body = self._route(method, parts)
        except RegistryError as e:
            status, body = e.status, {"error_code": e.code, "message": e.message}
        except Exception as e:
            status, body = 500, {"error_code": 50001, "message": f"Internal error: {e}"}
        self._send(status, body)

    def _route(self, method: str, p: list[str]) -> tuple[int, Any]:
        st = self.store
        if method == "GET" and p == []:
            return 200, {}
        if method == "GET" and p == ["subjects"]:
            with st.lock:
                return 200, sorted(st.subjects)
        if p[:1] == ["config"] and len(p) <= 2:
            if method == "GET":
                return 200, {"compatibilityLevel": "NONE"}
            if method == "PUT":
                return 200, {"compatibility": self._body().get("compatibility", "NONE")}
        if method == "GET" and len(p) >= 3 and p[:2] == ["schemas", "ids"]:
            sid = _int(p[2], 40403, "Schema not found")
            s = st.get(sid)
            if len(p) == 3:
                return 200, schema_body(s)
            if p[3:] == ["versions"]:
                with st.lock:
                    out = [
                        {"subject": subj, "version": i + 1}
                        for subj, ids in st.subjects.items()
                        for i, x in enumerate(ids)
                        if x == sid
                    ]
                return 200, out
            if p[3:] == ["schema"]:
                return 200, json.loads(s["schema"]) if s["schemaType"] != "PROTOBUF" else s["schema"]
        if len(p) >= 2 and p[0] == "subjects":
            subject = p[1]
            if method == "POST" and p[2:] == ["versions"]:
                b = self._body()
                if "schema" not in b or not isinstance(b["schema"], str):
                    raise RegistryError(422, 42201, "Invalid schema: missing 'schema'")
                sid = st.register(
                    subject, b["schema"], b.get("schemaType") or "AVRO", b.get("references") or []
                )
                return 200, {"id": sid}
            if method == "POST" and len(p) == 2:
                b = self._body()
                stype = b.get("schemaType") or "AVRO"
                sid, version = st.lookup(subject, str(b.get("schema", "")), stype)
                return 200, {
                    "subject": subject,
                    "id": sid,
                    "version": version,
                    **schema_body(st.get(sid)),
                }
            if method == "DELETE" and len(p) == 2:
                return 200, st.delete_subject(subject)
            if method == "GET" and p[2:] == ["versions"]:
                return 200, list(range(1, len(st.versions(subject)) + 1))
            if method == "GET" and len(p) in (4, 5) and p[2] == "versions":
                versions = st.versions(subject)
                if p[3] in ("latest", "-1"):
                    v = len(versions)
                else:
                    v = _int(p[3], 40402, "Version not found")
                    if not 1 <= v <= len(versions):
                        raise RegistryError(404, 40402, "Version not found")
                sid = versions[v - 1]
                s = st.get(sid)
                if len(p) == 5 and p[4] == "schema":
                    return 200, json.loads(s["schema"])
                return 200, {"subject": subject, "version": v, "id": sid, **schema_body(s)}
        raise RegistryError(404, 404, "HTTP 404 Not Found")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")


def _int(raw: str, code: int, message: str) -> int:
    if not re.fullmatch(r"-?\d+", raw):
        raise RegistryError(404, code, message)
    return int(raw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=18081)
    ap.add_argument("--store", type=Path, required=True)
    args = ap.parse_args()
    Handler.store = Store(args.store)
    httpd = ThreadingHTTPServer((args.host, args.port), Handler)
    httpd.daemon_threads = True
    print(f"dev registry listening on http://{args.host}:{args.port} (store {args.store})", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


if __name__ == "__main__":
    import signal
    import sys

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    main()
