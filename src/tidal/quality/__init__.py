"""Data quality: schemas and validation, normalisation, imputation, outliers, integrity, profiling,
anomaly detection — pipeline steps that work on whole micro-batches.

Steps are imported on first use (``from tidal.quality import ImputeStep``), so importing the
schema alone stays light.
"""

from importlib import import_module
from typing import Any

from tidal.quality.schema import Field, RecordError, Schema

_LAZY = {
    "ValidateStep": "rules", "NormalizeStep": "normalize", "ImputeStep": "impute", "OutlierStep": "outliers",
    "IntegrityStep": "integrity", "ProfileStep": "profile", "AnomalyStep": "anomaly", "QualityChain": "chain",
    "QualityBatch": "base", "QualityStep": "base", "PartitionedStep": "base", "avro_schema": "serdes",
    "json_schema": "serdes", "AvroFile": "serdes", "RegistryWire": "serdes",
}

__all__ = ["Field", "RecordError", "Schema", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"tidal.quality.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'tidal.quality' has no attribute {name!r}")
