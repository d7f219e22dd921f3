"""``tidal demo churn``: windowed per-user features from a clickstream, a churn model, served live.

1. generate 60 days of clickstream for thousands of users (page views, add-to-cart, support
   contacts, payment failures); users who will churn slowly go quiet and contact support or fail
   payments more often;
2. the feature pipeline (``window`` steps: per-user counts over 7 days, hopping daily, and over
   1 day) is **replayed** over the first 40 days to build training rows — the same step code
   that serves live, so training and serving features cannot differ — and a LightGBM model is
   trained on them;
3. the scoring pipeline (windows → model) runs live on the last 20 days; each user's churn
   score is its last prediction; ROC-AUC against the generator's truth.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import numpy as np
import orjson

from rich.console import Console

from tidal.broker.produce import make_producer
from tidal.broker.embedded import EmbeddedBroker, tidal_home
from tidal.broker.produce import produce_all
from tidal.broker.read import read_topic
from tidal.broker.topics import ensure_topics
from tidal.config import KafkaSettings
from tidal.features import WindowAggregate
from tidal.models import ScoreStep, load_model, save_model
from tidal.quality import Schema
from tidal.stream import Pipeline, Worker

__all__ = ["run_demo", "generate"]

DAY = 86_400_000
KINDS = ("view", "cart", "support", "payfail")
SCHEMA = Schema.from_dict({"event_id": "str", "user": "str", "ts": "int", "view": "int", "cart": "int",
                           "support": "int", "payfail": "int"})


def generate(users: int, days: int = 60, seed: int = 11) -> tuple[list[bytes], list[bytes], np.ndarray, np.ndarray]:
    """(values, keys, event day, churn truth per user); events in time order."""
    rng = np.random.default_rng(seed)
    churn = rng.random(users) < 0.25
    activity = rng.gamma(2.0, 1.0, users)  # views per day
    start_decline = rng.integers(20, 50, users)
    rows = []
    for d in range(days):
        decline = np.where(churn & (d >= start_decline), np.exp(-(d - start_decline) / 6), 1.0)
        rates = np.stack([activity * decline, activity * 0.15 * decline,
                          np.where(churn & (d >= start_decline - 5), 0.25, 0.04),
                          np.where(churn & (d >= start_decline - 5), 0.12, 0.02)], axis=1)
        counts = rng.poisson(rates)
        for kind in range(4):
            u = np.repeat(np.arange(users), counts[:, kind])
            t = d * DAY + rng.integers(0, DAY, len(u))
            rows.append(np.stack([t, u, np.full(len(u), kind)], axis=1))
    ev = np.concatenate(rows)
    ev = ev[np.argsort(ev[:, 0], kind="stable")]
    onehot = np.eye(4, dtype=int)[ev[:, 2]]
    values = [orjson.dumps({"event_id": f"c{i}", "user": f"u{u}", "ts": int(t), "view": int(a), "cart": int(b),
                            "support": int(c), "payfail": int(e)})
              for i, (t, u, (a, b, c, e)) in enumerate(zip(ev[:, 0].tolist(), ev[:, 1].tolist(), onehot.tolist()))]
    keys = [b"u%d" % u for u in ev[:, 1].tolist()]
    return values, keys, ev[:, 0] // DAY, churn


def feature_steps() -> list:
    """The features, defined once: replayed for training, run live for serving."""
    week = {f"{k}_7d": (k, "sum") for k in KINDS}
    day = {f"{k}_1d": (k, "sum") for k in KINDS}
    return [WindowAggregate("user", week, window_s=7 * 86400, hop_s=86400, time_field="ts", lateness_s=3600,
                            name="week"),
            WindowAggregate("user", day, window_s=86400, time_field="ts", lateness_s=3600, name="day")]


FEATURES = [f"{k}_7d" for k in KINDS] + [f"{k}_1d" for k in KINDS]


def run_demo(settings: KafkaSettings | None = None, users: int = 3000, seed: int = 11,
             quiet: bool = False) -> dict[str, Any]:
    import lightgbm
    from sklearn.metrics import roc_auc_score

    console = Console(stderr=quiet)
    t_begin = time.monotonic()
    values, keys, day, churn = generate(users, seed=seed)
    cut = int(np.searchsorted(day, 40))
    with contextlib.ExitStack() as stack:
        if settings is None:
            broker = stack.enter_context(EmbeddedBroker())
            settings = KafkaSettings(broker.bootstrap)
        name = f"churn-{int(time.time())}"
        history = Pipeline(name, schema=SCHEMA, steps=feature_steps(), max_batch=5000)
        ensure_topics(settings, history.topic_specs())
        producer = make_producer(settings, {"linger.ms": 20, "batch.size": 1_000_000, "log_level": 3})
        produce_all(producer, history.sources[0], values[:cut], keys[:cut])
        producer.flush()
        console.print(f"history: {cut:,} clickstream events of {users:,} users (days 0-39) on {history.sources[0]}")

        # training rows: features from a replay of the topic, one row per user-day (the day's last event)
        last: dict[tuple[str, int], list[float]] = {}
        for batch in history.replay(settings):
            cols = [batch.columns[f] for f in FEATURES]
            for u, t, *x in zip(batch.column("user").tolist(), batch.column("ts").tolist(), *cols):
                last[(u, t // DAY)] = x
        rows = [(int(u[1:]), d, x) for (u, d), x in last.items() if d >= 10]
        X = np.array([x for _u, _d, x in rows])
        y = churn[[u for u, _d, _x in rows]].astype(int)
        model = lightgbm.LGBMClassifier(n_estimators=150, num_leaves=15, learning_rate=0.05, verbose=-1).fit(X, y)
        folder = tidal_home() / "demo" / name / "model-v1"
        save_model(model, folder, "churn", 1, FEATURES, lineage={"topic": history.sources[0], "days": [0, 39]})
        console.print(f"trained LightGBM on {len(rows):,} user-days of replayed features")

        # serving: the same feature steps, then the model, live on days 40-59
        live = Pipeline(name, schema=SCHEMA, steps=feature_steps() + [ScoreStep(load_model(folder))],
                        max_batch=5000, group=f"tidal.{name}.live")
        produce_all(producer, live.sources[0], values[cut:], keys[cut:])
        producer.flush()
        worker = Worker(live, settings)
        total = len(values)
        worker.on_batch = lambda w, _b: w.stop() if w.stats.events_in >= total else None
        worker.run()  # replays the history to rebuild the windows, then scores everything
        scores: dict[str, float] = {}
        for m in read_topic(settings, live.sink, 30):
            r = orjson.loads(m.value())
            if r["ts"] >= 40 * DAY:
                scores[r["user"]] = r["score"]
        del producer
    users_scored = sorted(scores, key=lambda u: int(u[1:]))
    truth = churn[[int(u[1:]) for u in users_scored]]
    auc = float(roc_auc_score(truth, [scores[u] for u in users_scored]))
    stats = worker.stats
    summary = {"events": total, "users": users, "users_scored": len(users_scored), "roc_auc": round(auc, 4),
               "dlq": sum(stats.dlq.values()), "predictions": stats.outputs,
               "events_per_s": round(stats.events_in / max(1e-9, stats.last_event_at - stats.first_event_at)),
               "duration_s": round(time.monotonic() - t_begin, 1)}
    console.print(f"churn: ROC-AUC {auc:.3f} over {len(users_scored):,} users; {summary['events_per_s']:,} events/s "
                  f"with two windowed feature steps and the model")
    return summary
