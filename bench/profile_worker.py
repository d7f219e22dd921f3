"""Profile one tidal worker draining the benchmark backlog (evidence for hot-path changes).

    python bench/profile_worker.py [--events 200000] [--profiler pyinstrument|cprofile|none] [--malformed 0.001]
                                   [--model-threads N]

Runs :class:`tidal.stream.Worker` in this process on an embedded broker with the suite's
events and model, under pyinstrument (default) or cProfile, and prints where the time goes,
and the worker's rate. ``--model-threads N`` makes LightGBM predict with N threads (a
monkeypatch inside this script only; tidal itself uses LightGBM's default), to measure what a
``num_threads`` option on the score step would change.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
os.environ.setdefault("TIDAL_HOME", tempfile.mkdtemp(prefix="tidal-bench-home-"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--profiler", default="pyinstrument", choices=["pyinstrument", "cprofile", "none"])
    ap.add_argument("--malformed", type=float, default=0.0)
    ap.add_argument("--max-batch", type=int, default=5000)
    ap.add_argument("--model-threads", type=int, default=None)
    ap.add_argument("--consumer", default="", help="extra consumer settings, e.g. max.partition.fetch.bytes=8388608")
    args = ap.parse_args()

    from benchlib.events import SCHEMA, make_events, train_model
    from benchlib.kafka import fill
    from tidal.broker import EmbeddedBroker, ensure_topics
    from tidal.config import KafkaSettings
    from tidal.models import ScoreStep, load_model
    from tidal.stream import Pipeline, Worker

    work = Path(tempfile.mkdtemp(prefix="tidal-profile-"))
    events = make_events(args.events, malformed_rate=args.malformed)
    model = train_model(events, work, n_train=min(50_000, args.events))
    with EmbeddedBroker() as broker:
        settings = KafkaSettings(broker.bootstrap)
        fill(settings, "prof.events", events.keys, events.values)
        name = f"prof{uuid.uuid4().hex[:6]}"
        loaded = load_model(model["artifact"])
        if args.model_threads:
            import functools

            loaded.model.predict = functools.partial(loaded.model.predict, num_threads=args.model_threads)
        p = Pipeline(name, sources=["prof.events"], schema=SCHEMA, steps=[ScoreStep(loaded)], max_batch=args.max_batch,
                     consumer_config=dict(kv.split("=", 1) for kv in args.consumer.split(",") if kv))
        ensure_topics(settings, p.topic_specs())
        w = Worker(p, settings)
        n = len(events)
        from benchlib.machine import cpu_seconds, thread_cpu_seconds

        first: dict = {}

        def on_batch(w, _b) -> None:
            if not first:  # CPU counters at the first batch: the steady part of the run starts here
                first.update(threads=thread_cpu_seconds(), broker=cpu_seconds(broker.process.pid), t=time.time())
            if w.stats.events_in >= n:
                first.update(threads_end=thread_cpu_seconds(), broker_end=cpu_seconds(broker.process.pid),
                             t_end=time.time())
                w.stop()

        w.on_batch = on_batch
        profiler = None
        if args.profiler == "pyinstrument":
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0005)
            profiler.start()
        elif args.profiler == "cprofile":
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        t0 = time.time()
        stats = w.run()
        wall = time.time() - t0
        if args.profiler == "pyinstrument":
            profiler.stop()
            print(profiler.output_text(unicode=True, color=False, show_all=False))
        elif args.profiler == "cprofile":
            import pstats

            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        span = stats.last_event_at - stats.first_event_at
        print(f"events {stats.events_in:,} in {span:.2f}s after the first batch: {stats.events_in / span:,.0f} events/s "
              f"(busy {stats.busy_s:.2f}s of it in _process; start-up {stats.first_event_at - t0:.1f}s; wall {wall:.1f}s)")
        print(f"batches {stats.batches}, mean batch {stats.events_in / max(1, stats.batches):,.0f}")
        if "t_end" in first:  # where the machine's two (or more) cores went between the first and last batch
            dt = first["t_end"] - first["t"]
            cores = {k: (v - first["threads"].get(k, 0.0)) / dt for k, v in first["threads_end"].items()}
            busy = {k: round(v, 2) for k, v in sorted(cores.items(), key=lambda kv: -kv[1]) if v >= 0.01}
            m0, b0 = first["broker"]
            m1, b1 = first["broker_end"]
            print(f"cores busy: this worker by thread {busy}; broker {(b1 - b0) / dt:.2f}; "
                  f"whole machine {(m1 - m0) / dt:.2f} of {os.cpu_count()}")


if __name__ == "__main__":
    main()
