"""ML operations: hot-swap time and drift-detection delay, measured under a live stream.

- **hot-swap** (``hotswap``; :func:`hotswap_bench.measure`): two in-process workers (one
  consumer group) score a paced stream with a ``DeployedScoreStep`` following ``tidal.models``;
  once both score with v1, the registry promotes v2 (a deployment record on ``tidal.models``).
  Measured: promotion → each worker's first micro-batch scored by v2 (the first and the last
  worker), → the first output carrying v2 and the last one still carrying v1, and output events/s
  in the second before the promotion, from the promotion until every worker is on v2 (at least
  200 ms), and in the second after.
- **drift-detection delay** (``drift``; :func:`drift_bench.measure_in_worker`): one in-process
  worker with ``DriftStep`` (tidal's defaults) reads a paced stream of scored, labelled events;
  at a known event the error rate rises 0.1 → 0.3 and 6 of the 10 numeric features shift by
  0.5σ. Measured: events and seconds from the first drifted event to the concept-drift and the
  data-drift alarm on the alerts topic, and the alarms raised before the change (false alarms).
  Next to it, the same detector offline over many seeds (median delay) and its false alarms on
  stationary error streams (``drift_bench``'s own functions), so one streamed run's delay can be
  read against the spread.

A scenario that fails adds its row with ``status: "error: ..."`` and the suite goes on.
"""

from __future__ import annotations

import traceback

from benchlib.context import Ctx
from benchlib.kafka import delete_topics


def _r(x, digits: int = 3):
    return None if x is None else round(float(x), digits)


def _error(ctx: Ctx, scenario: str, label: str, exc: BaseException) -> None:
    with open(ctx.log, "a") as f:
        f.write(f"--- {scenario} failed\n{traceback.format_exc()}\n")
    ctx.add(system="tidal", scenario=scenario, label=label, events_per_s=None,
            status=f"error: {type(exc).__name__}: {exc}"[:300])


def run(ctx: Ctx) -> None:
    if ctx.wants("hotswap"):
        hotswap(ctx)
    if ctx.wants("drift"):
        drift(ctx)


def hotswap(ctx: Ctx) -> None:
    import hotswap_bench

    s = ctx.sizes
    label = f"hot-swap: promotion → {s.hotswap_workers} workers scoring v2, {s.hotswap_rate:,} events/s offered"
    try:
        h = hotswap_bench.measure(ctx.settings, rate=s.hotswap_rate, seconds=s.hotswap_s, workers=s.hotswap_workers,
                                  name=ctx.fresh("hotswap-"), log=lambda m: print(f"  hotswap: {m}", flush=True))
    except Exception as exc:  # noqa: BLE001 - the row says why
        _error(ctx, "hot_swap", label, exc)
        return
    delete_topics(ctx.settings, h.pop("topics"))
    ctx.add(system="tidal", scenario="hot_swap", label=label, events_per_s=None,
            workers=h["workers"], offered_per_s=h["offered_events_per_s"], outputs=h["outputs"],
            events_offered=h["events_offered"], max_batch=h["max_batch"], max_wait_ms=h["max_wait_ms"],
            promotion_to_first_worker_v2_ms=_r(h["promotion_to_first_worker_v2_s"] and h["promotion_to_first_worker_v2_s"] * 1000, 1),
            promotion_to_all_workers_v2_ms=_r(h["promotion_to_all_workers_v2_s"] and h["promotion_to_all_workers_v2_s"] * 1000, 1),
            promotion_to_first_v2_output_ms=_r(h["promotion_to_first_v2_output_s"] and h["promotion_to_first_v2_output_s"] * 1000, 1),
            promotion_to_last_v1_output_ms=_r(h["promotion_to_last_v1_output_s"] and h["promotion_to_last_v1_output_s"] * 1000, 1),
            promotion_to_applied_ms=[_r(x * 1000, 1) if x is not None else None for x in h["promotion_to_applied_s"]],
            promotion_to_first_v2_batch_ms=[_r(x * 1000, 1) if x is not None else None
                                            for x in h["promotion_to_first_v2_batch_s"]],
            events_per_s_before=_r(h["events_per_s_before"], 0), events_per_s_during=_r(h["events_per_s_during"], 0),
            during_window_ms=_r(h["during_window_s"] * 1000, 1), events_per_s_after=_r(h["events_per_s_after"], 0),
            events_per_s_100ms_buckets_around_swap=h["events_per_s_100ms_buckets_around_swap"],
            min_100ms_bucket_around_swap=h["min_bucket_around_swap"])
    print(f"    promotion → first worker on v2 {ctx.results[-1]['promotion_to_first_worker_v2_ms']} ms, all "
          f"{ctx.results[-1]['promotion_to_all_workers_v2_ms']} ms; events/s before / during / after "
          f"{ctx.results[-1]['events_per_s_before']} / {ctx.results[-1]['events_per_s_during']} / "
          f"{ctx.results[-1]['events_per_s_after']}", flush=True)


def drift(ctx: Ctx) -> None:
    import drift_bench

    s = ctx.sizes
    label = (f"drift-detection delay: DriftStep defaults, 1 worker, change at event {s.drift_change_at:,} "
             f"of {s.drift_events:,}, {s.drift_rate:,} events/s offered")
    try:
        d = drift_bench.measure_in_worker(ctx.settings, rate=s.drift_rate, events=s.drift_events,
                                          change_at=s.drift_change_at, name=ctx.fresh("drift-"),
                                          log=lambda m: print(f"  drift: {m}", flush=True))
        before, after = d["error_rate"]
        offline = next(r for r in drift_bench._tidal_default_delay(s.drift_seeds)
                       if r["stream"] == f"error rate {before} → {after}")
        stationary = drift_bench._tidal_default(100_000, max(1, s.drift_seeds // 5))
    except Exception as exc:  # noqa: BLE001 - the row says why
        _error(ctx, "drift_delay", label, exc)
        return
    delete_topics(ctx.settings, d.pop("topics"))
    c, x = d["concept_drift"], d["data_drift"]
    ctx.add(system="tidal", scenario="drift_delay", label=label, events_per_s=None,
            offered_per_s=d["offered_events_per_s"], events=d["events"], events_in=d["events_in"],
            change_at=d["change_at"], error_rate=d["error_rate"], data_shift=d["data_shift"], detector=d["detector"],
            concept_delay_events=c["delay_events"], concept_delay_s=_r(c["delay_s"]),
            concept_false_alarms_before=c["false_alarms_before_change"],
            data_delay_events=x["delay_events"], data_delay_s=_r(x["delay_s"]),
            data_false_alarms_before=x["false_alarms_before_change"],
            concept_drift=c, data_drift=x, alerts=d["alerts"],
            offline_seeds=offline["seeds"], offline_detected=offline["detected"],
            offline_median_delay_events=offline["median_delay"],
            stationary_false_alarms_per_100k=max(r["false_alarms_per_100k"] for r in stationary),
            stationary_events=sum(r["events"] for r in stationary))
    print(f"    concept drift: alarm {c['delay_events']} events / {_r(c['delay_s'])} s after the change "
          f"({c['false_alarms_before_change']} false alarms before); data drift: {x['delay_events']} events / "
          f"{_r(x['delay_s'])} s ({x['false_alarms_before_change']} before); offline median "
          f"{offline['median_delay']} events over {offline['seeds']} seeds", flush=True)
