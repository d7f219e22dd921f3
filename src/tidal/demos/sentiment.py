"""``tidal demo sentiment``: online text classification whose vocabulary shifts, learned from the stream.

1. generate short product reviews with their sentiment (no downloads: words from a fixed
   vocabulary); halfway the reviewers switch to slang the model has never seen;
2. produce reviews to ``sentiment.events`` and, a little later, their labels to
   ``sentiment.labels``;
3. one worker joins labels with reviews (``LabelJoinStep``) and learns online with River —
   ``BagOfWords | LogisticRegression``, test-then-train (``OnlineLearnStep``: each review is
   predicted before its label is learned, so every prediction is an honest one); ADWIN
   watches the learner's errors (``DriftStep``); a new model version goes to the registry every
   ``publish_every`` reviews;
4. read the predictions back from ``sentiment.learned`` and report accuracy over time, the
   drift alarm and its delay, and how fast the learner recovered.

>>> texts, labels = generate_reviews(6, seed=1)
>>> len(texts), set(labels.tolist()) <= {0, 1}
(6, True)
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import numpy as np
import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition
from rich.console import Console
from rich.table import Table

from tidal.broker.produce import make_producer
from tidal.broker.embedded import EmbeddedBroker, tidal_home
from tidal.broker.topics import ALERTS_TOPIC, PipelineTopics, ensure_topics
from tidal.config import KafkaSettings
from tidal.demos.maintenance import WorkerThread, accuracy_windows, fresh_name, produce_all
from tidal.quality.schema import Schema
from tidal.stream.pipeline import Pipeline

__all__ = ["run_demo", "generate_reviews", "make_model"]

PRODUCTS = ["phone", "headphones", "blender", "jacket", "lamp", "backpack", "keyboard", "kettle", "tent", "watch",
            "charger", "mattress", "speaker", "camera", "sneakers"]
FILLER = ["the", "it", "this", "arrived", "yesterday", "box", "color", "size", "price", "shipping", "after", "week",
          "use", "daily", "bought", "for", "my", "kid", "gift", "and", "was", "is", "really", "so", "very", "with",
          "battery", "sound", "fits", "setup", "quality", "delivery", "again", "second", "one", "overall"]
OLD = {1: ["great", "excellent", "love", "amazing", "perfect", "happy", "recommend", "reliable", "sturdy",
           "fantastic", "comfortable", "works"],
       0: ["terrible", "awful", "broke", "disappointed", "poor", "waste", "return", "flimsy", "useless", "refund",
           "annoying", "defective"]}
NEW = {1: ["fire", "slaps", "goated", "bussin", "elite", "banger", "valid", "immaculate", "hits", "peak",
           "dubs", "vibes"],
       0: ["mid", "trash", "flop", "scam", "cringe", "janky", "busted", "meh", "sus", "yikes", "ratio", "dud"]}
SCHEMA = Schema.from_dict({"event_id": "str", "text": "str"})


def generate_reviews(n: int, seed: int = 7, shift_at: int | None = None,
                     noise: float = 0.08) -> tuple[list[str], np.ndarray]:
    """``n`` reviews and their sentiment (1 positive); from ``shift_at`` (default n/2) in new slang."""
    rng = np.random.default_rng(seed)
    shift_at = n // 2 if shift_at is None else shift_at
    labels = (rng.random(n) < 0.5).astype(np.int8)
    texts = []
    for i, y in enumerate(labels.tolist()):
        vocab = OLD if i < shift_at else NEW
        words = list(rng.choice(vocab[y], rng.integers(1, 3)))
        if rng.random() < noise:  # a mixed review: one word of the other sentiment
            words.append(str(rng.choice(vocab[1 - y])))
        words += list(rng.choice(FILLER, rng.integers(3, 7)))
        rng.shuffle(words)
        texts.append(f"{rng.choice(PRODUCTS)} " + " ".join(map(str, words)))
    return texts, labels


def make_model(learning_rate: float = 0.1) -> Any:
    """River: bag of words → logistic regression (SGD)."""
    from river import feature_extraction, linear_model, optim

    classifier = linear_model.LogisticRegression(optimizer=optim.SGD(learning_rate))
    return feature_extraction.BagOfWords(on="text") | classifier


def run_demo(settings: KafkaSettings | None = None, events: int = 40_000, seed: int = 7, quiet: bool = False,
             publish_every: int = 5000, label_lag: int = 200, chunk: int = 2000,
             timeout_s: float = 120.0) -> dict[str, Any]:
    """Run the demo; returns the summary (``recovered``: final accuracy within 5 points of before the shift)."""
    from tidal.drift import DriftStep
    from tidal.learn import LabelJoinStep, OnlineLearnStep
    from tidal.registry import Registry

    console = Console(stderr=quiet)
    t_begin = time.monotonic()
    texts, labels = generate_reviews(events, seed)
    shift = events // 2
    ids = [f"r-{i:06d}" for i in range(events)]
    values = [orjson.dumps({"event_id": e, "text": t}) for e, t in zip(ids, texts)]
    label_values = [b'{"event_id":"%s","label":%d}' % (e.encode(), y) for e, y in zip(ids, labels.tolist())]
    with contextlib.ExitStack() as stack:
        if settings is None:
            broker = stack.enter_context(EmbeddedBroker())
            settings = KafkaSettings(broker.bootstrap)
            console.print(f"[bold]embedded broker[/] on {broker.bootstrap} (in-memory: data is gone when it stops)")
        name = fresh_name(settings, "sentiment")
        topics = PipelineTopics(name)
        registry = Registry(tidal_home() / "demo" / name / "registry")
        learner = OnlineLearnStep(make_model(), ["text"], model_name=name, registry=registry,
                                  publish_every=publish_every, promote=False, output=True,
                                  report_topic=f"{name}.learning", mode="one")
        drift = DriftStep(error_field="learn_error", by=None, model=name)
        join = LabelJoinStep(topics.labels)
        pipeline = Pipeline(name, sources=[topics.events, topics.labels], sink=f"{name}.learned", schema=None,
                            steps=[join, learner, drift], partitions=1, max_batch=5000, max_wait_ms=20,
                            lineage=False)
        ensure_topics(settings, pipeline.topic_specs())
        worker = WorkerThread(pipeline, settings, "learn").start()
        worker.wait_assigned()
        producer = make_producer(settings, {"linger.ms": 5, "log_level": 3, "enable.idempotence": True})
        t0 = time.monotonic()
        for lo in range(0, events, chunk):  # labels trail their reviews by `label_lag` reviews
            hi = min(events, lo + chunk)
            produce_all(producer, topics.events, None, values[lo:hi])
            produce_all(producer, topics.labels, None, label_values[max(0, lo - label_lag):max(0, hi - label_lag)])
        produce_all(producer, topics.labels, None, label_values[max(0, events - label_lag):])
        deadline = time.monotonic() + timeout_s
        while learner.events < events and time.monotonic() < deadline:
            time.sleep(0.05)
        learn_s = time.monotonic() - t0
        worker.stop()
        del producer
        preds, alerts = _read_back(settings, f"{name}.learned", {name, pipeline.name})

    idx = np.fromiter((int(r["event_id"][2:]) for r in preds), np.int64, len(preds))
    correct = np.fromiter((r.get("learn_error") == 0.0 for r in preds), bool, len(preds))
    scored = np.fromiter((r.get("learn_error") is not None for r in preds), bool, len(preds))
    idx, correct = idx[scored], correct[scored]

    def acc(a: int, b: int) -> float | None:
        m = (idx >= a) & (idx < b)
        return round(float(correct[m].mean()), 4) if m.any() else None

    alarms = [{"at_event": int(e["at"]["event_id"][2:]) if (e.get("at") or {}).get("event_id") else None,
               "message": e.get("message")} for e in alerts if e.get("type") == "concept_drift"
              and e.get("state") == "firing"]
    for a in alarms:
        a["delay_events"] = a["at_event"] - shift if a["at_event"] is not None else None
    before, after, final = acc(shift - 3000, shift), acc(shift, shift + 1000), acc(events - 3000, events)
    recover_at = next((w["from"] for w in accuracy_windows(correct, idx, shift, events, 500)
                       if before is not None and w["accuracy"] >= before - 0.05), None)
    summary = {
        "events": events, "shift_at": shift, "learned": learner.events,
        "prequential_accuracy": round(learner.accuracy, 4),
        "accuracy_before_shift": before, "accuracy_after_shift": after, "accuracy_final": final,
        "recovered": bool(before is not None and final is not None and final >= before - 0.05),
        "recovered_after_events": recover_at - shift if recover_at is not None else None,
        "alarms": alarms,
        "drift_delay_events": next((a["delay_events"] for a in alarms if (a["delay_events"] or -1) >= 0), None),
        "false_alarms_before_shift": sum(1 for a in alarms if a["delay_events"] is not None and a["delay_events"] < 0),
        "versions_published": [v.version for v in learner.versions], "learn_s": round(learn_s, 2),
        "events_per_s": round(events / learn_s) if learn_s > 0 else None,
        "accuracy_over_time": accuracy_windows(correct, idx, 0, events, max(1000, events // 20)),
        "person_acted": False, "duration_s": round(time.monotonic() - t_begin, 1),
    }
    _print(console, summary)
    return summary


def _read_back(settings: KafkaSettings, topic: str, pipelines: set[str]) -> tuple[list[dict], list[dict]]:
    c = Consumer(settings.client_config({"group.id": "tidal.demo.reader", "enable.auto.commit": False,
                                         "enable.partition.eof": True, "log_level": 3}))
    parts = c.list_topics(ALERTS_TOPIC, timeout=10).topics[ALERTS_TOPIC].partitions
    c.assign([TopicPartition(topic, 0, 0)] + [TopicPartition(ALERTS_TOPIC, p, 0) for p in parts])
    open_parts = {(topic, 0)} | {(ALERTS_TOPIC, p) for p in parts}
    preds, alerts = [], []
    deadline = time.monotonic() + 30
    try:
        while open_parts and time.monotonic() < deadline:
            for m in c.consume(10_000, 0.2):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        open_parts.discard((m.topic(), m.partition()))
                    continue
                if m.topic() == topic:
                    preds.append(orjson.loads(m.value()))
                else:
                    e = orjson.loads(m.value())
                    if e.get("pipeline") in pipelines:
                        alerts.append(e)
    finally:
        c.close()
    return preds, alerts


def _print(console: Console, s: dict[str, Any]) -> None:
    over = Table("reviews", "accuracy", title=f"prequential accuracy over time (slang from {s['shift_at']:,})")
    for w in s["accuracy_over_time"]:
        mark = " ← shift" if w["from"] <= s["shift_at"] < w["to"] else ""
        over.add_row(f"{w['from']:,}–{w['to']:,}{mark}", f"{w['accuracy']:.3f}")
    console.print(over)
    table = Table(title="sentiment demo", show_header=False)
    for k, v in [
        ("reviews learned", f"{s['learned']:,} (test-then-train; prequential accuracy {s['prequential_accuracy']})"),
        ("accuracy before the shift", f"{s['accuracy_before_shift']}"),
        ("first 1,000 after it", f"{s['accuracy_after_shift']}"),
        ("last 3,000", f"{s['accuracy_final']}"),
        ("back within 5 points", f"after {s['recovered_after_events']} reviews" if s["recovered"] else "NO"),
        ("drift alarm (ADWIN on the learner's errors)", f"{s['drift_delay_events']} reviews after the shift; "
                                                        f"{s['false_alarms_before_shift']} before it"),
        ("versions published", ", ".join(f"v{v}" for v in s["versions_published"]) or "none"),
        ("learning", f"{s['events_per_s']:,} reviews/s through Kafka (join + learn + drift)"),
    ]:
        table.add_row(k, v)
    console.print(table)
