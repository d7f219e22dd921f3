"""The step protocol: one required method, ``process(batch) -> batch``; everything else optional.

A step sees a whole micro-batch and should compute column-wise. It may **declare**:

- ``state_name``: the name of its state, unique in the pipeline. The worker then gives it a
  :class:`~tidal.stream.state.StateStore` (``ctx.store``, also ``self.state_store``) backed
  by the compacted topic ``<pipeline>.<state_name>.changelog``, restored on assignment and
  rolled back with an aborted transaction;
- ``side_outputs``: the topics it writes besides the sink (alerts, model snapshots, profiles;
  ``{pipeline}`` is replaced by the pipeline's name). It writes them with ``ctx.emit`` /
  ``ctx.alert``, never with a producer of its own: the worker produces them with the batch,
  inside its transaction (exactly-once) or acknowledged before the commit (at-least-once).

and the fields it reads and adds, so a pipeline can be checked before it runs
(:meth:`~tidal.stream.pipeline.Pipeline.check`): ``reads()`` (fields each event must carry,
e.g. a model's features) with ``read_types()`` where a type matters, ``adds()`` (the columns
it writes; ``None``: not known, which ends the check of later steps' fields), and ``check()``
(anything else that would fail every batch, found before the first one).

Optional hooks: ``open(ctx)`` when the worker starts, ``on_assign`` / ``on_revoke`` when Kafka
moves partitions, ``close()`` at shutdown. A step that raises has its whole batch sent to the
dead-letter topic with ``error_reason``; the pipeline goes on. See ``docs/architecture.md``.

>>> import numpy as np
>>> from tidal.stream.batch import Batch
>>> double = FunctionStep(lambda b: b.with_column("y", b.column("x") * 2), name="double")
>>> double.process(Batch.from_rows([{"x": 1.0}, {"x": 2.0}])).columns["y"]
array([2., 4.])
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable

from tidal.stream.batch import Batch

if TYPE_CHECKING:
    from tidal.stream.context import StepContext
    from tidal.stream.state import StateStore

__all__ = ["Step", "FunctionStep"]


class Step(ABC):
    """Base class for pipeline steps. Subclasses implement :meth:`process`."""

    name: str = "step"
    error_reason: str = "step_error"
    #: The state this step keeps in a changelog-backed store (``None``: stateless).
    state_name: str | None = None
    #: The store's backend when the step has state: ``memory`` or ``rocksdb`` (``None``: the pipeline's).
    state_backend: str | None = None
    state_path: str | None = None
    #: A persistent folder for ``rocksdb`` state: warm restarts replay only the changelog's tail
    #: (``None``: the pipeline's ``state: {dir: ...}``, else ``$TIDAL_STATE_DIR``, else scratch).
    state_dir: str | None = None
    #: Topics this step writes through ``ctx.emit`` (``{pipeline}`` is the pipeline's name).
    side_outputs: tuple[str, ...] = ()
    #: Set by the worker (or :meth:`Pipeline.test`) before :meth:`open`.
    ctx: "StepContext | None" = None
    state_store: "StateStore | None" = None

    @abstractmethod
    def process(self, batch: Batch) -> Batch:
        """Transform one micro-batch; return the batch to pass on (rejects travel inside it)."""

    def reads(self) -> list[str]:
        """Fields this step needs in every event (checked against the schema before a run)."""
        return []

    def adds(self) -> list[str] | None:
        """Columns this step adds (``None``: unknown; later steps' fields are then not checked)."""
        return None

    def read_types(self) -> dict[str, str]:
        """Types (``float``/``int``/``bool``/``str``) of the fields it reads, where it needs one."""
        return {}

    def check(self) -> list[str]:
        """Problems that would make this step fail at run time (e.g. an explain step whose model
        has no exact explanations), as one message each; checked before a run."""
        return []

    def outputs(self, pipeline: str) -> tuple[str, ...]:
        """The side-output topics of this step in ``pipeline``."""
        return tuple(t.replace("{pipeline}", pipeline) for t in self.side_outputs)

    def bind(self, ctx: "StepContext") -> None:
        """Give the step its context (and store); the worker calls it, then :meth:`open`."""
        self.ctx = ctx
        if ctx.store is not None:
            self.state_store = ctx.store

    def open(self, ctx: "StepContext") -> None:
        """Optional: the worker is starting (``ctx``: pipeline, cluster, metrics, store, emit)."""

    def on_assign(self, partitions: list[tuple[str, int]]) -> None:
        """Optional: partitions were assigned (their stores are already restored)."""

    def on_restored(self, partition: int, state: Any) -> None:
        """Optional: ``partition``'s state (this step's store partition) was restored, on the
        restore's thread, before :meth:`on_assign`: build what derives from the whole state
        here (an index over millions of keys), not in the first batch, which would hold up
        the worker's other partitions."""

    def on_revoke(self, partitions: list[tuple[str, int]]) -> None:
        """Optional: partitions are leaving this worker, or their batch was rolled back."""

    def close(self) -> None:
        """Optional: the worker is shutting down."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class FunctionStep(Step):
    """A step from a plain function ``batch -> batch``."""

    def __init__(self, fn: Callable[[Batch], Batch], name: str | None = None) -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "function")

    def process(self, batch: Batch) -> Batch:
        return self.fn(batch)

