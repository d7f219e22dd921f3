"""``tidal demo maintenance``: predictive maintenance through a regime change, recovered without a person.

1. generate sensor readings (``maintenance_data``): type-A machines, then, halfway, type-B
   machines whose wear shows in other sensors; produce the first part (history) and its labels;
2. ``tidal train``: replay the history from Kafka, train LightGBM, register it as v1 and make it
   the champion (which deploys it on ``tidal.models``);
3. start two workers: the scoring pipeline (a fleet-wide series change detector on pressure,
   ``SeriesAnomalyStep(change=True)``: BOCPD, which says when the fleet's readings changed
   regime before any label arrives; then ``DeployedScoreStep``: follows ``tidal.models``) and
   the monitor (labels join → ``DriftStep``: data drift on the sensors, ADWIN on each version's
   errors → ``RetrainStep``: on concept drift, retrain on the readings since the change,
   challenger vs champion on the newest of them, promote if better by 2 points);
4. stream the rest in chunks; each chunk's labels arrive after its predictions (delayed
   ground truth), and a chunk waits for the monitor to have taken the labels of the one
   before (the simulated plant keeps pace with the monitor, however fast the machine); the
   scoring worker hot-swaps whatever the monitor promotes;
5. report accuracy over time against the generator's truth, the drift alarms and their delay,
   and the accuracy before the change, right after it, and at the end.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Callable

import msgspec
import numpy as np
import orjson
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from rich.console import Console
from rich.table import Table

from tidal.broker.produce import make_producer
from tidal.broker.embedded import EmbeddedBroker, tidal_home
from tidal.broker.topics import ALERTS_TOPIC, PipelineTopics, ensure_topics
from tidal.config import KafkaSettings
from tidal.demos.maintenance_data import FEATURES, SCHEMA, generate
from tidal.stream.pipeline import Pipeline
from tidal.stream.worker import Worker

__all__ = ["run_demo", "WorkerThread", "produce_all", "commit_start", "fresh_name", "unique_specs", "accuracy_windows"]


class WorkerThread:
    """A :class:`Worker` on a daemon thread (demos and tests: several workers, one process)."""

    def __init__(self, pipeline: Pipeline, settings: KafkaSettings, worker_id: str = "0") -> None:
        self.worker = Worker(pipeline, settings, worker_id)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"tidal-{pipeline.name}", daemon=True)

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc

    def start(self) -> "WorkerThread":
        self.thread.start()
        return self

    def wait_assigned(self, timeout: float = 30.0) -> None:
        """Block until Kafka has given this worker its partitions (the group join takes seconds)."""
        deadline = time.monotonic() + timeout
        while self.worker.stats.rebalances == 0:
            if self.error is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker of {self.worker.pipeline.name} did not join its group: {self.error}")
            time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> None:
        self.worker.stop()
        self.thread.join(timeout)
        if self.error is not None:
            raise RuntimeError(f"worker of {self.worker.pipeline.name} failed: {self.error}") from self.error


def produce_all(producer: Producer, topic: str, keys: list[bytes] | None, values: list[bytes]) -> None:
    """Produce ``values`` (waiting for room when the queue is full) and wait for acknowledgements."""
    for i, v in enumerate(values):
        while True:
            try:
                producer.produce(topic, v, keys[i] if keys else None)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(30)


def commit_start(settings: KafkaSettings, group: str, offsets: dict[tuple[str, int], int]) -> None:
    """Make a consumer group start at ``offsets`` (e.g. where the history ends)."""
    c = Consumer(settings.client_config({"group.id": group, "enable.auto.commit": False, "log_level": 3}))
    try:
        c.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False)
    finally:
        c.close()


def unique_specs(*pipelines: Pipeline) -> list[Any]:
    """The topics of several pipelines, each once (a create request must not name a topic twice)."""
    specs: dict[str, Any] = {}
    for p in pipelines:
        for spec in p.topic_specs():
            specs.setdefault(spec.name, spec)
    return list(specs.values())


def fresh_name(settings: KafkaSettings, base: str) -> str:
    """``base``, or ``base-<time>`` when an earlier run left its topics on this cluster or its folder
    (models, registry) in ``$TIDAL_HOME/demo``: a rerun starts clean, on a fresh embedded broker
    as on a shared cluster, and never meets the last run's registry (its versions and aliases)."""
    from confluent_kafka.admin import AdminClient

    existing = AdminClient(settings.client_config({"log_level": 0})).list_topics(timeout=10).topics
    name = base
    while f"{name}.events" in existing or (tidal_home() / "demo" / name).exists():
        time.sleep(0.001)
        name = f"{base}-{int(time.time() * 1000) % 10**9}"
    return name


def accuracy_windows(correct: np.ndarray, index: np.ndarray, lo: int, hi: int, size: int) -> list[dict[str, Any]]:
    """Accuracy per window of ``size`` events between event indices ``lo`` and ``hi``."""
    out = []
    for a in range(lo, hi, size):
        b = min(hi, a + size)
        m = (index >= a) & (index < b)
        if m.any():
            out.append({"from": a, "to": b, "accuracy": round(float(correct[m].mean()), 4), "events": int(m.sum())})
    return out


class _Prediction(msgspec.Struct):
    event_id: str
    decision: bool
    model_version: str
    change: bool = False
    change_start: int = -1


class _Tracker:
    """Reads the scoring pipeline's predictions and this run's alerts as they arrive."""

    def __init__(self, settings: KafkaSettings, predictions: str, pipelines: set[str]) -> None:
        self.consumer = Consumer(settings.client_config({"group.id": "tidal.demo.tracker", "enable.auto.commit": False,
                                                         "fetch.wait.max.ms": 10, "log_level": 3}))
        parts = self.consumer.list_topics(ALERTS_TOPIC, timeout=10).topics[ALERTS_TOPIC].partitions
        self.consumer.assign([TopicPartition(predictions, 0, 0)] + [TopicPartition(ALERTS_TOPIC, p, 0) for p in parts])
        self.predictions = predictions
        self.pipelines = pipelines
        self.ids: list[int] = []
        self.decisions: list[bool] = []
        self.versions: list[str] = []
        self.changes: list[tuple[int, int]] = []  # (event index of the alarm, the change's start in the stream)
        self.alerts: list[dict[str, Any]] = []
        self._decode = msgspec.json.Decoder(_Prediction).decode

    def poll(self, timeout: float) -> None:
        for m in self.consumer.consume(5000, timeout):
            if m.error():
                if m.error().code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(m.error().str())
                continue
            if m.topic() == self.predictions:
                p = self._decode(m.value())
                self.ids.append(int(p.event_id.rsplit("-", 1)[1]))
                self.decisions.append(p.decision)
                self.versions.append(p.model_version)
                if p.change:
                    self.changes.append((self.ids[-1], p.change_start))
            else:
                event = orjson.loads(m.value())
                if event.get("pipeline") in self.pipelines:
                    self.alerts.append(event)

    def wait(self, count: int, timeout: float, on_tick: Callable[[], None] | None = None) -> None:
        deadline = time.monotonic() + timeout
        while len(self.ids) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(self.ids)} of {count} predictions arrived within {timeout:.0f}s")
            self.poll(0.05)
            if on_tick is not None:
                on_tick()

    def close(self) -> None:
        self.consumer.close()


def run_demo(settings: KafkaSettings | None = None, events: int = 60_000, seed: int = 7, quiet: bool = False,
             history_share: float = 0.2, chunk: int = 500, min_rows: int | None = None,
             timeout_s: float = 300.0, via_mqtt: bool = False) -> dict[str, Any]:
    """Run the demo; the summary's ``recovered`` says whether accuracy came back within 5 points.

    ``via_mqtt``: the readings go through a local Mosquitto and the MQTT bridge
    (:mod:`tidal.demos.maintenance_mqtt`), and failure alerts go back to MQTT.
    """
    from tidal.drift import DriftStep
    from tidal.learn import LabelJoinStep, RetrainStep
    from tidal.learn.train import train_from_topic
    from tidal.models.deployed import DeployedScoreStep
    from tidal.registry import KafkaPublisher, Registry

    console = Console(stderr=quiet)
    t_begin = time.monotonic()
    gen = generate(events, seed=seed)
    change = gen.change_at
    n_hist = int(events * history_share)
    if not n_hist < change < events:
        raise ValueError("the history must end before the regime change")
    min_rows = min_rows or max(1000, min(3000, (events - change) // 4))
    with contextlib.ExitStack() as stack:
        if settings is None:
            broker = stack.enter_context(EmbeddedBroker())
            settings = KafkaSettings(broker.bootstrap)
            console.print(f"[bold]embedded broker[/] on {broker.bootstrap} (in-memory: data is gone when it stops)")
        name = fresh_name(settings, "maintenance")
        topics = PipelineTopics(name)
        work = tidal_home() / "demo" / name
        publisher = KafkaPublisher(settings)
        stack.callback(publisher.close)  # its producer must not outlive the broker (librdkafka's "Connection refused")
        registry = Registry(work / "registry", publisher)
        from tidal.detect.step import SeriesAnomalyStep

        fleet = SeriesAnomalyStep("pressure", change=True, name="fleet_pressure", score_column="pressure_score",
                                  flag_column="pressure_anomaly")
        serving = Pipeline(name, schema=SCHEMA, steps=[fleet, DeployedScoreStep(name, registry=registry)], partitions=1,
                           max_batch=5000, max_wait_ms=20)
        drift = DriftStep(FEATURES + ["machine_type"], ["machine_type"], reference_size=3000, window=1000)
        retrain = RetrainStep(registry, name, FEATURES, kind="lightgbm", min_rows=min_rows, holdout=0.25, margin=0.02)
        join = LabelJoinStep(topics.labels)
        monitor = Pipeline(f"{name}.monitor", sources=[topics.predictions, topics.labels], sink=f"{name}.joined",
                           dlq=f"{name}.monitor.dlq", group=f"tidal.{name}.monitor", lineage=False, partitions=1,
                           steps=[join, drift, retrain], max_batch=5000, max_wait_ms=20)
        ensure_topics(settings, unique_specs(serving, monitor))
        producer = make_producer(settings, {"linger.ms": 5, "log_level": 3, "enable.idempotence": True})
        mqtt = None
        if via_mqtt:
            from tidal.demos.maintenance_mqtt import ViaMqtt

            mqtt = ViaMqtt(settings, name, topics.events, topics.predictions, work)
            stack.callback(mqtt.close)
            console.print(f"[bold]mosquitto[/] on 127.0.0.1:{mqtt.broker.port}: readings on plant/<machine>/sensors, "
                          f"bridged to {topics.events}; failure alerts back on plant/<machine>/alerts")

        def send(lo: int, hi: int) -> None:
            if mqtt is None:
                produce_all(producer, topics.events, gen.keys[lo:hi], gen.values[lo:hi])
            else:
                mqtt.publish(gen.keys[lo:hi], gen.values[lo:hi], lo)
                mqtt.wait_bridged(hi)

        # 1. history and its labels
        send(0, n_hist)
        produce_all(producer, topics.labels, gen.keys[:n_hist], gen.label_values(0, n_hist))
        console.print(f"history: {n_hist:,} readings of type-A machines and their labels on {topics.events}")

        # 2. tidal train: replay, train, register v1, promote (deploys it)
        t0 = time.monotonic()
        trained = train_from_topic(settings, topics.events, FEATURES, name=name, labels_topic=topics.labels,
                                   schema=SCHEMA, end={0: n_hist}, kind="lightgbm", holdout=0.2, registry=registry,
                                   promote=True, seed=seed)
        console.print(f"trained v{trained.version.version} on the replayed history in {time.monotonic() - t0:.1f}s: "
                      f"held-out accuracy {trained.metrics['holdout_accuracy']:.3f}; champion, deployed")

        # 3. scoring and monitor workers start where the history ends
        commit_start(settings, serving.group, {(topics.events, 0): n_hist})
        commit_start(settings, monitor.group, {(topics.labels, 0): n_hist})
        tracker = _Tracker(settings, topics.predictions, {name, monitor.name})
        stack.callback(tracker.close)
        workers = [WorkerThread(serving, settings, "serve").start(), WorkerThread(monitor, settings, "monitor").start()]
        for w in workers:
            w.wait_assigned()

        # 4. the stream, chunk by chunk; labels follow their predictions
        t_stream = time.monotonic()
        deadline = t_stream + timeout_s
        last_print = 0.0
        for lo in range(n_hist, events, chunk):
            hi = min(events, lo + chunk)
            send(lo, hi)
            tracker.wait(hi - n_hist, max(5.0, deadline - time.monotonic()))
            produce_all(producer, topics.labels, gen.keys[lo:hi], gen.label_values(lo, hi))
            # The simulated plant waits for the monitor to take the labels of the chunk before: at
            # real rates a retrain (inline in the monitor) ends long before many readings arrive,
            # and a slow or busy machine must not turn that into thousands of readings scored late.
            while join.matched < lo - n_hist and time.monotonic() < deadline:
                tracker.poll(0.02)
            if not quiet and time.monotonic() - last_print > 0.5:
                last_print = time.monotonic()
                console.print(f"  {hi:>7,}/{events:,} readings scored; joined {join.matched:,}; "
                              f"serving v{tracker.versions[-1]}; "
                              f"alerts so far: {len(tracker.alerts)}")
        while join.matched < events - n_hist and time.monotonic() < deadline:
            tracker.poll(0.1)
        stream_s = time.monotonic() - t_stream
        for w in workers:
            w.stop()
        tracker.poll(0.5)
        del producer
        if mqtt is not None:
            mqtt.wait_alerts(sum(tracker.decisions))
            mqtt_counts = mqtt.summary()

    summary = _summarise(gen, tracker, n_hist, trained, retrain, drift, registry, name, stream_s, min_rows)
    summary["duration_s"] = round(time.monotonic() - t_begin, 1)
    if via_mqtt:
        summary["mqtt"] = {**mqtt_counts, "alerts_expected": int(sum(tracker.decisions))}
    _print(console, summary)
    return summary


def _summarise(gen, tracker: _Tracker, n_hist: int, trained, retrain, drift, registry, name: str, stream_s: float,
               min_rows: int) -> dict[str, Any]:
    idx = np.asarray(tracker.ids, dtype=np.int64)
    correct = np.asarray(tracker.decisions, dtype=bool) == gen.labels[idx].astype(bool)
    versions = np.asarray(tracker.versions, dtype=object)
    n, change = len(gen.labels), gen.change_at
    pre_lo = max(n_hist, change - 5000)
    tail = max(1000, min(5000, (n - change) // 3))

    def acc(a: int, b: int) -> float | None:
        m = (idx >= a) & (idx < b)
        return round(float(correct[m].mean()), 4) if m.any() else None

    alarms = []
    for e in tracker.alerts:
        if e.get("state") != "firing":
            continue
        eid = (e.get("at") or {}).get("event_id")
        at = int(eid.rsplit("-", 1)[1]) if eid else None
        alarms.append({"type": e.get("type"), "at_event": at, "delay_events": at - change if at is not None else None,
                       "version": e.get("version"), "message": e.get("message")})
    # the fleet series counts its events from the first live one (index n_hist)
    changes = [{"at_event": at, "delay_events": at - change, "start_event": n_hist + start} for at, start in tracker.changes]
    promoted = [h for h in retrain.history if h["outcome"] == "promoted"]
    first_served = {}
    for v in dict.fromkeys(versions.tolist()):
        first_served[v] = int(idx[np.flatnonzero(versions == v)[0]])
    pre, dip, final = acc(pre_lo, change), acc(change, min(n, change + 2000)), acc(n - tail, n)
    window = max(1000, (n - n_hist) // 16)
    return {
        "events": n, "history_events": n_hist, "change_at": change, "predictions": int(len(idx)),
        "model": name, "v1_holdout_accuracy": round(trained.metrics["holdout_accuracy"], 4),
        "accuracy_before_change": pre, "accuracy_after_change": dip, "accuracy_final": final,
        "final_window": [n - tail, n], "recovered": bool(pre is not None and final is not None and final >= pre - 0.05),
        "recovery_gap_points": round(100 * (pre - final), 2) if pre is not None and final is not None else None,
        "alarms": alarms,
        "concept_drift_delay_events": next((a["delay_events"] for a in alarms if a["type"] == "concept_drift"
                                            and a["delay_events"] is not None and a["delay_events"] >= 0), None),
        "data_drift_delay_events": next((a["delay_events"] for a in alarms if a["type"] == "data_drift"
                                         and a["delay_events"] is not None and a["delay_events"] >= 0), None),
        "series_changes": changes,
        "series_change_delay_events": next((c["delay_events"] for c in changes if c["delay_events"] >= 0), None),
        "series_false_changes_before_change": sum(1 for c in changes if c["delay_events"] < 0),
        "false_alarms_before_change": sum(1 for a in alarms if a["delay_events"] is not None and a["delay_events"] < 0),
        "retrains": retrain.history, "promoted_versions": [h.get("version") for h in promoted],
        "versions_served_from_event": first_served, "retrain_min_rows": min_rows,
        "accuracy_over_time": accuracy_windows(correct, idx, n_hist, n, window),
        "person_acted": False, "stream_s": round(stream_s, 1),
        "events_per_s": round((n - n_hist) / stream_s) if stream_s > 0 else None,
        "drift_windows": len(drift.reports),
    }


def _print(console: Console, s: dict[str, Any]) -> None:
    over = Table("events", "accuracy", title="served accuracy over time (regime change at "
                 f"{s['change_at']:,})")
    for w in s["accuracy_over_time"]:
        mark = " ← change" if w["from"] <= s["change_at"] < w["to"] else ""
        over.add_row(f"{w['from']:,}–{w['to']:,}{mark}", f"{w['accuracy']:.3f}")
    console.print(over)
    table = Table(title="maintenance demo", show_header=False)
    for k, v in [
        ("readings", f"{s['events']:,} ({s['history_events']:,} of history trained v1, "
                     f"held-out accuracy {s['v1_holdout_accuracy']:.3f})"),
        ("accuracy before the change", f"{s['accuracy_before_change']}"),
        ("right after it (2,000 readings)", f"{s['accuracy_after_change']}"),
        (f"at the end ({s['final_window'][0]:,}–{s['final_window'][1]:,})", f"{s['accuracy_final']}"),
        ("recovered within 5 points", f"{'yes' if s['recovered'] else 'NO'} (gap {s['recovery_gap_points']} points), "
                                      "no person acted"),
        ("data drift alarm", f"{s['data_drift_delay_events']} readings after the change"),
        ("concept drift alarm", f"{s['concept_drift_delay_events']} readings after the change"),
        ("false alarms before the change", str(s["false_alarms_before_change"])),
        ("fleet pressure change (BOCPD, no labels)",
         f"{s['series_change_delay_events']} readings after the change; "
         f"{s['series_false_changes_before_change']} false before it"),
        ("retraining", "; ".join(f"{h['outcome']} ({h['metric']} {h['challenger']:.3f} vs champion "
                                 f"{h['champion'] if h['champion'] is None else round(h['champion'], 3)})"
                                 for h in s["retrains"] if h["challenger"] is not None) or "none"),
        ("versions served (first reading)", ", ".join(f"v{v} from {i:,}" for v, i in
                                                      s["versions_served_from_event"].items())),
        ("stream", f"{s['stream_s']} s, {s['events_per_s']:,} readings/s in chunks with delayed labels"),
    ] + ([("MQTT", f"{s['mqtt']['published']:,} readings published, {s['mqtt']['bridged']:,} bridged to Kafka, "
                   f"{s['mqtt']['alerts_published']:,} failure alerts published back")] if "mqtt" in s else []):
        table.add_row(k, v)
    console.print(table)
