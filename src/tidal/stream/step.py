"""The step protocol: one required method, ``process(batch) -> batch``.

A step sees a whole micro-batch and should compute column-wise. Optional hooks run when the
worker starts (``open``), when Kafka assigns or revokes partitions, and when it shuts down. A step that raises has
its whole batch sent to the dead-letter topic with ``error_reason``; the pipeline goes on.

>>> import numpy as np
>>> from tidal.stream.batch import Batch
>>> double = FunctionStep(lambda b: b.with_column("y", b.column("x") * 2), name="double")
>>> double.process(Batch.from_rows([{"x": 1.0}, {"x": 2.0}])).columns["y"]
array([2., 4.])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from tidal.stream.batch import Batch

if TYPE_CHECKING:
    from tidal.config import KafkaSettings

__all__ = ["Step", "FunctionStep"]


class Step:
    """Base class for pipeline steps. Subclasses implement :meth:`process`."""

    name: str = "step"
    error_reason: str = "step_error"

    def process(self, batch: Batch) -> Batch:
        raise NotImplementedError

    def open(self, settings: "KafkaSettings", pipeline: str) -> None:
        """The worker is starting on this cluster (connect to side topics, start threads here)."""

    def attach_metrics(self, metrics: Any) -> None:
        """Register this step's own metrics on the worker's registry (``metrics.registry``)."""

    def on_assign(self, partitions: list[tuple[str, int]]) -> None:
        """Partitions were assigned to this worker (restore per-partition state here)."""

    def on_revoke(self, partitions: list[tuple[str, int]]) -> None:
        """Partitions are leaving this worker (flush per-partition state here)."""

    def close(self) -> None:
        """The worker is shutting down."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class FunctionStep(Step):
    """A step from a plain function ``batch -> batch``."""

    def __init__(self, fn: Callable[[Batch], Batch], name: str | None = None) -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "function")

    def process(self, batch: Batch) -> Batch:
        return self.fn(batch)
