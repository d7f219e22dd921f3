"""AutoML for ``tidal train --automl``: several model families, one time-ordered validation,
the best refitted and evaluated on the untouched holdout.

A search of its own over scikit-learn and LightGBM rather than FLAML: the candidates are the
families tidal already serves (each has a runtime: LightGBM's text format, scikit-learn
pickles), the validation split respects time (the newest rows of the training window, as the
holdout does for the final figure), and a small fixed grid under a time budget is enough to
pick a family on tabular streams; FLAML's search would add a dependency and its own CV.

Candidates, cheapest first (``families`` picks among them): ``logistic`` (scaled logistic /
ridge regression), ``lightgbm`` (three settings), ``hist_gb`` (scikit-learn's histogram
gradient boosting), ``random_forest``, ``extra_trees``. Each is scored over rolling-origin folds
of the training window's newest ``validation`` share (trained on what came before each fold;
see :func:`search`); the metric is ROC-AUC for binary tasks (log-loss when the validation rows
hold one class) and RMSE for regression. The default LightGBM stays the pick unless a candidate
beats it beyond the folds' noise.
Every candidate's figure (and the ones skipped for the budget) goes into the version's lineage.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> X = rng.random((600, 3)); y = (X[:, 0] + 0.2 * rng.random(600) > 0.6).astype(float)
>>> best, tried = search(X, y, np.arange(600), families=["logistic", "lightgbm"], time_budget_s=60)
>>> best["family"] in ("logistic", "lightgbm"), len(tried) >= 2, tried[0]["metric"]
(True, True, 'roc_auc')
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

__all__ = ["FAMILIES", "CANDIDATES", "search", "fit_candidate"]

FAMILIES = ("logistic", "lightgbm", "hist_gb", "random_forest", "extra_trees")
CANDIDATES: list[tuple[str, dict[str, Any]]] = [
    ("logistic", {}),
    ("lightgbm", {}),
    ("lightgbm", {"n_estimators": 300, "learning_rate": 0.05, "num_leaves": 15, "min_child_samples": 40}),
    ("lightgbm", {"n_estimators": 200, "learning_rate": 0.05, "num_leaves": 63, "colsample_bytree": 0.8}),
    ("hist_gb", {}),
    ("random_forest", {"n_estimators": 200, "min_samples_leaf": 2}),
    ("extra_trees", {"n_estimators": 300, "min_samples_leaf": 2}),
]


def fit_candidate(family: str, params: dict[str, Any], X: np.ndarray, y: np.ndarray, *, task: str = "binary",
                  categorical_idx: Sequence[int] = (), seed: int = 7) -> Any:
    """Train one candidate (a model every tidal runtime can save and serve)."""
    from tidal.learn.train import fit_model

    if family in ("lightgbm", "logistic"):
        return fit_model(family, X, y, task=task, categorical_idx=categorical_idx, seed=seed, params=params)
    from sklearn import ensemble
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline

    reg = task == "regression"
    if family == "hist_gb":
        cls = ensemble.HistGradientBoostingRegressor if reg else ensemble.HistGradientBoostingClassifier
        model = cls(random_state=seed, categorical_features=list(categorical_idx) or None, **params)
    elif family in ("random_forest", "extra_trees"):
        base = {"random_forest": ("RandomForestRegressor", "RandomForestClassifier"),
                "extra_trees": ("ExtraTreesRegressor", "ExtraTreesClassifier")}[family][0 if reg else 1]
        model = make_pipeline(SimpleImputer(), getattr(ensemble, base)(random_state=seed, n_jobs=1, **params))
    else:
        raise ValueError(f"unknown AutoML family {family!r}; use some of {FAMILIES}")
    model.fit(X, y if reg else y.astype(int))
    return model


def _score(y: np.ndarray, s: np.ndarray, task: str) -> tuple[str, float, bool]:
    """(metric, value, higher is better) on validation rows."""
    from sklearn import metrics as m

    if task == "regression":
        return "rmse", float(np.sqrt(m.mean_squared_error(y, s))), False
    truth = y > 0.5
    if truth.any() and not truth.all():
        return "roc_auc", float(m.roc_auc_score(truth, s)), True
    return "log_loss", float(m.log_loss(truth, np.clip(s, 1e-15, 1 - 1e-15), labels=[False, True])), False


def search(X: np.ndarray, y: np.ndarray, timestamps: np.ndarray, *, task: str = "binary",
           categorical_idx: Sequence[int] = (), families: Sequence[str] | None = None, time_budget_s: float = 120.0,
           validation: float = 0.2, folds: int = 3, seed: int = 7) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Try the candidates of ``families`` (all by default) within ``time_budget_s``; returns
    (the best, every candidate's record).

    Rolling-origin validation: the newest ``validation`` share of the rows, split in ``folds``
    consecutive blocks by time; fold *i* trains on every row before block *i* and scores block
    *i*. A candidate's figure is its mean over the folds. The default model (``lightgbm`` with
    tidal's settings) stays the pick unless another beats it on the same folds by more than
    the noise of that difference (its mean exceeds one standard error and 0.001): one lucky
    validation block must not replace a model that serves well."""
    families = list(families or FAMILIES)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown AutoML families {unknown}; use some of {list(FAMILIES)}")
    blocks = _folds(timestamps, validation, folds)
    if any(len(fit) < 10 or len(val) < 10 for fit, val in blocks):
        raise ValueError(f"{len(X)} rows are too few for AutoML (it validates on the newest {validation:.0%} "
                         f"in {folds} folds)")
    t_start = time.monotonic()
    tried: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    default: dict[str, Any] | None = None
    for family, params in CANDIDATES:
        if family not in families:
            continue
        record: dict[str, Any] = {"family": family, "params": params}
        if best is not None and time.monotonic() - t_start > time_budget_s:
            tried.append({**record, "skipped": "time budget"})
            continue
        t0 = time.monotonic()
        try:
            values, metric, higher = [], "", True
            for fit_rows, val_rows in blocks:
                model = fit_candidate(family, params, X[fit_rows], y[fit_rows], task=task,
                                      categorical_idx=categorical_idx, seed=seed)
                metric, value, higher = _score(y[val_rows], _predict(model, X[val_rows], task), task)
                values.append(value)
        except Exception as exc:  # noqa: BLE001 - a family that cannot fit this data is skipped, and said so
            tried.append({**record, "error": f"{type(exc).__name__}: {exc}"[:300]})
            continue
        record.update(metric=metric, value=round(float(np.mean(values)), 6), folds=[round(v, 6) for v in values],
                      seconds=round(time.monotonic() - t0, 3), higher_is_better=higher)
        tried.append(record)
        if family == "lightgbm" and not params:
            default = record
        if best is None or (record["value"] > best["value"] if higher else record["value"] < best["value"]):
            best = record
    if best is None:
        raise ValueError(f"no AutoML candidate could be trained: {[t.get('error') for t in tried]}")
    if default is not None and best is not default and not _clearly_better(best, default):
        default["kept_over"] = f"{best['family']} {best['params']} (not better beyond the folds' noise)"
        best = default
    return best, tried


def _folds(timestamps: np.ndarray, validation: float, folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fit rows, validation rows) of each rolling-origin fold over the newest ``validation`` share."""
    order = np.argsort(timestamps, kind="stable")
    n = len(order)
    start = n - max(folds, int(round(n * validation)))
    edges = np.linspace(start, n, folds + 1).round().astype(int)
    return [(order[:a], order[a:b]) for a, b in zip(edges[:-1], edges[1:])]


def _predict(model: Any, X: np.ndarray, task: str) -> np.ndarray:
    from tidal.learn.train import predict_scores

    return predict_scores(model, X, task)


def _clearly_better(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether ``a`` beats ``b`` on the same folds by more than one standard error of the
    per-fold difference (and by more than 0.001)."""
    diff = np.asarray(a["folds"]) - np.asarray(b["folds"])
    if not a.get("higher_is_better", True):
        diff = -diff
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
    return float(diff.mean()) > max(se, 0.001)
