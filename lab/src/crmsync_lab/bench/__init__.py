"""``crmsync bench``: scenarios against mock CRMs, with the raw-HTTP ceiling in the same run.

``suite`` lists the scenarios; ``scenarios`` (raw, single, seed), ``load``
(seed-load, batch) and ``scale`` (many, fair) run them on the harness's
``Cluster``; ``stage`` loads backlogs and measures windows; ``sampler``
reads CPU, memory and counters; ``report`` holds the arithmetic and the
tables; ``plot`` draws the charts; ``profile`` runs py-spy on the workers.
"""

from __future__ import annotations
