"""What the registry returns: versions, alias moves, model summaries."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tidal.registry.deployment import Deployment, Target

__all__ = ["ModelVersion", "AliasMove", "ModelInfo", "Publisher", "CHAMPION", "ACTIVE", "ARCHIVED"]

CHAMPION = "champion"  # the alias whose moves redeploy the model (mode "single")
ACTIVE, ARCHIVED = "active", "archived"
Publisher = Callable[[Deployment], None]


@dataclass(frozen=True)
class ModelVersion:
    """One registered version; ``path`` is its artifact folder (``load_model(path)`` works)."""

    name: str
    version: int
    flavor: str
    features: list[str]
    path: Path
    sha256: str
    metrics: dict[str, float]
    params: dict[str, Any]
    tags: dict[str, str]
    lineage: dict[str, Any]
    created_at: float
    status: str = ACTIVE
    signature: dict[str, str] | None = None  # feature -> type

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def target(self) -> Target:
        """This version as a deployment target (what a worker loads)."""
        return Target(str(self.version), str(self.path), self.sha256)


@dataclass(frozen=True)
class AliasMove:
    """One alias change; ``old_version == new_version`` means nothing changed (and nothing was recorded)."""

    name: str
    alias: str
    old_version: int | None
    new_version: int | None
    action: str  # set, promote, rollback, remove
    reason: str
    time: float


@dataclass(frozen=True)
class ModelInfo:
    """A registered model name: how many versions, the newest, and its aliases."""

    name: str
    versions: int
    latest: int
    aliases: dict[str, int]
    created_at: float
