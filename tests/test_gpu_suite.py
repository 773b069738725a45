"""tests/benchmarks/gpu_suite.sh --dry-run: the GPU suite's scripts and code paths, on CPU with tiny models.

The suite runs once, unattended, on a lent GPU box with a few minutes of device time, so it must not
rot here: every part has to finish with a numeric figure, or with an explicit reason where the dry
run cannot apply (xformers is never on CPU; FSDP only once stages/distill/parallel.py exists). The
dry run also refuses every import the GPU box lacks and .whl/ does not ship.
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

PARTS = ("teacher", "teacher_compiled", "teacher_cast", "teacher_loop", "encodings", "extract_inproc", "eval_sampling", "step", "step_compile", "step_fp8", "step_selective",
         "step_xformers", "fsdp", "fsdp_full", "wan_step", "wan14b_fsdp", "context", "step_meta")


@pytest.mark.slow
def test_gpu_suite_dry_run_writes_a_figure_for_every_part(tmp_path):
    out = tmp_path / "suite"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "OUT": ""}
    # about 3 minutes on 2 busy cores (163 s with 16 parts); the limit only stops a hang
    proc = subprocess.run(["bash", "tests/benchmarks/gpu_suite.sh", "--dry-run", "--out", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    # the device returns at most 8 files from $OUT
    files = sorted(p.name for p in out.iterdir())
    assert files == ["results.jsonl", "suite.log", "summary.json", "summary.md"], files

    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "dry-run"
    may_skip = {"step_xformers", "step_fp8"}
    for part in PARTS:
        entry = summary["parts"][part]
        if part in may_skip and entry["status"] in ("skipped", "not available"):
            assert entry["reason"], (part, entry)
            continue
        assert entry["status"] == "ok", (part, entry)
        numeric = {k: v for k, v in entry["figures"].items() if isinstance(v, (int, float))}
        assert numeric, (part, entry)
    figures = {p: summary["parts"][p]["figures"] for p in PARTS}
    assert any("clips_per_h" in k for k in figures["teacher"]), figures["teacher"]
    assert {"runs[tiling=True].clips_per_hour", "runs[tiling=False].clips_per_hour"} <= set(figures["encodings"])
    assert figures["step"]["ratio_lgf_plain"] > 0
    # the compile variant compiled the blocks (dynamo made graphs) and still measured both variants
    assert figures["step_compile"]["compiled_graphs"] > 0 and figures["step_compile"]["ratio_lgf_plain"] > 0
    # fp8 never runs on CPU: the part says why, in the trainer's own words
    assert "compute capability >= 8.9" in summary["parts"]["step_fp8"]["reason"], summary["parts"]["step_fp8"]
    # teacher.compile: both SAM2 modules went through dynamo (eager backend on CPU) and the clips were still tracked
    assert figures["teacher_compiled"]["compiled_modules"] == 2 and figures["teacher_compiled"]["ours.1.s_per_clip"] > 0
    # in-process extraction (ray.num_workers=0) of clips rendered at the given size: the worker's wall over model time
    assert figures["extract_inproc"]["wall_over_model.eager"] > 0
    # evaluate's sampling through the stock I2V pipeline (tiny models): both step counts sampled, 9 frames came back
    assert figures["eval_sampling"]["frames_out"] == 9 and figures["eval_sampling"]["estimate_steps"] == 50
    assert figures["eval_sampling"]["seconds.1"] > 0 and figures["eval_sampling"]["seconds.4"] > 0
    # selective checkpointing: the tiny plan fits without recompute (auto -> none) and is compared with all in one run
    assert figures["step_selective"]["runs[name=auto].checkpointed_blocks"] == 0
    assert figures["step_selective"]["runs[name=all].checkpointed_blocks"] == 3 and figures["step_selective"]["ratio"] > 0
    # the Wan presets' code paths on the tiny Wan: the single-GPU LoRA step (lgf vs plain) and FSDP2 on one rank
    assert figures["wan_step"]["ratio_lgf_plain"] > 0 and figures["wan14b_fsdp"]["s_per_step"] > 0
    assert figures["context"]["equal_to_one_rank"] == 1 and figures["context"]["grad_sum"] < 1e-5  # 2 gloo ranks
    assert figures["step_meta"]["base_params_b"] == pytest.approx(5.57, abs=0.01)  # CogVideoX-5B-I2V transformer

    table = (out / "summary.md").read_text()
    assert "| part | figure | value | command |" in table and all(f"| {p} |" in table for p in PARTS)
