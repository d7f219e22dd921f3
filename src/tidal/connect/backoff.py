"""Exponential back-off with jitter for outside systems that are down.

>>> b = Backoff(initial=0.5, maximum=4.0, jitter=0.0)
>>> [b.next_delay() for _ in range(5)]
[0.5, 1.0, 2.0, 4.0, 4.0]
>>> b.reset(); b.next_delay()
0.5
"""

from __future__ import annotations

import random
import threading

__all__ = ["Backoff"]


class Backoff:
    """Delays that double from ``initial`` up to ``maximum``; ``reset()`` after a success."""

    def __init__(self, initial: float = 0.2, maximum: float = 10.0, jitter: float = 0.2) -> None:
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self.attempts = 0

    def next_delay(self) -> float:
        delay = min(self.maximum, self.initial * (2 ** self.attempts))
        self.attempts += 1
        return delay * (1 + random.uniform(-self.jitter, self.jitter)) if self.jitter else delay

    def reset(self) -> None:
        self.attempts = 0

    def wait(self, stop: threading.Event | None = None) -> float:
        """Sleep the next delay (returns early when ``stop`` is set); the delay slept."""
        delay = self.next_delay()
        if stop is not None:
            stop.wait(delay)
        else:
            threading.Event().wait(delay)
        return delay
