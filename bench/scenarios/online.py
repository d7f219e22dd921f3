"""ML cost: online learning events/s, River's own loop vs the same River model in a tidal step.

Both run River's prequential protocol (``predict_proba_one`` then ``learn_one``) on the same
labelled events with the same model (scaled numeric + one-hot categorical → logistic
regression, :mod:`scenarios.river_step`):

- **River's own loop, no Kafka**: over (x, y) pairs already parsed in memory — River's best
  case (its ``evaluate.progressive_val_score`` does the same);
- **tidal + River step**: a ``tidal run`` worker reads the events from Kafka, decodes and
  validates them, runs :class:`RiverLearnStep` on each micro-batch and produces the scored
  records.

Hot-swap time and drift-detection delay are the ``hotswap`` and ``drift`` scenarios
(:mod:`scenarios.mlops`).
"""

from __future__ import annotations

import time

import orjson

from benchlib.context import Ctx
from benchlib.events import FEATURES, LABELLED_SCHEMA_DICT, make_events
from benchlib.kafka import delete_topics, fill
from scenarios.river_step import river_loop


def run(ctx: Ctx) -> None:
    if not ctx.wants("online"):
        return
    n = ctx.sizes.online_events
    ev = make_events(n, seed=5, with_label=True)
    records = [orjson.loads(v) for v in ev.values]
    xs = [{f: r[f] for f in FEATURES} for r in records]
    ys = [bool(r["label"]) for r in records]
    river_loop(xs[:1000], ys[:1000])  # warm-up: River's first calls pay one-off costs
    t0 = time.perf_counter()
    river_loop(xs, ys)
    rate = n / (time.perf_counter() - t0)
    ctx.add(system="river", scenario="online", label="River's own loop (predict_proba_one + learn_one), no Kafka",
            events_per_s=rate, events=n)
    topic = ctx.fresh("labelled-")
    fill(ctx.settings, topic, ev.keys, ev.values)
    r = ctx.run_tidal(ctx.fresh("online"), topic, n, schema=LABELLED_SCHEMA_DICT,
                      steps=[{"python": "scenarios.river_step:RiverLearnStep"}])
    delete_topics(ctx.settings, [topic])
    ctx.add(system="tidal", scenario="online", workers=1,
            label="tidal, 1 worker + River step (learn_one per row, per batch)", **r)
