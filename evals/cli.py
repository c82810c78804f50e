"""The ``adapter-router eval`` and ``adapter-router calibrate`` commands."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from classifier import Thresholds, save_router
from evals.calibration import Calibration, calibrate, parse_target
from evals.dataset import EvalRecord, file_sha256, load_records, select_split
from evals.errors import EvalError
from evals.evaluation import Evaluation, evaluate, group_accuracy
from evals.label_map import BASE_MODEL, LabelMap, expected_targets, load_label_map
from evals.local_router import LocalRouter
from evals.outcome import EvaluatedRouter
from evals.sources import RouterBuilder, RouterSpec, parse_compare_spec
from evals.text_report import render_comparison, render_evaluation
from router.cli_types import cosine, unit_interval

Handler = Callable[[argparse.Namespace], int]


def add_eval_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``eval`` and ``calibrate`` on the ``adapter-router`` subcommand parsers."""
    _add_eval_parser(subparsers)
    _add_calibrate_parser(subparsers)


def _add_eval_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="measure routing accuracy, fallback quality, calibration and latency on labelled prompts",
        description="Evaluate one or more routers on a labelled JSONL file of {text or messages, label, "
        "split} records. Prints a table, or JSON with --json; --report writes an HTML report with plots.",
    )
    parser.add_argument(
        "data", help="labelled JSONL file: one {text or messages, label, split} object per line"
    )
    parser.add_argument("--split", help="evaluate only the records of this split (default: every record)")

    source = parser.add_argument_group("router (one of)").add_mutually_exclusive_group()
    source.add_argument("--router", metavar="DIR", help="router artifact folder to evaluate")
    source.add_argument(
        "--config", help="gateway config YAML whose router to evaluate (default: the bundled config)"
    )
    source.add_argument(
        "--url", help="evaluate a running gateway through POST /v1/route, e.g. http://127.0.0.1:8000"
    )
    source.add_argument(
        "--train-split",
        metavar="SPLIT",
        help="train a router on this split of DATA and evaluate it on --split",
    )

    _add_label_map_options(parser)
    _add_training_options(parser)
    _add_threshold_options(parser)

    compare = parser.add_argument_group("comparison")
    compare.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="SPEC",
        help="also evaluate another router, as KEY=VALUE pairs separated by commas that change the main "
        "one (head=knn, confidence_mode=score_x_similarity, confidence_threshold=0.4, "
        "out_of_domain_threshold=0.2, embedding_model=PATH, embedding_backend=onnx-int8, "
        "cascade_threshold=0.8, name=NAME) "
        "or name another source "
        "(router=DIR, config=FILE, url=URL); a value without '=' is an artifact folder. Repeat for more",
    )
    compare.add_argument("--name", help="name of the main router in tables (default: from its source)")

    _add_output_options(parser)
    _add_latency_options(parser)

    gateway = parser.add_argument_group("gateway (--url)")
    gateway.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for each gateway response (default: 30)"
    )
    gateway.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="environment variable holding the gateway's API key, sent as a bearer token",
    )
    parser.set_defaults(handler=_user_errors(_run_eval))


def _add_threshold_options(parser: argparse.ArgumentParser) -> None:
    thresholds = parser.add_argument_group("threshold overrides")
    thresholds.add_argument(
        "--confidence-threshold",
        type=unit_interval,
        help="override the router's confidence threshold, 0-1 (default: the router's own)",
    )
    thresholds.add_argument(
        "--out-of-domain-threshold",
        type=cosine,
        help="override the router's out-of-domain similarity threshold, -1 to 1 (default: the router's own)",
    )


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    output = parser.add_argument_group("output")
    output.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    output.add_argument(
        "--group-by",
        metavar="FIELD",
        help="also report accuracy per value of this record field, e.g. --group-by case",
    )
    output.add_argument("--report", metavar="DIR", help="write index.html, PNG plots and results.json to DIR")
    output.add_argument(
        "--misclassified",
        type=_non_negative_int,
        default=20,
        metavar="N",
        help="misclassified prompts to list, most confident first (default: 20)",
    )


def _add_latency_options(parser: argparse.ArgumentParser) -> None:
    latency = parser.add_argument_group("latency")
    latency.add_argument(
        "--latency-samples",
        type=_non_negative_int,
        default=200,
        metavar="N",
        help="prompts routed one at a time to measure latency; 0 skips latency (default: 200)",
    )
    latency.add_argument(
        "--batch-size",
        type=_positive_int,
        default=32,
        metavar="N",
        help="prompts per call for the batched latency (default: 32)",
    )
    latency.add_argument(
        "--torch-threads",
        type=_positive_int,
        metavar="N",
        help="PyTorch intra-op threads for embedding (default: PyTorch's choice, one per core)",
    )


def _add_calibrate_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="choose confidence thresholds on a validation split and write them into a router artifact",
        description="Choose the confidence threshold(s) that meet a target on the validation records and "
        "write them, with the target and the validation figures, into the artifact's router.json.",
    )
    parser.add_argument(
        "data", help="labelled JSONL file: one {text or messages, label, split} object per line"
    )
    parser.add_argument("--split", default="validation", help="split to calibrate on (default: validation)")

    source = parser.add_argument_group("router (one of)").add_mutually_exclusive_group(required=True)
    source.add_argument("--router", metavar="DIR", help="router artifact folder to calibrate")
    source.add_argument(
        "--train-split", metavar="SPLIT", help="first train a router on this split of DATA (needs --out)"
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="folder to write the calibrated artifact to (default: --router, in place)",
    )

    target = parser.add_argument_group("target")
    target.add_argument(
        "--target",
        default="balance",
        help="precision:P (lowest threshold with routed precision >= P), fallback-rate:R (highest "
        "threshold sending at most a share R to the base model) or balance (maximum in-domain accuracy "
        "plus fallback recall) (default: balance)",
    )
    target.add_argument(
        "--per-domain",
        action="store_true",
        help="choose a threshold per domain for domains that are the best domain of enough prompts",
    )
    target.add_argument(
        "--min-domain-records",
        type=_positive_int,
        default=20,
        metavar="N",
        help="minimum number of validation prompts a domain needs for its own threshold (default: 20)",
    )

    _add_label_map_options(parser)
    _add_training_options(parser)
    parser.add_argument("--json", action="store_true", help="print the calibration as JSON")
    parser.set_defaults(handler=_user_errors(_run_calibrate))


def _add_label_map_options(parser: argparse.ArgumentParser) -> None:
    labels = parser.add_argument_group("labels")
    labels.add_argument(
        "--label-map",
        metavar="FILE",
        help='JSON label map {"DOMAIN": ["LABEL", ...]} (default: the router\'s own labels; labels '
        "the router does not know are taken as domain names)",
    )
    labels.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="LABEL=DOMAIN",
        help="map one label to a domain; repeat for several; overrides --label-map",
    )
    labels.add_argument(
        "--fallback-label",
        action="append",
        default=[],
        metavar="LABEL",
        help="label whose prompts should fall back to the base model (e.g. oos); repeat for several",
    )


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    training = parser.add_argument_group("training (--train-split) and confidence mode")
    training.add_argument(
        "--head", choices=["logistic", "knn"], help="head of a router trained here (default: logistic)"
    )
    training.add_argument(
        "--embedding-model",
        metavar="DIR",
        help="sentence-transformers model folder for a router trained here (default: all-MiniLM-L6-v2)",
    )
    training.add_argument(
        "--confidence-mode",
        choices=["score", "score_x_similarity"],
        help="what the confidence threshold applies to: the domain score, or the score times the "
        "nearest-exemplar similarity (default: the router's own; score when training)",
    )


def _user_errors(handler: Handler) -> Handler:
    """Turn an :class:`EvalError` into a one-line message on stderr and exit status 2."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except EvalError as error:
            for line in str(error).splitlines():
                print(f"adapter-router: error: {line}", file=sys.stderr)
            return 2

    return run


def _run_eval(args: argparse.Namespace) -> int:
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    if args.train_split is not None and args.split is None:
        raise EvalError("--train-split needs --split to choose the records to evaluate, e.g. --split test")
    path = Path(args.data)
    records = load_records(path)
    selected = select_split(records, args.split, path)
    if args.train_split is not None and args.train_split == args.split:
        print(
            f"adapter-router: warning: evaluating on the training split {args.split!r} overstates accuracy",
            file=sys.stderr,
        )

    label_map = load_label_map(args.label_map, args.map, args.fallback_label)
    main = _main_spec(args)
    specs = [main, *(parse_compare_spec(text, main) for text in args.compare)]
    builder = RouterBuilder(
        records,
        path,
        label_map,
        latency_samples=args.latency_samples,
        batch_size=args.batch_size,
        timeout=args.timeout,
        api_key=_api_key(args.api_key_env),
        show_progress=sys.stderr.isatty() and not args.json,
    )

    evaluations = []
    first_targets: list[str] = []
    for spec in specs:
        router = builder.build(spec)
        try:
            evaluation, targets = _evaluate_router(
                router, selected, label_map, path, args.misclassified, args.group_by
            )
        finally:
            close = getattr(router, "close", None)
            if close is not None:
                close()
        evaluations.append(evaluation)
        first_targets = first_targets or targets

    data = _data_summary(path, args.split, first_targets)
    results = {"data": data, "routers": [evaluation.to_dict() for evaluation in evaluations]}
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(render_evaluation(evaluations[0], data), end="")
    if len(evaluations) > 1 and not args.json:
        print("\ncomparison\n" + render_comparison(evaluations), end="")
    if args.report:
        # matplotlib takes a while to import, so only report runs pay for it.
        from evals.html_report import write_report

        index = write_report(evaluations, data, results, Path(args.report))
        print(f"wrote {index}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _evaluate_router(
    router: EvaluatedRouter,
    records: Sequence[EvalRecord],
    label_map: LabelMap,
    path: Path,
    misclassified: int,
    group_by: str | None = None,
) -> tuple[Evaluation, list[str]]:
    # Checking the labels first fails fast, before minutes of embedding.
    expected_targets(records, label_map, router.domains(), path)
    outcomes = router.route(records)
    domains = router.domains()
    targets = expected_targets(records, label_map, domains, path)
    evaluation = evaluate(
        router.name,
        router.describe(),
        records,
        targets,
        outcomes,
        routable_domains=domains.routable,
        latency=router.latency(records),
        misclassified=misclassified,
    )
    if group_by:
        groups = group_accuracy(records, targets, outcomes, group_by)
        evaluation = dataclasses.replace(evaluation, groups=groups)
    return evaluation, targets


def _run_calibrate(args: argparse.Namespace) -> int:
    if args.train_split is not None and not args.out:
        raise EvalError(
            "--train-split needs --out DIR: the folder to write the trained, calibrated router to"
        )
    target = parse_target(args.target)
    path = Path(args.data)
    records = load_records(path)
    selected = select_split(records, args.split, path)
    label_map = load_label_map(args.label_map, args.map, args.fallback_label)

    spec = RouterSpec(
        router=args.router,
        train_split=args.train_split,
        head=args.head,
        embedding_model=args.embedding_model,
        confidence_mode=args.confidence_mode,
    )
    builder = RouterBuilder(records, path, label_map, latency_samples=0, show_progress=sys.stderr.isatty())
    router = builder.build(spec)
    assert isinstance(router, LocalRouter)
    targets = expected_targets(selected, label_map, router.domains(), path)
    outcomes = router.route(selected)
    calibration = calibrate(
        outcomes, targets, target, per_domain=args.per_domain, min_domain_records=args.min_domain_records
    )

    domain_router = router.router
    thresholds = Thresholds(
        confidence=calibration.confidence,
        domains=calibration.domains,
        out_of_domain=domain_router.thresholds.out_of_domain,
    )
    record = _calibration_record(
        args, path, targets, label_map, calibration, str(domain_router.confidence_mode)
    )
    out = Path(args.out or args.router)
    save_router(domain_router.with_thresholds(thresholds), out, calibration=record)

    if args.json:
        print(json.dumps({"artifact": str(out), "calibration": record}, indent=2))
    else:
        print(_calibration_text(record, out))
    return 0


def _calibration_record(
    args: argparse.Namespace,
    path: Path,
    targets: Sequence[str],
    label_map: LabelMap,
    calibration: Calibration,
    confidence_mode: str,
) -> dict[str, Any]:
    """Return the ``calibration`` entry of ``router.json``: target, data, thresholds, figures."""
    return {
        "target": str(calibration.target),
        "per_domain": args.per_domain,
        "confidence_mode": confidence_mode,
        "data": str(path),
        "data_sha256": file_sha256(path),
        "split": args.split,
        "records": len(targets),
        "in_domain": sum(t != BASE_MODEL for t in targets),
        "expected_fallback": sum(t == BASE_MODEL for t in targets),
        "fallback_labels": sorted(label_map.fallback_labels),
        "thresholds": {"confidence": calibration.confidence, "domains": calibration.domains},
        "validation": calibration.figures,
        "domains": calibration.domain_details,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _calibration_text(record: dict[str, Any], out: Path) -> str:
    figures = record["validation"]
    lines = [
        f"calibrated for {record['target']} on split {record['split']} of {record['data']}: "
        f"{record['records']} records ({record['in_domain']} in-domain, "
        f"{record['expected_fallback']} expected fallback)",
        f"confidence threshold: {record['thresholds']['confidence']:.4f} "
        f"(confidence mode {record['confidence_mode']})",
    ]
    for domain, details in record["domains"].items():
        if details.get("own_threshold"):
            missed = "" if details["reached"] else ", target not reached: routes nothing"
            lines.append(
                f"  {domain}: {details['threshold']:.4f} ({details['records']} validation prompts{missed})"
            )
    lines.append(
        "validation: "
        + ", ".join(
            f"{title} {figures[name]:.4f}"
            for name, title in (
                ("in_domain_accuracy", "in-domain accuracy"),
                ("fallback_recall", "fallback recall"),
                ("routed_precision", "routed precision"),
                ("fallback_precision", "fallback precision"),
                ("fallback_rate", "fallback rate"),
                ("macro_f1", "macro-F1"),
            )
        )
    )
    lines.append(f"wrote {out / 'router.json'}")
    return "\n".join(lines)


def _main_spec(args: argparse.Namespace) -> RouterSpec:
    config = args.config
    if not any((args.router, args.url, args.train_split, config)):
        from router.config import DEFAULT_CONFIG

        config = DEFAULT_CONFIG
    return RouterSpec(
        name=args.name,
        router=args.router,
        config=config,
        url=args.url,
        train_split=args.train_split,
        head=args.head,
        embedding_model=args.embedding_model,
        confidence_mode=args.confidence_mode,
        confidence_threshold=args.confidence_threshold,
        out_of_domain_threshold=args.out_of_domain_threshold,
    )


def _data_summary(path: Path, split: str | None, targets: Sequence[str]) -> dict[str, Any]:
    return {
        "path": str(path),
        "sha256": file_sha256(path),
        "split": split,
        "records": len(targets),
        "in_domain": sum(target != BASE_MODEL for target in targets),
        "expected_fallback": sum(target == BASE_MODEL for target in targets),
    }


def _api_key(variable: str | None) -> str | None:
    if variable is None:
        return None
    value = os.environ.get(variable)
    if not value:
        raise EvalError(f"environment variable {variable} is not set: export the gateway's API key in it")
    return value


def _positive_int(value: str) -> int:
    number = _non_negative_int(value)
    if number == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _non_negative_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return number
