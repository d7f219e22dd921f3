"""State restored in the background, so a rebalance never stops the other partitions.

When partitions with state are assigned, the worker pauses them and a :class:`Restore`
rebuilds their state from the changelog on its own thread, into staging stores
(:meth:`~tidal.stream.state.StateStore.staging`). Meanwhile the worker goes on with the
partitions it already had and keeps polling, so the group never sees it stuck past
``max.poll.interval.ms`` (what turns one long restore into a rebalance storm). When the
restore ends, the worker adopts the partitions into its live stores and resumes them. A
revocation of one of them calls the restore off (:meth:`Restore.cancel`); the partitions
still held are restored again.

    >>> from tidal.stream.state import StateStore
    >>> job = Restore(None, {0: StateStore("counts")}, [("events", 1)], {1: -1})
    >>> job.partitions
    [1]
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from tidal.config import KafkaSettings
from tidal.stream.state import RestoreCancelled, StateStore, restore_partitions

__all__ = ["Restore"]

log = logging.getLogger("tidal.worker")


class Restore:
    """Restore ``tps`` (``(topic, partition)`` pairs) of every store in ``stores`` (by step
    index) to ``upto`` (per store partition: the committed source offset, or ``{topic:
    offset}`` with several sources), on a thread of its own once :meth:`start` is called.

    ``progress(store, records, remaining)`` and ``finished(store, warm, cold)`` report to the
    worker's hooks; ``restored(step index, partition, state)`` lets the step prepare (both from
    the restore's thread).
    """

    def __init__(self, settings: KafkaSettings | None, stores: dict[int, StateStore], tps: list[tuple[str, int]],
                 upto: dict[int, Any], progress: Callable[[str, int, int], None] | None = None,
                 finished: Callable[[str, int, int], None] | None = None,
                 restored: Callable[[int, int, Any], None] | None = None) -> None:
        self.settings = settings
        self.tps = list(tps)
        self.upto = upto
        self.staging = {i: store.staging() for i, store in stores.items()}
        self.progress = progress
        self.finished = finished
        self.restored = restored
        self.error: BaseException | None = None
        self.records = 0
        self.started_at = 0.0
        self.seconds = 0.0
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def partitions(self) -> list[int]:
        return sorted({q for _t, q in self.tps})

    def start(self) -> None:
        self.started_at = time.monotonic()
        self._thread = threading.Thread(target=self.run, name=f"tidal-restore-{self.partitions}", daemon=True)
        self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def done(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    def run(self) -> None:
        """Restore on the calling thread (:meth:`start` calls it on a thread of its own); an
        error is kept for :meth:`adopt` to raise."""
        if not self.started_at:
            self.started_at = time.monotonic()
        try:
            for i, store in self.staging.items():
                progress = None
                if self.progress is not None:
                    progress = lambda k, left, name=store.name: self.progress(name, k, left)  # noqa: E731
                self.records += restore_partitions(self.settings, store, self.upto, progress=progress,
                                                   cancelled=self._cancel.is_set)
                r = store.last_restore
                if self.restored is not None:
                    for q, part in store.partitions.items():
                        if self._cancel.is_set():
                            return
                        self.restored(i, q, part)
                if self.finished is not None:
                    self.finished(store.name, len(r.get("warm", ())), len(r.get("cold", ())))
        except RestoreCancelled:
            pass
        except BaseException as exc:  # noqa: BLE001 - raised again on the worker's thread (adopt)
            self.error = exc
        finally:
            self.seconds = time.monotonic() - self.started_at

    def cancel(self) -> None:
        """Call the restore off, wait for its thread, and drop what it restored so far."""
        self._cancel.set()
        if self._thread is not None:
            self._thread.join()
        for store in self.staging.values():
            store.discard()

    def adopt(self, stores: dict[int, StateStore]) -> None:
        """Move the restored partitions into the live ``stores``; a restore that failed raises
        its error here, on the caller's thread."""
        if self.error is not None:
            for store in self.staging.values():
                store.discard()
            raise self.error
        for i, store in self.staging.items():
            stores[i].adopt(store)
            r = stores[i].last_restore
            log.info("restored %s %s: %d changelog records in %.2fs (%d read; warm from a local checkpoint: %s)",
                     store.name, self.partitions, r.get("applied", 0), r.get("seconds", 0.0), r.get("read", 0),
                     r.get("warm") or "none")
