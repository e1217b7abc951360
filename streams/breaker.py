"""A circuit breaker for the online store: after ``failures`` consecutive failed calls, callers are told at once
that the store is unavailable for ``cooldown_s`` seconds, instead of each waiting out its own socket timeout.

States: **closed** (calls go through) → ``failures`` failures in a row → **open** (no call for ``cooldown_s``) →
**half-open** (one trial call is let through; others are still refused) → the trial's success closes the breaker,
its failure opens it again for another ``cooldown_s``. Thread-safe: the API scores from a thread pool.

Pure: time comes from the clock given (monotonic seconds).
"""

from __future__ import annotations

import threading
from typing import Literal

from fraudpipe.clock import Clock

__all__ = ["Breaker"]

State = Literal["closed", "open", "half_open"]


class Breaker:
    """See the module docstring. ``allows()`` before a call, then ``succeeded()`` or ``failed()`` after it."""

    def __init__(self, failures: int, cooldown_s: float, clock: Clock) -> None:
        if failures < 1 or cooldown_s < 0:
            raise ValueError("failures must be >= 1 and cooldown_s >= 0")
        self.failures, self.cooldown_s, self.clock = failures, cooldown_s, clock
        self._lock = threading.Lock()
        self._failed = 0
        self._opened_at: float | None = None
        self._trial = False

    @property
    def state(self) -> State:
        with self._lock:
            return self._state()

    def _state(self) -> State:
        if self._opened_at is None:
            return "closed"
        if self.clock.monotonic() - self._opened_at < self.cooldown_s:
            return "open"
        return "half_open"

    def allows(self) -> bool:
        """True when a call may be made now (closed, or the one trial of half-open)."""
        with self._lock:
            state = self._state()
            if state == "closed":
                return True
            if state == "half_open" and not self._trial:
                self._trial = True
                return True
            return False

    def succeeded(self) -> None:
        """A call went through: the breaker closes."""
        with self._lock:
            self._failed, self._opened_at, self._trial = 0, None, False

    def failed(self) -> None:
        """A call failed: counted; the ``failures``-th in a row (or a failed trial) opens the breaker."""
        with self._lock:
            self._failed += 1
            if self._trial or self._failed >= self.failures:
                self._opened_at = self.clock.monotonic()
            self._trial = False
