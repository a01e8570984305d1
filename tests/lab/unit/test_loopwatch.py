"""The mock's watch on its own event loop and garbage collector."""

from __future__ import annotations

import asyncio
import gc
import time

from crmsync_lab.mock.loopwatch import LoopWatch


async def test_stalls_and_full_collections_are_counted() -> None:
    watch = LoopWatch()
    watch.start()
    try:
        await asyncio.sleep(0.03)
        time.sleep(0.05)  # noqa: ASYNC251 - the stall under test
        await asyncio.sleep(0.03)
        gc.collect()
        stats = watch.stats()
        assert stats["stalls"] >= 1 and stats["max_stall_ms"] >= 30
        assert stats["gc_full_collections"] >= 1
        assert gc.get_freeze_count() == 0  # a watch inside a test's process freezes nothing
    finally:
        await watch.stop()


async def test_the_mock_process_freezes_what_survives_a_full_collection() -> None:
    watch = LoopWatch(freeze_survivors=True)
    watch.start()
    try:
        gc.collect()
        await asyncio.sleep(0)
        assert gc.get_freeze_count() > 0
    finally:
        await watch.stop()
        gc.unfreeze()
    gc.collect()
    assert watch.stats()["gc_full_collections"] == 1  # stopped: no longer listening
