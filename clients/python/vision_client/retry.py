"""When and how long the SDK waits before trying a failed call again: only on UNAVAILABLE and
RESOURCE_EXHAUSTED, with exponential backoff and full jitter, never sooner than the server's
RetryInfo asks, and never past the caller's deadline."""

from __future__ import annotations

import random
from dataclasses import dataclass

import grpc

from vision_client.errors import VisionError

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


@dataclass(frozen=True)
class RetryPolicy:
    """`max_attempts` counts the first try; 1 turns retries off."""

    max_attempts: int = 5
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 10.0
    multiplier: float = 2.0

    def delay_s(self, error: VisionError, attempt: int, rng: random.Random,
                *, streaming: bool = False) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None when not to retry. A message
        over gRPC's size limit is RESOURCE_EXHAUSTED without RetryInfo: sending it again cannot
        help, so only a RESOURCE_EXHAUSTED that carries RetryInfo is retried. `streaming`: the
        caller resends only what has no result, so a stream lost while writing is retried too."""
        if attempt >= self.max_attempts:
            return None
        if not (error.code() in RETRYABLE or (streaming and lost_while_writing(error))):
            return None
        if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and error.retry_delay_s is None:
            return None
        ceiling = min(self.max_backoff_s,
                      self.initial_backoff_s * self.multiplier ** (attempt - 1))
        # Full jitter spreads the retries of many clients that failed at the same moment.
        backoff = rng.uniform(0, ceiling)
        return max(backoff, error.retry_delay_s or 0.0)


NO_RETRY = RetryPolicy(max_attempts=1)


def lost_while_writing(error: grpc.aio.AioRpcError) -> bool:
    """grpc-python ends a call whose message could not be sent (the connection went away under
    a streaming write) with a local INTERNAL status instead of UNAVAILABLE; it names the failed
    send operation in the debug string, and no server status or trailer came with it."""
    return (error.code() == grpc.StatusCode.INTERNAL and not error.trailing_metadata()
            and "SendMessageOperation" in (error.debug_error_string() or ""))
