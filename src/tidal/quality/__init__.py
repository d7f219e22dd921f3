"""Data quality: record schemas and validation (more steps arrive with the quality layer)."""

from tidal.quality.schema import Field, RecordError, Schema

__all__ = ["Field", "RecordError", "Schema"]
