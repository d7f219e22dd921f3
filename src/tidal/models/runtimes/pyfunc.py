"""MLflow ``python_function`` models: any MLflow model that tidal has no flavor of its own for.

The flavor ``mlflow_pyfunc`` keeps the whole MLflow model folder (the one with the ``MLmodel``
file) as one zip archive, ``model.mlflow.zip``, so the artifact is still one checksummed file.
Loading unpacks it into a temporary folder (removed when the model is garbage-collected) and
calls ``mlflow.pyfunc.load_model``; scoring is one ``predict`` call per micro-batch on a pandas
DataFrame whose columns are the model's features (cast to the types of the MLflow signature;
a tensor signature gets the matrix itself).

The score of a row is the model's output for it: a 1-D output as it is, a one-column output
its column, and for binary tasks a two-column output (``predict_proba``-like) its second
column, the probability of the positive class. Anything else is refused.

Needs ``pip install 'tidal[mlflow]'`` (mlflow-skinny and pandas), imported only on use.
Loading an MLflow model may unpickle code (cloudpickle): only load models you trust.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tidal.models.runtimes.base import ModelRuntime, register_runtime

__all__ = ["MlflowPyfuncRuntime", "MlflowModel"]

_CASTS = {"double": np.float64, "float": np.float32, "long": np.int64, "integer": np.int32, "boolean": np.bool_}


class MlflowModel:
    """An MLflow model folder loaded with ``mlflow.pyfunc.load_model``; ``predict(X)`` scores a matrix.

    ``features`` name X's columns (the DataFrame's); ``cleanup`` removes ``folder`` when this
    object goes away (a folder the runtime unpacked).
    """

    def __init__(self, folder: str | Path, features: Sequence[str] = (), task: str = "binary", *,
                 cleanup: bool = False) -> None:
        import mlflow.pyfunc

        self.folder = Path(folder)
        self.features = list(features)
        self.task = task
        if cleanup:
            weakref.finalize(self, shutil.rmtree, str(self.folder), True)
        self.pyfunc = mlflow.pyfunc.load_model(str(self.folder))
        schema = self.pyfunc.metadata.get_input_schema()
        self.tensor_dtype: Any = None
        self.types: dict[str, str] = {}
        if schema is not None and schema.is_tensor_spec():
            self.tensor_dtype = schema.numpy_types()[0]
        elif schema is not None and schema.has_input_names():
            self.types = {c.name: getattr(c.type, "name", str(c.type)) for c in schema.inputs}

    def frame(self, X: np.ndarray, features: Sequence[str] = ()) -> Any:
        """What ``predict`` hands MLflow: a DataFrame of the features (or the matrix, for a tensor signature)."""
        import pandas as pd

        if self.tensor_dtype is not None:
            return np.ascontiguousarray(X, dtype=self.tensor_dtype)
        names = list(features) or self.features
        if len(names) != X.shape[1]:
            raise ValueError(f"{X.shape[1]} columns for {len(names)} features")
        cols = {}
        for i, name in enumerate(names):
            col = X[:, i]
            cast = _CASTS.get(self.types.get(name, "double"), np.float64)
            if cast is not np.float64 and not (cast in (np.int32, np.int64, np.bool_) and np.isnan(col).any()):
                col = col.astype(cast)  # an integer column with a missing value stays float: MLflow says why
            cols[name] = col
        return pd.DataFrame(cols, columns=names)

    def predict(self, X: np.ndarray, features: Sequence[str] = (), task: str | None = None) -> np.ndarray:
        """One float64 score per row of X; see the module docstring for which output column."""
        out = self.pyfunc.predict(self.frame(np.asarray(X, dtype=np.float64), features))
        if hasattr(out, "to_numpy"):  # DataFrame, Series
            out = out.to_numpy()
        out = np.asarray(out)
        if out.ndim == 2 and out.shape[1] == 1:
            out = out[:, 0]
        elif out.ndim == 2 and out.shape[1] == 2 and (task or self.task) == "binary":
            out = out[:, 1]  # [P(negative), P(positive)]
        elif out.ndim != 1:
            raise ValueError(f"the MLflow model returned shape {out.shape}; tidal takes one score per row "
                             "(or two probability columns for a binary task)")
        if len(out) != len(X):
            raise ValueError(f"the MLflow model returned {len(out)} scores for {len(X)} rows")
        return np.ascontiguousarray(out, dtype=np.float64)

    def __repr__(self) -> str:
        return f"MlflowModel({str(self.folder)!r})"


def _zip_folder(folder: Path, path: Path) -> None:
    """A deterministic zip of ``folder`` (sorted names, fixed times): the same model, the same checksum."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in files:
            info = zipfile.ZipInfo(p.relative_to(folder).as_posix(), date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, p.read_bytes())


def _unzip(path: Path, dest: Path) -> None:
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            parts = Path(name).parts
            if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                raise ValueError(f"{path}: unsafe entry {name!r} in the archive")
        zf.extractall(dest)


@register_runtime
class MlflowPyfuncRuntime(ModelRuntime):
    """MLflow models through ``mlflow.pyfunc`` (:class:`MlflowModel`); see the module docstring."""

    flavor = "mlflow_pyfunc"
    file = "model.mlflow.zip"
    platform = "mlflow_pyfunc"

    def handles(self, model: Any) -> bool:
        return isinstance(model, MlflowModel)

    def save(self, model: Any, path: Path) -> None:
        if not (model.folder / "MLmodel").is_file():
            raise ValueError(f"{model.folder}: no MLmodel file; not an MLflow model folder")
        _zip_folder(model.folder, path)

    def load(self, path: Path, *, task: str = "binary") -> Any:
        folder = Path(tempfile.mkdtemp(prefix="tidal-mlflow-"))
        try:
            _unzip(path, folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        if not os.path.isfile(folder / "MLmodel"):
            shutil.rmtree(folder, ignore_errors=True)
            raise ValueError(f"{path}: no MLmodel file in the archive")
        return MlflowModel(folder, task=task, cleanup=True)

    def predict(self, model: Any, X: np.ndarray, *, task: str = "binary", features: Sequence[str] = (),
                threads: int | None = None) -> np.ndarray:
        return model.predict(X, features, task)
