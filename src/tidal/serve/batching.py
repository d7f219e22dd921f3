"""Adaptive batching: concurrent requests gathered into one model call.

Requests for one model version queue up until ``max_batch_size`` rows are waiting or
``max_batch_time`` seconds passed since the first of them (MLServer's names); then one
predict call scores them all (in a worker thread, so the event loop keeps accepting requests)
and each request gets its own slice back. With ``max_batch_size <= 1`` or ``max_batch_time
<= 0`` batching is off and every request is its own call.

>>> import asyncio, numpy as np
>>> calls = []
>>> def model(X):
...     calls.append(len(X))
...     return X[:, 0] * 2
>>> batcher = AdaptiveBatcher(model, max_batch_size=8, max_batch_time=0.05)
>>> async def clients():
...     return await asyncio.gather(*(batcher.predict(np.array([[float(i)]])) for i in range(4)))
>>> [r.tolist() for r in asyncio.run(clients())], calls
([[0.0], [2.0], [4.0], [6.0]], [4])
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from typing import Callable

import numpy as np

__all__ = ["AdaptiveBatcher"]

Predict = Callable[[np.ndarray], np.ndarray]


class AdaptiveBatcher:
    """Merge concurrent ``predict(X)`` calls for one model; counts ``calls``, ``requests``, ``rows``."""

    def __init__(self, fn: Predict, max_batch_size: int = 0, max_batch_time: float = 0.0,
                 executor: Executor | None = None, on_call: Callable[[int], None] | None = None) -> None:
        self.fn = fn
        self.max_batch_size = int(max_batch_size)
        self.max_batch_time = float(max_batch_time)
        self.executor = executor
        self.on_call = on_call
        self.calls = self.requests = self.rows = 0
        self._pending: list[tuple[np.ndarray, asyncio.Future]] = []
        self._pending_rows = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def enabled(self) -> bool:
        return self.max_batch_size > 1 and self.max_batch_time > 0

    async def predict(self, X: np.ndarray) -> np.ndarray:
        """Scores for the rows of ``X``, possibly computed together with other requests' rows."""
        self.requests += 1
        self.rows += len(X)
        loop = asyncio.get_running_loop()
        if not self.enabled:
            return await loop.run_in_executor(self.executor, self._call, X)
        future: asyncio.Future = loop.create_future()
        if self._pending and self._pending_rows + len(X) > self.max_batch_size:
            self._flush()  # this request would overflow the batch: send what is waiting first
        self._pending.append((X, future))
        self._pending_rows += len(X)
        if self._pending_rows >= self.max_batch_size:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.max_batch_time, self._flush)
        return await future

    def flush(self) -> None:
        """Send the waiting requests now, without waiting out ``max_batch_time`` (on the running loop)."""
        if self._pending:
            self._flush()

    def _call(self, X: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.on_call is not None:
            self.on_call(len(X))
        out = np.asarray(self.fn(X))
        if len(out) != len(X):
            raise ValueError(f"model returned {len(out)} scores for {len(X)} rows")
        return out

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        items, self._pending, self._pending_rows = self._pending, [], 0
        if items:
            task = asyncio.get_running_loop().create_task(self._execute(items))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _execute(self, items: list[tuple[np.ndarray, asyncio.Future]]) -> None:
        X = items[0][0] if len(items) == 1 else np.concatenate([x for x, _ in items])
        try:
            out = await asyncio.get_running_loop().run_in_executor(self.executor, self._call, X)
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the model's error
            for _, future in items:
                if not future.done():
                    future.set_exception(exc)
            return
        start = 0
        for x, future in items:
            if not future.done():  # a client that went away cancelled its future
                future.set_result(out[start:start + len(x)])
            start += len(x)
