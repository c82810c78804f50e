"""Labelled evaluation records read from JSONL, with the line each came from."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evals.errors import EvalError
from router.routing_text import chat_routing_text


@dataclass(frozen=True)
class EvalRecord:
    """One labelled prompt.

    ``text`` is the routing text: the record's ``text``, or for a chat record its latest human
    request, chosen as the gateway chooses it ("" when the latest user turn has no text).
    ``messages`` is kept so that conversations are routed with the gateway's conversation
    rules, in process or through a gateway.
    """

    text: str
    label: str
    split: str | None
    line: int
    messages: tuple[Mapping[str, Any], ...] | None = None
    fields: Mapping[str, str] = field(default_factory=dict)
    """The record's other string fields (``case``, ``source``...), for ``--group-by``."""


def load_records(path: str | Path) -> list[EvalRecord]:
    """Read every record of a labelled JSONL file.

    Each line is an object with ``label`` (a string), ``text`` (a string) or ``messages`` (a
    list of chat messages), and an optional ``split`` string. Blank lines are skipped.

    Raises
    ------
    EvalError
        If the file does not exist, contains no records, or a line is not a valid record. The
        message names the file, the line and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"data file not found: {path}: pass a labelled JSONL file")

    records = []
    with path.open(encoding="utf-8") as stream:
        for line_number, line in enumerate(stream, start=1):
            if line.strip():
                records.append(_parse_record(line, path, line_number))
    if not records:
        raise EvalError(f"{path}: no records: write one JSON object per line with 'text' and 'label'")
    return records


def select_split(records: Sequence[EvalRecord], split: str | None, path: Path) -> list[EvalRecord]:
    """Return the records of ``split`` (all records when ``split`` is None).

    Raises
    ------
    EvalError
        If no record belongs to ``split``; the message lists the splits present.
    """
    if split is None:
        return list(records)
    selected = [record for record in records if record.split == split]
    if not selected:
        present = sorted({record.split for record in records if record.split is not None})
        raise EvalError(
            f"{path}: no records with split {split!r}: "
            + (f"use one of {', '.join(present)}" if present else "the records have no 'split' field")
        )
    return selected


def file_sha256(path: Path) -> str:
    """Return the sha256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _parse_record(line: str, path: Path, line_number: int) -> EvalRecord:
    where = f"{path}:{line_number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise EvalError(f"{where}: invalid JSON ({error.msg}): write one JSON object per line") from None
    if not isinstance(record, dict):
        raise EvalError(
            f"{where}: expected a JSON object with 'text' and 'label', got {type(record).__name__}"
        )

    label = record.get("label")
    if not isinstance(label, str) or not label.strip():
        raise EvalError(f"{where}: missing or empty 'label': give every record a string 'label'")

    split = record.get("split")
    if split is not None and not isinstance(split, str):
        raise EvalError(f"{where}: 'split' must be a string such as \"test\", got {split!r}")

    messages = None
    text = record.get("text")
    if text is None and "messages" in record:
        messages = _parse_messages(record["messages"], where)
        text = chat_routing_text(messages)
        if not any(message.get("role") == "user" for message in messages):
            raise EvalError(f"{where}: 'messages' has no user turn: add one or give 'text'")
    elif not isinstance(text, str) or not text.strip():
        raise EvalError(f"{where}: missing or empty 'text': give every record 'text' or chat 'messages'")

    fields = {
        key: value
        for key, value in record.items()
        if isinstance(value, str) and key not in ("text", "label", "split")
    }
    return EvalRecord(text=text, label=label, split=split, line=line_number, messages=messages, fields=fields)


def _parse_messages(value: object, where: str) -> tuple[Mapping[str, Any], ...]:
    if not isinstance(value, list) or not all(isinstance(message, dict) for message in value):
        raise EvalError(f"{where}: 'messages' must be a list of objects with 'role' and 'content'")
    return tuple(value)
