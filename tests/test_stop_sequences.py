"""Stop sequences cut streamed text without emitting any part of them."""

from __future__ import annotations

import pytest

from router.stop_sequences import StopSequenceFilter


def feed_all(stop: list[str], pieces: list[str]) -> tuple[list[str], bool]:
    stop_filter = StopSequenceFilter(stop)
    emitted = [stop_filter.feed(piece) for piece in pieces]
    if not stop_filter.stopped:
        emitted.append(stop_filter.flush())
    return emitted, stop_filter.stopped


@pytest.mark.parametrize(
    ("stop", "pieces", "emitted", "stopped"),
    [
        ([], ["ab", "c"], ["ab", "c", ""], False),
        (["END"], ["abcE", "N", "Dzz"], ["abc", "", ""], True),
        (["END"], ["abcE", "NX"], ["abc", "ENX", ""], False),
        (["END"], ["xEN"], ["x", "EN"], False),
        (["\n\n", "##"], ["a\n", "#", "#b"], ["a", "\n", ""], True),
        (["aa"], ["a", "a"], ["", ""], True),
        (["abc", "b"], ["ab"], ["a"], True),
    ],
)
def test_filter_holds_back_possible_stop(stop, pieces, emitted, stopped):
    assert feed_all(stop, pieces) == (emitted, stopped)


def test_filter_ignores_text_after_stop():
    stop_filter = StopSequenceFilter(["."])

    assert stop_filter.feed("one. two") == "one"
    assert stop_filter.feed(" three") == ""
    assert stop_filter.flush() == ""
