"""The text the classifier sees for a request."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def message_text(content: Any) -> str:
    """Return the text of a message ``content``: a string, or a list of parts whose text parts count.

    Non-text parts (images, audio) are ignored.
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = [
        part.get("text", "")
        for part in content
        if isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str)
    ]
    return "\n".join(text for text in texts if text)


def chat_routing_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """Return the routing text of a chat conversation: the text of the latest user turn.

    Returns an empty string when the conversation has no user turn with text; the caller then
    falls back to the base model with reason ``no_text``.
    """
    # TODO: combine earlier user turns for follow-ups, and pool chunks of text longer than the
    # embedding model's window instead of letting it truncate.
    for message in reversed(messages):
        if message.get("role") == "user":
            return message_text(message.get("content"))
    return ""


def completion_routing_text(prompt: str | Sequence[str]) -> str:
    """Return the routing text of a ``/v1/completions`` prompt (a string or the last of a list)."""
    if isinstance(prompt, str):
        return prompt
    return prompt[-1] if prompt else ""
