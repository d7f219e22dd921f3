"""What the dashboard shows, as data: scraped worker metrics with a short history, and Kafka's state.

:class:`MetricsHistory` scrapes each worker's ``/metrics`` (Prometheus text format, parsed with
``prometheus_client.parser``), keeps one reduced snapshot per scrape for ``history_s`` seconds,
and derives what Prometheus would: per-second rates of counters over a short window, and
latency percentiles from the histogram buckets (:func:`histogram_quantile`, the same linear
interpolation as PromQL's). A worker that restarts resets its counters; as in Prometheus, a
counter that goes down is taken as a reset, so totals and rates stay monotonic. A worker that
stops answering keeps its last counts (its gauges, such as lag, disappear).

Scoring workers and monitor workers are kept apart. ``tidal monitor PIPELINE`` runs a worker of
its own (pipeline ``PIPELINE.monitor``: it reads ``PIPELINE.predictions`` and ``PIPELINE.labels``)
that exposes the same ``tidal_events_in_total`` & co., plus ``tidal_model_quality`` and
``tidal_labels_unmatched_total``. A target that exposes either of those two families (or whose
every pipeline label ends in ``.monitor``) is a monitor worker: its worker metrics count under
``PIPELINE``'s ``monitor`` section, never in the pipeline's events in/out, DLQ or throughput.

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
from functools import partial
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
MONITOR_FAMILIES = ("tidal_model_quality", "tidal_labels_unmatched")  # only ``tidal monitor`` workers expose them
MONITOR = "monitor:"  # name prefix of a monitor worker's own worker metrics, once scraped
MONITOR_SUFFIX = ".monitor"
BOUNDED = {"accuracy", "precision", "recall", "f1", "roc_auc", "auc", "specificity", "balanced_accuracy"}
SHORT_METRIC = {"roc_auc": "auc", "log_loss": "log-loss", "balanced_accuracy": "bal-acc"}


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


def parse_samples(text: str, families: set[str] | None = None) -> list[tuple[Key, float, bool]]:
    """tidal's and kafka-lag-exporter's samples in a /metrics page: (key, value, is_monotonic).

    ``families``: filled with the names of the metric families the page declares (with or without samples).
    """
    out = []
    for family in text_string_to_metric_families(text):
        if not family.name.startswith(_PREFIXES):
            continue
        if families is not None:
            families.add(family.name)
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
    return {"in": 0.0, "out": 0.0, "dlq": {}, "pred": {}, "pos": {}, "decided": {}, "models": {}, "lat": {},
            "lat_sum": 0.0, "lat_count": 0.0, "lag": {}, "quality": {}, "groups": {}, "score": {},
            "score_sum": 0.0, "score_count": 0.0, "monitor": {}, "monitor_groups": {},
            **{v: 0.0 for v in _COUNTS.values()}}


def monitor_key(key: Key) -> Key:
    """A monitor worker's sample as the dashboard files it: its own worker metrics (pipeline
    ``P.monitor``) under ``monitor:NAME`` of pipeline ``P``; quality gauges (already labelled ``P``) as they are.

    >>> monitor_key(("tidal_events_in_total", (("pipeline", "fraud.monitor"),)))
    ('monitor:tidal_events_in_total', (('pipeline', 'fraud'),))
    >>> monitor_key(("tidal_model_quality", (("metric", "f1"), ("pipeline", "fraud"))))[0]
    'tidal_model_quality'
    """
    name, labels = key
    if name.startswith(QUALITY_PREFIX) or name.startswith("kafka_consumergroup_"):
        return key
    lab = dict(labels)
    p = lab.get("pipeline")
    if p is not None and p.endswith(MONITOR_SUFFIX) and len(p) > len(MONITOR_SUFFIX):
        lab["pipeline"] = p[:-len(MONITOR_SUFFIX)]
    return MONITOR + name, tuple(sorted(lab.items()))


def _quality_key(name: str, lab: dict[str, str]) -> tuple[str, str, str, str] | None:
    """(model, version, metric, other labels) of a quality gauge; None for one left out of the charts."""
    if name == QUALITY_PREFIX and "metric" in lab:  # tidal_model_quality{metric, window}
        if lab.get("window") == "time":  # the same metrics over the last period_s: the events window is charted
            return None
        metric = lab["metric"]
    else:
        metric = name[len(QUALITY_PREFIX):].strip("_") or "quality"
    rest = " ".join(f"{k}={v}" for k, v in sorted(lab.items())
                    if k not in ("pipeline", "model", "version", "metric", "window"))
    return lab.get("model", ""), lab.get("version", ""), metric, rest


def _add(d: dict, k: Any, v: float) -> None:
    d[k] = d.get(k, 0.0) + v


def reduce_samples(values: Mapping[Key, float], groups_of: Mapping[str, set[str]] | None = None,
                   monitor_groups_of: Mapping[str, set[str]] | None = None) -> dict[str, dict]:
    """Per pipeline: the counts, buckets and gauges the dashboard derives everything from
    (a monitor worker's, already renamed by :func:`monitor_key`, in its ``monitor`` section)."""
    out: dict[str, dict] = {}
    for (name, labels), v in values.items():
        lab = dict(labels)
        p = lab.get("pipeline")
        if p is None:
            continue
        r = out.get(p)
        if r is None:
            r = out[p] = _new()
        if name.startswith(MONITOR):
            m = name[len(MONITOR):]
            kind = {"tidal_events_in_total": "in", "tidal_events_out_total": "out", "tidal_dlq_total": "dlq",
                    "tidal_labels_unmatched_total": "unmatched", "tidal_batches_total": "batches"}.get(m)
            if kind:
                _add(r["monitor"], kind, v)
            continue
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
            if lab.get("decision") in ("true", "false"):
                _add(r["decided"], k, v)
        elif name == "tidal_model_info":
            if v > 0:
                r["models"][f"{lab.get('model', '?')} v{lab.get('version', '?')}"] = 1.0
        elif name == "tidal_end_to_end_latency_seconds_bucket":
            _add(r["lat"], float(lab.get("le", "+Inf")), v)
        elif name == "tidal_end_to_end_latency_seconds_sum":
            r["lat_sum"] += v
        elif name == "tidal_end_to_end_latency_seconds_count":
            r["lat_count"] += v
        elif name == "tidal_prediction_score_bucket":
            _add(r["score"], float(lab.get("le", "+Inf")), v)
        elif name == "tidal_prediction_score_sum":
            r["score_sum"] += v
        elif name == "tidal_prediction_score_count":
            r["score_count"] += v
        elif name == "tidal_consumer_lag":
            topic = lab.get("topic", "?")
            short = topic[len(p) + 1:] if topic.startswith(p + ".") else topic
            _add(r["lag"], f"{short}[{lab.get('partition', '?')}]", v)
        elif name.startswith(QUALITY_PREFIX):
            label = _quality_key(name, lab)
            if label is None or not math.isfinite(v):
                continue
            s, n = r["quality"].get(label, (0.0, 0))
            r["quality"][label] = (s + v, n + 1)  # a gauge per worker: averaged, not summed
    for p, groups in (groups_of or {}).items():
        if p in out:
            out[p]["groups"] = {g: 1.0 for g in groups}
    for p, groups in (monitor_groups_of or {}).items():
        if p in out:
            out[p]["monitor_groups"] = {g: 1.0 for g in groups}
    return out


_NOT_SUMMED = ("quality", "score", "score_sum", "score_count")  # different models: no meaningful sum


def merge(reduced: Iterable[dict]) -> dict:
    """Several pipelines' reductions as one (the explicit "all pipelines" view): the scoring workers'
    counts summed; model quality and score distributions left out (they only make sense per pipeline)."""
    reduced = list(reduced)
    if len(reduced) == 1:
        return reduced[0]
    out = _new()
    for r in reduced:
        for k, v in r.items():
            if k in _NOT_SUMMED:
                continue
            if k in ("models", "groups", "monitor_groups"):
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
        self.kind: str | None = None  # "scoring" or "monitor", once scraped

    def ingest(self, samples: list[tuple[Key, float, bool]], now: float, families: set[str] | None = None) -> None:
        pipelines = {dict(k[1]).get("pipeline") for k, _v, _m in samples if k[0] == "tidal_events_in_total"}
        if (families and families & set(MONITOR_FAMILIES)) or \
                (pipelines and all(p and p.endswith(MONITOR_SUFFIX) for p in pipelines)):
            self.kind = "monitor"
        elif self.kind is None and samples:
            self.kind = "scoring"
        if self.kind == "monitor":
            samples = [(monitor_key(k), v, m) for k, v, m in samples]
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
                "scrape_ms": self.scrape_ms, "pipelines": pipelines, "kind": self.kind}


def fetch(url: str, timeout: float, token: str | None = None) -> str:
    """The text of ``url`` (``token``: sent as ``Authorization: Bearer <token>``)."""
    headers = {"Accept": "text/plain;version=0.0.4"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - operator-given URLs
        return resp.read().decode("utf-8", "replace")


class MetricsHistory:
    """Scrape ``targets``; keep ``history_s`` seconds of per-pipeline snapshots; answer :meth:`summary`.

    ``token``: the workers' ``$TIDAL_METRICS_TOKEN``, sent as a bearer token with every scrape."""

    def __init__(self, targets: list[str], history_s: float = 600.0, rate_window_s: float = 5.0,
                 timeout: float = 2.0, fetcher: Callable[[str, float], str] = fetch,
                 token: str | None = None) -> None:
        self.targets = [_Target(u) for u in targets]
        self.history_s = history_s
        self.rate_window_s = rate_window_s
        self.timeout = timeout
        self.fetcher = partial(fetcher, token=token) if token and fetcher is fetch else fetcher
        self.snapshots: deque[tuple[float, dict[str, dict]]] = deque()
        self.scrapes = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max(1, min(8, len(targets))), thread_name_prefix="tidal-dashboard-scrape")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _scrape_one(self, target: _Target) -> tuple[_Target, list | None, str | None, float, set[str]]:
        t0 = time.perf_counter()
        families: set[str] = set()
        try:
            return target, parse_samples(self.fetcher(target.url, self.timeout), families), None, t0, families
        except Exception as exc:  # noqa: BLE001 - a down worker is shown, not raised
            code = getattr(exc, "code", None)  # HTTPError: the worker answered, with an error status
            reason = getattr(exc, "reason", None)  # URLError: the socket error inside
            if code in (401, 403):
                error = f"HTTP {code} {reason}: the worker wants its TIDAL_METRICS_TOKEN (--metrics-token)"
            elif code is not None:
                error = f"HTTP {code} {reason}"
            else:
                error = str(reason) if reason is not None else f"{type(exc).__name__}: {exc}"
            return target, None, error, t0, families

    def scrape(self, now: float | None = None) -> None:
        """Scrape every target once (in parallel) and record a snapshot."""
        results = list(self._pool.map(self._scrape_one, self.targets))
        now = time.time() if now is None else now
        with self._lock:
            for target, samples, error, t0, families in results:
                target.scrape_ms = round((time.perf_counter() - t0) * 1000, 1)
                if samples is None:
                    if target.up is not False:
                        log.warning("scraping %s failed: %s", target.url, error)
                    target.fail(error or "?")
                else:
                    target.ingest(samples, now, families)
            total: dict[Key, float] = {}
            groups: dict[str, set[str]] = {}
            monitor_groups: dict[str, set[str]] = {}
            for target in self.targets:
                pipelines = {dict(lab).get("pipeline") for (_n, lab) in target.values} - {None}
                mine = monitor_groups if target.kind == "monitor" else groups
                for key, v in target.values.items():
                    total[key] = total.get(key, 0.0) + v
                    if key[0] == "kafka_consumergroup_group_lag":
                        for p in pipelines:
                            mine.setdefault(p, set()).add(dict(key[1]).get("group", "?"))
            self.snapshots.append((now, reduce_samples(total, groups, monitor_groups)))
            while self.snapshots and now - self.snapshots[0][0] > self.history_s:
                self.snapshots.popleft()
            self.scrapes += 1

    # -- derived views ---------------------------------------------------------------------
    def pipelines(self) -> list[str]:
        with self._lock:
            return sorted({p for _t, snap in self.snapshots for p in snap})

    def summary(self, pipeline: str | None = None, window_s: float | None = None,
                latency_window_s: float = 60.0) -> dict[str, Any]:
        """Totals, current rates, latency percentiles and chart series for one pipeline (None: all, summed).

        Only scoring workers count in totals, rates, latency and DLQ; a monitor worker's own counts
        are in ``monitor``, its quality gauges in ``quality`` (bounded in [0, 1]) and ``loss``."""
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
        names = quality_labels({k for _t, r in points if r is not None for k in r["quality"]})
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
            "quality": {names[k]: s / n for k, (s, n) in sorted(last["quality"].items()) if n and _bounded(k)},
            "loss": {names[k]: s / n for k, (s, n) in sorted(last["quality"].items()) if n and not _bounded(k)},
            "scores": _score_buckets(last),
            "decisions": {"positive": sum(last["pos"].values()), "decided": sum(last["decided"].values()),
                          "rate": _share(sum(last["pos"].values()), sum(last["decided"].values())),
                          "recent": self._recent_decision_rate(points, latency_window_s)},
            "monitor": {k: last["monitor"].get(k, 0.0) for k in ("in", "out", "dlq", "unmatched", "batches")}
            | {"workers": sum(1 for t in targets if t["kind"] == "monitor"
                              and (pipeline is None or pipeline in t["pipelines"])),
               "groups": sorted(last["monitor_groups"])},
            "groups": sorted(last["groups"]),
            "series": self._series(points, names),
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

    def _recent_decision_rate(self, points: list, window_s: float) -> float | None:
        if not points or points[-1][1] is None:
            return None
        now, b = points[-1]
        a = next((r for t, r in points if now - t <= window_s and r is not None), None)
        if a is None or a is b:
            return None
        return _share(sum(b["pos"].values()) - sum(a["pos"].values()),
                      sum(b["decided"].values()) - sum(a["decided"].values()))

    def _series(self, points: list, names: Mapping[tuple, str] | None = None) -> dict[str, Any]:
        ts = [round(t, 3) for t, _r in points]
        n = len(points)
        out: dict[str, Any] = {"t": ts, "in": [None] * n, "out": [None] * n, "p50": [None] * n, "p95": [None] * n,
                               "p99": [None] * n, "decision_rate": [None] * n, "lag": {}, "dlq": {},
                               "predictions": {}, "quality": {}, "loss": {}}
        labels = {k: sorted({x for _t, r in points if r is not None for x in r[k]})
                  for k in ("lag", "dlq", "pred", "quality")}
        for name, key in (("lag", "lag"), ("dlq", "dlq"), ("predictions", "pred")):
            out[name] = {label: [None] * n for label in labels[key]}
        names = names or quality_labels(labels["quality"])
        for key in labels["quality"]:
            out["quality" if _bounded(key) else "loss"][names[key]] = [None] * n
        j = 0
        for i, (t, r) in enumerate(points):
            if r is None:
                continue
            for label in labels["lag"]:
                out["lag"][label][i] = r["lag"].get(label)
            for label in labels["dlq"]:
                out["dlq"][label][i] = r["dlq"].get(label, 0.0)
            for key, (s, c) in r["quality"].items():
                out["quality" if _bounded(key) else "loss"][names[key]][i] = s / c if c else None
            j = self._window_start(points, i, j)
            a = points[j][1]
            dt = t - points[j][0]
            if j == i or a is None or dt <= 0:
                continue
            out["in"][i] = max(0.0, r["in"] - a["in"]) / dt
            out["out"][i] = max(0.0, r["out"] - a["out"]) / dt
            out["decision_rate"][i] = _share(sum(r["pos"].values()) - sum(a["pos"].values()),
                                             sum(r["decided"].values()) - sum(a["decided"].values()))
            for label in labels["pred"]:
                out["predictions"][label][i] = max(0.0, r["pred"].get(label, 0.0) - a["pred"].get(label, 0.0)) / dt
            q = _percentiles({le: c - a["lat"].get(le, 0.0) for le, c in r["lat"].items()})
            out["p50"][i], out["p95"][i], out["p99"][i] = q["p50"], q["p95"], q["p99"]
        return out


def _share(part: float, whole: float) -> float | None:
    return part / whole if whole > 0 else None


def _bounded(key: tuple) -> bool:
    """A quality metric in [0, 1] (accuracy, AUC, F1, ...), as opposed to log-loss, MAE, RMSE."""
    return key[2] in BOUNDED


def quality_labels(keys: Iterable[tuple[str, str, str, str]]) -> dict[tuple, str]:
    """Short chart legends for quality keys: ``v3 auc`` (the model's name only where several models score).

    >>> quality_labels([("churn", "3", "roc_auc", ""), ("churn", "4", "log_loss", "")])
    {('churn', '3', 'roc_auc', ''): 'v3 auc', ('churn', '4', 'log_loss', ''): 'v4 log-loss'}
    >>> quality_labels([("a", "1", "f1", ""), ("b", "2", "f1", "")])[("b", "2", "f1", "")]
    'b v2 f1'
    """
    keys = list(keys)
    several = len({k[0] for k in keys}) > 1
    out = {}
    for model, version, metric, rest in keys:
        parts = [model if several and model else "", f"v{version}" if version else "",
                 SHORT_METRIC.get(metric, metric), rest]
        out[(model, version, metric, rest)] = " ".join(x for x in parts if x)
    return out


def _score_buckets(r: Mapping[str, Any]) -> dict[str, Any]:
    """The score histogram as non-cumulative bars: [{lo, hi, count}] (hi None: above the last bound)."""
    bounds = sorted(r["score"])
    bars, prev_bound, prev_count = [], None, 0.0
    for b in bounds:
        c = r["score"][b]
        bars.append({"lo": prev_bound, "hi": None if math.isinf(b) else b, "count": max(0.0, c - prev_count)})
        prev_bound, prev_count = b, c
    if bars and bars[-1]["hi"] is None and not bars[-1]["count"]:
        bars.pop()  # nothing above the last bound: no bar for it
    return {"bars": bars, "count": r["score_count"],
            "mean": r["score_sum"] / r["score_count"] if r["score_count"] else None}


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
             selected: str | None = None, monitor_groups: list[str] | None = None) -> dict[str, Any]:
        """What the page shows: reachability, the groups of ``pipelines`` (each with ``kind``: scoring or
        monitor), deployed models, active alerts (those of ``selected`` and its monitor only, when one
        pipeline is selected; one-shot alerts past ``time + ttl_s`` are not active)."""
        with self._lock:
            state = dict(self._state)
        status = state.pop("status") or {}
        wanted = set(groups or ()) | set(monitor_groups or ()) | {f"tidal.{p}" for p in pipelines or ()} \
            | {f"tidal.{p}{MONITOR_SUFFIX}" for p in pipelines or ()}
        all_groups = status.get("groups", [])
        shown = [g for g in all_groups if g["group"] in wanted] if wanted else all_groups[:30]
        state["groups_filtered"] = bool(wanted)  # shown are the pipelines' own groups, not just any
        monitor_groups = set(monitor_groups or ()) | {f"tidal.{p}{MONITOR_SUFFIX}" for p in pipelines or ()}
        shown = [g | {"kind": "monitor" if g["group"] in monitor_groups else "scoring"} for g in shown]
        # what cluster_status calls active, less the one-shot alerts (ttl_s) that expired since it was asked
        now = time.time()
        alerts = [a for a in status.get("active_alerts", []) if not _expired(a, now)]
        if selected:
            alerts = [a for a in alerts if not a.get("pipeline")
                      or a.get("pipeline") in (selected, selected + MONITOR_SUFFIX)]
        models = sorted(status.get("models", {}).values(), key=lambda d: -float(d.get("time") or 0))
        return state | {"brokers": status.get("brokers"), "metadata_ms": status.get("metadata_ms"),
                        "cluster_id": status.get("cluster_id"), "topics": len(status.get("topics", {})),
                        "groups": shown, "models": models[:30],
                        "alerts": sorted(alerts, key=lambda a: -float(a.get("time") or 0))[:20]}


def _expired(alert: Mapping[str, Any], now: float) -> bool:
    ttl = alert.get("ttl_s")
    try:
        return ttl is not None and float(alert.get("time") or 0) + float(ttl) < now
    except (TypeError, ValueError):
        return False
