"""LightGBM: saved in LightGBM's own text format (no pickle), loaded as a ``Booster``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tidal.models.runtimes.base import ModelRuntime, module_of, register_runtime

__all__ = ["LightGBMRuntime", "SMALL_BATCH_ROWS"]

# Below this many rows LightGBM predicts faster on one thread: starting its OpenMP team costs
# more than it saves (measured with bench/profile_stages.py: 200 rows 6.2 ms on the default
# threads vs 1.2 ms on one; 5,000 rows 20.5 vs 22.7 ms). Small batches are the low-latency case.
SMALL_BATCH_ROWS = 1000


@register_runtime
class LightGBMRuntime(ModelRuntime):
    """``LGBMModel`` estimators and ``Booster`` objects; TreeSHAP explanations; ONNX via onnxmltools.

    ``threads`` per ``predict``: None (auto) uses one thread under ``SMALL_BATCH_ROWS`` rows and
    LightGBM's default (all cores) for larger batches.
    """

    flavor = "lightgbm"
    file = "model.txt"
    platform = "lightgbm"

    def handles(self, model: Any) -> bool:
        return module_of(model) == "lightgbm"

    def save(self, model: Any, path: Path) -> None:
        getattr(model, "booster_", model).save_model(str(path))

    def load(self, path: Path, *, task: str = "binary") -> Any:
        import lightgbm

        return lightgbm.Booster(model_file=str(path))

    def predict(self, model: Any, X: np.ndarray, *, task: str = "binary", features: Sequence[str] = (),
                threads: int | None = None) -> np.ndarray:
        model = getattr(model, "booster_", model)  # a live LGBMModel scores as its booster, like a loaded one
        threads = threads if threads is not None else (1 if len(X) < SMALL_BATCH_ROWS else 0)
        out = model.predict(X, num_threads=threads) if threads else model.predict(X)
        return out if out.ndim == 1 else np.ascontiguousarray(out[:, 1])

    def explain(self, model: Any, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = np.asarray(getattr(model, "booster_", model).predict(X, pred_contrib=True))
        if out.shape[1] != X.shape[1] + 1:  # multiclass: one block per class; explain the last one
            out = out[:, -(X.shape[1] + 1):]
        return out[:, :-1], out[:, -1]

    def to_onnx(self, model: Any, n_features: int, opset: int | None = None) -> bytes:
        import onnxmltools
        from onnxmltools.convert.common.data_types import FloatTensorType

        onx = onnxmltools.convert_lightgbm(model, initial_types=[("input", FloatTensorType([None, n_features]))],
                                           zipmap=False, target_opset=opset)
        return onx.SerializeToString()

    def feature_ranges(self, model: Any) -> dict[int, tuple[float, float]]:
        infos = list(getattr(model, "booster_", model).dump_model().get("feature_infos", {}).values())
        return {i: (float(info["min_value"]), float(info["max_value"])) for i, info in enumerate(infos)
                if isinstance(info, dict) and "min_value" in info and not info.get("values")}
