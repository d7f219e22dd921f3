"""Connectors: move events between Kafka and the systems around it, from Python.

A connector is a small :class:`Source` or :class:`Sink`; the runners
(:class:`SourceRunner`, :class:`SinkRunner`) give every connector the same delivery
guarantees, dead-letter topic, back-off while the outside system is down, and metrics.
"""

from tidal.connect.backoff import Backoff
from tidal.connect.base import BadRecord, RecordsRejected, Sink, SinkRecord, Source, SourceRecord, Unavailable
from tidal.connect.file_sink import FileSink
from tidal.connect.file_source import FileSource
from tidal.connect.metrics import ConnectorMetrics
from tidal.connect.mosquitto import Mosquitto
from tidal.connect.mqtt import MqttConnection, MqttSink, MqttSource
from tidal.connect.postgres_sink import PostgresSink
from tidal.connect.postgres_source import PostgresSource
from tidal.connect.positions import PositionFile, default_position_path
from tidal.connect.sink_runner import SinkRunner
from tidal.connect.source_runner import SourceRunner

__all__ = ["Source", "Sink", "SourceRecord", "SinkRecord", "BadRecord", "Unavailable", "RecordsRejected",
           "SourceRunner", "SinkRunner", "PositionFile", "default_position_path", "ConnectorMetrics", "Backoff"]
__all__ += ["MqttSource", "MqttSink", "MqttConnection", "Mosquitto"]
__all__ += ["PostgresSource", "PostgresSink"]
__all__ += ["FileSource", "FileSink"]
