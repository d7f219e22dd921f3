"""Model artifacts on disk: one folder per model version, checksummed.

A folder holds the model file and ``tidal-model.json``: name, version, flavor, the input
features (and the categories of categorical ones), the decision threshold, metrics and the
file's SHA-256. Loading verifies the checksum before anything is deserialised.

Flavors: ``lightgbm`` (saved as LightGBM's own text format: no pickle), ``sklearn`` and
``river`` (pickled with joblib: loading a pickle runs code, so only load artifacts you wrote;
the checksum guards against corruption, not against a malicious author).
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

__all__ = ["ModelCard", "LoadedModel", "save_model", "load_model", "feature_matrix", "category_codes",
           "ArtifactError", "FLAVORS"]

CARD = "tidal-model.json"
FLAVORS = ("lightgbm", "sklearn", "river", "onnx")


class ArtifactError(RuntimeError):
    """The artifact is missing, corrupt, or of an unknown flavor."""


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


def _flavor_of(model: Any) -> str:
    module = type(model).__module__.split(".")[0]
    if module == "lightgbm":
        return "lightgbm"
    if module == "river":
        return "river"
    if module == "sklearn" or hasattr(model, "predict_proba") or hasattr(model, "predict"):
        return "sklearn"
    raise ArtifactError(f"cannot tell the flavor of {type(model).__name__}; pass flavor=")


def save_model(model: Any, folder: str | Path, name: str, version: str | int, features: Sequence[str], *,
               flavor: str | None = None, categories: Mapping[str, Sequence[str]] | None = None,
               threshold: float = 0.5, task: str = "binary", metrics: Mapping[str, float] | None = None,
               lineage: Mapping[str, Any] | None = None) -> ModelCard:
    """Write ``model`` and its card into ``folder`` (created); returns the card."""
    flavor = flavor or _flavor_of(model)
    if flavor not in FLAVORS:
        raise ArtifactError(f"unknown flavor {flavor!r}; use one of {FLAVORS}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if flavor == "lightgbm":
        booster = getattr(model, "booster_", model)
        path = folder / "model.txt"
        booster.save_model(str(path))
    elif flavor == "onnx":  # a serialized ONNX graph (bytes) or an onnx.ModelProto
        path = folder / "model.onnx"
        path.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
    else:
        import joblib

        path = folder / "model.joblib"
        joblib.dump(model, path)
    card = ModelCard(name=name, version=str(version), flavor=flavor, features=list(features), file=path.name,
                     sha256=_sha256(path), categories={k: list(v) for k, v in (categories or {}).items()},
                     threshold=float(threshold), task=task, metrics=dict(metrics or {}),
                     lineage=dict(lineage or {}), created_at=time.time())
    (folder / CARD).write_text(json.dumps(asdict(card), indent=2))
    return card


# Below this many rows LightGBM predicts faster on one thread: starting its OpenMP team costs
# more than it saves (measured with bench/profile_stages.py: 200 rows 6.2 ms on the default
# threads vs 1.2 ms on one; 5,000 rows 20.5 vs 22.7 ms). Small batches are the low-latency case.
SMALL_BATCH_ROWS = 1000


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
        flavor, model = self.card.flavor, self.model
        if flavor == "lightgbm":
            threads = self.threads if self.threads is not None else (1 if len(X) < SMALL_BATCH_ROWS else 0)
            out = model.predict(X, num_threads=threads) if threads else model.predict(X)
            return out if out.ndim == 1 else out[:, 1]
        if flavor == "sklearn":
            if self.card.task == "binary" and hasattr(model, "predict_proba"):
                return model.predict_proba(X)[:, 1]
            return np.asarray(model.predict(X), dtype=np.float64)
        if flavor == "onnx":
            return model.predict(X)
        return self._predict_river(X)

    def _predict_river(self, X: np.ndarray) -> np.ndarray:
        names = self.card.features
        pd = _pandas()
        if pd is not None and self.card.task == "binary" and hasattr(self.model, "predict_proba_many"):
            proba = self.model.predict_proba_many(pd.DataFrame(X, columns=names))
            for col in (True, 1):
                if col in proba.columns:
                    return proba[col].to_numpy(dtype=np.float64)
            return np.zeros(len(X))
        rows = (dict(zip(names, x)) for x in X.tolist())  # River's per-row API: no batch form
        if self.card.task == "binary":
            return np.fromiter((self.model.predict_proba_one(r).get(True, 0.0) for r in rows), np.float64, len(X))
        return np.fromiter((self.model.predict_one(r) or 0.0 for r in rows), np.float64, len(X))


def _pandas():
    """pandas if installed: River's mini-batch API takes DataFrames; without it, rows one by one."""
    try:
        import pandas
    except ImportError:
        return None
    return pandas


def load_model(folder: str | Path) -> LoadedModel:
    """Load a model folder written by :func:`save_model`, after verifying its checksum."""
    folder = Path(folder)
    try:
        card = ModelCard(**json.loads((folder / CARD).read_text()))
    except FileNotFoundError:
        raise ArtifactError(f"{folder}: no {CARD}; is this a tidal model folder?") from None
    except (ValueError, TypeError) as exc:
        raise ArtifactError(f"{folder / CARD}: unreadable card ({exc})") from None
    path = folder / card.file
    if not path.is_file():
        raise ArtifactError(f"{path}: model file missing")
    if _sha256(path) != card.sha256:
        raise ArtifactError(f"{path}: checksum mismatch; the artifact is corrupt or was modified")
    if card.flavor == "lightgbm":
        import lightgbm

        model = lightgbm.Booster(model_file=str(path))
    elif card.flavor in ("sklearn", "river"):
        import joblib

        model = joblib.load(path)
    elif card.flavor == "onnx":
        from tidal.serve.onnx import OnnxModel

        model = OnnxModel(path, card.task)
    else:
        raise ArtifactError(f"{folder}: unknown flavor {card.flavor!r}")
    return LoadedModel(card, model)
