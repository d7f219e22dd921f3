"""Text helpers shared by the commands' tables."""

from __future__ import annotations

from typing import Any


def one_line(text: Any, n: int = 100) -> str:
    """``text`` on one line, cut to ``n`` characters (a library's error can be 600 long; ``--json`` has it all).

    >>> one_line("a\\n  b " + "c" * 10, 8)
    'a b ccc…'
    """
    text = " ".join(str(text or "").split())
    return text if len(text) <= n else text[:n - 1] + "…"
