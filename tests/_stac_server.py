"""Servers for the STAC-source tests, on 127.0.0.1 only.

* :class:`RangeFileServer`: a static file server with HTTP Range support (single and
  multi-range), strong ETags and a log of every response and the bytes it carried, so a
  test can prove a clip read only part of a remote COG. ``deny`` makes chosen paths answer
  403 to GET (an expired signature, say) while HEAD keeps working; ``redirects`` makes
  chosen paths answer 302 with a ``Location`` (to test redirect checks).
* :class:`RustacServer`: ``rustac serve`` (the STAC API server from the ``rustac`` wheel)
  with an in-memory backend loaded from item files.
* :class:`CannedServer`: fixed answers per path (JSON bodies or redirects) and a log of
  the paths asked for: a hostile STAC API, or the server it must never reach.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

_RANGE_RE = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Served:
    """One response: what was asked and how many body bytes went out."""

    method: str
    path: str
    status: int
    ranges: tuple[tuple[int, int], ...]  # inclusive byte ranges, () for a whole-file body
    body_bytes: int


def _parse_ranges(header: str, size: int) -> list[tuple[int, int]] | None:
    """Inclusive (start, end) pairs of a ``bytes=`` Range header; None if unsatisfiable."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or not spec:
        return None
    out: list[tuple[int, int]] = []
    for part in spec.split(","):
        m = _RANGE_RE.match(part)
        if not m or (not m.group(1) and not m.group(2)):
            return None
        if m.group(1):
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else size - 1
        else:  # suffix range: the last N bytes
            start, end = max(0, size - int(m.group(2))), size - 1
        end = min(end, size - 1)
        if start > end or start >= size:
            return None
        out.append((start, end))
    return out


def _read_ranges(path: Path, ranges: list[tuple[int, int]]) -> list[bytes]:
    """The bytes of each inclusive range, read from the file (not the whole file)."""
    with open(path, "rb") as fh:
        out = []
        for start, end in ranges:
            fh.seek(start)
            out.append(fh.read(end - start + 1))
        return out


class RangeFileServer:
    """Serve the files under ``root`` at ``http://127.0.0.1:<port>/<name>``."""

    def __init__(self, root: Path, *, latency_s: float = 0.0) -> None:
        self.root = root.resolve()
        #: wait this long before every response: a remote store's time to first byte
        #: (loopback answers at once, which no network does)
        self.latency_s = latency_s
        self._etags: dict[tuple[Path, int, int], str] = {}
        self._log: list[Served] = []
        self._lock = threading.Lock()
        self._waiting: dict[str, int] = {}
        self._peak: dict[str, int] = {}
        self.deny: set[str] = set()
        self.redirects: dict[str, str] = {}
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    # ---------------------------------------------------------------- lifecycle

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def __enter__(self) -> RangeFileServer:
        self._thread.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    # ---------------------------------------------------------------- the log

    def log(self) -> list[Served]:
        with self._lock:
            return list(self._log)

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    def bytes_served(self, name: str, *, method: str = "GET") -> int:
        path = "/" + name
        return sum(s.body_bytes for s in self.log() if s.path == path and s.method == method)

    def requests_for(self, name: str) -> list[Served]:
        return [s for s in self.log() if s.path == "/" + name]

    def peak_concurrency(self, method: str) -> int:
        """The most ``method`` requests that were ever waiting out the latency at once."""
        with self._lock:
            return self._peak.get(method, 0)

    def _wait(self, method: str) -> None:
        """The latency, counted: how many requests of each method wait at the same time."""
        with self._lock:
            self._waiting[method] = self._waiting.get(method, 0) + 1
            self._peak[method] = max(self._peak.get(method, 0), self._waiting[method])
        try:
            time.sleep(self.latency_s)
        finally:
            with self._lock:
                self._waiting[method] -= 1

    def _record(self, served: Served) -> None:
        with self._lock:
            self._log.append(served)

    # ---------------------------------------------------------------- the handler

    def etag(self, path: Path) -> str:
        """The file's content tag, computed once per (path, size, mtime)."""
        st = path.stat()
        key = (path, st.st_size, st.st_mtime_ns)
        with self._lock:
            known = self._etags.get(key)
        if known is not None:
            return known
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        tag = f'"{h.hexdigest()[:32]}"'
        with self._lock:
            self._etags[key] = tag
        return tag

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None  # quiet: the test reads `server.log()` instead

            def _file(self) -> Path | None:
                rel = unquote(urlsplit(self.path).path).lstrip("/")
                p = (server.root / rel).resolve()
                if server.root not in p.parents or not p.is_file():
                    return None
                return p

            def _empty(self, status: int, method: str, **headers: str) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k.replace("_", "-"), v)
                self.send_header("Content-Length", "0")
                self.end_headers()
                server._record(Served(method, urlsplit(self.path).path, status, (), 0))

            def _redirected(self, method: str) -> bool:
                path = urlsplit(self.path).path
                target = server.redirects.get(path.lstrip("/"))
                if target is None:
                    return False
                self._empty(302, method, Location=target)
                return True

            def do_HEAD(self) -> None:
                server._wait("HEAD")
                if self._redirected("HEAD"):
                    return
                p = self._file()
                if p is None:
                    self._empty(404, "HEAD")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/tiff")
                self.send_header("Content-Length", str(p.stat().st_size))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", server.etag(p))
                self.end_headers()
                server._record(Served("HEAD", urlsplit(self.path).path, 200, (), 0))

            def do_GET(self) -> None:
                server._wait("GET")
                if self._redirected("GET"):
                    return
                p = self._file()
                path = urlsplit(self.path).path
                if p is None:
                    self._empty(404, "GET")
                    return
                if path.lstrip("/") in server.deny:
                    self._empty(403, "GET")
                    return
                size = p.stat().st_size
                etag = server.etag(p)
                header = self.headers.get("Range")
                if header is None:
                    self._send(200, p.read_bytes(), etag, {}, method_path=(path, ()))
                    return
                ranges = _parse_ranges(header, size)
                if ranges is None:
                    self._empty(416, "GET", Content_Range=f"bytes */{size}")
                    return
                chunks = _read_ranges(p, ranges)
                if len(ranges) == 1:
                    start, end = ranges[0]
                    extra = {"Content-Range": f"bytes {start}-{end}/{size}"}
                    self._send(206, chunks[0], etag, extra, method_path=(path, tuple(ranges)))
                    return
                boundary = "geomesh-test-boundary"
                parts: list[bytes] = []
                for (start, end), chunk in zip(ranges, chunks, strict=True):
                    parts.append(
                        f"--{boundary}\r\nContent-Type: image/tiff\r\n"
                        f"Content-Range: bytes {start}-{end}/{size}\r\n\r\n".encode()
                    )
                    parts.append(chunk + b"\r\n")
                parts.append(f"--{boundary}--\r\n".encode())
                extra = {"Content-Type": f"multipart/byteranges; boundary={boundary}"}
                self._send(206, b"".join(parts), etag, extra, method_path=(path, tuple(ranges)))

            def _send(
                self,
                status: int,
                body: bytes,
                etag: str,
                extra: dict[str, str],
                *,
                method_path: tuple[str, tuple[tuple[int, int], ...]],
            ) -> None:
                self.send_response(status)
                if "Content-Type" not in extra:
                    self.send_header("Content-Type", "image/tiff")
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", etag)
                self.end_headers()
                self.wfile.write(body)
                path, ranges = method_path
                server._record(Served("GET", path, status, ranges, len(body)))

        return Handler


# ------------------------------------------------------------------ canned answers


class CannedServer:
    """Answer GET and POST on ``routes[path]``: a JSON-able body (200) or ``("302", url)``;
    any other path is 404. ``asked`` lists every path requested, in order."""

    def __init__(self) -> None:
        self.routes: dict[str, Any] = {}
        self.asked: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                path = urlsplit(self.path).path
                server.asked.append(path)
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                route = server.routes.get(path)
                if isinstance(route, tuple) and route[0] == "302":
                    self.send_response(302)
                    self.send_header("Location", route[1])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps(route).encode() if route is not None else b"{}"
                self.send_response(200 if route is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = _answer
            do_POST = _answer

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> CannedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


# ------------------------------------------------------------------ rustac serve


def rustac_executable() -> Path | None:
    """The `rustac` CLI next to the running interpreter (the venv's), else on PATH."""
    here = Path(sys.executable).parent / "rustac"
    if here.is_file() and os.access(here, os.X_OK):
        return here
    found = shutil.which("rustac")
    return Path(found) if found else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RustacServer:
    """``rustac serve --create-collections`` on 127.0.0.1 with items loaded from files."""

    def __init__(self, executable: Path, hrefs: list[Path], logfile: Path) -> None:
        self.executable = executable
        self.hrefs = hrefs
        self.logfile = logfile
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> RustacServer:
        # a port picked here can be taken before rustac binds it: retry a few times
        for _ in range(3):
            self.port = _free_port()
            if self._start():
                return self
        raise RuntimeError(
            f"rustac serve did not start; see {self.logfile}:\n"
            + self.logfile.read_text(errors="replace")[-2000:]
        )

    def _start(self) -> bool:
        env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
        cmd = [
            str(self.executable),
            "serve",
            "--create-collections",
            "--addr",
            f"127.0.0.1:{self.port}",
            *(str(h) for h in self.hrefs),
        ]
        with open(self.logfile, "ab") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        for _ in range(300):  # up to ~30 s for the server to answer its landing page
            if self._proc.poll() is not None:
                return False
            try:
                with _NO_PROXY.open(self.url + "/", timeout=2) as resp:
                    if resp.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        self._stop()
        return False

    def _stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        self._proc = None

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop()
