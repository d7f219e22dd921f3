"""ONNX: convert scikit-learn and LightGBM model folders, prove parity, run on ONNX Runtime.

:func:`convert` loads a model folder, converts it (skl2onnx for scikit-learn, onnxmltools for
LightGBM), scores sample data with both, and refuses to save unless every ONNX score is within
``atol + rtol·|score|`` of the original's. Neural networks (e.g. ``MLPClassifier``) are also
tried with dynamic int8 quantisation, kept only within the stated tolerance: the mean
|score change| at most ``quantize_atol`` (0.01; relative to the mean |score| for regression)
and, for binary models, at least ``quantize_agreement`` (99%) of decisions unchanged. The result is a new model folder of flavor ``onnx`` (same features,
categories, threshold and task; the conversion and parity numbers in its lineage), which
:func:`tidal.models.load_model` runs through :class:`OnnxModel` on ONNX Runtime — in the
stream engine and the server alike.

>>> import numpy as np, tempfile, os
>>> from sklearn.linear_model import LogisticRegression
>>> from tidal.models import save_model, load_model
>>> X = np.array([[0.0], [1.0], [2.0], [3.0]]); y = np.array([0, 0, 1, 1])
>>> src, out = tempfile.mkdtemp(), os.path.join(tempfile.mkdtemp(), "onnx")
>>> _ = save_model(LogisticRegression().fit(X, y), src, "toy", 1, ["x"])
>>> report = convert(src, out)
>>> report.card.flavor, report.card.version, report.max_abs_diff < 1e-4
('onnx', '1-onnx', True)
>>> m = load_model(out)
>>> bool(np.allclose(m.predict(X), load_model(src).predict(X), atol=1e-4))
True
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tidal.models.artifact import ArtifactError, LoadedModel, ModelCard, load_model, save_model
from tidal.models.errors import NotSupported
from tidal.models.runtimes.onnx import OnnxModel

__all__ = ["OnnxModel", "ConversionError", "ConversionReport", "convert", "to_onnx", "sample_inputs", "read_sample",
           "is_neural"]

log = logging.getLogger("tidal.serve")


class ConversionError(ArtifactError):
    """The model cannot be converted, or the ONNX version does not match the original."""


@dataclass(frozen=True)
class ConversionReport:
    """What :func:`convert` wrote and how close the ONNX scores came to the original's."""

    card: ModelCard
    folder: Path
    rows: int
    max_abs_diff: float
    quantized: bool = False
    quantize_note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def is_neural(model: Any) -> bool:
    """A neural-network estimator (or a pipeline ending in one): worth int8 quantisation."""
    steps = getattr(model, "steps", None)
    last = steps[-1][1] if steps else model
    return hasattr(last, "coefs_") and type(last).__name__.startswith("MLP")


def to_onnx(loaded: LoadedModel, opset: int | None = None) -> bytes:
    """The model as a serialized ONNX graph with one float32 input ``input`` of shape [N, features]."""
    model = loaded.model
    try:
        return loaded.runtime.to_onnx(model, len(loaded.card.features), opset)
    except NotSupported as exc:
        raise ConversionError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - converters raise many types; say which model failed
        raise ConversionError(f"{type(model).__name__} could not be converted to ONNX: {exc}") from exc


def sample_inputs(loaded: LoadedModel, rows: int = 2000, seed: int = 0) -> np.ndarray:
    """Sample X for the parity check: the feature ranges the model records (LightGBM), category codes, else N(0, 1)."""
    rng = np.random.default_rng(seed)
    card = loaded.card
    ranges = loaded.runtime.feature_ranges(loaded.model)
    cols = []
    for i, f in enumerate(card.features):
        if f in card.categories:
            cols.append(rng.integers(0, max(1, len(card.categories[f])), rows).astype(np.float64))
        elif i in ranges:
            lo, hi = ranges[i]
            cols.append(rng.uniform(lo, hi, rows))
        else:
            cols.append(rng.standard_normal(rows))
    return np.column_stack(cols) if cols else np.empty((rows, 0))


def read_sample(path: str | Path, folder: str | Path) -> np.ndarray:
    """Sample X from a ``.npy`` (rows × features) or a CSV whose header names the model's features."""
    path = Path(path)
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    import csv

    model = load_model(folder)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = [c for c in model.card.features if rows and c not in rows[0]]
    if not rows or missing:
        raise ConversionError(f"{path}: no rows, or no column for feature(s) {', '.join(missing)}")

    def column(name: str) -> np.ndarray:
        values = [r[name] for r in rows]
        if name in model.card.categories:
            return np.array(values, dtype=object)
        return np.array([float(v) if v not in ("", None) else np.nan for v in values])

    return model.features_matrix(column)


def _check(name: str, ref: np.ndarray, got: np.ndarray, atol: float, rtol: float) -> float:
    diff = np.abs(ref - got)
    bad = ~(diff <= atol + rtol * np.abs(ref))  # NaN on either side counts as a mismatch
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ConversionError(f"{name}: {int(bad.sum())} of {len(ref)} sample rows differ beyond atol={atol} "
                              f"rtol={rtol} (max |diff| {np.nanmax(diff):.3g}; row {i}: {ref[i]:.6g} vs {got[i]:.6g})")
    return float(diff.max()) if len(diff) else 0.0


def _quantize(onnx_bytes: bytes) -> bytes:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        src.write_bytes(onnx_bytes)
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        return dst.read_bytes()


def _quantize_check(card: ModelCard, ref: np.ndarray, got: np.ndarray, atol: float,
                    agreement: float) -> tuple[bool, str]:
    diff = np.abs(got - ref)
    mean = float(diff.mean()) if len(diff) else 0.0
    scale = 1.0 if card.task == "binary" else max(1e-12, float(np.abs(ref).mean()))
    text = f"mean |score diff| {mean:.4g}{'' if card.task == 'binary' else ' (relative %.4g)' % (mean / scale)}, " \
           f"max {float(diff.max()) if len(diff) else 0.0:.4g}"
    ok = mean / scale <= atol
    if card.task == "binary":
        agree = float(((ref >= card.threshold) == (got >= card.threshold)).mean()) if len(ref) else 1.0
        text += f", decisions unchanged {agree:.2%}"
        ok = ok and agree >= agreement
    return ok, f"{text} (tolerance: mean <= {atol}" + (f", unchanged >= {agreement:.0%})" if card.task == "binary"
                                                          else ")")


def convert(source: str | Path, out: str | Path, *, sample: np.ndarray | None = None, atol: float = 1e-4,
            rtol: float = 1e-3, quantize: bool | None = None, quantize_atol: float = 0.01,
            quantize_agreement: float = 0.99, version: str | None = None,
            opset: int | None = None) -> ConversionReport:
    """Convert the model folder ``source`` into an ONNX model folder ``out``; see the module docstring.

    ``quantize``: ``None`` tries int8 for neural networks and keeps it only within the tolerance;
    ``True`` demands it (raises if the model is not a network or the tolerance is exceeded); ``False`` never.
    """
    original = load_model(source)
    card = original.card
    X = sample_inputs(original) if sample is None else np.asarray(sample, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != len(card.features):
        raise ConversionError(f"sample data has shape {X.shape}; the model takes {len(card.features)} features")
    onnx_bytes = to_onnx(original, opset)
    ref = original.predict(X)
    got = OnnxModel(onnx_bytes, card.task).predict(X)
    max_diff = _check(f"{source}: ONNX vs {card.flavor}", ref, got, atol, rtol)
    quantized, note = False, ""
    neural = is_neural(original.model)  # to_onnx above: only convertible flavors get here
    if quantize is True and not neural:
        raise ConversionError(f"{source}: int8 quantisation is offered for neural networks only, not "
                              f"{type(original.model).__name__}")
    if neural and quantize is not False:
        q_bytes = _quantize(onnx_bytes)
        ok, numbers = _quantize_check(card, got, OnnxModel(q_bytes, card.task).predict(X), quantize_atol,
                                      quantize_agreement)
        if ok:
            onnx_bytes, quantized = q_bytes, True
            note = f"int8 dynamic quantisation kept: {numbers}"
        elif quantize is True:
            raise ConversionError(f"{source}: int8 quantisation exceeds its tolerance: {numbers}")
        else:
            note = f"int8 not kept, float32 saved: {numbers}"
        log.info("%s: %s", source, note)
    lineage = {**card.lineage, "converted_from": {"path": str(Path(source).resolve()), "flavor": card.flavor,
                                                   "version": card.version, "sha256": card.sha256},
               "parity": {"rows": len(X), "max_abs_diff": max_diff, "atol": atol, "rtol": rtol},
               "quantized": quantized, "quantize_note": note}
    new = save_model(onnx_bytes, out, card.name, version or f"{card.version}-onnx", card.features, flavor="onnx",
                     categories=card.categories, threshold=card.threshold, task=card.task, metrics=card.metrics,
                     lineage=lineage)
    return ConversionReport(new, Path(out), len(X), max_diff, quantized, note)
