"""Shared pieces of tidal's benchmark suite: events, model, Kafka helpers, processes, machine."""
