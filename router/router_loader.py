"""Build the domain router a gateway config describes: load an artifact, or train from exemplars."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from classifier import (
    BatchingEmbedder,
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
from classifier.cascade import CascadeRouter
from classifier.exemplars import exemplars_digest
from classifier.static_embedding import StaticEmbedder
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
    domain_router = domain_router.with_thresholds(_thresholds(settings, domain_router.thresholds))
    if settings.cascade_threshold is not None:
        domain_router = build_cascade(domain_router, settings, threshold=settings.cascade_threshold)
    return domain_router


def build_cascade(
    domain_router: DomainRouter, settings: RouterSettings, *, threshold: float
) -> CascadeRouter:
    """Put a static-embedding stage, trained on ``domain_router``'s exemplars, in front of it.

    The static stage decides where its confidence is at least ``threshold``. Its table is
    distilled from ``settings.embedding_model`` at first use and its router trained once. Both
    are cached under ``cache_dir``, so later starts load them.
    """
    return add_cascade(
        domain_router,
        embedding_model=settings.embedding_model,
        cache_dir=settings.cache_dir,
        threshold=threshold,
    )


def add_cascade(
    domain_router: DomainRouter, *, embedding_model: str, cache_dir: str, threshold: float
) -> CascadeRouter:
    """Put a static stage distilled from ``embedding_model`` in front of ``domain_router``.

    The distilled table and the static router are cached under ``cache_dir``, as for
    :func:`build_cascade`.
    """
    cache = Path(cache_dir).expanduser()
    static_embedder = StaticEmbedder(embedding_model, cache_dir=str(cache / "static"))
    static_router = _static_router(domain_router, static_embedder, cache)
    logger.info("routing through the static-embedding cascade at confidence %s", threshold)
    return CascadeRouter(domain_router, static_router, threshold=threshold)


def _static_router(domain_router: DomainRouter, embedder: StaticEmbedder, cache_dir: Path) -> DomainRouter:
    """Train the static stage with the head and fallback domains of ``domain_router``, or load it."""
    head = domain_router.head
    fallback_domains = sorted(domain_router.fallback_domains)
    table = embedder.table_path
    key = hashlib.sha256(
        f"{exemplars_digest(domain_router.exemplars)}|{embedder.name}|{table.parent.name}/{table.name}|"
        f"{head.kind}|{sorted(head.get_params().items())}|{fallback_domains}|{domain_router.confidence_mode}".encode()
    ).hexdigest()[:16]
    cache = cache_dir / "routers" / f"static-{key}"

    if (cache / "router.json").is_file():
        logger.info("loading cached static router %s", cache)
        return load_router(cache, embedder)

    logger.info("training the static router on %d exemplars", len(domain_router.exemplars))
    static_router = train_router(
        domain_router.exemplars,
        embedder,
        head=head.kind,
        head_params=head.get_params(),
        thresholds=domain_router.thresholds,
        fallback_domains=fallback_domains,
        confidence_mode=domain_router.confidence_mode,
    )
    try:
        save_router(static_router, cache)
    except OSError as error:
        logger.warning(
            "cannot cache the static router in %s (%s): it will be retrained at next start", cache, error
        )
    return static_router


def make_embedder(settings: RouterSettings, *, max_chunks: int = 8) -> Embedder:
    """Return the embedding model ``settings`` names, on the configured backend.

    With ``settings.batching.enabled``, concurrent calls share batches (:class:`BatchingEmbedder`).
    """
    embedder: Embedder
    if settings.embedding_backend == "pytorch":
        embedder = SentenceEmbedder(settings.embedding_model, max_chunks=max_chunks)
    else:
        embedder = OnnxEmbedder(
            settings.embedding_model,
            quantize=settings.embedding_backend == "onnx-int8",
            cache_dir=str(Path(settings.cache_dir).expanduser() / "onnx"),
            max_chunks=max_chunks,
        )
    batching = settings.batching
    if not batching.enabled:
        return embedder
    return BatchingEmbedder(
        embedder,
        max_texts=batching.max_texts,
        max_word_pieces=batching.max_word_pieces,
        max_wait_ms=batching.max_wait_ms,
        max_concurrent_batches=batching.max_concurrent_batches,
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
