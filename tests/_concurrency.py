"""Hammer shared state from several *processes* at once (multiprocessing, spawn).

Threads share one interpreter, one engine pool and one obstore runtime; real deployments run
several app replicas and workers. ``hammer`` starts N fresh interpreters, lines them up on a
barrier so they really start together, runs ``target(index, *args)`` in each and returns
the results in worker order. ``setup(index, *args)``, if given, runs before the barrier (open
engines and connections there, so the racing part starts at the same instant everywhere). A worker that raises or dies fails the caller with its traceback.

``target`` must be a module-level function of an importable module (spawn pickles it by
name), e.g. a function in a test module; its arguments and result must pickle::

    def append_events(index: int, url: str, n: int) -> list[str]: ...

    ids_per_worker = hammer(append_events, 4, database_url, 25)

Module globals survive between ``setup`` and ``target`` (same process), which is how setup
hands over e.g. a warmed-up engine.
"""

from __future__ import annotations

import multiprocessing
import queue
import time
import traceback
from collections.abc import Callable
from typing import Any

#: generous safety net against a hung worker; never a performance assertion
DEFAULT_TIMEOUT = 300.0


class WorkerFailed(AssertionError):
    """One or more hammer workers raised or died; the message holds their tracebacks."""


def _worker_main(
    target: Callable[..., Any],
    setup: Callable[..., Any] | None,
    index: int,
    args: tuple[Any, ...],
    barrier: Any,
    results: Any,
) -> None:
    try:
        if setup is not None:
            setup(index, *args)
        barrier.wait(timeout=DEFAULT_TIMEOUT)  # everyone imported and ready: go together
        value = target(index, *args)
    except BaseException:
        barrier.abort()  # a worker failing in setup must not leave the others waiting
        results.put((index, False, traceback.format_exc()))
    else:
        results.put((index, True, value))


def hammer(
    target: Callable[..., Any],
    workers: int,
    *args: Any,
    setup: Callable[..., Any] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[Any]:
    """Run ``target(i, *args)`` for i in 0..workers-1, each in its own spawned process."""
    if workers < 1:
        raise ValueError("hammer needs at least one worker")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(workers)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(target, setup, i, args, barrier, results),
            name=f"hammer-{getattr(target, '__name__', 'target')}-{i}",
            daemon=True,
        )
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    values: dict[int, Any] = {}
    errors: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(values) + len(errors) < workers:
            try:
                index, ok, payload = results.get(timeout=0.5)
            except queue.Empty:
                pending = [i for i in range(workers) if i not in values and i not in errors]
                dead = [i for i in pending if procs[i].exitcode is not None]
                if dead:
                    # a final drain: a worker may have reported just before exiting
                    try:
                        while True:
                            index, ok, payload = results.get(timeout=1.0)
                            (values if ok else errors)[index] = payload
                    except queue.Empty:
                        pass
                    for i in dead:
                        if i not in values and i not in errors:
                            errors[i] = f"process died with exit code {procs[i].exitcode}"
                elif time.monotonic() > deadline:
                    for i in pending:
                        errors[i] = f"no result after {timeout:.0f} s (hung or deadlocked?)"
                continue
            (values if ok else errors)[index] = payload
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()  # only our own worker processes, by handle
                p.join(timeout=10)
        results.close()
    if errors:
        report = "\n".join(f"--- worker {i}:\n{errors[i]}" for i in sorted(errors))
        raise WorkerFailed(f"{len(errors)} of {workers} workers failed:\n{report}")
    return [values[i] for i in range(workers)]
