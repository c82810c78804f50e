"""Measure the embedded backend's costs: adapter loading, adapter switching and generation speed.

Each exported onnxruntime-genai model (by default the bundled demo model in fp32 and its int4
variant, both with the bundled LoRA adapters) is loaded into ``GenaiEngine``, the engine the
embedded backend serves from, and measured at one fixed prompt, greedy:

- startup: ``GenaiEngine`` with no adapter against every adapter, so the difference is what
  loading the adapters costs, one-token dry runs included;
- first load of an adapter file: ``og.Adapters.load`` alone, on a fresh ``og.Adapters``;
- adapter switch: one-token requests (generator, adapter, prefill and one token) with the base
  model every time, one adapter every time, and two adapters in turn, and the bare
  ``og.Generator.set_active_adapter`` call for the same adapter as before against another one;
- generation: time to the first piece of text, and tokens per second over ``--max-tokens``
  tokens, for the base model and for every adapter;
- requests through ``EmbeddedBackend.completions`` (its worker thread and response body
  included) against the same generation called on the engine directly.

Every statistic is computed per round and the median over rounds is reported. The base model is
the baseline: adapter rows report their ratio to its figure from the same run.

Usage::

    .venv/bin/python benchmarks/embedded_backend.py
    .venv/bin/python benchmarks/embedded_backend.py --rounds 7 --max-tokens 16
    .venv/bin/python benchmarks/embedded_backend.py --models /path/to/model --adapters-dir /path/to/adapters
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402
    add_out_argument,
    check_at_least,
    describe_load_average,
    machine_info,
    median_over_rounds,
    split_list,
    write_and_report,
)

DEMO_MODEL = REPO / "data" / "demo_model"
DEFAULT_MODELS = (DEMO_MODEL, DEMO_MODEL / "int4")
DEFAULT_OUT = REPO / "benchmarks" / "results" / "embedded_backend.json"
# The demo model ends most completions with its end token after 4 to 94 tokens. With this prompt,
# every demo variant (base model and each adapter, fp32 and int4) writes at least 24 tokens,
# the end token included, so runs of up to 24 tokens compare equal token counts.
DEFAULT_PROMPT = "Tell me a long story about a cat."
DEFAULT_MAX_TOKENS = 24
BASE = "base"
"""Row name of the base model (no adapter) in the results."""
LIBRARIES = ("onnxruntime-genai", "onnxruntime", "numpy")
"""Distributions whose versions are stored with the results."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        default=",".join(str(path) for path in DEFAULT_MODELS),
        help="comma-separated exported model folders, each with genai_config.json "
        "(default: the bundled demo model, fp32 and int4)",
    )
    parser.add_argument(
        "--adapters-dir",
        type=Path,
        default=DEMO_MODEL / "adapters",
        help="folder of .onnx_adapter files loaded into every model (default: the demo model's adapters)",
    )
    parser.add_argument(
        "--prompt",
        default=DEFAULT_PROMPT,
        help=f"user message, rendered with the model's chat template (default: {DEFAULT_PROMPT!r})",
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=DEFAULT_MAX_TOKENS,
        help=f"tokens generated per request, greedy (default: {DEFAULT_MAX_TOKENS})",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=30,
        help="requests per model or adapter in each round of the generation measurements (default: 30)",
    )
    parser.add_argument(
        "--switch-requests",
        type=int,
        default=200,
        help="one-token requests per sequence in each round of the switch measurement (default: 200)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="rounds of every measurement; medians over rounds are reported (default: 5)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="ONNX Runtime intra-op threads, set in a temporary copy of each model's genai_config.json "
        "(default: 1; two threads on a 2-vCPU VM gave erratic timings)",
    )
    add_out_argument(parser, DEFAULT_OUT)
    args = parser.parse_args(argv)

    args.models = [Path(name) for name in split_list(args.models)]
    if not args.models:
        parser.error("--models is empty: give at least one exported model folder")
    check_at_least(parser, args, ("max_tokens", "requests", "switch_requests", "rounds", "threads"))
    return args


def adapter_files(folder: Path) -> dict[str, Path]:
    """Map each adapter name to its ``.onnx_adapter`` file in ``folder``."""
    files = {path.stem: path for path in sorted(folder.glob("*.onnx_adapter"))}
    if len(files) < 2:
        raise SystemExit(
            f"found {len(files)} .onnx_adapter files in {folder}, the switch measurement needs 2: "
            "pass a folder of exported adapters with --adapters-dir"
        )
    return files


def thread_limited_view(model_dir: Path, destination: Path, threads: int) -> Path:
    """Make ``destination`` a view of an exported model whose session runs ``threads`` threads.

    Every file is linked, not copied, so that a large model costs nothing here. Only
    ``genai_config.json`` is rewritten.
    """
    config_file = model_dir / "genai_config.json"
    if not config_file.is_file():
        raise SystemExit(
            f"no genai_config.json in {model_dir}: pass folders exported by the onnxruntime-genai "
            "model builder with --models"
        )
    destination.mkdir()
    for path in model_dir.iterdir():
        if path.name != config_file.name:
            (destination / path.name).symlink_to(path.resolve())
    config = json.loads(config_file.read_text(encoding="utf-8"))
    session = config["model"]["decoder"].setdefault("session_options", {})
    session.update(intra_op_num_threads=threads, inter_op_num_threads=1)
    (destination / "genai_config.json").write_text(json.dumps(config, indent=4), encoding="utf-8")
    return destination


def elapsed_ms(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def measure_startup(model_dir: Path, files: dict[str, Path], rounds: int, loads: int = 5) -> dict:
    """Time loading the engine without adapters and with every adapter, ``loads`` times each per round."""
    from router.genai_engine import GenaiEngine

    # The first load in a process also initializes ONNX Runtime, so it is left out.
    GenaiEngine(model_dir, files)
    per_round = []
    for _ in range(rounds):
        no_adapter, all_adapters = [], []
        for _ in range(loads):
            no_adapter.append(elapsed_ms(lambda: GenaiEngine(model_dir, {})))
            all_adapters.append(elapsed_ms(lambda: GenaiEngine(model_dir, files)))
        no_adapter_ms = statistics.median(no_adapter)
        all_adapters_ms = statistics.median(all_adapters)
        per_round.append(
            {
                "engine_no_adapter_ms": no_adapter_ms,
                "engine_all_adapters_ms": all_adapters_ms,
                # Load and one-token dry run, per adapter. A difference of two medians, so noisy.
                "per_adapter_ms": (all_adapters_ms - no_adapter_ms) / len(files),
            }
        )
    return {**median_over_rounds(per_round), "adapters": len(files), "rounds": per_round}


def measure_adapter_load(model_dir: Path, files: dict[str, Path], rounds: int) -> dict:
    """Time ``og.Adapters.load`` of each adapter file into a fresh ``og.Adapters``."""
    import onnxruntime_genai as og

    model = og.Model(str(model_dir))
    per_round = []
    for _ in range(rounds):
        adapters = og.Adapters(model)
        timings = []
        for name, path in files.items():
            started = time.perf_counter()
            adapters.load(str(path), name)
            timings.append((time.perf_counter() - started) * 1000)
        per_round.append({"first_load_ms": statistics.median(timings), "max_load_ms": max(timings)})
        del adapters
    return {**median_over_rounds(per_round), "rounds": per_round}


def measure_switch(engine, model_dir: Path, files: dict[str, Path], prompt_ids: list[int], args) -> dict:
    """Time one-token requests with no switch and with a switch before every request.

    The engine makes a new generator per request, so a switch is a different adapter on the new
    generator. The bare ``set_active_adapter`` call is also timed on an og model of its own.
    """
    from router.genai_engine import SamplingOptions

    first, second = list(files)[:2]
    one_token = SamplingOptions(max_tokens=1, temperature=0)
    sequences = {
        BASE: [None] * args.switch_requests,
        "same adapter": [first] * args.switch_requests,
        "alternating adapters": [(first, second)[i % 2] for i in range(args.switch_requests)],
    }

    def request(adapter: str | None) -> None:
        for _ in engine.generate(prompt_ids, adapter=adapter, options=one_token):
            pass

    set_calls = _set_active_adapter_calls(model_dir, files, first, second, args.switch_requests)
    per_round = []
    for _ in range(args.rounds):
        stats = {}
        for name, sequence in sequences.items():
            timings = [elapsed_ms(lambda adapter=adapter: request(adapter)) for adapter in sequence]
            stats[f"{name}_ms"] = statistics.median(timings)
        stats.update(next(set_calls))
        per_round.append(stats)

    result = median_over_rounds(per_round)
    result["switch_cost_ms"] = result["alternating adapters_ms"] - result["same adapter_ms"]
    result["alternating_vs_same"] = result["alternating adapters_ms"] / result["same adapter_ms"]
    result["same_adapter_vs_base"] = result["same adapter_ms"] / result[f"{BASE}_ms"]
    return {**result, "adapters": [first, second], "rounds": per_round}


def _set_active_adapter_calls(model_dir: Path, files: dict[str, Path], first: str, second: str, calls: int):
    """Yield, once per round, the median time of ``set_active_adapter`` for the same and another adapter."""
    import numpy as np
    import onnxruntime_genai as og

    model = og.Model(str(model_dir))
    adapters = og.Adapters(model)
    for name in (first, second):
        adapters.load(str(files[name]), name)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=8, do_sample=False)
    token = np.asarray([1], dtype=np.int32)

    def timed_call(adapter: str) -> float:
        generator = og.Generator(model, params)
        timing = elapsed_ms(lambda: generator.set_active_adapter(adapters, adapter))
        # One decoding step uses the adapter's weights, as a request would.
        generator.append_tokens(token)
        generator.generate_next_token()
        return timing

    while True:
        timed_call(first)
        same = [timed_call(first) for _ in range(calls)]
        other = [timed_call((second, first)[i % 2]) for i in range(calls)]
        yield {
            "set_active_adapter_same_us": 1000 * statistics.median(same),
            "set_active_adapter_other_us": 1000 * statistics.median(other),
        }


def generation_stats(engine, prompt_ids: list[int], adapter: str | None, options, requests: int) -> dict:
    """Generate ``requests`` completions; return the median time to first text, rate and token count."""
    first_text_ms, total_ms, tokens, finish_reasons = [], [], [], set()
    for _ in range(requests):
        started = time.perf_counter()
        first = None
        for piece in engine.generate(prompt_ids, adapter=adapter, options=options):
            if first is None and piece.text:
                first = time.perf_counter()
            last = piece
        ended = time.perf_counter()
        first_text_ms.append(((first or ended) - started) * 1000)
        total_ms.append((ended - started) * 1000)
        tokens.append(last.completion_tokens)
        finish_reasons.add(last.finish_reason)

    total = statistics.median(total_ms)
    first_text = statistics.median(first_text_ms)
    completion_tokens = statistics.median(tokens)
    return {
        "first_text_ms": first_text,
        "total_ms": total,
        "completion_tokens": completion_tokens,
        # Whole request: prefill, every decoding step and detokenization.
        "tokens_per_second": completion_tokens / total * 1000,
        # After the first piece of text: the decoding steps alone.
        "decode_tokens_per_second": (completion_tokens - 1) / (total - first_text) * 1000
        if total > first_text
        else None,
        "finish_reasons": sorted(finish_reasons),
    }


def measure_generation(engine, prompt_ids: list[int], args) -> dict:
    """Measure generation with the base model and with each adapter, interleaved per round."""
    from router.genai_engine import SamplingOptions

    options = SamplingOptions(max_tokens=args.max_tokens, temperature=0)
    variants: list[str | None] = [None, *engine.adapter_names]
    for adapter in variants:
        generation_stats(engine, prompt_ids, adapter, options, 2)

    per_round: dict[str, list[dict]] = {adapter or BASE: [] for adapter in variants}
    for _ in range(args.rounds):
        for adapter in variants:
            per_round[adapter or BASE].append(
                generation_stats(engine, prompt_ids, adapter, options, args.requests)
            )

    results = {}
    for name, rounds in per_round.items():
        results[name] = {
            **median_over_rounds(rounds),
            "finish_reasons": sorted({reason for stats in rounds for reason in stats["finish_reasons"]}),
            "rounds": rounds,
        }
    base = results[BASE]
    for stats in results.values():
        stats["tokens_per_second_ratio"] = stats["tokens_per_second"] / base["tokens_per_second"]
        stats["first_text_ratio"] = stats["first_text_ms"] / base["first_text_ms"]
    return results


def measure_backend_requests(engine, prompt_ids: list[int], adapter: str, args) -> dict:
    """Time non-streamed completions through ``EmbeddedBackend`` against ``engine.generate`` directly."""
    from router.backends.base import BackendCall
    from router.backends.embedded import EmbeddedBackend
    from router.genai_engine import SamplingOptions
    from router.protocol import CompletionRequest

    options = SamplingOptions(max_tokens=args.max_tokens, temperature=0)
    body = {"model": adapter, "prompt": prompt_ids, "max_tokens": args.max_tokens, "temperature": 0}
    call = BackendCall(
        params=CompletionRequest.model_validate(body),
        body=body,
        model=adapter,
        adapter=adapter,
        request_id="benchmark",
    )

    def direct() -> None:
        for _ in engine.generate(prompt_ids, adapter=adapter, options=options):
            pass

    async def run_rounds() -> list[dict]:
        backend = EmbeddedBackend(
            engine, max_tokens=args.max_tokens, max_tokens_limit=args.max_tokens, workers=1
        )
        await backend.start()
        try:
            await backend.completions(call)
            per_round = []
            for _ in range(args.rounds):
                through_backend = []
                for _ in range(args.requests):
                    started = time.perf_counter()
                    await backend.completions(call)
                    through_backend.append((time.perf_counter() - started) * 1000)
                direct_ms = [elapsed_ms(direct) for _ in range(args.requests)]
                per_round.append(
                    {
                        "backend_ms": statistics.median(through_backend),
                        "engine_ms": statistics.median(direct_ms),
                    }
                )
            return per_round
        finally:
            await backend.close()

    per_round = asyncio.run(run_rounds())
    result = median_over_rounds(per_round)
    result["added_ms"] = result["backend_ms"] - result["engine_ms"]
    result["backend_vs_engine"] = result["backend_ms"] / result["engine_ms"]
    return {**result, "adapter": adapter, "rounds": per_round}


def measure_model(model_dir: Path, files: dict[str, Path], args) -> dict:
    """Run every measurement on one exported model."""
    from router.genai_engine import GenaiEngine

    with tempfile.TemporaryDirectory(prefix="embedded-benchmark-") as folder:
        local_model = thread_limited_view(model_dir, Path(folder) / "model", args.threads)
        startup = measure_startup(local_model, files, args.rounds)
        adapter_load = measure_adapter_load(local_model, files, args.rounds)

        engine = GenaiEngine(local_model, files)
        prompt_ids = engine.encode(engine.chat_prompt([{"role": "user", "content": args.prompt}]))
        return {
            "model": str(model_dir),
            "prompt_tokens": len(prompt_ids),
            "startup": startup,
            "adapter_load": adapter_load,
            "switch": measure_switch(engine, local_model, files, prompt_ids, args),
            "generation": measure_generation(engine, prompt_ids, args),
            "backend_requests": measure_backend_requests(engine, prompt_ids, engine.adapter_names[0], args),
        }


def model_file_bytes(model_dir: Path) -> int:
    """Return the size of the model's ONNX files (graph and external weights), in bytes."""
    return sum(path.stat().st_size for path in model_dir.iterdir() if ".onnx" in path.name)


def print_report(result: dict) -> None:
    settings, host = result["settings"], result["machine"]
    print(
        f"prompt {settings['prompt']!r}, {settings['max_tokens']} tokens greedy, "
        f"{settings['rounds']} rounds, {host['onnxruntime_threads']} ONNX Runtime thread(s), "
        f"{host['cpus']} CPUs, {describe_load_average(host['load_average_1m'], host['load_average_1m_end'])}"
    )
    for name, model in result["models"].items():
        print()
        print(
            f"{name} ({model['model']}, {model['model_file_bytes']:,} bytes of ONNX, "
            f"{model['prompt_tokens']} prompt tokens)"
        )
        print_loading(model)
        print_generation(model["generation"])
        backend = model["backend_requests"]
        print(
            f"  {backend['adapter']} request through EmbeddedBackend.completions "
            f"{backend['backend_ms']:.3f} ms, engine.generate {backend['engine_ms']:.3f} ms "
            f"(added {backend['added_ms']:+.3f} ms, ratio {backend['backend_vs_engine']:.2f})"
        )
    print("(ratios are against the base model of the same model folder, measured in the same run)")


def print_loading(model: dict) -> None:
    startup, load, switch = model["startup"], model["adapter_load"], model["switch"]
    print(
        f"  startup: engine {startup['engine_no_adapter_ms']:.2f} ms with no adapter, "
        f"{startup['engine_all_adapters_ms']:.2f} ms with {startup['adapters']} adapters "
        f"({startup['per_adapter_ms']:.2f} ms per adapter, load and dry run)"
    )
    print(f"  first load of an adapter file (og.Adapters.load): {load['first_load_ms']:.3f} ms")
    first, second = switch["adapters"]
    print(
        f"  one-token request: base {switch[f'{BASE}_ms']:.3f} ms, {first} every time "
        f"{switch['same adapter_ms']:.3f} ms, {first}/{second} in turn "
        f"{switch['alternating adapters_ms']:.3f} ms (switch {1000 * switch['switch_cost_ms']:+.1f} us, "
        f"ratio {switch['alternating_vs_same']:.3f})"
    )
    print(
        f"  set_active_adapter call: same adapter {switch['set_active_adapter_same_us']:.2f} us, "
        f"another adapter {switch['set_active_adapter_other_us']:.2f} us"
    )


def print_generation(generation: dict) -> None:
    print(
        f"  {'':<10}{'first text ms':>14}{'vs base':>9}{'total ms':>10}{'tokens':>8}"
        f"{'tokens/s':>10}{'vs base':>9}{'decode tok/s':>14}  finish"
    )
    for variant, stats in generation.items():
        decode = stats["decode_tokens_per_second"]
        print(
            f"  {variant:<10}{stats['first_text_ms']:>14.3f}{stats['first_text_ratio']:>9.2f}"
            f"{stats['total_ms']:>10.3f}{stats['completion_tokens']:>8.0f}{stats['tokens_per_second']:>10.0f}"
            f"{stats['tokens_per_second_ratio']:>9.2f}{decode or float('nan'):>14.0f}  "
            f"{','.join(stats['finish_reasons'])}"
        )
    if len({stats["completion_tokens"] for stats in generation.values()}) > 1:
        print("  NOTE: the rows generated different numbers of tokens, so their rates compare less well")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    files = adapter_files(args.adapters_dir)

    result: dict[str, Any] = {
        "settings": {
            "prompt": args.prompt,
            "max_tokens": args.max_tokens,
            "requests": args.requests,
            "switch_requests": args.switch_requests,
            "rounds": args.rounds,
            "adapters_dir": str(args.adapters_dir),
        },
        "machine": machine_info(LIBRARIES, onnxruntime_threads=args.threads),
        "models": {},
    }
    for position, model_dir in enumerate(args.models):
        name = "fp32" if model_dir.resolve() == DEMO_MODEL else model_dir.name
        if name in result["models"]:
            name = f"{name}-{position}"
        measured = measure_model(model_dir, files, args)
        result["models"][name] = {"model_file_bytes": model_file_bytes(model_dir), **measured}
    result["machine"]["load_average_1m_end"] = os.getloadavg()[0]

    write_and_report(result, args.out, print_report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
