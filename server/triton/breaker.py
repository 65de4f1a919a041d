"""A circuit breaker for the shared Triton channel: after `failure_threshold` consecutive
backend failures it opens and calls fail at once with UNAVAILABLE + RetryInfo instead of piling
onto a backend that is down; after `reset_after_s` one probe call is let through (half-open),
and its outcome closes the breaker or opens it again. Caller mistakes (bad image, unknown model)
and deadlines are not backend failures and leave it as it is.

Health's readiness checks hold it open too: once Triton stops answering them (hung, stopped,
gone) new calls fail at once with UNAVAILABLE + RetryInfo rather than each waiting its whole
deadline, and the calls already waiting keep theirs; the hold ends when Triton answers again.

`state` is public so health (NOT_SERVING while open) and metrics can read it; an open breaker
reads HALF_OPEN once its delay has passed, so health recovers even when no call arrives."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from server.domain import BackendUnavailableError


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(self, failure_threshold: int, reset_after_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self._clock = clock
        self._state = BreakerState.CLOSED
        self.failures = 0
        self._opened_at = 0.0
        self._probing = False
        self.held = False  # set by health while Triton does not answer its readiness checks

    @property
    def state(self) -> BreakerState:
        if self.held:
            return BreakerState.OPEN
        if (self._state is BreakerState.OPEN
                and self._clock() - self._opened_at >= self.reset_after_s):
            self._state = BreakerState.HALF_OPEN
        return self._state

    def before_call(self) -> None:
        """Raises BackendUnavailableError when the call must not reach the backend."""
        state = self.state
        if state is BreakerState.CLOSED:
            return
        if self.held:
            raise BackendUnavailableError(retry_after_s=self.reset_after_s)
        if state is BreakerState.OPEN:
            waited = self._clock() - self._opened_at
            raise BackendUnavailableError(retry_after_s=self.reset_after_s - waited)
        if self._probing:  # half-open: one probe at a time, the others fail fast
            raise BackendUnavailableError(retry_after_s=self.reset_after_s)
        self._probing = True

    def hold_open(self, unresponsive: bool) -> None:
        """Health's verdict on the backend: while unresponsive, every call fails fast."""
        self.held = unresponsive

    def succeeded(self) -> None:
        self.failures = 0
        self._probing = False
        self._state = BreakerState.CLOSED

    def failed(self) -> None:
        self._probing = False
        self.failures += 1
        if self._state is BreakerState.HALF_OPEN or self.failures >= self.failure_threshold:
            self._state = BreakerState.OPEN
            self._opened_at = self._clock()

    def settled(self) -> None:
        """The call ended without telling anything about the backend (caller error, deadline)."""
        self._probing = False
