"""The ``adapter-router`` command: serve, serve-model, train, route, install-adapter."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from classifier import ArtifactError, EmbeddingModelError, ExemplarError
from router.cli_types import cosine, unit_interval
from router.config import ConfigError
from router.logging_setup import configure_logging

if TYPE_CHECKING:
    pass

USER_ERRORS = (ConfigError, ExemplarError, ArtifactError, EmbeddingModelError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.verbose:
        configure_logging(logging.DEBUG)
    else:
        # Servers log their starts, stops and errors; one-shot commands print only their result.
        configure_logging(logging.INFO if args.command in ("serve", "serve-model") else logging.WARNING)
    try:
        return int(args.handler(args) or 0)
    except USER_ERRORS as error:
        for line in str(error).splitlines():
            print(f"adapter-router: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adapter-router",
        description="Route each LLM request to the LoRA adapter of its skill domain.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the OpenAI-compatible gateway")
    serve.add_argument("--config", help="gateway config YAML (default: the bundled demo config)")
    serve.add_argument("--host", help="address to listen on (default: server.host of the config, 127.0.0.1)")
    serve.add_argument(
        "--port", type=int, help="port to listen on (default: server.port of the config, 8000)"
    )
    serve.set_defaults(handler=_serve)

    serve_model = commands.add_parser(
        "serve-model",
        help="serve an onnxruntime-genai model and its adapters as an OpenAI-compatible server",
        description="Serve an exported onnxruntime-genai model alone; the request's `model` selects the "
        "adapter (the vLLM convention), the base model name selects no adapter.",
    )
    serve_model.add_argument(
        "--model", default="data:demo_model", help="exported model folder (default: the demo model)"
    )
    serve_model.add_argument(
        "--adapters",
        help="folder of NAME.onnx_adapter files, each served as model NAME (default: MODEL/adapters)",
    )
    serve_model.add_argument(
        "--base-model-name", default="base", help="name that selects no adapter (default: base)"
    )
    serve_model.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve_model.add_argument("--port", type=int, default=8001, help="port to listen on (default: 8001)")
    serve_model.set_defaults(handler=_serve_model)

    train = commands.add_parser("train", help="train a router artifact from labelled exemplars")
    train.add_argument("--data", required=True, help="JSONL file or folder of {text, label, domain} records")
    train.add_argument("--out", required=True, help="folder to write the router artifact to")
    train.add_argument(
        "--embedding-model",
        default="default",
        help="sentence-transformers model folder (default: all-MiniLM-L6-v2)",
    )
    train.add_argument(
        "--head", choices=["logistic", "knn"], default="logistic", help="classifier head (default: logistic)"
    )
    train.add_argument(
        "--fallback-domain",
        action="append",
        default=[],
        metavar="DOMAIN",
        help="domain served by the base model; repeat for several (e.g. --fallback-domain general)",
    )
    train.add_argument(
        "--confidence-threshold",
        type=unit_interval,
        default=0.5,
        help="minimum confidence to route, 0-1 (default: 0.5)",
    )
    train.add_argument(
        "--out-of-domain-threshold",
        type=cosine,
        default=0.0,
        help="minimum cosine similarity to the nearest exemplar, -1 to 1; 0 disables (default: 0)",
    )
    train.add_argument(
        "--confidence-mode",
        choices=["score", "score_x_similarity"],
        default="score",
        help="what the confidence threshold applies to: the domain score, or the score times the "
        "nearest-exemplar similarity (default: score)",
    )
    train.set_defaults(handler=_train)

    route = commands.add_parser("route", help="show the routing decision for a text")
    route.add_argument("text", help="the prompt to route")
    source = route.add_mutually_exclusive_group()
    source.add_argument(
        "--config", help="gateway config YAML whose router and adapters to use (default: bundled)"
    )
    source.add_argument("--artifact", help="router artifact folder; its stored adapter map is used")
    route.add_argument("--json", action="store_true", help="print the decision as JSON")
    route.set_defaults(handler=_route)

    install = commands.add_parser(
        "install-adapter",
        help="install an adapter file into a model folder by atomic rename, checking its sha256",
        description="Copy SRC to a temporary file next to MODEL/adapters/NAME.onnx_adapter, check its "
        "sha256, flush it to disk and rename it over the old file, which is never written in place "
        "(a running gateway memory-maps it). The adapter's line in SHA256SUMS is updated the same way. "
        "Then reload the gateway (SIGHUP or POST /admin/reload) to serve the new file.",
    )
    install.add_argument("source", metavar="SRC", help="the .onnx_adapter file to install")
    install.add_argument(
        "--model",
        required=True,
        help="exported model folder; the file goes to MODEL/adapters/NAME.onnx_adapter",
    )
    install.add_argument("--name", required=True, help="adapter name, as the config's adapters map names it")
    install.add_argument(
        "--sha256",
        type=_sha256_hex,
        help="expected sha256 of SRC (64 hex digits); on a mismatch nothing is installed",
    )
    install.set_defaults(handler=_install_adapter)

    from evals.cli import add_eval_commands

    add_eval_commands(commands)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from router.config import load_config

    config = load_config(args.config)
    from router.server import run_gateway

    run_gateway(config, host=args.host, port=args.port)
    return 0


def _serve_model(args: argparse.Namespace) -> int:
    from router.model_server import run_model_server

    run_model_server(
        model=args.model,
        adapters=args.adapters,
        base_model_name=args.base_model_name,
        host=args.host,
        port=args.port,
    )
    return 0


def _train(args: argparse.Namespace) -> int:
    from classifier import SentenceEmbedder, Thresholds, load_exemplars, save_router, train_router

    exemplars = load_exemplars(args.data)
    embedder = SentenceEmbedder(args.embedding_model)
    thresholds = Thresholds(confidence=args.confidence_threshold, out_of_domain=args.out_of_domain_threshold)
    domain_router = train_router(
        exemplars,
        embedder,
        head=args.head,
        thresholds=thresholds,
        fallback_domains=args.fallback_domain,
        confidence_mode=args.confidence_mode,
        show_progress=True,
    )
    save_router(domain_router, args.out)
    print(
        f"trained a {args.head} router on {len(exemplars)} exemplars, "
        f"{len(domain_router.head.classes_)} labels, "
        f"{len(domain_router.domains)} domains ({', '.join(domain_router.domains)}): wrote {args.out}"
    )
    return 0


def _route(args: argparse.Namespace) -> int:

    service = _routing_service(args)
    decision = service.route(service.routing_alias, args.text)
    if args.json:
        print(json.dumps(decision.to_dict(), indent=2))
        return 0

    top = ", ".join(f"{domain} {score:.3f}" for domain, score in list(decision.scores.items())[:3])
    print(f"domain:     {decision.domain or 'none'}")
    print(f"adapter:    {decision.model}{'' if decision.adapter else ' (base model)'}")
    print(f"confidence: {'none' if decision.confidence is None else f'{decision.confidence:.4f}'}")
    print(f"top scores: {top or 'none'}")
    print(f"reason:     {decision.fallback_reason or 'routed'}")
    return 0


def _routing_service(args: argparse.Namespace):
    from classifier import SentenceEmbedder, load_router
    from router.config import load_config
    from router.router_loader import build_domain_router
    from router.routing import RoutingService

    if args.artifact:
        domain_router = load_router(args.artifact, SentenceEmbedder(_artifact_embedding_model(args.artifact)))
        return RoutingService(
            domain_router, domain_router.adapters or _identity_map(domain_router), base_model="base"
        )

    config = load_config(args.config)
    domain_router = build_domain_router(config.router, config.adapters)
    return RoutingService(
        domain_router,
        config.adapters,
        base_model=config.backend.base_model_name,
        routing_alias=config.server.routing_alias,
    )


def _install_adapter(args: argparse.Namespace) -> int:
    from router.adapter_checksums import install_adapter

    try:
        installed = install_adapter(
            Path(args.source), Path(args.model), args.name, expected_sha256=args.sha256
        )
    except OSError as error:
        raise ConfigError(
            f"cannot install {args.source} as adapter {args.name}: {error.strerror or error} "
            f"({error.filename or args.model}): check the paths and their permissions"
        ) from None
    print(f"installed {args.source} as {installed.path} (sha256 {installed.sha256})")
    for checksums in installed.checksum_files:
        print(f"updated the line for {installed.path.name} in {checksums}")
    print("reload the gateway to serve it: send it SIGHUP, or POST /admin/reload with an admin key")
    return 0


def _sha256_hex(value: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a sha256 digest: give 64 hexadecimal digits")
    return value.lower()


def _artifact_embedding_model(artifact: str) -> str:
    from classifier import read_manifest

    return str(read_manifest(artifact)["embedding_model"]["name"])


def _identity_map(domain_router) -> dict[str, str | None]:
    return {
        domain: domain for domain in domain_router.domains if domain not in domain_router.fallback_domains
    }


if __name__ == "__main__":
    sys.exit(main())
