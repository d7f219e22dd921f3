"""The YAML step type ``deployed`` (registered as a ``tidal.steps`` entry point).

``- deployed: {model: fraud, registry: registry}`` follows ``tidal.models`` for ``fraud``;
with ``registry`` (a folder, relative to the YAML file), automatic rollbacks are recorded in
that registry's history too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tidal.models.deployed import DeployedScoreStep

__all__ = ["deployed"]


def deployed(args: dict, base: Any = ".", kind: str = "deployed", previous: list | None = None) -> DeployedScoreStep:
    """``deployed: {model: .., registry: <folder>, wait_s: .., max_canary_failures: ..}``."""
    registry = args.pop("registry", None)
    if registry is not None:
        from tidal.registry.store import Registry

        path = Path(registry)
        args["registry"] = Registry(path if path.is_absolute() else Path(base) / path)
    return DeployedScoreStep(args.pop("model"), **args)
