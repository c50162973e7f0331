"""Structured JSON-lines run logs: one line per step, written under <root>/logs/."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from geomesh.redact import redact_value


class RunLog:
    """Append JSON lines (run id, product id, item id, step, duration, outcome)."""

    def __init__(self, root: Path, *, product_id: str | None, stderr: bool = False) -> None:
        self.run_id = uuid.uuid4().hex[:12]
        self.product_id = product_id
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        self.path = root / "logs" / f"{day}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._stderr: TextIO | None = sys.stderr if stderr else None

    def write(
        self,
        *,
        step: str,
        outcome: str,
        item_id: str | None = None,
        duration_s: float | None = None,
        **extra: Any,
    ) -> None:
        rec = {
            "ts": datetime.now(UTC).isoformat(),
            "run_id": self.run_id,
            "product_id": self.product_id,
            "item_id": item_id,
            "step": step,
            "duration_s": None if duration_s is None else round(duration_s, 6),
            "outcome": outcome,
            **extra,
        }
        # no URL credential or signed-query token ever reaches a log line
        line = json.dumps(redact_value(json.loads(json.dumps(rec, default=str))))
        # O_APPEND writes of one line are atomic enough for concurrent writers on one host
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        if self._stderr is not None:
            self._stderr.write(line + "\n")

    @contextmanager
    def step(
        self, step: str, *, item_id: str | None = None, **extra: Any
    ) -> Iterator[dict[str, Any]]:
        """Time a step; log ``ok`` or the exception type as its outcome."""
        t0 = time.perf_counter()
        info: dict[str, Any] = dict(extra)
        try:
            yield info
        except BaseException as exc:
            self.write(
                step=step,
                outcome=f"error:{type(exc).__name__}",
                item_id=item_id,
                duration_s=time.perf_counter() - t0,
                **info,
            )
            raise
        self.write(
            step=step,
            outcome=info.pop("outcome", "ok"),
            item_id=item_id,
            duration_s=time.perf_counter() - t0,
            **info,
        )
