"""Build the domain router a gateway config describes: load an artifact, or train from exemplars."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from classifier import (
    DomainRouter,
    Embedder,
    OnnxEmbedder,
    SentenceEmbedder,
    Thresholds,
    load_exemplars,
    load_router,
    save_router,
    train_router,
)
from classifier.exemplars import exemplars_digest
from router.config import RouterSettings

logger = logging.getLogger(__name__)


def build_domain_router(
    settings: RouterSettings, adapters: dict[str, str | None], *, max_chunks: int = 8
) -> DomainRouter:
    """Return the router for ``settings``, with the config's threshold overrides applied.

    With ``exemplars``, the router is trained once and cached under ``cache_dir`` by a hash of
    the exemplars and the training settings (embedding model and backend, head, fallback
    domains), so later starts load it in well under a second.
    """
    embedder = make_embedder(settings, max_chunks=max_chunks)
    if settings.artifact is not None:
        domain_router = load_router(settings.artifact, embedder)
        logger.info("loaded router artifact %s", settings.artifact)
    else:
        domain_router = _trained_or_cached(settings, embedder, adapters)
    return domain_router.with_thresholds(_thresholds(settings, domain_router.thresholds))


def make_embedder(settings: RouterSettings, *, max_chunks: int = 8) -> Embedder:
    """Return the embedding model ``settings`` names, on the configured backend."""
    if settings.embedding_backend == "pytorch":
        return SentenceEmbedder(settings.embedding_model, max_chunks=max_chunks)
    return OnnxEmbedder(
        settings.embedding_model,
        quantize=settings.embedding_backend == "onnx-int8",
        cache_dir=str(Path(settings.cache_dir).expanduser() / "onnx"),
        max_chunks=max_chunks,
    )


def _trained_or_cached(
    settings: RouterSettings, embedder: Embedder, adapters: dict[str, str | None]
) -> DomainRouter:
    assert settings.exemplars is not None
    exemplars = load_exemplars(settings.exemplars)
    key = hashlib.sha256(
        # Both backends report the same model name, so the backend is part of the key.
        f"{exemplars_digest(exemplars)}|{embedder.name}|{settings.embedding_backend}|{settings.head}|"
        f"{sorted(settings.fallback_domains)}".encode()
    ).hexdigest()[:16]
    cache = Path(settings.cache_dir).expanduser() / "routers" / key

    if (cache / "router.json").is_file():
        logger.info("loading cached router %s trained from %s", cache, settings.exemplars)
        return load_router(cache, embedder)

    logger.info("training router from %d exemplars in %s", len(exemplars), settings.exemplars)
    domain_router = train_router(
        exemplars,
        embedder,
        head=settings.head,
        fallback_domains=settings.fallback_domains,
        adapters=adapters,
    )
    try:
        save_router(domain_router, cache)
    except OSError as error:
        logger.warning(
            "cannot cache the trained router in %s (%s): it will be retrained at next start", cache, error
        )
    return domain_router


def _thresholds(settings: RouterSettings, trained: Thresholds) -> Thresholds:
    return Thresholds(
        confidence=trained.confidence
        if settings.confidence_threshold is None
        else settings.confidence_threshold,
        domains={**trained.domains, **settings.domain_thresholds},
        out_of_domain=(
            trained.out_of_domain
            if settings.out_of_domain_threshold is None
            else settings.out_of_domain_threshold
        ),
    )
