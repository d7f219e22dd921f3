"""Alert rules on any metric, evaluated by the worker; alerts are events on ``tidal.alerts``.

A rule watches the sum of a metric's samples (optionally filtered by labels) and fires when

- ``value``: the current value crosses a threshold (``value: "> 10000"``);
- ``rate``: its per-second change over ``window_s`` crosses a threshold (``rate: "> 5"``);
- ``absent_for_s``: it has not changed (or does not exist) for that many seconds.

With ``for_s`` the condition must hold that long first. A rule fires once, stays quiet while
the condition holds, and sends one ``resolved`` event when it clears. Events optionally go to
a webhook too (JSON POST, in a background thread, never blocking the stream).

>>> from prometheus_client import CollectorRegistry, Counter
>>> reg = CollectorRegistry(); dlq = Counter("tidal_dlq", "", registry=reg)
>>> ev = AlertEvaluator([AlertRule.from_dict({"name": "dlq", "metric": "tidal_dlq_total", "value": "> 2"})],
...                     reg, "fraud")
>>> ev.evaluate(now=0.0)
[]
>>> dlq.inc(3); [(e["rule"], e["state"], e["value"]) for e in ev.evaluate(now=1.0)]
[('dlq', 'firing', 3.0)]
>>> ev.evaluate(now=2.0)  # still true: no repeat
[]
"""

from __future__ import annotations

import logging
import operator
import re
import threading
import time
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import orjson
from prometheus_client import CollectorRegistry

__all__ = ["AlertRule", "AlertEvaluator", "post_webhook"]

log = logging.getLogger("tidal.alerts")

_OPS: dict[str, Callable[[float, float], bool]] = {">": operator.gt, ">=": operator.ge, "<": operator.lt,
                                                   "<=": operator.le}
_CONDITION = re.compile(r"^\s*(>=|<=|>|<)\s*(-?[0-9.eE+-]+)\s*$")


def _condition(text: str) -> tuple[str, float]:
    m = _CONDITION.match(str(text))
    if not m:
        raise ValueError(f"alert condition {text!r}: expected e.g. '> 100' or '<= 0.5'")
    return m.group(1), float(m.group(2))


_RULE_KEYS = {"name", "metric", "value", "rate", "absent_for_s", "labels", "window_s", "for_s", "severity", "webhook"}


@dataclass(frozen=True)
class AlertRule:
    """One rule; build it from the YAML form with :meth:`from_dict`."""

    name: str
    metric: str
    kind: str = "value"  # value | rate | absent
    op: str = ">"
    threshold: float = 0.0
    labels: Mapping[str, str] = field(default_factory=dict)
    window_s: float = 60.0
    for_s: float = 0.0
    severity: str = "warning"
    webhook: str | None = None

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> "AlertRule":
        """From ``{name:, metric:, value|rate|absent_for_s:, labels:, window_s:, for_s:, severity:,
        webhook:}``; a missing or unknown key is a ValueError that names it (a misspelt ``for_s``
        would otherwise leave the rule firing at once)."""
        import difflib

        spec = dict(spec)
        unknown = sorted(set(spec) - _RULE_KEYS)
        if unknown:
            close = difflib.get_close_matches(unknown[0], sorted(_RULE_KEYS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"alert {spec.get('name')!r}: unknown key {unknown[0]!r}{hint}; "
                             f"known: {sorted(_RULE_KEYS)}")
        missing = [k for k in ("name", "metric") if not spec.get(k)]
        if missing:
            raise ValueError(f"alert {spec.get('name')!r}: {missing[0]} is required")
        from tidal.stream.context import SEVERITIES

        if spec.get("severity", "warning") not in SEVERITIES:
            raise ValueError(f"alert {spec['name']!r}: severity {spec['severity']!r}; use one of {SEVERITIES}")
        kinds = [k for k in ("value", "rate", "absent_for_s") if k in spec]
        if len(kinds) != 1:
            raise ValueError(f"alert {spec.get('name')!r}: give exactly one of value, rate, absent_for_s")
        common = {"name": spec["name"], "metric": spec["metric"], "labels": dict(spec.get("labels") or {}),
                  "window_s": float(spec.get("window_s", 60)), "for_s": float(spec.get("for_s", 0)),
                  "severity": spec.get("severity", "warning"), "webhook": spec.get("webhook")}
        if kinds[0] == "absent_for_s":
            return cls(kind="absent", threshold=float(spec["absent_for_s"]), **common)
        op, threshold = _condition(spec[kinds[0]])
        return cls(kind=kinds[0], op=op, threshold=threshold, **common)


@dataclass
class _State:
    firing: bool = False
    pending_since: float | None = None
    history: deque = field(default_factory=deque)  # (time, value) within the rate window
    last_value: float | None = None
    changed_at: float | None = None


def post_webhook(url: str, event: Mapping[str, Any], timeout: float = 5.0) -> None:
    """POST ``event`` as JSON to ``url`` in a daemon thread; failures are logged, not raised."""

    def send() -> None:
        req = urllib.request.Request(url, data=orjson.dumps(event), headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=timeout).read()
        except OSError as exc:
            log.warning("alert webhook %s failed: %s", url, exc)

    threading.Thread(target=send, daemon=True).start()


class AlertEvaluator:
    """Evaluate ``rules`` against ``registry``; ``emit(event)`` publishes each firing/resolved event."""

    def __init__(self, rules: list[AlertRule], registry: CollectorRegistry, pipeline: str,
                 emit: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.rules = rules
        self.registry = registry
        self.pipeline = pipeline
        self.emit = emit
        self._state = {r.name: _State() for r in rules}

    def _value(self, rule: AlertRule) -> float | None:
        total, found = 0.0, False
        for family in self.registry.collect():
            for s in family.samples:
                if s.name == rule.metric and all(s.labels.get(k) == v for k, v in rule.labels.items()):
                    total += s.value
                    found = True
        return total if found else None

    def evaluate(self, now: float | None = None) -> list[dict[str, Any]]:
        """Check every rule once; returns (and emits) the events of rules that changed state."""
        now = time.time() if now is None else now
        events = []
        for rule in self.rules:
            state = self._state[rule.name]
            value = self._value(rule)
            holds, shown = self._holds(rule, state, value, now)
            if holds:
                state.pending_since = now if state.pending_since is None else state.pending_since
                if not state.firing and now - state.pending_since >= rule.for_s:
                    state.firing = True
                    events.append(self._event(rule, "firing", shown, now))
            else:
                state.pending_since = None
                if state.firing:
                    state.firing = False
                    events.append(self._event(rule, "resolved", shown, now))
        for event in events:
            log.warning("alert %s %s: %s", event["rule"], event["state"], event["message"])
            if self.emit is not None:
                self.emit(event)
            rule = next(r for r in self.rules if r.name == event["rule"])
            if rule.webhook:
                post_webhook(rule.webhook, event)
        return events

    def _holds(self, rule: AlertRule, state: _State, value: float | None, now: float) -> tuple[bool, float | None]:
        if rule.kind == "absent":
            if value != state.last_value or state.changed_at is None:
                state.last_value, state.changed_at = value, now
            quiet_for = now - state.changed_at
            return quiet_for >= rule.threshold, quiet_for
        if value is None and rule.kind == "rate":
            value = 0.0  # a labelled counter has no samples until its first increment
        if value is None:
            return False, None
        if rule.kind == "value":
            return _OPS[rule.op](value, rule.threshold), value
        state.history.append((now, value))
        while len(state.history) > 1 and now - state.history[0][0] > rule.window_s:
            state.history.popleft()
        (t0, v0) = state.history[0]
        rate = (value - v0) / (now - t0) if now > t0 else 0.0
        return _OPS[rule.op](rate, rule.threshold), rate

    def _event(self, rule: AlertRule, status: str, value: float | None, now: float) -> dict[str, Any]:
        what = {"value": "value", "rate": "rate per second", "absent": "seconds without change"}[rule.kind]
        cond = f"{rule.op} {rule.threshold:g}" if rule.kind != "absent" else f">= {rule.threshold:g}"
        return {"rule": rule.name, "state": status, "severity": rule.severity, "pipeline": self.pipeline,
                "metric": rule.metric, "labels": dict(rule.labels), "model": rule.labels.get("model"),
                "value": value, "threshold": rule.threshold, "time": now,
                "message": f"{rule.metric} {what} {value if value is None else round(value, 4)} "
                           f"({'breaks' if status == 'firing' else 'back within'} {cond})"}
