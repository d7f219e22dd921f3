"""Deployment events: which model versions serve a model name, and how traffic is split.

The registry publishes one :class:`Deployment` per change to the compacted ``tidal.models``
topic, keyed by model name, so the latest record per key is the whole current state. Workers
follow the topic and hot-swap between micro-batches.

Modes:

- ``single``: ``primary`` scores every event.
- ``canary`` / ``ab``: events whose key hashes below ``share`` go to ``secondary``, the rest to
  ``primary``; the same key always lands on the same side. (``ab`` is the same split, named
  for experiments rather than rollouts.)
- ``shadow``: ``primary`` scores every event for the output; ``secondary`` scores every event
  too, and its score is attached as ``shadow_score`` / ``shadow_version`` without affecting
  the decision.

>>> d = Deployment("fraud", "canary", Target("3", "/r/a/3", "ab"), Target("4", "/r/a/4", "cd"), share=0.1, seq=7)
>>> Deployment.from_json(d.to_json()) == d
True
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import orjson

__all__ = ["Deployment", "Target", "MODES"]

MODES = ("single", "canary", "ab", "shadow")


@dataclass(frozen=True)
class Target:
    """One model version a worker can load: its folder (``load_model(path)``) and checksum."""

    version: str
    path: str
    sha256: str


@dataclass(frozen=True)
class Deployment:
    """The serving state of one model name (the value of its key on ``tidal.models``)."""

    model: str
    mode: str
    primary: Target
    secondary: Target | None = None
    share: float = 0.0
    seq: int = 0
    time: float = field(default_factory=time.time)
    reason: str = ""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown deployment mode {self.mode!r}; use one of {MODES}")
        if self.mode != "single" and self.secondary is None:
            raise ValueError(f"mode {self.mode!r} needs a secondary version")
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"share must be within [0, 1], got {self.share}")

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, data: bytes) -> "Deployment":
        raw = orjson.loads(data)
        raw["primary"] = Target(**raw["primary"])
        raw["secondary"] = Target(**raw["secondary"]) if raw.get("secondary") else None
        return cls(**raw)
