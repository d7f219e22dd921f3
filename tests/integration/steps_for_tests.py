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


def marked(batch):
    """Count the batches in the file ``$TIDAL_TEST_MARK``, then take 0.3 s: a test that sees the
    count rise kills the worker inside a step, outside any open transaction."""
    import os
    from pathlib import Path

    mark = Path(os.environ["TIDAL_TEST_MARK"])
    mark.write_text(str(int(mark.read_text() or 0) + 1) if mark.exists() else "1")
    time.sleep(0.3)
    return batch
