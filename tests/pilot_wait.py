"""Waiting inside a Pilot test for a condition the app reaches asynchronously (workers, messages)."""

from __future__ import annotations

import asyncio


async def until(pilot, cond, timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not reached")
        await pilot.pause(0.02)
