"""A loopback TCP proxy that cuts every connection on command, for the fault tests.

``TcpProxy(upstream_port)`` listens on a free 127.0.0.1 port and relays each accepted
connection to ``127.0.0.1:upstream_port`` (one thread per direction). ``cut()`` closes every
relayed connection at once, both sides: the client sees the server vanish mid-conversation,
the server sees its client go (PostgreSQL then rolls back the open transaction). New
connections are accepted again right after a cut.

``cut_when(pattern, ...)`` arms a deterministic cut: the first time a client sends bytes
containing ``pattern`` (a PostgreSQL query travels as plain text on an unencrypted
connection, e.g. ``b"INSERT INTO release"``), every connection is cut, either before that
chunk reaches the server (``forward=False``: the statement never runs) or just after
(``forward=True``: e.g. a ``COMMIT`` the server executes while its client never learns
the answer). With ``after``, the pattern counts only once ``after`` was seen on the same
connection (``after=b"INSERT INTO release", pattern=b"COMMIT"``: that transaction's commit).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass

_CHUNK = 65536


@dataclass
class _Trigger:
    pattern: bytes
    forward: bool
    after: bytes | None


class TcpProxy:
    """127.0.0.1:``port`` → 127.0.0.1:``upstream_port``; see the module docstring."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._trigger: _Trigger | None = None
        self._closed = threading.Event()
        #: how many times connections were cut (by ``cut()`` or a trigger)
        self.cuts = 0
        self._fired = threading.Event()
        self._acceptor = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)
        self._acceptor.start()

    # ------------------------------------------------------------------ control

    def cut(self) -> int:
        """Close every relayed connection now; returns how many were open."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
            self.cuts += 1
        for pair in pairs:
            for sock in pair:
                _close(sock)
        return len(pairs)

    def cut_when(
        self, pattern: bytes, *, forward: bool = False, after: bytes | None = None
    ) -> None:
        """Arm a one-shot cut on the first client chunk containing ``pattern``."""
        with self._lock:
            self._trigger = _Trigger(pattern, forward, after)
            self._fired.clear()

    def fired(self) -> bool:
        """Whether the armed trigger has cut the connections."""
        return self._fired.is_set()

    def close(self) -> None:
        self._closed.set()
        _close(self._listener)
        self.cut()
        self._acceptor.join(timeout=5)

    # ------------------------------------------------------------------ relaying

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed
            try:
                server = socket.create_connection(self.upstream, timeout=10)
                server.settimeout(None)
            except OSError:
                _close(client)
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._pairs.append((client, server))
            pair = (client, server)
            threading.Thread(
                target=self._pump, args=(client, server, pair, True), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(server, client, pair, False), daemon=True
            ).start()

    def _pump(
        self,
        src: socket.socket,
        dst: socket.socket,
        pair: tuple[socket.socket, socket.socket],
        from_client: bool,
    ) -> None:
        seen = b""  # the tail of what this client sent (a pattern may span two chunks)
        armed_after = False
        while True:
            try:
                data = src.recv(_CHUNK)
            except OSError:
                data = b""
            if not data:
                self._drop(pair)
                return
            if from_client:
                window, seen = seen + data, (seen + data)[-4096:]
                action = self._match(window, armed_after)
                if action == "after-seen":
                    armed_after = True
                    action = self._match(window, True)
                if action in ("cut-before", "cut-after"):
                    if action == "cut-after":
                        with contextlib.suppress(OSError):
                            dst.sendall(data)
                    self._fired.set()
                    self.cut()
                    return
            try:
                dst.sendall(data)
            except OSError:
                self._drop(pair)
                return

    def _match(self, window: bytes, after_seen: bool) -> str | None:
        with self._lock:
            trigger = self._trigger
            if trigger is None:
                return None
            if trigger.after is not None and not after_seen:
                return "after-seen" if trigger.after in window else None
            if trigger.pattern not in window:
                return None
            if trigger.after is not None and after_seen:
                # the pattern must come after the marker on this connection
                marker = window.rfind(trigger.after)
                if marker != -1 and window.rfind(trigger.pattern) < marker:
                    return None
            self._trigger = None
            return "cut-after" if trigger.forward else "cut-before"

    def _drop(self, pair: tuple[socket.socket, socket.socket]) -> None:
        with self._lock:
            if pair in self._pairs:
                self._pairs.remove(pair)
        for sock in pair:
            _close(sock)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
