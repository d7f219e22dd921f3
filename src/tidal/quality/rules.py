"""The validate step: a schema's normalisation and rules, applied column-wise with a policy per rule.

Per field, in this order: normalise (timestamps, units, numeric strings, trim, case), then
the rules ``missing``, ``null``, ``type``, ``range`` (``min``/``max``), ``enum`` and
``pattern``. Each rule's policy decides where a violating record goes:

========  =====================================================  =====================
policy    the record                                             DLQ reason
========  =====================================================  =====================
reject    goes to the DLQ with its original bytes                missing_field, null_value,
                                                                 wrong_type, out_of_range,
                                                                 not_in_enum, pattern_mismatch
fix       goes on with the value fixed: clipped into range, or   —
          the field's ``default`` (else null) for the others
flag      goes on unchanged, ``"<field>:<rule>"`` in its          —
          ``quality_flags`` list
========  =====================================================  =====================

A record that breaks several ``reject`` rules goes to the DLQ once, with the first reason;
every violation is counted per (field, rule, action).

>>> from tidal.quality.schema import Schema
>>> from tidal.stream.decode import decode_values
>>> schema = Schema.from_dict({"port": {"type": "int", "min": 0, "max": 65535},
...                            "proto": {"type": "str", "enum": ["tcp", "udp"], "case": "lower",
...                                      "policy": {"enum": "flag"}}})
>>> batch = decode_values([b'{"port": 80, "proto": "TCP"}', b'{"port": 70000, "proto": "udp"}',
...                        b'{"port": 53, "proto": "gre"}'], schema)
>>> step = ValidateStep(schema)
>>> out = step.process(batch)
>>> out.values, [(r.reason, r.message) for r in out.rejected]
([b'{"port":80,"proto":"tcp"}', b'{"port": 53, "proto": "gre","quality_flags":["proto:enum"]}'], [('out_of_range', 'port: 70000 > max 65535')])
>>> out.columns["quality_flags"].tolist(), dict(step.counts)
([(), ('proto:enum',)], {('port', 'range', 'reject'): 1, ('proto', 'enum', 'flag'): 1})
"""

from __future__ import annotations

import operator
import re
from itertools import repeat
from typing import Any, Mapping

import msgspec

import numpy as np

from tidal.quality.base import _ENCODE, QualityBatch, QualityStep, add_flags, ensure_flags, raw_column
from tidal.quality.normalize import BAD, MISSING, NULL, OK, normalize_field, typed
from tidal.quality.schema import Field, Schema, schema_of

__all__ = ["ValidateStep", "REASONS"]

_UNSET = msgspec.UNSET
REASONS = {"missing": "missing_field", "null": "null_value", "type": "wrong_type", "range": "out_of_range",
           "enum": "not_in_enum", "pattern": "pattern_mismatch"}


class ValidateStep(QualityStep):
    """Apply ``schema``'s normalisation and rules (default: the schema the pipeline decoded with).

    Fields without rules cost nothing: msgspec already type-checked them while decoding.
    Records decoded from a binary wire format (Avro) are re-encoded as JSON here, so outputs
    are JSON; the DLQ still gets the original bytes.
    """

    name = "validate"

    def __init__(self, schema: Schema | Mapping[str, Any] | None = None, flags: bool = True) -> None:
        super().__init__()
        self.schema = Schema.from_dict(schema) if isinstance(schema, Mapping) else schema
        self.flags = flags
        self._patterns: dict[str, re.Pattern] = {}

    def apply(self, batch: QualityBatch) -> QualityBatch:
        if not len(batch):
            return batch
        schema = self.schema or (schema_of(batch.rows[0]) if batch.rows else None)
        if schema is None:
            raise ValueError("validate needs a schema: give one, or declare `schema:` on the pipeline")
        if schema.wire is not None:
            self._transcode(batch)
        if self.flags:
            ensure_flags(batch)
        n = len(batch)
        reason = np.empty(n, dtype=object)  # first reject reason per row (None: not rejected)
        message = np.empty(n, dtype=object)
        for f in schema.fields:
            if f.has_rules:
                self._field(batch, f, reason, message)
        rejected = np.fromiter((r is not None for r in reason.tolist()), bool, n)
        for r in sorted(set(reason[rejected].tolist())):
            rows = (reason == r)
            batch = batch.reject(rows, r, list(message), self.name)
            keep = ~rows
            reason, message = reason[keep], message[keep]
        return batch

    # -- one field ------------------------------------------------------------------------
    def _field(self, batch: QualityBatch, f: Field, reason: np.ndarray, message: np.ndarray) -> None:
        if f.lenient:
            raw = raw_column(batch, f.name)
            units = raw_column(batch, f.unit_field) if f.unit_field else None
            col, status, changed = normalize_field(f, raw, units)
        else:  # msgspec checked the type: only nulls (and unset cells) to find
            col = batch.column(f.name).copy()
            raw = col
            status = np.zeros(len(col), dtype=np.int8)
            if col.dtype.kind == "f":
                status[np.isnan(col)] = NULL
            elif col.dtype == object:
                status[np.equal(col, None)] = NULL
            if f.policy_for("missing") != "reject":
                raw = raw_column(batch, f.name)
                status[np.fromiter(map(operator.is_, raw, repeat(_UNSET)), bool, len(raw))] = MISSING
            if col.dtype.kind in "iub" and f.type != "str":
                col = col.astype(np.float64)
            changed = np.zeros(len(col), dtype=bool)
        numeric = f.type != "str"
        if numeric and col.dtype == object:
            col = col.astype(np.float64)
        present = status == OK

        def hit(rule: str, mask: np.ndarray, describe) -> np.ndarray:
            """Count and route violations of ``rule``; returns the rows to fix."""
            policy = f.policy_for(rule)
            n = int(np.count_nonzero(mask))
            if not n:
                return mask
            self.count(f.name, rule, policy, n)
            if policy == "reject":
                for i in np.flatnonzero(mask & np.equal(reason, None)).tolist():
                    reason[i] = REASONS[rule]
                    message[i] = describe(i)
                return np.zeros_like(mask)
            if policy == "flag":
                add_flags(batch, mask, f"{f.name}:{rule}")
                return np.zeros_like(mask)
            return mask

        def fill(rows: np.ndarray) -> None:
            if rows.any():
                col[rows] = (np.nan if numeric else None) if f.default is None else f.default
                changed[rows] = True

        fill(hit("missing", status == MISSING, lambda i: f"{f.name}: missing"))
        fill(hit("null", (status == NULL) & (not f.nullable), lambda i: f"{f.name}: null"))
        fill(hit("type", status == BAD, lambda i: f"{f.name}: {_show(raw[i])} is not {f.type}"))
        if f.min is not None or f.max is not None:
            lo = -np.inf if f.min is None else float(f.min)
            hi = np.inf if f.max is None else float(f.max)
            if numeric:
                with np.errstate(invalid="ignore"):
                    below, above = present & (col < lo), present & (col > hi)
                rows = hit("range", below | above, lambda i: f"{f.name}: {_show(col[i])} "
                           + (f"< min {_show(f.min)}" if below[i] else f"> max {_show(f.max)}"))
                if rows.any():
                    col[rows] = np.clip(col[rows], lo, hi)
                    changed[rows] = True
        if f.enum is not None:
            allowed = set(f.enum)
            vals = col.tolist()
            inside = np.fromiter(map(allowed.__contains__, vals), bool, len(vals))
            fill(hit("enum", present & ~inside, lambda i: f"{f.name}: {_show(vals[i])} not in {list(f.enum)}"))
        if f.pattern is not None and not numeric:
            rx = self._patterns.get(f.pattern) or self._patterns.setdefault(f.pattern, re.compile(f.pattern))
            vals = col.tolist()
            memo = {v: rx.fullmatch(v) is not None for v in set(v for v in vals if type(v) is str)}
            ok = np.fromiter(map(memo.get, vals, repeat(True)), bool, len(vals))
            fill(hit("pattern", present & ~ok, lambda i: f"{f.name}: {_show(vals[i])} does not match {f.pattern}"))
        batch.with_column(f.name, typed(col, f) if numeric else col, output=False)
        batch.mark(f.name, changed)
        if f.unit and f.unit_field and changed.any():
            units = np.empty(len(batch), dtype=object)
            units[:] = raw_column(batch, f.unit_field)
            units[changed] = f.unit
            batch.with_column(f.unit_field, units, output=False)
            batch.mark(f.unit_field, changed)

    def _transcode(self, batch: QualityBatch) -> None:
        """Binary (Avro) records → JSON records, so outputs are JSON; originals kept for the DLQ."""
        originals = batch.originals or [None] * len(batch)
        batch.originals = [o if o is not None else v for o, v in zip(originals, batch.values)]
        batch.values = [_ENCODE(r) for r in batch.rows]


def _show(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    text = repr(v) if not isinstance(v, (int, float)) else str(v)
    return text if len(text) <= 80 else text[:77] + "..."

