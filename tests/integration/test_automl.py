"""`tidal train --automl` on the fraud and churn demos' data: every candidate's metric in the
version's lineage, the best registered as challenger, its holdout ROC-AUC at least the
hand-written default model's (LightGBM, tidal train's default) on the same holdout."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from confluent_kafka import Producer

from tidal.broker import TopicSpec, ensure_topics
from tidal.learn import train_from_topic
from tidal.registry import Registry

pytestmark = pytest.mark.integration


def produce_rows(settings, topic: str, rows: list[dict]) -> None:
    ensure_topics(settings, [TopicSpec(topic, 1)])
    p = Producer(settings.client_config({"linger.ms": 5, "log_level": 3}))
    t0 = 1_700_000_000_000
    for i, r in enumerate(rows):
        p.produce(topic, orjson.dumps(r), timestamp=t0 + i)  # time order = row order
    assert p.flush(30) == 0


def fraud_rows(n: int) -> tuple[list[dict], list[str], list[str]]:
    from tidal.demos.fraud_data import FEATURES, generate

    g = generate(n, seed=3, fraud_rate=0.03, malformed_rate=0.0)
    rows = [{**orjson.loads(v), "label": int(y)} for v, y in zip(g.values, g.labels.tolist())]
    return rows, list(FEATURES), ["merchant_category"]


def churn_rows(users: int) -> tuple[list[dict], list[str], list[str]]:
    """One row per user-day with the demo's own window features (replayed in memory)."""
    from tidal.demos.churn import DAY, FEATURES, SCHEMA, feature_steps, generate
    from tidal.stream.pipeline import Pipeline

    values, _keys, churn, _ = generate(users, days=40, seed=5)
    p = Pipeline("churn-automl", schema=SCHEMA, steps=feature_steps())
    last: dict[tuple[str, int], dict] = {}
    for i in range(0, len(values), 20_000):
        out, _ = p.test(values[i:i + 20_000])
        for r in map(orjson.loads, out):
            last[(r["user"], r["ts"] // DAY)] = r
    rows = [{**{f: r[f] for f in FEATURES}, "label": int(churn[int(u[1:])])}
            for (u, d), r in sorted(last.items(), key=lambda kv: (kv[0][1], kv[0][0])) if d >= 10]
    return rows, list(FEATURES), []


@pytest.mark.parametrize("data", ["fraud", "churn"])
def test_automl_is_at_least_the_default_model_on_the_same_holdout(settings, name, tmp_path, data):
    rows, features, categorical = fraud_rows(12_000) if data == "fraud" else churn_rows(600)
    topic = f"{name}.joined"
    produce_rows(settings, topic, rows)
    registry = Registry(tmp_path / "reg")
    default = train_from_topic(settings, topic, features, name=name, categorical=categorical, registry=registry,
                               promote=True)  # v1: the hand-written default, champion
    auto = train_from_topic(settings, topic, features, name=name, categorical=categorical, registry=registry,
                            automl=True, time_budget_s=60, promote=True)
    search = auto.lineage["automl"]
    if "same_as" in search:  # AutoML's winner was the default model itself, byte for byte
        assert search["same_as"] == default.version.uri and not auto.promoted
        assert search["best"]["family"] == "lightgbm" and search["best"]["params"] == {}
        return
    assert auto.version.lineage["automl"]["candidates"] == search["candidates"]  # recorded in the registry
    scored = [c for c in search["candidates"] if "value" in c]
    assert len(scored) >= 4 and {c["family"] for c in scored} >= {"logistic", "lightgbm", "hist_gb"}
    assert all(c["metric"] == "roc_auc" for c in scored)
    assert registry.aliases(name)["challenger"] == auto.version.version
    ours, theirs = auto.metrics["holdout_roc_auc"], default.metrics["holdout_roc_auc"]
    print(f"{data}: automl {search['best']['family']} holdout ROC-AUC {ours:.4f} vs default {theirs:.4f}")
    assert search["champion_holdout"] == pytest.approx(theirs)  # the champion scored on the same rows
    assert ours >= theirs - 0.005, (ours, theirs, search["best"])
    assert auto.promoted == (ours > theirs)  # champion only through the gate
