from __future__ import annotations

from crmsync.worker.slots import CLAIM_CAP, IDLE_RECHECK_MS, Scheduler, expected_requests


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
