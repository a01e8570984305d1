"""PNG charts of a scenario: sent requests per second, per connection, against its limit.

Two files per scenario with connections: ``<scenario>-total.png`` (all
connections summed, against the summed limits) and
``<scenario>-connections.png`` (one small chart per connection, its limit as
a dashed line). The per-second series are the workers' request counters,
sampled once a second, so a second can show a claim's requests landing late.
"""

from __future__ import annotations

import math
from pathlib import Path

from crmsync_lab.bench.report import ScenarioResult

MAX_PANELS = 60


def plot(result: ScenarioResult, out_dir: Path) -> list[Path]:
    """Write the charts of ``result`` into ``out_dir``; returns their paths."""
    series = [c for c in result.connections if c.series]
    if not series:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []

    length = max(len(c.series) for c in series)
    total = [sum(c.series[i] if i < len(c.series) else 0.0 for c in series) for i in range(length)]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(range(1, length + 1), total, label="sent req/s (all connections)")
    limits = [c.limit_per_s for c in series]
    if all(v is not None for v in limits):
        ax.axhline(
            sum(v or 0.0 for v in limits), color="red", linestyle="--", label="sum of limits"
        )
    ax.set_xlabel("second of the measured window")
    ax.set_ylabel("requests / s")
    ax.set_title(f"{result.scenario}: sent requests per second")
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower right")
    path = out_dir / f"{result.scenario}-total.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(path)

    shown = series[:MAX_PANELS]
    cols = min(5, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.2 * cols, 2.2 * rows), squeeze=False, sharex=True
    )
    for i, c in enumerate(shown):
        ax = axes[i // cols][i % cols]
        ax.plot(range(1, len(c.series) + 1), c.series, linewidth=1)
        if c.limit_per_s is not None:
            ax.axhline(c.limit_per_s, color="red", linestyle="--", linewidth=1)
            ax.set_ylim(0, c.limit_per_s * 1.5)
        else:
            ax.set_ylim(bottom=0)
        ax.set_title(c.id, fontsize=8)
        ax.tick_params(labelsize=7)
    for j in range(len(shown), rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.suptitle(f"{result.scenario}: sent req/s per connection (dashed: its limit)")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path = out_dir / f"{result.scenario}-connections.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    paths.append(path)
    return paths
