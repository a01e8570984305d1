"""The time seam: Redis time learnt from claims, and the fake clock tests move."""

from __future__ import annotations

import asyncio

from crmsync.clock import FakeClock, RedisClock


def test_the_redis_clock_learns_the_offset_from_the_quickest_answer() -> None:
    wall = FakeClock(1000.0)  # local clock: 1,000,000 ms; Redis is 250 ms ahead
    clock = RedisClock(wall)
    assert clock.now_ms() == 1_000_000.0  # nothing learnt yet: local time
    # A slow answer (40 ms round trip) first, then a quick one (2 ms).
    clock.observe(1_000_250 + 20, 1_000_000.0, 1_000_040.0)
    clock.observe(1_000_250 + 101, 1_000_100.0, 1_000_102.0)
    assert abs(clock.offset_ms - 250.5) <= 1.0
    # A slower answer soon after does not replace the quick one's estimate ...
    clock.observe(1_000_250 + 500, 1_000_300.0, 1_000_400.0)
    assert abs(clock.offset_ms - 250.5) <= 1.0
    # ... but after renew_ms the offset is learnt again (a clock can drift).
    clock.observe(1_000_100 + 20_010, 1_020_000.0, 1_020_020.0)
    assert abs(clock.offset_ms - 100.5) <= 1.0
    wall.advance(1.0)
    assert abs(clock.now_ms() - (1_001_000 + 100.5)) <= 1.0


async def test_a_fake_clock_wakes_its_sleepers_only_when_moved_past_their_time() -> None:
    clock = FakeClock(100.0)
    woken: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woken.append(name)

    tasks = [asyncio.create_task(sleeper(n, s)) for n, s in (("late", 2.0), ("soon", 0.5))]
    await asyncio.sleep(0)
    assert clock.sleeping == 2 and woken == []
    clock.advance(0.4)
    await asyncio.sleep(0)
    assert woken == []
    clock.advance(0.1)
    await asyncio.sleep(0)
    assert woken == ["soon"]
    clock.advance(5.0)
    await asyncio.gather(*tasks)
    assert woken == ["soon", "late"] and clock.sleeping == 0
    assert clock.now_ms() == clock.local_ms() == 105_500.0 and clock.monotonic() == 105.5


async def test_a_fake_clock_sleep_of_nothing_only_yields() -> None:
    clock = FakeClock(0.0)
    await asyncio.wait_for(clock.sleep(0), 1.0)
    assert clock.sleeping == 0 and clock() == 0.0
