"""Start the whole system as real processes, load contacts, wait, verify.

``Cluster`` (cluster.py) runs it; ``contacts`` makes realistic contacts;
``expect`` says what each CRM must hold and checks it. Used by ``crmsync
demo``, the acceptance tests and the benchmark.
"""

from __future__ import annotations
