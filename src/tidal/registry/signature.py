"""Input signatures: which features a model takes, with their types, and the promotion check.

A version's signature maps each feature to ``float``, ``int``, ``bool`` or ``str`` (the types of
:mod:`tidal.quality.schema`). Unless given, categorical features (those with categories on the
card) are ``str`` and the others ``float``. Numeric types are interchangeable: scoring turns
every numeric column into float64.

>>> sig = make_signature(["amount", "merchant"], {"merchant": ["fuel", "food"]})
>>> sig
{'amount': 'float', 'merchant': 'str'}
>>> check_signature("models:/fraud/2", sig, ["amount", "merchant:str"])
>>> check_signature("models:/fraud/2", sig, ["amount", "hour"])  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
tidal.registry.signature.SignatureMismatch: models:/fraud/2 does not match ...: missing (...): merchant; extra (...): hour
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from tidal.quality.schema import TYPES
from tidal.registry.uri import RegistryError

__all__ = ["SignatureMismatch", "make_signature", "pipeline_features", "check_signature", "model_feature_count"]

_NUMERIC = {"float", "int", "bool"}
Features = Sequence[str] | Mapping[str, str | None]


class SignatureMismatch(RegistryError):
    """A version's features differ from the pipeline's; the message names each difference."""

    def __init__(self, message: str, missing: list[str], extra: list[str], wrong_type: list[str]) -> None:
        super().__init__(message)
        self.missing, self.extra, self.wrong_type = missing, extra, wrong_type


def _check_type(feature: str, type_: str) -> str:
    if type_ not in TYPES:
        raise RegistryError(f"feature {feature!r}: unknown type {type_!r}; use one of {sorted(TYPES)}")
    return type_


def _no_duplicates(names: Iterable[str]) -> None:
    seen: set[str] = set()
    dupes = sorted({n for n in names if n in seen or seen.add(n)})
    if dupes:
        raise RegistryError(f"duplicate features: {', '.join(dupes)}")


def make_signature(features: Features, categories: Mapping[str, Any] | None = None) -> dict[str, str]:
    """``{feature: type}`` from names (typed by ``categories``) or an explicit mapping."""
    categories = categories or {}
    if isinstance(features, Mapping):
        return {str(f): _check_type(f, t or ("str" if f in categories else "float")) for f, t in features.items()}
    if isinstance(features, str):
        raise RegistryError("features must be a list of names, not one string")
    names = [str(f) for f in features]
    _no_duplicates(names)
    return {f: "str" if f in categories else "float" for f in names}


def pipeline_features(features: Features | Any) -> dict[str, str | None]:
    """What a pipeline feeds its model: names (``"amount"`` or ``"amount:float"``), a mapping
    ``{name: type or None}``, or a :class:`tidal.Schema`. ``None`` means "any type"."""
    if hasattr(features, "fields"):  # a tidal Schema
        return {f.name: f.type for f in features.fields}
    if isinstance(features, Mapping):
        return {str(f): (_check_type(f, t) if t else None) for f, t in features.items()}
    if isinstance(features, str):
        features = [f for f in features.split(",") if f.strip()]
    out: dict[str, str | None] = {}
    names = []
    for item in features:
        name, _, type_ = str(item).strip().partition(":")
        names.append(name.strip())
        out[name.strip()] = _check_type(name, type_.strip()) if type_.strip() else None
    _no_duplicates(names)
    return out


def check_signature(ref: str, signature: Mapping[str, str], features: Features | Any) -> None:
    """Raise :class:`SignatureMismatch` unless ``features`` are exactly the model's (types where given)."""
    want = pipeline_features(features)
    missing = [f for f in signature if f not in want]
    extra = [f for f in want if f not in signature]
    wrong = [f"{f} (model {signature[f]}, pipeline {t})" for f, t in want.items()
             if t and f in signature and (t in _NUMERIC) != (signature[f] in _NUMERIC)]
    if not (missing or extra or wrong):
        return
    parts = []
    if missing:
        parts.append(f"missing (the model needs them, the pipeline lacks them): {', '.join(missing)}")
    if extra:
        parts.append(f"extra (the pipeline has them, the model does not take them): {', '.join(extra)}")
    if wrong:
        parts.append(f"wrong type: {', '.join(wrong)}")
    raise SignatureMismatch(f"{ref} does not match the pipeline's features: {'; '.join(parts)}", missing, extra, wrong)


def model_feature_count(model: Any) -> int | None:
    """How many input columns a loaded model expects, where its library says (LightGBM, sklearn)."""
    num_feature = getattr(model, "num_feature", None)
    if callable(num_feature):
        return int(num_feature())
    n = getattr(model, "n_features_in_", None)
    return int(n) if n is not None else None
