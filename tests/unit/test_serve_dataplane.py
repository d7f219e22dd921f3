"""The transport-free core: tensors, the adaptive batcher, and the data plane without HTTP."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from tidal.models import save_model
from tidal.serve import AdaptiveBatcher, DataPlane, ModelRepository
from tidal.serve.protocol import (BadRequest, InvalidInput, ModelError, ModelNotFound, PayloadTooLarge,
                                  RequestInput, decode_request, to_array)


def tensor(shape, datatype, data) -> RequestInput:
    return RequestInput("t", shape, datatype, data)


def test_tensors_flat_or_nested_become_arrays_of_their_shape_and_type():
    assert to_array(tensor([2, 2], "INT32", [[1, 2], [3, 4]])).dtype == np.int32
    np.testing.assert_array_equal(to_array(tensor([2, 2], "FP32", [1, 2, 3, 4])), [[1, 2], [3, 4]])
    assert np.isnan(to_array(tensor([2], "FP64", [1.0, None]))[1])  # null: a missing value
    assert to_array(tensor([2], "BYTES", ["a", None])).tolist() == ["a", None]
    assert to_array(tensor([0, 3], "FP64", [])).shape == (0, 3)
    for bad, match in [(tensor([3], "FP64", [1, 2]), "needs 3 values"), (tensor([2], "INT64", [1, None]), "null"),
                       (tensor([2], "BYTES", ["a", 1]), "strings"), (tensor([-1], "FP64", []), "negative"),
                       (tensor([2], "FP64", [[1], 2]), "mixes lists"), (tensor([1], "FP8", [1]), "unknown datatype")]:
        with pytest.raises(BadRequest, match=match):
            to_array(bad)


def test_request_decoding_names_the_structural_problem():
    with pytest.raises(BadRequest, match=r"Expected `array`, got `str` - at `\$.inputs\[0\].shape`"):
        decode_request(b'{"inputs": [{"name": "a", "shape": "2", "datatype": "FP64", "data": [1]}]}')
    with pytest.raises(BadRequest, match="not valid JSON"):
        decode_request(b"\xff")


def run(coro):
    return asyncio.run(coro)


def counting_model(calls: list[int], fail: bool = False):
    def predict(X: np.ndarray) -> np.ndarray:
        calls.append(len(X))
        if fail:
            raise RuntimeError("model exploded")
        return X[:, 0] + 0.5
    return predict


def test_batcher_caps_rows_per_call_and_returns_each_request_its_rows():
    calls: list[int] = []
    batcher = AdaptiveBatcher(counting_model(calls), max_batch_size=10, max_batch_time=0.05)

    async def go():
        sizes = [3, 3, 3, 3, 1, 12]  # the 4th would overflow 10 rows: what waits goes first
        xs = [np.full((k, 1), float(i)) for i, k in enumerate(sizes)]
        outs = await asyncio.gather(*(batcher.predict(x) for x in xs))
        return [o.tolist() for o in outs], sizes

    outs, sizes = run(go())
    assert outs == [[i + 0.5] * k for i, k in enumerate(sizes)]
    assert sum(calls) == 25 and all(c <= 12 for c in calls) and len(calls) == 3
    assert (batcher.calls, batcher.requests, batcher.rows) == (3, 6, 25)


def test_batcher_sends_a_lone_request_after_max_batch_time_and_spreads_errors():
    calls: list[int] = []
    batcher = AdaptiveBatcher(counting_model(calls), max_batch_size=100, max_batch_time=0.01)
    assert run(batcher.predict(np.ones((2, 1)))).tolist() == [1.5, 1.5] and calls == [2]
    failing = AdaptiveBatcher(counting_model([], fail=True), max_batch_size=100, max_batch_time=0.01)

    async def go():
        return await asyncio.gather(*(failing.predict(np.ones((1, 1))) for _ in range(3)), return_exceptions=True)

    errors = run(go())
    assert [str(e) for e in errors] == ["model exploded"] * 3 and failing.calls == 1


def test_batching_off_calls_the_model_once_per_request():
    calls: list[int] = []
    batcher = AdaptiveBatcher(counting_model(calls), max_batch_size=64, max_batch_time=0)

    async def go():
        await asyncio.gather(*(batcher.predict(np.ones((1, 1))) for _ in range(5)))

    run(go())
    assert not batcher.enabled and calls == [1] * 5


def test_model_calls_run_off_the_event_loop_thread():
    threads: list[str] = []

    def predict(X):
        threads.append(threading.current_thread().name)
        return X[:, 0]

    async def go():
        await AdaptiveBatcher(predict, 8, 0.001).predict(np.ones((1, 1)))
        return threading.current_thread().name

    assert run(go()) not in threads


@pytest.fixture
def plane(tmp_path):
    save_model(LogisticRegression().fit([[0.0, 0.0], [1.0, 1.0]], [0, 1]), tmp_path / "m", "m", 2, ["a", "b"])
    repo = ModelRepository()
    repo.add_folder(tmp_path / "m")
    p = DataPlane(repo, max_rows=5)
    yield p
    p.close()


def test_data_plane_answers_without_any_transport(plane):
    assert plane.live() and plane.ready() and plane.model_ready("m") and plane.model_ready("m", "2")
    meta = plane.model_metadata("m")
    assert meta["versions"] == ["2"] and meta["platform"] == "sklearn" and meta["parameters"]["deployment"] == "single"
    out = run(plane.predict_records("m", [{"a": 1, "b": 1}, {"a": 0, "b": 0.5}]))
    assert out["predictions"][0]["decision"] is True and len(out["predictions"]) == 2
    with pytest.raises(InvalidInput, match="model 'm' v2 cannot score missing values; null or missing in: b"):
        run(plane.predict_records("m", [{"a": 1, "b": None}]))  # this model takes no missing values: 422
    with pytest.raises(ModelNotFound):
        plane.model_metadata("m", "1")
    with pytest.raises(ModelNotFound):
        plane.model_ready("zz")
    with pytest.raises(PayloadTooLarge, match="at most 5"):
        run(plane.predict_records("m", [{"a": 1, "b": 1}] * 6))
    with pytest.raises(InvalidInput, match="categorical|numeric"):
        run(plane.predict_records("m", [{"a": [1], "b": 1}]))
    assert plane.metrics.value("tidal_serve_requests_total", model_name="m", model_version="2") == 1


def test_the_package_exports_what_it_names():
    import tidal.serve

    assert tidal.serve.__all__ and all(hasattr(tidal.serve, n) for n in tidal.serve.__all__)
    assert tidal.serve.ModelServer.__name__ == "ModelServer"
