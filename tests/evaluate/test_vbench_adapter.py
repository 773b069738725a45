"""stages/evaluate/metrics/vbench_adapter.py: the skip path (no env, no weights) and reading VBench's results
JSON in the format vbench writes (VBench.evaluate -> save_json({dimension: compute_<dimension>(...)}),
where compute_* returns (aggregate, [{"video_path", "video_results"}, ...]))."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path

import pytest

from stages.evaluate.metrics import vbench_adapter as vb

# One file as vbench writes it for two videos (dynamic_degree's per-video results are booleans).
RESULTS = {
    "subject_consistency": [0.9612, [{"video_path": "/s/run_a/clip_000.mp4", "video_results": 0.97},
                                     {"video_path": "/s/run_a/clip_001.mp4", "video_results": 0.95}]],
    "dynamic_degree": [0.5, [{"video_path": "/s/run_a/clip_000.mp4", "video_results": True},
                             {"video_path": "/s/run_a/clip_001.mp4", "video_results": False}]],
    "imaging_quality": [0.61, [{"video_path": "/s/run_a/clip_000.mp4", "video_results": 0.6},
                               {"video_path": "/s/run_a/clip_001.mp4", "video_results": 0.62}]],
}


def _fake_env(tmp_path: Path) -> Path:
    """A folder shaped like a venv whose python exists (this interpreter): the weights check comes next."""
    env = tmp_path / ".venv-vbench"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").symlink_to(sys.executable)
    return env


def test_missing_env_skips_with_a_clear_reason(tmp_path, caplog):
    reason = vb.skip_reason(tmp_path / "nope")
    assert reason.startswith("VBench skipped: no virtual environment at") and "make vbench-env" in reason
    with caplog.at_level(logging.WARNING):
        assert vb.run_vbench(tmp_path, {"a.mp4": "a cat"}, tmp_path / "out", env=tmp_path / "nope") is None
    assert "make vbench-env" in caplog.text
    assert not (tmp_path / "out").exists()  # nothing started


def test_missing_weights_skip_names_the_file(tmp_path, monkeypatch):
    env = _fake_env(tmp_path)
    weights = tmp_path / "vbench-cache"
    monkeypatch.setenv("VBENCH_CACHE_DIR", str(weights))
    reason = vb.skip_reason(env, ("background_consistency",))
    assert reason == f"VBench skipped: background_consistency needs {weights / 'clip_model/ViT-B-32.pt'}, which is absent (VBench weights cannot be downloaded here)"
    for rel in vb.REQUIRED_WEIGHTS["background_consistency"]:
        (weights / rel).parent.mkdir(parents=True, exist_ok=True)
        (weights / rel).write_bytes(b"")
    assert vb.skip_reason(env, ("background_consistency",)) is None
    assert "subject_consistency needs" in vb.skip_reason(env)  # the default dimensions need more weights
    assert "unknown dimension" in vb.skip_reason(env, ("color_wheel",))


def test_every_custom_dimension_has_its_weights_listed():
    assert set(vb.REQUIRED_WEIGHTS) == set(vb.CUSTOM_DIMENSIONS)
    assert all(vb.DIRECTIONS[d] == "higher" for d in vb.CUSTOM_DIMENSIONS)


def test_results_json_is_parsed(tmp_path):
    path = tmp_path / "samples_eval_results.json"
    path.write_text(json.dumps(RESULTS))
    result = vb.parse_results(path)
    assert result.scores == {"subject_consistency": 0.9612, "dynamic_degree": 0.5, "imaging_quality": 0.61}
    assert result.per_video["clip_000.mp4"] == {"subject_consistency": 0.97, "dynamic_degree": 1.0, "imaging_quality": 0.6}
    assert result.per_video["clip_001.mp4"]["dynamic_degree"] == 0.0
    assert result.dimensions == tuple(RESULTS) and result.results_path == path


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "unreadable"),
        ("[1, 2]", "expected an object of dimensions"),
        (json.dumps({"subject_consistency": 0.9}), "not \\[aggregate, per-video list\\]"),
        (json.dumps({"subject_consistency": ["x", []]}), "non-numeric aggregate"),
        (json.dumps({"subject_consistency": [0.9, [{"video_results": 1}]]}), "without video_path"),
    ],
)
def test_malformed_results_are_one_line_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad_eval_results.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        vb.parse_results(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_failing_vbench_run_is_skipped_with_its_last_error_line(tmp_path, monkeypatch, caplog):
    """The env's python runs but has no `vbench` module: the subprocess fails, the adapter says why."""
    env = _fake_env(tmp_path)
    weights = tmp_path / "vbench-cache"
    monkeypatch.setenv("VBENCH_CACHE_DIR", str(weights))
    (weights / "amt_model").mkdir(parents=True)
    (weights / "amt_model" / "amt-s.pth").write_bytes(b"")
    monkeypatch.setenv("PYTHONPATH", "")  # the child must not see this checkout either
    videos = tmp_path / "videos"
    videos.mkdir()
    assert importlib.util.find_spec("vbench") is None  # vbench lives only in its own env, never in the project's
    with caplog.at_level(logging.WARNING):
        result = vb.run_vbench(videos, {"clip.mp4": "a cat"}, tmp_path / "out", env=env, dimensions=("motion_smoothness",), device="cpu")
    assert result is None
    assert "VBench skipped: its run failed (exit 1)" in caplog.text and "vbench" in caplog.text
    args = json.loads((tmp_path / "out" / "samples_vbench_args.json").read_text())
    assert args["dimensions"] == ["motion_smoothness"] and args["prompts"] == {"clip.mp4": "a cat"}
