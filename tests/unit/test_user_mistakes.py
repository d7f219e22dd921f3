"""Typical mistakes of a first hour with tidal: each is one line (plus at most a hint), a non-zero
exit and no traceback. Each case is what a newcomer really types."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from tidal.cli.main import app

FEATURES = ["temperature", "vibration", "humidity"]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A folder with a LightGBM model (lgb), a GradientBoosting one (gbc) and a registry holding lgb as v1."""
    from lightgbm import LGBMClassifier
    from sklearn.ensemble import GradientBoostingClassifier

    from tidal.models import save_model
    from tidal.registry import Registry

    root = tmp_path_factory.mktemp("first-hour")
    rng = np.random.default_rng(0)
    X = rng.random((300, 3))
    y = (X[:, 0] > 0.5).astype(int)
    save_model(LGBMClassifier(n_estimators=5, verbose=-1).fit(X, y), root / "lgb", "sensor", 1, FEATURES)
    save_model(GradientBoostingClassifier(n_estimators=3).fit(X, y), root / "gbc", "sensor", 1, FEATURES)
    (root / "empty").mkdir()
    reg = Registry(root / "registry")
    reg.register("sensor", folder=root / "lgb")
    reg.promote("sensor", 1)
    return root


def yaml_file(root, name: str, doc) -> str:
    path = root / f"{name}.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return str(path)


GOOD_SCHEMA = dict.fromkeys(FEATURES, "float")

# (what, command line: {root} is the fixture's folder, what the message must say)
MISTAKES = [
    ("top-level key misspelt", ["check", "Y:{'pipeline': 's', 'stpes': []}"], "['stpes'] (did you mean 'steps'?)"),
    ("batch key misspelt", ["check", "Y:{'pipeline': 's', 'batch': {'max_bach': 10}}"], "did you mean 'max_batch'?"),
    ("step option misspelt", ["check", "Y:{'pipeline': 's', 'schema': GOOD, 'steps': [{'score': {'model': '{root}/lgb', "
                                       "'treshold': 0.3}}]}"], "did you mean 'threshold'?"),
    ("unknown step type", ["check", "Y:{'pipeline': 's', 'steps': [{'scor': {'model': 'x'}}]}"], "did you mean 'score'?"),
    ("max_batch not a number", ["check", "Y:{'pipeline': 's', 'batch': {'max_batch': 'lots'}}"],
     "max_batch must be a whole number, not 'lots'"),
    ("model folder missing", ["check", "Y:{'pipeline': 's', 'steps': [{'score': {'model': '{root}/nope'}}]}"], "nope"),
    ("model feature the events lack", ["check", "Y:{'pipeline': 's', 'schema': {'temperature': 'float', 'vibration': "
                                                "'float'}, 'steps': [{'score': {'model': '{root}/lgb'}}]}"], "'humidity'"),
    ("feature of another type", ["check", "Y:{'pipeline': 's', 'schema': {'temperature': 'float', 'vibration': 'float', "
                                          "'humidity': 'str'}, 'steps': [{'score': {'model': '{root}/lgb'}}]}"], "as str"),
    ("explain after a model it cannot explain", ["check", "Y:{'pipeline': 's', 'schema': GOOD, 'steps': [{'score': "
                                                          "{'model': '{root}/gbc'}}, {'explain': {}}]}"],
     "GradientBoostingClassifier"),
    ("explain with no model before it", ["check", "Y:{'pipeline': 's', 'steps': [{'explain': {}}]}"], "score or deployed"),
    ("schema type misspelt", ["check", "Y:{'pipeline': 's', 'schema': {'amount': 'flaot'}}"], "flaot"),
    ("YAML syntax error", ["check", "Y:pipeline: s\nsteps: [\n"], "not valid YAML: line 3"),
    ("pipeline without a name", ["check", "Y:{'steps': []}"], "name"),
    ("run: broken pipeline", ["run", "Y:{'pipeline': 's', 'stpes': []}", "--bootstrap", "127.0.0.1:1"], "stpes"),
    ("run: no broker there", ["run", "Y:{'pipeline': 's'}", "--bootstrap", "127.0.0.1:1"], "127.0.0.1:1"),
    ("canary share over 1", ["models", "deploy", "sensor", "--mode", "canary", "--version", "1", "--share", "1.5",
                             "--registry", "{root}/registry", "--no-publish"], "share"),
    ("unknown deployment mode", ["models", "deploy", "sensor", "--mode", "canery", "--version", "1",
                                 "--registry", "{root}/registry", "--no-publish"], "canery"),
    ("promote a version that does not exist", ["models", "promote", "sensor", "9", "--registry", "{root}/registry",
                                               "--no-publish"], "9"),
    ("register a folder with no model", ["models", "register", "sensor", "{root}/empty", "--registry",
                                         "{root}/registry"], "empty"),
    ("show a model that does not exist", ["models", "show", "models:/nosuch/1", "--registry", "{root}/registry"],
     "nosuch"),
]


@pytest.mark.parametrize("what,argv,says", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_a_typical_mistake_is_one_line_and_a_hint(home, what, argv, says):
    args = []
    for i, a in enumerate(argv):
        if a.startswith("Y:"):
            text = a[2:].replace("{root}", str(home))
            doc = text if "\n" in text else eval(text, {"GOOD": GOOD_SCHEMA})  # noqa: S307 - the test's own literals
            a = yaml_file(home, f"case{abs(hash(what))}", doc)
        args.append(a.replace("{root}", str(home)))
    result = CliRunner().invoke(app, args)
    out = result.output
    assert result.exit_code not in (0, None), out
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in out
    lines = [line for line in out.strip().splitlines() if line.strip()]
    assert 1 <= len(lines) <= 2, out  # the message, and at most a hint
    assert lines[0].startswith("error") or "Error" in out or "Invalid" in out, out
    assert says in out, out
