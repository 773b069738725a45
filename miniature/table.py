"""The miniature ablation table: evaluate's per-video rows pooled over each arm's training seeds.

`sam2videox evaluate` scores every run folder (<arm>-s<seed>) and the base on the same held-out clips
and sampling seeds; it compares models one by one. The table pools an arm's repeats: a video is keyed
(clip, training seed x sampling seed), each arm's mean has the two-level bootstrap interval of
stages/evaluate/stats.py (clips, then the repeats within a clip), and each arm is compared with the
reference arm (L_diff only) on the same (clip, training seed, sampling seed) triples, which saw the same
clips, noise and first frames in training and sampling. The protocol (arms, seeds, clips, metrics, the
reference) is fixed before the held-out numbers are read; a difference is bold only when its 95%
interval excludes 0 and the metric is not motion-confounded (†), as in evaluate's own report.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from miniature.arms import arm_of
from stages.evaluate.report import confounded, direction
from stages.evaluate.stats import Interval, bootstrap, paired_difference, verdict

REFERENCE = "ldiff"
BASE = "base"
SEED_STRIDE = 1000  # key seed = training seed * SEED_STRIDE + sampling seed (sampling seeds are < 1000)


def pooled(per_video: list[dict], metric: str) -> dict[str, dict[tuple[str, int], float]]:
    """{arm: {(clip, training seed * 1000 + sampling seed): value}}; the base keeps its sampling seed."""
    out: dict[str, dict[tuple[str, int], float]] = {}
    for row in per_video:
        value = row.get(metric)
        if value is None:
            continue
        if row["model"] == BASE:
            arm, key_seed = BASE, int(row["seed"])
        else:
            arm, train_seed = arm_of(row["model"])
            key_seed = train_seed * SEED_STRIDE + int(row["seed"])
        out.setdefault(arm, {})[(row["clip"], key_seed)] = float(value)
    return out


def _against_base(values: dict[tuple[str, int], float], base: dict[tuple[str, int], float]) -> dict[tuple[str, int], float]:
    """The base's value under each of an arm's keys (same clip and sampling seed), so the two pair up."""
    return {(clip, s): base[(clip, s % SEED_STRIDE)] for clip, s in values if (clip, s % SEED_STRIDE) in base}


def build_table(report: dict[str, Any], reference: str = REFERENCE) -> dict[str, Any]:
    per_video = report["per_video"]
    metrics = [k for k in dict.fromkeys(k for r in per_video for k in r) if k not in ("model", "clip", "seed")]
    arms: list[str] = []
    for r in per_video:
        arm = BASE if r["model"] == BASE else arm_of(r["model"])[0]
        if arm not in arms:
            arms.append(arm)
    table: dict[str, Any] = {"reference": reference, "arms": arms, "metrics": metrics, "means": {}, "vs_reference": {},
                             "vs_base": {}, "verdicts": {}, "directions": {m: direction(m) for m in metrics},
                             "confounded": [m for m in metrics if confounded(m)]}
    for m in metrics:
        values = pooled(per_video, m)
        for arm in arms:
            iv = bootstrap(values.get(arm, {}))
            table["means"].setdefault(arm, {})[m] = iv.to_json() if iv else None
            if arm not in (reference, BASE) and reference in values:
                d = paired_difference(values.get(arm, {}), values[reference])
                table["vs_reference"].setdefault(arm, {})[m] = d.to_json() if d else None
                table["verdicts"].setdefault(arm, {})[m] = verdict(d, direction(m))
            if arm != BASE and BASE in values:
                d = paired_difference(values.get(arm, {}), _against_base(values.get(arm, {}), values[BASE]))
                table["vs_base"].setdefault(arm, {})[m] = d.to_json() if d else None
    return table


def _cell(iv: dict | None, signed: bool = False) -> str:
    if iv is None:
        return "n/a"
    f = "{:+.4f}" if signed else "{:.4f}"
    return f"{f.format(iv['mean'])} [{f.format(iv['low'])}, {f.format(iv['high'])}]"


def render(table: dict[str, Any], protocol: dict[str, Any]) -> str:
    arms, metrics, ref = table["arms"], table["metrics"], table["reference"]
    arrow = {"higher": " ↑", "lower": " ↓", None: ""}
    head = [f"{m}{arrow[table['directions'][m]]}{' †' if m in table['confounded'] else ''}" for m in metrics]
    lines = ["# Miniature ablation", "",
             f"Held-out clips: {protocol.get('clips_per_model')} ({protocol.get('store')}); training seeds per arm: "
             f"{protocol.get('training_seeds')}; sampling seeds: {protocol.get('seeds')}; {protocol.get('sampling_steps')} "
             f"sampling steps; judge: {protocol.get('judge', {}).get('checkpoint') or protocol.get('judge', {}).get('model')}.",
             "", "## Means [95% bootstrap interval over clips, then repeats]", "",
             "| arm | " + " | ".join(head) + " |", "|---" * (len(metrics) + 1) + "|"]
    for arm in arms:
        lines.append(f"| {arm} | " + " | ".join(_cell(table["means"][arm].get(m)) for m in metrics) + " |")
    for title, key in ((f"## Paired difference, arm - {ref} (same clip, training seed, sampling seed)", "vs_reference"),
                       ("## Paired difference, arm - base (same clip, sampling seed)", "vs_base")):
        rows = table[key]
        if not rows:
            continue
        lines += ["", title, "", "| arm | " + " | ".join(head) + " |", "|---" * (len(metrics) + 1) + "|"]
        for arm, by in rows.items():
            cells = []
            for m in metrics:
                iv = by.get(m)
                text = _cell(iv, signed=True)
                if (iv is not None and Interval(**iv).excludes_zero() and table["directions"][m] is not None
                        and m not in table["confounded"]):
                    text = f"**{text}**"
                cells.append(text)
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += ["", "Bold: the 95% interval excludes 0, for a metric with a direction (↑/↓: which way is better) that is not "
              "motion-confounded (†). Motion measures (no arrow) are context: how much the samples move.", ""]
    return "\n".join(lines)


def write_table(report_path: Path, out: Path, training_seeds: list[int], reference: str = REFERENCE) -> dict[str, Any]:
    report = json.loads(report_path.read_text())
    table = build_table(report, reference)
    protocol = {**report["protocol"], "training_seeds": training_seeds}
    table["protocol"] = protocol
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(table, indent=1, sort_keys=True, default=str))
    (out / "ablation.md").write_text(render(table, protocol))
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", type=Path, required=True, help="evaluate's report.json")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--training-seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--reference", default=REFERENCE)
    args = parser.parse_args(argv)
    write_table(args.report, args.out, args.training_seeds, args.reference)


if __name__ == "__main__":
    main()
