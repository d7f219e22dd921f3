"""The benchmark's events and model: the same bytes and the same trees for every system.

Events are the fraud demo's card transactions (:mod:`tidal.demos.fraud_data`: 10 numeric
fields and the categorical ``merchant_category``) plus a second categorical field,
``channel`` (chip / contactless / swipe / manual for card-present, ``online`` otherwise), so
each record is JSON with 10 numeric + 2 categorical features, a string key (``card_id``)
and an ``event_id``. Malformed records are off by default (every system sees valid JSON);
the DLQ scenario turns them on.

The model is one LightGBM classifier (100 trees, 31 leaves) trained on the first events:
tidal loads it as a model artifact (LightGBM text format, ``booster.predict`` per batch); the
per-message loop, Quix Streams and Faust load the same fitted ``LGBMClassifier`` with joblib
and call ``predict_proba`` on one row, as tutorials write it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from tidal.demos.fraud_data import CATEGORIES, FEATURES as FRAUD_FEATURES, generate
from tidal.quality.schema import Schema

CHANNELS = ["chip", "contactless", "swipe", "manual", "online"]
NUMERIC = [f for f in FRAUD_FEATURES if f != "merchant_category"]
CATEGORICAL = {"merchant_category": CATEGORIES, "channel": CHANNELS}
FEATURES = NUMERIC + list(CATEGORICAL)
SCHEMA_DICT = {"event_id": "str", "card_id": "str", **{f: ("int" if f in {
    "hour", "tx_count_1h", "tx_count_24h", "is_online", "country_mismatch", "account_age_days"} else "float")
    for f in NUMERIC}, "merchant_category": "str", "channel": "str"}
SCHEMA = Schema.from_dict(SCHEMA_DICT)
LABELLED_SCHEMA_DICT = {**SCHEMA_DICT, "label": "int"}

assert len(NUMERIC) == 10 and len(CATEGORICAL) == 2


@dataclass
class Events:
    keys: list[bytes]
    values: list[bytes]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.values)


def make_events(n: int, seed: int = 11, n_keys: int | None = None, malformed_rate: float = 0.0,
                with_label: bool = False) -> Events:
    """``n`` events; ``n_keys`` distinct card ids (default: the generator's n/20)."""
    gen = generate(n, seed=seed, malformed_rate=0.0)
    rng = np.random.default_rng(seed + 1)
    present = rng.choice(4, n, p=[0.45, 0.35, 0.15, 0.05])
    cards = None if n_keys is None else rng.integers(0, n_keys, n)
    keys, values = [], []
    loads, dumps = orjson.loads, orjson.dumps
    labels = gen.labels.tolist()
    for i, v in enumerate(gen.values):
        r = loads(v)
        r["channel"] = "online" if r["is_online"] else CHANNELS[present[i]]
        if cards is not None:
            r["card_id"] = f"card-{cards[i]}"
        if with_label:
            r["label"] = labels[i]
        keys.append(r["card_id"].encode())
        values.append(dumps(r))
    if malformed_rate:
        from tidal.demos.fraud_data import MALFORMED_KINDS, _corrupt

        bad = np.flatnonzero(rng.random(n) < malformed_rate)
        for i, kind in zip(bad.tolist(), rng.integers(0, 3, len(bad)).tolist()):
            values[i] = _corrupt(values[i], MALFORMED_KINDS[kind])
    return Events(keys, values, gen.labels)


def train_model(events: Events, folder: Path, n_train: int = 50_000, seed: int = 11) -> dict:
    """Fit LightGBM on the first ``n_train`` events; save the tidal artifact and a joblib pickle.

    Returns paths: ``artifact`` (tidal model folder), ``pickle`` (the fitted LGBMClassifier).
    """
    import joblib
    import lightgbm

    from tidal.models import save_model
    from tidal.models.artifact import category_codes, feature_matrix
    from tidal.stream.decode import decode_values

    batch = decode_values(events.values[:n_train], SCHEMA)
    X = feature_matrix(batch.column, FEATURES, category_codes(CATEGORICAL))
    y = events.labels[batch.offsets]
    model = lightgbm.LGBMClassifier(n_estimators=100, num_leaves=31, learning_rate=0.1, random_state=seed,
                                    verbose=-1)
    model.fit(X, y, categorical_feature=[FEATURES.index(c) for c in CATEGORICAL])
    folder.mkdir(parents=True, exist_ok=True)
    artifact = folder / "tidal-model"
    save_model(model, artifact, "bench-fraud", 1, FEATURES, categories=CATEGORICAL, threshold=0.35)
    pickle = folder / "lgbm.joblib"
    joblib.dump(model, pickle)
    return {"artifact": artifact, "pickle": pickle, "X": X}


def row_features(record: dict, codes: dict[str, dict[str, float]]) -> list[float]:
    """One record's feature vector, the way a per-message loop builds it (shared by the baselines)."""
    return [codes[f].get(record[f], np.nan) if f in codes else float(record[f]) for f in FEATURES]
