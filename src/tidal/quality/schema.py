"""Record schemas: declared in the engine (:mod:`tidal.stream.schema`), re-exported here."""

from tidal.stream.schema import (  # noqa: F401
    POLICIES, RULES, TYPES, Field, RecordError, Schema, WireDecodeError, classify, schema_of)

__all__ = ["Field", "Schema", "RecordError", "TYPES", "RULES", "POLICIES", "schema_of"]
