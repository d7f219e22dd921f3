"""The SQL step: predict() equals the Python model step; filters; anomaly_score; explain."""

from __future__ import annotations

import lightgbm
import numpy as np
import orjson
import pytest
from sklearn.ensemble import IsolationForest

from tidal.demos.fraud_data import CATEGORIES, FEATURES, SCHEMA, generate
from tidal.features.sql import SqlStep
from tidal.models import ScoreStep, load_model, save_model
from tidal.models.artifact import category_codes, feature_matrix
from tidal.stream.decode import decode_values


@pytest.fixture(scope="module")
def fraud(tmp_path_factory):
    gen = generate(6000, seed=3)
    batch = decode_values(gen.values, SCHEMA)
    codes = category_codes({"merchant_category": CATEGORIES})
    X = feature_matrix(batch.column, FEATURES, codes)
    model = lightgbm.LGBMClassifier(n_estimators=30, n_jobs=1, verbose=-1).fit(
        X, gen.labels[batch.offsets], categorical_feature=[FEATURES.index("merchant_category")])
    folder = tmp_path_factory.mktemp("m")
    save_model(model, folder, "fraud", 1, FEATURES, categories={"merchant_category": CATEGORIES})
    return gen, load_model(folder)


def test_sql_predict_equals_the_model_step(fraud):
    gen, model = fraud
    args = ", ".join(FEATURES)
    sql = SqlStep(f"SELECT *, predict('fraud', {args}) AS p FROM batch", models={"fraud": model})
    via_sql = sql.process(decode_values(gen.values[:3000], SCHEMA))
    via_step = ScoreStep(model).process(decode_values(gen.values[:3000], SCHEMA))
    assert np.array_equal(via_sql.columns["p"], via_step.columns["score"])  # same scores, bit for bit
    assert via_sql.outputs == ["p"]


def test_where_filters_rows_and_keeps_positions(fraud):
    gen, model = fraud
    batch = decode_values(gen.values[:1000], SCHEMA)
    out = SqlStep("SELECT *, amount * 2 AS double_amount FROM batch WHERE amount > 100").process(batch)
    keep = batch.column("amount") > 100
    assert len(out) == keep.sum() and np.array_equal(out.offsets, batch.offsets[keep])
    assert np.allclose(out.columns["double_amount"], batch.column("amount")[keep] * 2)


def test_anomaly_score_and_explain(fraud):
    gen, model = fraud
    batch = decode_values(gen.values[:2000], SCHEMA)
    X = np.column_stack([batch.column("amount_ratio"), batch.column("distance_km")])
    forest = IsolationForest(random_state=0).fit(X)
    step = SqlStep("SELECT *, anomaly_score('flows', amount_ratio, distance_km) AS a, "
                   f"explain('fraud', {', '.join(FEATURES)}) AS why FROM batch",
                   models={"fraud": model}, detectors={"flows": forest})
    out = step.process(batch)
    assert np.allclose(out.columns["a"], -forest.score_samples(X))
    why = orjson.loads(out.columns["why"][0])
    assert len(why) == 3 and set(why) <= set(FEATURES)


def test_unknown_model_and_lost_rows_are_errors(fraud):
    gen, model = fraud
    with pytest.raises(ValueError, match="no such model"):
        SqlStep("SELECT *, predict('nope', amount) AS p FROM batch")
    with pytest.raises(ValueError, match="__row"):
        SqlStep("SELECT count(*) AS n FROM batch").process(decode_values(gen.values[:10], SCHEMA))
