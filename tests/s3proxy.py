"""An HTTP proxy in front of S3 that plays two kinds of misbehaving server (ours; standard library
and botocore's signer only).

``S3Proxy(upstream_port)`` listens on 127.0.0.1:<free port> and forwards every request to
``127.0.0.1:upstream_port`` unchanged (the ``Host`` header too, so SigV4 signatures still match).

* **A server that refuses.** S3's most common failure is not a dead server but a live one that
  answers ``503 SlowDown`` or ``500 InternalError``, and a full SeaweedFS answers every write with
  ``500 No writable volumes``. :class:`~faults.faultproxy.FaultProxy` breaks TCP connections;
  this one speaks HTTP, so the client gets a real S3 error reply, with the request's body already
  sent. After :meth:`refuse`, every ``PUT`` and ``POST`` (object writes, parts, copies, multipart
  completions) is answered with the given error instead, its body read and dropped; reads still
  pass. :meth:`accept` lets writes through again. ``refused`` counts the refused requests.
* **A server that ignores conditional writes** (older MinIO and SeaweedFS, some gateways): after
  :meth:`ignore_conditions`, the proxy drops ``If-None-Match`` and ``If-Match`` from writes (from
  every ``PUT``, or only from multipart completions, or only ``If-Match``) and signs the request
  again with the server's credentials, so the real server below answers it as it would answer a
  client that never sent the condition. ``ignored`` counts the conditions dropped.
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

#: Not forwarded: hop-by-hop headers, and "Expect" (the proxy has read the whole body already).
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "expect"}


class S3Proxy:
    def __init__(self, upstream_port: int, *, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self._lock = threading.Lock()
        self._error: tuple[int, str, str] | None = None
        self._lax: tuple[str, tuple[str, str, str]] | None = None  # (what, (key id, secret, region))
        self.refused = 0
        self.forwarded = 0
        self.ignored = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, and "Expect: 100-continue" answered

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks: list[bytes] = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _any(self) -> None:
                body = self._body()
                error = proxy._refusing(self.command)
                if error is not None:
                    status, code, message = error
                    reply = (
                        '<?xml version="1.0" encoding="UTF-8"?>'
                        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
                    ).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)
                    return
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=120)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                    if body or self.command in ("PUT", "POST"):
                        headers["Content-Length"] = str(len(body))
                    headers = proxy._conditions_dropped(self.command, self.path, headers, body)
                    upstream.request(self.command, self.path, body=body or None, headers=headers)
                    answer = upstream.getresponse()
                    data = answer.read()
                finally:
                    upstream.close()
                self.send_response(answer.status, answer.reason)
                for k, v in answer.getheaders():
                    if k.lower() in _HOP_BY_HOP or (k.lower() == "content-length" and self.command != "HEAD"):
                        continue
                    self.send_header(k, v)
                if self.command != "HEAD":  # a HEAD's Content-Length is the object's, kept above
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def refuse(
        self, status: int = 503, code: str = "SlowDown", message: str = "Please reduce your request rate."
    ) -> None:
        """Answer every write with ``status`` and an S3 error ``code`` from now on."""
        with self._lock:
            self._error = (status, code, message)

    def accept(self) -> None:
        """Let writes through again."""
        with self._lock:
            self._error = None

    def ignore_conditions(self, what: str, key_id: str, secret: str, region: str = "us-east-1") -> None:
        """From now on act as a server that ignores conditions on writes: ``what`` is ``"all"``
        (If-None-Match and If-Match on every PUT and multipart completion), ``"completes"`` (only
        on CompleteMultipartUpload: a server that honours them on PutObject alone) or
        ``"if-match"`` (only If-Match). Requests are signed again with ``key_id``/``secret``."""
        assert what in ("all", "completes", "if-match"), what
        with self._lock:
            self._lax = (what, (key_id, secret, region))

    def _conditions_dropped(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> dict[str, str]:
        """``headers`` without the conditions :meth:`ignore_conditions` drops, signed again."""
        with self._lock:
            lax = self._lax
        if lax is None or method not in ("PUT", "POST"):
            return headers
        what, (key_id, secret, region) = lax
        names = {"if-match"} if what == "if-match" else {"if-none-match", "if-match"}
        if what == "completes" and not (method == "POST" and "uploadId=" in path):
            return headers
        dropped = {k: v for k, v in headers.items() if k.lower() not in names}
        if len(dropped) == len(headers):
            return headers
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        unsigned = {k: v for k, v in dropped.items()
                    if k.lower() not in ("authorization", "x-amz-date", "x-amz-content-sha256")}
        request = AWSRequest(method=method, url=f"http://{headers.get('Host', '')}{path}", data=body,
                             headers=unsigned)
        S3SigV4Auth(Credentials(key_id, secret), "s3", region).add_auth(request)
        with self._lock:
            self.ignored += 1
        return dict(request.headers.items())

    def _refusing(self, method: str) -> tuple[int, str, str] | None:
        with self._lock:
            if self._error is not None and method in ("PUT", "POST"):
                self.refused += 1
                return self._error
            self.forwarded += 1
            return None

    def start(self) -> S3Proxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> S3Proxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
