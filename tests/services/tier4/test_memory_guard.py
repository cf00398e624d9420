"""Memory guard: exact estimates against numpy, budget verdicts (413/507 with figures), validation, status."""

from __future__ import annotations

import math
import tracemalloc
from typing import Any

import numpy as np
import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sklearn.metrics import pairwise_distances

from mlmesh.errors import InvalidInput, PayloadTooLarge
from services.tier4.memory_guard import (
    InsufficientStorage,
    MemoryGuardInput,
    MemoryGuardOutput,
    array_bytes,
    format_bytes,
    memory_guard,
    parse_dtype,
)

ROUTE = "/run/memory_guard"
GiB = 2**30
MiB = 2**20
DTYPES = [
    "bool",
    "int8",
    "uint16",
    "int32",
    "int64",
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
    "U7",
    "S3",
    "datetime64[ns]",
    "timedelta64[s]",
    "<f8",
    "V5",
]


def check(**body: Any) -> MemoryGuardOutput:
    return memory_guard(MemoryGuardInput.model_validate({"operation": "check", **body}))


def rss() -> int:
    return psutil.Process().memory_info().rss


def roomy_budget() -> int:
    """A budget the small test requests always fit: RSS plus 1 GiB."""
    return rss() + GiB


# ----------------------------------------------------------------------------- exact estimates


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(0, 6), min_size=0, max_size=4),
    dtype=st.sampled_from(DTYPES),
)
def test_array_estimate_equals_numpy_nbytes(shape: list[int], dtype: str) -> None:
    expected = np.empty(shape, dtype=dtype).nbytes
    assert array_bytes(shape, parse_dtype(dtype)) == expected
    out = check(arrays=[{"name": "A", "shape": shape, "dtype": dtype}], budget_bytes=roomy_budget())
    assert out.verdict == "admit"
    assert out.arrays[0].bytes == expected == out.estimate_bytes
    assert out.arrays[0].elements == math.prod(shape)
    assert out.arrays[0].itemsize == np.dtype(dtype).itemsize


def test_several_arrays_add_up_and_json_floats_are_accepted() -> None:
    arrays = [
        {"name": "X", "shape": [1e3, 1e2], "dtype": "float64"},
        {"name": "y", "shape": [1000], "dtype": "int32"},
    ]
    out = check(arrays=arrays, budget_bytes=roomy_budget())
    expected = np.empty((1000, 100)).nbytes + np.empty(1000, dtype=np.int32).nbytes
    assert out.inputs_bytes == out.estimate_bytes == expected
    assert [a.shape for a in out.arrays] == [[1000, 100], [1000]]


@pytest.mark.parametrize(
    ("computation", "specs", "reference"),
    [
        ("copy", [((4, 5), "float32")], lambda a: np.copy(a).nbytes),
        ("sort", [((7, 3), "int16")], lambda a: np.sort(a, axis=None).nbytes),
        ("argsort", [((6, 2), "float64")], lambda a: np.argsort(a, axis=None).nbytes),
        ("concatenate", [((5,), "int8"), ((3,), "float32")], lambda a, b: np.concatenate([a, b]).nbytes),
        ("elementwise", [((3, 1), "int8"), ((1, 4), "float32")], lambda a, b: (a + b).nbytes),
        ("elementwise", [((2, 1, 5), "uint8"), ((3, 1), "int16")], lambda a, b: (a * b).nbytes),
        ("matmul", [((3, 4), "float32"), ((4, 5), "float64")], lambda a, b: (a @ b).nbytes),
        ("matmul", [((2, 1, 3, 4), "float64"), ((5, 4, 6), "float64")], lambda a, b: (a @ b).nbytes),
        ("matmul", [((4,), "int32"), ((4, 6), "int32")], lambda a, b: (a @ b).nbytes),
        ("matmul", [((3, 4), "complex64"), ((4,), "complex64")], lambda a, b: (a @ b).nbytes),
        ("matmul", [((4,), "float64"), ((4,), "float64")], lambda a, b: np.asarray(a @ b).nbytes),
        ("pairwise_distances", [((7, 3), "float32")], lambda x: pairwise_distances(x).nbytes),
        (
            "pairwise_distances",
            [((7, 3), "float64"), ((5, 3), "float64")],
            lambda x, y: pairwise_distances(x, y).nbytes,
        ),
    ],
)
def test_computation_output_matches_numpy(
    computation: str, specs: list[tuple[tuple[int, ...], str]], reference: Any
) -> None:
    arrays = [np.ones(shape, dtype=dtype) for shape, dtype in specs]
    out = check(
        arrays=[{"name": f"a{i}", "shape": list(s), "dtype": d} for i, (s, d) in enumerate(specs)],
        computation=computation,
        budget_bytes=roomy_budget(),
    )
    inputs = sum(a.nbytes for a in arrays)
    assert out.inputs_bytes == inputs
    assert out.computation_bytes == reference(*arrays)
    assert out.estimate_bytes == inputs + out.computation_bytes


def test_pairwise_documented_formula_n_squared_times_eight() -> None:
    out = check(arrays=[{"shape": [1000, 20]}], computation="pairwise_distances", budget_bytes=roomy_budget())
    assert out.computation_bytes == 1000**2 * 8


def test_overhead_is_added() -> None:
    out = check(arrays=[{"shape": [10], "dtype": "int8"}], overhead_bytes=12345, budget_bytes=roomy_budget())
    assert out.estimate_bytes == 10 + 12345


# ----------------------------------------------------------------------------- verdicts


def test_huge_request_is_413_with_the_figures() -> None:
    with pytest.raises(PayloadTooLarge) as info:
        check(arrays=[{"name": "X", "shape": [1e6, 1e6], "dtype": "float64"}])
    detail = info.value.detail
    assert info.value.status == 413
    assert str(8 * 10**12) in detail  # the exact estimate
    budget = int(psutil.virtual_memory().total * 0.5)
    assert "budget" in detail and "RSS" in detail and "available" in detail
    assert any(str(b) in detail for b in (budget, budget - 1, budget + 1)) or "cgroup" in detail


def test_request_over_an_explicit_budget_is_413() -> None:
    with pytest.raises(PayloadTooLarge) as info:
        check(arrays=[{"shape": [2000], "dtype": "int8"}], budget_bytes=1000)
    assert "2000 bytes" in info.value.detail and "1000 bytes" in info.value.detail


def test_fits_budget_but_not_available_memory_is_507() -> None:
    with pytest.raises(InsufficientStorage) as info:
        check(arrays=[{"shape": [1e6, 1e6], "dtype": "float64"}], budget_bytes=10**18)
    err = info.value
    assert err.status == 507 and err.title == "Insufficient storage"
    assert str(8 * 10**12) in err.detail and str(10**18) in err.detail
    assert "RSS" in err.detail and "available" in err.detail


def test_fits_budget_but_not_budget_minus_rss_is_507() -> None:
    current = rss()
    budget = current + 64 * MiB
    estimate = current // 2 + 64 * MiB  # ≤ budget, but > budget − RSS
    with pytest.raises(InsufficientStorage):
        check(arrays=[{"shape": [estimate], "dtype": "int8"}], budget_bytes=budget)


def test_budget_respected_and_figures_reported() -> None:
    budget = roomy_budget()
    out = check(arrays=[{"shape": [10 * MiB], "dtype": "uint8"}], budget_bytes=budget)
    f = out.figures
    assert out.verdict == "admit"
    assert f.budget_bytes == budget and f.budget_source == "budget_bytes"
    assert f.free_bytes == min(f.system_available_bytes, budget - f.rss_bytes)
    assert out.headroom_after_bytes == f.free_bytes - 10 * MiB
    assert out.budget_fraction_after == pytest.approx((f.rss_bytes + 10 * MiB) / budget)
    assert abs(f.rss_bytes - rss()) < 256 * MiB


def test_default_budget_is_a_fraction_of_memory() -> None:
    out = check(arrays=[{"shape": [8]}], budget_fraction=0.25)
    f = out.figures
    total = psutil.virtual_memory().total
    if f.cgroup_limit_bytes is None:
        assert f.system_total_bytes == total
        assert f.budget_bytes == int(total * 0.25)
    else:
        assert f.budget_bytes == int(min(total, f.cgroup_limit_bytes) * 0.25)


def test_never_allocates_what_it_estimates() -> None:
    budget = roomy_budget()
    tracemalloc.start()
    try:
        out = check(arrays=[{"shape": [8192, 8192], "dtype": "float64"}], computation="copy", budget_bytes=budget)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.estimate_bytes == 2 * 8192 * 8192 * 8  # 1 GiB estimated ...
    assert peak < 2 * MiB  # ... and nothing like it allocated


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("array", "where", "words"),
    [
        ({"shape": [3], "dtype": "floaty"}, "arrays.0.dtype", "pattern"),
        ({"shape": [3], "dtype": "object"}, "arrays.0.dtype", "pattern"),
        ({"shape": [3], "dtype": "U"}, "arrays.0.dtype", "pattern"),
        ({"shape": [3], "dtype": "U0"}, "arrays.0.dtype", "pattern"),
        ({"shape": [10, -1]}, "arrays.0.shape.1", "greater than or equal to 0"),
        ({"shape": [2**40, 2**40]}, "arrays.0.shape", "overflows"),
        ({"shape": [10**18, 10], "dtype": "int8"}, "arrays.0.shape", "overflows"),
        ({"shape": [10**18 + 1]}, "arrays.0.shape.0", "less than or equal to"),
        ({"shape": [1.5]}, "arrays.0.shape.0", "integer"),
        ({"shape": ["3"]}, "arrays.0.shape.0", "integer"),
        ({"shape": [1e30]}, "arrays.0.shape.0", "less than or equal to"),
    ],
)
def test_invalid_arrays_are_422_naming_the_field(
    client_for: Any, array: dict[str, Any], where: str, words: str
) -> None:
    with pytest.raises(ValidationError):
        MemoryGuardInput.model_validate({"operation": "check", "arrays": [array]})
    r = client_for(memory_guard).post(ROUTE, json={"operation": "check", "arrays": [array]})
    assert r.status_code == 422, r.text
    assert where in r.json()["detail"] and words in r.json()["detail"]


@pytest.mark.parametrize(
    ("name", "words"),
    [("floaty", "unknown"), ("object", "objects"), ("O", "objects"), ("U", "no size"), ("a", "deprecated")],
)
def test_parse_dtype_refuses_unsized_and_unknown(name: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_dtype(name)


@pytest.mark.parametrize(
    ("computation", "arrays"),
    [
        ("matmul", [{"shape": [3, 4]}, {"shape": [5, 6]}]),
        ("matmul", [{"shape": [3, 4]}]),
        ("elementwise", [{"shape": [3, 4]}, {"shape": [5]}]),
        ("pairwise_distances", [{"shape": [3, 4]}, {"shape": [5, 6]}]),
        ("pairwise_distances", [{"shape": [3]}]),
        ("concatenate", [{"shape": [3], "dtype": "U4"}, {"shape": [3], "dtype": "datetime64[ns]"}]),
    ],
)
def test_impossible_computations_are_422(computation: str, arrays: list[dict[str, Any]]) -> None:
    with pytest.raises(InvalidInput) as info:
        check(arrays=arrays, computation=computation, budget_bytes=roomy_budget())
    assert info.value.field == "arrays"


def test_broadcast_rule_agrees_with_numpy() -> None:
    shapes = [[8, 1, 6, 1], [7, 1, 5]]
    out = check(
        arrays=[{"shape": s, "dtype": "int8"} for s in shapes], computation="elementwise", budget_bytes=roomy_budget()
    )
    assert out.computation_bytes == math.prod(np.broadcast_shapes(*map(tuple, shapes)))


# ----------------------------------------------------------------------------- status and HTTP


@pytest.mark.parametrize(("factor", "level"), [(10.0, "ok"), (1.25, "warning"), (1.02, "critical")])
def test_status_reports_rss_against_the_budget(factor: float, level: str) -> None:
    budget = int(rss() * factor)
    out = memory_guard(MemoryGuardInput.model_validate({"operation": "status", "budget_bytes": budget}))
    f = out.figures
    assert out.operation == "status" and out.verdict is None and out.level == level
    assert f.budget_used_fraction == pytest.approx(f.rss_bytes / budget)
    assert f.system_total_bytes <= psutil.virtual_memory().total


def test_http_admit_413_and_507(client_for: Any) -> None:
    client = client_for(memory_guard)
    ok = client.post(ROUTE, json=memory_guard.example)
    assert ok.status_code == 200, ok.text
    assert ok.json()["component_result"]["verdict"] == "admit"

    big = client.post(ROUTE, json={"operation": "check", "arrays": [{"shape": [1e6, 1e6]}]})
    assert big.status_code == 413
    problem = big.json()
    assert big.headers["content-type"] == "application/problem+json"
    assert problem["title"] == "Payload too large" and str(8 * 10**12) in problem["detail"]

    tight = client.post(ROUTE, json={"operation": "check", "arrays": [{"shape": [1e6, 1e6]}], "budget_bytes": 10**18})
    assert tight.status_code == 507
    assert tight.json()["title"] == "Insufficient storage" and "available" in tight.json()["detail"]

    status = client.post(ROUTE, json={"operation": "status"})
    assert status.status_code == 200 and status.json()["component_result"]["figures"]["rss_bytes"] > 0


def test_format_bytes() -> None:
    assert format_bytes(512) == "512 B"
    assert format_bytes(1024) == "1.00 KiB"
    assert format_bytes(8 * 10**12) == "7.28 TiB"
