"""River: online models, pickled with joblib; scored and learned row by row or in mini-batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from tidal.models.runtimes.base import (Column, ModelRuntime, OnlineLearner, module_of, prediction_errors,
                                        register_runtime)

__all__ = ["RiverRuntime", "RiverLearner"]


def _pandas() -> Any:
    """pandas if installed: River's mini-batch API takes DataFrames; without it, rows one by one."""
    try:
        import pandas
    except ImportError:
        return None
    return pandas


@register_runtime
class RiverRuntime(ModelRuntime):
    """River estimators and pipelines; predictions use ``predict_proba_many`` where pandas allows."""

    flavor = "river"
    file = "model.joblib"
    platform = "river"
    online = True

    def handles(self, model: Any) -> bool:
        return module_of(model) == "river"

    def save(self, model: Any, path: Path) -> None:
        import joblib

        joblib.dump(model, path)

    def load(self, path: Path, *, task: str = "binary") -> Any:
        import joblib

        return joblib.load(path)

    def predict(self, model: Any, X: np.ndarray, *, task: str = "binary", features: Sequence[str] = (),
                threads: int | None = None) -> np.ndarray:
        names = list(features) or [str(i) for i in range(X.shape[1])]
        pd = _pandas()
        if pd is not None and task == "binary" and hasattr(model, "predict_proba_many"):
            proba = model.predict_proba_many(pd.DataFrame(X, columns=names))
            for col in (True, 1):
                if col in proba.columns:
                    return proba[col].to_numpy(dtype=np.float64)
            return np.zeros(len(X))
        rows = (dict(zip(names, x)) for x in X.tolist())  # River's per-row API: no batch form
        if task == "binary":
            return np.fromiter((model.predict_proba_one(r).get(True, 0.0) for r in rows), np.float64, len(X))
        return np.fromiter((model.predict_one(r) or 0.0 for r in rows), np.float64, len(X))

    def learner(self, model: Any, features: Sequence[str], *, task: str = "binary", mode: str = "auto",
                chunk_size: int = 256, classes: np.ndarray | None = None,
                codes: Mapping[str, Mapping[str, float]] | None = None) -> OnlineLearner:
        has_many = hasattr(model, "learn_many")
        if mode == "many" and (not has_many or _pandas() is None):
            raise ValueError("mode='many' needs a River model with learn_many and pandas (pip install pandas)")
        many = mode == "many" or (mode == "auto" and has_many and _pandas() is not None)
        return RiverLearner(model, features, task, "many" if many else "one", chunk_size)


class RiverLearner(OnlineLearner):
    """River's prequential protocol: ``mode="one"`` predict_one/learn_one per row; ``"many"`` on chunks (pandas)."""

    def __init__(self, model: Any, features: Sequence[str], task: str, mode: str, chunk_size: int) -> None:
        self.model, self.features, self.task, self.mode, self.chunk_size = model, list(features), task, mode, chunk_size

    def learn(self, column: Column, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        preds = self._many(column, labels) if self.mode == "many" else self._one(column, labels)
        return preds, prediction_errors(preds, labels, self.task)

    def _one(self, column: Column, labels: np.ndarray) -> np.ndarray:
        cols = [column(f).tolist() for f in self.features]
        names = self.features
        predict, learn = self.model.predict_one, self.model.learn_one
        out = []
        append = out.append
        for values, y in zip(zip(*cols), labels.tolist()):  # River's protocol is one row at a time
            x = dict(zip(names, values))
            append(predict(x))
            learn(x, y)
        preds = np.empty(len(out), dtype=object)
        preds[:] = out
        return preds

    def _many(self, column: Column, labels: np.ndarray) -> np.ndarray:
        pd = _pandas()
        frame = pd.DataFrame({f: column(f) for f in self.features})
        target = pd.Series(labels.tolist(), name="label")
        preds = np.empty(len(labels), dtype=object)
        for s in range(0, len(labels), self.chunk_size):
            X, y = frame.iloc[s:s + self.chunk_size], target.iloc[s:s + self.chunk_size]
            preds[s:s + len(y)] = list(self.model.predict_many(X))
            self.model.learn_many(X, y)
        return preds
