"""Tests of the committed demo model in data/demo_model.

The model, its int4 variant and its adapters are run with onnxruntime-genai and compared with the
logits that the PyTorch/PEFT models gave at build time (reference_logits.npz). The reference feeds
the prompt and then, one at a time, each model's own greedy tokens, so the prompt pass and the KV
cache path are both checked.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime_genai as og
import pytest

DEMO_MODEL_DIR = Path(__file__).resolve().parents[1] / "data" / "demo_model"
ADAPTER_NAMES = ("math", "code", "medical", "legal", "finance", "sql")
MODEL_NAMES = ("base", *ADAPTER_NAMES)  # "base" is the base model with no adapter active

# Measured: the fp32 model matches PyTorch within 1.7e-5 (onnxruntime-genai 0.18, x86-64).
FP32_TOLERANCE = 1e-4
# After the prompt, the adapters move the reference logits by 7.7 to 13.3 (max abs over the
# vocabulary), so a model that ignored its adapter would fail the fp32 check by far.
MIN_ADAPTER_EFFECT = 1.0
# Measured: the int4 model's logits are at most 5.04 from the fp32 reference (sql, last step) and its
# greedy tokens agree, with a top-two margin of at least 1.76. The error comes from 4-bit weights in
# a 64-wide model.
INT4_MAX_LOGIT_ERROR = 6.0
MAX_DEMO_MODEL_BYTES = 2_000_000


@dataclass
class LoadedModel:
    """An onnxruntime-genai model with every demo adapter loaded."""

    model: og.Model
    adapters: og.Adapters


def load_model(model_dir: Path) -> LoadedModel:
    model = og.Model(str(model_dir))
    adapters = og.Adapters(model)
    for name in ADAPTER_NAMES:
        adapters.load(str(DEMO_MODEL_DIR / "adapters" / f"{name}.onnx_adapter"), name)
    return LoadedModel(model, adapters)


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(DEMO_MODEL_DIR / "reference_logits.npz", allow_pickle=False) as arrays:
        return dict(arrays)


@pytest.fixture(scope="module")
def fp32_model() -> LoadedModel:
    return load_model(DEMO_MODEL_DIR)


@pytest.fixture(scope="module")
def int4_model() -> LoadedModel:
    return load_model(DEMO_MODEL_DIR / "int4")


def make_generator(loaded: LoadedModel, adapter: str, reference: dict[str, np.ndarray]) -> og.Generator:
    """Create a greedy generator for the reference prompt with the adapter active ("base": none)."""
    steps = reference["greedy_ids"].shape[1]
    params = og.GeneratorParams(loaded.model)
    params.set_search_options(do_sample=False, max_length=len(reference["prompt_ids"]) + steps)
    generator = og.Generator(loaded.model, params)
    if adapter != "base":
        generator.set_active_adapter(loaded.adapters, adapter)  # before the first tokens are appended
    return generator


def teacher_forced_logits(
    loaded: LoadedModel, adapter: str, reference: dict[str, np.ndarray], tokens_of: str | None = None
) -> np.ndarray:
    """Return the next-token logits after the prompt and after each reference greedy token.

    The greedy tokens are those of ``tokens_of`` (default: the adapter itself). Returns an array of
    shape (steps, vocab_size), aligned with ``reference["logits"][MODEL_NAMES.index(tokens_of)]``.
    """
    greedy_ids = reference["greedy_ids"][MODEL_NAMES.index(tokens_of or adapter)]
    generator = make_generator(loaded, adapter, reference)

    generator.append_tokens(reference["prompt_ids"])
    rows = [generator.get_logits()[0, -1].copy()]
    for token in greedy_ids[:-1]:
        generator.append_tokens(np.array([token], dtype=np.int32))
        rows.append(generator.get_logits()[0, -1].copy())

    return np.stack(rows)


def test_checksums_match_files():
    listed = {}
    for line in (DEMO_MODEL_DIR / "SHA256SUMS").read_text(encoding="utf-8").splitlines():
        digest, relative_path = line.split("  ", 1)
        listed[relative_path] = digest
    present = {
        path.relative_to(DEMO_MODEL_DIR).as_posix()
        for path in DEMO_MODEL_DIR.rglob("*")
        if path.is_file() and path.name != "SHA256SUMS"
    }

    assert set(listed) == present
    for relative_path, digest in listed.items():
        actual = hashlib.sha256((DEMO_MODEL_DIR / relative_path).read_bytes()).hexdigest()
        assert actual == digest, f"{relative_path} does not match SHA256SUMS"


def test_demo_model_size_under_limit():
    size = sum(path.stat().st_size for path in DEMO_MODEL_DIR.rglob("*") if path.is_file())
    assert size < MAX_DEMO_MODEL_BYTES


def test_reference_covers_base_and_every_adapter(reference):
    assert tuple(reference["adapter_names"].tolist()) == MODEL_NAMES
    assert reference["logits"].shape[:2] == reference["greedy_ids"].shape


@pytest.mark.parametrize("name", ADAPTER_NAMES)
def test_reference_adapter_differs_from_base(reference, name):
    # Only the first step has the same input for every model: the prompt.
    after_prompt = reference["logits"][:, 0]
    effect = np.abs(after_prompt[MODEL_NAMES.index(name)] - after_prompt[0]).max()

    assert effect > MIN_ADAPTER_EFFECT


def test_chat_template_renders_reference_prompt(fp32_model, reference):
    tokenizer = og.Tokenizer(fp32_model.model)
    user_text = reference["prompt"].item()
    messages = json.dumps([{"role": "user", "content": user_text}])

    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)

    assert prompt == f"<|user|>\n{user_text}<|end|>\n<|assistant|>\n"
    assert tokenizer.encode(prompt).tolist() == reference["prompt_ids"].tolist()


def test_chat_template_renders_system_turn(fp32_model):
    tokenizer = og.Tokenizer(fp32_model.model)
    messages = json.dumps([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])

    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)

    assert prompt == "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_fp32_logits_match_reference(fp32_model, reference, name):
    logits = teacher_forced_logits(fp32_model, name, reference)

    np.testing.assert_allclose(
        logits, reference["logits"][MODEL_NAMES.index(name)], rtol=0, atol=FP32_TOLERANCE
    )


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_fp32_greedy_generation_matches_reference(fp32_model, reference, name):
    generator = make_generator(fp32_model, name, reference)
    generator.append_tokens(reference["prompt_ids"])

    tokens = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))

    assert tokens == reference["greedy_ids"][MODEL_NAMES.index(name)].tolist()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_int4_logits_close_to_reference(int4_model, reference, name):
    index = MODEL_NAMES.index(name)
    logits = teacher_forced_logits(int4_model, name, reference)
    error = np.abs(logits - reference["logits"][index]).max(axis=1)

    assert error.max() < INT4_MAX_LOGIT_ERROR
    assert logits.argmax(axis=1).tolist() == reference["greedy_ids"][index].tolist()


@pytest.mark.parametrize("name", ADAPTER_NAMES)
def test_int4_adapter_effect_exceeds_int4_error(int4_model, reference, name):
    logits = teacher_forced_logits(int4_model, name, reference)
    base_logits = teacher_forced_logits(int4_model, "base", reference, tokens_of=name)

    error = np.abs(logits - reference["logits"][MODEL_NAMES.index(name)]).max(axis=1)
    effect = np.abs(logits - base_logits).max(axis=1)
    assert (error < effect).all(), f"int4 error {error}, adapter effect {effect}"
