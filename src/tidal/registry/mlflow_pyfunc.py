"""The ``PythonModel`` of a tidal model exported to MLflow (:func:`tidal.registry.mlflow_io.export_mlflow`).

``mlflow.pyfunc.load_model(DIR)`` unpickles :class:`TidalPythonModel` (by reference: tidal must
be installed where it loads), which loads the tidal artifact folder stored as the MLflow
artifact ``tidal_model`` with :func:`tidal.models.load_model` (checksum verified) and scores a
DataFrame exactly as tidal does: the same feature matrix (categories to codes), the same
runtime, one float64 score per row (P(positive) for binary models).

This module imports mlflow: import it only where mlflow is installed (``tidal[mlflow]``).
"""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np

__all__ = ["TidalPythonModel", "ARTIFACT"]

ARTIFACT = "tidal_model"


class TidalPythonModel(mlflow.pyfunc.PythonModel):
    """Scores with the tidal model in the artifact ``tidal_model``."""

    def load_context(self, context):  # type: ignore[no-untyped-def]  # no hints: MLflow reads them as a schema
        from tidal.models import load_model

        self.model = load_model(context.artifacts[ARTIFACT])

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        frame = model_input
        if not hasattr(frame, "columns"):  # a dict of columns or a list of records
            import pandas as pd

            frame = pd.DataFrame(frame)
        X = self.model.features_matrix(lambda f: frame[f].to_numpy())
        return self.model.predict(X)
