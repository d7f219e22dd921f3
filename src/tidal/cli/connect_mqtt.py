"""``tidal ingest mqtt`` (MQTT → Kafka) and ``tidal sink mqtt`` (Kafka → MQTT)."""

from __future__ import annotations

from typing import List, Optional

import typer

from tidal.cli.connect import (BOOTSTRAP, IDLE_EXIT, KAFKA_CONFIG, METRICS_PORT, ingest_app, run_sink, run_source,
                               sink_app)

__all__ = ["ingest_mqtt", "sink_mqtt"]

HOST = typer.Option("127.0.0.1", "--mqtt-host", envvar="TIDAL_MQTT_HOST", help="MQTT broker host.")
PORT = typer.Option(1883, "--mqtt-port", envvar="TIDAL_MQTT_PORT", help="MQTT broker port.")
USERNAME = typer.Option(None, "--username", envvar="TIDAL_MQTT_USERNAME", help="MQTT user name.")
PASSWORD = typer.Option(None, "--password", envvar="TIDAL_MQTT_PASSWORD", help="MQTT password (better: the env var).")
TLS = typer.Option(False, "--tls", help="Connect with TLS (system CAs unless --ca-file).")
CA_FILE = typer.Option(None, "--ca-file", help="CA certificate(s) to check the broker with (implies --tls).")
CERT_FILE = typer.Option(None, "--cert-file", help="Client certificate (mutual TLS).")
KEY_FILE = typer.Option(None, "--key-file", help="Client private key (mutual TLS).")


def _connection(host, port, username, password, tls, ca_file, cert_file, key_file):
    from tidal.connect.mqtt import MqttConnection

    return MqttConnection(host, port, username, password, tls, ca_file, cert_file, key_file)


@ingest_app.command("mqtt")
def ingest_mqtt(subscribe: List[str] = typer.Option(..., "--subscribe", "-s",
                                                    help="MQTT topic filter to subscribe to (QoS 1); repeatable."),
                topic: str = typer.Option(..., "--topic", "-t", help="Kafka topic to produce to."),
                client_id: Optional[str] = typer.Option(None, "--client-id",
                                                        help="MQTT client id of the persistent session "
                                                             "(default: tidal-<topic>); keep it across restarts."),
                key: str = typer.Option("topic", "--key", help="Kafka key: 'topic' (the MQTT topic) or 'field:NAME'."),
                topic_field: Optional[str] = typer.Option(None, "--topic-field",
                                                          help="Also add the MQTT topic to each JSON object "
                                                               "as this field."),
                dedup_field: Optional[str] = typer.Option(None, "--dedup-field",
                                                          help="Payload field unique per MQTT topic (e.g. a sequence "
                                                               "number): redelivered messages are skipped."),
                receive_maximum: int = typer.Option(4000, "--receive-maximum",
                                                    help="Unacknowledged messages the broker may send at once."),
                session_expiry: int = typer.Option(7 * 86400, "--session-expiry",
                                                   help="Seconds the broker keeps the session (and queues "
                                                        "messages) while the bridge is away."),
                name: Optional[str] = typer.Option(None, "--name", help="Connector name (default: the client id)."),
                dlq: Optional[str] = typer.Option(None, "--dlq", help="Dead-letter topic (default: <pipeline>.dlq)."),
                partitions: int = typer.Option(4, "--partitions", help="Partitions if the topic is created."),
                batch_size: int = typer.Option(1000, "--batch-size", help="Records per produced batch."),
                mqtt_host: str = HOST, mqtt_port: int = PORT, username: Optional[str] = USERNAME,
                password: Optional[str] = PASSWORD, tls: bool = TLS, ca_file: Optional[str] = CA_FILE,
                cert_file: Optional[str] = CERT_FILE, key_file: Optional[str] = KEY_FILE,
                bootstrap: Optional[str] = BOOTSTRAP, kafka_config: Optional[str] = KAFKA_CONFIG,
                metrics_port: int = METRICS_PORT, idle_exit: Optional[float] = IDLE_EXIT) -> None:
    """Bridge MQTT topics into Kafka: QoS 1, persistent session, PUBACK only after Kafka acknowledged."""
    from tidal.connect.mqtt import MqttSource

    cid = client_id or f"tidal-{topic}"
    try:
        source = MqttSource(subscribe, cid, _connection(mqtt_host, mqtt_port, username, password, tls, ca_file,
                                                        cert_file, key_file),
                            key=key, topic_field=topic_field, dedup_field=dedup_field,
                            receive_maximum=receive_maximum, session_expiry=session_expiry, name=name)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    run_source(source, topic, bootstrap, kafka_config, dlq=dlq, partitions=partitions,
               batch_size=min(batch_size, receive_maximum), metrics_port=metrics_port, idle_exit=idle_exit)


@sink_app.command("mqtt")
def sink_mqtt(topic: List[str] = typer.Option(..., "--topic", "-t", help="Kafka topic to publish; repeatable."),
              publish: str = typer.Option(..., "--publish", "-p",
                                          help="MQTT topic template: {key} (the Kafka key) and {field} names."),
              where: Optional[str] = typer.Option(None, "--where",
                                                  help="Publish only records where FIELD OP VALUE "
                                                       "(e.g. 'score>0.8', 'decision==true')."),
              retain: bool = typer.Option(False, "--retain", help="Publish as retained messages."),
              client_id: Optional[str] = typer.Option(None, "--client-id",
                                                      help="MQTT client id (default: tidal-sink-<topic>)."),
              name: Optional[str] = typer.Option(None, "--name", help="Connector name (default: mqtt-<topic>)."),
              group: Optional[str] = typer.Option(None, "--group", help="Kafka consumer group."),
              dlq: Optional[str] = typer.Option(None, "--dlq", help="Dead-letter topic."),
              batch_size: int = typer.Option(1000, "--batch-size", help="Records per batch."),
              mqtt_host: str = HOST, mqtt_port: int = PORT, username: Optional[str] = USERNAME,
              password: Optional[str] = PASSWORD, tls: bool = TLS, ca_file: Optional[str] = CA_FILE,
              cert_file: Optional[str] = CERT_FILE, key_file: Optional[str] = KEY_FILE,
              bootstrap: Optional[str] = BOOTSTRAP, kafka_config: Optional[str] = KAFKA_CONFIG,
              metrics_port: int = METRICS_PORT, idle_exit: Optional[float] = IDLE_EXIT) -> None:
    """Publish a Kafka topic to MQTT (QoS 1); offsets are committed after the broker's PUBACKs."""
    from tidal.connect.mqtt import MqttSink

    try:
        sink = MqttSink(publish, client_id or f"tidal-sink-{topic[0]}",
                        _connection(mqtt_host, mqtt_port, username, password, tls, ca_file, cert_file, key_file),
                        where=where, retain=retain, name=name or f"mqtt-{topic[0]}")
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    run_sink(sink, topic, bootstrap, kafka_config, group=group, dlq=dlq, batch_size=batch_size,
             metrics_port=metrics_port, idle_exit=idle_exit)

