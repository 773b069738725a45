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
        ax.plot(steps, values, lw=0.8, alpha=0.45, label="per step")
        ax.plot(steps, _moving_average(values, max(3, len(values) // 10)), lw=1.8, label="moving average")
        ax.set_title(f"L_{name}" if name != "total" else "loss")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)


def _moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean: the diffusion loss is dominated by the random timestep of each step."""
    out = []
    for i in range(len(values)):
        chunk = [v for v in values[max(0, i - window + 1) : i + 1] if v == v]
        out.append(sum(chunk) / len(chunk) if chunk else float("nan"))
    return out
