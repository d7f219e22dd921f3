"""Model artifacts on disk: one folder per model version, checksummed.

A folder holds the model file and ``tidal-model.json``: name, version, flavor, the input
features (and the categories of categorical ones), the decision threshold, metrics and the
file's SHA-256. Loading verifies the checksum before anything is deserialised.

Each flavor's file format is its runtime's (:mod:`tidal.models.runtimes`): ``lightgbm`` as
LightGBM's own text format (no pickle), ``sklearn`` and ``river`` pickled with joblib (loading a
pickle runs code, so only load artifacts you wrote; the checksum guards against corruption, not
against a malicious author), ``onnx`` as the serialized graph.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from tidal.models.errors import ArtifactError
from tidal.models.runtimes import ModelRuntime, flavors, runtime_for, runtime_of
from tidal.models.runtimes.lightgbm import SMALL_BATCH_ROWS

__all__ = ["ModelCard", "LoadedModel", "save_model", "load_model", "feature_matrix", "category_codes",
           "ArtifactError", "FLAVORS"]

CARD = "tidal-model.json"


def __getattr__(name: str) -> Any:
    if name == "FLAVORS":  # the registered flavors, including any registered after import
        return flavors()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class ModelCard:
    """What tidal records about one model version."""

    name: str
    version: str
    flavor: str
    features: list[str]
    file: str
    sha256: str
    categories: dict[str, list[str]] = field(default_factory=dict)
    threshold: float = 0.5
    task: str = "binary"
    metrics: dict[str, float] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0


def category_codes(categories: Mapping[str, Sequence[str]]) -> dict[str, dict[str, float]]:
    """Category → numeric code per categorical feature, as the model was trained with."""
    return {f: {c: float(i) for i, c in enumerate(cats)} for f, cats in categories.items()}


def feature_matrix(column: Callable[[str], np.ndarray], features: Sequence[str],
                   codes: Mapping[str, Mapping[str, float]]) -> np.ndarray:
    """X (rows × features, float64); categorical features become codes, unknown ones NaN.

    Training and serving both build X here, so the two cannot drift apart.
    """
    cols = []
    for f in features:
        values = column(f)
        table = codes.get(f)
        if table is not None:
            values = np.fromiter(map(table.get, values.tolist(), repeat(np.nan)), np.float64, len(values))
        cols.append(np.asarray(values, dtype=np.float64))
    return np.column_stack(cols) if cols else np.empty((0, 0))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_model(model: Any, folder: str | Path, name: str, version: str | int, features: Sequence[str], *,
               flavor: str | None = None, categories: Mapping[str, Sequence[str]] | None = None,
               threshold: float = 0.5, task: str = "binary", metrics: Mapping[str, float] | None = None,
               lineage: Mapping[str, Any] | None = None) -> ModelCard:
    """Write ``model`` and its card into ``folder`` (created); returns the card."""
    runtime = runtime_for(flavor) if flavor else runtime_of(model)
    flavor = runtime.flavor
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / runtime.file
    runtime.save(model, path)
    card = ModelCard(name=name, version=str(version), flavor=flavor, features=list(features), file=path.name,
                     sha256=_sha256(path), categories={k: list(v) for k, v in (categories or {}).items()},
                     threshold=float(threshold), task=task, metrics=dict(metrics or {}),
                     lineage=dict(lineage or {}), created_at=time.time())
    (folder / CARD).write_text(json.dumps(asdict(card), indent=2))
    return card


class LoadedModel:
    """A model ready to score: ``features_matrix`` builds X from a batch, ``predict`` scores it.

    ``threads`` (LightGBM): threads per ``predict``; None (auto) uses one thread for batches
    under ``SMALL_BATCH_ROWS`` rows and LightGBM's default (all cores) for larger ones.
    """

    def __init__(self, card: ModelCard, model: Any, threads: int | None = None) -> None:
        self.card = card
        self.model = model
        self.threads = threads
        self._codes = category_codes(card.categories)
        self._runtime: ModelRuntime | None = None

    @property
    def runtime(self) -> ModelRuntime:
        """The runtime of this model's flavor."""
        if self._runtime is None:
            self._runtime = runtime_for(self.card.flavor)
        return self._runtime

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def version(self) -> str:
        return self.card.version

    def features_matrix(self, column: Callable[[str], np.ndarray]) -> np.ndarray:
        """X for this model from ``column(name) -> array`` (e.g. ``batch.column``)."""
        return feature_matrix(column, self.card.features, self._codes)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Scores for a whole batch in one call: P(positive) for binary tasks, else the prediction."""
        if len(X) == 0:
            return np.empty(0)
        return self.runtime.predict(self.model, X, task=self.card.task, features=self.card.features,
                                    threads=self.threads)


def load_model(folder: str | Path, sha256: str | None = None) -> LoadedModel:
    """Load a model folder written by :func:`save_model`, after verifying its checksum.

    ``sha256``: the checksum a trusted source (the registry database, a signed deployment)
    holds for the model file; it must match before the flavor reads the file (pickled flavors
    run code when read). The card's ``file`` must be a plain name inside ``folder``."""
    folder = Path(folder)
    try:
        card = ModelCard(**json.loads((folder / CARD).read_text()))
    except FileNotFoundError:
        raise ArtifactError(f"{folder}: no {CARD}; is this a tidal model folder?") from None
    except (ValueError, TypeError) as exc:
        raise ArtifactError(f"{folder / CARD}: unreadable card ({exc})") from None
    if not card.file or card.file in (".", "..") or Path(card.file).name != card.file or "\\" in card.file:
        raise ArtifactError(f"{folder / CARD}: file {card.file!r} is not a plain file name in the folder")
    path = folder / card.file
    if not path.is_file() or path.is_symlink():
        raise ArtifactError(f"{path}: model file missing (or a link)")
    digest = _sha256(path)
    if sha256 is not None and digest != sha256:
        raise ArtifactError(f"{path}: checksum {digest[:12]} is not the trusted {sha256[:12]}; "
                            "the artifact is not the one registered (refused before reading it)")
    if digest != card.sha256:
        raise ArtifactError(f"{path}: checksum mismatch; the artifact is corrupt or was modified")
    try:
        runtime = runtime_for(card.flavor)
    except ArtifactError as exc:
        raise ArtifactError(f"{folder}: {exc}") from None
    return LoadedModel(card, runtime.load(path, task=card.task))
