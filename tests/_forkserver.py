"""A fork server for the crash-injection tests: one warm interpreter, one child per run.

Starting the `geomesh` console script costs more than a second of imports, and the crash
tests run it a few hundred times. The server (``python tests/_forkserver.py``) imports the
CLI once; for each request it forks a child that takes the request's environment, working
directory and argv, sends stdout/stderr to files and calls ``geomesh.cli.main(argv)``:
exactly what the console script does. ``GEOMESH_CRASH_AT`` SIGKILLs only that child, and
the server reports the child's exit status the way :mod:`subprocess` does (a negative
number is the signal that killed it).

Protocol: one JSON object per line on stdin (``{"argv": [...], "env": {...}, "cwd": ...,
"stdout": path, "stderr": path}`` and optionally ``"stdin": path``), one
``{"returncode": n}`` per line on stdout.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _child(request: dict[str, Any]) -> None:  # pragma: no cover - runs in the forked child
    code: int = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, name in ((1, "stdout"), (2, "stderr")):
            out = os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(out, fd)
            os.close(out)
        stdin = os.open(request.get("stdin") or os.devnull, os.O_RDONLY)
        os.dup2(stdin, 0)
        os.close(stdin)
        sys.argv = ["geomesh", *request["argv"]]

        from geomesh import faults
        from geomesh.cli import main

        faults._counts.clear()
        try:
            main(list(request["argv"]))
            code = 0
        except SystemExit as exc:
            if exc.code is None:
                code = 0
            elif isinstance(exc.code, int):
                code = exc.code
            else:
                sys.stderr.write(f"{exc.code}\n")
                code = 1
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # the child is about to exit
                stream.flush()
        os._exit(code)


def serve() -> None:  # pragma: no cover - runs in the server process
    # the warm imports every child inherits
    import geomesh.cli
    import geomesh.services.routing

    del geomesh

    sys.stdout.write(json.dumps({"ready": True}) + "\n")
    sys.stdout.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        _, status = os.waitpid(pid, 0)
        rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        sys.stdout.write(json.dumps({"returncode": rc}) + "\n")
        sys.stdout.flush()


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


class ForkServer:
    """A client of one server process (one run at a time; use several for parallel runs)."""

    def __init__(self, env: dict[str, str], cwd: Path, scratch: Path) -> None:
        self.scratch = scratch
        self._lock = threading.Lock()
        self._n = 0
        self._proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=cwd,
            start_new_session=True,  # a process group: a hung child dies with its server
        )
        assert self._proc.stdout is not None
        ready = self._proc.stdout.readline()
        if not ready:
            raise RuntimeError("the fork server did not start")

    def run(
        self,
        argv: list[str],
        *,
        env: dict[str, str],
        cwd: Path,
        stdin: str | None = None,
        timeout: float = 300.0,
    ) -> Result:
        with self._lock:
            self._n += 1
            stem = f"run-{id(self)}-{self._n}"
            out = self.scratch / f"{stem}.out"
            err = self.scratch / f"{stem}.err"
            request = {
                "argv": argv,
                "env": env,
                "cwd": str(cwd),
                "stdout": str(out),
                "stderr": str(err),
            }
            if stdin is not None:
                src = self.scratch / f"{stem}.in"
                src.write_text(stdin)
                request["stdin"] = str(src)
            assert self._proc.stdin is not None and self._proc.stdout is not None
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
            ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
            if not ready:
                os.killpg(self._proc.pid, signal.SIGKILL)
                raise RuntimeError(f"geomesh {' '.join(argv)} did not finish in {timeout} s")
            line = self._proc.stdout.readline()
            if not line:
                raise RuntimeError("the fork server died")
            rc = int(json.loads(line)["returncode"])
        result = Result(rc, out.read_text(errors="replace"), err.read_text(errors="replace"))
        for leftover in self.scratch.glob(f"{stem}.*"):
            leftover.unlink()
        return result

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()


if __name__ == "__main__":
    serve()
