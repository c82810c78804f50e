"""The embedded backend benchmark, run for one short round on the demo model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import ADAPTERS

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "embedded_backend.py"


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("embedded_backend", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def result(benchmark, demo_model, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("embedded-benchmark") / "result.json"
    argv = [
        "--models", str(demo_model),
        "--adapters-dir", str(demo_model / "adapters"),
        "--max-tokens", "2",
        "--requests", "2",
        "--switch-requests", "4",
        "--rounds", "1",
        "--out", str(out),
    ]  # fmt: skip
    assert benchmark.main(argv) == 0
    return json.loads(out.read_text(encoding="utf-8"))


def test_result_has_one_entry_per_model(result, demo_model):
    (model,) = result["models"].values()

    assert model["model"] == str(demo_model)
    assert model["startup"]["adapters"] == len(ADAPTERS)
    assert model["switch"]["adapters"] == ADAPTERS[:2]


def test_generation_rows_are_base_and_each_adapter(result):
    (model,) = result["models"].values()
    generation = model["generation"]

    assert list(generation) == ["base", *ADAPTERS]
    for stats in generation.values():
        assert stats["completion_tokens"] == 2
        assert stats["finish_reasons"] == ["length"]
        assert stats["tokens_per_second"] > 0


def test_base_model_is_the_ratio_baseline(result):
    (model,) = result["models"].values()
    base = model["generation"]["base"]

    assert base["tokens_per_second_ratio"] == 1.0
    assert base["first_text_ratio"] == 1.0


def test_backend_requests_compare_with_engine(result):
    (model,) = result["models"].values()
    backend = model["backend_requests"]

    assert backend["adapter"] == ADAPTERS[0]
    assert backend["backend_ms"] > 0
    assert backend["engine_ms"] > 0
    assert backend["backend_vs_engine"] == pytest.approx(backend["backend_ms"] / backend["engine_ms"])


def test_too_few_adapters_is_rejected(benchmark, tmp_path):
    with pytest.raises(SystemExit, match=r"found 0 \.onnx_adapter files"):
        benchmark.main(["--adapters-dir", str(tmp_path), "--out", str(tmp_path / "result.json")])
