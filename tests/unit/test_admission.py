"""Admission control without a server: slots, the wait queue, per-peer shares and deadlines."""

from __future__ import annotations

import asyncio

import pytest

from server.domain import DeadlineExceededError, ResourceExhaustedError
from server.interceptors.admission import Admission, AdmissionLimits


def limits(**overrides: float) -> AdmissionLimits:
    base: dict[str, float] = {"max_in_flight": 4, "max_waiting": 2, "max_wait_s": 5.0,
                              "peer_share": 0.5, "min_deadline_s": 0.05, "retry_after_s": 0.5}
    base.update(overrides)
    return AdmissionLimits(**base)  # type: ignore[arg-type]


async def test_excess_beyond_slots_and_queue_is_refused_with_retry_delay() -> None:
    admission = Admission(limits(peer_share=1.0))
    for _ in range(4):
        await admission.acquire("a", None)
    waiters = [asyncio.create_task(admission.acquire("a", None)) for _ in range(2)]
    await asyncio.sleep(0)
    assert admission.waiting == 2
    with pytest.raises(ResourceExhaustedError) as refused:
        await admission.acquire("a", None)
    assert (refused.value.reason, refused.value.retry_after_s) == ("OVERLOADED", 0.5)
    admission.release("a")
    await waiters[0]
    assert (admission.in_flight, admission.waiting, admission.refused) == (4, 1, 1)
    waiters[1].cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiters[1]
    assert admission.waiting == 0


async def test_a_heavy_peer_cannot_take_the_light_peers_share() -> None:
    admission = Admission(limits())  # 4 slots, 2 per peer
    await admission.acquire("heavy", None)
    await admission.acquire("heavy", None)
    heavy_waits = asyncio.create_task(admission.acquire("heavy", None))
    await asyncio.sleep(0)
    await admission.acquire("light", None)  # admitted at once, ahead of the waiting heavy call
    assert (admission.in_flight, admission.waiting) == (3, 1)
    admission.release("light")
    await asyncio.sleep(0)
    assert not heavy_waits.done()  # a light slot freed is not the heavy peer's to take
    admission.release("heavy")
    await heavy_waits
    assert admission.in_flight == 2


async def test_the_wait_is_bounded_by_max_wait() -> None:
    admission = Admission(limits(max_in_flight=1, peer_share=1.0, max_wait_s=0.0))
    await admission.acquire("a", None)
    with pytest.raises(ResourceExhaustedError):
        await admission.acquire("b", 10.0)
    assert admission.waiting == 0


async def test_a_deadline_too_short_is_refused_before_taking_a_slot() -> None:
    admission = Admission(limits())
    with pytest.raises(DeadlineExceededError) as refused:
        await admission.acquire("a", 0.01)
    assert refused.value.reason == "DEADLINE_TOO_SHORT"
    assert admission.in_flight == 0
