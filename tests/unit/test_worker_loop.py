"""The worker loop on in-memory collaborators: it claims due connections until
their queues are empty, shares its slots, and stops cleanly."""

from __future__ import annotations

import asyncio

from crmsync.clock import FakeClock
from crmsync.connections import Connection
from crmsync.model import Contact
from crmsync.ratelimit import RateWindow
from crmsync.settings import Settings
from crmsync.worker.claim import Claims
from crmsync.worker.crm_gate import CrmGate
from crmsync.worker.inflight import InFlight
from crmsync.worker.loop import Worker
from crmsync.worker.permits import Permits
from crmsync.worker.slots import Slots
from fakes import FakeAdapter, FakeBreaker, FakeConnections, FakeLedger, FakeStore, NoWakes


async def test_the_loop_works_off_every_queue_then_stops() -> None:
    settings = Settings(batch_size=5, limit_margin=0.04, http_timeout_seconds=1.0)
    clock = FakeClock()
    store, ledger = FakeStore(clock), FakeLedger()
    served = {}
    for cid, crm in (("sf", "salesforce"), ("hs", "hubspot")):
        conn = Connection(cid, "t", crm, "acme", "http://crm", "tok", (RateWindow(100, 1000),))
        served[cid] = (conn, FakeAdapter(crm))
        for i in range(40):
            c = Contact(f"{cid}{i}", "t", f"{cid}{i}@example.com", "A", "L", "Co", "active", 1)
            ledger.contacts[c.id] = c
            store.queue(cid).ready.append(c.id)
    slots = Slots(8)  # fewer slots than either queue needs: they take turns
    permits = Permits(store, clock, margin=0.04, http_timeout_seconds=1.0)
    claims = Claims(
        settings,
        clock=clock,
        store=store,
        ledger=ledger,
        crm_gate=CrmGate(FakeBreaker(), clock),
        permits=permits,
        inflight=InFlight(8),
        slots=slots,
    )
    worker = Worker(
        clock=clock,
        slots=slots,
        registry=FakeConnections(served),
        claims=claims,
        wakes=NoWakes(),
        shutdown_grace_seconds=1.0,
    )
    stop = asyncio.Event()
    run = asyncio.create_task(worker.run(stop))
    for _ in range(10_000):
        if all(not q.ready and not q.leased for q in store.queues.values()):
            break
        await asyncio.sleep(0)
    stop.set()
    await asyncio.wait_for(run, 5.0)
    assert len(ledger.rows) == 80 and {r.status for r in ledger.rows.values()} == {"synced"}
    assert all(len(ops) <= 5 for _, adapter in served.values() for ops in adapter.sent)
    assert slots.reserved == 0 and not claims.tasks
