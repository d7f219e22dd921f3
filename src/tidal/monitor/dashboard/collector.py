"""What the dashboard shows, as data: scraped worker metrics with a short history, and Kafka's state.

:class:`MetricsHistory` scrapes each worker's ``/metrics`` (Prometheus text format, parsed with
``prometheus_client.parser``), keeps one reduced snapshot per scrape for ``history_s`` seconds,
and derives what Prometheus would: per-second rates of counters over a short window, and
latency percentiles from the histogram buckets (:func:`histogram_quantile`, the same linear
interpolation as PromQL's). A worker that restarts resets its counters; as in Prometheus, a
counter that goes down is taken as a reset, so totals and rates stay monotonic. A worker that
stops answering keeps its last counts (its gauges, such as lag, disappear).

:class:`KafkaWatcher` calls :func:`tidal.monitor.status.cluster_status` every few seconds in a
background thread and remembers the last answer; a broker that does not answer is shown as
unreachable, never raised.

>>> round(histogram_quantile(0.5, {0.1: 2.0, 0.5: 6.0, float("inf"): 8.0}), 6)  # rank 4 of 8: half-way in (0.1, 0.5]
0.3
>>> histogram_quantile(0.99, {0.1: 2.0, 0.5: 6.0, float("inf"): 8.0})  # in +Inf: the highest finite bound
0.5
>>> histogram_quantile(0.5, {0.1: 0.0, float("inf"): 0.0}) is None
True
"""

from __future__ import annotations

import logging
import math
import threading
import time
import urllib.request
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Mapping

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["MetricsHistory", "KafkaWatcher", "histogram_quantile", "normalize_targets", "parse_samples"]

log = logging.getLogger("tidal.dashboard")

Key = tuple[str, tuple[tuple[str, str], ...]]
_MONOTONIC = {"counter", "histogram", "summary"}
_PREFIXES = ("tidal_", "kafka_consumergroup_")
_COUNTS = {"tidal_batches_total": "batches", "tidal_commits_total": "commits",
           "tidal_rebalances_total": "rebalances", "tidal_produce_errors_total": "produce_errors",
           "tidal_batch_size_sum": "batch_events", "tidal_batch_size_count": "batch_count"}
QUALITY_PREFIX = "tidal_model_quality"


def normalize_targets(specs: Iterable[str]) -> list[str]:
    """Metrics URLs from ``host:port``, ``host:9400-9403`` (one per port) or full URLs.

    >>> normalize_targets(["127.0.0.1:9400-9401", "http://w1:9400", "https://w2/m"])
    ['http://127.0.0.1:9400/metrics', 'http://127.0.0.1:9401/metrics', 'http://w1:9400/metrics', 'https://w2/m']
    """
    out: list[str] = []
    for spec in specs:
        spec = spec.strip()
        if not spec:
            continue
        scheme, sep, rest = spec.partition("://")
        if not sep:
            scheme, rest = "http", spec
        hostport, slash, path = rest.partition("/")
        path = "/" + path if slash else "/metrics"
        host, colon, ports = hostport.rpartition(":")
        if colon and "-" in ports:
            try:
                first, last = (int(x) for x in ports.split("-", 1))
            except ValueError:
                raise ValueError(f"bad port range in {spec!r}") from None
            if not 0 < first <= last < 65536 or last - first > 255:
                raise ValueError(f"bad port range in {spec!r}")
            out += [f"{scheme}://{host}:{p}{path}" for p in range(first, last + 1)]
        else:
            out.append(f"{scheme}://{hostport}{path}")
    return list(dict.fromkeys(out))


def parse_samples(text: str) -> list[tuple[Key, float, bool]]:
    """tidal's and kafka-lag-exporter's samples in a /metrics page: (key, value, is_monotonic)."""
    out = []
    for family in text_string_to_metric_families(text):
        if not family.name.startswith(_PREFIXES):
            continue
        monotonic = family.type in _MONOTONIC
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            out.append(((s.name, tuple(sorted(s.labels.items()))), float(s.value), monotonic))
    return out


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """PromQL's ``histogram_quantile``: ``buckets`` maps upper bound (``le``) to cumulative count."""
    bounds = sorted(buckets)
    if not bounds or not math.isinf(bounds[-1]):
        return None
    total = buckets[bounds[-1]]
    if not total or total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for i, bound in enumerate(bounds):
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return bounds[i - 1] if i else None
            if i == 0 and bound <= 0:
                return bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return None


def _new() -> dict[str, Any]:
    return {"in": 0.0, "out": 0.0, "dlq": {}, "pred": {}, "pos": {}, "models": {}, "lat": {}, "lat_sum": 0.0,
            "lat_count": 0.0, "lag": {}, "quality": {}, "groups": {}, **{v: 0.0 for v in _COUNTS.values()}}


def _add(d: dict, k: Any, v: float) -> None:
    d[k] = d.get(k, 0.0) + v


def reduce_samples(values: Mapping[Key, float], groups_of: Mapping[str, set[str]] | None = None) -> dict[str, dict]:
    """Per pipeline: the counts, buckets and gauges the dashboard derives everything from."""
    out: dict[str, dict] = {}
    for (name, labels), v in values.items():
        lab = dict(labels)
        p = lab.get("pipeline")
        if p is None:
            continue
        r = out.get(p)
        if r is None:
            r = out[p] = _new()
        if name == "tidal_events_in_total":
            r["in"] += v
        elif name == "tidal_events_out_total":
            r["out"] += v
        elif name == "tidal_dlq_total":
            _add(r["dlq"], lab.get("reason", "?"), v)
        elif name in _COUNTS:
            r[_COUNTS[name]] += v
        elif name == "tidal_predictions_total":
            k = f"{lab.get('model', '?')} v{lab.get('version', '?')}"
            _add(r["pred"], k, v)
            if lab.get("decision") == "true":
                _add(r["pos"], k, v)
        elif name == "tidal_model_info":
            if v > 0:
                r["models"][f"{lab.get('model', '?')} v{lab.get('version', '?')}"] = 1.0
        elif name == "tidal_end_to_end_latency_seconds_bucket":
            _add(r["lat"], float(lab.get("le", "+Inf")), v)
        elif name == "tidal_end_to_end_latency_seconds_sum":
            r["lat_sum"] += v
        elif name == "tidal_end_to_end_latency_seconds_count":
            r["lat_count"] += v
        elif name == "tidal_consumer_lag":
            topic = lab.get("topic", "?")
            short = topic[len(p) + 1:] if topic.startswith(p + ".") else topic
            _add(r["lag"], f"{short}[{lab.get('partition', '?')}]", v)
        elif name.startswith(QUALITY_PREFIX):
            metric = name[len(QUALITY_PREFIX):].strip("_") or "quality"
            rest = " ".join(f"{k}={val}" for k, val in labels if k not in ("pipeline", "model", "version"))
            model = f"{lab['model']} v{lab.get('version', '?')} " if "model" in lab else ""
            label = f"{model}{metric}{' ' + rest if rest else ''}"
            s, n = r["quality"].get(label, (0.0, 0))
            r["quality"][label] = (s + v, n + 1)  # a gauge per worker: averaged, not summed
    for p, groups in (groups_of or {}).items():
        if p in out:
            out[p]["groups"] = {g: 1.0 for g in groups}
    return out


def merge(reduced: Iterable[dict]) -> dict:
    """Several pipelines' reductions as one (the "all pipelines" view)."""
    out = _new()
    for r in reduced:
        for k, v in r.items():
            if k == "quality":
                for label, (s, n) in v.items():
                    s0, n0 = out["quality"].get(label, (0.0, 0))
                    out["quality"][label] = (s0 + s, n0 + n)
            elif k == "models" or k == "groups":
                out[k].update(v)
            elif isinstance(v, dict):
                for kk, vv in v.items():
                    _add(out[k], kk, vv)
            else:
                out[k] += v
    return out


class _Target:
    """One /metrics endpoint: its last values, with counter resets folded in."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.up: bool | None = None
        self.error: str | None = None
        self.last_ok: float | None = None
        self.scrape_ms: float | None = None
        self.raw: dict[Key, float] = {}
        self.offset: dict[Key, float] = {}
        self.values: dict[Key, float] = {}
        self.monotonic: set[Key] = set()

    def ingest(self, samples: list[tuple[Key, float, bool]], now: float) -> None:
        values = {}
        for key, v, mono in samples:
            if mono:
                self.monotonic.add(key)
                last = self.raw.get(key)
                if last is not None and v < last:  # the worker restarted: its counters began again
                    self.offset[key] = self.offset.get(key, 0.0) + last
                values[key] = v + self.offset.get(key, 0.0)
            else:
                values[key] = v
            self.raw[key] = v
        self.values, self.up, self.error, self.last_ok = values, True, None, now

    def fail(self, error: str) -> None:
        self.up, self.error = False, error
        self.values = {k: v for k, v in self.values.items() if k in self.monotonic}  # counts stay, gauges go

    def info(self) -> dict[str, Any]:
        pipelines = sorted({dict(labels).get("pipeline") for (_n, labels) in self.values} - {None})
        return {"url": self.url, "up": self.up, "error": self.error, "last_ok": self.last_ok,
                "scrape_ms": self.scrape_ms, "pipelines": pipelines}


def fetch(url: str, timeout: float) -> str:
    req = urllib.request.Request(url, headers={"Accept": "text/plain;version=0.0.4"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - operator-given URLs
        return resp.read().decode("utf-8", "replace")


class MetricsHistory:
    """Scrape ``targets``; keep ``history_s`` seconds of per-pipeline snapshots; answer :meth:`summary`."""

    def __init__(self, targets: list[str], history_s: float = 600.0, rate_window_s: float = 5.0,
                 timeout: float = 2.0, fetcher: Callable[[str, float], str] = fetch) -> None:
        self.targets = [_Target(u) for u in targets]
        self.history_s = history_s
        self.rate_window_s = rate_window_s
        self.timeout = timeout
        self.fetcher = fetcher
        self.snapshots: deque[tuple[float, dict[str, dict]]] = deque()
        self.scrapes = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max(1, min(8, len(targets))), thread_name_prefix="tidal-dashboard-scrape")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _scrape_one(self, target: _Target) -> tuple[_Target, list | None, str | None, float]:
        t0 = time.perf_counter()
        try:
            return target, parse_samples(self.fetcher(target.url, self.timeout)), None, t0
        except Exception as exc:  # noqa: BLE001 - a down worker is shown, not raised
            reason = getattr(exc, "reason", None)  # URLError: the socket error inside
            return target, None, str(reason) if reason is not None else f"{type(exc).__name__}: {exc}", t0

    def scrape(self, now: float | None = None) -> None:
        """Scrape every target once (in parallel) and record a snapshot."""
        results = list(self._pool.map(self._scrape_one, self.targets))
        now = time.time() if now is None else now
        with self._lock:
            for target, samples, error, t0 in results:
                target.scrape_ms = round((time.perf_counter() - t0) * 1000, 1)
                if samples is None:
                    if target.up is not False:
                        log.warning("scraping %s failed: %s", target.url, error)
                    target.fail(error or "?")
                else:
                    target.ingest(samples, now)
            total: dict[Key, float] = {}
            groups: dict[str, set[str]] = {}
            for target in self.targets:
                pipelines = {dict(lab).get("pipeline") for (_n, lab) in target.values} - {None}
                for key, v in target.values.items():
                    total[key] = total.get(key, 0.0) + v
                    if key[0] == "kafka_consumergroup_group_lag":
                        for p in pipelines:
                            groups.setdefault(p, set()).add(dict(key[1]).get("group", "?"))
            self.snapshots.append((now, reduce_samples(total, groups)))
            while self.snapshots and now - self.snapshots[0][0] > self.history_s:
                self.snapshots.popleft()
            self.scrapes += 1

    # -- derived views ---------------------------------------------------------------------
    def pipelines(self) -> list[str]:
        with self._lock:
            return sorted({p for _t, snap in self.snapshots for p in snap})

    def summary(self, pipeline: str | None = None, window_s: float | None = None,
                latency_window_s: float = 60.0) -> dict[str, Any]:
        """Totals, current rates, latency percentiles and chart series for one pipeline (None: all)."""
        with self._lock:
            snaps = list(self.snapshots)
            targets = [t.info() for t in self.targets]
        pipelines = sorted({p for _t, snap in snaps for p in snap})
        if window_s is not None and snaps:
            snaps = [s for s in snaps if snaps[-1][0] - s[0] <= window_s]
        points: list[tuple[float, dict | None]] = []
        for t, snap in snaps:
            chosen = [snap[pipeline]] if pipeline in snap else [] if pipeline else list(snap.values())
            points.append((t, merge(chosen) if chosen else None))
        last = next((r for _t, r in reversed(points) if r is not None), None) or _new()
        return {
            "pipelines": pipelines, "selected": pipeline, "targets": targets, "scrapes": self.scrapes,
            "totals": {k: last[k] for k in ("in", "out", "batches", "commits", "rebalances", "produce_errors")}
            | {"dlq": sum(last["dlq"].values()),
               "mean_batch": last["batch_events"] / last["batch_count"] if last["batch_count"] else None},
            "rates": self._current_rates(points),
            "latency": {"recent": self._latency(points, latency_window_s), "total": _percentiles(last["lat"]),
                        "window_s": latency_window_s, "count": last["lat_count"],
                        "mean": last["lat_sum"] / last["lat_count"] if last["lat_count"] else None},
            "dlq": dict(sorted(last["dlq"].items(), key=lambda kv: -kv[1])),
            "predictions": [{"label": k, "count": v, "positive": last["pos"].get(k, 0.0),
                             "in_use": k in last["models"]} for k, v in sorted(last["pred"].items())],
            "models_in_use": sorted(last["models"]),
            "lag": {"total": sum(last["lag"].values()), "partitions": dict(sorted(last["lag"].items()))},
            "quality": {k: s / n for k, (s, n) in sorted(last["quality"].items()) if n},
            "groups": sorted(last["groups"]),
            "series": self._series(points),
        }

    def _window_start(self, points: list, i: int, j: int) -> int:
        while j < i - 1 and points[i][0] - points[j + 1][0] >= self.rate_window_s:
            j += 1
        return j

    def _current_rates(self, points: list) -> dict[str, float | None]:
        if len(points) < 2 or points[-1][1] is None:
            return {"in": None, "out": None}
        i = len(points) - 1
        j = self._window_start(points, i, 0)
        a, b = points[j][1], points[i][1]
        dt = points[i][0] - points[j][0]
        if a is None or dt <= 0:
            return {"in": None, "out": None}
        return {"in": max(0.0, b["in"] - a["in"]) / dt, "out": max(0.0, b["out"] - a["out"]) / dt}

    def _latency(self, points: list, window_s: float) -> dict[str, float | None]:
        if not points or points[-1][1] is None:
            return _percentiles({})
        now, b = points[-1]
        a = next((r for t, r in points if now - t <= window_s and r is not None), None)
        if a is None or a is b:
            return _percentiles({})
        return _percentiles({le: c - a["lat"].get(le, 0.0) for le, c in b["lat"].items()})

    def _series(self, points: list) -> dict[str, Any]:
        ts = [round(t, 3) for t, _r in points]
        n = len(points)
        out: dict[str, Any] = {"t": ts, "in": [None] * n, "out": [None] * n, "p50": [None] * n, "p95": [None] * n,
                               "p99": [None] * n, "lag": {}, "dlq": {}, "predictions": {}, "quality": {}}
        labels = {k: sorted({x for _t, r in points if r is not None for x in r[k]})
                  for k in ("lag", "dlq", "pred", "quality")}
        for name, key in (("lag", "lag"), ("dlq", "dlq"), ("predictions", "pred"), ("quality", "quality")):
            out[name] = {label: [None] * n for label in labels[key]}
        j = 0
        for i, (t, r) in enumerate(points):
            if r is None:
                continue
            for label in labels["lag"]:
                out["lag"][label][i] = r["lag"].get(label)
            for label in labels["dlq"]:
                out["dlq"][label][i] = r["dlq"].get(label, 0.0)
            for label, (s, c) in r["quality"].items():
                out["quality"][label][i] = s / c if c else None
            j = self._window_start(points, i, j)
            a = points[j][1]
            dt = t - points[j][0]
            if j == i or a is None or dt <= 0:
                continue
            out["in"][i] = max(0.0, r["in"] - a["in"]) / dt
            out["out"][i] = max(0.0, r["out"] - a["out"]) / dt
            for label in labels["pred"]:
                out["predictions"][label][i] = max(0.0, r["pred"].get(label, 0.0) - a["pred"].get(label, 0.0)) / dt
            q = _percentiles({le: c - a["lat"].get(le, 0.0) for le, c in r["lat"].items()})
            out["p50"][i], out["p95"][i], out["p99"][i] = q["p50"], q["p95"], q["p99"]
        return out


def _percentiles(buckets: Mapping[float, float]) -> dict[str, float | None]:
    return {f"p{round(q * 100)}": histogram_quantile(q, buckets) for q in (0.5, 0.95, 0.99)}


class KafkaWatcher:
    """The last :func:`cluster_status` of ``settings`` (None: no cluster configured), refreshed by :meth:`poll`."""

    def __init__(self, settings: Any, timeout: float = 5.0,
                 status_fn: Callable[..., dict[str, Any]] | None = None) -> None:
        self.settings = settings
        self.timeout = timeout
        self._status_fn = status_fn
        self._lock = threading.Lock()
        self._state: dict[str, Any] = {"configured": settings is not None,
                                       "bootstrap": getattr(settings, "bootstrap", None), "reachable": None,
                                       "checked_at": None, "last_ok_at": None, "error": None, "status": None}

    def poll(self) -> None:
        """Ask the cluster once; failures mark it unreachable (the last good status is kept, marked stale)."""
        if self.settings is None:
            return
        fn = self._status_fn
        if fn is None:
            from tidal.monitor.status import cluster_status as fn
        try:
            status = fn(self.settings, timeout=self.timeout)
        except Exception as exc:  # noqa: BLE001 - an unreachable broker is a state to show
            with self._lock:
                if self._state["reachable"] is not False:
                    log.warning("Kafka at %s unreachable: %s", self.settings.bootstrap, exc)
                self._state.update(reachable=False, checked_at=time.time(), error=f"{type(exc).__name__}: {exc}")
            return
        with self._lock:
            self._state.update(reachable=True, checked_at=time.time(), last_ok_at=time.time(), error=None,
                               status=status)

    def view(self, pipelines: list[str] | None = None, groups: list[str] | None = None,
             selected: str | None = None) -> dict[str, Any]:
        """What the page shows: reachability, the groups of ``pipelines``, deployed models, active alerts
        (those of ``selected`` only, when one pipeline is selected)."""
        with self._lock:
            state = dict(self._state)
        status = state.pop("status") or {}
        wanted = set(groups or ()) | {f"tidal.{p}" for p in pipelines or ()}
        all_groups = status.get("groups", [])
        shown = [g for g in all_groups if g["group"] in wanted] if wanted else all_groups[:30]
        state["groups_filtered"] = bool(wanted)  # shown are the pipelines' own groups, not just any
        alerts = status.get("active_alerts", [])
        if selected:
            alerts = [a for a in alerts if not a.get("pipeline") or a.get("pipeline") == selected]
        models = sorted(status.get("models", {}).values(), key=lambda d: -float(d.get("time") or 0))
        return state | {"brokers": status.get("brokers"), "metadata_ms": status.get("metadata_ms"),
                        "cluster_id": status.get("cluster_id"), "topics": len(status.get("topics", {})),
                        "groups": shown, "models": models[:30],
                        "alerts": sorted(alerts, key=lambda a: -float(a.get("time") or 0))[:20]}
