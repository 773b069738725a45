"""stages/evaluate/report.py: report.md (arrows, best per column, protocol), report.json, the PNG."""

from __future__ import annotations

import json

from stages.evaluate.report import best_per_column, write_report, DIRECTIONS

ROWS = {
    "base": {"fvd": 410.0, "flicker": 0.031, "mask_consistency": 0.81, "val/diff@500": 0.52, "vbench_subject_consistency": None},
    "lgf": {"fvd": 362.5, "flicker": 0.029, "mask_consistency": 0.86, "val/diff@500": 0.49, "vbench_subject_consistency": None},
    "repa": {"fvd": 380.0, "flicker": 0.029, "mask_consistency": 0.84, "val/diff@500": 0.50},
}
PROTOCOL = {"fvd": {"backbone": "videomae:tiny", "frames": 4, "num_real": 3}, "seeds": [0, 1], "vbench": "VBench skipped: no env"}


def test_report_files(tmp_path):
    paths = write_report(ROWS, PROTOCOL, tmp_path / "E")
    md = paths["md"].read_text()
    assert "| run | flicker ↓ | fvd ↓ | mask_consistency ↑ | val/diff@500 ↓ | vbench_subject_consistency ↑ |" in md
    assert "| lgf | **0.029** | **362.5** | **0.86** | **0.49** | - |" in md  # best of every measured column
    assert "| repa | **0.029** | 380 | 0.84 | 0.5 | - |" in md  # ties are all marked; a missing metric is "-"
    assert "## Protocol" in md and '"backbone": "videomae:tiny"' in md and "VBench skipped: no env" in md
    data = json.loads(paths["json"].read_text())
    assert data["rows"]["base"]["vbench_subject_consistency"] is None and data["rows"]["lgf"]["fvd"] == 362.5
    assert data["best"]["flicker"] == ["lgf", "repa"] and data["directions"]["fvd"] == "lower"
    assert data["protocol"]["seeds"] == [0, 1]
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths["png"].stat().st_size > 5000


def test_best_per_column_follows_direction_and_skips_unknown():
    rows = {"a": {"presence": 0.9, "mystery": 3.0, "fragmentation": 0.5, "val/repa_cos": 0.2, "val/lgf": 0.3},
            "b": {"presence": 1.0, "mystery": 1.0, "fragmentation": float("nan"), "val/repa_cos": 0.4, "val/lgf": 0.1}}
    best = best_per_column(rows, ["presence", "mystery", "fragmentation", "val/repa_cos", "val/lgf"], DIRECTIONS)
    assert best == {"presence": {"b"}, "fragmentation": {"a"}, "val/repa_cos": {"b"}, "val/lgf": {"b"}}  # NaN never wins; no direction, no mark


def test_empty_rows_still_write_a_report(tmp_path):
    paths = write_report({}, {"note": "no runs"}, tmp_path)
    assert "no runs" in paths["md"].read_text() and paths["png"].exists()
