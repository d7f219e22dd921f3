"""ONNX: a serialized graph (``model.onnx``) run on ONNX Runtime through :class:`OnnxModel`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tidal.models.runtimes.base import ModelRuntime, module_of, register_runtime

__all__ = ["OnnxRuntime", "OnnxModel"]


class OnnxModel:
    """An ONNX Runtime session that scores like the other flavors: P(positive) for binary tasks, else the prediction."""

    def __init__(self, model: str | Path | bytes, task: str = "binary", threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # converters declare label shapes ORT warns about on every call
        opts.inter_op_num_threads = 1
        # idle pool threads sleep instead of spinning: next to a broker and librdkafka on few cores, spinning
        # threads steal the CPU the rest of the batch needs (measured: 3x slower stream scoring on 2 cores)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            opts.intra_op_num_threads = threads
        self.source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(self.source, opts, providers=["CPUExecutionProvider"])
        self.task = task
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = np.float64 if inp.type == "tensor(double)" else np.float32
        self.output_name, self.column = self._pick_output()

    def _pick_output(self) -> tuple[str, int | None]:
        outs = self.session.get_outputs()
        by_name = {o.name: o for o in outs}
        if self.task == "binary":
            if "probabilities" in by_name:
                return "probabilities", 1
            for o in outs:
                if "float" in o.type and len(o.shape) == 2 and o.shape[1] == 2:
                    return o.name, 1
        for name in ("variable", "label"):
            if name in by_name:
                return name, None
        return outs[0].name, None

    def serialized(self) -> bytes:
        """The ONNX graph this session runs."""
        return self.source if isinstance(self.source, bytes) else Path(self.source).read_bytes()

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Scores for the rows of X (float64, one per row)."""
        X = np.ascontiguousarray(X, dtype=self.input_dtype)
        out = np.asarray(self.session.run([self.output_name], {self.input_name: X})[0])
        out = out[:, self.column] if self.column is not None else out.reshape(len(X), -1)[:, 0]
        return out.astype(np.float64)


@register_runtime
class OnnxRuntime(ModelRuntime):
    """Serialized graphs (``bytes``), ``onnx.ModelProto`` objects and loaded :class:`OnnxModel` sessions."""

    flavor = "onnx"
    file = "model.onnx"
    platform = "onnxruntime_onnx"

    def handles(self, model: Any) -> bool:
        return isinstance(model, (bytes, OnnxModel)) or module_of(model) == "onnx"

    def save(self, model: Any, path: Path) -> None:
        if isinstance(model, OnnxModel):
            model = model.serialized()
        path.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())

    def load(self, path: Path, *, task: str = "binary") -> Any:
        return OnnxModel(path, task)

    def predict(self, model: Any, X: np.ndarray, *, task: str = "binary", features: Sequence[str] = (),
                threads: int | None = None) -> np.ndarray:
        return model.predict(X)
