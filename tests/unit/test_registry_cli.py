"""`tidal models ...` without a broker: register, inspect, promote, roll back, archive, errors (exit 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tidal.cli.main import app
from tidal.models import save_model
from tidal.registry import Registry


def lgbm(seed: int):
    import lightgbm

    rng = np.random.default_rng(seed)
    X = rng.random((300, 2))
    return lightgbm.LGBMClassifier(n_estimators=3, n_jobs=1, verbose=-1, random_state=seed).fit(X, X.sum(axis=1) > 1)


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.setenv("TIDAL_REGISTRY", str(tmp_path / "registry"))
    monkeypatch.setenv("TIDAL_HOME", str(tmp_path / "home"))  # no embedded broker recorded here
    monkeypatch.delenv("TIDAL_BOOTSTRAP_SERVERS", raising=False)
    runner = CliRunner()

    def run(*args: str, code: int = 0):
        result = runner.invoke(app, ["models", *args])
        assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
        return result

    return run


@pytest.fixture
def folders(tmp_path):
    out = []
    for seed in range(3):
        save_model(lgbm(seed), tmp_path / f"m{seed}", "anything", 1, ["x", "y"], metrics={"auc": 0.8 + seed / 100})
        out.append(str(tmp_path / f"m{seed}"))
    return out


def test_register_list_show_compare(cli, folders, tmp_path):
    assert "registered models:/fraud/1" in cli("register", "fraud", folders[0], "--metric", "f1=0.5",
                                                "--tag", "team=risk", "--param", "depth=3").stdout
    second = json.loads(cli("register", "fraud", folders[1], "--json").stdout)
    assert second["version"] == 2 and second["uri"] == "models:/fraud/2"
    shown = json.loads(cli("show", "models:/fraud/1", "--json").stdout)
    assert shown["metrics"] == {"auc": 0.8, "f1": 0.5} and shown["tags"] == {"team": "risk"}
    assert shown["params"] == {"depth": "3"} and shown["signature"] == {"x": "float", "y": "float"}
    assert Registry(tmp_path / "registry").get("fraud", 1).sha256 == shown["sha256"]
    listed = json.loads(cli("list", "--json").stdout)
    assert [(m["name"], m["versions"], m["latest"]) for m in listed] == [("fraud", 2, 2)]
    assert "fraud" in cli("list").stdout and "auc" in cli("compare", "fraud", "1", "2").stdout
    assert json.loads(cli("compare", "fraud", "1", "2", "--json").stdout) == {
        "auc": {"1": 0.8, "2": 0.81}, "f1": {"1": 0.5, "2": None}}
    assert "models:/fraud/2" in cli("show", "fraud/latest").stdout
    assert [v["version"] for v in json.loads(cli("versions", "fraud", "--json").stdout)] == [1, 2]


def test_promote_rollback_history_archive_deploy(cli, folders):
    for folder in folders:
        cli("register", "fraud", folder)
    out = cli("promote", "fraud", "1", "--reason", "first").stdout
    assert "fraud@champion -> version 1" in out and "recorded (not published)" in out
    cli("promote", "fraud", "2", "--reason", "better", "--no-publish")
    assert "version 1 (was 2)" in cli("rollback", "fraud", "--reason", "worse", "--no-publish").stdout
    moves = [m for m in json.loads(cli("history", "fraud", "--json").stdout) if m["kind"] == "alias"]
    assert [(m["old_version"], m["new_version"], m["reason"]) for m in moves] == [
        (None, 1, "first"), (1, 2, "better"), (2, 1, "worse")]
    assert "worse" in cli("history", "fraud").stdout
    cli("promote", "fraud", "3", "--alias", "challenger")
    assert "canary v1 + v3 10%" in cli("deploy", "fraud", "--mode", "canary", "--version", "3", "--share", "0.1",
                                       "--no-publish").stdout
    cli("deploy", "fraud", "--mode", "single", "--version", "1", "--no-publish", "--reason", "x" * 600)
    events = json.loads(cli("history", "fraud", "--json").stdout)
    deploys = [(e["old_version"], e["new_version"]) for e in events if e["kind"] == "deployment"]
    assert deploys == [("single v1 (seq 3)", "canary v1 + v3 10% (seq 4)"),
                       ("canary v1 + v3 10% (seq 4)", "single v1 (seq 5)")], deploys  # promotions: their own lines
    table = cli("history", "fraud").stdout
    assert "canary v1 + v3 10%" in table and "x" * 600 not in table  # a long reason is cut in the table
    assert "archived models:/fraud/2" in cli("archive", "fraud", "2").stdout
    versions = json.loads(cli("versions", "fraud", "--json").stdout)
    assert [(v["status"], v["aliases"]) for v in versions] == [
        ("active", ["champion"]), ("archived", []), ("active", ["challenger"])]


def test_bad_input_exits_2_with_a_clear_message(cli, folders, tmp_path):
    cli("register", "fraud", folders[0])
    for args, message in [
        (("register", "fraud", folders[0]), "already registered as models:/fraud/1"),
        (("register", "fraud", folders[1], "--metric", "auc"), "KEY=VALUE"),
        (("register", "fraud", folders[1], "--metric", "auc=high"), "not a number"),
        (("register", "fraud", str(tmp_path)), "no tidal-model.json"),
        (("show", "fraud"), "cannot read model reference"),
        (("show", "nope/1"), "no model named 'nope'"),
        (("promote", "fraud", "7", "--no-publish"), "no version 7"),
        (("promote", "fraud", "1", "--features", "x,z", "--no-publish"), "missing (the model needs them, the "
                                                                         "pipeline lacks them): y"),
        (("rollback", "fraud", "--no-publish"), "no alias 'champion'"),
        (("deploy", "fraud", "--mode", "blue", "--version", "1"), "unknown mode"),
        (("deploy", "fraud", "--mode", "canary", "--version", "1", "--no-publish"), "no alias 'champion'"),
    ]:
        result = cli(*args, code=2)
        assert message in result.stderr, (args, result.stderr)
    assert json.loads(cli("history", "fraud", "--json").stdout) == []
    assert len(json.loads(cli("versions", "fraud", "--json").stdout)) == 1
