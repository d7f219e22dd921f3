"""A Schema Registry that does not answer is retried, then stops the batch; it never turns
good records into dead letters (a bad payload still does)."""

from __future__ import annotations

import socket

import pytest

from tidal.quality.serdes import RegistryUnavailable, avro_schema, registry_conf
from tidal.stream.decode import decode_values

AVRO = {"type": "record", "name": "r", "fields": [{"name": "x", "type": "double"}]}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_registry_is_retried_then_raises_instead_of_dead_lettering():
    schema = avro_schema(AVRO, registry=f"http://127.0.0.1:{closed_port()}", topic="t")
    schema.wire.retry_s = 0.5
    wire_record = b"\x00\x00\x00\x00\x01" + b"\x00" * 8  # magic byte, schema id 1, a double
    with pytest.raises(RegistryUnavailable, match="unreachable"):
        decode_values([wire_record], schema)
    out = decode_values([b"not the wire format"], schema)  # a bad payload is still the record's fault
    assert [r.reason for r in out.rejected] == ["invalid_payload"]


def test_registry_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("TIDAL_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO", "key:secret")
    assert registry_conf() == {"basic.auth.user.info": "key:secret"}
