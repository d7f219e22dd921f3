"""Per-prediction explanations: the features that pushed each score up or down.

Each flavor's runtime explains (:meth:`tidal.models.runtimes.ModelRuntime.explain`). Tree
models (LightGBM) use TreeSHAP as LightGBM computes it (``pred_contrib=True``): exact Shapley
values whose sum plus the bias equals the raw score (log-odds for binary models).
Linear scikit-learn models use their exact contributions ``coef_i * x_i`` plus the intercept.

:class:`ExplainStep` explains a sampled share of each batch (default 0.1%: TreeSHAP costs about
0.3 ms per row for a 100-tree model, a hundred times a prediction) and writes the top-k contributions to the record as ``explanation``;
it also keeps the mean absolute contribution per feature as a metric, so a shift in what
drives decisions can be alerted on (``tidal_feature_contribution``).

>>> import numpy as np, tempfile
>>> from sklearn.linear_model import LogisticRegression
>>> from tidal.models import load_model, save_model
>>> X = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 1.0], [3.0, 0.0]]); y = np.array([0, 0, 1, 1])
>>> folder = tempfile.mkdtemp(); _ = save_model(LogisticRegression().fit(X, y), folder, "toy", 1, ["a", "b"])
>>> model = load_model(folder)
>>> contrib, bias = contributions(model, X)
>>> np.allclose(contrib.sum(axis=1) + bias, model.model.decision_function(X))
True
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from tidal.models.artifact import LoadedModel
from tidal.models.errors import NotSupported
from tidal.stream.batch import Batch
from tidal.stream.step import Step

__all__ = ["contributions", "ExplainStep", "top_k"]

log = logging.getLogger("tidal.explain")


def contributions(model: LoadedModel, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows × features contributions, per-row bias); contributions + bias = the raw score."""
    return model.runtime.explain(model.model, X)


def top_k(contrib: np.ndarray, features: list[str], k: int) -> list[dict[str, float]]:
    """The k largest contributions (by absolute value) of each row, as {feature: value}."""
    k = min(k, contrib.shape[1])
    idx = np.argsort(-np.abs(contrib), axis=1)[:, :k]
    names = np.asarray(features, dtype=object)[idx]
    values = np.take_along_axis(contrib, idx, axis=1).round(6)
    return [dict(zip(n, v)) for n, v in zip(names.tolist(), values.tolist())]


class ExplainStep(Step):
    """Explain ``sample`` of the rows scored by ``model`` (a :class:`LoadedModel`, or a step with one)."""

    name = "explain"

    def __init__(self, model: LoadedModel | Any, sample: float = 0.001, k: int = 3, seed: int = 0) -> None:
        self.source = model
        self.sample = float(sample)
        self.k = int(k)
        self._rng = np.random.default_rng(seed)
        self._gauge = None
        self.pipeline = ""
        self._unsupported: set[tuple[str, str]] = set()  # deployed versions with no exact explanations

    def _model(self) -> LoadedModel:
        src = self.source
        if isinstance(src, LoadedModel):
            return src
        if getattr(src, "model", None) is not None and isinstance(src.model, LoadedModel):  # ScoreStep
            return src.model
        routing = getattr(getattr(src, "follower", None), "routing", None)  # DeployedScoreStep
        if routing is None:
            raise RuntimeError("no model to explain yet")
        return routing.primary

    def check(self) -> list[str]:
        """A fixed model (a score step before it) must have exact explanations: probed on one row."""
        try:
            model = self._model()
        except RuntimeError:  # a deployed model: known only once deployed (then checked per version)
            return []
        try:
            contributions(model, np.zeros((1, len(model.card.features))))
        except NotSupported as exc:
            return [f"{exc} (model {model.name} v{model.version}); remove the explain step or use such a model"]
        except Exception:  # noqa: BLE001 - a zero row may be out of a model's domain; it is not the question
            pass
        return []

    def open(self, ctx: Any) -> None:
        from prometheus_client import Gauge

        self.pipeline = ctx.pipeline
        if ctx.registry is not None:
            self._gauge = Gauge("tidal_feature_contribution", "Mean absolute contribution per feature, sampled rows.",
                                ["pipeline", "model", "version", "feature"], registry=ctx.registry)

    def process(self, batch: Batch) -> Batch:
        n = len(batch)
        rows = np.flatnonzero(self._rng.random(n) < self.sample) if self.sample < 1 else np.arange(n)
        explanations = np.full(n, None, dtype=object)
        if len(rows):
            model = self._model()
            if (model.name, model.version) in self._unsupported:
                return batch.with_column("explanation", explanations)
            X = model.features_matrix(lambda f: batch.column(f)[rows])  # only the sampled rows
            try:
                contrib, _bias = contributions(model, X)
            except NotSupported as exc:  # a deployed version with no exact explanations: score, don't reject
                log.warning("explain: %s (model %s v%s); its predictions go out without explanations",
                            exc, model.name, model.version)
                self._unsupported.add((model.name, model.version))
                return batch.with_column("explanation", explanations)
            explanations[rows] = top_k(contrib, model.card.features, self.k)
            if self._gauge is not None:
                for f, v in zip(model.card.features, np.abs(contrib).mean(axis=0).tolist()):
                    self._gauge.labels(self.pipeline, model.name, model.version, f).set(v)
        return batch.with_column("explanation", explanations)


def from_spec(args: dict, base: Any = None, kind: str = "explain", previous: list | None = None) -> ExplainStep:
    """YAML ``- explain: {sample: 0.001, k: 3}`` explains the rows of the model step before it."""
    scorers = [s for s in previous or [] if s.name == "score"]
    if not scorers:
        raise ValueError("an explain step needs a score or deployed step before it")
    return ExplainStep(scorers[-1], **args)
