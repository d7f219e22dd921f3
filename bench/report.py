"""bench/README.md's results section, generated from one results file (no number typed by hand).

    python bench/report.py [bench/results/<date>.json]    # default: the newest full-run file

Rewrites the part of bench/README.md between the ``<!-- results:begin -->`` and
``<!-- results:end -->`` markers and prints it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
README = BENCH / "README.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def _n(x, digits: int = 0) -> str:
    if x is None:
        return "—"
    return f"{x:,.{digits}f}"


def _pct(x) -> str:
    return "—" if x is None else f"{x:.0%}"


def _knobs(k: dict) -> str:
    from scenarios.latency import fetch_wait

    return f"{k['max_batch']} / {k['max_wait_ms']} / {k['linger_ms']} / {fetch_wait(k)}"


def render(doc: dict, path: Path) -> str:
    res = doc["results"]
    m = doc["machine"]
    rel = path.relative_to(BENCH) if path.is_relative_to(BENCH) else path
    out = [f"### Latest {doc['mode']} run: {doc['date']} (`{rel}`, `{doc.get('command', 'python bench/run.py')}`)", ""]
    out.append(f"{m['cores']} cores ({m['cpu']}), {m['memory_gb']} GB, {m['platform']}, Python {m['python']}, "
               f"librdkafka {m['librdkafka']}; {m['broker']}. Load average at start {m['load_average_at_start']}, "
               f"at end {m.get('load_average_at_end')} (the machine is shared: other work ran alongside). "
               f"{doc['events']:,} events; {doc['event_format']}; model: {doc['model']}. "
               f"The whole suite took {doc['duration_s']:,.0f} s.")
    out += ["", "#### Scoring throughput (steady state)", "",
            "| system | events/s | tidal 1 worker ÷ this | start-up (s) | runs (events/s) |", "|---|---:|---:|---:|---|"]
    for r in res:
        if not r.get("scenario", "").startswith("throughput"):
            continue
        ratio = r.get("ratio_to_tidal")
        inv = f"{1 / ratio:,.2f}×" if ratio else "—"
        runs = ", ".join(f"{x:,}" for x in r.get("runs", [])) if r.get("runs") else ""
        rate = _n(r.get("events_per_s")) if r.get("events_per_s") else (r.get("notes") or "—")
        out.append(f"| {r['label']} | {rate} | {inv} | {_n(r.get('startup_s'), 1)} | {runs} |")
    out += ["", "#### Floors from the issue", "", "| floor | measured | needed | met? |", "|---|---:|---:|---|"]
    for f in doc.get("floors", []):
        met = "n/a" if f["met"] is None else "**yes**" if f["met"] else "**no**"
        out.append(f"| {f['floor']} | {_n(f['value'], 2)} | {f['need']} | {met} |")
    lat = [r for r in res if r.get("scenario") == "latency" and r.get("knobs")]
    if lat:
        out += ["", "#### Latency: event produced → prediction consumed (tidal, 1 worker)", "",
                "Knobs: max_batch / max_wait_ms / producer linger.ms / consumer fetch.wait.max.ms; then the "
                "partitions of the input and output topics (each setting runs on a fresh embedded broker). "
                "One partition is enough for these loads on one worker; the 4-partition rows show what more "
                "partitions cost on this broker, whose work per fetch grows with the batches stored in the "
                "partitions fetched (`bench/broker_drift.py`). "
                "\"max\" offers events as fast as one Python producer can, so its latency includes the queue that builds up.",
                "The relay row is the floor under any consumer → producer process on this broker and machine: "
                "consume, splice the timestamp into the bytes, produce at once (no decoding, no model, no commits). "
                "The worker columns come from its own Prometheus metrics over the phase: mean events per batch, "
                "ms per batch (decode → delivered), and the share of the phase it spent inside batches. "
                f"The last two columns are CPU cores kept busy during the phase (of {doc.get('machine', {}).get('cores', '?')}): "
                "the broker's own, and the whole machine's (broker, pacer, worker and tracker together).",
                "", "| knobs | offered | achieved output events/s | p50 ms | p95 ms | p99 ms | p99 to prediction produced (ms) "
                "| worker: mean batch | ms/batch | busy | broker cores | machine cores |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in lat:
            offered = "max" if not r.get("offered_per_s") else f"{r['offered_per_s']:,}/s"
            if not r.get("offered_per_s") and r.get("achieved_offered_per_s"):
                offered += f" ({r['achieved_offered_per_s']:,.0f}/s)"
            who = _knobs(r["knobs"]) if r.get("system", "tidal") == "tidal" else f"**{r['system']}** (floor: no tidal)"
            if r.get("partitions"):
                from scenarios.latency import partitions_text

                who += f"; {partitions_text(r['partitions'])}"
            out.append(f"| {who} | {offered} | {_n(r.get('events_per_s'))} | {_n(r.get('p50_ms'), 1)} | "
                       f"{_n(r.get('p95_ms'), 1)} | {_n(r.get('p99_ms'), 1)} | {_n(r.get('produced_p99_ms'), 1)} | "
                       f"{_n(r.get('worker_mean_batch'))} | {_n(r.get('worker_ms_per_batch'), 1)} | "
                       f"{_pct(r.get('worker_busy_fraction'))} | {_n(r.get('broker_cores_busy'), 2)} | "
                       f"{_n(r.get('machine_cores_busy'), 2)} |")
    t1 = next((r for r in res if r.get("system") == "tidal" and r.get("scenario") == "throughput" and r.get("workers") == 1), None)
    t2 = next((r for r in res if r.get("system") == "tidal" and r.get("scenario") == "throughput" and r.get("workers") == 2), None)
    mb = sorted([r for r in res if r.get("scenario") == "max_batch"], key=lambda r: r["max_batch"])
    if mb or t1:
        rows = [(r["max_batch"], r.get("events_per_s"), r.get("peak_rss_mb_per_worker")) for r in mb]
        if t1:
            rows.append((5000, t1.get("events_per_s"), t1.get("peak_rss_mb_per_worker")))
        out += ["", "#### Scaling: events/s vs max_batch (tidal, 1 worker, max_wait_ms 50)", "",
                "| max_batch | events/s | peak RSS (MB) |", "|---:|---:|---:|"]
        for b, rate, rss in sorted(rows):
            out.append(f"| {b:,} | {_n(rate)} | {_n(max(rss), 0) if rss else '—'} |")
    if t1 or t2:
        out += ["", "#### Scaling: 1 → 2 worker processes (`tidal run --workers 2`, one consumer group)", "",
                "| workers | events/s (total) | events/s per worker (own counts) | events per worker | peak RSS per worker (MB) |",
                "|---:|---:|---|---|---|"]
        for r in (t1, t2):
            if r:
                out.append(f"| {r['workers']} | {_n(r.get('events_per_s'))} | "
                           f"{', '.join(_n(x) for x in r.get('per_worker_events_per_s') or [])} | "
                           f"{', '.join(_n(x) for x in r.get('per_worker_events') or [])} | "
                           f"{', '.join(_n(x) for x in r.get('peak_rss_mb_per_worker') or [])} |")
    rss = [r for r in res if r.get("scenario") == "rss_vs_keys"]
    if rss or (t1 and t1.get("distinct_keys")):
        rows = [(r["distinct_keys"], r.get("peak_rss_mb"), r.get("events_in"), r.get("events_per_s")) for r in rss]
        if t1 and t1.get("distinct_keys"):
            rows.append((t1["distinct_keys"], max(t1.get("peak_rss_mb_per_worker") or [0]) or None, t1.get("events_in"),
                         t1.get("events_per_s")))
        out += ["", "#### Memory per worker vs distinct keys (no state layer yet: RSS of a stateless scoring worker)", "",
                "| distinct keys | events | peak RSS (MB) | events/s |", "|---:|---:|---:|---:|"]
        for k, r_mb, ev, rate in sorted(rows):
            out.append(f"| {k:,} | {_n(ev)} | {_n(r_mb, 1)} | {_n(rate)} |")
    onl = [r for r in res if r.get("scenario") == "online"]
    if onl:
        out += ["", "#### ML cost: online learning (River, predict_proba_one + learn_one per event)", "",
                "| system | events/s | start-up (s) |", "|---|---:|---:|"]
        for r in onl:
            out.append(f"| {r['label']} | {_n(r.get('events_per_s'))} | {_n(r.get('startup_s'), 1)} |")
    out += mlops(res, path.parent)
    out += state_recovery(path.parent)
    out += _others(path.parent)
    charts = [c for c in (path.with_name(f"{path.stem}-{k}.png") for k in ("throughput", "latency", "scaling", "online"))
              if c.exists()]
    if charts:
        out += ["", "#### Charts", ""]
        for c in charts:
            out.append(f"![{c.stem}]({c.relative_to(BENCH) if c.is_relative_to(BENCH) else c})")
    return "\n".join(out) + "\n"


def _rel(p: Path) -> Path:
    return p.relative_to(BENCH) if p.is_relative_to(BENCH) else p


def _kind(path: Path) -> str:
    """What a results file holds: its name after the date (``2026-12-03-broker-drift`` → ``broker-drift``)."""
    return path.stem[len("2026-12-03-"):]


def _measured(r: dict | None) -> bool:
    """A row this run measured (or tried to): not absent, not an old results file's placeholder."""
    return bool(r) and not str(r.get("status", "")).startswith("pending")


def _ms(x) -> str:
    return _n(x, 0) if x is None or x >= 10 else _n(x, 1)


def mlops(res: list[dict], folder: Path) -> list[str]:
    """Hot-swap and drift-detection delay: this run's ``hotswap`` / ``drift`` rows, or the scripts' own files."""
    out = ["", "#### ML operations: hot-swap and drift-detection delay", ""]
    swap = next((r for r in res if r.get("scenario") == "hot_swap"), None)
    drift = next((r for r in res if r.get("scenario") == "drift_delay"), None)
    if _measured(swap) and swap.get("status"):
        out.append(f"- **hot-swap** ({swap['label']}): {swap['status']}")
    elif _measured(swap):
        out += [f"Hot-swap (`bench/scenarios/mlops.py` → `bench/hotswap_bench.py`): {swap['workers']} in-process "
                f"workers (one consumer group, max_batch {swap.get('max_batch', '?')}, max_wait_ms "
                f"{swap.get('max_wait_ms', '?')}) score a stream offered at {swap['offered_per_s']:,} events/s with a "
                "`DeployedScoreStep`; the registry promotes v2 (a deployment record on `tidal.models`) once both have "
                "scored with v1 for a while. Times are from the promotion; events/s are output records per second "
                "(their CreateTime) in the second before the promotion, from the promotion until every worker scored "
                "with v2 (at least 200 ms), and in the second after that.", "",
                "| workers | offered | → first worker scoring v2 (ms) | → every worker (ms) | → first v2 output (ms) "
                "| → last v1 output (ms) | events/s before | during (window) | after | lowest 100 ms bucket (events/s) |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
                f"| {swap['workers']} | {swap['offered_per_s']:,}/s | {_ms(swap['promotion_to_first_worker_v2_ms'])} | "
                f"{_ms(swap['promotion_to_all_workers_v2_ms'])} | {_ms(swap['promotion_to_first_v2_output_ms'])} | "
                f"{_ms(swap['promotion_to_last_v1_output_ms'])} | {_n(swap['events_per_s_before'])} | "
                f"{_n(swap['events_per_s_during'])} ({_ms(swap['during_window_ms'])} ms) | "
                f"{_n(swap['events_per_s_after'])} | {_n(swap.get('min_100ms_bucket_around_swap'))} |", ""]
    else:
        out.append(_file_hotswap(folder))
    if _measured(drift) and drift.get("status"):
        out.append(f"- **drift-detection delay** ({drift['label']}): {drift['status']}")
    elif _measured(drift):
        before, after = drift["error_rate"]
        out += [f"Drift-detection delay (`bench/scenarios/mlops.py` → `bench/drift_bench.py`): one in-process worker "
                f"with `DriftStep` (tidal's defaults: {drift['detector']}) reads {drift['events']:,} scored, labelled "
                f"events offered at {drift['offered_per_s']:,} events/s on one partition; from event "
                f"{drift['change_at']:,} the model's error rate goes {before} → {after} and {drift['data_shift']}. "
                "Delay: from the first drifted event to the event the alarm fired on (events) and from its produce() "
                "to the alarm being raised (seconds); false alarms: alarms that fired on an event before the change. "
                "The offline row runs the same concept-drift detector without Kafka over many seeds.", "",
                "| alarm | delay (events) | delay (s) | false alarms before the change |", "|---|---:|---:|---:|",
                f"| concept drift (errors rose) | {_n(drift['concept_delay_events'])} | {_n(drift['concept_delay_s'], 3)} "
                f"| {drift['concept_false_alarms_before']} |",
                f"| data drift (dataset) | {_n(drift['data_delay_events'])} | {_n(drift['data_delay_s'], 3)} "
                f"| {drift['data_false_alarms_before']} |",
                f"| concept drift, offline: median over {drift['offline_seeds']} seeds "
                f"({drift['offline_detected']} detected) | {_n(drift['offline_median_delay_events'])} | — | "
                f"{drift['stationary_false_alarms_per_100k']:g} per 100k on {drift['stationary_events']:,} stationary "
                "events |", ""]
    else:
        out.append(_file_drift(folder))
    return out


def _newest(folder: Path, kind: str) -> tuple[Path, dict] | None:
    files = sorted(folder.glob(f"20*-{kind}.json"))
    if not files:
        return None
    try:
        return files[-1], json.loads(files[-1].read_text())
    except (OSError, ValueError):
        return None


def state_recovery(folder: Path) -> list[str]:
    """Restoring large state: the newest ``features_bench.py`` and ``rebalance_bench.py`` files
    (their own scripts, not part of this suite's run), named as such."""
    out = ["", "#### State recovery (own scripts, not this run)", ""]
    for kind, label in (("features", "memory"), ("features-rocksdb", "RocksDB")):
        got = _newest(folder, kind)
        if got is None:
            continue
        f, d = got
        r = d.get("restore") or {}
        line = (f"- **restore, {label}** (`bench/features_bench.py`, `{_rel(f)}`): {_n(r.get('entries'))} changelog "
                f"entries in {_n(r.get('restore_s'), 2)} s ({_n(r.get('entries_per_s'))} entries/s)")
        if r.get("warm_tail") is not None:
            line += (f"; a warm restart from the local checkpoint replayed {_n(r.get('warm_replayed'))} records "
                     f"(the tail written since) in {_n(r.get('warm_restore_s'), 2)} s")
        out.append(line + ".")
    got = _newest(folder, "rebalance")
    if got is None:
        out.append("- **rebalance with large state**: not measured yet (`python bench/rebalance_bench.py`).")
        return out
    f, d = got
    two = d.get("two_restores") or []
    back = d.get("one_restore_of_returned") or {}
    joined = (f"restored its {_n(two[0].get('records'))} records in {_n(two[0].get('seconds'), 1)} s" if two else
              f"had not finished restoring its partitions after {_n(d.get('hold_s'), 0)} s, when it left (called off)")
    out.append(
        f"- **rebalance with {_n(d.get('keys'))} keys** (`bench/rebalance_bench.py`, `{_rel(f)}`), "
        f"{d.get('partitions')} partitions, {_n(d.get('rate'))} events/s offered throughout: worker one restored "
        f"them all in {_n((d.get('one_cold_restore') or {}).get('seconds'), 1)} s; a second worker joined and "
        f"{joined}; once it left, "
        f"worker one restored {_n(back.get('records'))} records in {_n(back.get('seconds'), 1)} s in the "
        f"background while processing {_n(d.get('kept_batches_during_background_restore'))} batches of the "
        f"partitions it kept. Longest pause on those partitions: {_n(d.get('kept_max_pause_s'), 2)} s; "
        f"{d.get('one_rebalances')} rebalance callbacks on worker one; {_n(d.get('events_sent'))} events sent, "
        f"{_n(d.get('lost'))} lost, {_n(d.get('repeated'))} repeated.")
    return out


def _file_hotswap(folder: Path) -> str:
    """No hotswap row in this results file: the newest ``bench/hotswap_bench.py`` file, named as such."""
    got = _newest(folder, "hotswap")
    if got is None:
        return "- **hot-swap**: not measured in this results file (`python bench/run.py --only hotswap`)."
    f, h = got
    src = f"not this run: `bench/hotswap_bench.py`, `{_rel(f)}`"
    per = h.get("promotion_to_first_v2_batch_s") or h.get("promotion_to_swap_s") or []
    buckets = h.get("events_per_s_100ms_buckets_around_swap") or []
    first = h.get("promotion_to_first_v2_output_s")
    return (f"- **hot-swap** ({src}): with {h.get('offered_events_per_s', 0):,} events/s offered to "
            f"{h.get('workers', 2)} workers, promotion → swap took "
            f"{', '.join(f'{x * 1000:,.0f}' for x in per if x is not None)} ms per worker"
            + (f", promotion → first output scored by the new version {first * 1000:,.0f} ms" if first is not None else "")
            + (f"; output events/s in 100 ms buckets around the swap stayed between {min(buckets):,} and "
               f"{max(buckets):,}" if buckets else "") + ".")


def _file_drift(folder: Path) -> str:
    drifts = sorted(p for p in folder.glob("20*-drift.json") if _kind(p) == "drift")  # not broker_drift.py's
    if not drifts:
        return "- **drift-detection delay**: not measured in this results file (`python bench/run.py --only drift`)."
    d = json.loads(drifts[-1].read_text())
    src = f"not this run: `bench/drift_bench.py`, `{_rel(drifts[-1])}`"
    try:
        concept = "; ".join(f"{r['stream']}: median {r['median_delay']:,.0f} events ({r['detected']}/{r['seeds']} seeds)"
                            for r in d["tidal_default_concept_delay"])
        alarms = max(r["false_alarms_per_100k"] for r in d["tidal_default_concept_false_alarms"])
        data = "; ".join(f"{r['change']}: " + (f"median {r['median_dataset_delay_rows']:,.0f} rows"
                                                if r.get("median_dataset_delay_rows") is not None else "not detected")
                         + f" ({r['dataset_detected']}/{r['seeds']} seeds)"
                         for r in d.get("data_drift_change_point", []))
        return (f"- **drift-detection delay** ({src}): tidal's default concept-drift detector, change at event "
                f"{d['change_at']:,}: {concept}; at most {alarms:g} false alarms per 100k events on stationary "
                f"streams. Data drift (dataset-level): {data}.")
    except (KeyError, TypeError, ValueError):
        return f"- **drift-detection delay**: see {src} (its format is not one this report knows)."


def _others(folder: Path) -> list[str]:
    """The other benchmarks' results files (not part of this suite's run)."""
    mine = ("quick", "smoke", "score", "features", "features-rocksdb", "rebalance")
    others = [p for p in sorted(folder.glob("20*-*-*-*.json"))
              if _kind(p) not in mine and not _kind(p).endswith(("partial", "external"))]
    if not others:
        return []
    return ["", "- other benchmarks with their own results files (not part of this suite's run): "
            + ", ".join(f"`{_rel(p)}`" for p in others) + "."]


def main(argv: list[str] | None = None) -> str:
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        path = Path(argv[0]).resolve()
    else:
        from plot import latest

        path = latest()
    doc = json.loads(path.read_text())
    block = render(doc, path)
    if doc.get("mode") != "full" or path.stem.endswith(("-partial", "-external")):
        print(block)  # bench/README.md shows whole full runs on the embedded broker only
        print(f"not written to {README}: {path.name} is not a whole full run on the embedded broker")
        return block
    text = README.read_text() if README.exists() else f"# tidal benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{BEGIN}\n{block}{END}{tail}")
    print(block)
    print(f"updated {README}")
    return block


if __name__ == "__main__":
    main()
