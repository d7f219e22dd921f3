"""Charts (PNG, matplotlib's Agg backend) from one results file.

    python bench/plot.py [bench/results/<date>.json]     # default: the newest full-run file

Writes next to the results file: <stem>-throughput.png, <stem>-latency.png, <stem>-scaling.png
and <stem>-online.png (each only when its scenario is in the file).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def latest(full_only: bool = True) -> Path:
    files = sorted(p for p in RESULTS.glob("20*.json") if not full_only or p.stem.count("-") == 2)
    if not files:
        raise SystemExit(f"no results in {RESULTS}; run python bench/run.py first")
    return files[-1]


def main(argv: list[str] | None = None) -> list[Path]:
    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0]) if argv else latest()
    doc = json.loads(path.read_text())
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed (pip install -r bench/requirements.txt): no charts")
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = doc["results"]
    written = []
    subtitle = f"{doc['date']} · {doc['mode']} run · {doc['machine']['cores']} cores · embedded broker, 4 partitions"

    def save(fig, name: str) -> None:
        out = path.with_name(f"{path.stem}-{name}.png")
        fig.savefig(out, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(out)

    thr = [r for r in res if r.get("scenario", "").startswith("throughput") and r.get("events_per_s")]
    if thr:
        thr = sorted(thr, key=lambda r: r["events_per_s"])
        fig, ax = plt.subplots(figsize=(9, 0.45 * len(thr) + 1.4))
        colors = ["#1f77b4" if r["system"] == "tidal" else "#999999" if r["system"] in ("passthrough", "passthrough-alo",
                  "model-only") else "#d62728" for r in thr]
        ax.barh([r["label"] for r in thr], [r["events_per_s"] for r in thr], color=colors)
        ax.set_xscale("log")
        ax.set_xlabel("events/s (log scale)")
        for i, r in enumerate(thr):
            ratio = r.get("ratio_to_tidal")
            ax.text(r["events_per_s"] * 1.08, i, f"{r['events_per_s']:,.0f}" + (f"  ({ratio:.3g}× tidal)" if ratio else ""),
                    va="center", fontsize=8)
        ax.set_xlim(right=max(r["events_per_s"] for r in thr) * 20)
        ax.set_title(f"Scoring throughput (steady state)\n{subtitle}", fontsize=10)
        save(fig, "throughput")

    lat = [r for r in res if r.get("scenario") == "latency" and r.get("p99_ms") is not None]
    if lat:
        configs: dict[str, list[dict]] = {}
        for r in lat:
            label = _knob_text(r["knobs"]) if r.get("system", "tidal") == "tidal" else f"{r['system']} (floor)"
            if r.get("partitions"):
                label += f", {r['partitions']}p"
            configs.setdefault(label, []).append(r)
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), sharey=True)
        rates = sorted({r["offered_per_s"] or 10**9 for r in lat})
        names = {x: ("max" if x == 10**9 else f"{x:,}/s") for x in rates}
        for ax, (key, title) in zip(axes, (("p50_ms", "p50"), ("p99_ms", "p99"))):
            for label, rows in configs.items():
                rows = sorted(rows, key=lambda r: r["offered_per_s"] or 10**9)
                xs = [rates.index(r["offered_per_s"] or 10**9) for r in rows]
                ax.plot(xs, [r[key] for r in rows], marker="o", label=label)
            ax.axhline(50, color="#d62728", lw=0.8, ls="--")
            ax.set_xticks(range(len(rates)), [names[x] for x in rates])
            ax.set_yscale("log")
            ax.set_xlabel("offered load")
            ax.set_title(f"{title}: event produced → prediction consumed", fontsize=10)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("ms (log scale); dashed: 50 ms")
        fig.legend(*axes[1].get_legend_handles_labels(), fontsize=7, loc="lower center", ncol=2,
                   bbox_to_anchor=(0.5, -0.02 - 0.035 * ((len(configs) + 1) // 2)))
        parts = sorted({r.get("partitions", 4) for r in lat})
        where = subtitle.replace("4 partitions", "topics of " + " or ".join(f"{p}" for p in parts) + " partition(s), "
                                 "a fresh broker per setting (1p / 4p in the legend)")
        fig.suptitle(f"tidal end-to-end latency vs offered load, by batching knobs\n{where}", fontsize=10)
        fig.tight_layout(rect=(0, 0, 1, 0.93))
        save(fig, "latency")

    mb = sorted([r for r in res if r.get("scenario") == "max_batch" and r.get("events_per_s")], key=lambda r: r["max_batch"])
    t1 = next((r for r in res if r.get("system") == "tidal" and r.get("scenario") == "throughput" and r.get("workers") == 1), None)
    t2 = next((r for r in res if r.get("system") == "tidal" and r.get("scenario") == "throughput" and r.get("workers") == 2), None)
    rss = [r for r in res if r.get("scenario") == "rss_vs_keys" and r.get("peak_rss_mb")]
    if t1 and t1.get("distinct_keys") and t1.get("peak_rss_mb_per_worker"):
        rss.append({"distinct_keys": t1["distinct_keys"], "peak_rss_mb": max(t1["peak_rss_mb_per_worker"])})
    rss.sort(key=lambda r: r["distinct_keys"])
    if mb or t2 or rss:
        fig, axes = plt.subplots(1, 3, figsize=(14, 4))
        points = [(r["max_batch"], r["events_per_s"]) for r in mb]
        if t1 and t1.get("events_per_s"):
            points.append((5000, t1["events_per_s"]))
        points.sort()
        if points:
            axes[0].plot([p[0] for p in points], [p[1] for p in points], marker="o")
            axes[0].set_xscale("log")
        axes[0].set_xlabel("max_batch (log scale)")
        axes[0].set_ylabel("events/s")
        axes[0].set_title("tidal, 1 worker: events/s vs max_batch", fontsize=10)
        axes[0].grid(alpha=0.3)
        bars = []
        if t1 and t1.get("events_per_s"):
            bars.append(("1 worker", t1["events_per_s"]))
        if t2 and t2.get("events_per_s"):
            bars.append(("2 workers (total)", t2["events_per_s"]))
            for i, w in enumerate(t2.get("per_worker_events_per_s") or []):
                bars.append((f"2 workers: #{i}", w))
        if bars:
            axes[1].bar([b[0] for b in bars], [b[1] for b in bars], color=["#1f77b4"] + ["#ff7f0e"] * (len(bars) - 1))
            for i, b in enumerate(bars):
                axes[1].text(i, b[1], f"{b[1]:,.0f}", ha="center", va="bottom", fontsize=8)
        axes[1].set_title("events/s: 1 → 2 worker processes", fontsize=10)
        axes[1].tick_params(axis="x", labelsize=8)
        if rss:
            axes[2].plot([r["distinct_keys"] for r in rss], [r["peak_rss_mb"] for r in rss], marker="o")
            axes[2].set_xscale("log")
            axes[2].set_ylim(bottom=0)
        axes[2].set_xlabel("distinct keys in the stream (log scale)")
        axes[2].set_ylabel("peak RSS per worker, MB")
        axes[2].set_title("memory per worker vs keys (no state layer yet)", fontsize=10)
        axes[2].grid(alpha=0.3)
        fig.suptitle(f"Scaling · {subtitle}", fontsize=10)
        fig.tight_layout()
        save(fig, "scaling")

    onl = [r for r in res if r.get("scenario") == "online" and r.get("events_per_s")]
    if onl:
        fig, ax = plt.subplots(figsize=(8, 2.2))
        ax.barh([r["label"] for r in onl], [r["events_per_s"] for r in onl], color=["#999999", "#1f77b4"][:len(onl)])
        for i, r in enumerate(onl):
            ax.text(r["events_per_s"], i, f" {r['events_per_s']:,.0f}", va="center", fontsize=8)
        ax.set_xlabel("events/s")
        ax.set_xlim(right=max(r["events_per_s"] for r in onl) * 1.25)
        ax.set_title(f"Online learning (River, test-then-train)\n{subtitle}", fontsize=10)
        save(fig, "online")
    for w in written:
        print(f"chart {w}")
    return written


def _knob_text(knobs: dict) -> str:
    from scenarios.latency import fetch_wait

    return (f"max_batch {knobs['max_batch']}, max_wait {knobs['max_wait_ms']} ms, linger {knobs['linger_ms']} ms, "
            f"fetch.wait {fetch_wait(knobs)} ms")


if __name__ == "__main__":
    main()
