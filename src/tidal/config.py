"""Kafka connection settings: where the brokers are and how to talk to them.

Every tidal command reads the same settings, in this order (later wins):

1. a librdkafka properties file (``--kafka-config FILE`` or ``TIDAL_KAFKA_CONFIG``),
   ``key=value`` lines as in Kafka's own ``client.properties``;
2. ``TIDAL_KAFKA_*`` environment variables: ``TIDAL_KAFKA_SASL_MECHANISM=PLAIN``
   becomes ``sasl.mechanism=PLAIN`` (lower-cased, ``_`` → ``.``);
3. the bootstrap servers: ``--bootstrap`` or ``TIDAL_BOOTSTRAP_SERVERS``, else the
   embedded broker started by ``tidal broker start``.

Secrets (passwords, keys, tokens) never appear in ``repr`` or logs.

>>> s = KafkaSettings("127.0.0.1:9092", {"sasl.password": "hunter2", "security.protocol": "SASL_SSL"})
>>> s
KafkaSettings(bootstrap='127.0.0.1:9092', extra={'sasl.password': '***', 'security.protocol': 'SASL_SSL'})
>>> s.client_config({"group.id": "g"})["sasl.password"]
'hunter2'
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

__all__ = ["KafkaSettings", "BrokerUnreachable", "read_properties", "env_overrides"]

ENV_BOOTSTRAP = "TIDAL_BOOTSTRAP_SERVERS"
ENV_CONFIG_FILE = "TIDAL_KAFKA_CONFIG"
ENV_PREFIX = "TIDAL_KAFKA_"
_UNDERSCORED = {"log.level": "log_level"}  # the librdkafka setting whose name has an underscore
_SECRET_WORDS = ("password", "secret", "key.pem", "private", "token", "jaas")


class BrokerUnreachable(RuntimeError):
    """No Kafka broker answered at the configured bootstrap servers."""


def _is_secret(name: str) -> bool:
    return any(word in name for word in _SECRET_WORDS)


def read_properties(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a librdkafka/Kafka ``.properties`` file (``key=value``, ``#`` comments)."""
    props: dict[str, str] = {}
    for raw in Path(path).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{path}: expected key=value, got {raw!r}")
        props[key.strip()] = value.strip()
    return props


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """librdkafka settings from ``TIDAL_KAFKA_*`` variables (``TIDAL_KAFKA_CONFIG`` excluded)."""
    environ = os.environ if environ is None else environ
    out = {}
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX) and name != ENV_CONFIG_FILE:
            key = name[len(ENV_PREFIX):].lower().replace("_", ".")
            out[_UNDERSCORED.get(key, key)] = value
    return out


@dataclass(frozen=True)
class KafkaSettings:
    """Bootstrap servers plus extra librdkafka settings (SASL, TLS, ...) for every client."""

    bootstrap: str
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        shown = {k: ("***" if _is_secret(k) else v) for k, v in self.extra.items()}
        return f"KafkaSettings(bootstrap={self.bootstrap!r}, extra={shown!r})"

    def client_config(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A config dict for a confluent-kafka client: extra settings, then ``overrides``."""
        conf: dict[str, Any] = {"bootstrap.servers": self.bootstrap}
        conf.update(self.extra)
        if overrides:
            conf.update(overrides)
        return conf

    @classmethod
    def resolve(
        cls,
        bootstrap: str | None = None,
        config_file: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> "KafkaSettings":
        """Settings from arguments, environment, then the running embedded broker.

        Raises :class:`BrokerUnreachable` with the way out when nothing is configured.
        """
        environ = os.environ if environ is None else environ
        extra: dict[str, Any] = {}
        config_file = config_file or environ.get(ENV_CONFIG_FILE)
        if config_file:
            extra.update(read_properties(config_file))
        extra.update(env_overrides(environ))
        bootstrap = bootstrap or environ.get(ENV_BOOTSTRAP) or extra.pop("bootstrap.servers", None)
        extra.pop("bootstrap.servers", None)
        if not bootstrap:
            from tidal.broker.embedded import running_broker

            state = running_broker()
            if state is None:
                raise BrokerUnreachable(
                    "No Kafka cluster configured and no embedded broker running. "
                    "Start one with `tidal broker start`, or point tidal at a cluster "
                    f"with --bootstrap HOST:PORT or {ENV_BOOTSTRAP}."
                )
            bootstrap = state.bootstrap
        return cls(bootstrap, extra)
