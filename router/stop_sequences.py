"""Cut generated text at the first stop sequence, also when the text arrives in pieces."""

from __future__ import annotations

from collections.abc import Sequence


class StopSequenceFilter:
    """Pass streamed text through until a stop sequence appears, and drop it and all after it.

    Text that could be the start of a stop sequence is held back until the next piece shows
    whether it is one, so no part of a stop sequence is ever emitted.

    Examples
    --------
    >>> f = StopSequenceFilter(["\\n\\n"])
    >>> f.feed("a\\n"), f.feed("\\nb"), f.stopped
    ('a', '', True)
    """

    def __init__(self, stop: Sequence[str]) -> None:
        self._stop = tuple(sequence for sequence in stop if sequence)
        self._pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Add generated ``text``; return the part that is safe to emit now."""
        if self.stopped:
            return ""
        self._pending += text

        cut = min((i for i in (self._pending.find(s) for s in self._stop) if i >= 0), default=-1)
        if cut >= 0:
            emitted, self._pending, self.stopped = self._pending[:cut], "", True
            return emitted

        held = self._held_length()
        emitted = self._pending[: len(self._pending) - held]
        self._pending = self._pending[len(self._pending) - held :]
        return emitted

    def flush(self) -> str:
        """Return the text held back at the end of generation (none after a stop)."""
        emitted, self._pending = self._pending, ""
        return emitted

    def _held_length(self) -> int:
        # The maximum length of a pending-text suffix that is a proper prefix of a stop sequence.
        longest = 0
        for sequence in self._stop:
            for length in range(min(len(sequence) - 1, len(self._pending)), longest, -1):
                if self._pending.endswith(sequence[:length]):
                    longest = length
                    break
        return longest
