"""LogThrottle: one log line per key per interval, counting the skipped ones."""

from __future__ import annotations

from router.log_throttle import LogThrottle


def test_log_throttle_counts_skipped_events():
    now = [0.0]
    throttle = LogThrottle(60.0, clock=lambda: now[0])

    first = throttle.skipped_if_due("math")
    now[0] = 30.0
    repeated = [throttle.skipped_if_due("math") for _ in range(3)]
    other = throttle.skipped_if_due("code")
    now[0] = 61.0
    after_interval = throttle.skipped_if_due("math")
    next_one = throttle.skipped_if_due("math")

    assert first == 0
    assert repeated == [None, None, None]
    assert other == 0
    assert after_interval == 3
    assert next_one is None
