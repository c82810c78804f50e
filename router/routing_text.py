"""What text the classifier reads from a request.

Rules, in order:

- The latest human request decides. A human request is a ``user`` message with text; ``content``
  as a string and as a list of text parts give the same text, and non-text parts (images, audio)
  are ignored.
- Tool results are not human requests: ``tool`` and ``function`` messages, and ``user`` messages
  whose parts are only tool results, are skipped, so an agent loop routes on the latest human text.
  Assistant turns are skipped too.
- A latest ``user`` turn with no text at all (an image only, or empty) is not replaced by an older
  turn: its request text is empty, and the earlier human turns are offered as context only.
- Earlier human turns, most recent first, are context for follow-ups. The system prompt is
  ignored unless configured to count as the oldest context turn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

TOOL_RESULT_PART_TYPES = frozenset({"tool_result", "function_result"})
"""Content part types that carry tool output inside a ``user`` message."""

_SYSTEM_ROLES = frozenset({"system", "developer"})


@dataclass(frozen=True)
class RoutingInput:
    """The texts a conversation offers the router.

    ``request`` is the latest human request ("" when the latest user turn has no text);
    ``context`` contains earlier human turns, most recent first. ``request_turn`` and
    ``context_turns`` are indexes into the request's ``messages``.
    """

    request: str
    request_turn: int | None = None
    context: tuple[str, ...] = ()
    context_turns: tuple[int, ...] = ()


def message_text(content: Any) -> str:
    """Return the text of a message ``content``: a string, or the text parts of a list of parts.

    Non-text parts (images, audio, tool results) are ignored.
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


def chat_routing_input(
    messages: Sequence[Mapping[str, Any]], *, context_turns: int = 3, include_system: bool = False
) -> RoutingInput:
    """Choose the request text and context turns of a chat conversation (rules in the module doc).

    Parameters
    ----------
    messages : sequence of OpenAI chat messages
    context_turns : int
        Most earlier human turns to return as context.
    include_system : bool
        Append the system prompt as the oldest context turn.
    """
    request: str | None = None
    request_turn: int | None = None
    context: list[str] = []
    turns: list[int] = []

    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.get("role") != "user":
            continue
        content = message.get("content")
        text = message_text(content)
        if request is None:
            if not text and _only_tool_results(content):
                continue
            request, request_turn = text, index
        elif text and len(context) < context_turns:
            context.append(text)
            turns.append(index)

    if include_system:
        system = _system_text(messages)
        if system:
            context.append(system)
            turns.append(next(i for i, m in enumerate(messages) if m.get("role") in _SYSTEM_ROLES))

    return RoutingInput(
        request=request or "",
        request_turn=request_turn,
        context=tuple(context),
        context_turns=tuple(turns),
    )


def chat_routing_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """Return the latest human request of a conversation, or "" when it has none."""
    return chat_routing_input(messages, context_turns=0).request


def completion_routing_text(prompt: str | Sequence[str]) -> str:
    """Return the routing text of a ``/v1/completions`` prompt (a string or the last of a list)."""
    if isinstance(prompt, str):
        return prompt
    return prompt[-1] if prompt else ""


def _only_tool_results(content: Any) -> bool:
    if not isinstance(content, list) or not content:
        return False
    return all(isinstance(part, Mapping) and part.get("type") in TOOL_RESULT_PART_TYPES for part in content)


def _system_text(messages: Sequence[Mapping[str, Any]]) -> str:
    texts = [message_text(m.get("content")) for m in messages if m.get("role") in _SYSTEM_ROLES]
    return "\n".join(text for text in texts if text)
