"""An error-injecting TCP proxy for fault tests (ours; standard library only).

``FaultProxy(upstream_port, fault_rate=0.25, seed=1)`` listens on 127.0.0.1:<free port> and
forwards every accepted connection to ``127.0.0.1:upstream_port``. For each new connection a
seeded RNG (drawn in accept order) picks one behaviour:

* ``drop``     – close the client socket at once (the client sees EOF / "server disconnected");
* ``reset``    – ``SO_LINGER`` 0 then close, so the client gets a TCP RST;
* ``delay``    – sleep ``delay_ms`` before forwarding, then forward normally;
* ``truncate`` – forward the request, forward only the first N bytes of the response, then close;
* ``clean``    – forward both ways untouched.

A fraction ``fault_rate`` of request exchanges is faulty, split evenly over ``faults``: the
behaviour is drawn when a connection is accepted (for its first request), and drawn again for
each further request on a kept-alive connection (client bytes arriving after response bytes), so
HTTP connection reuse does not hide the faults. With ``streak`` > 1 a faulty draw also applies to
the next ``streak - 1`` exchanges (a short network blip): HTTP clients silently retry a request
once when a kept-alive connection dies under it, and a blip outlasts that retry, so the
application's own retry logic is exercised.

The proxy is bounded: it runs in daemon threads, stops on :meth:`stop` / leaving the ``with``
block, and stops by itself after ``max_lifetime_s`` whatever happens. ``counts`` tells how many
connections got each behaviour, so a test can assert that faults were really injected.
"""

from __future__ import annotations

import contextlib
import random
import select
import socket
import struct
import threading
import time
from collections import Counter
from types import TracebackType

FAULTS = ("drop", "reset", "delay", "truncate")


class FaultProxy:
    def __init__(
        self,
        upstream_port: int,
        *,
        upstream_host: str = "127.0.0.1",
        fault_rate: float = 0.25,
        faults: tuple[str, ...] = FAULTS,
        seed: int = 0,
        delay_ms: tuple[int, int] = (50, 400),
        truncate_bytes: tuple[int, int] = (1, 400),
        max_lifetime_s: float = 300.0,
        streak: int = 1,
    ) -> None:
        unknown = set(faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {unknown}; known: {FAULTS}")
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be in [0, 1], got {fault_rate}")
        self.upstream = (upstream_host, upstream_port)
        self.fault_rate = fault_rate
        self.faults = faults
        self.delay_ms = delay_ms
        self.truncate_bytes = truncate_bytes
        self.max_lifetime_s = max_lifetime_s
        self.streak = max(1, streak)
        self._streak_left = 0
        self._streak_kind = ""
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="faultproxy-accept", daemon=True
        )

    # -- public ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    @property
    def injected(self) -> int:
        """Connections that got a fault (delays included)."""
        c = self.counts
        return sum(c.get(f, 0) for f in FAULTS)

    def start(self) -> FaultProxy:
        self._started = time.monotonic()
        self._accept_thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._accept_thread.join(timeout=5)
        for t in list(self._threads):
            t.join(timeout=2)
        self._listener.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- internals -----------------------------------------------------------------------------
    def _choose(self) -> tuple[str, int]:
        with self._lock:
            if self._streak_left > 0:
                self._streak_left -= 1
                kind = self._streak_kind
            elif self._rng.random() < self.fault_rate and self.faults:
                kind = self._rng.choice(self.faults)
                self._streak_kind, self._streak_left = kind, self.streak - 1
            else:
                kind = "clean"
            arg = 0
            if kind == "delay":
                arg = self._rng.randint(*self.delay_ms)
            elif kind == "truncate":
                arg = self._rng.randint(*self.truncate_bytes)
            self._counts[kind] += 1
            return kind, arg

    def _accept_loop(self) -> None:  # one behaviour drawn per accepted connection
        while not self._stop.is_set():
            if time.monotonic() - self._started > self.max_lifetime_s:
                self._stop.set()  # bounded: never outlive a forgotten test
                break
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            kind, arg = self._choose()
            t = threading.Thread(target=self._serve, args=(client, kind, arg), daemon=True)
            self._threads = [x for x in self._threads if x.is_alive()]
            self._threads.append(t)
            t.start()

    @staticmethod
    def _reset(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    def _serve(self, client: socket.socket, kind: str, arg: int) -> None:
        upstream: socket.socket | None = None
        try:
            if kind in ("drop", "reset"):
                self._fail(client, kind)
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                self._reset(client)
                return
            self._pump(client, upstream, kind, arg)
        finally:
            for s in (client, upstream):
                if s is not None:
                    with contextlib.suppress(OSError):
                        s.close()

    def _fail(self, client: socket.socket, kind: str) -> None:
        if kind == "drop":
            client.close()
        else:
            # Wait (briefly) for the request so the RST hits a client that awaits a reply.
            select.select([client], [], [], 1.0)
            self._reset(client)

    def _pump(self, client: socket.socket, upstream: socket.socket, kind: str, arg: int) -> None:
        """Copy both ways until either side closes. The connection's first request gets the
        behaviour drawn at accept; every later request on the same keep-alive connection (client
        bytes after response bytes) draws again, so reused connections see faults too. A
        truncated response passes only ``arg`` bytes to the client, then the connection is cut."""
        client.setblocking(True)
        upstream.setblocking(True)
        socks = [client, upstream]
        new_request = True
        budget = -1
        while not self._stop.is_set():
            readable, _, _ = select.select(socks, [], [], 0.5)
            for src in readable:
                dst = upstream if src is client else client
                try:
                    data = src.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                if src is client and new_request:
                    if kind == "":
                        kind, arg = self._choose()
                    new_request = False
                    if kind in ("drop", "reset"):
                        if kind == "reset":
                            self._reset(client)
                        return
                    if kind == "delay":
                        self._stop.wait(arg / 1000)
                    budget = arg if kind == "truncate" else -1
                    kind = ""  # the next request draws again
                elif src is upstream:
                    new_request = True
                    if budget >= 0:
                        if len(data) >= budget:
                            with contextlib.suppress(OSError):
                                client.sendall(data[:budget])
                            return
                        budget -= len(data)
                try:
                    dst.sendall(data)
                except OSError:
                    return
