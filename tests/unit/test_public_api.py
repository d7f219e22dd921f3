"""Every name a package exports in ``__all__`` exists."""

from __future__ import annotations

import importlib

import pytest

PACKAGES = ["tidal", "tidal.stream", "tidal.broker", "tidal.models", "tidal.quality", "tidal.features"]
MODULES = ["tidal.config", "tidal.quality.schema", "tidal.stream.batch", "tidal.stream.decode",
           "tidal.stream.encode", "tidal.stream.pipeline", "tidal.stream.step", "tidal.stream.spec",
           "tidal.models.artifact", "tidal.models.score", "tidal.demos.fraud_data", "tidal.stream.state",
           "tidal.stream.rocks", "tidal.features.aggregates", "tidal.features.keyed", "tidal.features.windows",
           "tidal.features.sliding", "tidal.features.sessions"]


@pytest.mark.parametrize("name", PACKAGES + MODULES)
def test_all_names_exist(name):
    module = importlib.import_module(name)
    exported = module.__all__
    assert exported, f"{name}.__all__ is empty"
    assert len(exported) == len(set(exported)), f"{name}.__all__ has duplicates"
    missing = [n for n in exported if not hasattr(module, n)]
    assert missing == []


def test_star_import_works():
    namespace: dict = {}
    exec("from tidal import *", namespace)
    assert {"Pipeline", "Schema", "Batch", "KafkaSettings", "Worker"} <= set(namespace)


def test_top_level_reexports_are_the_same_objects():
    import tidal
    from tidal.config import KafkaSettings
    from tidal.quality.schema import Schema
    from tidal.stream.batch import Batch
    from tidal.stream.pipeline import Pipeline

    assert tidal.Pipeline is Pipeline and tidal.Schema is Schema
    assert tidal.Batch is Batch and tidal.KafkaSettings is KafkaSettings
    assert isinstance(tidal.__version__, str) and tidal.__version__
