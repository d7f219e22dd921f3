"""End-to-end latency of a tidal worker at fixed offered loads, for several batching knobs.

For each knob setting one worker (``tidal run``) scores a fresh topic while a pacer process
offers 1k, 10k, 50k events/s and then "max" (no pacing: as fast as one Python producer can
send, so latency there includes the backlog that builds up). The suite's tracker reads the
predictions as they arrive. Per event:

- **consumed** latency = when the tracker received the prediction − when the pacer called
  ``produce()`` for the event (its Kafka CreateTime, carried through as ``source_timestamp``):
  the headline p50/p95/p99;
- **produced** latency = the prediction's own CreateTime − the event's (what the fraud demo
  reports): without the last hop to a reader.

Everything (broker, pacer, worker, tracker) shares this machine's cores. The first 5% of each
phase is dropped as warm-up.

The latency topics have one partition (``Sizes.latency_partitions``): one worker handles these
loads, and the embedded broker's cost per fetch grows with the batches stored in the fetched
partitions (``bench/broker_drift.py``: the broker's CPU and a single hop's p99 rise second by
second while a topic is produced to and read at once; bigger producer batches or fewer
partitions slow that). Then the lowest-latency knobs and the relay run once more at 10k/s on
``latency_compare_partitions`` (4) partitions, so the table shows what the partition count
costs on this broker.

The same phases also run through a **relay** (``passthrough_app.py relay``: consume, splice
the source timestamp into the bytes, produce at once; no decoding, no model, no commit): the
floor that this broker, the clients and the machine put under any consumer → producer
process, so tidal's own share of the latency can be read off.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time

import msgspec
import numpy as np
from confluent_kafka import Consumer, TopicPartition

from benchlib.context import Ctx
from benchlib.machine import cpu_seconds
from benchlib.procs import BENCH, env_for, scrape, start_tidal, write_spec
from tidal.broker import TopicSpec, ensure_topics
from tidal.stream.worker import fetch_wait_ms, take_arrived


class _Out(msgspec.Struct):
    source_timestamp: int


class Tracker:
    """Reads a predictions topic as it fills: (receive time, output CreateTime, source time) per record."""

    def __init__(self, ctx: Ctx, topic: str, partitions: int) -> None:
        self.consumer = Consumer(ctx.settings.client_config({
            "group.id": "bench-latency-tracker", "enable.auto.commit": False, "fetch.wait.max.ms": 5,
            "log_level": 3}))
        self.consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        self.decode = msgspec.json.Decoder(_Out).decode
        self.recv: list[float] = []
        self.out_ts: list[int] = []
        self.src_ts: list[int] = []

    def poll(self, timeout: float) -> int:
        msgs = take_arrived(self.consumer, 10_000, timeout)  # no wait to fill a batch: it would add to latency
        now = time.time() * 1000
        decode = self.decode
        good = [m for m in msgs if not m.error()]
        self.recv.extend([now] * len(good))
        self.out_ts.extend(m.timestamp()[1] for m in good)
        self.src_ts.extend(decode(m.value()).source_timestamp for m in good)
        return len(good)

    def take(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = np.asarray(self.recv), np.asarray(self.out_ts, np.int64), np.asarray(self.src_ts, np.int64)
        self.recv, self.out_ts, self.src_ts = [], [], []
        return out

    def close(self) -> None:
        self.consumer.close()


def fetch_wait(knobs: dict) -> int:
    """The worker consumer's fetch.wait.max.ms under these knobs: set, or tidal's rule."""
    return knobs.get("fetch_wait_ms", fetch_wait_ms(knobs["max_wait_ms"]))


def knob_text(knobs: dict) -> str:
    return (f"max_batch={knobs['max_batch']}, max_wait_ms={knobs['max_wait_ms']}, linger.ms={knobs['linger_ms']}, "
            f"fetch.wait.max.ms={fetch_wait(knobs)}")


def partitions_text(n: int) -> str:
    return f"{n} partition{'s' if n > 1 else ''}"


def _pct(a: np.ndarray) -> tuple[float, float, float]:
    return tuple(round(float(np.percentile(a, q)), 2) for q in (50, 95, 99))  # type: ignore[return-value]


def _offer(ctx: Ctx, tracker: Tracker, topic: str, start: int, count: int, rate: int, tag: str,
           timeout: float) -> tuple[dict, int]:
    stats = ctx.work / f"pacer-{tag}.json"
    cmd = [sys.executable, str(BENCH / "scenarios" / "pacer_app.py"), ctx.bootstrap, topic, str(ctx.events_file()),
           str(start), str(count), str(rate), str(stats), str(ctx.sizes.pacer_linger_ms)]
    pacer = subprocess.Popen(cmd, env=env_for(ctx.bootstrap), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    got = 0
    deadline = time.monotonic() + timeout
    while (got < count or pacer.poll() is None) and time.monotonic() < deadline:
        got += tracker.poll(0.005)
    if pacer.poll() is None:
        pacer.kill()
    import json

    return (json.loads(stats.read_text()) if stats.exists() else {}), got


RELAY_KNOBS = {"max_batch": 5000, "max_wait_ms": 0, "linger_ms": 1, "fetch_wait_ms": 5}


def plan(s) -> list[tuple[str, dict, int, list[int]]]:
    """(system, knobs, partitions, offered rates) of each run, each on a fresh broker: every knob
    setting and the relay on ``latency_partitions`` (one run per rate with
    ``latency_fresh_per_rate``, else all rates in turn); then the first knob setting and the
    relay at 10k/s on ``latency_compare_partitions``."""
    main = s.latency_partitions
    runs = [("tidal", k, main, s.latency_rates) for k in s.latency_configs]
    if s.latency_relay:
        runs.append(("limit: relay", RELAY_KNOBS, main, s.latency_rates))
    if s.latency_fresh_per_rate:  # no phase inherits the batches an earlier one left in the broker
        runs = [(system, k, p, [rate]) for system, k, p, rates in runs for rate in rates]
    more = s.latency_compare_partitions
    if more and more != main and 10_000 in s.latency_rates:
        runs += [("tidal", k, more, [10_000]) for k in s.latency_configs[:1]]
        if s.latency_relay:
            runs.append(("limit: relay", RELAY_KNOBS, more, [10_000]))
    return runs


def run(ctx: Ctx) -> None:
    """Each knob setting (and the relay) on a fresh embedded broker: Tansu's in-memory storage
    gets slower as it holds more data (see bench/broker_drift.py), so after the throughput
    scenarios' millions of records a shared broker would measure its own backlog, not the knobs."""
    from tidal.broker import EmbeddedBroker
    from tidal.config import KafkaSettings

    for i, (system, knobs, partitions, rates) in enumerate(plan(ctx.sizes)):
        if ctx.external:  # a cluster given with --bootstrap: fresh topics on it
            _measure(ctx, system, knobs, partitions, rates)
            continue
        with EmbeddedBroker(log_path=ctx.work / f"broker-latency-{i}.log") as broker:
            own = dataclasses.replace(ctx, settings=KafkaSettings(broker.bootstrap),
                                      broker_pid=broker.process.pid if broker.process else None)
            _measure(own, system, knobs, partitions, rates)


def _measure(ctx: Ctx, system: str, knobs: dict, partitions: int, rates: list[int]) -> None:
    """Warm-up, then one phase per offered rate, through one worker (or the relay)."""
    s = ctx.sizes
    knob_label = knob_text(knobs) if system == "tidal" else "relay: no decode, no model, no commit"
    knob_label += f"; {partitions_text(partitions)}"
    name = ctx.fresh("lat")
    source = f"{name}.events"
    ensure_topics(ctx.settings, [TopicSpec(source, partitions), TopicSpec(f"{name}.predictions", partitions)])
    if system == "tidal":
        spec = write_spec(ctx.work, name, source, _schema(), [{"score": {"model": str(ctx.model["artifact"])}}],
                          max_batch=knobs["max_batch"], max_wait_ms=knobs["max_wait_ms"], partitions=partitions,
                          producer={"linger.ms": knobs["linger_ms"]},
                          consumer={"fetch.wait.max.ms": knobs["fetch_wait_ms"]} if "fetch_wait_ms" in knobs else None)
        worker = start_tidal(spec, ctx.bootstrap, 1, ctx.work / f"{name}-stats.json", log=ctx.log)
    else:
        worker = subprocess.Popen([sys.executable, str(BENCH / "scenarios" / "passthrough_app.py"), ctx.bootstrap,
                                   source, f"{name}.predictions", "0", "relay", str(ctx.work / f"{name}-relay.json")],
                                  env=env_for(ctx.bootstrap), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tracker = Tracker(ctx, f"{name}.predictions", partitions)
    try:
        # Warm-up: wait for the group join and the first outputs before measuring.
        _, got = _offer(ctx, tracker, source, 0, 200, 1000, f"{name}-warm", 60)
        tracker.take()
        if got < 200:
            ctx.add(system=system, scenario="latency", label=f"{knob_label}: worker did not start",
                    knobs=knobs, partitions=partitions, events_per_s=None)
            return
        start = 200
        port = getattr(worker, "metrics_port", 0)
        for rate in rates:
            count = int(rate * s.latency_phase_s) if rate else s.latency_max_events
            before, t_phase = scrape(port) if port else {}, time.monotonic()
            cpu_before = cpu_seconds(ctx.broker_pid)
            pacer, got = _offer(ctx, tracker, source, start, count, rate, f"{name}-{rate}",
                                timeout=s.latency_phase_s * 6 + 60)
            seconds = time.monotonic() - t_phase
            worker_phase = _phase_metrics(before, scrape(port) if port else {}, seconds)
            worker_phase.update(_cpu_use(cpu_before, cpu_seconds(ctx.broker_pid), seconds))
            start += count
            recv, out_ts, src_ts = tracker.take()
            keep = slice(int(len(recv) * 0.05), None)
            consumed, produced = (recv - src_ts)[keep], (out_ts - src_ts)[keep].astype(float)
            span = (out_ts.max() - out_ts.min()) / 1000 if len(out_ts) > 1 else 0
            p50, p95, p99 = _pct(consumed) if len(consumed) else (None,) * 3
            q50, q95, q99 = _pct(produced) if len(produced) else (None,) * 3
            ctx.add(system=system, scenario="latency", knobs=knobs, partitions=partitions, run=name,
                    label=f"{'max' if not rate else f'{rate:,}/s'} offered; {knob_label}",
                    offered_per_s=rate or None, achieved_offered_per_s=pacer.get("rate"),
                    events_per_s=len(out_ts) / span if span else None, events=count, received=got,
                    p50_ms=p50, p95_ms=p95, p99_ms=p99, latency_measured="event produced → prediction consumed",
                    produced_p50_ms=q50, produced_p95_ms=q95, produced_p99_ms=q99,
                    max_ms=round(float(consumed.max()), 2) if len(consumed) else None,
                    p99_by_second_ms=_p99_by_second(src_ts[keep], consumed), **worker_phase)
    finally:
        tracker.close()
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        if system == "tidal":
            _worker_summary(ctx, name)


def _p99_by_second(src_ts: np.ndarray, latency: np.ndarray) -> list[float]:
    """p99 of the events offered in each second of the phase: shows whether latency drifts."""
    if not len(latency):
        return []
    second = (src_ts - src_ts.min()) // 1000
    return [round(float(np.percentile(latency[second == s], 99)), 1) for s in np.unique(second)]


def _cpu_use(before: tuple[float, float | None], after: tuple[float, float | None], seconds: float) -> dict:
    """Cores kept busy during a phase (1.0 = one core all the time): the machine's and the broker's."""
    out = {"machine_cores_busy": round((after[0] - before[0]) / seconds, 2)}
    if before[1] is not None and after[1] is not None:
        out["broker_cores_busy"] = round((after[1] - before[1]) / seconds, 2)
    return out


def _phase_metrics(before: dict, after: dict, seconds: float) -> dict:
    """From the worker's /metrics before and after a phase: batches, mean batch, time busy in batches."""
    def d(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    batches = d("tidal_batch_size_count")
    if not after or batches <= 0:
        return {}
    steps = {k.split("step=", 1)[1][:-1]: round(d(k) / batches * 1000, 2) for k in after
             if k.startswith("tidal_step_duration_seconds_sum{")}
    busy = d("tidal_batch_duration_seconds_sum")
    return {"worker_batches": int(batches), "worker_mean_batch": round(d("tidal_batch_size_sum") / batches, 1),
            "worker_ms_per_batch": round(busy / batches * 1000, 2), "worker_busy_fraction": round(busy / seconds, 3),
            "worker_step_ms_per_batch": steps}


def _worker_summary(ctx: Ctx, name: str) -> None:
    """The worker's own counts over all phases: batches, mean batch size, time busy in a batch."""
    import json

    path = ctx.work / f"{name}-stats.json"
    if not path.exists():
        return
    st = json.loads(path.read_text())
    for r in ctx.results:
        if r.get("scenario") == "latency" and r.get("run") == name:
            r["worker_all_phases"] = {"batches": st["batches"], "events_in": st["events_in"], "busy_s": st["busy_s"]}


def _schema() -> dict:
    from benchlib.events import SCHEMA_DICT

    return SCHEMA_DICT
