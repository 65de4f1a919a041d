"""The SDK's retry decisions (vision_client.retry): which codes are retried, RetryInfo as the
lower bound of the wait, jitter within the exponential ceiling, and the attempt budget."""

from __future__ import annotations

import random

import grpc
from grpc.aio import Metadata

from vision_client.errors import StatusDetails, VisionError, vision_error
from vision_client.retry import RetryPolicy

POLICY = RetryPolicy(max_attempts=4, initial_backoff_s=0.5, max_backoff_s=1.5, multiplier=2.0)


def error(code: grpc.StatusCode, retry_delay_s: float | None = None) -> VisionError:
    raw = grpc.aio.AioRpcError(code, Metadata(), Metadata(), "x")
    return VisionError(raw, StatusDetails(code=code, message="x", retry_delay_s=retry_delay_s))


def test_unavailable_backs_off_within_the_exponential_ceiling() -> None:
    rng = random.Random(7)
    for attempt, ceiling in ((1, 0.5), (2, 1.0), (3, 1.5)):
        delays = [POLICY.delay_s(error(grpc.StatusCode.UNAVAILABLE), attempt, rng)
                  for _ in range(200)]
        assert all(d is not None and 0 <= d <= ceiling for d in delays)
        assert max(d for d in delays if d is not None) > ceiling * 0.9  # jitter spans it


def test_retry_info_is_the_least_wait() -> None:
    delay = POLICY.delay_s(error(grpc.StatusCode.RESOURCE_EXHAUSTED, 3.0), 1, random.Random(1))
    assert delay == 3.0


def test_not_retried() -> None:
    rng = random.Random(1)
    assert POLICY.delay_s(error(grpc.StatusCode.INVALID_ARGUMENT), 1, rng) is None
    # over the message size limit: no RetryInfo, sending it again cannot help
    assert POLICY.delay_s(error(grpc.StatusCode.RESOURCE_EXHAUSTED), 1, rng) is None
    assert POLICY.delay_s(error(grpc.StatusCode.UNAVAILABLE), 4, rng) is None
    assert POLICY.delay_s(error(grpc.StatusCode.INTERNAL), 1, rng, streaming=True) is None


def test_typed_error_without_details_keeps_the_grpc_status() -> None:
    typed = vision_error(grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, Metadata(), Metadata(), "gone"))
    assert type(typed).__name__ == "UnavailableError"
    assert isinstance(typed, grpc.aio.AioRpcError)
    assert (typed.code(), typed.status.message, typed.reason) == (
        grpc.StatusCode.UNAVAILABLE, "gone", "")
