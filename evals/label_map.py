"""Label maps: from a data set's fine labels to the router's domains or an expected fallback.

A record's expected target is the domain whose adapter should serve it, or :data:`BASE_MODEL`
when it should fall back to the base model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from evals.dataset import EvalRecord
from evals.errors import EvalError

BASE_MODEL = "(base model)"
"""The target of prompts that no adapter should serve; a column of every confusion matrix."""


@dataclass(frozen=True)
class LabelMap:
    """Fine label to domain assignments, and the labels that mean "expected fallback".

    Labels without an assignment are looked up in the router's own label map, then taken as
    domain names.
    """

    domains: Mapping[str, str] = field(default_factory=dict)
    fallback_labels: frozenset[str] = frozenset()

    def training_domain(self, label: str) -> str:
        """Return the domain an exemplar with ``label`` trains; a fallback label trains itself."""
        if label in self.fallback_labels:
            return label
        return self.domains.get(label, label)


@dataclass(frozen=True)
class RouterDomains:
    """The domains of the router under evaluation.

    ``routable`` domains are served by an adapter. ``fallback`` domains are served by the base
    model: trained fallback domains such as ``general``, and domains mapped to no adapter.
    ``label_domains`` is the router's fine label to domain map, empty when unknown.
    """

    routable: tuple[str, ...]
    fallback: frozenset[str] = frozenset()
    label_domains: Mapping[str, str] = field(default_factory=dict)


def load_label_map(
    path: str | Path | None, assignments: Sequence[str] = (), fallback_labels: Iterable[str] = ()
) -> LabelMap:
    """Build a label map from an optional JSON file and command-line assignments.

    The file is either ``{"DOMAIN": ["LABEL", ...], ...}`` (the layout of CLINC150's
    ``domains.json``) or ``{"domains": {"DOMAIN": [...]}, "fallback_labels": ["LABEL", ...]}``.
    ``assignments`` are ``LABEL=DOMAIN`` strings and override the file.

    Raises
    ------
    EvalError
        If the file is missing or malformed, or an assignment has no ``=``.
    """
    domains: dict[str, str] = {}
    fallback = set(fallback_labels)
    if path is not None:
        file_domains, file_fallback = _read_label_map_file(Path(path))
        domains.update(file_domains)
        fallback.update(file_fallback)

    for assignment in assignments:
        label, separator, domain = assignment.partition("=")
        if not separator or not label.strip() or not domain.strip():
            raise EvalError(
                f"invalid --map {assignment!r}: write LABEL=DOMAIN, for example --map weather=travel"
            )
        domains[label.strip()] = domain.strip()
    return LabelMap(domains=domains, fallback_labels=frozenset(fallback))


def expected_targets(
    records: Sequence[EvalRecord], label_map: LabelMap, router: RouterDomains, path: Path
) -> list[str]:
    """Return each record's expected target: a routable domain or :data:`BASE_MODEL`.

    Raises
    ------
    EvalError
        If a label maps to no domain of the router. The message names the first such record's
        file and line, counts the others, and gives the flags that fix it.
    """
    targets: list[str] = []
    unknown: list[EvalRecord] = []
    for record in records:
        target = _target(record.label, label_map, router)
        if target is None:
            unknown.append(record)
        targets.append(target or "")

    if unknown:
        first = unknown[0]
        domain = label_map.domains.get(first.label) or router.label_domains.get(first.label)
        others = len({record.label for record in unknown}) - 1
        what = f"label {first.label!r}" + (f" maps to domain {domain!r}, which" if domain else "")
        known = ", ".join(router.routable[:12]) + (", ..." if len(router.routable) > 12 else "")
        raise EvalError(
            f"{path}:{first.line}: {what} is not a domain of the router ({known})"
            + (f", nor are {others} other labels" if others else "")
            + f": map it with --map {first.label}=DOMAIN or --label-map FILE, "
            f"or mark it expected fallback with --fallback-label {first.label}"
        )
    return targets


def _target(label: str, label_map: LabelMap, router: RouterDomains) -> str | None:
    if label in label_map.fallback_labels:
        return BASE_MODEL
    domain = label_map.domains.get(label) or router.label_domains.get(label) or label
    if domain in router.fallback:
        return BASE_MODEL
    if domain in router.routable:
        return domain
    return None


def _read_label_map_file(path: Path) -> tuple[dict[str, str], list[str]]:
    if not path.is_file():
        raise EvalError(f"label map not found: {path}: pass a JSON file of {{DOMAIN: [LABEL, ...]}}")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise EvalError(
            f"{path}:{error.lineno}: invalid JSON ({error.msg}): write {{DOMAIN: [LABEL, ...]}}"
        ) from None
    if not isinstance(content, dict):
        raise EvalError(f"{path}: a label map must be a JSON object of {{DOMAIN: [LABEL, ...]}}")

    fallback: object = []
    if isinstance(content.get("domains"), dict):
        fallback = content.get("fallback_labels", [])
        content = content["domains"]
    if not isinstance(fallback, list) or not all(isinstance(label, str) for label in fallback):
        raise EvalError(f"{path}: 'fallback_labels' must be a list of label strings")

    domains: dict[str, str] = {}
    for domain, labels in content.items():
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise EvalError(f"{path}: domain {domain!r} must map to a list of label strings")
        for label in labels:
            known = domains.setdefault(label, domain)
            if known != domain:
                raise EvalError(
                    f"{path}: label {label!r} is listed under domains {known!r} and {domain!r}: keep one"
                )
    return domains, list(fallback)
