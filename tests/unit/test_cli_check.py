"""`tidal check` and `tidal run`'s start-up check: every problem one line, naming the field or step."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from tidal.cli.check import check_spec
from tidal.cli.main import app

FEATURES = ["temperature", "vibration", "humidity"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from lightgbm import LGBMClassifier
    from sklearn.ensemble import GradientBoostingClassifier

    from tidal.models import save_model

    root = tmp_path_factory.mktemp("models")
    rng = np.random.default_rng(0)
    X = rng.random((300, 3))
    y = (X[:, 0] + X[:, 1] > 1).astype(int)
    save_model(LGBMClassifier(n_estimators=10, verbose=-1).fit(X, y), root / "lgb", "sensor", 1, FEATURES)
    save_model(GradientBoostingClassifier(n_estimators=5).fit(X, y), root / "gbc", "sensor", 1, FEATURES)
    return root


def spec(folder, schema: dict, steps: list, name: str = "p.yaml"):
    path = folder / name
    path.write_text(yaml.safe_dump({"pipeline": "sensors", "schema": schema, "steps": steps}))
    return path


def run_check(path, *extra):
    result = CliRunner().invoke(app, ["check", str(path), *extra])
    return result.exit_code, result.output


def test_a_good_pipeline_is_ok_and_names_its_model(models):
    path = spec(models, dict.fromkeys(FEATURES, "float"), [{"score": {"model": "lgb"}}, {"explain": {"sample": 0.1}}])
    code, out = run_check(path)
    assert code == 0, out
    assert "ok: pipeline sensors" in out and "sensor v1 (lightgbm, 3 features)" in out


def test_a_model_feature_the_schema_lacks_is_named(models):
    """The silent-NaN case: LightGBM would score every event on a missing humidity."""
    path = spec(models, {"temperature": "float", "vibration": "float"}, [{"score": {"model": "lgb"}}])
    code, out = run_check(path)
    assert code == 1
    assert "'humidity'" in out and "do not have" in out and "Traceback" not in out


def test_every_problem_is_listed_not_just_the_first(models):
    path = spec(models, {"temperature": "float", "vibration": "float", "humidity": "str"},
                [{"score": {"model": "gbc"}}, {"explain": {"sample": 0.1}}])
    report = check_spec(path)
    assert len(report.errors) == 2, report.errors
    assert "'humidity' as float" in report.errors[0] and "as str" in report.errors[0]
    assert report.errors[1].startswith("step 'explain'") and "GradientBoostingClassifier" in report.errors[1]
    code, out = run_check(path, "--json")
    doc = json.loads(out.strip().splitlines()[-1])
    assert code == 1 and doc["ok"] is False and len(doc["errors"]) == 2


def test_a_misspelt_option_suggests_the_right_one(models):
    path = spec(models, dict.fromkeys(FEATURES, "float"), [{"score": {"model": "lgb", "treshold": 0.3}}])
    code, out = run_check(path)
    assert code == 1 and "did you mean 'threshold'?" in out


def test_tidal_run_refuses_to_start_with_every_problem_listed(models):
    """`tidal run` checks before it connects to a broker: exit 2, one line per problem."""
    path = spec(models, {"temperature": "float", "vibration": "float", "humidity": "str"},
                [{"score": {"model": "gbc"}}, {"explain": {"sample": 0.1}}])
    result = CliRunner().invoke(app, ["run", str(path), "--bootstrap", "127.0.0.1:1"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 2 and "2 problems: not started" in result.output and "Traceback" not in result.output


def test_deployed_versions_are_checked_against_the_schema(models, tmp_path):
    """A `deployed` step: the versions the registry deploys now must find their features."""
    from tidal.registry import Registry

    reg = Registry(tmp_path / "registry")
    reg.register("sensor", folder=models / "lgb")
    reg.promote("sensor", 1)
    good = spec(tmp_path, dict.fromkeys(FEATURES, "float"), [{"deployed": {"model": "sensor"}}], "good.yaml")
    bad = spec(tmp_path, {"temperature": "float"}, [{"deployed": {"model": "sensor"}}], "bad.yaml")
    code, out = run_check(good, "--registry", str(tmp_path / "registry"))
    assert code == 0 and "sensor v1 (lightgbm, 3 features, single primary)" in out, out
    code, out = run_check(bad, "--registry", str(tmp_path / "registry"))
    assert code == 1 and "models:/sensor/1" in out and "'vibration', 'humidity'" in out
    none = spec(tmp_path, {"temperature": "float"}, [{"deployed": {"model": "other"}}], "none.yaml")
    code, out = run_check(none, "--registry", str(tmp_path / "registry"))
    assert code == 0 and "has no deployment" in out


def test_deploy_and_promote_refuse_a_version_the_pipeline_cannot_feed(models, tmp_path):
    """`models deploy --mode canary --pipeline` / `models promote --pipeline`: a version that needs a
    field the pipeline lacks is refused and nothing changes; one it can feed goes through."""
    from lightgbm import LGBMClassifier

    from tidal.models import save_model
    from tidal.registry import Registry

    root = tmp_path / "registry"
    reg = Registry(root)
    reg.register("sensor", folder=models / "lgb")  # v1: temperature, vibration, humidity
    rng = np.random.default_rng(1)
    X = rng.random((200, 4))
    save_model(LGBMClassifier(n_estimators=5, verbose=-1).fit(X, (X[:, 0] > 0.5).astype(int)), tmp_path / "v2",
               "sensor", 2, [*FEATURES, "pressure"])
    reg.register("sensor", folder=tmp_path / "v2")  # v2 also needs pressure
    reg.promote("sensor", 1)
    pipeline = spec(tmp_path, dict.fromkeys(FEATURES, "float"), [{"deployed": {"model": "sensor"}}])
    runner = CliRunner()
    common = ["--registry", str(root), "--no-publish", "--pipeline", str(pipeline)]

    result = runner.invoke(app, ["models", "deploy", "sensor", "--mode", "canary", "--version", "2", "--share", "0.1",
                                 *common])
    assert result.exit_code == 2 and "models:/sensor/2 needs 'pressure'" in result.output, result.output
    assert "nothing changed" in result.output and reg.deployment("sensor").mode == "single"
    result = runner.invoke(app, ["models", "promote", "sensor", "2", *common])
    assert result.exit_code == 2 and "'pressure'" in result.output
    assert reg.deployment("sensor").primary.version == "1"

    result = runner.invoke(app, ["models", "deploy", "sensor", "--mode", "shadow", "--version", "1", *common])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["models", "deploy", "sensor", "--mode", "canary", "--version", "2", "--share", "0.1",
                                 "--registry", str(root), "--no-publish"])
    assert result.exit_code == 0 and "features not checked" in result.output  # no pipeline given: said, not refused


def test_a_bad_alert_rule_is_an_error_before_the_run(tmp_path):
    rules = [{"name": "ok", "metric": "tidal_dlq_total", "rate": "> 5"},
             {"name": "late", "metric": "tidal_lag", "value": "> 100", "for": 60},  # for_s misspelt
             {"name": "loud", "metric": "tidal_lag", "value": "> 1", "severity": "urgent"},
             {"name": "two", "metric": "tidal_lag", "value": "> 1", "rate": "> 1"},
             {"metric": "tidal_lag", "value": "> 1"}]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"pipeline": "p", "schema": {"x": "float"}, "alerts": rules}))
    code, out = run_check(path)
    assert code == 1 and "Traceback" not in out
    assert "alerts[0]" not in out
    assert "alerts[1]: alert 'late': unknown key 'for' (did you mean 'for_s'?)" in out
    assert "alerts[2]: alert 'loud': severity 'urgent'" in out
    assert "alerts[3]: alert 'two': give exactly one of value, rate, absent_for_s" in out
    assert "alerts[4]: alert None: name is required" in out
