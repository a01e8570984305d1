"""The claim run against hostile answers and its own bugs, on the in-memory fakes:
every failure is an outcome (an attempt with the error text, the retry policy,
dead letters at the end), the only releases without an attempt are rate-limit
waits, pauses and missing permits, and operators hear each event once per claim."""

from __future__ import annotations

from collections import Counter
from collections.abc import MutableMapping, Sequence
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs
from test_claim import SETTINGS, Rig, connection, contact

from crmsync.crm.base import Op, RecordResult, SendResult
from crmsync.errors import (
    AuthFailed,
    Malformed,
    Permanent,
    RateLimited,
    Retryable,
)
from crmsync.model import LedgerRow
from crmsync.worker import claim as claim_module
from crmsync.worker.plan import Plan
from fakes import FakeAdapter, FakeBreaker, ok

POLICY_ATTEMPTS = SETTINGS.retry_attempts


def events(logs: Sequence[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == name]


async def test_a_claim_that_cannot_be_planned_counts_an_attempt_for_each_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(crm: str, items: Sequence[Any], batch: int, unknown: Any = ()) -> Plan:
        raise ZeroDivisionError("a rule met a contact it did not expect")

    monkeypatch.setattr(claim_module, "plan_claim", broken)
    r = Rig(connection())
    r.given(contact("c1"), contact("c2", 3), ledger={"c2": LedgerRow("X9", 2, "retrying", 2)})
    with capture_logs() as logs:
        await r.run()
    assert r.adapter.sent == []
    assert r.row("c1") == ("retrying", None, None, 1) and "c1" in r.queue.delayed
    assert r.row("c2") == ("dead", "X9", 2, 3)  # its last attempt: dead, CRM id kept
    ((_, dead),) = r.ledger.dead
    assert (dead.contact_id, dead.operation, dead.error_code) == ("c2", "update", "UNHANDLED")
    assert "ZeroDivisionError: a rule met a contact" in str(r.ledger.errors[("sf", "c1")])
    assert r.store.refunded == 2, "nothing sent: the permits go back"
    assert len(events(logs, "worker.plan_failed")) == 1


async def test_an_error_text_is_stored_bounded_and_without_nul() -> None:
    err = Permanent("bad \x00 value " + "x" * 5000, status=400, code="X\x00Y")
    r = Rig(connection(), adapter=FakeAdapter(answer=_raise(err)))
    r.given(contact("c1"))
    await r.run()
    ((_, dead),) = r.ledger.dead
    assert "\x00" not in dead.error and len(dead.error) <= 1000
    assert dead.error_code == "X\ufffdY"


def _raise(exc: Exception) -> Any:
    def answer(ops: Sequence[Op]) -> SendResult:
        raise exc

    return answer


# -- what operators hear ---------------------------------------------------------


async def test_a_429_on_every_request_is_one_warning_with_its_wait_and_reason() -> None:
    limited = RateLimited("You have reached your ten_secondly_rolling limit.", retry_after=10.0,
                          code="TEN_SECONDLY_ROLLING")  # fmt: skip
    r = Rig(connection("hubspot"), adapter=FakeAdapter(answer=_raise(limited)))
    r.given(contact("c1"), contact("c2"), contact("c3"))
    with capture_logs() as logs:
        await r.run()
    (line,) = events(logs, "connection.rate_limited")
    assert line["log_level"] == "warning" and line["wait_s"] == 10.0
    assert line["connection"] == "hs" and "ten_secondly_rolling" in line["reason"]
    assert r.queue.block_reasons == [line["reason"]]  # status shows the same words


async def test_a_401_pause_and_dead_letters_are_one_warning_each() -> None:
    r = Rig(connection(), adapter=FakeAdapter(answer=_raise(AuthFailed("Session expired"))))
    r.given(contact("c1"), contact("c2"))
    with capture_logs() as logs:
        await r.run()
    (line,) = events(logs, "connection.paused")
    assert line["log_level"] == "warning" and "Session expired" in line["reason"]

    bad = Permanent("Required fields are missing: [LastName]", status=400, code="REQUIRED")
    r = Rig(connection(), adapter=FakeAdapter(answer=_raise(bad)))
    r.given(*(contact(f"c{i}") for i in range(7)))
    with capture_logs() as logs:
        await r.run()
    (line,) = events(logs, "connection.dead_lettered")
    assert line["count"] == 7 and len(line["contacts"]) == 5
    assert line["error_codes"] == {"REQUIRED": 7} and "LastName" in line["error"]


async def test_breaker_opening_and_closing_are_heard_for_the_connection_and_the_crm() -> None:
    r = Rig(connection())
    r.given(contact("c0"))
    await r.run()  # it worked: its failures are evidence about the CRM
    r.adapter.answer = _raise(Retryable("down", status=503))
    r.breaker.state_after = "open"
    r.given(contact("c1"))
    r.queue.breaker_state = "opened"
    with capture_logs() as logs:
        await r.run()
    assert len(events(logs, "connection.breaker_opened")) == 1
    assert len(events(logs, "crm.breaker_opened")) == 1
    # The probes that close them.
    r = Rig(connection(), breaker=FakeBreaker(verdict="probe"))
    r.given(contact("c2"))
    r.store.queue("sf")  # a fresh queue, closed
    with capture_logs() as logs:
        await r.claim()
        await r.claims.drain(1.0)
    assert len(events(logs, "crm.breaker_closed")) == 1


async def test_a_failed_probe_brings_the_next_probe_one_recovery_time_away() -> None:
    """The probe's claim named its own deadline as the next time; its failure
    re-opened the breaker, whose next probe comes after the recovery time."""
    r = Rig(connection(), adapter=FakeAdapter(answer=_raise(Retryable("down", status=503))))
    r.given(contact("c1"), contact("c2"))
    r.queue.probe, r.queue.breaker_state = True, "opened"
    r.queue.next_eligible_ms = int(r.clock.now_ms()) + 60_000  # the probe's deadline
    with capture_logs() as logs:
        await r.run()
    recovery = SETTINGS.breaker_recovery_seconds * 1000
    assert r.slots.sched.next_due_ms() == r.clock.now_ms() + recovery
    (line,) = events(logs, "connection.breaker_opened")
    assert line["probe"] is True


async def test_nothing_is_logged_per_request_on_the_happy_path() -> None:
    r = Rig(connection())
    r.given(*(contact(f"c{i}") for i in range(20)))
    with capture_logs() as logs:
        await r.run()
    assert [e for e in logs if e["log_level"] in ("warning", "error")] == []


# -- a property over sequences of answers -----------------------------------------

MODES = (
    "ok",
    "malformed",
    "unavailable",
    "permanent",
    "rate_limited",
    "auth_failed",
    "raises",
    "short",
    "mixed",
)
WAITS = frozenset({"rate_limited", "auth_failed"})  # the only releases without an attempt


class Scripted(FakeAdapter):
    """Answers each request with the next mode of ``script``, then ``tail`` forever."""

    def __init__(self, crm: str, script: list[str], tail: str) -> None:
        super().__init__(crm, answer=self._next)
        self.script = list(script)
        self.tail = tail
        self.modes: list[str] = []

    def _next(self, ops: Sequence[Op]) -> SendResult:
        mode = self.script.pop(0) if self.script else self.tail
        self.modes.append(mode)
        if mode == "ok":
            return ok(ops)
        if mode == "malformed":
            raise Malformed('answered 201 without the record\'s id: {"id": 12345}')
        if mode == "unavailable":
            raise Retryable("Service Unavailable", status=503)
        if mode == "permanent":
            raise Permanent("bad record", status=400, code="INVALID")
        if mode == "rate_limited":
            raise RateLimited("slow down", retry_after=2.0)
        if mode == "auth_failed":
            raise AuthFailed("token revoked", status=401)
        if mode == "raises":
            raise AttributeError("'list' object has no attribute 'get'")
        if mode == "short":
            return SendResult(ok(ops).results[:-1])
        assert mode == "mixed"
        res = ok(ops).results
        res[0] = RecordResult(ops[0].contact_id, False, error=Malformed("not confirmed"))
        return SendResult(res)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    crm=st.sampled_from(["salesforce", "hubspot"]),
    batch=st.sampled_from([1, 3]),
    n=st.integers(1, 6),
    script=st.lists(st.sampled_from(MODES), max_size=25),
    tail=st.sampled_from([m for m in MODES if m not in WAITS]),
    prior=st.lists(st.sampled_from(["none", "retrying", "synced", "dead-no-id"]), min_size=6,
                   max_size=6),
)  # fmt: skip
async def test_every_change_ends_synced_skipped_or_dead_in_bounded_claims(
    crm: str, batch: int, n: int, script: list[str], tail: str, prior: list[str]
) -> None:
    adapter = Scripted(crm, script, tail)
    r = Rig(connection(crm, batch_size=batch), adapter=adapter)
    ledger: dict[str, LedgerRow] = {}
    people = []
    for i in range(n):
        c = replace(contact(f"c{i}", 2), company="Acme")
        people.append(c)
        if prior[i] == "retrying":
            ledger[c.id] = LedgerRow(None, None, "retrying", 1)
        elif prior[i] == "synced":
            ledger[c.id] = LedgerRow(f"X{i}", 1, "synced")
        elif prior[i] == "dead-no-id":
            ledger[c.id] = LedgerRow(None, None, "dead", 3)
    r.given(*people, ledger=ledger)
    attempts: Counter[str] = Counter()
    # Every claim sends at least one request (or settles everything), each request
    # either costs its records an attempt or uses up one of the script's waits.
    bound = len(script) + n * POLICY_ATTEMPTS + 2
    for _ in range(bound):
        if not (r.queue.ready or r.queue.delayed):
            break
        r.queue.ready.extend(r.queue.delayed)  # their backoff has passed
        r.queue.delayed.clear()
        r.queue.paused = None  # an operator resumed the connection
        before = {c.id: r.row(c.id) for c in people}
        sent_before = len(adapter.sent)
        await r.run()
        assert not r.queue.leased, "every claimed id was settled, retried or released"
        modes = adapter.modes[sent_before:]
        for ops, mode in zip(adapter.sent[sent_before:], modes, strict=True):
            for op in ops:
                row = r.row(op.contact_id)
                if op.contact_id in r.queue.ready:
                    # Back without an attempt: only for a reason in the allowed set.
                    assert mode in WAITS, (mode, op.contact_id)
                    assert row == before[op.contact_id]
                else:
                    assert row is not None and row[0] in ("synced", "retrying", "dead")
                    if row[0] in ("retrying", "dead"):
                        attempts[op.contact_id] += 1
                        assert row[3] <= POLICY_ATTEMPTS, "attempts never exceed the policy"
    else:
        pytest.fail(f"not settled within {bound} claims: {r.queue}")
    for c in people:
        row = r.row(c.id)
        assert row is not None and row[0] in ("synced", "skipped", "dead"), (c.id, row)
        if row[0] == "dead":
            assert any(d.contact_id == c.id for _, d in r.ledger.dead) or prior[int(c.id[1:])] == (
                "dead-no-id"
            )


async def test_a_poison_record_holds_back_nothing_beyond_its_own_retries() -> None:
    """One contact whose every answer is malformed among 20 good ones on the same
    connection: the good ones sync in the first claim; the poison one is sent
    exactly as often as the retry policy allows, then dead-lettered."""

    def answer(ops: Sequence[Op]) -> SendResult:
        if ops[0].contact_id == "bad":
            raise Malformed('Salesforce answered 201 without the record\'s id: {"id": 12345}')
        return ok(ops)

    r = Rig(connection(), adapter=FakeAdapter(answer=answer))
    r.given(contact("bad"), *(contact(f"g{i}") for i in range(20)))
    await r.run()
    assert all(r.row(f"g{i}") == ("synced", f"X-g{i}", 1, 0) for i in range(20))
    for _ in range(10):
        if not r.queue.delayed:
            break
        r.queue.ready.extend(r.queue.delayed)
        r.queue.delayed.clear()
        await r.run()
    assert sum(ops[0].contact_id == "bad" for ops in r.adapter.sent) == POLICY_ATTEMPTS
    row = r.row("bad")
    assert row is not None and row[0] == "dead" and row[3] == POLICY_ATTEMPTS
    ((_, dead),) = r.ledger.dead
    assert '{"id": 12345}' in dead.error and dead.error_code is None


async def test_every_request_of_a_send_is_counted() -> None:
    """A HubSpot lookup before a retried create, an update after a conflict: the CRM
    counts each request, and so does the connection's `requests` counter."""
    r = Rig(connection("hubspot"))
    r.adapter.follow_ups = 1
    r.given(contact("c1"), contact("c2"))
    await r.run()
    assert r.queue.counters["requests"] == 4 and r.row("c2") == ("synced", "X-c2", 1, 0)
