"""The loss curve of a run, drawn from its metrics.jsonl (one PNG, each loss term on its own axis)."""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(path: Path, split: str = "train") -> list[dict]:
    """The rows of one split: "train" (training steps; rows without a split) or "val" (held-out validation)."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("split", "train") == split]


def plot_loss_curve(metrics: Path, out: Path) -> Path | None:
    rows = read_metrics(metrics) if Path(metrics).exists() else []
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    val = read_metrics(metrics, "val")
    names = ["total"] + sorted({k for r in rows for k in r["terms"]})
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.8), squeeze=False)
    steps = [r["step"] for r in rows]
    for ax, name in zip(axes[0], names):
        values = [r["loss"] if name == "total" else r["terms"].get(name, float("nan")) for r in rows]
        ax.plot(steps, values, lw=0.8, alpha=0.45, label="per step")
        ax.plot(steps, _moving_average(values, max(3, len(values) // 10)), lw=1.8, label="moving average")
        # held-out validation (fixed t and noise, so its points compare across steps and runs), on
        # the axis of the training term it measures: L_diff, the projected LGF KL, REPA (-cosine)
        vpoints = [(r["step"], v) for r in val if (v := _val_value(r["terms"], name)) is not None]
        if vpoints:
            ax.plot(*zip(*vpoints), "o-", lw=1.2, ms=3, color="C3", label="held-out (val)")
        ax.set_title(f"L_{name}" if name != "total" else "loss")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    if val and len(names) > 1:
        axes[0][1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)


def _val_value(terms: dict, name: str) -> float | None:
    """The validation value comparable with training term `name` (None: no such value)."""
    if name == "diff" or name == "lgf":
        return terms.get("diff" if name == "diff" else "lgf_projected")
    if name == "repa" and "repa_cos" in terms:
        return -terms["repa_cos"]  # the training term is the negative cosine
    return None


def _moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean: the diffusion loss is dominated by the random timestep of each step."""
    out = []
    for i in range(len(values)):
        chunk = [v for v in values[max(0, i - window + 1) : i + 1] if v == v]
        out.append(sum(chunk) / len(chunk) if chunk else float("nan"))
    return out
