"""The model step: score a whole micro-batch with one ``predict`` call.

Each output record keeps its input fields and gains ``score``, ``decision`` (score ≥
threshold, for binary models), ``model`` and ``model_version``.

>>> import numpy as np, tempfile
>>> from sklearn.linear_model import LogisticRegression
>>> from tidal.stream.batch import Batch
>>> from tidal.models import save_model, load_model
>>> X = np.array([[0.0], [1.0], [2.0], [3.0]]); y = np.array([0, 0, 1, 1])
>>> folder = tempfile.mkdtemp()
>>> _ = save_model(LogisticRegression().fit(X, y), folder, "toy", 1, ["x"])
>>> step = ScoreStep(load_model(folder))
>>> out = step.process(Batch.from_rows([{"x": 0.0}, {"x": 3.0}]))
>>> out.columns["decision"].tolist(), out.outputs
([False, True], ['score', 'decision', 'model', 'model_version'])
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tidal.models.artifact import LoadedModel, load_model
from tidal.models.metrics import ScoreMetrics
from tidal.stream.batch import Batch
from tidal.stream.context import StepContext
from tidal.stream.step import Step

__all__ = ["ScoreStep"]


class ScoreStep(Step):
    """Score the batch with ``model``; the decision uses ``threshold`` (default: the model card's).

    ``threads``: LightGBM threads per batch (default: one for small batches, all cores for
    large ones; see :class:`~tidal.models.artifact.LoadedModel`).
    """

    name = "score"
    error_reason = "model_error"

    def __init__(self, model: LoadedModel, threshold: float | None = None, threads: int | None = None) -> None:
        self.model = model
        if threads is not None:
            model.threads = int(threads)
        self.threshold = model.card.threshold if threshold is None else float(threshold)
        self._metrics: ScoreMetrics | None = None

    def open(self, ctx: StepContext) -> None:
        self._metrics = ScoreMetrics.of(ctx.registry, ctx.pipeline)

    @classmethod
    def from_path(cls, path: str, threshold: float | None = None, threads: int | None = None) -> "ScoreStep":
        return cls(load_model(path), threshold, threads)

    def reads(self) -> list[str]:
        return list(self.model.card.features)

    def read_types(self) -> dict[str, str]:
        """Categorical features (with categories on the card) are ``str``, the others numbers."""
        cats = self.model.card.categories
        return {f: "str" if f in cats else "float" for f in self.model.card.features}

    def adds(self) -> list[str]:
        return ["score", "decision", "model", "model_version"]

    def process(self, batch: Batch) -> Batch:
        if not len(batch):
            return batch
        X = self.model.features_matrix(batch.column)
        scores = np.asarray(self.model.predict(X), dtype=np.float64)
        if scores.shape != (len(batch),):
            raise ValueError(f"model returned shape {scores.shape} for {len(batch)} rows")
        batch.with_column("score", scores)
        if self.model.card.task == "binary":
            batch.with_column("decision", scores >= self.threshold)
        n = len(batch)
        batch.with_column("model", np.full(n, self.model.name, dtype=object))
        batch.with_column("model_version", np.full(n, self.model.version, dtype=object))
        if self._metrics is not None:
            self._metrics.observe(batch)
        return batch



def from_spec(args: dict, base: Any, kind: str = "score", previous: list | None = None) -> ScoreStep:
    """YAML ``- score: {model: models/fraud-v1, threshold: 0.5}`` (a path relative to the file)."""
    from pathlib import Path

    model = Path(args.pop("model"))
    return ScoreStep.from_path(str(model if model.is_absolute() else Path(base) / model), **args)
