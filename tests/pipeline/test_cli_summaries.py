"""What the thin CLI prints comes from the stages and views: ExtractSummary.lines (pipeline/runner.py),
RunSummary.line (stages/distill/run.py), select_ablations (stages/distill/ablations.py) and the inspect
lines (pipeline/inspect.py), checked here without a model or a store."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.inspect import report_lines
from pipeline.runner import ExtractSummary
from stages.config.extract import ExtractConfig
from stages.distill.ablations import AblationError, select_ablations
from stages.distill.run import RunSummary, StepTimes
from stages.extract.growth import Growth
from stages.extract.shard_worker import ShardReport

CFG = ExtractConfig()


def test_an_extract_with_failed_clips_exits_1_unless_failures_are_allowed() -> None:
    s = ExtractSummary("file:///s", clips=4, shards=2, shards_run=[0, 1], clips_processed=4, seconds=2.0,
                       worker_s=2.0, model_s={"teacher": 1.0}, failed={"teacher": [{"key": "a", "reason": "no frames"}]})
    lines, code = s.lines(CFG, "out/s", append=False, allow_failures=False)
    assert code == 1
    assert lines[0] == ("info", "store file:///s: 4 clips in 2 shards; ran 2 shards (4 clips), skipped 0 already committed, "
                                "0 worker restarts, 2.0 s")
    assert lines[1][1].startswith("extract: 4 clips in 2.0 s (workers 2.0 s); model 1.0 s (teacher 1.0)")
    assert lines[2:] == [("warn", "teacher: 1 clips failed"), ("info", "  a: no frames"),
                         ("error", "1 clips failed (see `sam2videox inspect out/s`); pass --allow-failures to accept")]
    lines, code = s.lines(CFG, "out/s", append=False, allow_failures=True)
    assert code == 0 and lines[-1] == ("info", "  a: no frames")


def test_clips_cropped_beyond_max_crop_are_counted_at_the_end() -> None:
    s = ExtractSummary("file:///s", clips=4, shards=2, shards_run=[0, 1], clips_processed=4, seconds=2.0, worker_s=2.0,
                       model_s={"teacher": 1.0})
    s.add(ShardReport(0, clips=2, cropped=[["portrait", 0.6204]]))
    s.add(ShardReport(1, clips=2, cropped=[["square", 0.3333]]))
    lines, code = s.lines(CFG, "out/s", append=False, allow_failures=False)
    assert code == 0
    assert ("warn", "2 clips cropped beyond video.max_crop=0.25 (the most: portrait, 62% of its frame lost); "
                    "video.fit=pad letterboxes them, video.fit=skip leaves them out") in lines


def test_a_rerun_with_nothing_to_do_says_so_and_names_the_unlisted_clips() -> None:
    s = ExtractSummary("file:///s", clips=4, shards=2, shards_skipped=2, growth=Growth(unlisted=3))
    lines, code = s.lines(CFG, "out/s", append=False, allow_failures=False)
    assert code == 0
    assert lines == [
        ("info", "nothing to do: all 2 shards already committed in file:///s (teacher, encodings)"),
        ("warn", f"3 new clips in {CFG.corpus.url} are not in this store's snapshot; to add them, rerun this command with --append"),
    ]


def test_run_summary_lines_and_times() -> None:
    times = StepTimes()
    for seconds, data in ((1.0, 0.25), (3.0, 0.75)):
        times.add(type("M", (), {"seconds": seconds, "data_seconds": data})())
    assert times.mean_step_seconds == 2.0 and times.data_wait_share == 0.25
    done = RunSummary("o", 7, 0, 1, None, None, None, None, "o/lora", None, {})
    assert done.line(7) == "nothing to train: the run is already at step 7 of 7 (raise train.steps to continue); exported: o/lora"
    ran = RunSummary("o", 2, 0, 1, {"loss": 0.5, "terms": {"diff": 0.5}}, None, 2.0, 0.25, "o/lora", None, {})
    assert ran.line(2) == "2 steps, loss 0.5000 {'diff': 0.5}, 2.000 s/step, data wait 25.0%; exported: o/lora"
    assert set(ran.to_json()) == {"out", "steps", "rank", "world_size", "final", "first", "mean_step_seconds",
                                  "data_wait_share", "exported", "teacher_column", "filter"}  # summary.json's keys


def test_select_ablations(tmp_path: Path) -> None:
    with pytest.raises(AblationError, match="no ablation YAMLs in"):
        select_ablations(tmp_path, None)
    for name in ("b", "a"):
        (tmp_path / f"{name}.yaml").write_text("{}\n")
    assert [p.stem for p in select_ablations(tmp_path, None)] == ["a", "b"]
    assert [p.stem for p in select_ablations(tmp_path, ["b"])] == ["b"]
    with pytest.raises(AblationError, match=r"unknown ablation\(s\) c in .*; valid: a, b"):
        select_ablations(tmp_path, ["c", "a"])


def test_inspect_lines_count_failures_unless_listed() -> None:
    summary = {"store": "s", "clips": 2, "shards": 1, "failed": 1, "duplicates": {},
               "columns": [{"dir": "teacher-ab12", "committed_shards": 1, "clips": 1, "failed": 1, "bytes_per_clip": 2e6,
                            "schema_bytes_per_clip": 4e6, "describe": {"teacher.feature": "memory_attention"},
                            "arrays": {"fwd": {"dtype": "int8", "shape": [2, 3]}}}],
               "failures": [{"column": "teacher-ab12", "key": "k", "stage": "decode", "reason": "bad"}]}
    assert report_lines(summary, "s") == [
        "store s: 2 clips, 1 shards, 1 failed",
        "  teacher-ab12: 1/1 shards, 1 clips, 1 failed, 2.00 MB/clip stored (4.00 uncompressed)  [feature=memory_attention]",
        "      fwd              int8     (2, 3)",
        "  1 failures: list them with `sam2videox inspect s --failures`",
    ]
    assert report_lines(summary, "s", failures=True)[-1] == "  FAILED teacher-ab12 k [decode]: bad"
