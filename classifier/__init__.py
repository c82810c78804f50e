"""Text in, domain scores out: embedding, router heads, fallback decisions and router artifacts.

This package has no HTTP and treats adapters only as names stored in the artifact.
"""

from classifier.artifact import ArtifactError, load_router, read_manifest, save_router
from classifier.batching import BatchingEmbedder
from classifier.cascade import CascadeRouter, CascadeStage
from classifier.decision import ConfidenceMode, FallbackReason, Neighbour, Prediction, Thresholds
from classifier.domain_router import DomainRouter
from classifier.embedding import (
    DEFAULT_EMBEDDING_MODEL,
    Embedder,
    EmbeddingModelError,
    SentenceEmbedder,
)
from classifier.exemplars import Exemplar, ExemplarError, load_exemplars
from classifier.heads import KnnHead, LogisticHead, make_head
from classifier.index import ExemplarIndex
from classifier.onnx_embedding import OnnxEmbedder
from classifier.static_embedding import StaticEmbedder
from classifier.training import train_router

__all__ = [
    "DEFAULT_EMBEDDING_MODEL",
    "ArtifactError",
    "BatchingEmbedder",
    "CascadeRouter",
    "CascadeStage",
    "ConfidenceMode",
    "DomainRouter",
    "Embedder",
    "EmbeddingModelError",
    "Exemplar",
    "ExemplarError",
    "ExemplarIndex",
    "FallbackReason",
    "KnnHead",
    "LogisticHead",
    "Neighbour",
    "OnnxEmbedder",
    "Prediction",
    "SentenceEmbedder",
    "StaticEmbedder",
    "Thresholds",
    "load_exemplars",
    "load_router",
    "make_head",
    "read_manifest",
    "save_router",
    "train_router",
]
