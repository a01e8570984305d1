from __future__ import annotations

from crmsync.queue.store import Claim
from crmsync.worker.slots import (
    CLAIM_CAP,
    IDLE_RECHECK_MS,
    OWN_SHARE_RECHECK_MS,
    Scheduler,
    Slots,
    expected_requests,
)


def test_earliest_first_and_round_robin_on_ties() -> None:
    s = Scheduler()
    s.add(["a", "b", "c"], now_ms=0)
    assert s.take_due(0, limit=2) == ["a", "b"]
    s.done("a", 0, now_ms=0)  # still has work and room: due again, behind c
    assert s.take_due(0, limit=10) == ["c", "a"]


def test_not_handed_out_before_next_eligible_time() -> None:
    s = Scheduler()
    s.add(["a"], now_ms=0)
    assert s.take_due(0, 5) == ["a"]
    s.done("a", 1000, now_ms=0)
    assert s.take_due(999, 5) == []
    assert s.next_due_ms() == 1000
    assert s.take_due(1000, 5) == ["a"]


def test_busy_connection_is_not_handed_out_twice() -> None:
    s = Scheduler()
    s.add(["a"], now_ms=0)
    assert s.take_due(0, 5) == ["a"]
    assert s.take_due(10, 5) == []
    s.done("a", None, now_ms=10)  # nothing queued: asked again on a wake-up only
    assert s.next_due_ms() == 10 + IDLE_RECHECK_MS


def test_a_wake_during_a_claim_makes_the_connection_due_when_it_is_done() -> None:
    """The claim in flight may have run before the woken work was queued: a wake
    it swallowed would leave that work until the idle recheck (5 s)."""
    s = Scheduler()
    s.add(["a"], now_ms=0)
    assert s.take_due(0, 5) == ["a"]
    s.wake(["a"], now_ms=1)  # while a claim is in flight: not handed out twice
    assert s.take_due(2, 5) == []
    s.done("a", None, now_ms=3)
    assert s.take_due(3, 5) == ["a"]
    s.done("a", None, now_ms=4)  # the wake counts once
    assert s.next_due_ms() == 4 + IDLE_RECHECK_MS


def test_wake_makes_idle_connection_due_now() -> None:
    s = Scheduler()
    s.add(["a"], now_ms=0)
    s.take_due(0, 1)
    s.done("a", None, now_ms=0)
    s.wake(["a", "unknown"], now_ms=50)
    assert s.take_due(50, 5) == ["a"]


def test_wake_does_not_delay_an_earlier_time() -> None:
    s = Scheduler()
    s.add(["a"], now_ms=0)
    s.wake(["a"], now_ms=100)
    assert s.next_due_ms() == 0


def test_removed_connection_disappears() -> None:
    s = Scheduler()
    s.add(["a", "b"], now_ms=0)
    s.remove("a")
    assert s.take_due(0, 5) == ["b"]
    assert len(s) == 0


def test_a_claim_reserves_twice_what_the_last_one_got() -> None:
    """A claim holds its slots until it knows what was queued: a quiet connection
    (one contact per claim) reserves 2, not a whole claim's 64, so the quiet
    connections due with it find slots; a backlog grows back to 64 in a few claims."""
    assert expected_requests(0) == 1 and expected_requests(1) == 2
    sizes = [1]
    while sizes[-1] < CLAIM_CAP:
        sizes.append(expected_requests(sizes[-1]))
    assert sizes == [1, 2, 4, 8, 16, 32, CLAIM_CAP]


def _claim(cid: str, permits: int, *, refused: str | None = None, nxt: int | None = 0) -> Claim:
    ids = [f"{cid}-{i}" for i in range(permits)]
    return Claim(cid, "t", ids, [0] * permits, permits, 0, nxt, False, refused, 0)


def test_a_first_claim_reserves_a_whole_claim_then_what_it_was_granted_twice() -> None:
    slots = Slots(200)
    slots.add(["a"], 0)
    assert slots.take_due(0, {"a"}) == [("a", CLAIM_CAP)]
    slots.claimed(_claim("a", 3), CLAIM_CAP, now_ms=0)  # 3 granted: the rest freed at once
    assert slots.reserved == 3 and slots.held["a"] == 3
    assert slots.take_due(0, {"a"}) == [("a", 6)]
    slots.claimed(_claim("a", 0, refused="rate_limited", nxt=500), 6, now_ms=0)
    assert slots.expect["a"] == 6  # a refusal for its limits tells nothing of the queue
    assert slots.take_due(499, {"a"}) == [] and slots.sched.next_due_ms() == 500


def test_one_connection_never_holds_every_slot_beside_others() -> None:
    """Beside other connections one may hold 3/4 of the slots (150 of 200): its
    claims stop there and it comes back soon; a quiet one finds the rest."""
    slots = Slots(200)
    known = {"big", "quiet"}
    wants = []
    for _ in range(4):
        slots.add(["big"], 0)
        for cid, want in slots.take_due(0, known):
            slots.claimed(_claim(cid, want), want, now_ms=0)  # granted all it asked
            wants.append(want)
    assert wants == [CLAIM_CAP, CLAIM_CAP, 150 - 2 * CLAIM_CAP] and slots.held["big"] == 150
    assert slots.sched.next_due_ms() == OWN_SHARE_RECHECK_MS
    slots.add(["quiet"], 0)
    assert slots.take_due(0, known) == [("quiet", 50)]  # every slot the big one left
    # Alone in the process, a connection may take every slot.
    alone = Slots(200)
    alone.held["big"] = alone.reserved = 150
    alone.add(["big"], 0)
    assert alone.take_due(0, {"big"}) == [("big", 50)]


def test_no_free_slot_keeps_a_connection_due_and_the_loop_waits_at_most_a_second() -> None:
    slots = Slots(4)
    slots.add(["a", "b"], 0)
    assert slots.take_due(0, {"a", "b"}) == [("a", 4)]
    assert slots.wait_seconds(0) == 1.0  # no slot free: a freed slot kicks the loop
    slots.kick.clear()
    slots.free("a", 4)
    assert slots.kick.is_set() and slots.take_due(0, {"a", "b"}) == [("b", 4)]
    slots.free("b", 4)
    slots.claimed(_claim("a", 0, refused="empty", nxt=None), 0, now_ms=0)
    slots.claimed(_claim("b", 0, refused="circuit_open", nxt=300), 0, now_ms=0)
    assert slots.wait_seconds(0) == 0.3


def test_a_connection_no_longer_known_is_forgotten() -> None:
    slots = Slots(10)
    slots.add(["gone"], 0)
    assert slots.take_due(0, {"other"}) == [] and len(slots.sched) == 0
