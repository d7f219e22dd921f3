"""The model registry's store: numbering, concurrent writers, checksums, refusals, restarts, URIs."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest

from tidal.models import ArtifactError, load_model, save_model
from tidal.models.artifact import CARD
from tidal.registry import NotFound, Ref, Registry, RegistryError, code_version, parse_ref


def lgbm(seed: int, n_features: int = 2):
    """A tiny LightGBM classifier; a different seed gives a different model file."""
    import lightgbm

    rng = np.random.default_rng(seed)
    X = rng.random((300, n_features))
    y = (X.sum(axis=1) > n_features / 2).astype(int)
    return lightgbm.LGBMClassifier(n_estimators=3, n_jobs=1, verbose=-1, random_state=seed).fit(X, y)


def model_folder(tmp: Path, seed: int, features=("x", "y"), **kw) -> Path:
    folder = tmp / f"src-{seed}"
    save_model(lgbm(seed, len(features)), folder, "whatever", 99, list(features), **kw)
    return folder


def nothing_recorded(reg: Registry) -> bool:
    return reg.list_models() == [] and not any(reg.artifacts.iterdir()) and not any((reg.root / "tmp").iterdir())


@pytest.fixture
def reg(tmp_path) -> Registry:
    return Registry(tmp_path / "registry")


# --- registration --------------------------------------------------------------------------------

def test_versions_are_consecutive_and_the_stored_card_carries_them(reg, tmp_path):
    got = [reg.register("fraud", lgbm(0), features=["x", "y"]).version,
           reg.register("fraud", folder=model_folder(tmp_path, 1)).version,
           reg.register("other", lgbm(2), features=["x", "y"]).version,
           reg.register("fraud", lgbm(3), features=["x", "y"]).version]
    assert got == [1, 2, 1, 3]
    for mv in reg.versions("fraud"):
        assert mv.path == reg.artifacts / mv.sha256 and mv.status == "active"
        assert sorted(p.name for p in mv.path.iterdir()) == ["model.txt", CARD]  # save_model's layout, nothing else
        card = load_model(mv.path).card
        assert (card.name, card.version, card.sha256) == ("fraud", str(mv.version), mv.sha256)
        assert hashlib.sha256((mv.path / "model.txt").read_bytes()).hexdigest() == mv.sha256
    assert [mv.version for mv in reg.versions("fraud")] == [1, 2, 3]
    assert not any((reg.root / "tmp").iterdir())


def test_register_records_signature_metrics_params_tags_lineage(reg, tmp_path):
    folder = model_folder(tmp_path, 4, features=("amount", "merchant"), categories={"merchant": ["a", "b"]},
                          metrics={"auc": 0.8, "rows": 300}, lineage={"topic": "fraud.events"})
    mv = reg.register("fraud", folder=folder, metrics={"auc": 0.85}, params={"n_estimators": 3},
                      tags={"team": "risk"}, lineage={"ranges": {"0": [0, 900], "1": [0, 880]}})
    assert mv.features == ["amount", "merchant"] and mv.signature == {"amount": "float", "merchant": "str"}
    assert mv.metrics == {"auc": 0.85, "rows": 300} and mv.params == {"n_estimators": 3}
    assert mv.tags == {"team": "risk"} and mv.flavor == "lightgbm"
    assert mv.lineage["topic"] == "fraud.events" and mv.lineage["ranges"]["1"] == [0, 880]
    assert mv.lineage["code_version"] == code_version()  # git HEAD of the working directory, or None
    assert load_model(mv.path).card.metrics == mv.metrics
    typed = reg.register("typed", lgbm(5), features={"a": "int", "b": "float"}, threshold=0.3, task="binary")
    assert typed.signature == {"a": "int", "b": "float"} and load_model(typed.path).card.threshold == 0.3


def test_code_version_is_git_head_or_none(tmp_path):
    assert code_version(tmp_path) is None  # not a checkout
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).parent).stdout.strip()
    assert code_version(Path(__file__).parent) == (head or None)


def test_the_same_artifact_twice_is_refused(reg, tmp_path):
    folder = model_folder(tmp_path, 6)
    reg.register("fraud", folder=folder)
    with pytest.raises(RegistryError, match="already registered as models:/fraud/1"):
        reg.register("copy", folder=folder)
    assert [m.name for m in reg.list_models()] == ["fraud"]


def _corrupt_folders(tmp_path: Path) -> dict[str, Path]:
    out = {}
    bad_sum = model_folder(tmp_path, 7)
    path = bad_sum / "model.txt"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    out["checksum"] = bad_sum
    for flavor, file in (("lightgbm", "model.txt"), ("sklearn", "model.joblib")):  # checksum fine, content junk
        folder = tmp_path / f"junk-{flavor}"
        folder.mkdir()
        (folder / file).write_bytes(b"this is not a model\n" * 10)
        card = {"name": "junk", "version": "1", "flavor": flavor, "features": ["x"], "file": file,
                "sha256": hashlib.sha256((folder / file).read_bytes()).hexdigest()}
        (folder / CARD).write_text(json.dumps(card))
        out[flavor] = folder
    wrong_width = tmp_path / "wrong-width"
    save_model(lgbm(8, 2), wrong_width, "w", 1, ["x", "y", "z"])  # a 2-feature model, 3 names
    out["takes 2 features"] = wrong_width
    no_card = tmp_path / "no-card"
    no_card.mkdir()
    (no_card / "model.txt").write_text("x")
    out[CARD] = no_card
    return out


def test_corrupt_or_unloadable_artifact_fails_clearly_and_records_nothing(reg, tmp_path):
    expected = {"checksum": "checksum mismatch", "lightgbm": "cannot load the model",
                "sklearn": "cannot load the model", "takes 2 features": "takes 2 features", CARD: CARD}
    for key, folder in _corrupt_folders(tmp_path).items():
        with pytest.raises(ArtifactError, match=expected[key]) as info:
            reg.register("broken", folder=folder)
        assert str(folder) in str(info.value) or key == "takes 2 features"
        assert nothing_recorded(reg), key
    with pytest.raises(ArtifactError, match="takes 2 features"):
        reg.register("broken", lgbm(9), features=["x", "y", "z"])
    with pytest.raises(RegistryError, match="metrics must be numbers"):
        reg.register("broken", lgbm(9), features=["x", "y"], metrics={"auc": "high"})
    with pytest.raises(RegistryError, match="features= is required"):
        reg.register("broken", lgbm(9))
    with pytest.raises(RegistryError, match="invalid model name"):
        reg.register("no/slashes", lgbm(9), features=["x", "y"])
    assert nothing_recorded(reg)
    assert reg.register("broken", lgbm(9), features=["x", "y"]).version == 1  # and the registry still works


def test_tampered_artifact_is_refused_on_load(reg, tmp_path):
    mv = reg.register("fraud", lgbm(10), features=["x", "y"])
    reg.load("models:/fraud/1").predict(np.array([[0.2, 0.3]]))
    path = mv.path / "model.txt"
    original = path.read_bytes()
    raw = bytearray(original)
    raw[len(raw) // 3] ^= 0x01  # flip one bit in one byte
    path.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="checksum"):
        reg.load("fraud/1")
    # A consistent forgery (the card's checksum rewritten to match) is caught by the registry's own
    # record, before the file is read (a pickled flavor would run code when read).
    card = json.loads((mv.path / CARD).read_text())
    (mv.path / CARD).write_text(json.dumps({**card, "sha256": hashlib.sha256(bytes(raw)).hexdigest()}))
    with pytest.raises(ArtifactError, match="not the one registered .refused before reading it"):
        reg.load("fraud/1")
    path.write_bytes(original)
    (mv.path / CARD).write_text(json.dumps({**card, "version": "7"}))
    with pytest.raises(ArtifactError, match="registry's record"):
        reg.load("fraud/1")
    (mv.path / CARD).write_text(json.dumps(card))
    assert reg.load("fraud/1").version == "1"


# --- concurrency and restarts --------------------------------------------------------------------

def _register_many(root: str, folders: list[str], barrier, queue) -> None:
    try:
        barrier.wait(timeout=60)
        registry = Registry(root)  # the processes race to create the database too
        queue.put(("ok", [registry.register("race", folder=f).version for f in folders]))
    except BaseException:
        queue.put(("error", traceback.format_exc()))


def test_concurrent_registration_from_4_processes_gives_unique_consecutive_versions(tmp_path):
    per_process, procs = 5, 4
    folders = [str(model_folder(tmp_path, 100 + i)) for i in range(per_process * procs)]
    root = str(tmp_path / "registry")
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=_register_many, args=(root, folders[i::procs], barrier, queue))
               for i in range(procs)]
    for w in workers:
        w.start()
    results = [queue.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(30)
    errors = [r for status, r in results if status != "ok"]
    assert errors == []
    got = [v for _, versions in results for v in versions]
    assert sorted(got) == list(range(1, per_process * procs + 1))
    for _, versions in results:
        assert versions == sorted(versions)  # each process sees its own versions increase
    reg = Registry(root)
    stored = reg.versions("race")
    assert [mv.version for mv in stored] == list(range(1, 21))
    assert {load_model(mv.path).card.version for mv in stored} == {str(v) for v in range(1, 21)}
    assert len({mv.sha256 for mv in stored}) == 20 and not any((reg.root / "tmp").iterdir())


RESTART = """
import json, sys
import numpy as np
from tidal.registry import Registry
r = Registry(sys.argv[1])
out = {"champion": r.resolve("models:/m@champion").version, "versions": [v.version for v in r.versions("m")],
       "history": [[h.old_version, h.new_version, h.action, h.reason] for h in r.alias_history("m")],
       "deployment": r.deployment("m").seq, "status": r.get("m", 1).status,
       "score": r.load("m@champion").predict(np.array([[0.2, 0.9]])).tolist()}
r.promote("m", 3, reason="from the other process")
print(json.dumps(out))
"""


def test_everything_survives_a_process_restart(tmp_path):
    root = tmp_path / "registry"
    reg = Registry(root)
    for seed in (20, 21, 22):
        reg.register("m", lgbm(seed), features=["x", "y"], metrics={"auc": seed / 100})
    reg.promote("m", 1, reason="first")
    reg.promote("m", 2, reason="second")
    reg.set_alias("m", "challenger", 3)
    expected_score = reg.load("m@champion").predict(np.array([[0.2, 0.9]])).tolist()
    del reg
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", RESTART, str(root)], capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen == {"champion": 2, "versions": [1, 2, 3], "deployment": 2, "status": "active",
                    "history": [[None, 1, "promote", "first"], [1, 2, "promote", "second"],
                                [None, 3, "set", ""]],
                    "score": expected_score}
    again = Registry(root)  # and what the other process did is here
    assert again.resolve("m@champion").version == 3 and again.deployment("m").seq == 3
    assert again.alias_history("m", "champion")[-1].reason == "from the other process"


# --- references ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, ref", [
    ("models:/fraud/3", Ref("fraud", 3)),
    ("models:/fraud@champion", Ref("fraud", alias="champion")),
    ("fraud/12", Ref("fraud", 12)),
    ("fraud@challenger-2", Ref("fraud", alias="challenger-2")),
    ("models:/fraud.v2_x/latest", Ref("fraud.v2_x")),
    ("fraud@latest", Ref("fraud")),
])
def test_parse_ref(text, ref):
    assert parse_ref(text) == ref


@pytest.mark.parametrize("text", ["fraud", "models:/fraud", "fraud/0", "fraud/x", "fraud@3", "fraud@", "@a",
                                  "models:/a/b/3", "fraud/³", "", "fr aud/1"])
def test_parse_ref_refuses(text):
    with pytest.raises(RegistryError, match="model reference|invalid"):
        parse_ref(text)


def test_resolve_by_uri_version_alias_and_latest(reg):
    for seed in (30, 31, 32):
        reg.register("fraud", lgbm(seed), features=["x", "y"])
    reg.set_alias("fraud", "champion", 2)
    assert reg.resolve("models:/fraud/1").version == 1
    assert reg.resolve("models:/fraud@champion").version == 2 and reg.resolve("fraud@champion").uri == "models:/fraud/2"
    assert reg.resolve("fraud/latest").version == 3 and reg.get("fraud", "champion").version == 2
    with pytest.raises(NotFound, match="no version 9"):
        reg.resolve("fraud/9")
    with pytest.raises(NotFound, match="no alias 'gold'"):
        reg.resolve("models:/fraud@gold")
    with pytest.raises(NotFound, match="no model named 'nope'"):
        reg.resolve("nope/1")
    with pytest.raises(NotFound):
        reg.versions("nope")


def test_compare_puts_metrics_side_by_side(reg):
    reg.register("fraud", lgbm(40), features=["x", "y"], metrics={"auc": 0.9, "f1": 0.5})
    reg.register("fraud", lgbm(41), features=["x", "y"], metrics={"auc": 0.93, "logloss": 0.2})
    assert reg.compare("fraud", [1, "2"]) == {"auc": {1: 0.9, 2: 0.93}, "f1": {1: 0.5, 2: None},
                                              "logloss": {1: None, 2: 0.2}}


def test_default_root_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TIDAL_REGISTRY", str(tmp_path / "from-env"))
    assert Registry().root == tmp_path / "from-env"
    monkeypatch.delenv("TIDAL_REGISTRY")
    monkeypatch.setenv("TIDAL_HOME", str(tmp_path / "home"))
    assert Registry().root == tmp_path / "home" / "registry"
    assert (tmp_path / "home" / "registry" / "registry.db").is_file()


def test_registry_exports():
    import tidal.registry as registry
    from tidal.registry.deployment import MODES, Deployment, Target

    assert all(hasattr(registry, n) for n in registry.__all__) and len(set(registry.__all__)) == len(registry.__all__)
    assert registry.Deployment is Deployment and registry.Target is Target and registry.MODES is MODES
