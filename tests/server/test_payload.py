"""The egress check: only adapter parameters and allowed finite metrics may leave a site."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedpoint.shared.payload import ALLOWED_METRICS, EgressError, check_egress, from_numpy, payload_nbytes, to_numpy


@pytest.fixture
def payload(adapter_state):
    adapter, state, _ = adapter_state("norm")
    return adapter.schema(), state


def test_codec_round_trip_keeps_names_values_and_dtypes(adapter_state):
    adapter, _, _ = adapter_state("norm")
    state = adapter.state()
    arrays = to_numpy(state)
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in arrays.values())
    back = from_numpy(arrays)
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)
    back[next(iter(back))] += 1  # no aliasing of the received buffer
    assert np.array_equal(arrays[next(iter(arrays))], to_numpy(state)[next(iter(state))])


def test_a_real_adapter_payload_passes_and_counts_its_bytes(payload, adapter_state):
    schema, arrays = payload
    check_egress(arrays, schema, {"num-examples": 3, "dice1": 0.71, "seconds": np.float32(2.5)})
    assert payload_nbytes(arrays) == adapter_state("norm")[0].nbytes()


def test_refuses_a_tensor_that_is_not_an_adapter_parameter(payload):
    schema, arrays = payload
    leaked = {**arrays, "image": np.zeros((1, 48, 48), np.float32)}
    with pytest.raises(EgressError, match="'image' is not an adapter parameter"):
        check_egress(leaked, schema)


def test_refuses_a_missing_parameter(payload):
    schema, arrays = payload
    name = sorted(arrays)[0]
    with pytest.raises(EgressError, match="missing"):
        check_egress({k: v for k, v in arrays.items() if k != name}, schema)


def test_refuses_wrong_shape_and_dtype(payload):
    schema, arrays = payload
    name = sorted(arrays)[0]
    with pytest.raises(EgressError, match=f"{name}.*shape"):
        check_egress({**arrays, name: np.zeros(arrays[name].size + 1, np.float32)}, schema)
    with pytest.raises(EgressError, match=f"{name}.*dtype float64"):
        check_egress({**arrays, name: arrays[name].astype(np.float64)}, schema)


def test_refuses_non_finite_arrays(payload):
    schema, arrays = payload
    name = sorted(arrays)[-1]
    bad = arrays[name].copy()
    bad.flat[0] = np.inf
    with pytest.raises(EgressError, match="non-finite"):
        check_egress({**arrays, name: bad}, schema)


@pytest.mark.parametrize(
    "metrics, offending",
    [
        ({"case-id": 3}, "case-id"),
        ({"dice1": float("nan")}, "dice1"),
        ({"seconds": float("inf")}, "seconds"),
        ({"dice3": "0.9"}, "dice3"),
        ({"clicks": True}, "clicks"),
        ({"dice5": [0.1, 0.2]}, "dice5"),
    ],
)
def test_refuses_a_metric_that_is_not_an_allowed_finite_number(payload, metrics, offending):
    schema, arrays = payload
    with pytest.raises(EgressError, match=offending):
        check_egress(arrays, schema, metrics)


def test_allowed_metrics_cover_what_evaluation_reports():
    assert {"num-examples", "dice1", "dice10", "noc90", "nof", "predict-ms", "bytes-up", "episode-accepted"} <= ALLOWED_METRICS


def test_flower_array_encoding_round_trips_names_order_dtypes_and_values():
    from flwr.app import ArrayRecord

    from fedpoint.shared.payload import decode_arrays, encode_arrays

    strided = np.arange(24, dtype=np.float64).reshape(4, 6)[:, ::2]  # not contiguous
    arrays = {"z.weight": np.ones((2, 3), np.float32), "a.bias": np.arange(5, dtype=np.int64), "m": strided}
    record = encode_arrays(arrays)
    assert isinstance(record, ArrayRecord) and list(record) == ["z.weight", "a.bias", "m"]
    back = decode_arrays(record)
    assert list(back) == list(arrays)
    assert all(back[k].dtype == arrays[k].dtype and np.array_equal(back[k], arrays[k]) for k in arrays)
    cast = decode_arrays(encode_arrays(arrays, dtype=np.float32))
    assert all(v.dtype == np.float32 for v in cast.values()) and np.array_equal(cast["m"], strided)
    assert decode_arrays(None) == {} and decode_arrays(ArrayRecord()) == {}


def test_the_payload_module_does_not_import_flower():
    import subprocess
    import sys

    code = "import sys, fedpoint.shared.payload; assert 'flwr' not in sys.modules, 'flwr imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_one_rule_says_whether_arrays_are_the_adapters_parameters_on_both_ends(tmp_path):
    """The site's egress, the coordinator's intake and the bank store's write ask the same question."""
    from fedpoint.server.banks import BankStore
    from fedpoint.server.checks import Reply, structural_problem
    from fedpoint.shared.adapters import AdapterMismatchError
    from fedpoint.shared.config import AdapterConfig
    from fedpoint.shared.payload import adapter_arrays_problem, check_arrays, state_schema

    state = {"w": np.ones(4, np.float32)}
    schema = state_schema(state)
    assert adapter_arrays_problem(state, schema) is None
    wide = {"w": np.ones(5, np.float32)}
    problem = adapter_arrays_problem(wide, schema)
    assert "shape (5,)" in problem
    with pytest.raises(EgressError, match="shape"):
        check_egress(wide, schema)  # the site's egress
    assert structural_problem(Reply("s", "general", wide, 1.0, "fp"), schema, "fp") == problem  # the intake
    with pytest.raises(KeyError, match="shape"):
        check_arrays(wide, schema, error=KeyError)
    store = BankStore(tmp_path / "banks")
    store.init_bank("general", state, "fp", "norm", AdapterConfig(kind="norm"))
    with pytest.raises(AdapterMismatchError, match="shape"):  # and the store, before it writes a version
        store.write("general", wide)
