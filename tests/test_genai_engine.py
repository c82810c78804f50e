"""The onnxruntime-genai engine in process, on the demo model."""

from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort
import pytest
from conftest import ADAPTERS

from router.genai_engine import GenaiEngine, ModelLoadError, PromptTooLongError, SamplingOptions

GREEDY = SamplingOptions(max_tokens=12, temperature=0)


@pytest.fixture(scope="module")
def engine(demo_model) -> GenaiEngine:
    return GenaiEngine(
        demo_model, {name: demo_model / "adapters" / f"{name}.onnx_adapter" for name in ADAPTERS}
    )


@pytest.fixture(scope="module")
def prompt_ids(engine) -> list[int]:
    return engine.encode(engine.chat_prompt([{"role": "user", "content": "Solve for x: 3x + 5 = 20"}]))


def generate(engine, prompt_ids, adapter, options=GREEDY, cancelled=None) -> tuple[str, object]:
    pieces = list(engine.generate(prompt_ids, adapter=adapter, options=options, cancelled=cancelled))
    return "".join(piece.text for piece in pieces), pieces[-1]


def test_chat_prompt_uses_model_template(engine):
    prompt = engine.chat_prompt(
        [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "Hi"}, {"type": "image_url", "image_url": {}}],
            },
        ]
    )

    assert prompt == "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n"


def test_greedy_generation_repeats(engine, prompt_ids):
    assert generate(engine, prompt_ids, "math") == generate(engine, prompt_ids, "math")


def test_each_adapter_changes_output(engine, prompt_ids):
    outputs = {adapter: generate(engine, prompt_ids, adapter)[0] for adapter in [None, *ADAPTERS]}

    assert len(set(outputs.values())) == len(outputs)


def test_last_piece_reports_usage(engine, prompt_ids):
    _, last = generate(engine, prompt_ids, "math", SamplingOptions(max_tokens=3, temperature=0))

    assert last.finish_reason == "length"
    assert last.completion_tokens == 3
    assert last.prompt_tokens == len(prompt_ids)


def test_stop_sequence_is_not_emitted(engine, prompt_ids):
    full, _ = generate(engine, prompt_ids, None)
    stop = full[4:7]

    cut, last = generate(
        engine, prompt_ids, None, SamplingOptions(max_tokens=12, temperature=0, stop=(stop,))
    )

    assert cut == full[: full.index(stop)]
    assert last.finish_reason == "stop"


def test_prompt_over_context_length_raises(engine):
    with pytest.raises(PromptTooLongError, match="context length"):
        generate(engine, [5] * engine.context_length, None)


def test_cancelled_generation_stops(engine, prompt_ids):
    cancelled = threading.Event()
    cancelled.set()

    pieces = list(engine.generate(prompt_ids, adapter="math", options=GREEDY, cancelled=cancelled))

    assert pieces == []


def test_mismatched_adapter_fails_at_load(demo_model, tmp_path):
    # An adapter exported for another model: one LoRA weight with the wrong input size. It
    # loads without error; only the dry run reveals the mismatch.
    adapter = ort.AdapterFormat()
    adapter.set_adapter_version(1)
    adapter.set_model_version(1)
    weight = np.ones((7, 4), dtype=np.float32)
    adapter.set_parameters(
        {"model.layers.0.attn.q_proj.lora_A.MatMul.weight": ort.OrtValue.ortvalue_from_numpy(weight)}
    )
    path = tmp_path / "other.onnx_adapter"
    adapter.export_adapter(str(path))

    with pytest.raises(ModelLoadError) as caught:
        GenaiEngine(demo_model, {"other": path})

    message = str(caught.value)
    assert "adapter 'other'" in message
    assert str(path) in message
    assert "does not fit the model" in message


def test_missing_adapter_file_names_path(demo_model, tmp_path):
    with pytest.raises(ModelLoadError, match="adapter file for 'gone' not found"):
        GenaiEngine(demo_model, {"gone": tmp_path / "gone.onnx_adapter"})


def test_missing_model_folder_names_path(tmp_path):
    with pytest.raises(ModelLoadError, match=f"no genai_config.json in {tmp_path}"):
        GenaiEngine(tmp_path, {})
