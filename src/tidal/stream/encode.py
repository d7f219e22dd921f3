"""A batch → output records (JSON bytes) and dead-letter records.

An output record is the input record as it arrived plus the batch's output columns. The
columns are serialised column-wise by orjson and spliced onto the original JSON object, so
no record is parsed or re-encoded field by field.

>>> from tidal.stream.batch import Batch
>>> b = Batch.from_rows([{"a": 1}, {"a": 2}]).with_column("score", [0.25, 0.5])
>>> encode_outputs(b)
[b'{"a":1,"score":0.25}', b'{"a":2,"score":0.5}']
"""

from __future__ import annotations

import hashlib
from itertools import repeat
from typing import Any

import numpy as np
import orjson

from tidal.stream.batch import Batch, Reject

__all__ = ["encode_outputs", "dlq_headers", "column_fragments", "fit_dead_letter", "produce_error_headers"]


def column_fragments(values: np.ndarray | list[Any]) -> list[bytes]:
    """Each value of a column as a JSON fragment; numeric columns take one orjson call."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiub":  # orjson writes NaN/inf as null
        return orjson.dumps(values.tolist())[1:-1].split(b",") if len(values) else []
    items = values.tolist() if isinstance(values, np.ndarray) else list(values)
    try:
        distinct = set(items)
    except TypeError:  # unhashable values (lists, dicts)
        distinct = None
    if distinct is not None and len(distinct) <= 256 and all(type(v) is str for v in distinct):
        # labels, names, versions: encode each string once (only str: 1, 1.0 and True hash alike)
        memo = {v: orjson.dumps(v, option=orjson.OPT_SERIALIZE_NUMPY) for v in distinct}
        return list(map(memo.__getitem__, items))
    dumps, opt = orjson.dumps, orjson.OPT_SERIALIZE_NUMPY
    return [b"null" if v is None else dumps(v, option=opt) for v in items]  # sparse columns: mostly None


def encode_outputs(batch: Batch) -> list[bytes]:
    """The JSON value of each row's output record."""
    if not batch.outputs:
        return list(batch.values)  # type: ignore[arg-type]
    heads = [v[:-1] if v[-1] == 125 else v.rstrip()[:-1] for v in batch.values]  # 125 is "}"
    # Each row is joined from: its head, then per output column a constant (',"name":') and the
    # row's cell. A column with one value for every row (model name, version, topic) folds into
    # the constant, so only the columns that vary cost a fragment per row.
    parts: list[Any] = [heads]
    const = b""
    for name in batch.outputs:
        const += b"," + orjson.dumps(name) + b":"
        cells = column_fragments(batch.columns[name])
        if cells and cells.count(cells[0]) == len(cells):
            const += cells[0]
        else:
            parts += [repeat(const), cells]
            const = b""
    parts.append(repeat(const + b"}"))
    out = list(map(b"".join, zip(*parts)))
    # An empty input object ("{}", "{ }") has no '"'; drop the comma its first field got.
    for i in np.flatnonzero(np.fromiter(map(len, heads), np.int64, len(heads)) < 8).tolist():
        if b'"' not in heads[i]:
            out[i] = b"{" + out[i][len(heads[i]) + 1:]
    return out


def dlq_headers(r: Reject, pipeline: str) -> list[tuple[str, bytes]]:
    """Headers of a dead-letter record: why it failed and where it came from.

    The record's value and key are the original bytes, so it can be fixed and replayed, and its
    own headers come first (without earlier ``tidal.error.*`` / ``tidal.source.*``, which a
    replayed record may carry). Header names follow Kafka Connect's ``__connect.errors.*`` idea
    under a ``tidal.`` prefix.
    """
    own = [(k, v) for k, v in (r.headers or ()) if not k.startswith(("tidal.error.", "tidal.source.", "tidal.pipeline"))]
    return own + [
        ("tidal.error.reason", r.reason.encode()),
        ("tidal.error.message", r.message.encode("utf-8", "replace")[:4096]),
        ("tidal.error.step", r.step.encode()),
        ("tidal.pipeline", pipeline.encode()),
        ("tidal.source.topic", r.topic.encode()),
        ("tidal.source.partition", str(r.partition).encode()),
        ("tidal.source.offset", str(r.offset).encode()),
        ("tidal.source.timestamp", str(r.timestamp).encode()),
    ]


def produce_error_headers(pipeline: str, topic: str, error: str) -> list[tuple[str, bytes]]:
    """Headers of a dead letter for a record the client refused to produce to ``topic``."""
    return [
        ("tidal.error.reason", b"produce_error"),
        ("tidal.error.message", f"producing to {topic}: {error}".encode("utf-8", "replace")[:4096]),
        ("tidal.error.step", b"produce"),
        ("tidal.pipeline", pipeline.encode()),
    ]


def fit_dead_letter(value: bytes | None, headers: list[tuple[str, bytes]], limit: int
                    ) -> tuple[bytes | None, list[tuple[str, bytes]]]:
    """``value`` cut to ``limit`` bytes when longer, with its original size and sha256 in headers
    (``tidal.error.original_size``, ``tidal.error.sha256``, ``tidal.error.truncated``).

    >>> v, h = fit_dead_letter(b"x" * 10, [], 4)
    >>> v, dict(h)["tidal.error.original_size"]
    (b'xxxx', b'10')
    """
    if value is None or len(value) <= limit:
        return value, headers
    return value[:limit], headers + [
        ("tidal.error.original_size", str(len(value)).encode()),
        ("tidal.error.sha256", hashlib.sha256(value).hexdigest().encode()),
        ("tidal.error.truncated", b"true"),
    ]
