"""A cancellation that a library swallowed still stops the loop that owns the task."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from services.common.tasks import honour_cancellation


async def test_a_swallowed_cancellation_is_raised_on_the_next_turn() -> None:
    turns = 0

    async def loop() -> None:
        nonlocal turns
        while True:
            # Stands in for a library call that eats the cancellation.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.01)
            honour_cancellation()
            turns += 1

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1)
    assert task.cancelled()


async def test_a_task_not_asked_to_stop_goes_on() -> None:
    async def once() -> str:
        honour_cancellation()
        return "went on"

    assert await asyncio.create_task(once()) == "went on"
    honour_cancellation()  # outside any cancellation, in the test's own task
