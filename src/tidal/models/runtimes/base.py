"""The contract of a model runtime (one per flavor) and the registry of runtimes.

A runtime knows one flavor: how to recognise its live model objects, save and load them,
score a batch, and — where the flavor can — explain, convert to ONNX and learn online.
Adding a flavor is one module with one :func:`register_runtime`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence, TypeVar

import numpy as np

from tidal.models.errors import ArtifactError, NotSupported

__all__ = ["ModelRuntime", "OnlineLearner", "register_runtime", "runtime_for", "runtime_of", "runtimes", "flavors",
           "platform_of", "prediction_errors"]

Column = Callable[[str], np.ndarray]


class OnlineLearner:
    """Test-then-train on one micro-batch: ``learn(column, labels) -> (predictions, errors)``.

    ``mode`` names the protocol (e.g. River's ``one``/``many``); ``errors`` is NaN for rows not scored.
    """

    mode: str = "online"

    def learn(self, column: Column, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class ModelRuntime:
    """One flavor: ``save``/``load`` its model file, ``predict`` a batch, optional extras.

    Subclasses set ``flavor``, ``file`` (the model file's name in the folder) and ``platform``
    (OIP v2 metadata), implement ``handles``, ``save``, ``load`` and ``predict``, and override
    ``explain``, ``to_onnx`` or ``learner`` where the flavor can.
    """

    flavor: ClassVar[str]
    file: ClassVar[str]
    platform: ClassVar[str] = ""
    online: ClassVar[bool] = False  # the flavor learns online (see ``learner``)
    fallback: ClassVar[bool] = False  # ``handles`` is duck-typed: asked after the other runtimes

    def handles(self, model: Any) -> bool:
        """Whether ``model`` (a live object) is of this flavor."""
        raise NotImplementedError

    def save(self, model: Any, path: Path) -> None:
        """Write ``model`` to ``path``."""
        raise NotImplementedError

    def load(self, path: Path, *, task: str = "binary") -> Any:
        """The model object stored at ``path``."""
        raise NotImplementedError

    def predict(self, model: Any, X: np.ndarray, *, task: str = "binary", features: Sequence[str] = (),
                threads: int | None = None) -> np.ndarray:
        """One float64 score per row of X: P(positive) for binary tasks, else the prediction."""
        raise NotImplementedError

    def explain(self, model: Any, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows × features contributions, per-row bias); contributions + bias = the raw score."""
        raise NotSupported(f"no exact explanations for a {self.flavor} {type(model).__name__}; tree (LightGBM) "
                           "and linear scikit-learn models are supported")

    def to_onnx(self, model: Any, n_features: int, opset: int | None = None) -> bytes:
        """The model as a serialized ONNX graph with one float32 input ``input`` of shape [N, n_features]."""
        raise NotSupported(f"flavor {self.flavor!r} cannot be converted to ONNX (scikit-learn and LightGBM can)")

    def feature_ranges(self, model: Any) -> dict[int, tuple[float, float]]:
        """Feature index → (min, max) seen in training, where the model records it."""
        return {}

    def can_learn(self, model: Any) -> bool:
        """Whether ``model`` can learn online."""
        return self.online

    def learner(self, model: Any, features: Sequence[str], *, task: str = "binary", mode: str = "auto",
                chunk_size: int = 256, classes: np.ndarray | None = None,
                codes: Mapping[str, Mapping[str, float]] | None = None) -> OnlineLearner:
        """An :class:`OnlineLearner` that updates ``model`` in place."""
        raise NotSupported(f"flavor {self.flavor!r} cannot learn online")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(flavor={self.flavor!r})"


_RUNTIMES: dict[str, ModelRuntime] = {}
R = TypeVar("R", bound=type)


def register_runtime(cls: R) -> R:
    """Register a :class:`ModelRuntime` subclass (usable as a decorator); replaces one of the same flavor.

    :func:`runtime_of` asks the latest registration first (fallbacks last), so a new flavor wins.
    """
    _RUNTIMES.pop(cls.flavor, None)
    _RUNTIMES[cls.flavor] = cls()
    return cls


def unregister_runtime(flavor: str) -> None:
    """Forget a flavor (tests)."""
    _RUNTIMES.pop(flavor, None)


def runtimes() -> list[ModelRuntime]:
    """The registered runtimes, in registration order."""
    return list(_RUNTIMES.values())


def flavors() -> tuple[str, ...]:
    """The registered flavor names."""
    return tuple(_RUNTIMES)


def runtime_for(flavor: str) -> ModelRuntime:
    """The runtime of ``flavor``; :class:`ArtifactError` if none is registered."""
    try:
        return _RUNTIMES[flavor]
    except KeyError:
        raise ArtifactError(f"unknown flavor {flavor!r}; use one of {flavors()}") from None


def runtime_of(model: Any) -> ModelRuntime:
    """The runtime that recognises the live object ``model``; :class:`ArtifactError` if none does."""
    order = reversed(_RUNTIMES.values())
    for rt in sorted(order, key=lambda r: r.fallback):  # stable: latest first, fallbacks last
        if rt.handles(model):
            return rt
    raise ArtifactError(f"cannot tell the flavor of {type(model).__name__}; pass flavor=")


def platform_of(flavor: str) -> str:
    """The OIP v2 ``platform`` of a flavor (the flavor itself when unknown)."""
    rt = _RUNTIMES.get(flavor)
    return rt.platform or flavor if rt is not None else flavor


def module_of(model: Any) -> str:
    """The top-level package of ``model``'s class (``lightgbm``, ``river``, ...)."""
    return type(model).__module__.split(".")[0]


def prediction_errors(preds: np.ndarray, labels: np.ndarray, task: str) -> np.ndarray:
    """Per-row error of predictions (object array, None = no prediction): 1.0 for a mistake, |error| for regression."""
    if task == "regression":
        p = np.array([np.nan if v is None else v for v in preds.tolist()], dtype=np.float64)
        return np.abs(p - labels.astype(np.float64))
    errors = (preds != labels.astype(object)).astype(np.float64)  # elementwise
    errors[preds == None] = np.nan  # noqa: E711 - no prediction yet: not scored, as River's evaluate does
    return errors
