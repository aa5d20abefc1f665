"""Preparation report: every row or stay left out is counted by reason; nothing is dropped silently."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class PreparationReport:
    source: str
    inputs: dict[str, str] = field(default_factory=dict)
    rows_read: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    notes: list[str] = field(default_factory=list)
    outputs: dict[str, dict] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def read(self, table: str, n: int) -> None:
        self.rows_read[table] = self.rows_read.get(table, 0) + int(n)

    def drop(self, what: str, reason: str, n: int) -> None:
        """Count `n` items of kind `what` (e.g. 'measurements', 'stays') dropped for `reason`."""
        if n:
            self.dropped[what][reason] = self.dropped[what].get(reason, 0) + int(n)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def to_json(self) -> dict:
        return {
            "source": self.source,
            "inputs": self.inputs,
            "rows_read": self.rows_read,
            "dropped": {k: dict(sorted(v.items())) for k, v in self.dropped.items()},
            "notes": self.notes,
            "outputs": self.outputs,
            "seconds": self.seconds,
        }

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_json(), indent=2))
        return path

    def summary_lines(self) -> list[str]:
        lines = [f"source: {self.source}"]
        for view, info in self.outputs.items():
            lines.append(f"{view}: " + ", ".join(f"{k}={v}" for k, v in info.items()))
        for what, reasons in self.dropped.items():
            total = sum(reasons.values())
            detail = "; ".join(f"{r}: {n:,}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:8])
            lines.append(f"dropped {what}: {total:,} ({detail})")
        lines.extend(f"note: {n}" for n in self.notes)
        return lines
