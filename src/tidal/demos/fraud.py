"""``tidal demo fraud``: card-fraud detection on a Kafka stream, end to end.

1. generate transactions (``fraud_data``) and their truth; produce the first part (history)
   to ``fraud.events`` and its labels to ``fraud.labels``;
2. replay the history from the topic, through the pipeline's own decoder and feature code,
   and train a LightGBM model (validated on the last 20% of the history, by time);
3. start the scoring pipeline (``tidal run`` worker processes) at the end of the history and
   feed it the rest: a backlog first (to measure throughput), then a paced stream at a fixed
   rate (to measure end-to-end latency: event produced → prediction produced);
4. read ``fraud.predictions`` and ``fraud.dlq`` until every event is accounted for, stop the
   workers with SIGTERM (they drain and commit) and report against the generator's truth.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import yaml
from confluent_kafka import Consumer, KafkaError, TopicPartition
from rich.console import Console
from rich.live import Live
from rich.table import Table

from tidal.broker.produce import make_producer
from tidal.broker.embedded import EmbeddedBroker, tidal_home
from tidal.broker.produce import produce_all
from tidal.broker.topics import PipelineTopics, ensure_topics
from tidal.config import KafkaSettings
from tidal.demos.fraud_data import CATEGORIES, FEATURES, SCHEMA, generate
from tidal.models.artifact import category_codes, feature_matrix, save_model
from tidal.stream.pipeline import Pipeline
from tidal.stream.replay import replay
from tidal.stream.runner import spawn_workers

__all__ = ["run_demo", "train_model"]

PARTITIONS = 4


class _Prediction(msgspec.Struct):
    event_id: str
    score: float
    decision: bool
    source_timestamp: int


@dataclass
class _Tracker:
    """Reads predictions and the DLQ as they arrive."""

    settings: KafkaSettings
    topics: PipelineTopics
    event_ids: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    decisions: list[bool] = field(default_factory=list)
    source_ts: list[int] = field(default_factory=list)
    output_ts: list[int] = field(default_factory=list)
    dlq: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.consumer = Consumer(self.settings.client_config(
            {"group.id": "tidal.demo.tracker", "enable.auto.commit": False, "log_level": 3}))
        self.consumer.assign([TopicPartition(self.topics.predictions, p, 0) for p in range(PARTITIONS)]
                             + [TopicPartition(self.topics.dlq, 0, 0)])
        self._decode = msgspec.json.Decoder(_Prediction).decode

    @property
    def accounted(self) -> int:
        return len(self.event_ids) + sum(self.dlq.values())

    def poll(self, timeout: float) -> None:
        for m in self.consumer.consume(10_000, timeout):
            if m.error():
                if m.error().code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(m.error().str())
                continue
            if m.topic() == self.topics.dlq:
                reason = dict(m.headers() or []).get("tidal.error.reason", b"unknown").decode()
                self.dlq[reason] = self.dlq.get(reason, 0) + 1
                continue
            p = self._decode(m.value())
            self.event_ids.append(p.event_id)
            self.scores.append(p.score)
            self.decisions.append(p.decision)
            self.source_ts.append(p.source_timestamp)
            self.output_ts.append(m.timestamp()[1])

    def close(self) -> None:
        self.consumer.close()


def train_model(settings: KafkaSettings, topics: PipelineTopics, history_end: dict[int, int],
                folder: Path, seed: int = 7) -> dict[str, Any]:
    """Replay the history and its labels from Kafka, train LightGBM, save it; returns the card metrics."""
    import lightgbm
    from sklearn.metrics import f1_score, roc_auc_score

    labels: dict[str, int] = {}
    for batch in replay(settings, topics.labels):
        labels.update(zip(batch.column("event_id").tolist(), batch.column("label").tolist()))
    codes = category_codes({"merchant_category": CATEGORIES})
    xs, ys, rejected = [], [], 0
    for batch in replay(settings, topics.events, SCHEMA, end=history_end):
        rejected += len(batch.rejected)
        xs.append(feature_matrix(batch.column, FEATURES, codes))
        ys.append(np.array([labels[e] for e in batch.column("event_id").tolist()], dtype=np.int8))
    X, y = np.vstack(xs), np.concatenate(ys)
    cut = int(len(y) * 0.8)  # history arrives in time order: validate on its most recent fifth
    model = lightgbm.LGBMClassifier(n_estimators=100, num_leaves=31, learning_rate=0.1, random_state=seed,
                                    verbose=-1)
    model.fit(X[:cut], y[:cut], categorical_feature=[FEATURES.index("merchant_category")])
    val = model.predict_proba(X[cut:])[:, 1]
    thresholds = np.linspace(0.05, 0.95, 19)
    f1s = [f1_score(y[cut:], val >= t, zero_division=0) for t in thresholds]
    threshold = float(thresholds[int(np.argmax(f1s))])
    metrics = {"val_roc_auc": float(roc_auc_score(y[cut:], val)), "val_f1": float(max(f1s)),
               "train_rows": int(cut), "val_rows": int(len(y) - cut), "rejected_rows": int(rejected)}
    lineage = {"topic": topics.events, "ranges": {str(p): [0, o] for p, o in sorted(history_end.items())},
               "labels_topic": topics.labels}
    save_model(model, folder, "fraud", 1, FEATURES, categories={"merchant_category": CATEGORIES},
               threshold=threshold, metrics=metrics, lineage=lineage)
    return {**metrics, "threshold": threshold}


def _commit_start(settings: KafkaSettings, group: str, topic: str, offsets: dict[int, int]) -> None:
    """Start the pipeline's consumer group at the end of the history."""
    c = Consumer(settings.client_config({"group.id": group, "enable.auto.commit": False, "log_level": 3}))
    try:
        c.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False)
    finally:
        c.close()


def run_demo(settings: KafkaSettings | None = None, events: int = 300_000, workers: int = 1, seed: int = 7,
             quiet: bool = False, history_share: float = 0.3, paced_share: float = 0.1,
             paced_rate: int = 10_000, timeout_s: float = 100.0) -> dict[str, Any]:
    """Run the demo; returns the summary (``accounted`` is true when every event came out)."""
    console = Console(stderr=quiet)
    t_begin = time.monotonic()
    with contextlib.ExitStack() as stack:
        if settings is None:
            broker = stack.enter_context(EmbeddedBroker())
            settings = KafkaSettings(broker.bootstrap)
            console.print(f"[bold]embedded broker[/] on {broker.bootstrap} (in-memory: data is gone when it stops)")
        name = _fresh_name(settings)
        topics = PipelineTopics(name)
        pipeline = Pipeline(name, partitions=PARTITIONS)
        ensure_topics(settings, pipeline.topic_specs())
        work = tidal_home() / "demo" / name
        work.mkdir(parents=True, exist_ok=True)

        gen = generate(events, seed=seed)
        n_hist = int(events * history_share)
        n_paced = int(events * paced_share)
        n_backlog = events - n_hist - n_paced

        # 1. history + labels
        history_end: dict[int, int] = {}

        def record(err: Any, msg: Any) -> None:
            if err is None and msg.topic() == topics.events:
                history_end[msg.partition()] = max(history_end.get(msg.partition(), 0), msg.offset() + 1)

        producer = make_producer(settings, {"linger.ms": 5, "batch.size": 1_000_000,
                                                    "compression.type": "lz4", "log_level": 3,
                                                    "enable.idempotence": True})
        hist_producer = make_producer(settings, {"linger.ms": 20, "log_level": 3, "on_delivery": record,
                                                         "enable.idempotence": True})
        produce_all(hist_producer, topics.events, gen.values[:n_hist], gen.keys[:n_hist])
        label_values = [b'{"event_id":"%s","label":%d}' % (e.encode(), y)
                        for e, y in zip(gen.event_ids[:n_hist], gen.labels[:n_hist].tolist())]
        produce_all(hist_producer, topics.labels, label_values, gen.keys[:n_hist])
        hist_producer.flush()
        console.print(f"history: {n_hist:,} transactions and their labels produced to {topics.events}, {topics.labels}")

        # 2. train on the replayed history
        t0 = time.monotonic()
        model_dir = work / "model-v1"
        card = train_model(settings, topics, history_end, model_dir, seed)
        console.print(f"trained LightGBM on the replayed history in {time.monotonic() - t0:.1f}s: "
                      f"validation ROC-AUC {card['val_roc_auc']:.3f}, threshold {card['threshold']:.2f}")

        # 3. the scoring pipeline starts where the history ends
        spec = work / "pipeline.yaml"
        spec.write_text(yaml.safe_dump({
            "pipeline": name, "schema": {f.name: f.type for f in SCHEMA.fields},
            "steps": [{"score": {"model": str(model_dir)}}, {"explain": {"sample": 0.001, "k": 3}}],
            "batch": {"max_batch": 5000, "max_wait_ms": 20},
            "partitions": PARTITIONS}, sort_keys=False))
        _commit_start(settings, pipeline.group, topics.events, history_end)
        produce_all(producer, topics.events, gen.values[n_hist:n_hist + n_backlog], gen.keys[n_hist:n_hist + n_backlog])
        producer.flush()
        console.print(f"backlog: {n_backlog:,} transactions waiting; starting {workers} worker(s): tidal run {spec}")
        tracker = _Tracker(settings, topics)
        stack.callback(tracker.close)
        t_workers = time.monotonic()
        procs = spawn_workers(spec, workers, settings, stats_file=work / "stats.json", log_level="WARNING")
        stack.callback(lambda: [p.kill() for p in procs if p.poll() is None])

        live_total = n_backlog + n_paced
        paced_start = n_hist + n_backlog
        paced_sent = 0
        t_first = None
        t_paced = None
        deadline = time.monotonic() + timeout_s
        with Live(console=console, refresh_per_second=8, transient=quiet) as live:
            last = (time.monotonic(), 0)
            rate = 0.0
            while tracker.accounted < live_total and time.monotonic() < deadline:
                tracker.poll(0.01)
                now = time.monotonic()
                if t_first is None and tracker.accounted:
                    t_first = now
                if tracker.accounted >= n_backlog and t_paced is None:
                    t_paced = now
                if t_paced is not None and paced_sent < n_paced:  # paced stream at `paced_rate`
                    due = min(n_paced, int((now - t_paced) * paced_rate) + 1)
                    if due > paced_sent:
                        lo, hi = paced_start + paced_sent, paced_start + due
                        produce_all(producer, topics.events, gen.values[lo:hi], gen.keys[lo:hi])
                        paced_sent = due
                if now - last[0] >= 0.25:
                    rate = (tracker.accounted - last[1]) / (now - last[0])
                    last = (now, tracker.accounted)
                    produced = n_backlog + paced_sent
                    live.update(f"scored {tracker.accounted:>9,}/{live_total:,}  {rate:>9,.0f} events/s  "
                                f"lag {produced - tracker.accounted:>8,}  DLQ {sum(tracker.dlq.values()):,}")
        producer.flush()
        del producer, hist_producer  # close the clients before the broker goes away

        for p in procs:
            p.terminate()
        codes = [p.wait(30) for p in procs]
        stats = [json.loads(f.read_text()) for f in sorted(work.glob("stats-*.json"))]

    summary = _summarise(gen, tracker, n_hist, n_backlog, live_total, card, codes, stats,
                         startup_s=(t_first or time.monotonic()) - t_workers, workers=workers,
                         bootstrap=settings.bootstrap, model_dir=model_dir, paced_rate=paced_rate, pipeline=name,
                         duration_s=time.monotonic() - t_begin)
    _print(console, summary)
    return summary


def _summarise(gen, tracker: _Tracker, n_hist: int, n_backlog: int, live_total: int, card: dict, codes: list[int],
               stats: list[dict], **extra: Any) -> dict[str, Any]:
    from sklearn.metrics import precision_score, recall_score, roc_auc_score

    idx = np.fromiter((int(e[3:]) for e in tracker.event_ids), np.int64, len(tracker.event_ids))
    truth = gen.labels[idx]
    scores = np.asarray(tracker.scores)
    decisions = np.asarray(tracker.decisions, dtype=bool)
    out_ts = np.asarray(tracker.output_ts, dtype=np.int64)
    src_ts = np.asarray(tracker.source_ts, dtype=np.int64)
    backlog = idx < n_hist + n_backlog
    span_s = (out_ts[backlog].max() - out_ts[backlog].min()) / 1000 if backlog.sum() > 1 else 0.0
    latency = (out_ts - src_ts)[~backlog]
    dlq_total = sum(tracker.dlq.values())
    expected_dlq = int(gen.malformed[n_hist:n_hist + live_total].sum())
    unique = len(np.unique(idx))
    return {
        "events": live_total,
        "history_events": n_hist,
        "predictions": len(idx),
        "dlq": dlq_total,
        "dlq_by_reason": dict(sorted(tracker.dlq.items())),
        "duplicates": len(idx) - unique,
        "accounted": unique + dlq_total == live_total and dlq_total == expected_dlq and all(c == 0 for c in codes),
        "roc_auc": round(float(roc_auc_score(truth, scores)), 4) if truth.any() else None,
        "precision": round(float(precision_score(truth, decisions, zero_division=0)), 4),
        "recall": round(float(recall_score(truth, decisions, zero_division=0)), 4),
        "threshold": card["threshold"],
        "val_roc_auc": round(card["val_roc_auc"], 4),
        "events_per_s": round(backlog.sum() / span_s) if span_s > 0 else None,
        "p50_ms": float(np.percentile(latency, 50)) if len(latency) else None,
        "p99_ms": float(np.percentile(latency, 99)) if len(latency) else None,
        "latency_offered_rate": extra.pop("paced_rate"),
        "startup_s": round(extra.pop("startup_s"), 2),
        "worker_exit_codes": codes,
        "worker_stats": stats,
        "model_dir": str(extra.pop("model_dir")),
        **{k: (round(v, 2) if isinstance(v, float) else v) for k, v in extra.items()},
    }


def _print(console: Console, s: dict[str, Any]) -> None:
    table = Table(title="fraud demo", show_header=False)
    rows = [
        ("events scored by the pipeline", f"{s['events']:,} (after {s['history_events']:,} of history used for training)"),
        ("predictions", f"{s['predictions']:,} ({s['duplicates']} duplicates)"),
        ("dead-letter", f"{s['dlq']:,} {s['dlq_by_reason']}"),
        ("every event accounted for", "yes" if s["accounted"] else "NO"),
        ("ROC-AUC vs truth", f"{s['roc_auc']}"),
        ("precision / recall", f"{s['precision']} / {s['recall']} at threshold {s['threshold']:.2f}"),
        ("throughput (backlog)", f"{s['events_per_s']:,} events/s with {s['workers']} worker(s)"
         if s["events_per_s"] else "n/a"),
        ("end-to-end latency", f"p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms at {s['latency_offered_rate']:,} events/s"),
        ("worker start-up", f"{s['startup_s']} s (group join included)"),
        ("total", f"{s['duration_s']} s; model in {s['model_dir']}"),
    ]
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)


def _fresh_name(settings: KafkaSettings) -> str:
    """``fraud``, or ``fraud-<time>`` when an earlier run left its topics on this cluster or its folder
    in ``$TIDAL_HOME/demo`` (a rerun must not mix its model, spec and worker stats with the last one's)."""
    from tidal.demos.maintenance import fresh_name

    return fresh_name(settings, "fraud")
