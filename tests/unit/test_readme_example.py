"""The README's stateful step with a side output runs as printed."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_stateful_step_example_runs():
    text = README.read_text()
    at = text.index("class BigSpenders(Step):")
    code = text[text.rindex("```python", 0, at) + len("```python"):text.index("```", at)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    printed = out.getvalue()
    assert '"card_total":1100.0' in printed and printed.count("card_total") == 2
    assert 'tidal.alerts b\'{"type":"big_spender","rule":"big_spender:c1","state":"firing"' in printed
