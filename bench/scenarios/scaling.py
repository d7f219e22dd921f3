"""Scaling: events/s as max_batch grows, 1 → 2 workers, and peak RSS per worker as keys grow.

- ``max_batch`` sweep: one tidal worker drains the main backlog at each setting
  (max_wait_ms at its default, 0); max_batch 5000 is the 1-worker throughput run.
- workers 1 → 2: the two throughput runs (``tidal run --workers 2``: two processes, one group).
- RSS vs keys: tidal has no state layer yet, so "state" cannot grow; what is measured is a
  worker's peak RSS (VmHWM) while it scores streams with more and more distinct keys
  (``card_id``, also the Kafka key). When windowed state lands, this is where it shows.
"""

from __future__ import annotations

import re

from benchlib.context import Ctx
from benchlib.kafka import delete_topics, fill

_CARD = re.compile(rb'"card_id":"card-\d+"')


def run(ctx: Ctx) -> None:
    n = len(ctx.events)
    if ctx.wants("max_batch"):
        for mb in ctx.sizes.max_batches:
            r = ctx.run_tidal(ctx.fresh(f"mb{mb}-"), ctx.topic, n, max_batch=mb)
            ctx.add(system="tidal", scenario="max_batch", workers=1, max_batch=mb,
                    label=f"tidal, 1 worker, max_batch={mb}", **r)
    if ctx.wants("rss_keys"):
        import numpy as np

        m = min(ctx.sizes.rss_events, n)
        for keys in ctx.sizes.rss_keys:
            ids = np.random.default_rng(keys).integers(0, keys, m).tolist()
            new_keys = [b"card-%d" % i for i in ids]
            values = [_CARD.sub(b'"card_id":"' + k + b'"', v, count=1) for k, v in zip(new_keys, ctx.events.values[:m])]
            topic = ctx.fresh(f"keys{keys}-")
            fill(ctx.settings, topic, new_keys, values)
            r = ctx.run_tidal(ctx.fresh(f"rss{keys}-"), topic, m)
            delete_topics(ctx.settings, [topic])
            ctx.add(system="tidal", scenario="rss_vs_keys", workers=1, distinct_keys=len(set(ids)),
                    label=f"tidal, 1 worker, {len(set(ids)):,} distinct keys in {m:,} events",
                    peak_rss_mb=max(r["peak_rss_mb_per_worker"] or [0]) or None, **r)
