"""One hop through the embedded broker, no tidal: does latency at a fixed load drift with time?

    python bench/broker_drift.py                     # 10k events/s for 30 s, fetch waits 5 and 20 ms
    python bench/broker_drift.py --rate 10000 --seconds 30 --fetch-wait 5,20 --linger 5,50 --partitions 4

A pacer process (the latency scenario's, ``scenarios/pacer_app.py``) produces the benchmark's
events at a fixed rate to a fresh 4-partition topic; this process reads them as they arrive
(poll one record, then take what else has been fetched) and records, per second of the run,
p50/p99 of (received − CreateTime) and the broker's CPU. Nothing of tidal's runs: it is the
floor under one hop of any pipeline on this broker and machine. Writes
``bench/results/<date>-broker-drift.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from benchlib.events import make_events  # noqa: E402
from benchlib.machine import cpu_seconds, describe  # noqa: E402
from benchlib.procs import env_for  # noqa: E402


def one_run(bootstrap: str, broker_pid: int, events_file: Path, rate: int, seconds: int, fetch_wait: int,
            work: Path, linger_ms: float = 5, partitions: int = 4, fetch_min_bytes: int = 1) -> dict:
    from confluent_kafka import Consumer, TopicPartition

    from tidal.broker import TopicSpec, ensure_topics
    from tidal.config import KafkaSettings
    from tidal.stream.worker import take_arrived

    topic = f"drift-{uuid.uuid4().hex[:8]}"
    ensure_topics(KafkaSettings(bootstrap), [TopicSpec(topic, partitions)])
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "drift", "enable.auto.commit": False,
                  "fetch.wait.max.ms": fetch_wait, "fetch.min.bytes": fetch_min_bytes, "log_level": 3})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    count = rate * seconds
    pacer = subprocess.Popen([sys.executable, str(BENCH / "scenarios" / "pacer_app.py"), bootstrap, topic,
                              str(events_file), "0", str(count), str(rate), str(work / f"{topic}.json"),
                              str(linger_ms)],
                             env=env_for(bootstrap), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lat: list[float] = []
    created: list[int] = []
    cpu: list[float] = []  # broker CPU seconds at each whole second of the run
    t0, next_tick = time.monotonic(), 0.0
    deadline = t0 + seconds * 4 + 30
    while (len(lat) < count or pacer.poll() is None) and time.monotonic() < deadline:
        if time.monotonic() - t0 >= next_tick:
            cpu.append(cpu_seconds(broker_pid)[1] or 0.0)
            next_tick += 1
        msgs = take_arrived(c, 10_000, 0.05)
        now = time.time() * 1000
        for m in msgs:
            if not m.error():
                ts = m.timestamp()[1]
                lat.append(now - ts)
                created.append(ts)
    c.close()
    if pacer.poll() is None:
        pacer.kill()
    a, t = np.asarray(lat), np.asarray(created)
    second = (t - t.min()) // 1000 if len(t) else t
    per_second = [{"second": int(s), "p50_ms": round(float(np.percentile(a[second == s], 50)), 1),
                   "p99_ms": round(float(np.percentile(a[second == s], 99)), 1)} for s in np.unique(second)]
    for row in per_second:
        s = row["second"]
        if s + 1 < len(cpu):
            row["broker_cores_busy"] = round(cpu[s + 1] - cpu[s], 2)
    return {"rate": rate, "seconds": seconds, "fetch_wait_ms": fetch_wait, "linger_ms": linger_ms,
            "partitions": partitions, "fetch_min_bytes": fetch_min_bytes, "received": len(a), "events": count,
            "p50_ms": round(float(np.percentile(a, 50)), 1) if len(a) else None,
            "p99_ms": round(float(np.percentile(a, 99)), 1) if len(a) else None, "per_second": per_second}


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=int, default=10_000)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--fetch-wait", default="5,20", help="consumer fetch.wait.max.ms values, comma-separated")
    ap.add_argument("--linger", default="5", help="producer linger.ms values, comma-separated")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--fetch-min-bytes", type=int, default=1, help="consumer fetch.min.bytes")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    import pickle

    from tidal.broker import EmbeddedBroker

    work = Path(tempfile.mkdtemp(prefix="tidal-drift-"))
    ev = make_events(min(args.rate * args.seconds, 200_000))
    events_file = work / "events.pkl"
    events_file.write_bytes(pickle.dumps((ev.keys, ev.values)))
    runs = []
    grid = [(lg, fw) for lg in (float(x) for x in args.linger.split(","))
            for fw in (int(x) for x in args.fetch_wait.split(","))]
    for lg, fw in grid:
        with EmbeddedBroker(log_path=work / "broker.log") as broker:  # a fresh broker per run
            run = one_run(broker.bootstrap, broker.process.pid, events_file, args.rate, args.seconds, fw, work,
                          lg, args.partitions, args.fetch_min_bytes)
        runs.append(run)
        seconds = run["per_second"]
        print(f"linger.ms={lg:g} fetch.wait.max.ms={fw}: p50 {run['p50_ms']} ms, p99 {run['p99_ms']} ms over {args.seconds}s; "
              f"p99 first 5 s {[r['p99_ms'] for r in seconds[:5]]}, last 5 s {[r['p99_ms'] for r in seconds[-5:]]}",
              flush=True)
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    out = args.out or BENCH / "results" / f"{date}-broker-drift.json"
    out.write_text(json.dumps({"date": date, "machine": describe(), "command": "python bench/broker_drift.py "
                               + " ".join(argv if argv is not None else sys.argv[1:]), "runs": runs}, indent=1))
    print(f"written {out}")
    return out


if __name__ == "__main__":
    os.environ.setdefault("TIDAL_HOME", tempfile.mkdtemp(prefix="tidal-drift-home-"))
    main()
