"""The whole quality chain as one step: validate → impute → outliers → integrity → profile.

Each part is optional and configured as its own step would be; the chain writes fixed values
into the records once, at its end, instead of once per part. In YAML:

.. code-block:: yaml

    steps:
      - quality:
          validate: {}                                    # the pipeline schema's rules
          impute: {bytes: median, proto: most_frequent}
          outliers: {bytes: {method: mad, policy: flag, key: src}}
          integrity: {id: flow_id, sequence: {key: src, field: seq}}
          profile: {publish_every_s: 10}

>>> from tidal.stream.batch import Batch
>>> chain = QualityChain.from_dict({"impute": {"x": {"strategy": "constant", "value": 0}},
...                                 "integrity": {"id": "id"}})
>>> out = chain.process(Batch.from_rows([{"id": 1, "x": None}, {"id": 1, "x": 2.0}], types={"x": "float"}))
>>> out.values, chain.summary()["dropped"]
([b'{"id":1,"x":0.0,"quality_flags":["x:imputed"]}'], {'integrity/duplicate': 1})
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from tidal.quality.base import PartitionedStep, QualityBatch, QualityStep
from tidal.quality.impute import ImputeStep
from tidal.quality.integrity import IntegrityStep
from tidal.quality.normalize import NormalizeStep
from tidal.quality.outliers import OutlierStep
from tidal.quality.profile import ProfileStep
from tidal.quality.rules import ValidateStep

__all__ = ["QualityChain", "ORDER"]

ORDER = ("validate", "normalize", "impute", "outliers", "integrity", "profile")


def make_step(kind: str, args: Any) -> QualityStep:
    args = {} if args in (None, True) else args
    if kind == "validate":
        return ValidateStep(**args)  # an unknown option is a TypeError that names it
    if kind == "normalize":
        return NormalizeStep(args)
    if kind in ("impute", "outliers"):  # {field: spec, ...}, or {fields: {...}, window: .., ...} with options
        cls = ImputeStep if kind == "impute" else OutlierStep
        if "fields" in args:
            options = {k: v for k, v in args.items() if k != "fields"}
            return cls(args["fields"], **options)
        return cls(args)
    if kind == "integrity":
        return IntegrityStep(**args)
    return ProfileStep(**args)


class QualityChain(QualityStep):
    """Run quality steps in order on one batch; fixed values are written once, at the end.

    A part that raises sends the rows still in the batch to the DLQ (``step_error``, named
    after the part); rows an earlier part dropped stay dropped, so nothing is counted twice.
    """

    name = "quality"

    def __init__(self, steps: Sequence[QualityStep]) -> None:
        super().__init__()
        self.steps = list(steps)

    def reads(self) -> list[str]:
        return [f for s in self.steps for f in s.reads()]

    def adds(self) -> list[str] | None:
        out: list[str] = []
        for s in self.steps:
            got = s.adds()
            if got is None:
                return None
            out += got
        return out

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> "QualityChain":
        unknown = set(spec) - set(ORDER)
        if unknown:
            raise ValueError(f"unknown quality parts {sorted(unknown)}; use {list(ORDER)}")
        return cls([make_step(kind, spec[kind]) for kind in ORDER if kind in spec and spec[kind] is not False])

    def apply(self, batch: QualityBatch) -> QualityBatch:
        for step in self.steps:
            if not len(batch):
                break
            step.seen += len(batch)
            try:
                batch = step.apply(batch)
            except Exception as exc:  # noqa: BLE001 - like the worker: the rows still here go to the DLQ
                return batch.reject_all(step.error_reason, f"{type(exc).__name__}: {exc}", step.name)
        return batch

    def outputs(self, pipeline: str) -> tuple[str, ...]:
        """The side outputs of the chain's parts (a profile's ``<pipeline>.quality``)."""
        return tuple(dict.fromkeys(t for s in self.steps for t in s.outputs(pipeline)))

    def open(self, ctx: Any) -> None:
        super().open(ctx)
        for s in self.steps:  # the parts write through the chain's context; the chain holds the state
            s.ctx = ctx
            s.open(ctx)

    def on_assign(self, partitions: list[tuple[str, int]]) -> None:
        for s in self.steps:
            s.on_assign(partitions)
        self._recover([tuple(tp) for tp in partitions])

    def partitioned_parts(self) -> list[PartitionedStep]:
        return [s for s in self.steps if isinstance(s, PartitionedStep)]

    def on_revoke(self, partitions: list[tuple[str, int]]) -> None:
        for s in self.steps:
            s.on_revoke(partitions)

    def close(self) -> None:
        for s in self.steps:
            s.close()

    def summary(self) -> dict[str, Any]:
        """Every part's counts: violations as ``step/field/rule/action``, drops as ``step/reason``."""
        out: dict[str, Any] = {"seen": self.seen, "violations": {}, "dropped": {}}
        for s in self.steps:
            for (f, rule, action), n in s.counts.items():
                out["violations"][f"{s.name}/{f}/{rule}/{action}"] = n
            for reason, n in s.dropped.items():
                out["dropped"][f"{s.name}/{reason}"] = n
        return out


def from_spec(args: dict, base: Any = None, kind: str = "quality", previous: list | None = None) -> QualityStep:
    """YAML ``- quality: {...}`` (a chain) or one part: ``- impute: {bytes: median}``, ``- validate: ...``."""
    return QualityChain.from_dict(args) if kind == "quality" else make_step(kind, args)
