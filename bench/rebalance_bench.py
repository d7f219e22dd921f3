"""A rebalance with large state: a second worker joins, then leaves, while events keep coming.

    python bench/rebalance_bench.py [--keys 10000000] [--rate 10000] [--hold-s 40]

A windowed-aggregate pipeline over 4 partitions starts with ``--keys`` keys of state in its
changelog (written directly, in the format the window step writes). Worker *one* runs in this
process; it restores all of it, then events arrive at ``--rate`` per second throughout:

1. worker *two* (``tidal run``, its own process) joins: half the partitions, and their state,
   move to it; it restores them while *one* goes on with the partitions it keeps;
2. after ``--hold-s`` *two* stops (SIGTERM): its partitions come back to *one*, which restores
   them in the background while still processing the partitions it kept.

Reported: each restore's records and seconds, the longest pause in *one*'s processing of the
partitions it kept (what a restore on the worker's own thread would stretch to the restore's
length), the rebalances *one* went through (a storm would show here), and every event
produced checked against the outputs (lost, repeated). Results go to
``bench/results/<date>-rebalance.json``.

Diagnostics: ``REBALANCE_WATCH=1`` prints worker one's counts, held partitions, positions and
cached high watermarks every 2 s; ``REBALANCE_STACKS=FILE`` dumps every thread's stack there
every 3 s from the join on; ``REBALANCE_ONE_EXTRA='{"debug": "cgrp,fetch", "log_level": 7}'``
adds librdkafka settings to worker one's clients; ``REBALANCE_FETCH_WAIT_MS`` (default 100) is
the pipeline's ``fetch.wait.max.ms``: at 5 ms (tidal's default for ``max_wait_ms: 0``) and
10,000,000 keys the embedded broker answered every fetch of the source partitions with no
records, for good.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import orjson
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from benchlib.kafka import read_all  # noqa: E402
from tidal.broker import EmbeddedBroker, TopicSpec, ensure_topics  # noqa: E402
from tidal.broker.produce import produce_all  # noqa: E402
from tidal.broker.topics import COMPACTED  # noqa: E402
from tidal.config import KafkaSettings  # noqa: E402
from tidal.stream import Worker, from_dict  # noqa: E402

RESULTS = BENCH / "results"
FETCH_WAIT_MS = int(os.environ.get("REBALANCE_FETCH_WAIT_MS", "100"))
PARTS, WARM = 4, 10  # source partitions; events per partition committed before the start
STATE = b'{"o":1,"v":{"0":{"x":[3,1.5,0.9,0.2,0.8,0.5]}}}'  # as in features_bench's restore


def spec(name: str) -> dict:
    return {"pipeline": name, "schema": {"id": "int", "k": "str", "x": "float"}, "partitions": PARTS,
            "steps": [{"window": {"key": "k", "aggs": {"n": ["x", "count"]}}}],
            "batch": {"max_batch": 5000, "max_wait_ms": 0},
            # The embedded broker answers a fetch it cannot serve within fetch.wait.max.ms with no
            # records, and its reads slow down as its memory fills: with ~20M records stored the
            # default (5 ms at max_wait_ms 0) returned nothing at all, forever (README, State).
            "kafka": {"consumer": {"fetch.wait.max.ms": FETCH_WAIT_MS}}}


def prepare(settings: KafkaSettings, name: str, keys: int) -> None:
    """Topics, the changelog with ``keys`` keys, and committed offsets the state reflects."""
    p = from_dict(spec(name))
    ensure_topics(settings, p.topic_specs())
    changelog = p.changelog(p.steps[0])
    ensure_topics(settings, [TopicSpec(changelog, PARTS, COMPACTED)])
    t0 = time.perf_counter()
    prod = Producer(settings.client_config({"linger.ms": 20, "batch.size": 1_000_000, "compression.type": "lz4",
                                            "queue.buffering.max.messages": 2_000_000, "log_level": 3}))
    for q in range(PARTS):
        produce_all(prod, changelog, (STATE for _ in range(q, keys, PARTS)),
                    (b"s%d" % i for i in range(q, keys, PARTS)), q)
        prod.flush()
    for q in range(PARTS):  # the committed point the changelog's stamps ("o": 1) lie within
        for i in range(WARM):
            prod.produce(p.sources[0], orjson.dumps({"id": -1 - i, "k": "warm", "x": 0.0}), b"warm", q)
    prod.flush()
    c = Consumer(settings.client_config({"group.id": p.group, "enable.auto.commit": False, "log_level": 3}))
    c.commit(offsets=[TopicPartition(p.sources[0], q, WARM) for q in range(PARTS)], asynchronous=False)
    c.close()
    print(f"changelog of {keys:,} keys written in {time.perf_counter() - t0:.1f}s", flush=True)


class Pacer(threading.Thread):
    """Events at ``rate`` per second (ids from 0), keyed over 100,000 keys of their own."""

    def __init__(self, settings: KafkaSettings, topic: str, rate: int) -> None:
        super().__init__(daemon=True)
        self.settings, self.topic, self.rate = settings, topic, rate
        self.sent = 0
        self.stop = threading.Event()

    def run(self) -> None:
        prod = Producer(self.settings.client_config({"linger.ms": 5, "log_level": 3}))
        t0 = time.monotonic()
        while not self.stop.is_set():
            due = int((time.monotonic() - t0) * self.rate)
            for i in range(self.sent, due):
                k = f"e{i % 100_000}"
                prod.produce(self.topic, orjson.dumps({"id": i, "k": k, "x": 1.0}), k.encode())
            self.sent = max(self.sent, due)
            prod.poll(0)
            time.sleep(0.005)
        prod.flush(30)


class Restores(logging.Handler):
    """Worker one's "restored ..." log lines: (partitions, records, seconds)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        m = RESTORED.search(record.getMessage())
        if m:
            self.seen.append({"partitions": m[1], "records": int(m[2]), "seconds": float(m[3]), "at": time.monotonic()})


RESTORED = re.compile(r"restored \S+ \[([^\]]*)\]: (\d+) changelog records in ([\d.]+)s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=10_000_000)
    ap.add_argument("--rate", type=int, default=10_000)
    ap.add_argument("--hold-s", type=float, default=40.0, help="how long the second worker stays (the embedded broker takes ~15 s to finish a cooperative rebalance)")
    args = ap.parse_args()
    name = f"rebal{os.getpid()}"
    work = Path(tempfile.mkdtemp(prefix="tidal-rebalance-"))
    (work / "p.yaml").write_text(yaml.safe_dump(spec(name)))
    restores = Restores()
    logging.getLogger("tidal.worker").addHandler(restores)
    logging.getLogger("tidal.worker").setLevel(logging.INFO)
    with EmbeddedBroker() as broker:
        settings = KafkaSettings(broker.bootstrap)
        prepare(settings, name, args.keys)
        batches: list[tuple[float, frozenset[int]]] = []
        mine = KafkaSettings(broker.bootstrap, json.loads(os.environ.get("REBALANCE_ONE_EXTRA", "{}")))
        one = Worker(from_dict(spec(name)), mine, handle_signals=False,
                     on_batch=lambda w, b: batches.append((time.monotonic(), frozenset(b.partitions.tolist()))))
        t_start = time.monotonic()
        threading.Thread(target=one.run, daemon=True).start()
        while not restores.seen:
            time.sleep(0.05)
        cold = restores.seen[0]
        print(f"one: {cold['records']:,} records restored in {cold['seconds']:.1f}s", flush=True)
        pacer = Pacer(settings, one.pipeline.sources[0], args.rate)
        pacer.start()
        if os.environ.get("REBALANCE_WATCH"):
            def watch() -> None:
                while True:
                    time.sleep(2)
                    try:
                        asg = one.consumer.assignment()
                        pos = {tp.partition: tp.offset for tp in one.consumer.position(asg)}
                        hw = {tp.partition: one.consumer.get_watermark_offsets(tp, cached=True)[1] for tp in asg}
                    except Exception as exc:  # noqa: BLE001
                        pos, hw = repr(exc), {}
                    print(f"WATCH t={time.monotonic() - t_start:.1f} in={one.stats.events_in} out={one.stats.outputs} "
                          f"sent={pacer.sent} held={sorted(q for _t, q in one._held)} restores={len(one._restores)} "
                          f"inflight={len(one._inflight)} pos={pos} hw={hw} stray={one._stray}", flush=True)
            threading.Thread(target=watch, daemon=True).start()
        time.sleep(3)

        t_join = time.monotonic()
        if os.environ.get("REBALANCE_STACKS"):  # where the worker's threads are, every 3 s from here on
            import faulthandler

            faulthandler.dump_traceback_later(3, repeat=True, file=open(os.environ["REBALANCE_STACKS"], "w"))
        env = {**os.environ, "TIDAL_BOOTSTRAP_SERVERS": settings.bootstrap}
        two_log = work / "two.log"
        two = subprocess.Popen([sys.executable, "-m", "tidal", "run", str(work / "p.yaml"), "--worker-id", "two",
                                "--log-level", "INFO", "--metrics-port", "0", "--stats-file", str(work / "two.json")],
                               env=env, stderr=two_log.open("w"), stdout=subprocess.DEVNULL)
        while len(one.consumer.assignment()) == PARTS and time.monotonic() - t_join < 120:
            if two.poll() is not None:
                raise SystemExit(f"worker two exited ({two.returncode}): {two_log.read_text()[-2000:]}")
            time.sleep(0.05)
        kept = {tp.partition for tp in one.consumer.assignment()}
        print(f"JOINED t={time.monotonic() - t_start:.1f}", flush=True)
        print(f"one keeps {sorted(kept)} after {time.monotonic() - t_join:.1f}s", flush=True)
        time.sleep(args.hold_s)
        t_leave = time.monotonic()
        print(f"LEAVE t={t_leave - t_start:.1f}", flush=True)
        two.send_signal(signal.SIGTERM)
        two.wait(120)
        n_before = len(restores.seen)
        while len(restores.seen) == n_before and time.monotonic() - t_leave < 300:
            time.sleep(0.05)
        back = restores.seen[-1] if len(restores.seen) > n_before else None
        t_back = time.monotonic()
        time.sleep(3)
        pacer.stop.set()
        pacer.join(30)
        sent = pacer.sent
        two_out = json.loads((work / "two.json").read_text())["outputs"]
        while one.stats.outputs + two_out < sent and time.monotonic() - t_back < 120:  # drained
            time.sleep(0.2)
        one.stop()
        (work / "batches.json").write_text(json.dumps([(t - t_join, sorted(ps)) for t, ps in batches]))

        # the longest pause in one's processing of the partitions it kept, from the join to the end
        times = [t for t, parts in batches if parts & kept and t >= t_join]
        gaps = [b - a for a, b in zip(times, times[1:])]
        during = [t for t in times if back and back["at"] - back["seconds"] <= t <= back["at"]]
        two_restores = [{"partitions": m[1], "records": int(m[2]), "seconds": float(m[3])}
                        for m in RESTORED.finditer(two_log.read_text())]
        _ts, values = read_all(settings, one.pipeline.sink, PARTS, values=True)
        ids = [orjson.loads(v)["id"] for v in values]
        got = set(ids)
        result = {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "keys": args.keys, "rate": args.rate,
            "partitions": PARTS, "hold_s": args.hold_s,
            "one_cold_restore": {k: cold[k] for k in ("records", "seconds")},
            "two_restores": two_restores,
            "one_restore_of_returned": {k: back[k] for k in ("partitions", "records", "seconds")} if back else None,
            "kept_partitions": sorted(kept),
            "kept_max_pause_s": round(max(gaps), 3) if gaps else None,
            "kept_max_pause_at_s": round(times[gaps.index(max(gaps))] - t_join, 2) if gaps else None,
            "timeline_s": {"two_started": 0.0, "two_stopped": round(t_leave - t_join, 2),
                           "returned_restore_started": round(back["at"] - back["seconds"] - t_join, 2) if back else None,
                           "returned_restore_adopted": round(back["at"] - t_join, 2) if back else None},
            "kept_batches_during_background_restore": len(during),
            "one_rebalances": one.stats.rebalances,
            "events_sent": sent, "outputs": len(ids), "lost": sum(1 for i in range(sent) if i not in got),
            "repeated": len(ids) - len(got), "one_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
            "seconds": round(time.monotonic() - t_start, 1),
        }
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{result['date']}-rebalance.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
