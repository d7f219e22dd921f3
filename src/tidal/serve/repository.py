"""The models a server offers: fixed model folders, or deployments followed on ``tidal.models``.

Every model name resolves to a :class:`~tidal.models.follower.Routing`, the same snapshot the
stream engine scores with: fixed folders make a ``single`` routing, a followed name takes the
follower's current one, so a promotion on ``tidal.models`` hot-swaps the server between two
requests. :meth:`ModelRepository.pick` applies the deployment to one request: canary / A-B
by the hash of the request's key (:func:`~tidal.models.deployed.key_buckets`, so a key lands on
the same version as in the stream engine), shadow scoring alongside the primary.

>>> import numpy as np, tempfile
>>> from sklearn.linear_model import LogisticRegression
>>> from tidal.models import save_model
>>> folder = tempfile.mkdtemp()
>>> _ = save_model(LogisticRegression().fit([[0.0], [1.0]], [0, 1]), folder, "toy", 3, ["x"])
>>> repo = ModelRepository()
>>> repo.add_folder(folder).version
'3'
>>> repo.names(), repo.ready(), repo.pick("toy").model.version
(['toy'], True, '3')
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tidal.models.artifact import LoadedModel, load_model
from tidal.models.deployed import key_buckets
from tidal.models.follower import DeploymentFollower, Routing
from tidal.registry.deployment import Deployment, Target
from tidal.serve.protocol import BadRequest, ModelNotFound, ModelNotReady

__all__ = ["ModelRepository", "Choice"]


@dataclass(frozen=True)
class Choice:
    """The version that scores one request, and the shadow version scored alongside (if any)."""

    model: LoadedModel
    shadow: LoadedModel | None = None


class ModelRepository:
    """Model names → routings; fixed folders (the last one added per name serves) or followers."""

    def __init__(self) -> None:
        self._fixed: dict[str, dict[str, LoadedModel]] = {}
        self._routing: dict[str, Routing] = {}
        self._followers: dict[str, DeploymentFollower] = {}
        self._lock = threading.Lock()

    # -- adding models ---------------------------------------------------------------------
    def add(self, model: LoadedModel, path: str = "") -> LoadedModel:
        """Serve ``model`` under its card's name; it becomes that name's default version."""
        name = model.name
        with self._lock:
            if name in self._followers:
                raise ValueError(f"model {name!r} already follows tidal.models; it cannot also be served from a folder")
            self._fixed.setdefault(name, {})[model.version] = model
            target = Target(model.version, path, model.card.sha256)
            self._routing[name] = Routing(Deployment(name, "single", target, reason="fixed"), model, None, time.time())
        return model

    def add_folder(self, folder: str | Path) -> LoadedModel:
        """Load a model folder (checksum verified) and serve it."""
        return self.add(load_model(folder), str(folder))

    def add_ref(self, ref: str, registry: Any) -> LoadedModel:
        """Serve a registry reference such as ``models:/fraud@champion`` (``registry.load(ref)``)."""
        return self.add(registry.load(ref), ref)

    def follow(self, follower: DeploymentFollower) -> DeploymentFollower:
        """Serve ``follower.model`` as its deployments on ``tidal.models`` say (start the follower first)."""
        with self._lock:
            if follower.model in self._fixed:
                raise ValueError(f"model {follower.model!r} is already served from a folder")
            self._followers[follower.model] = follower
        return follower

    def close(self) -> None:
        for follower in self._followers.values():
            follower.stop()

    # -- lookups ---------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted({*self._fixed, *self._followers})

    def routing(self, name: str) -> Routing:
        """The current routing of ``name``; :class:`ModelNotFound` / :class:`ModelNotReady` otherwise."""
        follower = self._followers.get(name)
        if follower is not None:
            if follower.routing is None:
                detail = f" ({follower.errors[-1]})" if follower.errors else ""
                raise ModelNotReady(f"model {name!r} has no deployment loaded yet{detail}")
            return follower.routing
        routing = self._routing.get(name)
        if routing is None:
            raise ModelNotFound(f"unknown model {name!r}; this server has: {', '.join(self.names()) or 'none'}")
        return routing

    def ready(self, name: str | None = None) -> bool:
        """Whether ``name`` (default: every model) can score now; unknown names raise ModelNotFound."""
        for n in [name] if name else self.names():
            try:
                self.routing(n)
            except ModelNotReady:
                return False
        return True

    def versions(self, name: str) -> dict[str, LoadedModel]:
        """The versions of ``name`` loaded now (fixed ones, or the deployment's primary and secondary)."""
        routing = self.routing(name)
        if name in self._fixed:
            return dict(self._fixed[name])
        out = {routing.primary.version: routing.primary}
        if routing.secondary is not None:
            out[routing.secondary.version] = routing.secondary
        return out

    def pick(self, name: str, version: str | None = None, key: Any = None) -> Choice:
        """The model for one request: an explicit ``version``, else the deployment's choice for ``key``.

        Without a key, canary and A-B requests go to the primary.
        """
        if version is not None:
            model = self.versions(name).get(version)
            if model is None:
                raise ModelNotFound(f"model {name!r} has no version {version!r} loaded; "
                                    f"loaded: {', '.join(self.versions(name))}")
            return Choice(model)
        routing = self.routing(name)
        d = routing.deployment
        if d.mode in ("canary", "ab") and routing.secondary is not None and key is not None:
            raw = key if isinstance(key, bytes) else str(key).encode()
            if key_buckets([raw], np.zeros(1, np.int64))[0] < d.share:
                return Choice(routing.secondary)
        if d.mode == "shadow" and routing.secondary is not None:
            return Choice(routing.primary, routing.secondary)
        return Choice(routing.primary)

    def split(self, name: str, keys: Any, rows: int) -> tuple[LoadedModel, LoadedModel | None, np.ndarray]:
        """Per-row routing by key (as the stream engine does): ``(primary, secondary, rows_to_secondary)``.

        Rows without a key, and every row outside canary / A-B, go to the primary.
        """
        if not isinstance(keys, list) or len(keys) != rows or not all(k is None or isinstance(k, str) for k in keys):
            raise BadRequest(f"parameters.keys must be a list of {rows} keys (strings or null), one per row")
        routing = self.routing(name)
        d = routing.deployment
        to_secondary = np.zeros(rows, dtype=bool)
        if d.mode in ("canary", "ab") and routing.secondary is not None and rows:
            raw = [b"" if k is None else k.encode() for k in keys]
            to_secondary = (key_buckets(raw, np.zeros(rows, np.int64)) < d.share) & np.array([k is not None for k in keys])
        return routing.primary, routing.secondary, to_secondary
