"""A small Confluent-compatible schema registry client (urllib only).

Why not ``confluent_kafka.schema_registry``: it pulls in ``httpx``/``attrs``/``cachetools`` and
wraps decoding we do ourselves; the consumer only needs two calls — fetch a writer schema by
id (decoding Confluent-framed messages) and register one (the sample producer). This client
does exactly that, with the properties the consumer relies on:

* ``schema_by_id`` is cached forever: registry ids are immutable, so after the first message
  of each schema the hot path never touches the network.
* Failures are typed and actionable: :class:`UnknownSchemaId` (the registry says the id does not
  exist — a poison message or the wrong registry), :class:`RegistryUnavailable` (could not reach
  it after bounded retries — infrastructure), :class:`RegistryError` (anything else, e.g. an
  incompatible schema on register).
* The base URL may carry a path (Apicurio serves the Confluent API under
  ``/apis/ccompat/v7``, Redpanda and Karapace at the root) and credentials, either as
  ``auth=(user, password)`` or ``https://user:pass@host``; credentials go only into the
  ``Authorization`` header and never into messages or logs.
"""

from __future__ import annotations

import base64
import http.client
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Protocol

import structlog

__all__ = [
    "Registry",
    "RegistryError",
    "RegistryUnavailable",
    "SchemaRegistryClient",
    "UnknownSchemaId",
]

_log = structlog.get_logger(__name__)

_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
#: Registry answers worth retrying: overload/restart, not client mistakes.
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: error_code of "Schema not found" in the Confluent REST API.
_SCHEMA_NOT_FOUND = 40403


class RegistryError(RuntimeError):
    """The registry rejected a request or answered something unusable; message says what to do."""


class UnknownSchemaId(RegistryError):
    """The registry has no schema with this id (HTTP 404 / error_code 40403)."""

    def __init__(self, schema_id: int, registry: str) -> None:
        self.schema_id = schema_id
        super().__init__(
            f"schema id {schema_id} is not known to the schema registry at {registry}: the "
            "message was written against a different registry (check the registry URL / "
            "context) or the schema was hard-deleted; the message cannot be decoded"
        )


class RegistryUnavailable(RegistryError):
    """The registry could not be reached (refused, timed out, 5xx) even after retries."""


class Registry(Protocol):
    """What the decoder asks a registry (:class:`SchemaRegistryClient`, or an in-memory double)."""

    def schema_by_id(self, schema_id: int) -> dict[str, Any]: ...

    def latest_version(self, subject: str) -> tuple[int, int] | None: ...

    def versions_of_id(self, schema_id: int) -> list[tuple[str, int]]: ...


class SchemaRegistryClient:
    """Confluent REST API subset: register a schema, fetch a schema by id (cached), list subjects.

    Thread-safe: the id cache is guarded by a lock, and urllib opens a connection per request.
    ``retries``/``backoff`` bound the time spent on an unreachable registry to roughly
    ``retries * timeout + backoff * (2**retries - 1)`` (backoff capped at ``max_backoff``).
    """

    def __init__(
        self,
        url: str,
        timeout: float = 10.0,
        auth: tuple[str, str] | None = None,
        *,
        retries: int = 3,
        backoff: float = 0.25,
        max_backoff: float = 4.0,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"schema registry URL must look like http(s)://host[:port][/path], got {_redact(url)!r}"
            )
        if parts.username is not None and auth is None:
            auth = (
                urllib.parse.unquote(parts.username),
                urllib.parse.unquote(parts.password or ""),
            )
        netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        if parts.port is not None:
            netloc += f":{parts.port}"
        #: Base URL without credentials and without a trailing slash; safe to print.
        self.url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self.timeout = timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._auth_header: str | None = None
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
            self._auth_header = f"Basic {token}"
        self._by_id: dict[int, dict[str, Any]] = {}
        self._registered: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SchemaRegistryClient({self.url!r}, auth={'***' if self._auth_header else None})"

    # ---------------------------------------------------------------------------------------
    # Public API
    # ---------------------------------------------------------------------------------------

    def register(self, subject: str, schema: dict[str, Any] | str) -> int:
        """Register an Avro schema under ``subject`` and return its global id.

        Idempotent on the registry side (an identical schema returns the existing id) and cached
        here per (subject, schema), so calling it once per producer run or per batch is cheap.
        """
        text = schema if isinstance(schema, str) else json.dumps(schema, separators=(",", ":"))
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            raise RegistryError(f"schema for subject {subject!r} is not valid JSON: {exc}") from exc
        with self._lock:
            cached = self._registered.get((subject, text))
        if cached is not None:
            return cached
        path = f"/subjects/{urllib.parse.quote(subject, safe='')}/versions"
        body = self._request("POST", path, {"schema": text, "schemaType": "AVRO"})
        schema_id = body.get("id") if isinstance(body, dict) else None
        if not isinstance(schema_id, int):
            raise RegistryError(
                f"registry at {self.url} answered POST {path} without an integer 'id' "
                f"(got {_short(body)}); is this a Confluent-compatible API base URL?"
            )
        with self._lock:
            self._registered[(subject, text)] = schema_id
        return schema_id

    def schema_by_id(self, schema_id: int) -> dict[str, Any]:
        """The writer schema with this id as a JSON dict; cached forever (ids are immutable).

        The returned dict is shared by all callers — treat it as read-only. A primitive
        top-level schema such as ``"string"`` is returned as ``{"type": "string"}``.
        Raises :class:`UnknownSchemaId` if the registry does not know the id.
        """
        with self._lock:
            cached = self._by_id.get(schema_id)
        if cached is not None:
            return cached
        path = f"/schemas/ids/{int(schema_id)}"
        try:
            body = self._request("GET", path)
        except _NotFound as exc:
            if exc.error_code in (None, _SCHEMA_NOT_FOUND):
                raise UnknownSchemaId(schema_id, self.url) from None
            raise RegistryError(
                f"registry at {self.url} answered 404 for GET {path} with error_code "
                f"{exc.error_code}: {exc.message}; check the registry URL (does it need a path "
                f"such as /apis/ccompat/v7?)"
            ) from None
        schema = self._parse_schema_body(schema_id, body)
        with self._lock:
            self._by_id.setdefault(schema_id, schema)
            return self._by_id[schema_id]

    def latest_version(self, subject: str) -> tuple[int, int] | None:
        """(schema id, version) of the newest version of ``subject``, or None when the registry
        has no such subject (GET /subjects/{subject}/versions/latest). Never cached: the answer
        changes as producers register new versions; callers ask when an unseen id arrives."""
        path = f"/subjects/{urllib.parse.quote(subject, safe='')}/versions/latest"
        try:
            body = self._request("GET", path)
        except _NotFound:
            return None  # 40401 subject not found / 40402 no version: no reader to evolve to
        sid = body.get("id") if isinstance(body, dict) else None
        version = body.get("version") if isinstance(body, dict) else None
        if not isinstance(sid, int) or not isinstance(version, int):
            raise RegistryError(
                f"registry at {self.url} answered GET {path} without integer 'id' and 'version' "
                f"(got {_short(body)}); is this a Confluent-compatible API base URL?"
            )
        return sid, version

    def versions_of_id(self, schema_id: int) -> list[tuple[str, int]]:
        """Every (subject, version) that holds this schema id (GET /schemas/ids/{id}/versions);
        empty when the registry knows the id under no subject."""
        path = f"/schemas/ids/{int(schema_id)}/versions"
        try:
            body = self._request("GET", path)
        except _NotFound as exc:
            if exc.error_code in (None, _SCHEMA_NOT_FOUND):
                raise UnknownSchemaId(schema_id, self.url) from None
            return []
        if not isinstance(body, list):
            raise RegistryError(
                f"registry at {self.url} answered GET {path} with {_short(body)}, expected a list "
                "of {subject, version}"
            )
        out: list[tuple[str, int]] = []
        for item in body:
            if isinstance(item, dict) and isinstance(item.get("subject"), str) and isinstance(
                item.get("version"), int
            ):
                out.append((item["subject"], item["version"]))
        return out

    def subjects(self) -> list[str]:
        """All subject names (GET /subjects) — also a cheap "is the registry up" probe."""
        body = self._request("GET", "/subjects")
        if not isinstance(body, list) or not all(isinstance(s, str) for s in body):
            raise RegistryError(
                f"registry at {self.url} answered GET /subjects with {_short(body)}, expected a "
                "list of subject names; is this a Confluent-compatible API base URL?"
            )
        return body

    # ---------------------------------------------------------------------------------------
    # Internals
    # ---------------------------------------------------------------------------------------

    def _parse_schema_body(self, schema_id: int, body: Any) -> dict[str, Any]:
        schema_type = body.get("schemaType", "AVRO") if isinstance(body, dict) else None
        text = body.get("schema") if isinstance(body, dict) else None
        if not isinstance(text, str):
            raise RegistryError(
                f"registry at {self.url} answered GET /schemas/ids/{schema_id} without a "
                f"'schema' string (got {_short(body)})"
            )
        if schema_type != "AVRO":
            raise RegistryError(
                f"schema id {schema_id} is a {schema_type} schema; this consumer only decodes "
                "Avro — check that the topic's producer uses the Avro serializer"
            )
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RegistryError(f"schema id {schema_id} is not valid JSON: {exc}") from exc
        if isinstance(parsed, str):
            return {"type": parsed}
        if not isinstance(parsed, dict):
            raise RegistryError(
                f"schema id {schema_id} is a top-level {type(parsed).__name__} (e.g. a union); "
                "only record/named schemas are supported as message values"
            )
        return parsed

    def _request(self, method: str, path: str, payload: Any = None) -> Any:
        """One API call with bounded retries on connection errors, timeouts and 5xx/429."""
        url = self.url + path
        data = None if payload is None else json.dumps(payload).encode()
        headers = {"Accept": f"{_CONTENT_TYPE}, application/json"}
        if data is not None:
            headers["Content-Type"] = _CONTENT_TYPE
        if self._auth_header is not None:
            headers["Authorization"] = self._auth_header
        last_problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                _log.warning(
                    "schema_registry_retry",
                    registry=self.url,
                    method=method,
                    path=path,
                    attempt=attempt,
                    delay_s=delay,
                    problem=last_problem,
                )
                time.sleep(delay)
            request = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
            except urllib.error.HTTPError as exc:
                status, error_code, message = _error_details(exc)
                if status in _RETRY_STATUSES:
                    last_problem = f"HTTP {status} {message}".strip()
                    continue
                if status == 404:
                    raise _NotFound(error_code, message) from None
                if status in (401, 403):
                    raise RegistryError(
                        f"registry at {self.url} refused {method} {path} with HTTP {status} "
                        f"({message}); check the registry credentials"
                    ) from None
                raise RegistryError(
                    f"registry at {self.url} rejected {method} {path}: HTTP {status}"
                    f"{f' error_code {error_code}' if error_code is not None else ''}: {message}"
                    f"{_hint(status, error_code)}"
                ) from None
            except (
                urllib.error.URLError,
                TimeoutError,
                ConnectionError,
                http.client.HTTPException,
            ) as exc:
                reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                last_problem = f"{type(reason).__name__}: {reason}"
                continue
            try:
                return json.loads(raw) if raw else None
            except json.JSONDecodeError:
                raise RegistryError(
                    f"registry at {self.url} answered {method} {path} with non-JSON "
                    f"({_short(raw)}); is the URL pointing at a schema registry API?"
                ) from None
        raise RegistryUnavailable(
            f"schema registry at {self.url} is unavailable: {method} {path} failed "
            f"{self.retries + 1} times, last: {last_problem}; check that the registry is "
            "running and the URL/port is right"
        )


class _NotFound(Exception):
    """Internal: a 404, so callers can turn it into the right domain error."""

    def __init__(self, error_code: int | None, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message


def _error_details(exc: urllib.error.HTTPError) -> tuple[int, int | None, str]:
    """(status, Confluent error_code if any, message) from an error response."""
    try:
        raw = exc.read()
    except Exception:
        raw = b""
    error_code: int | None = None
    message = exc.reason if isinstance(exc.reason, str) else ""
    try:
        body = json.loads(raw) if raw else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict):
        code = body.get("error_code")
        error_code = code if isinstance(code, int) else None
        message = str(body.get("message", message))
    elif raw:
        message = _short(raw)
    return exc.code, error_code, message


def _hint(status: int, error_code: int | None) -> str:
    if status == 409 or error_code == 409:
        return (
            "; the schema is incompatible with the subject's existing versions — change the "
            "schema compatibly or relax the subject's compatibility level"
        )
    if status == 422 or (error_code is not None and 42200 <= error_code < 42300):
        return "; the registry considers the schema invalid"
    return ""


def _short(value: Any, limit: int = 200) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _redact(url: str) -> str:
    """The URL with any user:password@ removed, for error messages."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.username is None and parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit((parts.scheme, "***@" + host, parts.path, parts.query, ""))
