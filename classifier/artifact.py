"""Save and load router artifacts: a folder of JSON, ``.npy`` arrays and JSONL, never pickle.

Layout::

    router.json        format version, embedding model, head, domains, labels, thresholds,
                       adapter map, training-data hash, library versions
    head.<name>.npy    the head's learned arrays
    exemplars.faiss    the exemplar embeddings as a faiss inner-product index
    exemplars.jsonl    the exemplars, in index order

``exemplars.faiss`` is an ``IndexFlatIP`` when the router searches its exemplars exactly, and the
``IndexHNSWFlat`` graph itself when it searches them with HNSW, so loading skips rebuilding the
graph. ``router.json`` names the structure under ``index.kind``. Both index types return their
vectors through ``reconstruct_n``, so versions that only read flat indexes still load either
file, and build their own exact index. An artifact without ``index.kind`` (written before the
structure was chosen by size) is loaded with ``kind="auto"``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

import numpy as np

from classifier.decision import ConfidenceMode, Thresholds
from classifier.domain_router import DomainRouter
from classifier.embedding import Embedder
from classifier.exemplars import ExemplarError, load_exemplars
from classifier.heads import HEADS, KnnHead
from classifier.index import ExemplarIndex

FORMAT = "adapter-router/router"
FORMAT_VERSION = 1
_LIBRARIES = ("adapter-router", "sentence-transformers", "scikit-learn", "faiss-cpu", "numpy")


class ArtifactError(ValueError):
    """A router artifact is missing, malformed, or does not match the embedding model."""


def save_router(
    router: DomainRouter, path: str | Path, *, calibration: Mapping[str, Any] | None = None
) -> Path:
    """Write ``router`` to the folder ``path`` and return it.

    The files are written to a temporary folder next to ``path`` and moved into place, so a
    reader never sees a half-written artifact. ``calibration`` (the target and validation
    figures behind the thresholds) is stored as ``calibration`` in ``router.json``.
    """
    import faiss

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))

    arrays = router.head.to_arrays()
    for name, array in arrays.items():
        np.save(staging / f"head.{name}.npy", array, allow_pickle=False)
    faiss.write_index(router.index.to_faiss(), str(staging / "exemplars.faiss"))
    with (staging / "exemplars.jsonl").open("w", encoding="utf-8") as stream:
        for exemplar in router.exemplars:
            record = {"text": exemplar.text, "label": exemplar.label, "domain": exemplar.domain}
            stream.write(json.dumps(record, ensure_ascii=False) + "\n")
    manifest = _manifest(router, sorted(arrays))
    if calibration is not None:
        manifest["calibration"] = dict(calibration)
    (staging / "router.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")

    if path.exists():
        _replace_folder(staging, path)
    else:
        os.replace(staging, path)
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read and check ``router.json`` of the artifact folder ``path``."""
    manifest_path = Path(path) / "router.json"
    if not manifest_path.is_file():
        raise ArtifactError(
            f"router artifact not found: {manifest_path} does not exist: "
            "train one with `adapter-router train --data PATH --out DIR`"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ArtifactError(f"{manifest_path}: invalid JSON ({error.msg}): retrain the router") from None
    if manifest.get("format") != FORMAT:
        raise ArtifactError(
            f"{manifest_path}: not an adapter-router artifact (format {manifest.get('format')!r})"
        )
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{manifest_path}: format version {manifest.get('format_version')} is not supported "
            f"(this version reads {FORMAT_VERSION}): retrain the router"
        )
    return manifest


def load_router(path: str | Path, embedder: Embedder) -> DomainRouter:
    """Load the artifact folder ``path`` for use with ``embedder``.

    Raises
    ------
    ArtifactError
        If files are missing or malformed, or ``embedder`` is not the embedding model the router
        was trained with (the message names both models).
    """
    path = Path(path)
    manifest = read_manifest(path)
    trained_with = manifest["embedding_model"]
    if trained_with["name"] != embedder.name or trained_with["dimension"] != embedder.dimension:
        raise ArtifactError(
            f"embedding model mismatch: router {path} was trained with {trained_with['name']} "
            f"(dimension {trained_with['dimension']}) but the configured model is {embedder.name} "
            f"(dimension {embedder.dimension}): configure {trained_with['name']} or retrain the router"
        )

    head_config = manifest["head"]
    head_class = HEADS.get(head_config["type"])
    if head_class is None:
        raise ArtifactError(f"{path}: unknown head type {head_config['type']!r}")
    try:
        index = _load_index(path, manifest, embedder.dimension)
        arrays = {
            name: np.load(path / f"head.{name}.npy", allow_pickle=False) for name in head_config["arrays"]
        }
        if head_class is KnnHead:
            head = KnnHead.from_arrays(head_config["params"], manifest["labels"], arrays, index=index)
        else:
            head = head_class.from_arrays(head_config["params"], manifest["labels"], arrays)
        exemplars = load_exemplars(path / "exemplars.jsonl")
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        if isinstance(error, ExemplarError | ArtifactError):
            raise ArtifactError(str(error)) from error
        raise ArtifactError(
            f"router artifact {path} is incomplete or corrupt ({error}): retrain the router"
        ) from error

    thresholds = manifest["thresholds"]
    confidence_mode = manifest.get("confidence_mode", "score")
    if confidence_mode not in {mode.value for mode in ConfidenceMode}:
        raise ArtifactError(f"{path}: unknown confidence_mode {confidence_mode!r}: retrain the router")
    return DomainRouter(
        embedder=embedder,
        head=head,
        exemplars=exemplars,
        index=index,
        thresholds=Thresholds(
            confidence=thresholds["confidence"],
            domains=thresholds.get("domains", {}),
            out_of_domain=thresholds.get("out_of_domain", 0.0),
        ),
        fallback_domains=manifest.get("fallback_domains", []),
        confidence_mode=confidence_mode,
        adapters=manifest.get("adapters", {}),
        metadata=manifest.get("training", {}),
    )


def _load_index(path: Path, manifest: Mapping[str, Any], dimension: int) -> ExemplarIndex:
    """Read ``exemplars.faiss`` with the structure ``router.json`` names, ``auto`` if it names none."""
    import faiss

    kind = manifest.get("index", {}).get("kind", "auto")
    index = ExemplarIndex.from_faiss(faiss.read_index(str(path / "exemplars.faiss")), kind=kind)
    if len(index) != manifest["exemplars"] or index.dimension != dimension:
        raise ArtifactError(
            f"router artifact {path}: exemplars.faiss contains {len(index)} vectors of dimension "
            f"{index.dimension}, expected {manifest['exemplars']} of dimension {dimension}: "
            "retrain the router"
        )
    return index


def _manifest(router: DomainRouter, array_names: list[str]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "embedding_model": {"name": router.embedder.name, "dimension": router.embedder.dimension},
        "head": {
            "type": router.head.kind,
            "params": router.head.get_params(),
            "arrays": array_names,
        },
        "domains": router.domains,
        "labels": [str(label) for label in router.head.classes_],
        "label_domains": router.label_domains,
        "fallback_domains": sorted(router.fallback_domains),
        "adapters": router.adapters,
        "confidence_mode": str(router.confidence_mode),
        "thresholds": {
            "confidence": router.thresholds.confidence,
            "domains": dict(router.thresholds.domains),
            "out_of_domain": router.thresholds.out_of_domain,
        },
        "exemplars": len(router.exemplars),
        "index": router.index.get_params(),
        "training": router.metadata,
        "versions": _library_versions(),
    }


def _library_versions() -> dict[str, str]:
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = package_metadata.version(name)
        except package_metadata.PackageNotFoundError:
            continue
    return versions


def _replace_folder(staging: Path, path: Path) -> None:
    """Swap ``staging`` into ``path``: rename the old folder aside, then the new one in."""
    import shutil

    retired = path.with_name(f".{path.name}.old")
    shutil.rmtree(retired, ignore_errors=True)
    os.replace(path, retired)
    os.replace(staging, path)
    shutil.rmtree(retired, ignore_errors=True)
