"""Checks of a gateway config against the files it names, run before the slow steps of start-up.

Each problem becomes one line of a single :class:`ConfigError`, naming the config key and the
fix, so an operator sees every problem at once instead of one per restart.
"""

from __future__ import annotations

import json
from pathlib import Path

from classifier import load_exemplars
from classifier.embedding import DEFAULT_EMBEDDING_MODEL, EmbeddingModelError, resolve_model_path
from classifier.exemplars import ExemplarError
from router.config import ConfigError, EmbeddedBackendSettings, GatewayConfig


def check_config_files(config: GatewayConfig) -> None:
    """Check that every domain has an adapter, every embedded adapter file exists, and the
    configured embedding model is the one the router artifact was trained with.

    No model is loaded: the embedding models are compared by name, as the artifact loader
    compares them.

    Raises
    ------
    ConfigError
        With one line per domain without an adapter, per missing adapter file, and for an
        embedding model that is not the artifact's.
    """
    problems = [
        *_domains_without_adapter(config),
        *_missing_adapter_files(config),
        *_embedding_model_mismatch(config),
    ]
    if problems:
        raise ConfigError("\n".join(problems))


def _domains_without_adapter(config: GatewayConfig) -> list[str]:
    known = _router_domains(config)
    if known is None:
        return []

    domains, fallback_domains = known
    missing = [
        domain for domain in domains if domain not in config.adapters and domain not in fallback_domains
    ]
    source = config.router.artifact or config.router.exemplars
    return [
        f"adapters.{domain}: missing: the router ({source}) has domain '{domain}' "
        "but no adapter is mapped to it: "
        f"add '{domain}: <adapter name>' under adapters ('{domain}: null' serves it with the base model), "
        "or list it in router.fallback_domains"
        for domain in missing
    ]


def _embedding_model_mismatch(config: GatewayConfig) -> list[str]:
    settings = config.router
    if settings.artifact is None:
        return []  # a router trained from exemplars at start uses the configured model
    try:
        manifest = json.loads((Path(settings.artifact) / "router.json").read_text(encoding="utf-8"))
        trained_with = str(manifest["embedding_model"]["name"])
    except (OSError, ValueError, KeyError, TypeError):
        return []  # the artifact loader reports an unreadable artifact, naming the file
    try:
        configured, _ = resolve_model_path(settings.embedding_model)
    except EmbeddingModelError as error:
        return [f"router.embedding_model: {error}"]
    if configured == trained_with:
        return []

    setting = "default" if trained_with == DEFAULT_EMBEDDING_MODEL else trained_with
    return [
        f"router.embedding_model: the router artifact {settings.artifact} was trained with the "
        f"embedding model {trained_with}, but the config names {configured}: set "
        f"router.embedding_model to {setting}, or train a router with the configured model "
        "(adapter-router train)"
    ]


def _router_domains(config: GatewayConfig) -> tuple[list[str], set[str]] | None:
    """Return the router's domains and fallback domains, or ``None`` when they cannot be read here.

    An unreadable artifact or exemplar file is left to the loader, whose error names the file.
    """
    settings = config.router
    if settings.exemplars is not None:
        try:
            exemplars = load_exemplars(settings.exemplars)
        except ExemplarError:
            return None
        domains = sorted({exemplar.domain for exemplar in exemplars})
        return domains, set(settings.fallback_domains)

    assert settings.artifact is not None
    try:
        manifest = json.loads((Path(settings.artifact) / "router.json").read_text(encoding="utf-8"))
        return list(manifest["domains"]), set(manifest.get("fallback_domains", []))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _missing_adapter_files(config: GatewayConfig) -> list[str]:
    backend = config.backend
    if not isinstance(backend, EmbeddedBackendSettings):
        return []

    problems = []
    adapters = sorted({adapter for adapter in config.adapters.values() if adapter is not None})
    for adapter in adapters:
        configured = backend.adapter_files.get(adapter)
        path = (
            Path(configured) if configured else Path(backend.model) / "adapters" / f"{adapter}.onnx_adapter"
        )
        if path.is_file():
            continue
        if configured:
            problems.append(
                f"backend.adapter_files.{adapter}: adapter file not found: {path}: "
                "export the adapter there or correct the path"
            )
        else:
            problems.append(
                f"backend.adapter_files.{adapter}: missing, and the default adapter file {path} "
                "does not exist: "
                f"export the adapter there or set backend.adapter_files.{adapter} to its .onnx_adapter file"
            )
    return problems
