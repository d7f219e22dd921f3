"""What every scenario gets: the broker, the events, the model, sizes for this mode, and ``add``."""

from __future__ import annotations

import json
import pickle
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib.events import SCHEMA_DICT, Events
from benchlib.kafka import PARTITIONS, delete_topics, read_all, steady_rate
from benchlib.procs import RssSampler, run_app, start_tidal, worker_stats, write_spec
from tidal.broker import TopicSpec, ensure_topics
from tidal.config import KafkaSettings


@dataclass
class Sizes:
    """How much each scenario does; ``run.py`` defines one per mode (full, quick, smoke)."""

    events: int                       # main backlog (throughput, max_batch sweep)
    baseline_s: float                 # steady-state seconds for the slow per-event systems
    idle_exit_s: float                # a drained tidal worker exits after this long without input
    latency_configs: list[dict]       # batching knobs to compare
    latency_rates: list[int]          # offered events/s; 0 = unpaced ("max")
    latency_phase_s: float            # seconds per paced rate
    latency_max_events: int           # events in the unpaced phase
    max_batches: list[int]            # max_batch sweep (5000 comes from the 1-worker run)
    rss_keys: list[int]               # distinct keys for the RSS sweep
    rss_events: int
    online_events: int
    dlq_scenario: bool = True
    alo_baseline: bool = True         # the passthrough with tidal's delivery sequence too
    repeats: int = 1                  # passthrough / tidal 1-worker alternations
    pass_repeat: int = 1              # the passthrough drains the backlog repeated this many times
    pacer_linger_ms: float = 5        # the latency pacer's producer linger (librdkafka's default)
    latency_relay: bool = True        # also measure the relay floor (no tidal) under the same loads
    latency_partitions: int = 1       # partitions of the latency topics (one worker needs one at these loads)
    latency_compare_partitions: int | None = 4  # then the first knob set (default) and the relay at 10k/s on this many
    latency_fresh_per_rate: bool = True  # each offered rate on its own fresh broker, topics and worker
    timeout_s: float = 240.0
    hotswap_rate: int = 20_000        # hot-swap: offered events/s
    hotswap_s: float = 6.0            # hot-swap: paced seconds once every worker scores v1 (half before the promotion)
    hotswap_workers: int = 2
    drift_rate: int = 10_000          # drift-detection delay: offered events/s
    drift_events: int = 40_000
    drift_change_at: int = 20_000     # the first drifted event (> the 5,000-row data-drift reference)
    drift_seeds: int = 30             # the same detector offline: seeds for its median delay


@dataclass
class Ctx:
    mode: str
    sizes: Sizes
    settings: KafkaSettings
    work: Path
    events: Events
    topic: str
    model: dict[str, Any]
    only: set[str] | None = None
    broker_pid: int | None = None     # the latency scenario's own broker, for its CPU use per phase
    external: bool = False            # a cluster given with --bootstrap: no fresh brokers, topics deleted after
    results: list[dict] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # every fresh() name: its topics are this run's
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.work / "processes.log"
        self._last_add = time.time()

    @property
    def bootstrap(self) -> str:
        return self.settings.bootstrap

    def wants(self, key: str) -> bool:
        return self.only is None or key in self.only

    def fresh(self, prefix: str) -> str:
        name = f"{prefix}{uuid.uuid4().hex[:6]}"
        self.names.append(name)
        return name

    def own_topics(self, topics: list[str]) -> list[str]:
        """Which of ``topics`` this run made: a fresh() name, or one of its ``name.*`` topics."""
        mine = set(self.names)
        return [t for t in topics if t in mine or t.split(".", 1)[0] in mine]

    def cleanup(self) -> list[str]:
        """Delete the topics this run made (on an external cluster; the embedded broker just stops)."""
        from confluent_kafka.admin import AdminClient

        existing = list(AdminClient(self.settings.client_config({"log_level": 0})).list_topics(timeout=15).topics)
        doomed = self.own_topics(existing)
        delete_topics(self.settings, doomed)
        return doomed

    def add(self, **entry: Any) -> dict:
        entry = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in entry.items()}
        self.results.append(entry)
        rate = entry.get("events_per_s")
        lat = "" if entry.get("p99_ms") is None else f"  p50 {entry['p50_ms']} p95 {entry['p95_ms']} p99 {entry['p99_ms']} ms"
        now = time.time()
        entry.setdefault("scenario_s", round(now - self._last_add, 1))
        self._last_add = now
        print(f"  [{entry['scenario_s']:>5.1f}s] {entry['scenario']:<12} {entry['label'][:66]:<66} "
              f"{'' if rate is None else f'{rate:>10,.0f} ev/s'}{lat}", flush=True)
        return entry

    def events_file(self) -> Path:
        path = self.work / "events.pkl"
        if not path.exists():
            path.write_bytes(pickle.dumps((self.events.keys, self.events.values), protocol=5))
        return path

    # -- systems ----------------------------------------------------------------------------
    def run_tidal(self, name: str, source: str, expected: int, workers: int = 1, schema: dict | None = None,
                  steps: list[dict] | None = None, **knobs: Any) -> dict[str, Any]:
        """Drain ``source`` with ``tidal run`` (fresh group); rates from outputs and worker stats."""
        steps = steps if steps is not None else [{"score": {"model": str(self.model["artifact"])}}]
        spec = write_spec(self.work, name, source, schema or SCHEMA_DICT, steps, **knobs)
        stats = self.work / f"{name}-stats.json"
        t0 = time.time()
        proc = start_tidal(spec, self.bootstrap, workers, stats, idle_exit_s=self.sizes.idle_exit_s, log=self.log)
        with RssSampler(proc.pid, children=workers > 1) as rss:
            try:
                code = proc.wait(self.sizes.timeout_s)
            except Exception:  # noqa: BLE001 - a hung worker is a result too
                proc.kill()
                code = proc.wait(10)
        ws = worker_stats(stats, workers)
        sink = f"{name}.predictions"
        ts, _ = read_all(self.settings, sink)
        steady = steady_rate(ts)
        delete_topics(self.settings, [sink, f"{name}.dlq", f"{name}.labels"])
        events_in = sum(w["events_in"] for w in ws)
        firsts = [w["first_event_at"] for w in ws if w["first_event_at"]]
        lasts = [w["last_event_at"] for w in ws if w["last_event_at"]]
        run_span = (max(lasts) - min(firsts)) if firsts else 0.0
        return {
            "events_per_s": steady["events_per_s"],
            "events_per_s_whole_run": events_in / run_span if run_span > 0 else None,
            "startup_s": (ts.min() / 1000 - t0) if len(ts) else None,
            "outputs": int(len(ts)), "events_in": events_in, "expected": expected,
            "dlq": sum(w["dlq_total"] for w in ws), "exit_code": code,
            "per_worker_events_per_s": [round(w["events_in"] / (w["last_event_at"] - w["first_event_at"]))
                                        for w in ws if w["first_event_at"] and w["last_event_at"] > w["first_event_at"]],
            "per_worker_events": [w["events_in"] for w in ws],
            "peak_rss_mb_per_worker": rss.peaks_mb(), "rebalances": [w["rebalances"] for w in ws],
            "window": {k: steady[k] for k in ("window_events", "window_s")},
        }

    def run_app(self, script: str, args: list[str], sink: str) -> dict[str, Any]:
        """Run a baseline app (its own process) to completion; rates from its output topic."""
        stats = self.work / f"{sink}-app.json"
        ensure_topics(self.settings, [TopicSpec(sink, PARTITIONS)])
        code, wall, rss = run_app(script, [*args, str(stats)], self.bootstrap, self.sizes.timeout_s, self.log)
        app = json.loads(stats.read_text()) if stats.exists() else {}
        ts, _ = read_all(self.settings, sink)
        delete_topics(self.settings, [sink])
        steady = steady_rate(ts)
        own = None
        if app.get("first_event_at") and app.get("last_event_at") and app["last_event_at"] > app["first_event_at"]:
            own = app["events"] / (app["last_event_at"] - app["first_event_at"])
        return {
            "events_per_s": steady["events_per_s"], "events_per_s_own_count": own,
            "startup_s": (ts.min() / 1000 - app["started_at"]) if len(ts) and app.get("started_at") else None,
            "outputs": int(len(ts)), "exit_code": code, "wall_s": wall, "peak_rss_mb": rss[0] if rss else None,
            "window": {k: steady[k] for k in ("window_events", "window_s")},
        }
