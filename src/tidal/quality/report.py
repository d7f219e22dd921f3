"""``tidal quality report <pipeline>``: the latest profile from ``<pipeline>.quality``, as a table, HTML and PNG.

The topic holds one record per publish per worker; the report takes each worker's newest
record (workers silent for longer than the window are left out), merges their profiles
exactly (sketches, HyperLogLog registers, moments) and adds up their counts.
"""

from __future__ import annotations

import base64
import html

import time
from pathlib import Path
from typing import Any

import orjson

from tidal.quality.profile import FieldProfile, merge_profiles

__all__ = ["latest_report", "combine", "print_report", "write_html", "write_png"]


def latest_report(settings: Any, pipeline: str, timeout: float = 10.0) -> dict[str, Any] | None:
    """Read ``<pipeline>.quality`` to its end; the combined latest profile (None if there is none)."""
    from tidal.broker.read import read_topic

    latest: dict[str, dict] = {}
    for m in read_topic(settings, f"{pipeline}.quality", timeout):
        rec = orjson.loads(m.value())
        latest[rec.get("worker", "")] = rec
    return combine(list(latest.values())) if latest else None


def combine(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge the newest records of several workers into one report."""
    newest = max(r["time"] for r in records)
    live = [r for r in records if r["time"] >= newest - max(r.get("window_s", 300.0), 60.0)]
    fields = merge_profiles([{n: FieldProfile.from_dict(f) for n, f in r["fields"].items()} for r in live])
    counts: dict[str, Any] = {"events_in": 0, "events_out": 0, "dlq": {}, "violations": {}, "dropped": {}}
    for r in live:
        c = r.get("counts") or {}
        counts["events_in"] += c.get("events_in", 0)
        counts["events_out"] += c.get("events_out", 0)
        for k in ("dlq", "violations", "dropped"):
            for name, n in (c.get(k) or {}).items():
                counts[k][name] = counts[k].get(name, 0) + n
    return {"pipeline": live[0].get("pipeline"), "time": newest, "workers": sorted(r.get("worker", "") for r in live),
            "window_s": live[0].get("window_s"), "fields": {n: f.summary() for n, f in sorted(fields.items())},
            "counts": counts}


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e6 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


_COLUMNS = ("field", "kind", "count", "missing", "min", "p50", "mean", "max", "std", "distinct", "top")


def _rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, f in report["fields"].items():
        top = ", ".join(f"{v} ({c})" for v, c in f.get("top", [])[:3])
        rows.append([name, f["kind"], _fmt(f["count"]), f"{f['missing_rate']:.2%}", _fmt(f.get("min")),
                     _fmt(f.get("p50")), _fmt(f.get("mean")), _fmt(f.get("max")), _fmt(f.get("std")),
                     _fmt(f["distinct"]), top])
    return rows


def print_report(report: dict[str, Any], console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(report["time"]))
    table = Table(*_COLUMNS, title=f"{report['pipeline']} — profile of the last {report['window_s']:.0f} s "
                                    f"({len(report['workers'])} worker(s), {when})")
    for row in _rows(report):
        table.add_row(*row)
    console.print(table)
    c = report["counts"]
    console.print(f"events in {c['events_in']:,} → out {c['events_out']:,}, DLQ {sum(c['dlq'].values()):,} "
                  f"{c['dlq']}, dropped {sum(c['dropped'].values()):,} {c['dropped']}")
    if c["violations"]:
        rules = Table("step", "field", "rule", "action", "records", title="quality rules (cumulative)")
        for key, n in sorted(c["violations"].items()):
            rules.add_row(*key.split("/", 3), f"{n:,}")
        console.print(rules)


def write_png(report: dict[str, Any], path: str | Path) -> Path:
    """Missing rates, numeric distributions (quantile sketches) and top categories, one panel per field."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fields = report["fields"]
    n = len(fields) + 1
    cols = 3
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    ax = axes[0][0]
    names = list(fields)
    ax.barh(names, [fields[k]["missing_rate"] * 100 for k in names], color="#c0504d")
    ax.set_title("missing (%)")
    ax.set_xlim(0, max(1.0, max([fields[k]["missing_rate"] * 110 for k in names] or [0])))
    ax.invert_yaxis()
    for i, (name, f) in enumerate(fields.items(), start=1):
        ax = axes[i // cols][i % cols]
        if f["kind"] == "numeric":
            qs = [k for k in ("p01", "p25", "p50", "p75", "p90", "p99") if f.get(k) is not None]
            vals = [f[k] for k in qs]
            ax.plot(qs, vals, marker="o", color="#4f81bd")
            if vals and min(vals) > 0 and max(vals) > 100 * min(vals):
                ax.set_yscale("log")
            ax.set_title(f"{name}: quantiles (mean {_fmt(f.get('mean'))})")
        else:
            top = f.get("top", [])[:8]
            ax.barh([str(v)[:20] for v, _ in top], [c for _, c in top], color="#9bbb59")
            ax.invert_yaxis()
            ax.set_title(f"{name}: top values ({f['distinct']} distinct)")
        ax.tick_params(labelsize=7)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.suptitle(f"{report['pipeline']} data profile", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_html(report: dict[str, Any], path: str | Path, png: str | Path | None = None) -> Path:
    """A self-contained HTML page: the field table, the counts and (embedded) the PNG."""
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in _COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>" for row in _rows(report))
    c = report["counts"]
    rules = "".join(f"<tr><td>{esc(k)}</td><td>{n:,}</td></tr>" for k, n in sorted(c["violations"].items()))
    img = ""
    if png is not None:
        data = base64.b64encode(Path(png).read_bytes()).decode()
        img = f'<img alt="profile charts" src="data:image/png;base64,{data}">'
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{esc(str(report['pipeline']))} quality</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}}th{{background:#eee}}</style></head>
<body><h1>{esc(str(report['pipeline']))}: data quality</h1>
<p>Profile of the last {report['window_s']:.0f} s from {len(report['workers'])} worker(s), at
{esc(time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(report['time'])))}.</p>
<p>events in {c['events_in']:,}, out {c['events_out']:,}, DLQ {esc(str(c['dlq']))}, dropped {esc(str(c['dropped']))}</p>
<table><tr>{head}</tr>{body}</table>
<h2>Quality rules (cumulative)</h2><table><tr><th>step/field/rule/action</th><th>records</th></tr>{rules}</table>
{img}</body></html>"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path



