"""Offered load for the latency scenario: produce events at a fixed rate (own process).

    python bench/scenarios/pacer_app.py BOOTSTRAP TOPIC EVENTS.pkl START COUNT RATE STATS.json [LINGER_MS]

Produces COUNT events (cycling through the pickled keys/values from START) at RATE events/s,
spread evenly in time (every ≤1 ms it sends what is due); RATE 0 sends as fast as it can.
Each record's Kafka timestamp (CreateTime) is the moment ``produce()`` was called: latency is
measured from there. Producer: librdkafka's defaults (linger.ms 5, no compression) unless
LINGER_MS is given.
"""

from __future__ import annotations

import json
import pickle
import sys
import time
from pathlib import Path


def main(bootstrap: str, topic: str, events: str, start: int, count: int, rate: float, stats_path: str,
         linger_ms: float = 5) -> None:
    from confluent_kafka import Producer

    from tidal.config import KafkaSettings

    keys, values = pickle.loads(Path(events).read_bytes())
    n = len(values)
    settings = KafkaSettings.resolve(bootstrap)  # plus TIDAL_KAFKA_* / TIDAL_KAFKA_CONFIG (SASL, TLS)
    p = Producer(settings.client_config({"linger.ms": linger_ms, "log_level": 3,
                                         "queue.buffering.max.messages": 1_000_000}))
    produce, poll = p.produce, p.poll
    sent = 0
    t0 = time.perf_counter()
    t_first = time.time()
    while sent < count:
        due = count if rate <= 0 else min(count, int((time.perf_counter() - t0) * rate) + 1)
        while sent < due:
            i = (start + sent) % n
            try:
                produce(topic, values[i], keys[i])
            except BufferError:
                poll(0.01)
                continue
            sent += 1
        poll(0)
        if rate > 0:
            time.sleep(0.0005)
    elapsed = time.perf_counter() - t0
    p.flush(60)
    Path(stats_path).write_text(json.dumps({"sent": sent, "seconds": elapsed, "first_at": t_first,
                                            "rate": sent / elapsed if elapsed > 0 else None}))


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], a[2], int(a[3]), int(a[4]), float(a[5]), a[6], *(float(x) for x in a[7:8]))
