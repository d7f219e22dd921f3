"""How the engine reports to the layers above it, without importing them.

The worker calls a :class:`WorkerHooks` at fixed points of its loop. The base class does
nothing; the monitor's implementation (registered under the entry point group
``tidal.worker_hooks``, see :func:`default_hooks`) records Prometheus metrics and evaluates
alert rules, whose events it hands back through ``emit_alert`` so they travel with the
worker's delivery like any side output.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from tidal.stream.batch import Batch
    from tidal.stream.pipeline import Pipeline

__all__ = ["WorkerHooks", "default_hooks", "HOOKS_GROUP"]

HOOKS_GROUP = "tidal.worker_hooks"


class WorkerHooks:
    """No-op hooks: a worker with these records nothing beyond :class:`WorkerStats`."""

    #: A prometheus ``CollectorRegistry`` that steps may register their metrics on (or None).
    registry: Any = None

    def started(self, pipeline: "Pipeline", emit_alert: Callable[[dict[str, Any]], None]) -> None:
        """The worker starts ``pipeline``; ``emit_alert(event)`` writes to ``tidal.alerts``."""

    def serve(self, port: int, health: Callable[[], dict[str, bool]] | None = None) -> int | None:
        """Serve the metrics on ``port`` (``/metrics``; ``health()`` → ``{"live": .., "ready": ..}``
        on ``/health/live`` and ``/health/ready``); returns the port, or None if not served."""
        return None

    def alert_topics(self) -> tuple[str, ...]:
        """Topics the hooks write through ``emit_alert`` (created with the pipeline's topics)."""
        return ()

    def batch(self, batch: "Batch", n_in: int, n_out: int, seconds: float) -> None:
        """One batch was processed and produced (``batch``: its outputs and rejects)."""

    def step_seconds(self, step: str, seconds: float) -> None:
        """One step took ``seconds`` on one batch."""

    def produce_error(self) -> None:
        """The broker refused one record."""

    def committed(self) -> None:
        """Offsets were committed (or a transaction)."""

    def rebalanced(self) -> None:
        """Partitions were assigned or revoked."""

    def revoked(self, topic: str, partition: int) -> None:
        """``partition`` left this worker: forget what was reported for it."""

    def lag(self, topic: str, partition: int, messages: int, seconds: float) -> None:
        """Consumer lag of one assigned partition."""

    def stalled(self, topic: str, partition: int, seconds: float) -> None:
        """How long ``partition`` has been behind with its position not moving (0: it moves)."""

    def state_size(self, store: str, entries: int) -> None:
        """Keys held by one state store."""

    def state_restore(self, store: str, records: int, remaining: int) -> None:
        """A restore of ``store`` applied ``records`` more changelog records; ``remaining`` left to read."""

    def state_restored(self, store: str, warm: int, cold: int) -> None:
        """A restore of ``store`` ended: ``warm`` partitions from a local checkpoint, ``cold`` from scratch."""

    def tick(self, now: float) -> None:
        """About once a second, idle or not (evaluate alert rules here)."""


def default_hooks(pipeline: "Pipeline") -> WorkerHooks:
    """The hooks registered under ``tidal.worker_hooks`` (the monitor's), else no-op hooks."""
    for ep in entry_points(group=HOOKS_GROUP):
        return ep.load()(pipeline)
    return WorkerHooks()
