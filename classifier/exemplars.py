"""Labelled exemplars: the training prompts a router learns from."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


class ExemplarError(ValueError):
    """An exemplar file is missing or contains an invalid record."""


@dataclass(frozen=True)
class Exemplar:
    """A labelled training prompt.

    ``label`` is the fine-grained skill (intent) and ``domain`` the skill domain it belongs to;
    domain scores are the sum of their labels' scores. Records without a ``domain`` use the
    label as the domain.
    """

    text: str
    label: str
    domain: str


def load_exemplars(path: str | Path) -> list[Exemplar]:
    """Read exemplars from a JSONL file, or from every ``*.jsonl`` file of a folder.

    Each line is an object with ``text`` and ``label`` strings and an optional ``domain``.

    Raises
    ------
    ExemplarError
        If the path does not exist, contains no records, or a line is not a valid record. The
        message names the file and line.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if not files:
            raise ExemplarError(f"no *.jsonl files in {path}: put exemplar JSONL files there")
    elif path.is_file():
        files = [path]
    else:
        raise ExemplarError(f"exemplar path not found: {path}: pass a JSONL file or a folder")

    exemplars: list[Exemplar] = []
    for file in files:
        exemplars.extend(_read_jsonl(file))
    if not exemplars:
        raise ExemplarError(f"no exemplars in {path}: each line needs 'text' and 'label'")
    return exemplars


def _read_jsonl(file: Path) -> Iterable[Exemplar]:
    with file.open(encoding="utf-8") as stream:
        for line_number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            yield _parse_record(line, file, line_number)


def _parse_record(line: str, file: Path, line_number: int) -> Exemplar:
    where = f"{file}:{line_number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ExemplarError(f"{where}: invalid JSON ({error.msg}): write one object per line") from None
    if not isinstance(record, dict):
        raise ExemplarError(f"{where}: expected a JSON object with 'text' and 'label'")

    values = {}
    for key in ("text", "label"):
        value = record.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ExemplarError(f"{where}: missing or empty '{key}': every record needs a string '{key}'")
        values[key] = value
    domain = record.get("domain", values["label"])
    if not isinstance(domain, str) or not domain.strip():
        raise ExemplarError(f"{where}: 'domain' must be a non-empty string when present")
    return Exemplar(text=values["text"], label=values["label"], domain=domain)


def exemplars_digest(exemplars: Sequence[Exemplar]) -> str:
    """Return a sha256 hex digest of the exemplars' text, labels and domains, in order."""
    digest = hashlib.sha256()
    for exemplar in exemplars:
        record = json.dumps([exemplar.text, exemplar.label, exemplar.domain], ensure_ascii=False)
        digest.update(record.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()
