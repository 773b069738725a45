"""`sam2videox report`: one run's summary (.md, and a .json twin): the store's figures, the training
figures, the held-out validation, the evaluation's headline and where every file is."""

from __future__ import annotations

import json
import os
from pathlib import Path

from stages.store import FeatureStore

# of the evaluation rows: the headline structure score, the motion it was read at, FVD, validation L_diff
HEADLINE = ("structure_score", "flow_magnitude", "fvd", "val/diff")


class ReportError(ValueError):
    """A summary that cannot be written; the message names the missing input and the fix."""


def write_run_report(store: str, run: Path, out: Path, evaluation: Path | None = None, files: list[str] | None = None) -> Path:
    """Write <out> (markdown) and <out>.json; returns out. StoreError when the store cannot be read,
    ReportError when --evaluation has no report.md."""
    from stages.extract.columns.teacher import real_size_bytes_per_clip

    store_info = FeatureStore(store).summary()
    train = json.loads((run / "summary.json").read_text())
    lines = [
        "# SAM2VideoX run summary",
        "",
        f"- store: `{store_info['store']}`: {store_info['clips']} clips in {store_info['shards']} shards, {store_info['failed']} failed",
    ]
    for col in store_info["columns"]:
        lines.append(f"  - column `{col['dir']}`: {col['clips']} clips, {col['bytes_per_clip'] / 1e3:.1f} kB/clip, arrays "
                     + ", ".join(f"{k} {tuple(v['shape'])} {v['dtype']}" for k, v in col["arrays"].items()))
    real = real_size_bytes_per_clip()
    store_info["teacher_bytes_per_clip_real_size"] = sum(real.values())
    lines.append(f"- teacher bytes per clip at the real size (49x480x720, SAM 2.1 Hiera-L, default feature; from the schema): "
                 f"{sum(real.values()) / 1e6:.2f} MB (" + ", ".join(f"{k} {v / 1e6:.2f}" for k, v in real.items()) + ")")
    lines += [
        f"- training: {train['steps']} steps on {train['world_size']} rank(s), {train['mean_step_seconds']:.3f} s/step, "
        f"data wait {train['data_wait_share']:.1%} of step time",
        loss_line(run / "metrics.jsonl"),
        *val_lines(run),
        f"- LoRA for the stock diffusers pipelines: `{train['exported']}`",
        f"- loss curve: `{run / 'loss_curve.png'}`; metrics: `{run / 'metrics.jsonl'}`; TensorBoard: `{run / 'tensorboard'}`",
    ]
    lines += [f"- `{f}`" for f in files or []]
    evaluated = evaluation_lines(evaluation, out.parent) if evaluation is not None else []
    lines += evaluated
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"store": store_info, "training": train, "files": files or [],
                                                    "evaluation": str(evaluation / "report.md") if evaluated else None}, indent=1, default=str))
    return out


def evaluation_lines(folder: Path, relative_to: Path) -> list[str]:
    """The evaluation's report linked (relative to the summary) with its rows and headline columns."""
    report_md, report_json = folder / "report.md", folder / "report.json"
    if not report_md.is_file():
        raise ReportError(f"--evaluation {folder}: no report.md there (run `sam2videox evaluate --out {folder}` first)")
    link = os.path.relpath(report_md, relative_to)
    lines = [f"- evaluation on held-out clips: [{link}]({link})"]
    try:
        data = json.loads(report_json.read_text())
        rows = data["rows"]
        protocol = data["protocol"]

        def cells(row: dict) -> str:
            return ", ".join(f"{k} {row[k]:.4g}" if isinstance(row.get(k), (int, float)) else f"{k} -" for k in HEADLINE if k in row)

        lines.append(f"  - {protocol['videos_per_model']} clip(s), {protocol['frames']} frames, {protocol['sampling_steps']} sampling steps; "
                     + "; ".join(f"{name}: {cells(row)}" for name, row in rows.items()))
    except (OSError, ValueError, KeyError, TypeError):
        pass  # the link is the point; the figures are a convenience
    return lines


def loss_line(metrics: Path) -> str:
    """Mean losses over the first and the last few steps (single steps are dominated by the random timestep)."""
    from stages.distill.curves import read_metrics

    rows = read_metrics(metrics)
    n = max(1, min(5, len(rows) // 2))

    def mean(part: list[dict]) -> str:
        terms = {k: sum(r["terms"][k] for r in part) / len(part) for k in part[0]["terms"]}
        return f"{sum(r['loss'] for r in part) / len(part):.4f} (" + ", ".join(f"{k} {v:.4f}" for k, v in terms.items()) + ")"

    return f"- loss, mean of the first {n} steps: {mean(rows[:n])}; of the last {n}: {mean(rows[-n:])}"


def val_lines(run: Path) -> list[str]:
    """The held-out split and the first and last validation (fixed t and noise) of a run, if it has them."""
    from stages.distill.curves import read_metrics
    from stages.store.holdout import HoldoutError, read_holdout

    try:
        split = read_holdout(run)
    except HoldoutError:
        return []
    lines = [f"- held out: {len(split.keys)} of {split.total} clips (`{run / 'holdout.json'}`), never trained on"]
    rows = read_metrics(run / "metrics.jsonl", "val") if (run / "metrics.jsonl").exists() else []
    if rows:
        def terms(r: dict) -> str:
            return ", ".join(f"{k} {v:.4f}" for k, v in r["terms"].items() if "@" not in k) + (f"; n/a: {', '.join(r['n/a'])}" if r["n/a"] else "")

        lines.append(f"- validation on {rows[-1]['clips']} held-out clip(s), step {rows[0]['step']}: {terms(rows[0])}; "
                     f"step {rows[-1]['step']}: {terms(rows[-1])}")
    return lines
