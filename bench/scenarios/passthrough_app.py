"""Limit: consume → produce with the confluent-kafka batch API, no decoding, no model (own process).

    python bench/scenarios/passthrough_app.py BOOTSTRAP INPUT OUTPUT EVENTS MODE STATS.json

MODE ``raw``: produce each consumed batch and move on (the producer flushes only at the end):
the fastest a Python process can move these records through this broker.
MODE ``alo``: the same, with tidal's delivery sequence per batch: produce, wait until the
broker acknowledged every record (``flush``), then commit the batch's offsets.
Both use tidal's producer settings (idempotence, lz4, linger 5 ms, 1 MB batches).
MODE ``relay``: the latency floor of this broker and client: consume with
``fetch.wait.max.ms`` 5 and no wait to fill a batch, add the input's CreateTime to each JSON
record as ``source_timestamp`` (a bytes splice, no decoding) and produce at once (``linger.ms`` 1);
run until terminated (EVENTS is ignored).
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(bootstrap: str, source: str, sink: str, events: int, mode: str, stats_path: str) -> None:
    t_start = time.time()
    from confluent_kafka import Producer

    from benchlib.kafka import group_consumer
    from tidal.config import KafkaSettings
    from tidal.stream.worker import take_arrived

    settings = KafkaSettings.resolve(bootstrap)  # plus TIDAL_KAFKA_* / TIDAL_KAFKA_CONFIG (SASL, TLS)
    relay = mode == "relay"
    # fetch.queue.backoff.ms as tidal's worker sets it: with librdkafka's 1 s default a consumer
    # draining a backlog this fast runs its queue dry every second and waits (a limit, not a handicap).
    tuning = {"fetch.queue.backoff.ms": 10, **({"fetch.wait.max.ms": 5} if relay else {})}
    c = group_consumer(settings, f"passthrough-{uuid.uuid4().hex[:8]}", tuning)
    c.subscribe([source])
    p = Producer(settings.client_config({"enable.idempotence": True, "linger.ms": 1 if relay else 5,
                                         "batch.size": 1_000_000,
                                         "compression.type": "lz4", "queue.buffering.max.messages": 2_000_000,
                                         "queue.buffering.max.kbytes": 2_097_151, "log_level": 3}))
    if relay:
        import signal

        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while True:
            for m in take_arrived(c, 5000, 0.1):  # no wait to fill a batch
                if not m.error():
                    v = m.value()
                    p.produce(sink, b"%s,\"source_timestamp\":%d}" % (v[:-1], m.timestamp()[1]), m.key())
            p.poll(0)
    seen, first = 0, None
    produce = p.produce
    while seen < events:
        msgs = c.consume(5000, 0.05)
        if not msgs:
            continue
        first = first or time.time()
        for m in msgs:
            produce(sink, m.value(), m.key())
        if mode == "alo":
            p.flush(30)
            c.commit(asynchronous=True)
        else:
            p.poll(0)
        seen += len(msgs)
    p.flush(60)
    last = time.time()
    c.close()
    Path(stats_path).write_text(json.dumps({"events": seen, "started_at": t_start, "first_event_at": first,
                                            "last_event_at": last}))


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], a[2], int(a[3]), a[4], a[5])
