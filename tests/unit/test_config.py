"""Kafka settings: environment mapping, properties files, precedence, secrets, broker discovery."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tidal.config import BrokerUnreachable, KafkaSettings, env_overrides, read_properties


@pytest.fixture
def empty_home(tmp_path, monkeypatch):
    """A TIDAL_HOME with no broker.json in it."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("TIDAL_HOME", str(home))
    return home


# --- TIDAL_KAFKA_* environment variables -------------------------------------------------------

def test_env_overrides_lowercase_and_dots():
    env = {
        "TIDAL_KAFKA_SASL_MECHANISM": "PLAIN",
        "TIDAL_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "TIDAL_KAFKA_SSL_CA_LOCATION": "/etc/ca.pem",
    }
    assert env_overrides(env) == {
        "sasl.mechanism": "PLAIN",
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": "/etc/ca.pem",
    }


def test_env_overrides_ignores_other_variables_and_the_config_file_variable():
    env = {
        "TIDAL_KAFKA_CONFIG": "/some/file.properties",
        "TIDAL_BOOTSTRAP_SERVERS": "h:1",
        "KAFKA_SASL_MECHANISM": "PLAIN",
        "TIDAL_HOME": "/tmp/x",
        "PATH": "/usr/bin",
    }
    assert env_overrides(env) == {}


def test_env_overrides_value_is_kept_verbatim():
    """Only the name is transformed; the value keeps its case and underscores."""
    assert env_overrides({"TIDAL_KAFKA_SASL_USERNAME": "My_User"}) == {"sasl.username": "My_User"}


def test_env_overrides_defaults_to_os_environ(monkeypatch):
    monkeypatch.setenv("TIDAL_KAFKA_CLIENT_ID", "from-os-env")
    assert env_overrides()["client.id"] == "from-os-env"


# --- properties files ----------------------------------------------------------------------------

def test_read_properties_skips_comments_and_blank_lines(tmp_path):
    path = tmp_path / "client.properties"
    path.write_text(
        "# a comment\n"
        "\n"
        "   \n"
        "! another comment style\n"
        "security.protocol=SASL_SSL\n"
        "  sasl.mechanism = PLAIN  \n"
        "   # indented comment\n"
    )
    assert read_properties(path) == {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN"}


def test_read_properties_value_may_contain_equals_sign(tmp_path):
    path = tmp_path / "client.properties"
    jaas = 'org.apache.kafka.common.security.plain.PlainLoginModule required username="u" password="a=b==";'
    path.write_text(f"sasl.jaas.config={jaas}\n")
    assert read_properties(path) == {"sasl.jaas.config": jaas}


def test_read_properties_empty_value_allowed(tmp_path):
    path = tmp_path / "client.properties"
    path.write_text("client.id=\n")
    assert read_properties(path) == {"client.id": ""}


def test_read_properties_bad_line_raises_with_path_and_line(tmp_path):
    path = tmp_path / "client.properties"
    path.write_text("security.protocol=SSL\nthis line has no separator\n")
    with pytest.raises(ValueError) as info:
        read_properties(path)
    assert str(path) in str(info.value)
    assert "this line has no separator" in str(info.value)


# --- precedence ----------------------------------------------------------------------------------

def test_resolve_reads_file_given_as_argument(tmp_path, empty_home):
    path = tmp_path / "c.properties"
    path.write_text("bootstrap.servers=file:9092\nsecurity.protocol=SSL\n")
    s = KafkaSettings.resolve(config_file=path, environ={})
    assert s.bootstrap == "file:9092"
    assert s.extra == {"security.protocol": "SSL"}


def test_resolve_reads_file_named_by_env(tmp_path, empty_home):
    path = tmp_path / "c.properties"
    path.write_text("bootstrap.servers=file:9092\nsasl.mechanism=PLAIN\n")
    s = KafkaSettings.resolve(environ={"TIDAL_KAFKA_CONFIG": str(path)})
    assert s.bootstrap == "file:9092"
    assert s.extra == {"sasl.mechanism": "PLAIN"}  # the file variable itself is not a setting


def test_explicit_config_file_beats_env_config_file(tmp_path, empty_home):
    a = tmp_path / "a.properties"
    a.write_text("bootstrap.servers=a:1\n")
    b = tmp_path / "b.properties"
    b.write_text("bootstrap.servers=b:2\n")
    s = KafkaSettings.resolve(config_file=a, environ={"TIDAL_KAFKA_CONFIG": str(b)})
    assert s.bootstrap == "a:1"


def test_env_overrides_file(tmp_path, empty_home):
    path = tmp_path / "c.properties"
    path.write_text("sasl.mechanism=PLAIN\nsecurity.protocol=SASL_SSL\nbootstrap.servers=file:1\n")
    s = KafkaSettings.resolve(config_file=path, environ={"TIDAL_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"})
    assert s.extra == {"sasl.mechanism": "SCRAM-SHA-512", "security.protocol": "SASL_SSL"}
    assert s.bootstrap == "file:1"


@pytest.mark.parametrize(
    ("explicit", "env", "expected"),
    [
        (None, {}, "file:1"),
        (None, {"TIDAL_KAFKA_BOOTSTRAP_SERVERS": "kenv:2"}, "kenv:2"),
        (None, {"TIDAL_KAFKA_BOOTSTRAP_SERVERS": "kenv:2", "TIDAL_BOOTSTRAP_SERVERS": "benv:3"}, "benv:3"),
        ("arg:4", {"TIDAL_KAFKA_BOOTSTRAP_SERVERS": "kenv:2", "TIDAL_BOOTSTRAP_SERVERS": "benv:3"}, "arg:4"),
    ],
)
def test_bootstrap_precedence(tmp_path, empty_home, explicit, env, expected):
    """file < TIDAL_KAFKA_BOOTSTRAP_SERVERS < TIDAL_BOOTSTRAP_SERVERS < explicit argument."""
    path = tmp_path / "c.properties"
    path.write_text("bootstrap.servers=file:1\n")
    s = KafkaSettings.resolve(bootstrap=explicit, config_file=path, environ=env)
    assert s.bootstrap == expected
    assert "bootstrap.servers" not in s.extra
    assert s.client_config()["bootstrap.servers"] == expected


def test_resolve_defaults_to_os_environ(monkeypatch, empty_home):
    monkeypatch.delenv("TIDAL_KAFKA_CONFIG", raising=False)
    monkeypatch.setenv("TIDAL_BOOTSTRAP_SERVERS", "osenv:9092")
    monkeypatch.setenv("TIDAL_KAFKA_CLIENT_ID", "cid")
    s = KafkaSettings.resolve()
    assert s.bootstrap == "osenv:9092"
    assert s.extra["client.id"] == "cid"


# --- secrets -------------------------------------------------------------------------------------

SECRETS = {
    "sasl.password": "hunter2",
    "ssl.key.password": "keypw",
    "sasl.oauthbearer.client.secret": "oauth-secret",
    "sasl.jaas.config": 'PlainLoginModule required password="jaaspw";',
    "ssl.key.pem": "-----BEGIN PRIVATE KEY-----xyz",
}


def test_secrets_masked_in_repr_but_present_in_client_config():
    extra = {**SECRETS, "security.protocol": "SASL_SSL", "sasl.username": "alice"}
    s = KafkaSettings("h:9092", extra)
    text = repr(s)
    for value in SECRETS.values():
        assert value not in text
    assert text.count("'***'") == len(SECRETS)
    assert "SASL_SSL" in text and "alice" in text and "h:9092" in text
    assert str(s) == text
    conf = s.client_config()
    for key, value in SECRETS.items():
        assert conf[key] == value


def test_secret_from_env_masked_after_resolve(empty_home):
    s = KafkaSettings.resolve("h:1", environ={"TIDAL_KAFKA_SASL_PASSWORD": "s3cr3t"})
    assert "s3cr3t" not in repr(s)
    assert s.client_config()["sasl.password"] == "s3cr3t"


def test_client_config_overrides_win_and_do_not_mutate_settings():
    s = KafkaSettings("h:1", {"client.id": "a", "linger.ms": 5})
    conf = s.client_config({"client.id": "b", "group.id": "g"})
    assert conf == {"bootstrap.servers": "h:1", "client.id": "b", "linger.ms": 5, "group.id": "g"}
    assert s.extra == {"client.id": "a", "linger.ms": 5}
    assert s.client_config() == {"bootstrap.servers": "h:1", "client.id": "a", "linger.ms": 5}


# --- embedded broker discovery -------------------------------------------------------------------

def test_resolve_without_anything_raises_broker_unreachable(empty_home):
    with pytest.raises(BrokerUnreachable) as info:
        KafkaSettings.resolve(environ={})
    message = str(info.value)
    assert "tidal broker start" in message
    assert "--bootstrap" in message


def test_resolve_finds_running_embedded_broker(empty_home):
    """A broker.json whose pid is alive (this process) supplies the bootstrap servers."""
    state = {"pid": os.getpid(), "port": 19092, "bootstrap": "127.0.0.1:19092", "binary": "tansu",
             "log": str(empty_home / "broker.log"), "started_at": time.time()}
    (empty_home / "broker.json").write_text(json.dumps(state))
    s = KafkaSettings.resolve(environ={"TIDAL_KAFKA_CLIENT_ID": "x"})
    assert s.bootstrap == "127.0.0.1:19092"
    assert s.extra == {"client.id": "x"}


def test_resolve_ignores_broker_json_of_dead_process(empty_home):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid no longer exists
    state = {"pid": proc.pid, "port": 19092, "bootstrap": "127.0.0.1:19092", "binary": "tansu",
             "log": "x.log", "started_at": time.time()}
    (empty_home / "broker.json").write_text(json.dumps(state))
    with pytest.raises(BrokerUnreachable):
        KafkaSettings.resolve(environ={})


def test_broker_unreachable_is_a_runtime_error():
    assert issubclass(BrokerUnreachable, RuntimeError)


def test_log_level_keeps_its_underscore():
    from tidal.config import env_overrides

    assert env_overrides({"TIDAL_KAFKA_LOG_LEVEL": "7"}) == {"log_level": "7"}
