"""The loss curve of a run, drawn from its metrics.jsonl (one PNG, each loss term on its own axis)."""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_loss_curve(metrics: Path, out: Path) -> Path | None:
    rows = read_metrics(metrics) if Path(metrics).exists() else []
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    names = ["total"] + sorted({k for r in rows for k in r["terms"]})
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.8), squeeze=False)
    steps = [r["step"] for r in rows]
    for ax, name in zip(axes[0], names):
        values = [r["loss"] if name == "total" else r["terms"].get(name, float("nan")) for r in rows]
        ax.plot(steps, values, lw=1.2)
        ax.set_title(f"L_{name}" if name != "total" else "loss")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)
