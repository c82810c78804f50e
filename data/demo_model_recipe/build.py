"""Build the embedded demo model: a tiny Llama model with one LoRA adapter per domain.

Everything is made here from the text files in ``text/``, offline: a byte-level BPE tokenizer, a
Llama-architecture base model of about 140k parameters, and one PEFT LoRA adapter per domain. The
models are exported with the onnxruntime-genai model builder, the LoRA weights are turned into graph
inputs, and each adapter is written as an ``.onnx_adapter`` file. The demo model writes toy text: it
exists so that the embedded backend can run, and be tested, without downloading anything.

Run from the repository root (build-only dependencies: torch, transformers, peft, onnx, onnx-ir)::

    .venv/bin/python data/demo_model_recipe/build.py

The output folder is replaced. Builds with the same library versions are bit-identical because
training runs on one torch thread with fixed seeds and every file is written without timestamps.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import onnxruntime_genai as og
import torch
from onnx import numpy_helper
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

RECIPE_DIR = Path(__file__).resolve().parent
TEXT_DIR = RECIPE_DIR / "text"
DEFAULT_OUTPUT_DIR = RECIPE_DIR.parent / "demo_model"

DOMAINS = ("math", "code", "medical", "legal", "finance", "sql")
SEED = 0

# Chat format: "<|system|>\n{system}<|end|>\n<|user|>\n{user}<|end|>\n<|assistant|>\n{answer}<|end|>",
# with the system turn optional. There is no BOS token, and "<|end|>" is the EOS token.
SYSTEM_TOKEN, USER_TOKEN, ASSISTANT_TOKEN, END_TOKEN = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
SPECIAL_TOKENS = (SYSTEM_TOKEN, USER_TOKEN, ASSISTANT_TOKEN, END_TOKEN)
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

VOCAB_SIZE = 512
LLAMA_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "tie_word_embeddings": False,
}

# The MatMul input sizes (64 and 128) must be multiples of the int4 block size. With the builder's
# default block size of 32, three of the seven int4 greedy answers to the reference prompt (math,
# code, medical) went off track partway. With 16, all seven match PyTorch (measured with this recipe).
INT4_BLOCK_SIZE = 16

LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_RANK = 8
LORA_ALPHA = 16

BATCH_SIZE = 16
# Weight decay keeps the weights small and free of outliers, which int4 blocks need. Without it, the
# int4 base model's greedy answer went off track after one word with block size 32, and after four
# with block size 16 (measured with this recipe).
WEIGHT_DECAY = 0.1
BASE_TRAINING_STEPS = 1000
BASE_LEARNING_RATE = 1e-2
ADAPTER_TRAINING_STEPS = 200
ADAPTER_LEARNING_RATE = 5e-3

REFERENCE_PROMPT = "Can you help me with this problem?"
REFERENCE_STEPS = 4  # greedy steps whose logits go into reference_logits.npz
PREVIEW_MAX_NEW_TOKENS = 64

# Names the model builder gives the LoRA branch weights and MatMul nodes. The builder uses "attn"
# where PEFT and transformers use "self_attn".
ONNX_LORA_WEIGHT = re.compile(r"model\.layers\.(\d+)\.(attn|mlp)\.(\w+_proj)\.lora_([AB])\.MatMul\.weight")
PEFT_LORA_MODULE = re.compile(r".*model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+_proj)")
LORA_RANK_DIM = "lora_rank"


@dataclasses.dataclass(frozen=True)
class Exchange:
    """One chat exchange of the training text: an optional system turn, a user turn and the answer."""

    system: str | None
    user: str
    answer: str


# Reading and formatting the training text


def read_exchanges(path: Path) -> list[Exchange]:
    """Parse a training text file into exchanges.

    Blocks are separated by blank lines. Each block has an optional ``system:`` line, then a ``user:``
    and an ``assistant:`` line. Lines starting with ``#`` are comments.
    """
    exchanges = []
    text = "\n".join(
        line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("#")
    )

    for block in text.strip().split("\n\n"):
        turns = {}
        for line in block.strip().splitlines():
            role, separator, content = line.partition(": ")
            if not separator or role not in ("system", "user", "assistant") or role in turns:
                raise ValueError(
                    f"{path}: invalid line {line!r}; "
                    "expected at most one 'system: ', 'user: ' and 'assistant: ' line per block"
                )
            turns[role] = content
        if "user" not in turns or "assistant" not in turns:
            raise ValueError(f"{path}: block without a user or assistant line: {block!r}")
        exchanges.append(Exchange(turns.get("system"), turns["user"], turns["assistant"]))

    return exchanges


def format_prompt(user: str, system: str | None = None) -> str:
    """Render the chat format up to the start of the answer (what the chat template renders)."""
    system_turn = f"{SYSTEM_TOKEN}\n{system}{END_TOKEN}\n" if system is not None else ""
    return f"{system_turn}{USER_TOKEN}\n{user}{END_TOKEN}\n{ASSISTANT_TOKEN}\n"


# Tokenizer


def train_tokenizer(exchanges: list[Exchange]) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on all training text, with the chat tokens as special tokens.

    The special tokens get ids 0 to 3 in the order of ``SPECIAL_TOKENS``. No BOS token is defined,
    so nothing is prepended when text is encoded.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)

    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [
        part for exchange in exchanges for part in (exchange.system, exchange.user, exchange.answer) if part
    ]
    tokenizer.train_from_iterator(texts, trainer)

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=None,
        eos_token=END_TOKEN,
        pad_token=END_TOKEN,
        additional_special_tokens=[SYSTEM_TOKEN, USER_TOKEN, ASSISTANT_TOKEN],
        chat_template=CHAT_TEMPLATE,
        model_max_length=LLAMA_CONFIG["max_position_embeddings"],
    )


def encode_exchanges(
    tokenizer: PreTrainedTokenizerFast, exchanges: list[Exchange]
) -> list[tuple[list[int], list[int]]]:
    """Encode exchanges as (input ids, labels) with the prompt masked out of the labels.

    Only the answer and its closing ``<|end|>`` are trained on, so the model learns to answer and
    to stop, not to write user turns.
    """
    examples = []
    for exchange in exchanges:
        prompt_ids = tokenizer.encode(format_prompt(exchange.user, exchange.system))
        answer_ids = tokenizer.encode(exchange.answer + END_TOKEN)
        examples.append((prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids))
    return examples


# Training


def train(
    model: torch.nn.Module,
    examples: list[tuple[list[int], list[int]]],
    steps: int,
    learning_rate: float,
    pad_id: int,
    seed: int,
) -> float:
    """Train the model's trainable parameters on random batches of examples and return the last loss.

    Batches are drawn with a seeded generator, so the same seed gives the same batches.
    """
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / steps)
    generator = torch.Generator().manual_seed(seed)
    model.train()

    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        indices = torch.randint(len(examples), (BATCH_SIZE,), generator=generator).tolist()
        input_ids, labels, attention_mask = collate([examples[index] for index in indices], pad_id)

        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)

    model.eval()
    return loss.item()


def collate(
    batch: list[tuple[list[int], list[int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad a batch to its longest example, masking the padded positions out of attention and loss."""
    length = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), length), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), length), dtype=torch.long)

    for row, (ids, example_labels) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(example_labels)
        attention_mask[row, : len(ids)] = 1

    return input_ids, labels, attention_mask


def train_base_model(
    tokenizer: PreTrainedTokenizerFast, exchanges: list[Exchange]
) -> tuple[LlamaForCausalLM, float]:
    """Create the tiny Llama base model and train it on the exchanges."""
    torch.manual_seed(SEED)
    end_id = tokenizer.convert_tokens_to_ids(END_TOKEN)
    config = LlamaConfig(
        vocab_size=len(tokenizer), bos_token_id=None, eos_token_id=end_id, pad_token_id=end_id, **LLAMA_CONFIG
    )
    model = LlamaForCausalLM(config)

    loss = train(
        model, encode_exchanges(tokenizer, exchanges), BASE_TRAINING_STEPS, BASE_LEARNING_RATE, end_id, SEED
    )
    return model, loss


def train_adapter(
    base_model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    exchanges: list[Exchange],
    seed: int,
) -> tuple[PeftModel, float]:
    """Train a LoRA adapter over every linear layer of a copy of the base model."""
    torch.manual_seed(seed)  # LoRA A matrices are initialized randomly
    config = LoraConfig(
        r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=list(LORA_TARGET_MODULES)
    )
    peft_model = get_peft_model(copy.deepcopy(base_model), config)

    end_id = tokenizer.convert_tokens_to_ids(END_TOKEN)
    loss = train(
        peft_model,
        encode_exchanges(tokenizer, exchanges),
        ADAPTER_TRAINING_STEPS,
        ADAPTER_LEARNING_RATE,
        end_id,
        seed,
    )
    return peft_model, loss


def make_structure_adapter(base_model: LlamaForCausalLM) -> PeftModel:
    """Return a rank-1 LoRA adapter over every linear layer, for the model builder.

    Only the branches it adds to the exported graph matter; its weights are replaced by graph inputs.
    """
    torch.manual_seed(SEED)
    config = LoraConfig(r=1, lora_alpha=1, lora_dropout=0.0, target_modules=list(LORA_TARGET_MODULES))
    return get_peft_model(copy.deepcopy(base_model), config)


# Reference outputs from PyTorch


@torch.no_grad()
def greedy_decode(
    model: torch.nn.Module, prompt_ids: list[int], max_new_tokens: int, end_id: int
) -> tuple[list[int], torch.Tensor]:
    """Decode greedily without a KV cache and return the new ids and the next-token logits of each step.

    Stops after ``<|end|>`` or ``max_new_tokens``. Row ``s`` of the logits is what the model predicts
    after the prompt and the first ``s`` new ids.
    """
    ids = list(prompt_ids)
    new_ids, step_logits = [], []

    for _ in range(max_new_tokens):
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        next_id = int(logits.argmax())
        step_logits.append(logits)
        new_ids.append(next_id)
        ids.append(next_id)
        if next_id == end_id:
            break

    return new_ids, torch.stack(step_logits)


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays as an uncompressed ``.npz`` with fixed zip timestamps.

    ``np.savez`` stamps each entry with the current time, which would change the file on every build.
    """
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(entry, "w", force_zip64=True) as file:
                np.lib.format.write_array(file, np.asarray(array), allow_pickle=False)


# Export


def run_model_builder(
    hf_dir: Path,
    adapter_dir: Path,
    output_dir: Path,
    precision: str,
    cache_dir: Path,
    extra_options: list[str],
) -> None:
    """Export the model with the onnxruntime-genai model builder, which bakes the LoRA branches in."""
    command = [
        sys.executable, "-m", "onnxruntime_genai.models.builder",
        "-i", str(hf_dir), "-o", str(output_dir), "-p", precision, "-e", "cpu", "-c", str(cache_dir),
        "--extra_options", f"adapter_path={adapter_dir}", *extra_options,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        output = f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        raise RuntimeError(f"model builder failed with exit code {result.returncode}:\n{output}")


def lora_matmul_node_names(num_layers: int) -> list[str]:
    """Return the names of the LoRA branch MatMul nodes that the model builder creates."""
    names = []
    for layer in range(num_layers):
        for module in LORA_TARGET_MODULES:
            block = "mlp" if module in ("gate_proj", "up_proj", "down_proj") else "attn"
            names.extend(f"/model/layers.{layer}/{block}/{module}/lora_{side}/MatMul" for side in "AB")
    return names


def extract_lora_weights_as_inputs(source: Path, destination: Path) -> int:
    """Turn every LoRA branch weight into a graph input with an empty default and return how many.

    An input ``...lora_A.MatMul.weight`` gets shape ``[in, lora_rank]`` and ``...lora_B.MatMul.weight``
    gets ``[lora_rank, out]``, with a same-named initializer of rank 0 (``[in, 0]`` or ``[0, out]``) as
    its default. With the default the branch adds zeros, which is the base model; an adapter feeds the
    inputs. This is what Olive's ExtractAdapters pass does. The model is saved as one file, with no
    external data, because it is small.
    """
    model = onnx.load(str(source))
    graph = model.graph
    extracted = 0

    for index, initializer in enumerate(graph.initializer):
        match = ONNX_LORA_WEIGHT.fullmatch(initializer.name)
        if match is None:
            continue
        rows, columns = initializer.dims  # [in, 1] for A and [1, out] for B in the rank-1 export
        if match.group(4) == "A":
            input_shape, default_shape = [rows, LORA_RANK_DIM], (rows, 0)
        else:
            input_shape, default_shape = [LORA_RANK_DIM, columns], (0, columns)

        graph.input.append(
            onnx.helper.make_tensor_value_info(initializer.name, onnx.TensorProto.FLOAT, input_shape)
        )
        graph.initializer[index].CopyFrom(
            numpy_helper.from_array(np.zeros(default_shape, dtype=np.float32), initializer.name)
        )
        extracted += 1

    onnx.save_model(model, str(destination))
    return extracted


def write_onnx_adapter(peft_model: PeftModel, path: Path) -> int:
    """Write a PEFT LoRA adapter as an ``.onnx_adapter`` file and return its number of parameters.

    The graph computes ``x @ lora_A @ lora_B`` with inputs of shape ``[in, r]`` and ``[r, out]``, so
    PEFT's A (``[r, in]``) is stored transposed, and B (``[out, r]``) transposed and multiplied by the
    PEFT scaling, which is ``lora_alpha / r``, or ``lora_alpha / sqrt(r)`` with rsLoRA.
    """
    parameters = {}
    for name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer) or "default" not in module.lora_A:
            continue
        layer, block, projection = PEFT_LORA_MODULE.fullmatch(name).groups()
        onnx_prefix = f"model.layers.{layer}.{'attn' if block == 'self_attn' else 'mlp'}.{projection}"

        lora_a = module.lora_A["default"].weight.detach().numpy().T
        lora_b = (module.lora_B["default"].weight.detach() * module.scaling["default"]).numpy().T
        parameters[f"{onnx_prefix}.lora_A.MatMul.weight"] = np.ascontiguousarray(lora_a, dtype=np.float32)
        parameters[f"{onnx_prefix}.lora_B.MatMul.weight"] = np.ascontiguousarray(lora_b, dtype=np.float32)

    adapter = ort.AdapterFormat()
    adapter.set_adapter_version(1)
    adapter.set_model_version(1)
    adapter.set_parameters(
        {name: ort.OrtValue.ortvalue_from_numpy(array) for name, array in sorted(parameters.items())}
    )
    adapter.export_adapter(str(path))
    return sum(array.size for array in parameters.values())


def tidy_tokenizer_files(model_dir: Path) -> None:
    """Put the chat template into tokenizer_config.json and drop the keys that only record where it was saved.

    transformers 5 writes the template to chat_template.jinja; both transformers and onnxruntime-genai
    0.18 read it from tokenizer_config.json as well, and one file is easier to check.
    """
    config_path = model_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    for key in ("is_local", "local_files_only"):
        config.pop(key, None)
    config["chat_template"] = CHAT_TEMPLATE
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    (model_dir / "chat_template.jinja").unlink(missing_ok=True)


def export_model(
    hf_dir: Path,
    structure_adapter_dir: Path,
    output_dir: Path,
    precision: str,
    work_dir: Path,
    num_layers: int,
) -> None:
    """Export one precision of the base model into ``output_dir`` with LoRA weights as graph inputs."""
    builder_dir = work_dir / f"builder_{precision}"
    extra_options = []
    if precision == "int4":
        # Without this the builder quantizes the LoRA MatMuls too, and fp32 adapters could not be fed.
        extra_options.append("nodes_to_exclude=" + ",".join(lora_matmul_node_names(num_layers)))
        extra_options.append(f"block_size={INT4_BLOCK_SIZE}")
    run_model_builder(
        hf_dir, structure_adapter_dir, builder_dir, precision, work_dir / "builder_cache", extra_options
    )

    output_dir.mkdir(parents=True)
    extracted = extract_lora_weights_as_inputs(builder_dir / "model.onnx", output_dir / "model.onnx")
    expected = 2 * len(LORA_TARGET_MODULES) * num_layers
    if extracted != expected:
        raise RuntimeError(f"{precision} export: found {extracted} LoRA branch weights, expected {expected}")

    for name in ("genai_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (builder_dir / name).exists():
            shutil.copyfile(builder_dir / name, output_dir / name)
    tidy_tokenizer_files(output_dir)


# Checks of the exported model


def measure_onnx_logit_error(
    model_dir: Path, adapter_dir: Path, reference: dict[str, np.ndarray]
) -> dict[str, float]:
    """Feed the reference ids to the exported model and return the max absolute logit error per adapter.

    The ids are fed one greedy step at a time, so the KV cache path is measured as well as the prompt.
    """
    model = og.Model(str(model_dir))
    adapters = og.Adapters(model)
    for name in DOMAINS:
        adapters.load(str(adapter_dir / f"{name}.onnx_adapter"), name)

    errors = {}
    for index, name in enumerate(reference["adapter_names"]):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(reference["prompt_ids"]) + REFERENCE_STEPS)
        generator = og.Generator(model, params)
        if name != "base":
            generator.set_active_adapter(adapters, str(name))

        step_errors = []
        generator.append_tokens(reference["prompt_ids"])
        for step in range(REFERENCE_STEPS):
            if step > 0:
                generator.append_tokens(reference["greedy_ids"][index, step - 1 : step])
            logits = generator.get_logits()[0, -1]
            step_errors.append(float(np.abs(logits - reference["logits"][index, step]).max()))
        errors[str(name)] = max(step_errors)

    return errors


def write_checksums(output_dir: Path) -> None:
    """Write SHA256SUMS (``sha256sum`` format, paths relative to the folder) for every file in it."""
    lines = []
    for path in sorted(output_dir.rglob("*")):
        if path.is_file() and path.name != "SHA256SUMS":
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            lines.append(f"{digest}  {path.relative_to(output_dir).as_posix()}\n")
    (output_dir / "SHA256SUMS").write_text("".join(lines), encoding="utf-8")


# The build


@contextmanager
def timed(step: str, timings: dict[str, float]) -> Iterator[None]:
    """Measure the wall time of a build step in seconds."""
    start = time.perf_counter()
    yield
    timings[step] = time.perf_counter() - start
    print(f"{step}: {timings[step]:.1f} s", flush=True)


def read_training_text() -> tuple[list[Exchange], dict[str, list[Exchange]]]:
    """Read the general chat text and the text of each domain."""
    general = read_exchanges(TEXT_DIR / "general.txt")
    domain_exchanges = {domain: read_exchanges(TEXT_DIR / f"{domain}.txt") for domain in DOMAINS}
    return general, domain_exchanges


def select_base_exchanges(
    general: list[Exchange], domain_exchanges: dict[str, list[Exchange]]
) -> list[Exchange]:
    """Select the base model's training text: the general text and most of the domain text.

    The base model learns the domain text too, as a general model would, except the domain answers to
    prompts that the general text also answers: those prompts show what each adapter changes.
    """
    general_prompts = {exchange.user for exchange in general}
    domain_only = [
        exchange
        for exchanges in domain_exchanges.values()
        for exchange in exchanges
        if exchange.user not in general_prompts
    ]
    return general + domain_only


def compute_reference(
    tokenizer: PreTrainedTokenizerFast, models_by_name: dict[str, torch.nn.Module]
) -> dict[str, np.ndarray]:
    """Decode the reference prompt greedily with each model, print the answers and return the references.

    ``greedy_ids[a, s]`` is model ``a``'s greedy token at step ``s``, and ``logits[a, s]`` its next-token
    logits after the prompt and ``greedy_ids[a, :s]``.
    """
    end_id = tokenizer.convert_tokens_to_ids(END_TOKEN)
    prompt_ids = tokenizer.encode(format_prompt(REFERENCE_PROMPT))
    greedy_ids, logits = [], []

    print(f"greedy answers to {REFERENCE_PROMPT!r}:")
    for name, model in models_by_name.items():
        new_ids, step_logits = greedy_decode(model, prompt_ids, PREVIEW_MAX_NEW_TOKENS, end_id)
        if len(new_ids) < REFERENCE_STEPS:
            raise RuntimeError(
                f"{name}: the greedy answer has {len(new_ids)} tokens, "
                f"fewer than the {REFERENCE_STEPS} reference steps; lower REFERENCE_STEPS"
            )
        greedy_ids.append(new_ids[:REFERENCE_STEPS])
        logits.append(step_logits[:REFERENCE_STEPS].numpy())
        print(f"  {name:>8}: {tokenizer.decode(new_ids, skip_special_tokens=True)!r}")

    return {
        "prompt": np.array(REFERENCE_PROMPT),
        "prompt_ids": np.array(prompt_ids, dtype=np.int32),
        "adapter_names": np.array(list(models_by_name)),  # "base" means no adapter
        "greedy_ids": np.array(greedy_ids, dtype=np.int32),
        "logits": np.stack(logits).astype(np.float32),
    }


def export_all(
    base_model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    peft_models: dict[str, PeftModel],
    output_dir: Path,
) -> None:
    """Export the fp32 and int4 models and write one ``.onnx_adapter`` file per domain.

    The model builder's input folders and its cache live in a temporary folder that is deleted.
    """
    num_layers = LLAMA_CONFIG["num_hidden_layers"]

    with tempfile.TemporaryDirectory(prefix="demo_model_build_") as work:
        work_dir = Path(work)
        hf_dir = work_dir / "hf"
        base_model.save_pretrained(hf_dir)
        tokenizer.save_pretrained(hf_dir)
        structure_adapter_dir = work_dir / "structure_adapter"
        make_structure_adapter(base_model).save_pretrained(structure_adapter_dir)

        export_model(hf_dir, structure_adapter_dir, output_dir, "fp32", work_dir, num_layers)
        export_model(hf_dir, structure_adapter_dir, output_dir / "int4", "int4", work_dir, num_layers)

    adapter_dir = output_dir / "adapters"
    adapter_dir.mkdir()
    for domain, peft_model in peft_models.items():
        parameter_count = write_onnx_adapter(peft_model, adapter_dir / f"{domain}.onnx_adapter")
    print(f"  adapters: {parameter_count} parameters each")


def build(output_dir: Path) -> None:
    """Build the demo model into ``output_dir``, replacing what is there."""
    # One thread: training on two threads here was erratic (2.5 s once took 32 s), and the results
    # depend on the thread count.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    timings: dict[str, float] = {}
    general, domain_exchanges = read_training_text()

    with timed("tokenizer", timings):
        all_exchanges = general + [
            exchange for exchanges in domain_exchanges.values() for exchange in exchanges
        ]
        tokenizer = train_tokenizer(all_exchanges)

    with timed("base model training", timings):
        base_model, loss = train_base_model(tokenizer, select_base_exchanges(general, domain_exchanges))
    print(f"  base model: {base_model.num_parameters()} parameters, last loss {loss:.3f}")

    peft_models = {}
    with timed("adapter training", timings):
        for index, domain in enumerate(DOMAINS):
            peft_models[domain], loss = train_adapter(
                base_model, tokenizer, domain_exchanges[domain], SEED + 1 + index
            )
            print(f"  {domain}: last loss {loss:.3f}")

    reference = compute_reference(tokenizer, {"base": base_model, **peft_models})

    if output_dir.exists():
        shutil.rmtree(output_dir)
    with timed("export", timings):
        export_all(base_model, tokenizer, peft_models, output_dir)
        save_npz(output_dir / "reference_logits.npz", reference)

    with timed("check", timings):
        for label, model_dir in (("fp32", output_dir), ("int4", output_dir / "int4")):
            errors = measure_onnx_logit_error(model_dir, output_dir / "adapters", reference)
            print(
                f"  {label} max abs logit error vs PyTorch: "
                + ", ".join(f"{name} {error:.2e}" for name, error in errors.items())
            )
        write_checksums(output_dir)

    size = sum(path.stat().st_size for path in output_dir.rglob("*") if path.is_file())
    print(f"wrote {output_dir} ({size} bytes) in {sum(timings.values()):.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT_DIR,
        help=f"folder to write the demo model to; replaced if it exists (default: {DEFAULT_OUTPUT_DIR})",
    )
    build(parser.parse_args().output)


if __name__ == "__main__":
    main()
