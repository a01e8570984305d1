"""Where the lab's ``many`` benchmark imports the scheduler from (``bench/scale.py``).

The scheduler is ``crmsync.worker.slots.Scheduler``; this name goes once the
benchmark imports it from there.
"""

from __future__ import annotations

from crmsync.worker.slots import Scheduler

__all__ = ["Scheduler"]
