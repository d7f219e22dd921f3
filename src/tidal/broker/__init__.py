"""Kafka plumbing: the embedded Tansu broker and topic administration."""

from tidal.broker.embedded import BrokerState, EmbeddedBroker, running_broker, tidal_home, wait_ready
from tidal.broker.produce import produce_all
from tidal.broker.topics import ALERTS_TOPIC, MODELS_TOPIC, PipelineTopics, TopicSpec, ensure_topics

__all__ = [
    "ALERTS_TOPIC",
    "BrokerState",
    "EmbeddedBroker",
    "MODELS_TOPIC",
    "PipelineTopics",
    "TopicSpec",
    "ensure_topics",
    "produce_all",
    "running_broker",
    "tidal_home",
    "wait_ready",
]
