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


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def _releases_under_pressure(admission: Admission, clock: FakeClock, peer: str,
                                   gap_s: float, count: int) -> None:
    """`count` slots of peer freed gap_s apart, each time with a call of peer waiting that
    takes the freed slot: the rate at which this process serves its queue."""
    for _ in range(count):
        waiter = asyncio.create_task(admission.acquire(peer, None))
        await asyncio.sleep(0)
        clock.now += gap_s
        admission.release(peer)
        await waiter


async def test_a_call_that_would_only_wait_in_vain_is_refused_at_once() -> None:
    clock = FakeClock()
    admission = Admission(limits(max_in_flight=2, max_waiting=10, max_wait_s=25.0,
                                 peer_share=1.0), clock)
    await admission.acquire("a", None)
    await admission.acquire("a", None)
    await _releases_under_pressure(admission, clock, "a", 10.0, 4)
    assert admission.release_gap_s == pytest.approx(10.0)
    # A slot frees every 10 s: the first two waiters can expect theirs within their 25 s...
    waiters = [asyncio.create_task(admission.acquire("b", None)) for _ in range(2)]
    await asyncio.sleep(0)
    assert admission.waiting == 2
    # ...a third in line would wait ~30 s only to be refused: it is refused at once.
    third = asyncio.create_task(admission.acquire("b", None))
    await asyncio.sleep(0)
    assert third.done() and isinstance(third.exception(), ResourceExhaustedError)
    assert (admission.waiting, admission.refused) == (2, 1)
    admission.release("a")
    await waiters[0]
    for waiter in waiters[1:]:
        waiter.cancel()


async def test_a_peer_at_its_share_expects_only_its_own_slots() -> None:
    clock = FakeClock()
    # 4 slots, 2 per peer; "heavy" holds its 2, "light" 1.
    admission = Admission(limits(max_in_flight=4, max_waiting=10, max_wait_s=25.0), clock)
    await admission.acquire("heavy", None)
    await admission.acquire("heavy", None)
    await _releases_under_pressure(admission, clock, "heavy", 10.0, 3)
    await admission.acquire("light", None)
    # Slots free every 10 s, but only 2 of the 3 held are heavy's: one of its own in ~15 s.
    first = asyncio.create_task(admission.acquire("heavy", None))
    await asyncio.sleep(0)
    assert not first.done() and admission.waiting == 1
    second = asyncio.create_task(admission.acquire("heavy", None))
    await asyncio.sleep(0)  # second in line for heavy's slots: ~30 s, beyond its 25 s
    assert second.done() and isinstance(second.exception(), ResourceExhaustedError)
    # The light peer is under its share and takes a free slot at once.
    await admission.acquire("light", None)
    assert admission.in_flight == 4
    first.cancel()


async def test_without_a_known_rate_a_call_waits_its_whole_wait() -> None:
    admission = Admission(limits(max_in_flight=1, peer_share=1.0, max_wait_s=30.0))
    await admission.acquire("a", None)
    waiters = [asyncio.create_task(admission.acquire("a", None)) for _ in range(2)]
    await asyncio.sleep(0)
    assert admission.release_gap_s is None and admission.waiting == 2
    for waiter in waiters:
        waiter.cancel()


async def test_a_light_peer_waits_for_the_next_slot_ahead_of_heavy_ones() -> None:
    clock = FakeClock()
    # 4 slots, 3 per peer, every slot held by two heavy peers; slots free every 10 s.
    admission = Admission(limits(max_in_flight=4, max_waiting=10, max_wait_s=15.0,
                                 peer_share=0.75, max_fair_wait_s=30.0), clock)
    for peer in ("heavy-1", "heavy-1", "heavy-2", "heavy-2"):
        await admission.acquire(peer, None)
    await _releases_under_pressure(admission, clock, "heavy-1", 10.0, 3)
    heavy = asyncio.create_task(admission.acquire("heavy-1", None))
    await asyncio.sleep(0)
    # A second heavy call would be ~20 s from a slot, beyond its 15 s: refused at once...
    with pytest.raises(ResourceExhaustedError):
        await admission.acquire("heavy-2", None)
    # ...while the light peer, holding nothing of its share (4 slots / 3 peers), waits as long
    # as max_fair_wait_s, and takes the next slot freed ahead of the heavy call queued first.
    light = asyncio.create_task(admission.acquire("light", None))
    await asyncio.sleep(0)
    assert admission.waiting == 2
    admission.release("heavy-2")
    await light
    assert not heavy.done() and admission.in_flight == 4
    heavy.cancel()


async def test_a_peer_refused_again_before_its_retry_delay_gets_its_refusal_later() -> None:
    clock = FakeClock()
    admission = Admission(limits(max_in_flight=1, max_waiting=0, peer_share=1.0,
                                 retry_after_s=0.2, max_fair_wait_s=0.0, pace_after=1), clock)
    await admission.acquire("storm", None)
    loop = asyncio.get_running_loop()
    # The first pace_after refusals of a window go out at once...
    started = loop.time()
    with pytest.raises(ResourceExhaustedError):
        await admission.acquire("storm", None)
    assert loop.time() - started < 0.1
    # ...a caller coming back within the RetryInfo delay gets its refusal at the window's end.
    clock.now += 0.05
    started = loop.time()
    with pytest.raises(ResourceExhaustedError):
        await admission.acquire("storm", None)
    assert 0.14 <= loop.time() - started < 0.5
    # Another peer, and the same peer once the window has passed, are refused at once.
    for peer in ("polite", "storm"):
        clock.now += 0.2
        started = loop.time()
        with pytest.raises(ResourceExhaustedError):
            await admission.acquire(peer, None)
        assert loop.time() - started < 0.1
