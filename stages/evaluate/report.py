"""One comparison over runs: report.md (table + protocol), report.json and a bar chart PNG.

rows: {run name: {metric name: value or None}}; a None (or missing) value is a metric that was not
measured for that run (shown as "-", never ranked). The best value of each column is marked in bold
with the metric's direction taken from `DIRECTIONS` (or the `directions` argument); metrics without
a known direction are shown unmarked.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from stages.evaluate.metrics import structure as structure_metrics, vbench_adapter, video as video_metrics

DIRECTIONS: dict[str, str] = {
    **video_metrics.DIRECTIONS,
    **structure_metrics.DIRECTIONS,
    **{f"vbench_{k}": v for k, v in vbench_adapter.DIRECTIONS.items()},
    "fvd": "lower",
    # held-out validation columns (stages/distill/validation.py terms as val/<term>; val/diff@<t> too)
    "val/diff": "lower",
    "val/lgf": "lower",
    "val/lgf_projected": "lower",
    "val/repa_cos": "higher",
    "val/mask_iou": "higher",
}
ARROWS = {"higher": "↑", "lower": "↓"}


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _direction(metric: str, directions: dict[str, str]) -> str | None:
    if metric in directions:
        return directions[metric]
    for suffix, d in directions.items():  # "val/mask_consistency" or "structure.presence" inherit the base metric's
        if metric.endswith(("/" + suffix, "." + suffix)):
            return d
    if metric.startswith("val/diff@"):  # L_diff at one fixed timestep
        return "lower"
    return None


def best_per_column(rows: dict[str, dict], metrics: list[str], directions: dict[str, str]) -> dict[str, set[str]]:
    """metric -> the runs holding its best value (ties all marked); metrics without a direction are absent."""
    best: dict[str, set[str]] = {}
    for m in metrics:
        d = _direction(m, directions)
        vals = {run: r.get(m) for run, r in rows.items() if _finite(r.get(m))}
        if d is None or len(vals) < 1:
            continue
        target = max(vals.values()) if d == "higher" else min(vals.values())
        best[m] = {run for run, v in vals.items() if math.isclose(v, target, rel_tol=1e-9, abs_tol=1e-12)}
    return best


def _fmt(v) -> str:
    if not _finite(v):
        return "-"
    return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.1f}"


def write_report(rows: dict[str, dict[str, float | None]], protocol: dict, out_dir, directions: dict[str, str] | None = None,
                 title: str = "Evaluation") -> dict[str, Path]:
    """Write out_dir/report.md, report.json, report.png; return {"md", "json", "png"} -> path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    directions = {**DIRECTIONS, **(directions or {})}
    metrics = sorted({m for r in rows.values() for m in r})
    best = best_per_column(rows, metrics, directions)

    def head(m: str) -> str:
        d = _direction(m, directions)
        return f"{m} {ARROWS[d]}" if d else m

    lines = [f"# {title}", "", "Runs as rows, metrics as columns; ↑ higher is better, ↓ lower is better, "
             "**bold** is the best of its column, - is not measured.", ""]
    lines.append("| run | " + " | ".join(head(m) for m in metrics) + " |")
    lines.append("|---|" + "---|" * len(metrics))
    for run, r in rows.items():
        cells = [(f"**{_fmt(r.get(m))}**" if run in best.get(m, ()) else _fmt(r.get(m))) for m in metrics]
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    lines += ["", "## Protocol", ""]
    for k, v in protocol.items():
        lines.append(f"- **{k}**: {json.dumps(v) if isinstance(v, (dict, list)) else v}")
    lines += ["", "![metrics](report.png)", ""]
    paths = {"md": out / "report.md", "json": out / "report.json", "png": out / "report.png"}
    paths["md"].write_text("\n".join(lines))
    clean = {run: {m: (float(v) if _finite(v) else None) for m, v in r.items()} for run, r in rows.items()}
    paths["json"].write_text(json.dumps({"rows": clean, "protocol": protocol,
                                         "directions": {m: _direction(m, directions) for m in metrics},
                                         "best": {m: sorted(s) for m, s in best.items()}}, indent=2, sort_keys=True, default=str))
    _bar_chart(rows, metrics, directions, paths["png"])
    return paths


def _bar_chart(rows: dict[str, dict], metrics: list[str], directions: dict[str, str], path: Path) -> None:
    """One small bar panel per metric (runs side by side), since metrics have unrelated scales."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    runs = list(rows)
    n = max(len(metrics), 1)
    cols = min(n, 4)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.6 * nrows), squeeze=False)
    colours = [plt.get_cmap("tab10")(i % 10) for i in range(len(runs))]
    for ax, m in zip(axes.ravel(), metrics):
        vals = [rows[r].get(m) for r in runs]
        ax.bar(range(len(runs)), [v if _finite(v) else 0.0 for v in vals], color=colours)
        for i, v in enumerate(vals):
            if not _finite(v):
                ax.text(i, 0, "n/a", ha="center", va="bottom", fontsize=7)
        d = _direction(m, directions)
        ax.set_title(f"{m} {ARROWS[d]}" if d else m, fontsize=9)
        ax.set_xticks(range(len(runs)))
        ax.set_xticklabels(runs, rotation=30, ha="right", fontsize=7)
    for ax in axes.ravel()[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
