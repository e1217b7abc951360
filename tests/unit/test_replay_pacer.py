"""The replayer's pace counts from the first message it sends: time spent before it (reading the source, the first
chunk's labels) is not owed back as a burst at the start of a paced run."""

from __future__ import annotations

import time

from streams.replay import ReplayOptions, _Pacer


def test_time_before_the_first_message_is_not_made_up_with_a_burst() -> None:
    pacer = _Pacer(ReplayOptions(rate=200))
    time.sleep(0.2)  # e.g. the source's first chunk being read
    began = time.monotonic()
    for _ in range(21):
        pacer.wait(0)
    assert time.monotonic() - began >= 0.09  # 20 intervals at 200/s: 0.1 s, not 0 (within the pacer's 2 ms slack)
