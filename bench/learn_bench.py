"""Online learning throughput: labelled events/s through Kafka with a River logistic regression, vs River alone.

Same events (10 numeric features, a binary label), same model (``StandardScaler | LogisticRegression``),
same protocol (test-then-train, one row at a time: ``predict_one`` then ``learn_one``):

- **River's own loop, no Kafka**: (x, y) pairs already parsed into dicts in memory — River's best
  case; ``evaluate.progressive_val_score`` (River's evaluation loop with its metric) too;
- **tidal learner** (``tidal learn``): a worker reads the joined records (features, score, label, ...)
  from ``<p>.joined``, decodes them, runs ``OnlineLearnStep`` and commits — without and with a
  schema, and publishing a registry version every 10,000 events;
- **tidal join + learn**: one worker reads ``<p>.predictions`` and ``<p>.labels``, joins them by
  event id (``LabelJoinStep``) and learns: labelled events/s counted as joined pairs learned;
- **tidal learner with learn_many** (only where pandas is installed): ``mode="many"``, chunks of 256.

Events/s is counted from the end of the first micro-batch to the end of the last (the group join
and the first fetch are start-up, reported apart). One partition: the order is the event order.

    python bench/learn_bench.py [--events 200000] [--quick]

Writes bench/results/<date>-learn.json and prints a table. Floor: the tidal learner ≥ 20,000
labelled events/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TIDAL_HOME", tempfile.mkdtemp(prefix="tidal-bench-home-"))

import numpy as np  # noqa: E402
import orjson  # noqa: E402
from confluent_kafka import Producer  # noqa: E402

from tidal.broker import EmbeddedBroker, TopicSpec, ensure_topics  # noqa: E402
from tidal.config import KafkaSettings  # noqa: E402
from tidal.learn import LabelJoinStep, OnlineLearnStep, learn_pipeline  # noqa: E402
from tidal.quality.schema import Schema  # noqa: E402
from tidal.stream import Pipeline, Worker  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FEATURES = [f"f{i}" for i in range(10)]
FLOOR = 20_000


def make_model():
    from river import linear_model, preprocessing

    return preprocessing.StandardScaler() | linear_model.LogisticRegression()


def make_data(n: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, len(FEATURES))) * rng.uniform(0.5, 20, len(FEATURES)) + rng.normal(0, 5, len(FEATURES))
    w = rng.normal(size=len(FEATURES))
    z = ((X - X.mean(0)) / X.std(0)) @ w
    y = rng.random(n) < 1 / (1 + np.exp(-z))
    return X, y


def river_loop(X: np.ndarray, y: np.ndarray) -> dict:
    from river import evaluate, metrics

    xs = [dict(zip(FEATURES, row)) for row in X.tolist()]
    ys = y.tolist()
    model = make_model()
    predict, learn = model.predict_one, model.learn_one
    t0 = time.perf_counter()
    correct = 0
    for x, t in zip(xs, ys):
        correct += predict(x) == t
        learn(x, t)
    loop_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    acc = evaluate.progressive_val_score(list(zip(xs, ys)), make_model(), metrics.Accuracy()).get()
    pvs_s = time.perf_counter() - t0
    return {"loop_events_per_s": round(len(ys) / loop_s), "progressive_val_score_events_per_s": round(len(ys) / pvs_s),
            "accuracy": acc, "loop_accuracy": correct / len(ys)}


def _produce(settings: KafkaSettings, topic: str, values: list[bytes]) -> None:
    p = Producer(settings.client_config({"linger.ms": 20, "batch.size": 1_000_000, "compression.type": "lz4",
                                         "queue.buffering.max.messages": 2_000_000, "log_level": 3}))
    for v in values:
        while True:
            try:
                p.produce(topic, v)
                break
            except BufferError:
                p.poll(0.05)
    assert p.flush(60) == 0


class _Clock:
    """Times each batch's end (on_batch): rate from the end of the first batch to the end of the last."""

    def __init__(self, step: OnlineLearnStep, total: int) -> None:
        self.step, self.total = step, total
        self.first: tuple[float, int] | None = None
        self.last: tuple[float, int] | None = None
        self.done = threading.Event()

    def __call__(self, worker: Worker, batch) -> None:
        now = (time.perf_counter(), self.step.events)
        self.first = self.first or now
        self.last = now
        if self.step.events >= self.total:
            self.done.set()

    def rate(self) -> float:
        (t0, n0), (t1, n1) = self.first, self.last
        return (n1 - n0) / (t1 - t0) if t1 > t0 else float("nan")


def _run(settings: KafkaSettings, pipeline: Pipeline, step: OnlineLearnStep, total: int, timeout: float) -> dict:
    ensure_topics(settings, pipeline.topic_specs())
    clock = _Clock(step, total)
    worker = Worker(pipeline, settings, "bench", on_batch=clock)
    t_start = time.perf_counter()
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    clock.done.wait(timeout)
    worker.stop()
    thread.join(30)
    return {"events_per_s": round(clock.rate()), "learned": step.events, "accuracy": step.accuracy,
            "startup_s": round(clock.first[0] - t_start, 2) if clock.first else None,
            "batches": worker.stats.batches, "versions_published": len(step.versions)}


def tidal_learner(settings: KafkaSettings, X: np.ndarray, y: np.ndarray, schema: bool, publish: bool,
                  timeout: float, mode: str = "one") -> dict:
    name = f"lb{uuid.uuid4().hex[:8]}"
    values = [orjson.dumps({"event_id": f"e{i}", **dict(zip(FEATURES, row)), "score": 0.5, "decision": False,
                            "model": "m", "model_version": "1", "label": bool(t)})
              for i, (row, t) in enumerate(zip(X.tolist(), y.tolist()))]
    ensure_topics(settings, [TopicSpec(f"{name}.joined", 1)])
    _produce(settings, f"{name}.joined", values)
    registry = None
    if publish:
        from tidal.registry import Registry

        registry = Registry(Path(tempfile.mkdtemp(prefix="tidal-bench-registry-")))
    step = OnlineLearnStep(make_model(), FEATURES, model_name=name, mode=mode, registry=registry,
                           publish_every=10_000 if publish else None, publish_on_close=False)
    sch = Schema.from_dict({**{f: "float" for f in FEATURES}, "event_id": "str", "label": "bool"}) if schema else None
    return _run(settings, learn_pipeline(name, step, schema=sch, max_batch=5000), step, len(values), timeout)


def tidal_join_learn(settings: KafkaSettings, X: np.ndarray, y: np.ndarray, timeout: float) -> dict:
    name = f"lb{uuid.uuid4().hex[:8]}"
    preds = [orjson.dumps({"event_id": f"e{i}", **dict(zip(FEATURES, row)), "score": 0.5, "decision": False,
                           "model": "m", "model_version": "1"}) for i, row in enumerate(X.tolist())]
    labels = [b'{"event_id":"e%d","label":%s}' % (i, b"true" if t else b"false") for i, t in enumerate(y.tolist())]
    ensure_topics(settings, [TopicSpec(f"{name}.predictions", 1), TopicSpec(f"{name}.labels", 1)])
    _produce(settings, f"{name}.predictions", preds)
    _produce(settings, f"{name}.labels", labels)
    step = OnlineLearnStep(make_model(), FEATURES, model_name=name, mode="one", publish_on_close=False)
    p = Pipeline(f"{name}.learn", sources=[f"{name}.predictions", f"{name}.labels"], sink=f"{name}.learned",
                 steps=[LabelJoinStep(f"{name}.labels"), step], partitions=1, lineage=False)
    from tidal.learn import DiscardStep

    p.steps.append(DiscardStep())
    return _run(settings, p, step, len(preds), timeout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n = args.events or (50_000 if args.quick else 200_000)
    X, y = make_data(n)
    t_all = time.monotonic()
    result: dict = {"benchmark": "learn", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "machine": {"platform": platform.platform(), "python": platform.python_version(),
                                "cpus": os.cpu_count()},
                    "events": n, "model": "river StandardScaler | LogisticRegression, 10 numeric features",
                    "protocol": "test-then-train, predict_one then learn_one per row"}
    result["river"] = river_loop(X, y)
    with EmbeddedBroker() as broker:
        settings = KafkaSettings(broker.bootstrap)
        timeout = max(120.0, n / 2000)
        result["tidal_learner"] = tidal_learner(settings, X, y, schema=False, publish=False, timeout=timeout)
        result["tidal_learner_schema"] = tidal_learner(settings, X, y, schema=True, publish=False, timeout=timeout)
        result["tidal_learner_publishing"] = tidal_learner(settings, X, y, schema=False, publish=True, timeout=timeout)
        result["tidal_join_and_learn"] = tidal_join_learn(settings, X, y, timeout)
        try:
            import pandas  # noqa: F401 - learn_many takes DataFrames
        except ImportError:
            result["tidal_learner_learn_many"] = None
        else:
            result["tidal_learner_learn_many"] = tidal_learner(settings, X, y, schema=False, publish=False,
                                                               timeout=timeout, mode="many")
    rate = result["tidal_learner"]["events_per_s"]
    result["floor"] = {"min_events_per_s": FLOOR, "tidal_learner": rate, "met": rate >= FLOOR}
    result["elapsed_s"] = round(time.monotonic() - t_all, 1)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{datetime.now(timezone.utc).date().isoformat()}-learn.json"
    path.write_text(json.dumps(result, indent=2))
    _print(result, path)


def _print(r: dict, path: Path) -> None:
    river = r["river"]
    rows = [
        ("River's own loop, no Kafka (dicts in memory)", river["loop_events_per_s"], river["loop_accuracy"]),
        ("River evaluate.progressive_val_score, no Kafka", river["progressive_val_score_events_per_s"],
         river["accuracy"]),
        ("tidal learner: <p>.joined → decode → learn → commit", r["tidal_learner"]["events_per_s"],
         r["tidal_learner"]["accuracy"]),
        ("  same, with a schema (typed decode)", r["tidal_learner_schema"]["events_per_s"],
         r["tidal_learner_schema"]["accuracy"]),
        ("  same, publishing a version every 10,000", r["tidal_learner_publishing"]["events_per_s"],
         r["tidal_learner_publishing"]["accuracy"]),
        ("tidal join + learn: predictions + labels → join → learn", r["tidal_join_and_learn"]["events_per_s"],
         r["tidal_join_and_learn"]["accuracy"]),
    ]
    many = r.get("tidal_learner_learn_many")
    if many:
        rows.insert(5, ("  same, learn_many on chunks of 256 (pandas; mini-batch)", many["events_per_s"],
                        many["accuracy"]))
    print(f"\nOnline learning, {r['events']:,} labelled events, {r['model']}, one partition")
    print(f"{'scenario':<58}{'events/s':>12}{'accuracy':>10}")
    for name, rate, acc in rows:
        print(f"{name:<58}{rate:>12,}{acc:>10.4f}")
    f = r["floor"]
    if not many:
        print("(learn_many: not measured, pandas is not installed)")
    print(f"\nfloor: tidal learner ≥ {f['min_events_per_s']:,} labelled events/s: {f['tidal_learner']:,} → "
          f"{'met' if f['met'] else 'NOT met'}  (start-up, group join included: "
          f"{r['tidal_learner']['startup_s']} s; versions published: "
          f"{r['tidal_learner_publishing']['versions_published']})")
    print(f"written to {path} ({r['elapsed_s']} s)")


if __name__ == "__main__":
    main()
