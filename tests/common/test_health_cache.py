"""CachedCheck: one check per interval, shared by every caller, whatever they do."""

from __future__ import annotations

import asyncio

import pytest

from services.common.health import CachedCheck


class Counting:
    """A check that takes a little while and counts its runs; `fail` makes it raise."""

    def __init__(self, delay: float = 0.05) -> None:
        self.delay = delay
        self.calls = 0
        self.fail = False

    async def __call__(self) -> int:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("dependency down")
        return self.calls


async def test_concurrent_callers_share_one_check() -> None:
    check = Counting()
    cached = CachedCheck(check, ttl=10)
    results = await asyncio.gather(*(cached.get() for _ in range(1000)))
    assert results == [1] * 1000
    assert check.calls == 1 and cached.runs == 1


async def test_the_result_is_reused_within_the_ttl_then_recomputed() -> None:
    check = Counting(delay=0)
    cached = CachedCheck(check, ttl=0.2)
    assert await cached.get() == 1
    for _ in range(100):
        assert await cached.get() == 1
    await asyncio.sleep(0.25)
    assert await cached.get() == 2
    assert check.calls == 2


async def test_callers_during_a_refresh_get_the_last_answer_at_once() -> None:
    check = Counting(delay=0.3)
    cached = CachedCheck(check, ttl=0.05, max_stale=5)
    assert await cached.get() == 1
    await asyncio.sleep(0.06)
    refresh = asyncio.create_task(cached.get())  # starts the second check and waits for it
    await asyncio.sleep(0.01)
    started = asyncio.get_running_loop().time()
    assert await asyncio.gather(*(cached.get() for _ in range(100))) == [1] * 100
    assert asyncio.get_running_loop().time() - started < 0.1  # none waited for the check
    assert await refresh == 2
    assert await cached.get() == 2
    assert check.calls == 2


async def test_an_answer_older_than_max_stale_is_not_served() -> None:
    check = Counting(delay=0.1)
    cached = CachedCheck(check, ttl=0.01, max_stale=0.05)
    assert await cached.get() == 1
    await asyncio.sleep(0.06)
    assert await asyncio.gather(cached.get(), cached.get(), cached.get()) == [2, 2, 2]
    assert check.calls == 2


async def test_a_caller_that_goes_away_does_not_cancel_the_shared_check() -> None:
    check = Counting(delay=0.1)
    cached = CachedCheck(check, ttl=10)
    impatient = asyncio.create_task(cached.get())
    patient = asyncio.create_task(cached.get())
    await asyncio.sleep(0.02)
    impatient.cancel()
    assert await patient == 1
    assert impatient.cancelled()
    assert check.calls == 1


async def test_a_failing_check_fails_its_waiters_and_the_next_call_tries_again() -> None:
    check = Counting()
    check.fail = True
    cached = CachedCheck(check, ttl=10)
    results = await asyncio.gather(*(cached.get() for _ in range(50)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert check.calls == 1
    check.fail = False
    assert await cached.get() == 2  # no failed result is cached


async def test_close_cancels_a_check_in_flight() -> None:
    cached = CachedCheck(Counting(delay=10), ttl=10)
    waiter = asyncio.create_task(cached.get())
    await asyncio.sleep(0.01)
    await cached.close()
    with pytest.raises(asyncio.CancelledError):
        await waiter
