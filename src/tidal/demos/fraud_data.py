"""Synthetic card transactions with known fraud, for the fraud-detection demo.

About 1% of transactions are fraud. Fraud shows one to four of these patterns, and one honest
transaction in ten shows one (a few show two), so a model can learn them but not trivially: a large
amount for the card, night hours, far from home, a burst of recent transactions, online
with a country mismatch, a new account, a risky merchant category. A few records are
malformed on purpose (bad JSON, a missing field, a wrong type) to exercise the DLQ.

>>> g = generate(1000, seed=1)
>>> len(g.values), int(g.labels.sum()) > 0, g.values[0][:1]
(1000, True, b'{')
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson

from tidal.quality.schema import Schema

__all__ = ["FraudEvents", "generate", "SCHEMA", "FEATURES", "CATEGORIES", "MALFORMED_KINDS"]

CATEGORIES = ["grocery", "fuel", "restaurant", "pharmacy", "clothing", "travel", "electronics",
              "jewelry", "gift_cards", "digital_goods"]
RISKY = {"electronics", "jewelry", "gift_cards", "digital_goods"}
FEATURES = ["amount", "amount_ratio", "hour", "distance_km", "tx_count_1h", "tx_count_24h", "is_online",
            "country_mismatch", "account_age_days", "card_avg_amount", "merchant_category"]
SCHEMA = Schema.from_dict({
    "event_id": "str", "card_id": "str", "amount": "float", "amount_ratio": "float", "hour": "int",
    "distance_km": "float", "tx_count_1h": "int", "tx_count_24h": "int", "is_online": "int",
    "country_mismatch": "int", "account_age_days": "int", "card_avg_amount": "float", "merchant_category": "str",
})
MALFORMED_KINDS = ("invalid_json", "missing_field", "wrong_type")


@dataclass
class FraudEvents:
    """Encoded events plus the truth: ``labels`` (1 = fraud) and which records are malformed."""

    keys: list[bytes]
    values: list[bytes]
    event_ids: list[str]
    labels: np.ndarray
    malformed: np.ndarray


def generate(n: int, seed: int = 7, fraud_rate: float = 0.01, malformed_rate: float = 0.001,
             start: int = 0) -> FraudEvents:
    """``n`` transactions (ids ``tx-<start>…``); everything derives from ``seed``."""
    rng = np.random.default_rng(seed)
    fraud = rng.random(n) < fraud_rate
    n_cards = max(10, n // 20)
    card = rng.integers(0, n_cards, n)
    card_avg = np.round(np.exp(rng.normal(3.5, 0.6, n_cards)), 2)[card]
    account_age = rng.integers(30, 3650, n_cards)[card]

    # Honest behaviour.
    amount = card_avg * np.exp(rng.normal(0, 0.5, n))
    hour = np.clip(np.round(rng.normal(14, 4, n)), 0, 23)
    distance = rng.exponential(8, n)
    tx1h = rng.poisson(0.4, n)
    tx24h = tx1h + rng.poisson(3, n)
    online = rng.random(n) < 0.3
    mismatch = online & (rng.random(n) < 0.02)
    category = rng.choice(len(CATEGORIES), n, p=[.25, .15, .2, .08, .1, .05, .07, .02, .04, .04])

    # Each fraud shows 1-4 of 7 patterns (mostly 2-3); 10% of honest ones show one, a few two.
    n_patterns = 7
    rank = np.argsort(np.argsort(rng.random((n, n_patterns)), axis=1), axis=1)
    k = np.where(fraud, rng.choice([1, 2, 3, 4], n, p=[0.15, 0.4, 0.35, 0.1]), 0)
    noisy = ~fraud & (rng.random(n) < 0.10)
    k = np.where(noisy, rng.choice([1, 2], n, p=[0.95, 0.05]), k)
    shows = rank < k[:, None]
    amount = np.where(shows[:, 0], card_avg * rng.uniform(4, 15, n), amount)
    hour = np.where(shows[:, 1], rng.integers(0, 5, n), hour)
    distance = np.where(shows[:, 2], rng.uniform(300, 5000, n), distance)
    tx1h = np.where(shows[:, 3], rng.integers(5, 15, n), tx1h)
    tx24h = np.maximum(tx24h, tx1h)
    online = np.where(shows[:, 4], True, online)
    mismatch = np.where(shows[:, 4], rng.random(n) < 0.9, mismatch)
    account_age = np.where(shows[:, 5], rng.integers(0, 14, n), account_age)
    risky_codes = [CATEGORIES.index(c) for c in sorted(RISKY)]
    category = np.where(shows[:, 6], rng.choice(risky_codes, n), category)

    amount = np.round(amount, 2)
    cols = {
        "amount": amount.tolist(), "amount_ratio": np.round(amount / card_avg, 3).tolist(),
        "hour": hour.astype(int).tolist(), "distance_km": np.round(distance, 1).tolist(),
        "tx_count_1h": tx1h.astype(int).tolist(), "tx_count_24h": tx24h.astype(int).tolist(),
        "is_online": online.astype(int).tolist(), "country_mismatch": mismatch.astype(int).tolist(),
        "account_age_days": account_age.astype(int).tolist(), "card_avg_amount": card_avg.tolist(),
    }
    cat_names = [CATEGORIES[c] for c in category.tolist()]
    event_ids = [f"tx-{start + i}" for i in range(n)]
    card_ids = [f"card-{c}" for c in card.tolist()]
    names = list(cols)
    values = [
        orjson.dumps({"event_id": eid, "card_id": cid, **dict(zip(names, row)), "merchant_category": cat})
        for eid, cid, cat, *row in zip(event_ids, card_ids, cat_names, *cols.values())
    ]
    malformed = rng.random(n) < malformed_rate
    for i, kind in zip(np.flatnonzero(malformed).tolist(), rng.integers(0, 3, n).tolist()):
        values[i] = _corrupt(values[i], MALFORMED_KINDS[kind])
    return FraudEvents(keys=[c.encode() for c in card_ids], values=values, event_ids=event_ids,
                       labels=fraud.astype(np.int8), malformed=malformed)


def _corrupt(value: bytes, kind: str) -> bytes:
    if kind == "invalid_json":
        return value[: len(value) // 2]
    record = orjson.loads(value)
    if kind == "missing_field":
        del record["amount"]
    else:
        record["amount"] = f"{record['amount']} EUR"
    return orjson.dumps(record)
