"""stages/evaluate/report.py: intervals in every cell, bold only for differences whose interval excludes 0,
motion-confounded metrics never bolded, corpus cells (FVD n/a), definitions, report.json, the PNG."""

from __future__ import annotations

import json

import numpy as np

from stages.evaluate.metrics.registry import METRICS
from stages.evaluate.report import direction, write_report
from stages.evaluate.scoring import summarise

CONFOUNDED = next(n for n, m in METRICS.items() if m.motion_confounded and m.direction)
STRUCTURE = next(n for n, m in METRICS.items() if m.kind == "structure" and not m.motion_confounded and m.direction == "higher")


def _rows() -> list[dict]:
    """base and two runs on 8 clips x 2 seeds: 'good' is better on STRUCTURE and on CONFOUNDED, 'same' is base again."""
    rng = np.random.default_rng(0)
    rows = []
    for c in range(8):
        effect = rng.normal(0.5, 0.2)
        for s in range(2):
            base = {STRUCTURE: effect, CONFOUNDED: 0.01 + 0.001 * c}
            up = 1.0 if METRICS[CONFOUNDED].direction == "higher" else -1.0
            rows.append({"model": "base", "clip": f"c{c}", "seed": s, **base})
            rows.append({"model": "good", "clip": f"c{c}", "seed": s, STRUCTURE: effect + 0.05, CONFOUNDED: base[CONFOUNDED] + up * 0.005})
            rows.append({"model": "same", "clip": f"c{c}", "seed": s, STRUCTURE: effect + rng.normal(0, 1e-3), CONFOUNDED: base[CONFOUNDED]})
    return rows


def test_report_bolds_only_real_non_confounded_differences(tmp_path):
    summary = summarise(_rows(), ["base", "good", "same"], "base")
    corpus = {"base": {"fvd": {"value": None, "skipped": "n/a (N=8)"}}, "good": {"fvd": {"value": 12.5, "low": 10.0, "high": 15.0}},
              "same": {"val/diff": 0.5}}
    paths = write_report(summary, corpus, {"seeds": [0, 1]}, tmp_path / "E", warnings=["the judge has random weights"])
    md = paths["md"].read_text()
    good = next(line for line in md.splitlines() if line.startswith("| good |") and "[+" in line)
    same = next(line for line in md.splitlines() if line.startswith("| same |") and "within noise" in line)
    assert "**better**" in good and good.count("**") == 2  # STRUCTURE bolded; CONFOUNDED's win carries a dagger, unbolded
    assert "better† (motion" in good
    assert "**" not in same and same.count("within noise") >= 1
    assert "n/a (N=8)" in md and "12.5 [10, 15]" in md and "> **warning**: the judge has random weights" in md
    assert f"- **{STRUCTURE}**:" in md and "## Protocol" in md
    data = json.loads(paths["json"].read_text())
    assert data["verdicts"]["good"][STRUCTURE] == "better" and data["verdicts"]["same"][STRUCTURE] == "within noise"
    assert data["rows"]["good"]["fvd"] == 12.5 and data["rows"]["base"]["fvd"] is None
    assert data["intervals"]["base"][STRUCTURE]["n"] == 16 and len(data["per_video"]) == 48
    assert CONFOUNDED in data["motion_confounded"] and data["directions"]["fvd"] == "lower"
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_directions_cover_registry_corpus_and_validation_columns():
    assert direction("fvd") == "lower" and direction("val/diff@500") == "lower" and direction("val/repa_cos") == "higher"
    assert direction("vbench_subject_consistency") == "higher" and direction("mystery") is None
    for name, metric in METRICS.items():
        assert direction(name) == metric.direction


def test_no_reference_means_no_paired_table(tmp_path):
    summary = summarise(_rows(), ["base", "good"], None)
    md = write_report(summary, {}, {}, tmp_path)["md"].read_text()
    assert "Paired differences" not in md and "**" not in md.split("## What each column means")[0]
