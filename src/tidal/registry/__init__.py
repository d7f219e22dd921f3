"""The model registry (versions, aliases, lineage, on disk) and deployments over ``tidal.models``.

>>> parse_ref("models:/fraud@champion").alias
'champion'
"""

from tidal.registry.deployment import MODES, Deployment, Target
from tidal.registry.publish import KafkaPublisher, PublishError
from tidal.registry.records import CHAMPION, AliasMove, ModelInfo, ModelVersion
from tidal.registry.signature import SignatureMismatch, check_signature
from tidal.registry.store import ENV_REGISTRY, Registry, code_version
from tidal.registry.uri import NotFound, Ref, RegistryError, parse_ref

__all__ = [
    "AliasMove",
    "CHAMPION",
    "Deployment",
    "ENV_REGISTRY",
    "KafkaPublisher",
    "MODES",
    "ModelInfo",
    "ModelVersion",
    "NotFound",
    "PublishError",
    "Ref",
    "Registry",
    "RegistryError",
    "SignatureMismatch",
    "Target",
    "check_signature",
    "code_version",
    "parse_ref",
]
