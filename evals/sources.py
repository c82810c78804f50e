"""Router specifications: where a router under evaluation comes from, and how to build it.

A router comes from an artifact folder, a gateway config, a running gateway's URL, or is
trained on one split of the data file. ``--compare`` specifications override parts of the
main one: ``head=knn``, ``confidence_mode=score_x_similarity``, ``confidence_threshold=0.4``,
``out_of_domain_threshold=0.2``, ``context_turns=0`` (chat records on their latest request
alone), ``embedding_model=PATH``, ``name=NAME``, or another source
(``router=DIR``, ``config=FILE``, ``url=URL``). A specification without ``=`` is an artifact
folder.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from classifier import (
    ConfidenceMode,
    DomainRouter,
    Embedder,
    Exemplar,
    OnnxEmbedder,
    SentenceEmbedder,
    Thresholds,
    load_router,
    read_manifest,
    train_router,
)
from classifier.cascade import CascadeRouter
from classifier.embedding import resolve_model_path
from evals.dataset import EvalRecord, select_split
from evals.errors import EvalError
from evals.gateway_router import GatewayRouter
from evals.label_map import LabelMap
from evals.local_router import CachingEmbedder, LocalRouter
from evals.outcome import EvaluatedRouter
from router.config import ConversationSettings

logger = logging.getLogger(__name__)

SOURCE_KEYS = ("router", "config", "url")
TRAINING_KEYS = ("head", "embedding_model")
OVERRIDE_KEYS = (
    "confidence_mode",
    "confidence_threshold",
    "out_of_domain_threshold",
    "context_turns",
    "embedding_backend",
    "cascade_threshold",
)
EMBEDDING_BACKENDS = ("pytorch", "onnx", "onnx-int8")
SPEC_KEYS = ("name", *SOURCE_KEYS, *TRAINING_KEYS, *OVERRIDE_KEYS)


@dataclass(frozen=True)
class RouterSpec:
    """Source of a router under evaluation, with optional overrides.

    Exactly one of ``router``, ``config``, ``url`` and ``train_split`` is set. ``head`` and
    ``embedding_model`` apply to training only; the threshold and confidence-mode overrides
    apply to every local router. ``embedding_backend`` embeds with that backend of the router's
    embedding model while keeping the router's head, so that a comparison shows what the backend
    alone changes. ``cascade_threshold`` puts the gateway's static-embedding stage in front of the
    router (distilled and cached as ``router.cascade_threshold`` does).
    """

    name: str | None = None
    router: str | None = None
    config: str | None = None
    url: str | None = None
    train_split: str | None = None
    head: str | None = None
    embedding_model: str | None = None
    confidence_mode: str | None = None
    confidence_threshold: float | None = None
    out_of_domain_threshold: float | None = None
    context_turns: int | None = None
    embedding_backend: str | None = None
    cascade_threshold: float | None = None

    def display_name(self) -> str:
        """Return the row name: ``name``, or a short form of the source and overrides."""
        if self.name:
            return self.name
        if self.url:
            source = self.url
        elif self.router:
            source = Path(self.router).name or self.router
        elif self.config:
            source = f"config {Path(self.config).name}"
        else:
            source = f"trained on {self.train_split}"
        changes = [
            f"{key}={getattr(self, key)}"
            for key in (*TRAINING_KEYS, *OVERRIDE_KEYS)
            if getattr(self, key) is not None
        ]
        return ", ".join([source, *changes])

    def validate(self) -> None:
        """Raise :class:`EvalError` if the options do not fit the source."""
        if self.url and any(getattr(self, key) is not None for key in (*TRAINING_KEYS, *OVERRIDE_KEYS)):
            raise EvalError(
                "head, embedding model, confidence mode and threshold options do not apply to a gateway "
                "(--url): set them in the gateway config"
            )
        if self.train_split is None and any(getattr(self, key) is not None for key in TRAINING_KEYS):
            raise EvalError(
                "head and embedding_model need a router trained here: add --train-split SPLIT, "
                "or compare another artifact with router=DIR"
            )
        if self.embedding_backend is not None and self.embedding_backend not in EMBEDDING_BACKENDS:
            raise EvalError(
                f"invalid embedding_backend {self.embedding_backend!r}: use {' or '.join(EMBEDDING_BACKENDS)}"
            )
        if self.confidence_mode is not None and self.confidence_mode not in {m.value for m in ConfidenceMode}:
            raise EvalError(
                f"invalid confidence_mode {self.confidence_mode!r}: use "
                + " or ".join(m.value for m in ConfidenceMode)
            )


def parse_compare_spec(text: str, main: RouterSpec) -> RouterSpec:
    """Parse a ``--compare`` value into a specification based on ``main``.

    Raises
    ------
    EvalError
        If a key is unknown, a value is not a number where one is needed, or the options do
        not fit the source.
    """
    if "=" not in text:
        spec = RouterSpec(router=text)
        spec.validate()
        return spec

    values: dict[str, Any] = {}
    for item in text.split(","):
        key, separator, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if key == "threshold":
            key = "confidence_threshold"
        if not separator or key not in SPEC_KEYS or not value.strip():
            raise EvalError(
                f"invalid --compare {text!r} at {item!r}: write KEY=VALUE pairs separated by commas, "
                f"with keys {', '.join(SPEC_KEYS)}"
            )
        values[key] = _spec_value(key, value.strip(), text)

    if any(key in values for key in SOURCE_KEYS):
        spec = RouterSpec(**values)
    else:
        spec = dataclasses.replace(main, **{"name": None, **values})
    spec.validate()
    return spec


class RouterBuilder:
    """Builds the routers of one evaluation run, sharing embedding models and trained routers.

    Parameters
    ----------
    records : sequence of EvalRecord
        Every record of the data file; training uses those of the training split.
    data_path : Path
        The data file, named in error messages.
    label_map : LabelMap
        Gives each training label its domain; fallback labels train fallback domains.
    latency_samples, batch_size : int
        Passed to every :class:`LocalRouter`.
    timeout : float
        Seconds to wait for each gateway response.
    api_key : str, optional
        Bearer token for gateways.
    show_progress : bool
        Show progress bars while embedding.
    """

    def __init__(
        self,
        records: Sequence[EvalRecord],
        data_path: Path,
        label_map: LabelMap,
        *,
        latency_samples: int = 200,
        batch_size: int = 32,
        timeout: float = 30.0,
        api_key: str | None = None,
        show_progress: bool = False,
    ) -> None:
        self.records = records
        self.data_path = data_path
        self.label_map = label_map
        self.latency_samples = latency_samples
        self.batch_size = batch_size
        self.timeout = timeout
        self.api_key = api_key
        self.show_progress = show_progress
        self._embedders: dict[str, CachingEmbedder] = {}
        self._trained: dict[tuple[str, str, str], DomainRouter] = {}

    def build(self, spec: RouterSpec) -> EvaluatedRouter:
        """Return the router ``spec`` describes, loading or training it as needed."""
        spec.validate()
        if spec.url:
            return GatewayRouter(
                spec.url, timeout=self.timeout, api_key=self.api_key, name=spec.display_name()
            )

        source: dict[str, Any]
        adapters: dict[str, str | None]
        conversation = ConversationSettings()
        if spec.router:
            router = self._load_artifact(spec.router)
            adapters, source = dict(router.adapters), {"artifact": spec.router}
        elif spec.config:
            router, adapters, conversation = self._from_config(spec.config)
            source = {"config": spec.config}
        else:
            assert spec.train_split is not None
            router = self.train(spec)
            adapters, source = {}, {"data": str(self.data_path), "train_split": spec.train_split}

        router = with_overrides(router, spec)
        if spec.embedding_backend is not None:
            router = router.with_thresholds(router.thresholds)
            router.embedder = self._backend_embedder(router.embedding_model, spec.embedding_backend)
        if spec.cascade_threshold is not None:
            router = with_cascade(router, spec.cascade_threshold)
        if spec.context_turns is not None:
            conversation = conversation.model_copy(update={"context_turns": spec.context_turns})
        return LocalRouter(
            spec.display_name(),
            router,
            _uncached(router.embedder),
            adapters=adapters,
            source=source,
            latency_samples=self.latency_samples,
            batch_size=self.batch_size,
            show_progress=self.show_progress,
            conversation=conversation,
        )

    def train(self, spec: RouterSpec) -> DomainRouter:
        """Train (once per embedding model and head) a router on the training split.

        Fallback labels train fallback domains of their own name, so the router learns what
        should go to the base model, as ``general`` does in the default exemplars.
        """
        assert spec.train_split is not None
        embedding_model = spec.embedding_model or "default"
        head = spec.head or "logistic"
        key = (spec.train_split, embedding_model, head)
        if key in self._trained:
            return self._trained[key]

        training = select_split(self.records, spec.train_split, self.data_path)
        exemplars = [
            Exemplar(record.text, record.label, self.label_map.training_domain(record.label))
            for record in training
        ]
        trained_labels = {record.label for record in training}
        embedder = self._embedder(embedding_model)
        router = train_router(
            exemplars,
            embedder,
            head=head,
            fallback_domains=sorted(self.label_map.fallback_labels & trained_labels),
            show_progress=self.show_progress,
        )
        router.metadata.update({"data": str(self.data_path), "split": spec.train_split})
        self._trained[key] = router
        return router

    def _load_artifact(self, path: str) -> DomainRouter:
        manifest = read_manifest(path)
        return load_router(path, self._embedder(str(manifest["embedding_model"]["name"])))

    def _from_config(
        self, config_path: str
    ) -> tuple[DomainRouter, dict[str, str | None], ConversationSettings]:
        from router.config import load_config
        from router.router_loader import build_domain_router

        config = load_config(config_path)
        router = build_domain_router(config.router, config.adapters)
        shared = router.with_thresholds(router.thresholds)
        if config.router.embedding_backend == "pytorch":
            # Share one cached embedding model instance with the other routers of this run.
            shared.embedder = self._embedder(router.embedding_model)
        else:
            # An ONNX backend keeps its own embeddings, so its accuracy is its own.
            shared.embedder = CachingEmbedder(router.embedder)
        return shared, dict(config.adapters), config.conversation

    def _embedder(self, model: str) -> CachingEmbedder:
        name, _ = resolve_model_path(model)
        if name not in self._embedders:
            self._embedders[name] = CachingEmbedder(SentenceEmbedder(model))
        return self._embedders[name]

    def _backend_embedder(self, model: str, backend: str) -> CachingEmbedder:
        if backend == "pytorch":
            return self._embedder(model)
        key = f"{backend}:{resolve_model_path(model)[0]}"
        if key not in self._embedders:
            embedder = OnnxEmbedder(model, quantize=backend == "onnx-int8")
            self._embedders[key] = CachingEmbedder(embedder)
        return self._embedders[key]


def _uncached(embedder: Embedder) -> Embedder:
    return embedder.embedder if isinstance(embedder, CachingEmbedder) else embedder


def with_cascade(router: DomainRouter, threshold: float) -> DomainRouter:
    """Return ``router`` behind a static-embedding stage that decides from confidence ``threshold``."""
    from router.config import RouterSettings
    from router.router_loader import add_cascade

    if isinstance(router, CascadeRouter):
        return CascadeRouter(
            DomainRouter.with_thresholds(router, router.thresholds), router.static_router, threshold=threshold
        )
    cache_dir = RouterSettings.model_fields["cache_dir"].default
    return add_cascade(
        router, embedding_model=router.embedding_model, cache_dir=cache_dir, threshold=threshold
    )


def with_overrides(router: DomainRouter, spec: RouterSpec) -> DomainRouter:
    """Return ``router`` with the spec's thresholds and confidence mode applied.

    As in a gateway config, a global ``confidence_threshold`` leaves per-domain thresholds in
    place.
    """
    thresholds = router.thresholds
    updated = router.with_thresholds(
        Thresholds(
            confidence=thresholds.confidence
            if spec.confidence_threshold is None
            else spec.confidence_threshold,
            domains=thresholds.domains,
            out_of_domain=(
                thresholds.out_of_domain
                if spec.out_of_domain_threshold is None
                else spec.out_of_domain_threshold
            ),
        )
    )
    if spec.confidence_mode is not None:
        updated.confidence_mode = ConfidenceMode(spec.confidence_mode)
    return updated


def _spec_value(key: str, value: str, text: str) -> str | float | int:
    if key == "context_turns":
        if not value.isdigit() or int(value) > 32:
            raise EvalError(f"invalid --compare {text!r}: context_turns must be a whole number from 0 to 32")
        return int(value)
    if key not in ("confidence_threshold", "out_of_domain_threshold", "cascade_threshold"):
        return value
    try:
        number = float(value)
    except ValueError:
        raise EvalError(f"invalid --compare {text!r}: {key} must be a number, got {value!r}") from None
    low = -1.0 if key == "out_of_domain_threshold" else 0.0
    if not low <= number <= 1.0:
        raise EvalError(f"invalid --compare {text!r}: {key} must be between {low:g} and 1, got {number:g}")
    return number
