"""What monitoring costs: metrics and sampled explanations against the plain scoring pipeline.

Same backlog (the fraud demo's transactions), same LightGBM model, one worker, in one run:

- scoring pipeline (decode + validate + LightGBM); the time the worker spends recording its
  Prometheus metrics (``Worker._observe``) is measured inside it, as a share of busy time;
- the same plus ``explain`` at its default sample, 0.1% (TreeSHAP, top-3 contributions).

    python bench/monitor_overhead.py [--events 300000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import lightgbm
from confluent_kafka import Producer

from tidal.broker import EmbeddedBroker, TopicSpec, ensure_topics, produce_all
from tidal.config import KafkaSettings
from tidal.demos.fraud_data import CATEGORIES, FEATURES, SCHEMA, generate
from tidal.models import ScoreStep, load_model, save_model
from tidal.models.artifact import category_codes, feature_matrix
from tidal.models.explain import ExplainStep
from tidal.stream import Pipeline, Worker
from tidal.stream.decode import decode_values

RESULTS = Path(__file__).resolve().parent / "results"


def run(settings: KafkaSettings, topic: str, n: int, model_dir: Path, explain: bool) -> dict:
    score = ScoreStep(load_model(model_dir))
    steps = [score, ExplainStep(score)] if explain else [score]
    name = f"mon{uuid.uuid4().hex[:6]}"
    p = Pipeline(name, sources=[topic], schema=SCHEMA, steps=steps, group=f"bench-{name}", max_batch=5000)
    ensure_topics(settings, [TopicSpec(p.sink, 4), TopicSpec(p.dlq, 1)])
    w = Worker(p, settings)
    observe, spent = w._observe, [0.0]

    def timed(*args):  # the metrics recording of each batch, timed from outside
        t0 = time.perf_counter()
        observe(*args)
        spent[0] += time.perf_counter() - t0

    w._observe = timed
    w.on_batch = lambda w, _b: w.stop() if w.stats.events_in >= n else None
    stats = w.run()
    reg = w.registry
    step_s = {s.name: reg.get_sample_value("tidal_step_duration_seconds_sum", {"pipeline": name, "step": s.name})
              for s in steps}
    return {"events_per_s": stats.events_in / (stats.last_event_at - stats.first_event_at),
            "busy_s": stats.busy_s, "step_s": step_s, "metrics_s": spent[0],
            "metrics_share_of_busy": spent[0] / stats.busy_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=300_000)
    args = ap.parse_args()
    gen = generate(args.events, seed=5)
    batch = decode_values(gen.values[:30_000], SCHEMA)
    X = feature_matrix(batch.column, FEATURES, category_codes({"merchant_category": CATEGORIES}))
    model = lightgbm.LGBMClassifier(n_estimators=100, verbose=-1).fit(
        X, gen.labels[batch.offsets], categorical_feature=[FEATURES.index("merchant_category")])
    folder = Path(tempfile.mkdtemp()) / "model"
    save_model(model, folder, "fraud", 1, FEATURES, categories={"merchant_category": CATEGORIES})
    with EmbeddedBroker() as broker:
        settings = KafkaSettings(broker.bootstrap)
        topic = "monbench.events"
        ensure_topics(settings, [TopicSpec(topic, 4)])
        producer = Producer(settings.client_config({"linger.ms": 20, "batch.size": 1_000_000, "log_level": 3}))
        produce_all(producer, topic, gen.values, gen.keys)
        producer.flush()
        run(settings, topic, args.events // 3, folder, explain=False)  # warm-up: the first run is always slower
        plain = run(settings, topic, args.events, folder, explain=False)
        explained = run(settings, topic, args.events, folder, explain=True)
    result = {"events": args.events, "scoring": plain, "scoring_plus_explain_default": explained,
              "explain_throughput_change": 1 - explained["events_per_s"] / plain["events_per_s"],
              "explain_share_of_busy": explained["step_s"]["explain"] / explained["busy_s"],
              "metrics_share_of_busy": plain["metrics_share_of_busy"],
              "monitoring_share_of_busy": explained["metrics_share_of_busy"] + explained["step_s"]["explain"]
              / explained["busy_s"]}
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    (RESULTS / f"{stamp}-monitor.json").write_text(json.dumps({"date": stamp, **result}, indent=2))


if __name__ == "__main__":
    main()
