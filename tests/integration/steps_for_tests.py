"""Steps that worker subprocesses load by 'module:attr' in the delivery tests."""

import time


def slow(batch):
    """Make each batch take a while, so a test can kill a worker mid-stream."""
    time.sleep(0.03)
    return batch.with_column("seen", [True] * len(batch))


def slower(batch):
    """Slow enough that a second worker joins while the first is still busy."""
    time.sleep(0.3)
    return batch
