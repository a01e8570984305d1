"""Every branch of one claim run, driven through the real claim code with the
in-memory store, ledger, breaker and adapter of ``tests/fakes.py``: no Redis,
PostgreSQL or sleep (time is a ``FakeClock``)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from crmsync.clock import FakeClock
from crmsync.connections import Connection
from crmsync.crm.auth import Auth
from crmsync.errors import (
    AuthFailed,
    Malformed,
    Permanent,
    RateLimited,
    Retryable,
    TokenRefused,
    TokenReplaced,
)
from crmsync.model import Contact, LedgerRow
from crmsync.ratelimit import RateWindow
from crmsync.settings import Settings
from crmsync.worker.claim import CLAIM_RETRY_MS, Claims
from crmsync.worker.crm_gate import CrmGate
from crmsync.worker.inflight import InFlight
from crmsync.worker.permits import Permits
from crmsync.worker.slots import Slots
from fakes import Answer, FakeAdapter, FakeBreaker, FakeLedger, FakeStore, ok, per_record, raising

SETTINGS = Settings(
    retry_attempts=3,
    retry_base_seconds=1.0,
    retry_cap_seconds=60.0,
    batch_size=1,
    lease_seconds=30.0,
    limit_margin=0.04,  # max_lag_ms 20
    http_timeout_seconds=0.5,
)
LIMITS = (RateWindow(100, 1000),)


def connection(crm: str = "salesforce", **settings: Any) -> Connection:
    cid = "sf" if crm == "salesforce" else "hs"
    return Connection(cid, "default", crm, "acme", "http://crm", "tok", LIMITS, settings)


def contact(cid: str, version: int = 1, **changes: Any) -> Contact:
    c = Contact(cid, "default", f"{cid}@example.com", "Ada", "Lovelace", "Acme", "active", version)
    return dataclasses.replace(c, **changes)


@dataclass
class Rig:
    """The real claim code on fakes, for one connection."""

    conn: Connection
    clock: FakeClock = field(default_factory=lambda: FakeClock(1_700_000_000.0))
    journal: list[str] = field(default_factory=list)
    breaker: FakeBreaker = field(default_factory=FakeBreaker)
    adapter: FakeAdapter = field(default_factory=FakeAdapter)

    def __post_init__(self) -> None:
        self.store = FakeStore(self.clock, self.journal)
        self.ledger = FakeLedger(self.journal)
        self.adapter.crm = self.conn.crm
        self.slots = Slots(200)
        self.permits = Permits(
            self.store,
            self.clock,
            margin=SETTINGS.limit_margin,
            http_timeout_seconds=SETTINGS.http_timeout_seconds,
        )
        self.claims = Claims(
            SETTINGS,
            clock=self.clock,
            store=self.store,
            ledger=self.ledger,
            crm_gate=CrmGate(self.breaker, self.clock),
            permits=self.permits,
            inflight=InFlight(200),
            slots=self.slots,
        )
        self.queue = self.store.queue(self.conn.id)

    def given(self, *contacts: Contact, ledger: Mapping[str, LedgerRow] | None = None) -> None:
        """These contacts (and ledger rows) exist and their ids are queued."""
        for c in contacts:
            self.ledger.contacts[c.id] = c
        for cid, row in (ledger or {}).items():
            self.ledger.rows[(self.conn.id, cid)] = row
        self.queue.ready.extend(c.id for c in contacts)
        self.queue.ready.extend(i for i in (ledger or {}) if i not in self.ledger.contacts)

    def claim(self) -> Coroutine[Any, Any, None]:
        """One claim of the connection, with the slots the loop would reserve."""
        now = self.clock.now_ms()
        self.slots.add([self.conn.id], now)
        ((cid, want),) = self.slots.take_due(now, {self.conn.id: self.conn})
        assert cid == self.conn.id
        return self.claims.run(self.conn, self.adapter, want)

    async def run(self) -> None:
        await self.claim()
        await self.claims.drain(1.0)
        assert self.slots.reserved == 0, "every reserved slot freed"

    async def run_advancing(self, step_s: float = 0.02) -> None:
        """Run a claim that waits on time (polling for a permit), moving the clock."""
        task = asyncio.create_task(self.claim())
        while not task.done():
            await asyncio.sleep(0)
            self.clock.advance(step_s)
        await task
        assert self.slots.reserved == 0

    def row(self, cid: str) -> tuple[str, str | None, int | None, int] | None:
        r = self.ledger.row(self.conn.id, cid)
        return None if r is None else (r.status, r.external_id, r.synced_version, r.attempts)


async def until(condition: Callable[[], bool], turns: int = 1000) -> None:
    """Let the event loop run until ``condition`` holds."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


@dataclass(frozen=True)
class Case:
    id: str
    contacts: tuple[Contact, ...]
    answer: Answer = ok
    crm: str = "salesforce"
    batch: int = 1
    ledger: Mapping[str, LedgerRow] = field(default_factory=dict)
    sent: tuple[tuple[str, ...], ...] = ()  # per request: "kind id" per op
    rows: Mapping[str, tuple[str, str | None, int | None, int]] = field(default_factory=dict)
    dead: Mapping[str, tuple[str, str | None, int]] = field(default_factory=dict)  # op, code, tries
    ready: tuple[str, ...] = ()  # released: back in the queue, no attempt
    delayed: tuple[str, ...] = ()  # retried later
    outcomes: tuple[bool, ...] = ()  # breaker outcomes, one per request
    counts: Mapping[str, int] = field(default_factory=dict)
    refund: int = 0
    blocked: tuple[tuple[float, bool], ...] = ()
    paused: str | None = None


SYNCED_V1 = LedgerRow("X9", 1, "synced")
E503 = Retryable("Service Unavailable", status=503)

CASES = [
    Case(
        "create",
        (contact("c1"),),
        sent=(("create c1",),),
        rows={"c1": ("synced", "X-c1", 1, 0)},
        outcomes=(True,),
        counts={"created": 1, "requests": 1, "lat_1": 1, "lag_1": 1},
    ),
    Case(
        "update keeps the CRM id",
        (contact("c1", 2),),
        ledger={"c1": SYNCED_V1},
        sent=(("update c1",),),
        rows={"c1": ("synced", "X9", 2, 0)},
        outcomes=(True,),
        counts={"updated": 1},
    ),
    Case(
        "soft delete",
        (contact("c1", 2, deleted=True),),
        ledger={"c1": SYNCED_V1},
        sent=(("delete c1",),),
        rows={"c1": ("deleted", "X9", 2, 0)},
        outcomes=(True,),
        counts={"deleted": 1},
    ),
    Case(
        "hard delete keeps the synced version",
        (),
        ledger={"c1": SYNCED_V1},
        sent=(("delete c1",),),
        rows={"c1": ("deleted", "X9", 1, 0)},
        outcomes=(True,),
        counts={"deleted": 1},
    ),
    Case(
        "skip by rule: no request, permit refunded",
        (contact("c1", company=None),),
        crm="hubspot",
        rows={"c1": ("skipped", None, 1, 0)},
        counts={"skipped": 1},
        refund=1,
    ),
    Case(
        "noop: already synced, nothing written",
        (contact("c1"),),
        ledger={"c1": SYNCED_V1},
        rows={"c1": ("synced", "X9", 1, 0)},
        refund=1,
    ),
    Case(
        "retryable: retried later, attempt counted",
        (contact("c1"),),
        answer=raising(E503),
        sent=(("create c1",),),
        rows={"c1": ("retrying", None, None, 1)},
        delayed=("c1",),
        outcomes=(False,),
        counts={"retried": 1, "requests": 1},
    ),
    Case(
        "retryable exhausted: dead letter",
        (contact("c1"),),
        ledger={"c1": LedgerRow(None, None, "retrying", 2)},
        answer=raising(Retryable("no answer within 10s", code="TIMEOUT")),
        sent=(("create c1",),),
        rows={"c1": ("dead", None, None, 3)},
        dead={"c1": ("create", "TIMEOUT", 3)},
        outcomes=(False,),
        counts={"dead_lettered": 1},
    ),
    Case(
        "permanent: dead letter at once",
        (contact("c1", last_name=None),),
        answer=raising(
            Permanent("Required fields are missing: [LastName]", status=400, code="REQUIRED")
        ),
        sent=(("create c1",),),
        rows={"c1": ("dead", None, None, 1)},
        dead={"c1": ("create", "REQUIRED", 1)},
        outcomes=(True,),  # a 4xx is an answer: not a breaker failure
        counts={"dead_lettered": 1, "requests": 1},
    ),
    Case(
        "rate limited by the CRM: released, no attempt, blocked and slowed",
        (contact("c1"),),
        answer=raising(RateLimited("REQUEST_LIMIT_EXCEEDED", retry_after=2.5, status=403)),
        sent=(("create c1",),),
        ready=("c1",),
        outcomes=(True,),
        counts={"crm_rate_limited": 1, "requests": 1},
        blocked=((2.5, True),),
    ),
    Case(
        "auth failed: paused once, released",
        (contact("c1"), contact("c2")),
        answer=raising(AuthFailed("Session expired or invalid", status=401)),
        sent=(("create c1",), ("create c2",)),
        ready=("c1", "c2"),
        outcomes=(True, True),
        paused="CRM rejected the token (401): Session expired or invalid",
    ),
    Case(
        "a 401 for a replaced token: released, not an attempt, no pause",
        (contact("c1"), contact("c2")),
        answer=raising(TokenReplaced("the access token expired: sent again with a new one")),
        sent=(("create c1",), ("create c2",)),
        ready=("c1", "c2"),
        outcomes=(True, True),
        counts={"token_replaced": 2, "requests": 2},
    ),
    Case(
        "the token endpoint refused: paused with its reason",
        (contact("c1"),),
        answer=raising(
            TokenRefused("expired access/refresh token", status=400, code="invalid_grant")
        ),
        sent=(("create c1",),),
        ready=("c1",),
        outcomes=(True,),
        paused="CRM rejected the token (token endpoint: 400 invalid_grant): "
        "expired access/refresh token",
        counts={"auth_pauses": 1},
    ),
    Case(
        "batch: creates and updates in one request, each record's result apart",
        (contact("c1"), contact("c2"), contact("c3", 2)),
        ledger={"c3": SYNCED_V1},
        batch=3,
        answer=per_record(
            {
                "c2": Permanent("bad email", code="INVALID_EMAIL_ADDRESS"),
                "c3": Retryable("row locked", code="UNABLE_TO_LOCK_ROW"),
            }
        ),
        sent=(("create c1", "create c2", "update c3"),),
        rows={
            "c1": ("synced", "X-c1", 1, 0),
            "c2": ("dead", None, None, 1),
            "c3": ("retrying", "X9", 1, 1),
        },
        dead={"c2": ("create", "INVALID_EMAIL_ADDRESS", 1)},
        delayed=("c3",),
        outcomes=(True,),
        counts={"created": 1, "dead_lettered": 1, "retried": 1, "requests": 1},
    ),
    Case(
        "malformed answer: retried, a breaker failure",
        (contact("c1"),),
        answer=raising(Malformed("Salesforce answered 201 without the record's id: {}")),
        sent=(("create c1",),),
        rows={"c1": ("retrying", None, None, 1)},
        delayed=("c1",),
        outcomes=(False,),
        counts={"retried": 1, "requests": 1},
    ),
    Case(
        "a send that raised: an attempt, but not the CRM's failure",
        (contact("c1"),),
        answer=raising(TypeError("'int' object is not subscriptable")),
        sent=(("create c1",),),
        rows={"c1": ("retrying", None, None, 1)},
        delayed=("c1",),
        outcomes=(True,),
        counts={"retried": 1, "requests": 1},
    ),
    Case(
        "a send that raised on the last attempt: dead letter",
        (contact("c1"),),
        ledger={"c1": LedgerRow(None, None, "retrying", 2)},
        answer=raising(KeyError("id")),
        sent=(("create c1",),),
        rows={"c1": ("dead", None, None, 3)},
        dead={"c1": ("create", "UNHANDLED", 3)},
        outcomes=(True,),
    ),
    Case(
        "an answer that is not one result per record: each record's attempt",
        (contact("c1"), contact("c2")),
        batch=2,
        answer=lambda ops: ok(ops[:1]),
        sent=(("create c1", "create c2"),),
        rows={"c1": ("retrying", None, None, 1), "c2": ("retrying", None, None, 1)},
        delayed=("c1", "c2"),
        outcomes=(False,),
    ),
    Case(
        "a batch record the answer does not confirm: that record's attempt, a failure",
        (contact("c1"), contact("c2")),
        batch=2,
        answer=per_record({"c2": Malformed("HubSpot answered 200 ...")}),
        sent=(("create c1", "create c2"),),
        rows={"c1": ("synced", "X-c1", 1, 0), "c2": ("retrying", None, None, 1)},
        delayed=("c2",),
        outcomes=(False,),
        counts={"created": 1, "retried": 1},
    ),
    Case(
        "upserts and deletes go apart: a request beyond the permits is released",
        (contact("c1"), contact("c2", 2, deleted=True)),
        ledger={"c2": SYNCED_V1},
        batch=2,
        sent=(("create c1",),),
        rows={"c1": ("synced", "X-c1", 1, 0), "c2": ("synced", "X9", 1, 0)},
        ready=("c2",),
        outcomes=(True,),
        counts={"created": 1},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_a_claim_sorts_every_outcome(case: Case) -> None:
    r = Rig(connection(case.crm, batch_size=case.batch), adapter=FakeAdapter(answer=case.answer))
    r.given(*case.contacts, ledger=case.ledger)
    ids = list(r.queue.ready)
    await r.run()

    sent = [tuple(f"{op.kind} {op.contact_id}" for op in ops) for ops in r.adapter.sent]
    assert sent == list(case.sent)
    assert {i: r.row(i) for i in ids if r.row(i)} == dict(case.rows)
    assert {d.contact_id: (d.operation, d.error_code, d.attempts) for _, d in r.ledger.dead} == (
        dict(case.dead)
    )
    q = r.queue
    assert not q.leased, "every id acknowledged, retried or released"
    assert sorted(q.ready) == sorted(case.ready) and sorted(q.delayed) == sorted(case.delayed)
    assert q.breaker == list(case.outcomes)
    assert {k: q.counters[k] for k in case.counts} == dict(case.counts)
    assert r.store.refunded == case.refund
    assert q.blocked == list(case.blocked)
    assert q.paused == case.paused and r.ledger.paused.get(r.conn.id) == case.paused
    if "ledger.record" in r.journal:
        # Ledger before acknowledgement: a crash in between only re-sends.
        assert r.journal.index("ledger.record") < r.journal.index("store.finish")


async def test_a_retry_waits_a_jittered_backoff_of_its_attempt() -> None:
    r = Rig(connection(), adapter=FakeAdapter(answer=raising(E503)))
    r.given(contact("c1"), ledger={"c1": LedgerRow(None, None, "retrying", 1)})
    await r.run()
    assert r.row("c1") == ("retrying", None, None, 2)
    assert 0.0 <= r.queue.delayed["c1"] <= 2.0  # full jitter under base * 2 ** (2 - 1)
    assert r.ledger.errors[(r.conn.id, "c1")] == "Service Unavailable"


async def test_a_synced_change_counts_its_lag_from_commit_to_the_crm_answer() -> None:
    r = Rig(connection())
    r.given(contact("c1"), contact("c2"))
    now = r.clock.now_ms()
    r.ledger.committed_ms.update({"c1": now - 1500, "c2": now - 40})
    await r.run()
    counts = r.queue.counters
    assert counts["synclag_2500"] == 1 and counts["synclag_50"] == 1
    assert counts["synclag_sum_ms"] == 1540


async def test_a_dead_letter_keeps_what_was_sent_and_the_crm_message() -> None:
    err = Permanent("Required fields are missing: [LastName]", status=400, code="REQUIRED")
    r = Rig(connection(), adapter=FakeAdapter(answer=raising(err)))
    r.given(contact("c1", 4, last_name=None))
    await r.run()
    ((cid, dead),) = r.ledger.dead
    assert cid == "sf" and (dead.version, dead.http_status, dead.error) == (4, 400, err.message)
    assert dead.payload == {
        "email": "c1@example.com",
        "first_name": "Ada",
        "last_name": None,
        "company": "Acme",
        "status": "active",
    }
    assert r.ledger.errors[("sf", "c1")] == "REQUIRED: Required fields are missing: [LastName]"


async def test_an_open_crm_breaker_claims_nothing_until_its_recovery() -> None:
    r = Rig(connection(), breaker=FakeBreaker(verdict=False, opened_ms=1_700_000_000_000))
    r.given(contact("c1"))
    await r.run()
    assert "store.claim" not in r.journal and r.queue.ready == ["c1"]
    assert r.slots.sched.next_due_ms() == 1_700_000_000_000 + 30_000
    # Asked again before then, the cached verdict answers without Redis.
    await r.run()
    assert r.breaker.asked == 1


async def test_an_open_connection_breaker_is_asked_again_when_the_claim_script_says() -> None:
    r = Rig(connection())
    r.given(contact("c1"))
    r.queue.refuse, r.queue.next_eligible_ms = "circuit_open", 1_700_000_007_000
    await r.run()
    assert "ledger.load" not in r.journal and r.adapter.sent == []
    assert r.slots.sched.next_due_ms() == 1_700_000_007_000
    assert r.conn.id not in r.slots.expect  # a refusal tells nothing of the queue


async def test_a_half_open_probe_sends_one_request_and_reports_it() -> None:
    r = Rig(connection(), breaker=FakeBreaker(verdict="probe"))
    r.given(contact("c1"), contact("c2"))
    await r.run()
    assert [len(ops) for ops in r.adapter.sent] == [1] and r.queue.ready == ["c2"]
    assert r.breaker.recorded == [("salesforce", [True])]  # the probe's success closes it


async def test_after_a_failure_the_crm_breaker_hears_successes_too() -> None:
    """The CRM-wide breaker hears a claim that opened the breaker of a connection
    that worked as one failure; a success resets its count: reported while this
    process saw a failure lately, and not otherwise (one Redis call saved per claim)."""
    r = Rig(connection())
    r.given(contact("c0"))
    await r.run()
    assert r.breaker.recorded == []  # all well: nothing to reset
    r.adapter.answer = raising(E503)
    r.given(contact("c1"))
    r.queue.breaker_state = "opened"  # this claim's failure opened the connection's breaker
    await r.run()
    r.queue.breaker_state = "closed"
    r.adapter.answer = ok
    r.given(contact("c2"))
    await r.run()
    assert r.breaker.recorded == [("salesforce", [False]), ("salesforce", [True])]
    r.clock.advance(61.0)
    r.given(contact("c3"))
    await r.run()
    assert len(r.breaker.recorded) == 2


async def test_a_write_later_than_the_margin_absorbs_moves_its_permit() -> None:
    """The CRM counts arrivals: a request written 30 ms after its admission (a
    busy loop) has its permit restamped to the write, once per admission time."""
    r = Rig(connection(batch_size=1))
    r.given(contact("c1"), contact("c2"))
    r.adapter.before_write = lambda: r.clock.advance(0.015)  # 15, then 30 ms late
    await r.run()
    admitted = 1_700_000_000_000
    assert r.store.restamps == [("sf", admitted, 1)]  # only the second passed 20 ms


async def test_a_write_on_time_moves_nothing() -> None:
    r = Rig(connection())
    r.given(contact("c1"), contact("c2"))
    await r.run()
    assert r.store.restamps == [] and r.store.retakes == [] and r.store.readmits == []


async def test_a_slow_database_read_readmits_the_claim_at_the_time_of_sending() -> None:
    r = Rig(connection())
    r.given(contact("c1"), contact("c2"), contact("c3"))

    def slow_read() -> None:
        r.clock.advance(0.05)
        # Others filled the window meanwhile: of the three given back, one is left.
        r.queue.room = -2

    r.ledger.on_load = slow_read
    r.queue.room = 3
    await r.run()
    assert r.store.readmits == [(3, 1)]
    assert len(r.adapter.sent) == 1 and sorted(r.queue.ready) == ["c2", "c3"]
    assert r.store.refunded == 0  # the readmitted claim holds one permit, and sent one


async def test_requests_held_at_the_in_flight_gate_retake_their_permits_together() -> None:
    """With one request in flight at a time, the later ones wait at the gate; once
    later than the margin absorbs, one retake moves all their permits to now."""
    r = Rig(connection(max_in_flight=1))
    r.given(contact("c1"), contact("c2"), contact("c3"))
    r.adapter.before_write = lambda: r.clock.advance(0.03)
    await r.run()
    assert r.store.retakes[0][1:] == (2, 2)  # two requests' permits, both granted
    assert len(r.adapter.sent) == 3 and r.row("c3") == ("synced", "X-c3", 1, 0)
    assert r.queue.counters["held_in_flight"] == 2


async def test_a_follow_up_request_without_a_permit_releases_its_ids() -> None:
    """HubSpot's update after a 409 is a second request: it needs its own permit;
    none within the HTTP timeout means nothing more is sent, and no attempt."""
    r = Rig(connection("hubspot"))
    r.given(contact("c1"))
    r.queue.room = 1  # the claim's own permit, and no more
    r.adapter.follow_ups = 1
    await r.run_advancing()
    assert r.adapter.sent == [] and r.queue.ready == ["c1"] and r.row("c1") is None
    assert r.store.takes and not any(r.store.takes)
    assert r.queue.breaker == [True]  # not sent: not a CRM failure


async def test_a_request_left_without_a_permit_takes_its_own() -> None:
    """The retake found no room (others filled the window): the request polls
    for a permit of its own and goes out when room opens."""
    r = Rig(connection(max_in_flight=1))
    r.given(contact("c1"), contact("c2"))

    def first_late() -> None:
        if not r.adapter.sent:
            r.clock.advance(0.03)
            r.queue.room = -1

    r.adapter.before_write = first_late
    r.queue.room = 2
    task = asyncio.create_task(r.claim())
    await until(lambda: bool(r.store.takes))
    assert r.store.retakes[0][2] == 0 and r.store.takes == [0]
    r.queue.room = 1
    while not task.done():
        await asyncio.sleep(0)
        r.clock.advance(0.02)
    await task
    assert r.store.takes[-1] == 1 and r.row("c2") == ("synced", "X-c2", 1, 0)
    assert r.slots.reserved == 0


@pytest.mark.parametrize("failing", ["load", "record"])
async def test_a_database_failure_releases_everything_and_records_nothing(failing: str) -> None:
    r = Rig(connection())
    r.given(contact("c1"), contact("c2", 2), ledger={"c2": SYNCED_V1})
    r.ledger.fail.add(failing)
    await r.run()
    assert sorted(r.queue.ready) == ["c1", "c2"] and not r.queue.leased
    assert r.row("c1") is None and r.row("c2") == ("synced", "X9", 1, 0)  # untouched
    assert not r.queue.delayed and not r.ledger.dead


async def test_redis_failing_at_the_claim_asks_again_in_a_second() -> None:
    r = Rig(connection())
    r.given(contact("c1"))
    r.store.fail.add("claim")
    await r.run()
    assert r.slots.sched.next_due_ms() == r.clock.now_ms() + CLAIM_RETRY_MS


async def test_redis_failing_at_the_hand_back_leaves_the_lease_to_expire() -> None:
    """The ledger holds the outcome already; the lease expires and the same
    idempotent upsert goes again (the rules see the synced version: a noop)."""
    r = Rig(connection())
    r.given(contact("c1"))
    r.store.fail.add("finish")
    await r.run()
    assert r.row("c1") == ("synced", "X-c1", 1, 0) and list(r.queue.leased) == ["c1"]
    r.store.fail.clear()
    r.store.expire_leases(r.conn.id)
    await r.run()
    assert len(r.adapter.sent) == 1 and not r.queue.leased and not r.queue.ready


async def test_a_lease_lost_mid_send_acknowledges_nothing_of_the_new_owner() -> None:
    """The claim outlived its lease (another worker claimed the ids): its
    hand-back touches only its own lease; the ledger never goes back a version."""
    r = Rig(connection())
    r.given(contact("c1"))

    async def lease_lost() -> None:
        r.store.expire_leases(r.conn.id)
        await r.store.claim(r.conn.id, max_requests=1, batch_size=1, lease_ms=30_000)

    r.adapter.before_write = lease_lost
    await r.run()
    assert list(r.queue.leased) == ["c1"] and r.queue.leased["c1"] != "t1"
    assert r.row("c1") == ("synced", "X-c1", 1, 0)


async def test_a_claim_cancelled_mid_send_gives_its_ids_back() -> None:
    r = Rig(connection())
    r.given(contact("c1"))
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    r.adapter.before_write = hang
    task = asyncio.create_task(r.claim())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert r.queue.ready == ["c1"] and not r.queue.leased and r.row("c1") is None
    assert r.slots.reserved == 0


async def test_the_lease_is_renewed_while_a_claim_runs() -> None:
    r = Rig(connection())
    r.given(contact("c1"))
    gate = asyncio.Event()

    async def slow_crm() -> None:
        await gate.wait()

    r.adapter.before_write = slow_crm
    task = asyncio.create_task(r.claim())
    await until(lambda: r.clock.sleeping > 0)  # the renewal's sleep
    r.clock.advance(10.0)  # a third of the lease
    for _ in range(5):
        await asyncio.sleep(0)
    assert r.store.renewals == 1
    gate.set()
    await task


async def test_a_claim_reserves_slots_for_what_it_expects_and_frees_the_rest() -> None:
    r = Rig(connection())
    r.given(contact("c1"))
    now = r.clock.now_ms()
    r.slots.add([r.conn.id], now)
    ((_, want),) = r.slots.take_due(now, {r.conn.id: r.conn})
    assert want == 64 and r.slots.reserved == 64  # nothing known yet: a whole claim
    await r.claims.run(r.conn, r.adapter, want)
    assert r.slots.reserved == 0 and r.slots.expect[r.conn.id] == 2


async def test_no_pause_for_credentials_an_operator_replaced_meanwhile() -> None:
    """A claim still holding the old credentials (rev) must not pause the connection
    that `connections update` just resumed with new ones."""
    conn = dataclasses.replace(connection(), auth=Auth("oauth-refresh", "client", rev="old"))
    refused = TokenRefused("expired access/refresh token", status=400, code="invalid_grant")
    r = Rig(conn, adapter=FakeAdapter(answer=raising(refused)))
    r.ledger.revs[conn.id] = "new"
    r.given(contact("c1"))
    await r.run()
    assert r.queue.paused is None and r.ledger.paused == {}
    assert r.queue.ready == ["c1"]  # back, no attempt
    r.ledger.revs[conn.id] = "old"  # the credentials it used are still the current ones
    await r.run()
    reason = r.ledger.paused[conn.id]
    assert r.queue.paused == reason
    assert reason.startswith("CRM rejected the token (token endpoint: 400 invalid_grant)")


async def test_a_token_being_refreshed_holds_the_send_like_the_gate() -> None:
    """ready() waiting (a refresh under way) re-takes the permits, as a wait at the
    in-flight gate does, so the limiter counts the send when it goes out."""
    adapter = FakeAdapter()
    adapter.token_wait = 0.05
    r = Rig(connection(), adapter=adapter)
    r.given(contact("c1"))
    await r.run_advancing()
    assert r.row("c1") == ("synced", "X-c1", 1, 0)
    assert "store.retake" in r.journal
