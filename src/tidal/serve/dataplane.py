"""The scoring core of the model server; it knows no transport.

:class:`DataPlane` answers the Open Inference Protocol's questions (live, ready, metadata,
infer) and the records convenience call with plain Python values, raising
:class:`~tidal.serve.protocol.ServeError` subclasses that carry their HTTP status. The HTTP app,
the tests and the benchmark all call it the same way. Each model version has its own
:class:`~tidal.serve.batching.AdaptiveBatcher`, so concurrent requests share model calls.

Inputs map to the model's features by name: one tensor per feature (shape ``[N]`` or ``[N, 1]``;
``BYTES`` for categorical features, numbers otherwise), or a single numeric ``[N, features]``
tensor in the card's feature order (categorical features then as codes).

>>> import asyncio, numpy as np, tempfile
>>> from sklearn.linear_model import LogisticRegression
>>> from tidal.models import save_model
>>> from tidal.serve.protocol import decode_request
>>> folder = tempfile.mkdtemp()
>>> _ = save_model(LogisticRegression().fit([[0.0], [1.0]], [0, 1]), folder, "toy", 1, ["x"])
>>> repo = ModelRepository(); _ = repo.add_folder(folder)
>>> plane = DataPlane(repo)
>>> req = decode_request(b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP64", "data": [0, 1]}]}')
>>> out = asyncio.run(plane.infer("toy", req))
>>> out["model_version"], [o["name"] for o in out["outputs"]], out["outputs"][1]["data"].tolist()
('1', ['score', 'decision'], [False, True])
>>> plane.close()
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping, Sequence

import numpy as np

from tidal import __version__
from tidal.models.artifact import LoadedModel
from tidal.models.runtimes import platform_of
from tidal.serve.batching import AdaptiveBatcher
from tidal.serve.metrics import ServeMetrics
from tidal.serve.protocol import (BadRequest, InferenceRequest, InvalidInput, ModelError, PayloadTooLarge,
                                  RequestInput, output_tensor, to_array)
from tidal.serve.repository import ModelRepository

__all__ = ["DataPlane", "model_signature"]


def model_signature(model: LoadedModel) -> dict[str, Any]:
    """OIP model metadata: inputs (one per feature) and outputs (``score``, ``decision`` if binary)."""
    card = model.card
    inputs = [{"name": f, "datatype": "BYTES" if f in card.categories else "FP64", "shape": [-1]}
              for f in card.features]
    outputs = [{"name": "score", "datatype": "FP64", "shape": [-1]}]
    if card.task == "binary":
        outputs.append({"name": "decision", "datatype": "BOOL", "shape": [-1]})
    return {"inputs": inputs, "outputs": outputs}


class DataPlane:
    """Transport-free inference over a :class:`ModelRepository`; see the module docstring.

    ``max_batch_size`` / ``max_batch_time`` (seconds) turn on adaptive batching; ``max_rows`` caps
    one request; ``workers`` threads run the model calls.
    """

    def __init__(self, repository: ModelRepository, *, max_batch_size: int = 0, max_batch_time: float = 0.0,
                 max_rows: int = 100_000, workers: int | None = None, metrics: ServeMetrics | None = None) -> None:
        self.repository = repository
        self.max_batch_size = max_batch_size
        self.max_batch_time = max_batch_time
        self.max_rows = max_rows
        self.metrics = metrics if metrics is not None else ServeMetrics()
        self.executor = ThreadPoolExecutor(workers or min(4, os.cpu_count() or 1), thread_name_prefix="tidal-score")
        self._batchers: dict[tuple[str, str, str], AdaptiveBatcher] = {}

    @property
    def batcher_enabled(self) -> bool:
        return self.max_batch_size > 1 and self.max_batch_time > 0

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    # -- health and metadata ---------------------------------------------------------------
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.repository.ready()

    def model_ready(self, name: str, version: str | None = None) -> bool:
        if not self.repository.ready(name):
            return False
        if version is not None:
            self.repository.pick(name, version)  # raises ModelNotFound for an unknown version
        return True

    def metadata(self) -> dict[str, Any]:
        return {"name": "tidal", "version": __version__, "extensions": ["model_repository"]}

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        model = self.repository.pick(name, version).model
        versions = [version] if version else list(self.repository.versions(name))
        d = self.repository.routing(name).deployment
        card = model.card
        return {"name": name, "versions": versions, "platform": platform_of(card.flavor),
                **model_signature(model),
                "parameters": {"version": model.version, "task": card.task, "threshold": card.threshold,
                               "features": list(card.features), "deployment": d.mode}}

    # -- inference -------------------------------------------------------------------------
    def batcher(self, model: LoadedModel) -> AdaptiveBatcher:
        """The batcher of one model version (created on first use; a hot-swap gets a new one)."""
        key = (model.name, model.version, model.card.sha256)
        batcher = self._batchers.get(key)
        if batcher is None:
            def on_call(rows: int, _n=model.name, _v=model.version) -> None:
                self.metrics.observe_call(_n, _v, rows)

            batcher = AdaptiveBatcher(model.predict, self.max_batch_size, self.max_batch_time, self.executor, on_call)
            self._batchers[key] = batcher
        return batcher

    def flush(self) -> None:
        """Send every batcher's waiting requests now (a transport that knows no more are coming:
        the Kafka adapter, once a micro-batch's requests are all queued)."""
        for batcher in list(self._batchers.values()):
            batcher.flush()

    async def infer(self, name: str, request: InferenceRequest, version: str | None = None,
                    key: str | None = None) -> dict[str, Any]:
        """Answer an OIP inference request.

        ``key`` (or ``parameters.key``) picks the canary / A-B side for the whole request;
        ``parameters.keys`` (one key per row, as the remote step sends its Kafka keys) routes each
        row like the stream engine does and adds a ``model_version`` output.
        """
        t0 = time.perf_counter()
        params = request.parameters or {}
        choice = self.repository.pick(name, version, key if key is not None else params.get("key"))
        model = choice.model
        X = self.inputs_matrix(model, request.inputs)
        per_row = version is None and params.get("keys") is not None
        available = ["score", "decision"] if model.card.task == "binary" else ["score"]
        available += ["model_version"] if per_row else ["shadow_score"] if choice.shadow is not None else []
        wanted = [o.name for o in request.outputs] if request.outputs else None
        unknown = [w for w in wanted or [] if w not in available]
        if unknown:
            raise InvalidInput(f"unknown output(s) {', '.join(map(repr, unknown))}; model {name!r} has "
                               f"{', '.join(available)}")
        columns: dict[str, np.ndarray] = {}
        if per_row:
            primary, secondary, rows = self.repository.split(name, params["keys"], len(X))
            model = primary
            scores, versions = np.empty(len(X)), np.full(len(X), primary.version, dtype=object)
            thresholds = np.full(len(X), primary.card.threshold)
            if primary is not choice.model:
                X = self.inputs_matrix(primary, request.inputs)
            scores[~rows] = await self._score(primary, X[~rows])
            if secondary is not None and rows.any():  # built for its own features, like DeployedScoreStep
                scores[rows] = await self._score(secondary, self.inputs_matrix(secondary, request.inputs)[rows])
                versions[rows], thresholds[rows] = secondary.version, secondary.card.threshold
            columns["model_version"] = versions
        else:
            scores, thresholds = await self._score(model, X), model.card.threshold
            if choice.shadow is not None:
                columns["shadow_score"] = await self._score(choice.shadow, X)
        columns["score"] = scores
        if model.card.task == "binary":
            columns["decision"] = scores >= thresholds
        out: dict[str, Any] = {"model_name": name, "model_version": model.version}
        if request.id is not None:
            out["id"] = request.id
        if choice.shadow is not None and not per_row:
            out["parameters"] = {"shadow_version": choice.shadow.version}
        out["outputs"] = [output_tensor(n, columns[n]) for n in wanted or available]
        self.metrics.observe_request(name, model.version, len(X), time.perf_counter() - t0)
        return out

    async def predict_records(self, name: str, records: Any, version: str | None = None,
                              key: str | None = None) -> dict[str, Any]:
        """Score plain JSON records (objects keyed by feature name): the ``/predict`` convenience call."""
        t0 = time.perf_counter()
        if isinstance(records, Mapping) and "records" in records:
            records = records["records"]
        if not isinstance(records, list) or not all(isinstance(r, Mapping) for r in records):
            raise BadRequest("expected a JSON list of objects (or {\"records\": [...]}), one per row")
        model = self.repository.pick(name, version, key).model
        self._check_rows(len(records))
        get = dict.get
        columns = {f: [get(r, f) for r in records] for f in model.card.features}
        missing = [f for f in columns if records and not any(f in r for r in records)]  # null is a value: NaN
        if missing:
            raise InvalidInput(f"records lack feature(s) {', '.join(missing)}; model {name!r} takes "
                               f"{', '.join(model.card.features)}")
        X = self._matrix(model, {f: self._column(model, f, v) for f, v in columns.items()})
        scores = await self._score(model, X)
        rows: list[dict[str, Any]] = [{"score": s} for s in scores.tolist()]
        if model.card.task == "binary":
            for row, d in zip(rows, (scores >= model.card.threshold).tolist()):
                row["decision"] = d
        self.metrics.observe_request(name, model.version, len(X), time.perf_counter() - t0)
        return {"model_name": name, "model_version": model.version, "predictions": rows}

    async def _score(self, model: LoadedModel, X: np.ndarray) -> np.ndarray:
        if not len(X):
            return np.empty(0)
        try:
            return np.asarray(await self.batcher(model).predict(X), dtype=np.float64)
        except Exception as exc:  # noqa: BLE001 - any model failure is answered, with its name
            nulls = [f for f, bad in zip(model.card.features, np.isnan(X).any(axis=0).tolist()) if bad] \
                if X.dtype.kind == "f" else []
            if nulls:  # the client's nulls, not the server's fault: 422 naming the fields
                raise InvalidInput(f"model {model.name!r} v{model.version} cannot score missing values; null or "
                                   f"missing in: {', '.join(nulls)}") from exc
            raise ModelError(f"model {model.name!r} v{model.version} failed: {type(exc).__name__}: {exc}") from exc

    # -- inputs → feature matrix -----------------------------------------------------------
    def _check_rows(self, n: int) -> None:
        if n > self.max_rows:
            raise PayloadTooLarge(f"{n} rows in one request; this server takes at most {self.max_rows}")

    def inputs_matrix(self, model: LoadedModel, inputs: Sequence[RequestInput]) -> np.ndarray:
        """X (rows × features, float64) from OIP input tensors; raises a ServeError naming the problem."""
        features = model.card.features
        arrays = {t.name: to_array(t) for t in inputs}
        if len(arrays) != len(inputs):
            raise BadRequest("input names must be unique")
        if len(inputs) == 1:
            (name, a), = arrays.items()
            if a.ndim == 2 and (name not in features or a.shape[1] != 1):
                if a.shape[1] != len(features):
                    raise InvalidInput(f"input {name!r} has {a.shape[1]} columns; model {model.name!r} takes "
                                       f"{len(features)} features ({', '.join(features)})")
                if a.dtype == object:
                    raise InvalidInput(f"input {name!r}: a [N, features] tensor must be numeric")
                self._check_rows(len(a))
                return a.astype(np.float64, copy=False)
        missing = [f for f in features if f not in arrays]
        unknown = [n for n in arrays if n not in features]
        if missing or unknown:
            raise InvalidInput(f"model {model.name!r} takes inputs {', '.join(features)}"
                               + (f"; missing: {', '.join(missing)}" if missing else "")
                               + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
        columns = {}
        for f in features:
            a = arrays[f]
            if a.ndim == 2 and a.shape[1] == 1:
                a = a[:, 0]
            if a.ndim != 1:
                raise InvalidInput(f"input {f!r} has shape {list(a.shape)}; expected [N] or [N, 1] (one feature)")
            categorical = f in model.card.categories
            if categorical != (a.dtype == object):
                want = "BYTES (a categorical feature)" if categorical else "numeric (FP64, FP32, INT*, BOOL)"
                raise InvalidInput(f"input {f!r} must be {want}")
            columns[f] = a
        lengths = {len(a) for a in columns.values()}
        if len(lengths) > 1:
            raise InvalidInput(f"inputs have different row counts: {sorted(lengths)}")
        self._check_rows(lengths.pop())
        return self._matrix(model, columns)

    @staticmethod
    def _column(model: LoadedModel, feature: str, values: list[Any]) -> np.ndarray:
        if feature in model.card.categories:
            bad = next((v for v in values if v is not None and not isinstance(v, str)), None)
            if bad is not None:
                raise InvalidInput(f"feature {feature!r} is categorical: expected strings, got {bad!r}")
            col = np.empty(len(values), dtype=object)
            col[:] = values
            return col
        bad = next((v for v in values if not isinstance(v, (int, float, type(None)))), None)
        if bad is not None:
            raise InvalidInput(f"feature {feature!r} is numeric: got {bad!r}")
        return np.asarray(values, dtype=np.float64)

    @staticmethod
    def _matrix(model: LoadedModel, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        return model.features_matrix(columns.__getitem__)
