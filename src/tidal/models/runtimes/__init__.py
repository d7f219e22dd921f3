"""Model runtimes: one per flavor (``lightgbm``, ``sklearn``, ``river``, ``onnx``, ``mlflow_pyfunc``), found by
name or by object.

A new flavor is one :class:`ModelRuntime` subclass passed to :func:`register_runtime`; the
artifacts, the scorer, the explainer, the ONNX converter, the online learner and the server
then take it. Heavy libraries are imported inside the runtimes' methods.

>>> from sklearn.linear_model import LogisticRegression
>>> runtime_of(LogisticRegression()).flavor, runtime_for("onnx").platform
('sklearn', 'onnxruntime_onnx')
"""

from tidal.models.runtimes.base import (ModelRuntime, OnlineLearner, flavors, platform_of, register_runtime,
                                        runtime_for, runtime_of, runtimes, unregister_runtime)
from tidal.models.runtimes.lightgbm import LightGBMRuntime
from tidal.models.runtimes.sklearn import SklearnRuntime  # duck-typed: asked after the others
from tidal.models.runtimes.river import RiverRuntime
from tidal.models.runtimes.onnx import OnnxModel, OnnxRuntime
from tidal.models.runtimes.pyfunc import MlflowModel, MlflowPyfuncRuntime  # MLflow models: pip install 'tidal[mlflow]'

__all__ = ["ModelRuntime", "OnlineLearner", "register_runtime", "unregister_runtime", "runtime_for", "runtime_of",
           "runtimes", "flavors", "platform_of", "SklearnRuntime", "LightGBMRuntime", "RiverRuntime", "OnnxRuntime",
           "OnnxModel", "MlflowPyfuncRuntime", "MlflowModel"]
