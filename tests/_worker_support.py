"""Helpers for the worker and API tests: the `geomesh` console script as a real process,
and a loopback HTTP receiver that de-duplicates by ``Idempotency-Key``."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GEOMESH = str(Path(sys.executable).parent / "geomesh")
#: a safety net against a hung process, never a performance assertion
PATIENCE_S = 180.0


def geomesh_env(**extra: str) -> dict[str, str]:
    """The environment of a `geomesh` child: this process's (the test's GEOMESH_* settings)."""
    env = {k: v for k, v in os.environ.items() if k != "GEOMESH_CRASH_AT"}
    env.update(extra)
    return env


def start_geomesh(args: list[str], log: Path, **env: str) -> subprocess.Popen[bytes]:
    """Start `geomesh ARGS` in its own process group, stdout+stderr into ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [GEOMESH, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=geomesh_env(**env),
            start_new_session=True,
        )


def run_geomesh(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GEOMESH, *args],
        env=geomesh_env(**env),
        capture_output=True,
        text=True,
        timeout=PATIENCE_S,
        stdin=subprocess.DEVNULL,
    )


def wait_for(condition: Callable[[], bool], what: str, timeout: float = PATIENCE_S) -> None:
    """Poll ``condition`` until it holds (the deadline only guards against a hang)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Hit:
    key: str
    headers: dict[str, str]
    body: bytes


@dataclass
class DedupReceiver:
    """Keeps the first request of each Idempotency-Key; counts the duplicates."""

    url: str = ""
    delay_s: float = 0.0
    first: dict[str, Hit] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def keys(self) -> set[str]:
        with self.lock:
            return set(self.first)

    def json_bodies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(h.body) for h in self.first.values()]


@contextmanager
def dedup_receiver(delay_s: float = 0.0) -> Iterator[DedupReceiver]:
    rec = DedupReceiver(delay_s=delay_s)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if rec.delay_s:
                time.sleep(rec.delay_s)  # a slow receiver spreads the work over time
            key = self.headers.get("Idempotency-Key", "")
            with rec.lock:
                rec.requests += 1
                if key in rec.first:
                    rec.duplicates[key] = rec.duplicates.get(key, 0) + 1
                else:
                    rec.first[key] = Hit(key, dict(self.headers.items()), body)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    rec.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()


def stop(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    """SIGTERM one process we started (by its handle) and wait for it."""
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
        raise AssertionError(f"pid {proc.pid} ignored SIGTERM") from None
