"""One comparison: report.md (tables with intervals, definitions, protocol), report.json and a chart PNG.

How the report reads (README "Reading the report"):
- Per-video metrics: each model's mean over its videos (clips x seeds) with a 95% bootstrap interval
  (stages/evaluate/stats.py). Nothing is bolded here: overlapping means are not a ranking.
- Paired differences to the reference model (the base, or --reference): model - reference over the
  same (clip, seed) pairs, with a 95% bootstrap interval. Only a difference whose interval excludes 0
  is bolded, as "better" or "worse" by the metric's direction; otherwise it says "within noise".
  A metric that fails the invariance battery (registry.Metric.motion_confounded: a still video would
  win it) is never bolded: its verdict carries a dagger and is read beside the motion difference
  (`flow_magnitude`), printed next to it.
- Corpus metrics (FVD, VBench, validation) are one value per model, FVD with its own interval or
  "n/a (N=..)" below its minimum number of videos.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from stages.evaluate.metrics.registry import CORPUS_DIRECTIONS, METRICS, MOTION
from stages.evaluate.scoring import Summary
from stages.evaluate.stats import Interval

ARROWS = {"higher": "↑", "lower": "↓"}
VALIDATION_DIRECTIONS = {"val/diff": "lower", "val/lgf": "lower", "val/lgf_projected": "lower", "val/repa_cos": "higher",
                         "val/mask_iou": "higher"}


def direction(metric: str) -> str | None:
    """A metric's direction: registry metrics, FVD/VBench corpus metrics, validation terms (val/diff@t too)."""
    if metric in METRICS:
        return METRICS[metric].direction
    if metric in CORPUS_DIRECTIONS or metric in VALIDATION_DIRECTIONS:
        return CORPUS_DIRECTIONS.get(metric) or VALIDATION_DIRECTIONS[metric]
    if metric.startswith("vbench_"):
        return "higher"  # VBench normalises every dimension so
    if metric.startswith("val/diff@"):
        return "lower"
    return None


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fmt(v, signed: bool = False) -> str:
    if not _finite(v):
        return "-"
    v = 0.0 if abs(v) < 1e-12 else v  # round-off of a mean of differences that cancel
    text = f"{v:+.3g}" if signed else f"{v:.3g}"
    return text if abs(v) < 1e4 else (f"{v:+.0f}" if signed else f"{v:.0f}")


def _interval(iv: Interval | None, signed: bool = False) -> str:
    if iv is None:
        return "-"
    return f"{_fmt(iv.mean, signed)} [{_fmt(iv.low, signed)}, {_fmt(iv.high, signed)}]"


def confounded(metric: str) -> bool:
    """A still or slowed video can win it (registry metrics by the battery; VBench's by its adapter)."""
    from stages.evaluate.metrics.vbench_adapter import MOTION_CONFOUNDED

    if metric in METRICS:
        return METRICS[metric].motion_confounded
    return metric.startswith("vbench_") and metric.removeprefix("vbench_") in MOTION_CONFOUNDED


def _head(metric: str) -> str:
    d = direction(metric)
    dagger = "†" if confounded(metric) else ""
    return f"{metric}{dagger} {ARROWS[d]}" if d else f"{metric}{dagger}"


def _diff_cell(summary: Summary, model: str, metric: str) -> str:
    diff, word = summary.paired[model].get(metric), summary.verdicts[model].get(metric, "n/a")
    if diff is None:
        return "-"
    if word in ("better", "worse") and not confounded(metric):
        word = f"**{word}**"
    elif word in ("better", "worse"):
        motion = summary.paired[model].get(MOTION)
        word = f"{word}† (motion {_interval(motion, signed=True)})"
    return f"{_interval(diff, signed=True)} {word}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def render(summary: Summary, corpus: dict[str, dict[str, object]], protocol: dict, definitions: dict[str, str],
           warnings: list[str], title: str) -> str:
    metrics = [m for m in dict.fromkeys(k for by in summary.means.values() for k in by)]
    lines = [f"# {title}", ""]
    lines += [f"> **warning**: {w}" for w in warnings] + ([""] if warnings else [])
    lines += ["## Per-video metrics", "",
              f"Mean over each model's videos (clips x seeds) [95% bootstrap interval]; ↑ higher / ↓ lower is better; "
              f"† fails the invariance battery (a still or slowed video can win it): read it beside {MOTION}.", ""]
    lines += _table(["model", *map(_head, metrics)],
                    [[m, *(_interval(summary.means[m].get(k)) for k in metrics)] for m in summary.models])
    if summary.reference is not None and summary.paired:
        lines += ["", f"## Paired differences to `{summary.reference}`", "",
                  "model - reference on the same (clip, seed) pairs [95% bootstrap interval over clips and seeds]. "
                  "**better** / **worse**: the interval excludes 0; within noise: it does not; † never bolded "
                  "(motion-confounded), shown with the motion difference.", ""]
        lines += _table(["model", *map(_head, metrics)],
                        [[m, *(_diff_cell(summary, m, k) for k in metrics)] for m in summary.paired])
    columns = list(dict.fromkeys(k for by in corpus.values() for k in by))
    if columns:
        lines += ["", "## Corpus metrics", "", "One value per model over all its videos (FVD: [95% bootstrap interval] over videos).", ""]
        lines += _table(["model", *map(_head, columns)],
                        [[m, *(_corpus_cell(corpus[m].get(k)) for k in columns)] for m in corpus])
    lines += ["", "## What each column means", ""]
    for name in [*metrics, *columns]:
        if name in definitions:
            lines.append(f"- **{name}**: {definitions[name]}")
    scope = protocol.get("vbench", {}).get("scope") if isinstance(protocol.get("vbench"), dict) else None
    if scope:
        lines += ["", f"VBench: {scope}"]
    lines += ["", "## Protocol", ""]
    for k, v in protocol.items():
        lines.append(f"- **{k}**: {json.dumps(v, default=str) if isinstance(v, (dict, list)) else v}")
    lines += ["", "![metrics](report.png)", ""]
    return "\n".join(lines)


def _corpus_cell(v) -> str:
    if isinstance(v, dict):  # {"value", "low", "high"} or {"skipped": "n/a (N=..)"}
        if v.get("value") is None:
            return str(v.get("skipped", "n/a"))
        if v.get("low") is None:
            return _fmt(v["value"])
        return f"{_fmt(v['value'])} [{_fmt(v['low'])}, {_fmt(v['high'])}]"
    return _fmt(v)


def definitions_for(extra: dict[str, str] | None = None) -> dict[str, str]:
    out = {name: m.measures + (" (fails the invariance battery: never best alone)" if m.motion_confounded else "")
           for name, m in METRICS.items()}
    return {**out, **(extra or {})}


def flat_rows(summary: Summary, corpus: dict[str, dict[str, object]]) -> dict[str, dict[str, float | None]]:
    """model -> column -> value: per-video means and corpus values in one row; every model has every column
    (None: not measured for it). report.json's "rows"."""
    means = summary.mean_values()
    flat = {m: {**means.get(m, {}), **{k: (v.get("value") if isinstance(v, dict) else v) for k, v in corpus.get(m, {}).items()}}
            for m in summary.models}
    columns = sorted({k for by in flat.values() for k in by})
    return {m: {k: (float(by[k]) if _finite(by.get(k)) else None) for k in columns} for m, by in flat.items()}


def write_report(summary: Summary, corpus: dict[str, dict[str, object]], protocol: dict, out_dir, definitions: dict[str, str] | None = None,
                 warnings: list[str] | None = None, title: str = "Evaluation") -> dict[str, Path]:
    """Write out_dir/report.md, report.json, report.png; return {"md", "json", "png"} -> path.

    corpus: model -> {column: float, or {"value", "low", "high"} / {"value": None, "skipped": why}}.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    definitions = definitions_for(definitions)
    warnings = list(warnings or [])
    paths = {"md": out / "report.md", "json": out / "report.json", "png": out / "report.png"}
    paths["md"].write_text(render(summary, corpus, protocol, definitions, warnings, title))
    rows = flat_rows(summary, corpus)
    metrics = sorted({k for by in rows.values() for k in by})
    data = {
        "rows": rows,
        "intervals": {m: {k: (iv.to_json() if iv else None) for k, iv in by.items()} for m, by in summary.means.items()},
        "reference": summary.reference,
        "paired": {m: {k: (iv.to_json() if iv else None) for k, iv in by.items()} for m, by in summary.paired.items()},
        "verdicts": summary.verdicts,
        "per_video": summary.rows,
        "corpus": corpus,
        "directions": {k: direction(k) for k in metrics},
        "motion_confounded": sorted(k for k, m in METRICS.items() if m.motion_confounded),
        "definitions": definitions,
        "warnings": warnings,
        "protocol": protocol,
    }
    paths["json"].write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    _chart(summary, paths["png"])
    return paths


def _chart(summary: Summary, path: Path) -> None:
    """One small panel per per-video metric: each model's mean with its interval as an error bar."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    metrics = [m for m in dict.fromkeys(k for by in summary.means.values() for k in by)]
    models = summary.models
    n = max(len(metrics), 1)
    cols = min(n, 4)
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(3.2 * cols, 2.6 * math.ceil(n / cols)), squeeze=False)
    colours = [plt.get_cmap("tab10")(i % 10) for i in range(len(models))]
    for ax, metric in zip(axes.ravel(), metrics):
        ivs = [summary.means[m].get(metric) for m in models]
        means = [iv.mean if iv else 0.0 for iv in ivs]
        err = [[(iv.mean - iv.low) if iv else 0.0 for iv in ivs], [(iv.high - iv.mean) if iv else 0.0 for iv in ivs]]
        ax.bar(range(len(models)), means, yerr=err, capsize=3, color=colours)
        ax.set_title(_head(metric), fontsize=9)
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(models, rotation=30, ha="right", fontsize=7)
    for ax in axes.ravel()[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
