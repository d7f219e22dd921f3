"""The synthetic fraud generator: determinism, rates, malformed records, learnability."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from tidal.demos.fraud_data import CATEGORIES, FEATURES, MALFORMED_KINDS, SCHEMA, generate
from tidal.models.artifact import category_codes, feature_matrix
from tidal.quality.schema import RecordError
from tidal.stream.batch import Batch


@pytest.fixture(scope="module")
def big():
    """50k events with 1% malformed, shared by the rate and malformed-record tests."""
    return generate(50_000, seed=11, malformed_rate=0.01)


def test_same_seed_same_output():
    a, b = generate(2000, seed=5), generate(2000, seed=5)
    assert a.values == b.values
    assert a.keys == b.keys
    assert a.event_ids == b.event_ids
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.malformed, b.malformed)


def test_different_seed_different_output():
    a, b = generate(2000, seed=5), generate(2000, seed=6)
    assert a.values != b.values
    assert sum(x != y for x, y in zip(a.values, b.values)) > 1900
    assert not np.array_equal(a.labels, b.labels)


def test_shapes_ids_and_keys():
    g = generate(300, seed=2, start=1000)
    assert len(g.values) == len(g.keys) == len(g.event_ids) == len(g.labels) == len(g.malformed) == 300
    assert g.event_ids[0] == "tx-1000" and g.event_ids[-1] == "tx-1299"
    assert len(set(g.event_ids)) == 300
    assert set(np.unique(g.labels).tolist()) <= {0, 1}
    for key, value, eid, bad in zip(g.keys, g.values, g.event_ids, g.malformed):
        if not bad:
            rec = orjson.loads(value)
            assert rec["event_id"] == eid
            assert rec["card_id"].encode() == key


def test_fraud_rate_near_one_percent(big):
    rate = big.labels.mean()
    assert 0.008 <= rate <= 0.012  # 1% ± ~4.5 standard deviations at n = 50,000


def test_fraud_rate_follows_parameter():
    g = generate(20_000, seed=3, fraud_rate=0.1)
    assert 0.09 <= g.labels.mean() <= 0.11


def test_malformed_rate_near_parameter(big):
    assert 0.008 <= big.malformed.mean() <= 0.012


def test_malformed_records_fail_and_others_pass(big):
    reasons = []
    for value, bad in zip(big.values, big.malformed.tolist()):
        if bad:
            with pytest.raises(RecordError) as info:
                SCHEMA.decode_one(value)
            reasons.append(info.value.reason)
        else:
            rec = SCHEMA.decode_one(value)
            assert rec["merchant_category"] in CATEGORIES
    assert len(reasons) == int(big.malformed.sum()) > 0
    assert set(reasons) == set(MALFORMED_KINDS)  # all three kinds occur


def test_well_formed_values_are_plausible(big):
    ok = [SCHEMA.decode_one(v) for v, bad in zip(big.values[:5000], big.malformed[:5000].tolist()) if not bad]
    assert all(r["amount"] > 0 and 0 <= r["hour"] <= 23 and r["distance_km"] >= 0 for r in ok)
    assert all(r["tx_count_24h"] >= r["tx_count_1h"] >= 0 for r in ok)
    assert all(r["is_online"] in (0, 1) and r["country_mismatch"] in (0, 1) for r in ok)


def test_default_malformed_rate_is_small():
    g = generate(5000, seed=4)
    assert g.malformed.sum() < 30


def _matrix(values, malformed):
    rows = [SCHEMA.decode_one(v) for v, bad in zip(values, malformed.tolist()) if not bad]
    batch = Batch.from_rows(rows, types={f.name: f.type for f in SCHEMA.fields})
    return feature_matrix(batch.column, FEATURES, category_codes({"merchant_category": CATEGORIES}))


def test_lightgbm_learns_the_fraud_patterns():
    """Trained on 20k events, a LightGBM model ranks fraud well on the next 20k (ROC-AUC > 0.9)."""
    import lightgbm
    from sklearn.metrics import roc_auc_score

    g = generate(40_000, seed=21)
    train, test = slice(0, 20_000), slice(20_000, 40_000)
    X_train = _matrix(g.values[train], g.malformed[train])
    y_train = g.labels[train][~g.malformed[train]]
    X_test = _matrix(g.values[test], g.malformed[test])
    y_test = g.labels[test][~g.malformed[test]]
    assert X_train.shape == (len(y_train), len(FEATURES))
    assert not np.isnan(X_train).any()  # every category is known
    model = lightgbm.LGBMClassifier(n_estimators=100, learning_rate=0.1, random_state=0, n_jobs=1, verbose=-1)
    model.fit(X_train, y_train, categorical_feature=[FEATURES.index("merchant_category")])
    auc = roc_auc_score(y_test, model.predict_proba(X_test)[:, 1])
    assert auc > 0.9
