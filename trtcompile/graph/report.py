"""What each pass matched and declined, for `trtcompile inspect` and the manifest."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger("trtcompile.passes")


@dataclass
class PassReport:
    name: str
    matched: list[dict] = field(default_factory=list)
    declined: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    nodes_before: int = 0
    nodes_after: int = 0
    # Structured results beyond matches/declines (e.g. quantize_int8's accuracy and sensitivity).
    extra: dict = field(default_factory=dict)

    def match(self, node: str, **detail) -> None:
        """Record one fused/rewritten subgraph, named by its anchor node."""
        self.matched.append({"node": node, **detail})

    def decline(self, node: str, reason: str, **detail) -> None:
        """Record a candidate left as it was, and why (a silent non-match is a bug)."""
        log.debug("%s declined %s: %s", self.name, node, reason)
        self.declined.append({"node": node, "reason": reason, **detail})

    def note(self, text: str) -> None:
        self.notes.append(text)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "matched": len(self.matched),
            "declined": len(self.declined),
            "matches": self.matched,
            "declines": self.declined,
            "notes": self.notes,
            "seconds": round(self.seconds, 4),
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            **({"extra": self.extra} if self.extra else {}),
        }
