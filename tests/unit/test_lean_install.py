"""The lean install: `tidal run` on a scikit-learn / LightGBM pipeline needs none of the extras.

The test blocks every module an extra provides (as if it were not installed) and loads and runs
such a pipeline in memory, then checks that a step needing an extra names the extra to install.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tidal.cli.main import EXTRAS


def run(code: str, tmp_path) -> subprocess.CompletedProcess:
    blocker = textwrap.dedent(f"""
        import sys
        for name in {sorted(EXTRAS)!r}:
            sys.modules[name] = None  # import name -> ModuleNotFoundError, as in a lean install
    """)
    return subprocess.run([sys.executable, "-c", blocker + textwrap.dedent(code)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


def test_a_lightgbm_pipeline_loads_and_scores_without_any_extra(tmp_path):
    import lightgbm
    import numpy as np

    from tidal.models import save_model

    X = np.random.default_rng(0).random((200, 2))
    save_model(lightgbm.LGBMClassifier(n_estimators=5, verbose=-1).fit(X, X[:, 0] > 0.5), tmp_path / "m", "m", 1,
               ["x", "y"])
    (tmp_path / "p.yaml").write_text("pipeline: lean\nschema: {x: float, y: float}\nsteps:\n  - score: {model: m}\n")
    r = run("""
        from tidal.stream.spec import load_pipeline
        p = load_pipeline("p.yaml"); p.check()
        out, rejects = p.test([b'{"x": 0.9, "y": 0.1}', b'not json'])
        print(len(out), [r.reason for r in rejects])
        import tidal.cli.main, tidal.stream.worker, tidal.monitor.hooks  # what `tidal run` imports
    """, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[0] == "1 ['invalid_json']"


def test_a_step_that_needs_an_extra_names_it(tmp_path):
    (tmp_path / "p.yaml").write_text("pipeline: lean\nschema: {x: float}\nsteps:\n  - anomaly: {field: x}\n")
    r = run("""
        import sys
        sys.argv = ["tidal", "run", "p.yaml", "--bootstrap", "127.0.0.1:1"]
        from tidal.cli.main import main
        main()
    """, tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "pip install 'tidal[detect]'" in r.stderr
