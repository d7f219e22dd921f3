"""Readers of tidal's own topics (status, dashboard, enrichment tables, deployment followers)
skip a record they cannot read instead of failing, and count it.

>>> loads_or_skip(b'{"a": 1}', "t"), loads_or_skip(b"not json", "t"), skipped("t")
({'a': 1}, None, 1)
"""

from __future__ import annotations

import logging
from collections import Counter as _Counter
from typing import Any

import orjson
from prometheus_client import Counter

__all__ = ["loads_or_skip", "skip", "skipped", "SKIPPED"]

log = logging.getLogger("tidal.read")

SKIPPED = Counter("tidal_skipped_records", "Records a reader of a tidal topic could not read and skipped, "
                  "by topic and reason.", ["topic", "reason"])
_counts: _Counter = _Counter()


def skip(topic: str, reason: str, detail: str = "") -> None:
    """Count (and log, the first few times per topic) one skipped record."""
    _counts[topic] += 1
    SKIPPED.labels(topic, reason).inc()
    if _counts[topic] <= 5:
        log.warning("%s: skipped a record (%s) %s", topic, reason, detail[:200])


def skipped(topic: str) -> int:
    """Records of ``topic`` skipped by this process so far."""
    return _counts[topic]


def loads_or_skip(value: bytes | None, topic: str, want: type = dict) -> Any:
    """The JSON ``value`` if it is a ``want`` (a dict by default), else None (counted as skipped)."""
    try:
        out = orjson.loads(value) if value is not None else None
    except orjson.JSONDecodeError as exc:
        skip(topic, "invalid_json", str(exc))
        return None
    if not isinstance(out, want):
        skip(topic, "wrong_shape", f"expected a JSON {want.__name__}")
        return None
    return out
