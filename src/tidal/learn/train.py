"""Batch training from Kafka: replay a window of a topic, train, evaluate on a later slice, register.

``tidal train PIPELINE`` reads ``PIPELINE.joined`` (features + ``label``, written by
``tidal monitor``) or, with ``--labels``, ``PIPELINE.events`` joined by event id with
``PIPELINE.labels``. The window is given by offsets (``start``/``end`` per partition) and/or
by Kafka timestamps (``since_ms``/``until_ms``: the start is looked up with
``offsets_for_times`` where the broker supports it, and rows are always filtered by
timestamp, so the window is exact either way). Rows are put in time order; the newest
``holdout`` share is held out for evaluation and the model is trained on the rest. The
version's lineage records the exact topic, partition and offset ranges of the rows used.

>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(400, 2)); y = (X[:, 0] > 0).astype(int)
>>> m = fit_model("logistic", X[:300], y[:300])
>>> evaluate(y[300:], predict_scores(m, X[300:]))["accuracy"] > 0.9
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from tidal.models.artifact import category_codes, feature_matrix

__all__ = ["TrainingData", "TrainResult", "MODEL_KINDS", "load_training_data", "fit_model", "predict_scores",
           "evaluate", "higher_is_better", "train_from_topic", "time_split"]

MODEL_KINDS = ("lightgbm", "logistic", "sgd")


@dataclass
class TrainingData:
    """Rows replayed from Kafka: X (features, categorical as codes), y, and where each row came from."""

    X: np.ndarray
    y: np.ndarray
    features: list[str]
    categories: dict[str, list[str]]
    topic: str
    partitions: np.ndarray
    offsets: np.ndarray
    timestamps: np.ndarray
    rejected: int = 0
    unlabelled: int = 0
    labels_topic: str | None = None

    def __len__(self) -> int:
        return len(self.y)

    def ranges(self, rows: np.ndarray | None = None) -> dict[str, list[int]]:
        """``{partition: [first offset, last offset + 1]}`` of ``rows`` (default: all)."""
        parts = self.partitions if rows is None else self.partitions[rows]
        offs = self.offsets if rows is None else self.offsets[rows]
        return {str(int(p)): [int(offs[parts == p].min()), int(offs[parts == p].max()) + 1]
                for p in np.unique(parts).tolist()}


@dataclass
class TrainResult:
    """The trained model, its held-out metrics, the lineage recorded, and the registered version."""

    model: Any
    metrics: dict[str, float]
    lineage: dict[str, Any]
    threshold: float = 0.5
    version: Any = None  # a tidal.registry.ModelVersion once registered
    promoted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _id_array(values: Any) -> np.ndarray:
    return np.asarray([str(v) for v in values] if not isinstance(values, np.ndarray) else values.astype(str), dtype=str)


def _join_labels(ids: np.ndarray, label_ids: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels for ``ids`` by a sorted-array join (the last label of an id wins); (labels, found)."""
    if not len(label_ids):
        return np.zeros(len(ids)), np.zeros(len(ids), bool)
    rev = np.arange(len(label_ids))[::-1]
    uniq, first = np.unique(label_ids[::-1], return_index=True)  # last occurrence per id
    vals = labels[rev[first]]
    pos = np.clip(np.searchsorted(uniq, ids), 0, len(uniq) - 1)
    found = uniq[pos] == ids
    return vals[pos], found


def _start_offsets(settings: Any, topic: str, since_ms: int | None) -> dict[int, int] | None:
    """Where ``since_ms`` begins per partition, if the broker answers (rows are filtered anyway)."""
    if since_ms is None:
        return None
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    c = Consumer(settings.client_config({"group.id": "tidal.train", "enable.auto.commit": False, "log_level": 3}))
    try:
        parts = sorted(c.list_topics(topic, timeout=10).topics[topic].partitions)
        found = c.offsets_for_times([TopicPartition(topic, p, int(since_ms)) for p in parts], timeout=10)
        return {tp.partition: max(tp.offset, 0) for tp in found if tp.offset >= 0} or None
    except KafkaException:
        return None
    finally:
        c.close()


def load_training_data(settings: Any, topic: str, features: Sequence[str], label: str = "label", *,
                       categorical: Iterable[str] = (), categories: Mapping[str, Sequence[str]] | None = None,
                       schema: Any = None, start: Mapping[int, int] | None = None, end: Mapping[int, int] | None = None,
                       since_ms: int | None = None, until_ms: int | None = None, labels_topic: str | None = None,
                       id_field: str = "event_id", batch_size: int = 20_000) -> TrainingData:
    """Replay ``topic`` over the window and build X, y; with ``labels_topic``, labels are joined by id."""
    from tidal.stream.replay import replay

    features = list(features)
    cats = {f: list(v) for f, v in (categories or {}).items()}
    want_cats = [f for f in categorical if f not in cats]
    if since_ms is not None and start is None:
        start = _start_offsets(settings, topic, since_ms)
    label_ids = label_vals = None
    if labels_topic:
        ids, vals = [], []
        for b in replay(settings, labels_topic, batch_size=batch_size):
            if len(b):
                ids.append(_id_array(b.column(id_field)))
                vals.append(b.column(label).astype(np.float64))
        label_ids = np.concatenate(ids) if ids else np.array([], dtype=str)
        label_vals = np.concatenate(vals) if vals else np.array([])
    cols: dict[str, list[np.ndarray]] = {f: [] for f in features}
    ys, parts, offs, tss, rejected, unlabelled = [], [], [], [], 0, 0
    for b in replay(settings, topic, schema, start=start, end=end, batch_size=batch_size):
        rejected += len(b.rejected)
        if not len(b):
            continue
        keep = np.ones(len(b), bool)
        if since_ms is not None:
            keep &= b.timestamps >= since_ms
        if until_ms is not None:
            keep &= b.timestamps < until_ms
        if labels_topic:
            y, found = _join_labels(_id_array(b.column(id_field)), label_ids, label_vals)
        else:
            raw = b.column(label)
            found = raw != None if raw.dtype == object else ~np.isnan(raw.astype(np.float64))  # noqa: E711
            y = np.where(found, raw, 0).astype(np.float64)
        unlabelled += int((keep & ~found).sum())
        keep &= found
        if not keep.any():
            continue
        idx = np.flatnonzero(keep)
        for f in features:
            cols[f].append(b.column(f)[idx])
        ys.append(y[idx])
        parts.append(b.partitions[idx])
        offs.append(b.offsets[idx])
        tss.append(b.timestamps[idx])
    raw_cols = {f: (np.concatenate(v) if v else np.array([])) for f, v in cols.items()}
    for f in want_cats:
        vals = raw_cols[f]
        cats[f] = sorted({str(v) for v in np.unique(vals[vals != None].astype(str))}) if len(vals) else []  # noqa: E711
    codes = category_codes(cats)
    X = feature_matrix(lambda f: raw_cols[f], features, codes) if len(ys) else np.empty((0, len(features)))
    cat = lambda xs, dt: np.concatenate(xs) if xs else np.array([], dtype=dt)  # noqa: E731
    return TrainingData(X, cat(ys, np.float64), features, cats, topic, cat(parts, np.int32), cat(offs, np.int64),
                        cat(tss, np.int64), rejected, unlabelled, labels_topic)


def fit_model(kind: str | Callable[[np.ndarray, np.ndarray], Any], X: np.ndarray, y: np.ndarray, *,
              task: str = "binary", categorical_idx: Sequence[int] = (), seed: int = 7,
              params: Mapping[str, Any] | None = None) -> Any:
    """Train a ``lightgbm``, ``logistic`` or ``sgd`` model (or call ``kind(X, y)``)."""
    params = dict(params or {})
    if callable(kind):
        return kind(X, y)
    regression = task == "regression"
    if kind == "lightgbm":
        import lightgbm

        defaults = {"n_estimators": 100, "learning_rate": 0.1, "num_leaves": 31, "random_state": seed,
                    "verbose": -1, "n_jobs": 1}
        cls = lightgbm.LGBMRegressor if regression else lightgbm.LGBMClassifier
        model = cls(**{**defaults, **params})
        model.fit(X, y if regression else y.astype(int), categorical_feature=list(categorical_idx) or "auto")
        return model
    if kind in ("logistic", "sgd"):
        from sklearn.impute import SimpleImputer
        from sklearn.linear_model import LogisticRegression, Ridge, SGDClassifier, SGDRegressor
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if kind == "logistic":
            est = Ridge(**params) if regression else LogisticRegression(**{"max_iter": 1000, **params})
        else:
            est = (SGDRegressor(random_state=seed, **params) if regression
                   else SGDClassifier(**{"loss": "log_loss", "random_state": seed, **params}))
        model = make_pipeline(SimpleImputer(), StandardScaler(), est)
        model.fit(X, y if regression else y.astype(int))
        return model
    raise ValueError(f"unknown model kind {kind!r}; use one of {MODEL_KINDS} or a function (X, y) -> model")


def predict_scores(model: Any, X: np.ndarray, task: str = "binary") -> np.ndarray:
    """P(positive) for binary tasks (the prediction otherwise), from an sklearn-style model."""
    if len(X) == 0:
        return np.empty(0)
    if task == "binary" and hasattr(model, "predict_proba"):
        return np.asarray(model.predict_proba(X))[:, 1]
    return np.asarray(model.predict(X), dtype=np.float64)


def higher_is_better(metric: str) -> bool:
    return metric not in ("log_loss", "mae", "rmse")


def evaluate(y: np.ndarray, scores: np.ndarray, task: str = "binary", threshold: float = 0.5) -> dict[str, float]:
    """Held-out metrics: accuracy, ROC-AUC, log-loss, F1, precision, recall (binary); MAE, RMSE."""
    from sklearn import metrics as m

    y = np.asarray(y, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if not len(y):
        return {"rows": 0.0}
    if task == "regression":
        return {"mae": float(m.mean_absolute_error(y, scores)),
                "rmse": float(np.sqrt(m.mean_squared_error(y, scores))), "rows": float(len(y))}
    truth = y > 0.5
    decision = scores >= threshold
    out = {"accuracy": float((decision == truth).mean()),
           "f1": float(m.f1_score(truth, decision, zero_division=0)),
           "precision": float(m.precision_score(truth, decision, zero_division=0)),
           "recall": float(m.recall_score(truth, decision, zero_division=0)),
           "log_loss": float(m.log_loss(truth, np.clip(scores, 1e-15, 1 - 1e-15), labels=[False, True])),
           "rows": float(len(y))}
    if truth.any() and not truth.all():
        out["roc_auc"] = float(m.roc_auc_score(truth, scores))
    return out


def time_split(timestamps: np.ndarray, holdout: float) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, held out): the newest ``holdout`` share by Kafka timestamp is held out."""
    order = np.argsort(timestamps, kind="stable")
    cut = len(order) - int(round(len(order) * holdout))
    return order[:cut], order[cut:]


def train_from_topic(settings: Any, topic: str, features: Sequence[str], *, name: str, label: str = "label",
                     kind: str | Callable[[np.ndarray, np.ndarray], Any] = "lightgbm", task: str = "binary",
                     holdout: float = 0.2, registry: Any = None, promote: bool = False,
                     categorical: Iterable[str] = (), categories: Mapping[str, Sequence[str]] | None = None,
                     params: Mapping[str, Any] | None = None, seed: int = 7, automl: bool = False,
                     families: Sequence[str] | None = None, time_budget_s: float = 120.0,
                     **window: Any) -> TrainResult:
    """Replay, train on the older rows, evaluate on the newest ``holdout`` share, register (and promote).

    ``automl``: instead of ``kind``, search the families of :mod:`tidal.learn.automl` on a
    time-ordered validation split of the training rows, refit the best on all of them; the
    version is registered as the ``challenger`` with every candidate's figure in its lineage,
    and ``promote`` makes it the champion only if it beats the champion on the same holdout.

    ``window``: ``start``/``end`` (offsets per partition), ``since_ms``/``until_ms``,
    ``labels_topic``, ``id_field``, ``schema`` — see :func:`load_training_data`.
    """
    if not 0.0 < holdout < 1.0:
        raise ValueError("holdout must be a share in (0, 1)")
    data = load_training_data(settings, topic, features, label, categorical=categorical, categories=categories,
                              **window)
    if len(data) < 10:
        raise ValueError(f"only {len(data)} labelled rows in the window of {topic}; nothing to train on")
    train_rows, test_rows = time_split(data.timestamps, holdout)
    cat_idx = [data.features.index(f) for f in data.categories if f in data.features]
    search_record: dict[str, Any] | None = None
    if automl:
        from tidal.learn.automl import fit_candidate, search

        best, tried = search(data.X[train_rows], data.y[train_rows], data.timestamps[train_rows], task=task,
                             categorical_idx=cat_idx, families=families, time_budget_s=time_budget_s, seed=seed)
        model = fit_candidate(best["family"], best["params"], data.X[train_rows], data.y[train_rows], task=task,
                              categorical_idx=cat_idx, seed=seed)
        kind, params = f"automl:{best['family']}", best["params"]
        search_record = {"best": best, "candidates": tried, "time_budget_s": time_budget_s}
    else:
        model = fit_model(kind, data.X[train_rows], data.y[train_rows], task=task, categorical_idx=cat_idx,
                          seed=seed, params=params)
    metrics = evaluate(data.y[test_rows], predict_scores(model, data.X[test_rows], task), task)
    metrics = {f"holdout_{k}": v for k, v in metrics.items()}
    metrics.update({"train_rows": float(len(train_rows)), "unlabelled_rows": float(data.unlabelled),
                    "rejected_rows": float(data.rejected)})
    ts = data.timestamps
    lineage = {"topic": data.topic, "ranges": data.ranges(), "train_ranges": data.ranges(train_rows),
               "holdout_ranges": data.ranges(test_rows), "labels_topic": data.labels_topic,
               "time_ms": [int(ts.min()), int(ts.max())], "holdout_from_ms": int(ts[test_rows].min()),
               "rows": len(data), "kind": kind if isinstance(kind, str) else getattr(kind, "__name__", "custom")}
    if search_record is not None:
        lineage["automl"] = search_record
    result = TrainResult(model, metrics, lineage)
    if registry is not None and search_record is not None:
        _register_challenger(result, registry, name, data, test_rows, task, params, topic, promote)
    elif registry is not None:
        result.version = registry.register(name, model=model, features=data.features, categories=data.categories,
                                           task=task, metrics=metrics, lineage=lineage,
                                           params=dict(params or {}), tags={"trained_by": "tidal train"})
        if promote:
            registry.promote(name, result.version.version, reason=f"tidal train on {topic} "
                             f"(holdout accuracy {metrics.get('holdout_accuracy', float('nan')):.4f})")
            result.promoted = True
    return result


def _register_challenger(result: TrainResult, registry: Any, name: str, data: TrainingData, test_rows: np.ndarray,
                         task: str, params: Any, topic: str, promote: bool) -> None:
    """AutoML's winner: registered as ``challenger`` (the champion's figure on the same holdout in
    its lineage); champion only if better there."""
    from tidal.registry.records import CHAMPION

    metrics = result.metrics
    metric = "roc_auc" if task == "binary" else "rmse"
    ours = metrics.get(f"holdout_{metric}")
    theirs, comparable = None, True
    try:
        loaded = registry.load(f"{name}@{CHAMPION}")
    except Exception:  # noqa: BLE001 - no champion yet
        loaded = None
    if loaded is not None:
        same = list(loaded.card.features) == list(data.features) and \
            {k: list(v) for k, v in (loaded.card.categories or {}).items()} == data.categories
        if same:  # the same columns and category codes: scored on the very same holdout rows
            theirs = evaluate(data.y[test_rows], np.asarray(loaded.predict(data.X[test_rows])), task).get(metric)
        comparable = theirs is not None
    result.lineage["automl"].update(champion_holdout=theirs, metric=metric)
    from tidal.registry import RegistryError

    try:
        result.version = registry.register(name, model=result.model, features=data.features,
                                           categories=data.categories, task=task, metrics=metrics,
                                           lineage=result.lineage, params=dict(params or {}),
                                           tags={"trained_by": "tidal train --automl"})
    except RegistryError as exc:  # the winner is, byte for byte, a version already registered
        import re

        same = re.search(r"models:/(\S+)/(\d+)", str(exc))
        if same is None:
            raise
        result.version = registry.get(same.group(1), int(same.group(2)))
        result.lineage["automl"]["same_as"] = result.version.uri
        return
    registry.promote(name, result.version.version, alias="challenger", reason="tidal train --automl")
    better = ours is not None and comparable and \
        (theirs is None or (ours > theirs if higher_is_better(metric) else ours < theirs))
    if promote and better:
        registry.promote(name, result.version.version, reason=f"tidal train --automl on {topic}: holdout {metric} "
                         f"{ours:.4f} vs champion {'none' if theirs is None else f'{theirs:.4f}'}")
        result.promoted = True
