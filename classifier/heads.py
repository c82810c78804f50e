"""Router heads: map embeddings to per-label probabilities.

Every head follows the scikit-learn contract: parameters are set in ``__init__``, ``fit(X, y)``
validates its input, stores learned state in attributes ending in ``_`` and returns ``self``, and
``predict_proba`` checks that the head is fitted. Learned state is plain numpy arrays (see
``to_arrays``/``from_arrays``) so a saved router never needs pickle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol

import numpy as np

from classifier.index import ExemplarIndex


class NotFittedError(RuntimeError):
    """A head was used before ``fit``."""


class Head(Protocol):
    """Common interface of the router heads."""

    kind: ClassVar[str]
    classes_: np.ndarray

    def fit(self, X: np.ndarray, y: Sequence[str]) -> Head: ...

    def predict_proba(self, X: np.ndarray) -> np.ndarray: ...

    def get_params(self) -> dict[str, Any]: ...

    def to_arrays(self) -> dict[str, np.ndarray]: ...


def _validate_training_data(X: np.ndarray, y: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float32)
    labels = np.asarray(y, dtype=str)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D of shape (n_samples, n_features), got shape {X.shape}")
    if len(labels) != X.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but y has {len(labels)} labels")
    n_classes = len(np.unique(labels))
    if n_classes < 2:
        raise ValueError(f"a router needs at least 2 labels, got {n_classes} class")
    return X, labels


class LogisticHead:
    """Multinomial logistic regression over the fine labels, scored in numpy.

    Parameters
    ----------
    C : float
        Inverse regularisation strength, as in :class:`sklearn.linear_model.LogisticRegression`.
    max_iter : int
        Solver iterations.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Label names, in column order of ``predict_proba``.
    coef_ : ndarray of shape (n_classes, n_features)
    intercept_ : ndarray of shape (n_classes,)
    """

    kind: ClassVar[str] = "logistic"

    def __init__(self, C: float = 10.0, max_iter: int = 2000) -> None:
        self.C = C
        self.max_iter = max_iter

    def get_params(self) -> dict[str, Any]:
        """Return the constructor parameters."""
        return {"C": self.C, "max_iter": self.max_iter}

    def fit(self, X: np.ndarray, y: Sequence[str]) -> LogisticHead:
        """Learn weights from embeddings ``X`` of shape (n_samples, n_features) and labels ``y``."""
        from sklearn.linear_model import LogisticRegression

        X, labels = _validate_training_data(X, y)
        model = LogisticRegression(C=self.C, max_iter=self.max_iter)
        model.fit(X, labels)

        coef = model.coef_.astype(np.float32)
        intercept = model.intercept_.astype(np.float32)
        if len(model.classes_) == 2:
            # scikit-learn stores one row for two classes; a zero row for the first class gives
            # the same probabilities through the softmax.
            coef = np.vstack([np.zeros_like(coef), coef])
            intercept = np.concatenate([np.zeros_like(intercept), intercept])
        self.classes_ = model.classes_.astype(str)
        self.coef_ = coef
        self.intercept_ = intercept
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Return label probabilities of shape (n_samples, n_classes)."""
        if not hasattr(self, "coef_"):
            raise NotFittedError("LogisticHead is not fitted: call fit(X, y) first")
        logits = np.asarray(X, dtype=np.float32) @ self.coef_.T + self.intercept_
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Return the learned state as named arrays."""
        return {"coef": self.coef_, "intercept": self.intercept_}

    @classmethod
    def from_arrays(
        cls, params: Mapping[str, Any], classes: Sequence[str], arrays: Mapping[str, np.ndarray]
    ) -> LogisticHead:
        """Rebuild a fitted head from ``get_params()``, label names and ``to_arrays()``."""
        head = cls(**params)
        head.classes_ = np.asarray(classes, dtype=str)
        head.coef_ = np.asarray(arrays["coef"], dtype=np.float32)
        head.intercept_ = np.asarray(arrays["intercept"], dtype=np.float32)
        if head.coef_.shape[0] != len(head.classes_):
            raise ValueError(
                f"logistic head has {head.coef_.shape[0]} weight rows for {len(head.classes_)} labels"
            )
        return head


class KnnHead:
    """k-nearest-neighbour vote over the exemplars, searched with an :class:`ExemplarIndex`.

    The index structure follows the exemplar count (``kind="auto"``): exact search below
    ``classifier.index.HNSW_MIN_EXEMPLARS`` exemplars, an approximate HNSW graph from there on.

    Each of the ``k`` nearest exemplars votes for its label with weight
    ``exp(similarity / temperature)``; the votes are normalised to sum to 1.

    Parameters
    ----------
    k : int
        Neighbours that vote.
    temperature : float
        Softmax temperature over cosine similarities; lower sharpens the vote.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    index_ : ExemplarIndex
        The exemplar embeddings; a loaded router may share it with its own exemplar index.
    label_ids_ : ndarray of shape (n_exemplars,)
        Column of ``classes_`` for each exemplar.
    """

    kind: ClassVar[str] = "knn"

    def __init__(self, k: int = 10, temperature: float = 0.05) -> None:
        self.k = k
        self.temperature = temperature

    def get_params(self) -> dict[str, Any]:
        """Return the constructor parameters."""
        return {"k": self.k, "temperature": self.temperature}

    def fit(self, X: np.ndarray, y: Sequence[str]) -> KnnHead:
        """Index embeddings ``X`` of shape (n_samples, n_features) with their labels ``y``."""
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        X, labels = _validate_training_data(X, y)
        self.classes_, self.label_ids_ = np.unique(labels, return_inverse=True)
        self.index_ = ExemplarIndex(X)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Return label probabilities of shape (n_samples, n_classes)."""
        if not hasattr(self, "index_"):
            raise NotFittedError("KnnHead is not fitted: call fit(X, y) first")
        similarities, ids = self.index_.search(X, self.k)
        weights = np.exp((similarities - similarities[:, :1]) / self.temperature)
        weights[ids < 0] = 0.0

        proba = np.zeros((len(similarities), len(self.classes_)), dtype=np.float32)
        rows = np.repeat(np.arange(len(similarities)), ids.shape[1])
        np.add.at(proba, (rows, self.label_ids_[np.maximum(ids, 0)].ravel()), weights.ravel())
        return proba / proba.sum(axis=1, keepdims=True)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Return the learned state as named arrays."""
        return {"embeddings": self.index_.vectors(), "label_ids": self.label_ids_}

    @classmethod
    def from_arrays(
        cls,
        params: Mapping[str, Any],
        classes: Sequence[str],
        arrays: Mapping[str, np.ndarray],
        *,
        index: ExemplarIndex | None = None,
    ) -> KnnHead:
        """Rebuild a fitted head from ``get_params()``, label names and ``to_arrays()``.

        ``index``, when it contains exactly ``arrays["embeddings"]`` in the same order, is shared
        instead of building a second index: an HNSW graph over 100,000 exemplars took 30 to 70
        seconds to build on one thread of a busy 2-vCPU machine (``benchmarks/exemplar_search.py``).
        Any other ``index`` is ignored.
        """
        head = cls(**params)
        head.classes_ = np.asarray(classes, dtype=str)
        head.label_ids_ = np.asarray(arrays["label_ids"], dtype=np.int64)
        embeddings = np.asarray(arrays["embeddings"], dtype=np.float32)
        if (
            index is not None
            and len(index) == len(embeddings)
            and np.array_equal(index.vectors(), embeddings)
        ):
            head.index_ = index
        else:
            head.index_ = ExemplarIndex(embeddings)
        if len(head.label_ids_) != len(head.index_):
            raise ValueError(
                f"k-NN head has {len(head.label_ids_)} label ids for {len(head.index_)} exemplar vectors"
            )
        return head


HEADS: dict[str, type[LogisticHead] | type[KnnHead]] = {
    LogisticHead.kind: LogisticHead,
    KnnHead.kind: KnnHead,
}


def make_head(kind: str, **params: Any) -> LogisticHead | KnnHead:
    """Create an unfitted head by its kind (``"logistic"`` or ``"knn"``)."""
    try:
        head_class = HEADS[kind]
    except KeyError:
        raise ValueError(f"unknown head {kind!r}: use one of {', '.join(HEADS)}") from None
    return head_class(**params)
