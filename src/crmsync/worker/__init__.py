"""SyncWorker: claim, read, decide, send, record, acknowledge.

One module per concern; ``crmsync.processes.build_worker`` wires them:

- ``loop``: ``Worker``, the slot loop and the wake listener;
- ``slots``: the process's send slots per connection, and the ``Scheduler``;
- ``claim``: one claim run (claim → load → plan → send → sort → record);
- ``plan`` / ``outcome``: the pure halves of a claim (decisions grouped into
  requests; a request's result sorted into what the claim writes back);
- ``permits``: a claim's rate-limit permits from admission to the write;
- ``ledger``: what a claim reads and records in PostgreSQL;
- ``crm_gate``: the CRM-wide circuit breaker as this process asks it;
- ``inflight``: the adaptive in-flight limit per connection;
- ``registry``: the connections, mirrored from PostgreSQL into Redis;
- ``ports``: the protocols of the store, ledger and breaker (fakes in tests).
"""

from __future__ import annotations

from crmsync.worker.loop import Worker

__all__ = ["Worker"]
