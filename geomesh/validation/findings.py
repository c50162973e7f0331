"""The result of validation: plain, immutable ``Finding`` values (never printed here)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from geomesh.models import Severity

#: most severe first
SEVERITY_ORDER: Final[tuple[Severity, ...]] = (Severity.P1, Severity.P2, Severity.P3)
_RANK: Final[dict[Severity, int]] = {s: i for i, s in enumerate(SEVERITY_ORDER)}

#: `geomesh validate` exit status by worst severity
EXIT_CODES: Final[dict[Severity | None, int]] = {
    None: 0,
    Severity.P3: 1,
    Severity.P2: 2,
    Severity.P1: 3,
}


@dataclass(frozen=True)
class Finding:
    """One rule violation on one item.

    ``path`` is the JSON path of the offending field inside the item
    (``properties.proj:code``, ``assets.data.file:checksum``) or ``""`` for the item
    as a whole; ``context`` holds machine-readable details (e.g. ``{"derivable": true}``).
    """

    rule_id: str
    severity: Severity
    item_id: str
    path: str
    message: str
    remediation: str
    context: dict[str, Any] = field(default_factory=dict)

    def with_severity(self, severity: Severity) -> Finding:
        return replace(self, severity=severity)

    def key(self) -> tuple[str, str, str, str]:
        """Identity used to compare two validation runs of the same item."""
        return (self.rule_id, self.severity.value, self.path, self.message)

    def to_json(self) -> dict[str, Any]:
        return {
            "rule_id": self.rule_id,
            "severity": self.severity.value,
            "item_id": self.item_id,
            "path": self.path,
            "message": self.message,
            "remediation": self.remediation,
            "context": self.context,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Finding:
        return cls(
            rule_id=str(data["rule_id"]),
            severity=Severity(data["severity"]),
            item_id=str(data["item_id"]),
            path=str(data.get("path", "")),
            message=str(data["message"]),
            remediation=str(data.get("remediation", "")),
            context=dict(data.get("context") or {}),
        )


def severity_rank(severity: Severity) -> int:
    """0 for P1 (worst) … 2 for P3."""
    return _RANK[severity]


def worst_severity(findings: Iterable[Finding]) -> Severity | None:
    worst: Severity | None = None
    for f in findings:
        if worst is None or _RANK[f.severity] < _RANK[worst]:
            worst = f.severity
    return worst


def exit_code(findings: Iterable[Finding]) -> int:
    """0 clean, 1 P3 only, 2 worst P2, 3 worst P1."""
    return EXIT_CODES[worst_severity(findings)]


def count_by_severity(findings: Iterable[Finding]) -> dict[str, int]:
    counts = Counter(f.severity.value for f in findings)
    return {s.value: counts.get(s.value, 0) for s in SEVERITY_ORDER}


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Worst first, then by rule id and path (a stable order for output and comparison)."""
    return sorted(findings, key=lambda f: (_RANK[f.severity], f.rule_id, f.path, f.message))
