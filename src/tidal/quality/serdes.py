"""Binary wire formats: Avro with a schema file (fastavro), and the Confluent wire format
(Avro or JSON Schema, through ``confluent_kafka.schema_registry``'s own deserializers).

A wire format plugs into a :class:`~tidal.quality.schema.Schema`: the worker's decoder then
reads each payload in that format and checks it against the schema's fields exactly as it
checks JSON; undecodable payloads go to the DLQ as ``invalid_payload``. The validate step
re-encodes the records as JSON for the output topic; the DLQ keeps the original bytes.

Plain Avro with a schema file (needs ``fastavro``)::

    schema = avro_schema("flow.avsc", bytes={"min": 0})          # fields from the Avro record
    schema.decode_one(schema.wire.encode({"bytes": 1.5, "proto": "tcp"}))

With a Schema Registry (``mock://`` URLs give confluent-kafka's in-memory registry, shared
per URL in this process)::

    schema = avro_schema(avro, registry="http://registry:8081")     # Confluent wire format
    schema = json_schema(doc, registry="http://registry:8081")      # JSON Schema, wire format
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping

import msgspec

from tidal.quality.schema import Field, Schema, WireDecodeError

__all__ = ["AvroFile", "RegistryWire", "RegistryUnavailable", "avro_schema", "json_schema", "registry_client",
           "registry_conf", "fields_from_avro"]

log = logging.getLogger("tidal.serdes")

_CLIENTS: dict[str, Any] = {}


def registry_conf() -> dict[str, str]:
    """Schema Registry client settings from the environment: ``TIDAL_SCHEMA_REGISTRY_<SETTING>``
    (``_`` for ``.``), e.g. ``TIDAL_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO=key:secret`` or
    ``TIDAL_SCHEMA_REGISTRY_SSL_CA_LOCATION=/etc/ca.pem``."""
    prefix = "TIDAL_SCHEMA_REGISTRY_"
    return {k[len(prefix):].lower().replace("_", "."): v for k, v in os.environ.items() if k.startswith(prefix)}


def registry_client(url: str, conf: Mapping[str, Any] | None = None) -> Any:
    """One Schema Registry client per URL (``mock://...`` is confluent-kafka's in-memory registry);
    auth and TLS from ``conf``, else from :func:`registry_conf`."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    client = _CLIENTS.get(url)
    if client is None:
        settings = dict(conf) if conf is not None else registry_conf()
        client = _CLIENTS[url] = SchemaRegistryClient.new_client({"url": url, **settings})
    return client


class RegistryUnavailable(RuntimeError):
    """The Schema Registry did not answer: the batch is not decoded (nor dead-lettered); the
    worker stops without committing and is re-run."""


def _transport(exc: BaseException) -> bool:
    """Whether ``exc`` says the registry could not be reached (not that the payload is bad)."""
    status = getattr(exc, "http_status_code", None)
    if isinstance(status, int):
        return status < 0 or status >= 500 or status == 429
    name = type(exc).__name__
    return isinstance(exc, (OSError, TimeoutError)) or any(w in name for w in ("Connect", "Timeout", "Transport"))


class _Decoder:
    """``decode(bytes) -> Struct`` for the worker's decode path, raising msgspec's error types."""

    def __init__(self, wire: Any, struct: type) -> None:
        self.wire, self.struct = wire, struct

    def decode(self, value: bytes) -> Any:
        if value is None:
            raise WireDecodeError("empty message (tombstone)")
        try:
            record = self.wire.decode(value)
        except RegistryUnavailable:
            raise  # not the payload's fault: no dead letter
        except Exception as exc:  # noqa: BLE001 - any other decoder failure is a bad payload
            raise WireDecodeError(f"{type(exc).__name__}: {exc}") from None
        if not isinstance(record, dict):
            raise msgspec.ValidationError(f"Expected `object`, got `{type(record).__name__}`")
        return msgspec.convert(record, self.struct)


class AvroFile:
    """Plain Avro: each message is one record in Avro binary encoding, written with ``schema``."""

    def __init__(self, schema: str | Path | Mapping[str, Any]) -> None:
        import fastavro

        if isinstance(schema, (str, Path)) and not str(schema).lstrip().startswith("{"):
            schema = json.loads(Path(schema).read_text())
        elif isinstance(schema, str):
            schema = json.loads(schema)
        self.schema = dict(schema)
        self.parsed = fastavro.parse_schema(self.schema)

    def decoder(self, struct: type) -> _Decoder:
        return _Decoder(self, struct)

    def decode(self, value: bytes) -> Any:
        import fastavro

        buf = io.BytesIO(value)
        record = fastavro.schemaless_reader(buf, self.parsed, None)
        if buf.tell() != len(value):
            raise ValueError(f"{len(value) - buf.tell()} bytes left after the record")
        return record

    def encode(self, record: Mapping[str, Any]) -> bytes:
        import fastavro

        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, self.parsed, dict(record))
        return buf.getvalue()


class RegistryWire:
    """The Confluent wire format (magic byte, schema id, payload) read through a Schema Registry."""

    def __init__(self, url: str, format: str = "avro", schema: str | None = None, topic: str = "",
                 conf: Mapping[str, Any] | None = None) -> None:
        if format not in ("avro", "json"):
            raise ValueError("format: avro or json")
        self.url, self.format, self.schema_str, self.topic = url, format, schema, topic
        self.client = registry_client(url, conf)
        self.retry_s = 20.0  # how long a registry outage is retried before the worker stops
        self._deserializer = None
        self._serializer = None

    def decoder(self, struct: type) -> _Decoder:
        return _Decoder(self, struct)

    def _ctx(self) -> Any:
        from confluent_kafka.serialization import MessageField, SerializationContext

        return SerializationContext(self.topic, MessageField.VALUE)

    def decode(self, value: bytes) -> Any:
        if self._deserializer is None:
            if self.format == "avro":
                from confluent_kafka.schema_registry.avro import AvroDeserializer

                self._deserializer = AvroDeserializer(self.client)
            else:
                from confluent_kafka.schema_registry.json_schema import JSONDeserializer

                self._deserializer = JSONDeserializer(None, schema_registry_client=self.client)
        if value[:1] != b"\x00" or len(value) < 5:  # told apart without asking the registry
            raise ValueError("not the Confluent wire format (magic byte 0, then a 4-byte schema id)")
        delay, waited = 0.2, 0.0
        while True:
            try:
                return self._deserializer(value, self._ctx())
            except Exception as exc:  # noqa: BLE001 - sorted below: bad payload, or registry down
                if not _transport(exc):
                    raise
                if waited >= self.retry_s:
                    raise RegistryUnavailable(f"Schema Registry {self.url} unreachable for {waited:.0f}s: "
                                              f"{type(exc).__name__}: {exc}") from None
                log.warning("Schema Registry %s: %s; retrying in %.1fs", self.url, exc, delay)
                time.sleep(delay)
                waited += delay
                delay = min(delay * 2, 5.0)

    def encode(self, record: Mapping[str, Any], topic: str | None = None) -> bytes:
        """Serialise like a Confluent producer would (registers ``schema`` under ``<topic>-value``)."""
        from confluent_kafka.serialization import MessageField, SerializationContext

        if self._serializer is None:
            if self.schema_str is None:
                raise ValueError("encoding needs the schema")
            if self.format == "avro":
                from confluent_kafka.schema_registry.avro import AvroSerializer

                self._serializer = AvroSerializer(self.client, self.schema_str)
            else:
                from confluent_kafka.schema_registry.json_schema import JSONSerializer

                self._serializer = JSONSerializer(self.schema_str, self.client)
        return self._serializer(dict(record), SerializationContext(topic or self.topic, MessageField.VALUE))


_AVRO_TYPES = {"double": "float", "float": "float", "int": "int", "long": "int", "string": "str", "boolean": "bool"}


def fields_from_avro(schema: Mapping[str, Any]) -> tuple[Field, ...]:
    """Fields of an Avro record schema: primitive types and ``["null", T]`` unions (optional)."""
    out = []
    for f in schema.get("fields", []):
        t = f["type"]
        optional = False
        if isinstance(t, list):
            rest = [x for x in t if x != "null"]
            optional = len(rest) < len(t)
            t = rest[0] if len(rest) == 1 else None
        stamp = False
        if isinstance(t, dict):
            stamp = t.get("logicalType", "").startswith("timestamp")
            t = t.get("type")
        if t in _AVRO_TYPES:
            out.append(Field(f["name"], _AVRO_TYPES[t], required=not optional,
                             timestamp="us" if stamp and "micros" in str(f["type"]) else stamp))
    return tuple(out)


def avro_schema(schema: str | Path | Mapping[str, Any], registry: str | None = None, topic: str = "",
                **overrides: Mapping[str, Any]) -> Schema:
    """A :class:`Schema` reading Avro: with a schema file/dict (plain), or via a registry URL (wire format).

    ``overrides`` add rules to fields: ``avro_schema(s, bytes={"min": 0})``.
    """
    wire = AvroFile(schema)
    if registry is not None:
        wire = RegistryWire(registry, "avro", json.dumps(wire.schema), topic)
    fields = tuple(Field(f.name, f.type, f.required, **{**_extra(f), **dict(overrides.get(f.name, {}))})
                   for f in fields_from_avro(wire.schema if isinstance(wire, AvroFile) else json.loads(wire.schema_str)))
    return Schema(fields, wire=wire)


def json_schema(doc: Mapping[str, Any] | str, registry: str, topic: str = "") -> Schema:
    """A :class:`Schema` reading JSON Schema messages in the Confluent wire format."""
    doc = json.loads(doc) if isinstance(doc, str) else dict(doc)
    return Schema(Schema.from_json_schema(doc).fields, wire=RegistryWire(registry, "json", json.dumps(doc), topic))


def _extra(f: Field) -> dict[str, Any]:
    return {"timestamp": f.timestamp} if f.timestamp else {}
