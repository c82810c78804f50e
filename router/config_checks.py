"""Checks of a gateway config against the files it names, run before the slow steps of start-up.

Each problem becomes one line of a single :class:`ConfigError`, naming the config key and the
fix, so an operator sees every problem at once instead of one per restart.
"""

from __future__ import annotations

import json
from pathlib import Path

from classifier import load_exemplars
from classifier.exemplars import ExemplarError
from router.config import ConfigError, EmbeddedBackendSettings, GatewayConfig


def check_config_files(config: GatewayConfig) -> None:
    """Check that every domain has an adapter and every embedded adapter file exists.

    Raises
    ------
    ConfigError
        With one line per domain without an adapter and per missing adapter file.
    """
    problems = [*_domains_without_adapter(config), *_missing_adapter_files(config)]
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
