"""scikit-learn (and anything with ``predict``): pickled with joblib.

Loading a pickle runs code: only load artifacts you wrote; the checksum guards against
corruption, not against a malicious author.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from tidal.models.runtimes.base import Column, ModelRuntime, OnlineLearner, module_of, register_runtime

__all__ = ["SklearnRuntime", "SklearnLearner"]


@register_runtime
class SklearnRuntime(ModelRuntime):
    """scikit-learn estimators and pipelines, or any object with ``predict``/``predict_proba``.

    Linear models explain exactly (``coef_ · x`` plus the intercept); LightGBM's scikit-learn
    wrappers by TreeSHAP; ONNX via skl2onnx; estimators with ``partial_fit`` learn online.
    """

    flavor = "sklearn"
    file = "model.joblib"
    platform = "sklearn"
    online = True
    fallback = True

    def handles(self, model: Any) -> bool:
        return module_of(model) == "sklearn" or hasattr(model, "predict_proba") or hasattr(model, "predict")

    def save(self, model: Any, path: Path) -> None:
        import joblib

        joblib.dump(model, path)

    def load(self, path: Path, *, task: str = "binary") -> Any:
        import joblib

        return joblib.load(path)

    def predict(self, model: Any, X: np.ndarray, *, task: str = "binary", features: Sequence[str] = (),
                threads: int | None = None) -> np.ndarray:
        if task == "binary" and hasattr(model, "predict_proba"):
            return np.ascontiguousarray(model.predict_proba(X)[:, 1])  # a view is not C-contiguous (orjson)
        return np.asarray(model.predict(X), dtype=np.float64)

    def explain(self, model: Any, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if hasattr(model, "coef_"):
            coef = np.atleast_2d(model.coef_)[-1]
            intercept = float(np.atleast_1d(getattr(model, "intercept_", 0.0))[-1])
            return X * coef, np.full(len(X), intercept)
        if hasattr(model, "booster_"):
            out = np.asarray(model.booster_.predict(X, pred_contrib=True))
            return out[:, :-1], out[:, -1]
        return super().explain(model, X)

    def to_onnx(self, model: Any, n_features: int, opset: int | None = None) -> bytes:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        options = {id(model): {"zipmap": False}} if hasattr(model, "predict_proba") else None
        if getattr(model, "steps", None) and hasattr(model, "predict_proba"):
            options = {id(model.steps[-1][1]): {"zipmap": False}}
        onx = convert_sklearn(model, initial_types=[("input", FloatTensorType([None, n_features]))], options=options,
                              target_opset=opset)
        return onx.SerializeToString()

    def can_learn(self, model: Any) -> bool:
        return hasattr(model, "partial_fit")

    def learner(self, model: Any, features: Sequence[str], *, task: str = "binary", mode: str = "auto",
                chunk_size: int = 256, classes: np.ndarray | None = None,
                codes: Mapping[str, Mapping[str, float]] | None = None) -> OnlineLearner:
        if not self.can_learn(model):
            raise TypeError(f"{type(model).__name__} has no partial_fit")
        if mode == "many":
            raise ValueError("mode='many' needs a River model with learn_many and pandas (pip install pandas)")
        return SklearnLearner(model, features, task, classes, codes or {})


class SklearnLearner(OnlineLearner):
    """One ``predict`` and one ``partial_fit`` per micro-batch on the feature matrix.

    Rows before the first fit are not scored.
    """

    mode = "sklearn"

    def __init__(self, model: Any, features: Sequence[str], task: str, classes: np.ndarray | None,
                 codes: Mapping[str, Mapping[str, float]]) -> None:
        self.model, self.features, self.task, self.classes, self.codes = model, list(features), task, classes, codes
        self.fitted = False

    def learn(self, column: Column, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from tidal.models.artifact import feature_matrix

        X = feature_matrix(column, self.features, self.codes)
        if self.task == "regression":
            y = labels.astype(np.float64)
        elif self.task == "binary":
            y = (labels.astype(np.float64) > 0.5).astype(int)
        else:
            y = labels
        preds = np.full(len(y), None, dtype=object)
        errors = np.full(len(y), np.nan)
        if self.fitted:
            p = self.model.predict(X)
            preds[:] = p.tolist()
            errors = (np.abs(p.astype(np.float64) - y) if self.task == "regression"
                      else (p != y).astype(np.float64))
        if not self.fitted and self.task != "regression":
            self.model.partial_fit(X, y, classes=self.classes)
        else:
            self.model.partial_fit(X, y)
        self.fitted = True
        return preds, errors
