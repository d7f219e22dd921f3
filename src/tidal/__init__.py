"""tidal: real-time machine learning on Apache Kafka.

>>> from tidal import Pipeline, Schema
>>> Pipeline("fraud", schema=Schema.from_dict({"amount": "float"})).sink
'fraud.predictions'
"""

from tidal.config import KafkaSettings
from tidal.quality.schema import Field, Schema
from tidal.stream.batch import Batch
from tidal.stream.pipeline import Pipeline
from tidal.stream.step import FunctionStep, Step
from tidal.stream.worker import Worker

__version__ = "0.1.0"

__all__ = ["Batch", "Field", "FunctionStep", "KafkaSettings", "Pipeline", "Schema", "Step", "Worker", "__version__"]
