"""The stream engine: micro-batches, steps, pipelines and the workers that run them."""

from tidal.stream.batch import Batch, Reject
from tidal.stream.pipeline import Pipeline
from tidal.stream.replay import replay
from tidal.stream.spec import from_dict, load_pipeline
from tidal.stream.step import FunctionStep, Step
from tidal.stream.worker import DeliveryFailed, Worker, WorkerStats

__all__ = ["Batch", "DeliveryFailed", "FunctionStep", "Pipeline", "Reject", "Step", "Worker", "WorkerStats",
           "from_dict", "load_pipeline", "replay"]
