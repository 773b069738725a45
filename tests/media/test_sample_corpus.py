"""datasets/sample/generate.py: deterministic real mp4s whose manifest boxes cover the subject."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from stages.media.corpus import list_corpus
from stages.media.decode import decode_clip
from stages.config.extract import CorpusConfig, VideoConfig

GENERATOR = Path(__file__).resolve().parents[2] / "datasets" / "sample" / "generate.py"
SMALL = dict(clips=3, frames=17, fps=8, height=72, width=108, seed=0)  # one clip of each subject kind


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("sample_generate", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def corpus(gen, tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    rows = gen.generate(out, **SMALL)
    return out, rows


def test_generation_is_deterministic(gen, corpus, tmp_path):
    out, rows = corpus
    again = gen.generate(tmp_path, **SMALL)
    assert again == rows
    assert (tmp_path / "manifest.jsonl").read_text() == (out / "manifest.jsonl").read_text()
    for row in rows:
        assert (tmp_path / row["path"]).read_bytes() == (out / row["path"]).read_bytes(), row["key"]
    other_seed = gen.generate(tmp_path / "seed1", **{**SMALL, "seed": 1})
    assert [r["caption"] for r in other_seed] != [r["caption"] for r in rows] or [r["prompt"] for r in other_seed] != [r["prompt"] for r in rows]


def test_manifest_lists_every_subject_kind_with_captions(corpus):
    out, rows = corpus
    assert [r["key"] for r in rows] == ["clip_000_stick", "clip_001_quadruped", "clip_002_blob"]
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert lines == rows
    assert set(lines[0]) == {"key", "path", "caption", "prompt"}
    for row, phrase in zip(rows, ["stick figure walking", "four-legged animal trotting", "blob wobbling"]):
        assert phrase in row["caption"] and " texture" in row["caption"]
        assert (out / f"{row['key']}.txt").read_text().strip() == row["caption"]
    entries = list_corpus(CorpusConfig(url=str(out)))
    assert [(e.key, e.caption, e.prompt) for e in entries] == [(r["key"], r["caption"], r["prompt"]) for r in rows]
    assert all(Path(e.url).is_file() for e in entries)


def test_boxes_are_in_frame_and_cover_the_subject(gen, corpus):
    out, rows = corpus
    for i, row in enumerate(rows):
        x0, y0, x1, y1 = row["prompt"]["box"]
        assert 0 <= x0 < x1 <= SMALL["width"] and 0 <= y0 < y1 <= SMALL["height"]
        truth = gen.render_clip(i, SMALL["frames"], SMALL["fps"], SMALL["height"], SMALL["width"], SMALL["seed"])
        assert truth.key == row["key"] and truth.box == row["prompt"]["box"]
        ys, xs = np.nonzero(truth.masks[0])
        assert len(xs) > 50  # a visible subject, not a speck
        assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
        # tight: at most the anti-aliased fringe (pixels under 50% coverage) lies outside the mask's box
        assert xs.min() - x0 <= 1 and x1 - 1 - xs.max() <= 1 and ys.min() - y0 <= 1 and y1 - 1 - ys.max() <= 1
        # the subject moves: its mask changes over the clip
        assert (truth.masks[0] != truth.masks[-1]).mean() > 0.005


def test_clips_decode_to_the_configured_frames_and_match_the_render(gen, corpus):
    out, rows = corpus
    cfg = VideoConfig(num_frames=SMALL["frames"], fps=SMALL["fps"], height=SMALL["height"], width=SMALL["width"])
    for i, row in enumerate(rows):
        clip = decode_clip(str(out / row["path"]), cfg)
        assert clip.frames.shape == (17, 72, 108, 3) and clip.frame_indices == list(range(17))
        truth = gen.render_clip(i, SMALL["frames"], SMALL["fps"], SMALL["height"], SMALL["width"], SMALL["seed"])
        # mean abs error of every decoded frame against every rendered frame: [17 decoded, 17 rendered]
        err = np.abs(clip.frames[:, None].astype(np.int16) - truth.frames[None].astype(np.int16)).mean(axis=(2, 3, 4))
        assert err.argmin(axis=1).tolist() == list(range(17)), row["key"]  # each frame is its own render
        assert err.diagonal().max() < 8, row["key"]  # H.264 at crf 18, 4:2:0 chroma on thin limbs


def test_box_survives_resize_and_crop_to_the_student_size(gen, corpus):
    out, rows = corpus
    cfg = VideoConfig(num_frames=9, fps=8, height=48, width=48)  # square: crops the 3:2 source
    for i, row in enumerate(rows):
        clip = decode_clip(str(out / row["path"]), cfg)
        truth = gen.render_clip(i, SMALL["frames"], SMALL["fps"], SMALL["height"], SMALL["width"], SMALL["seed"])
        mask = clip.map_mask(truth.masks[0])
        x0, y0, x1, y1 = clip.map_box(row["prompt"]["box"])
        ys, xs = np.nonzero(mask)
        if len(xs):  # the part of the subject the crop keeps lies inside the mapped box
            assert x0 - 1 <= xs.min() and xs.max() < x1 + 1 and y0 - 1 <= ys.min() and ys.max() < y1 + 1


def test_rerun_is_skipped_unless_forced_or_changed(gen, tmp_path):
    small = {**SMALL, "clips": 1, "frames": 5}
    gen.generate(tmp_path, **small)
    video = tmp_path / "clip_000_stick.mp4"
    before = video.stat().st_mtime_ns
    assert gen.generate(tmp_path, **small)[0]["key"] == "clip_000_stick"
    assert video.stat().st_mtime_ns == before  # same corpus: nothing rewritten
    gen.generate(tmp_path, **small, force=True)
    assert video.stat().st_mtime_ns != before
    forced = video.stat().st_mtime_ns
    gen.generate(tmp_path, **{**small, "frames": 9})  # a different corpus: re-rendered
    assert video.stat().st_mtime_ns != forced
    assert decode_clip(str(video), VideoConfig(num_frames=9, fps=8, height=72, width=108)).frames.shape[0] == 9


def test_command_line(gen, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["generate.py"])
    gen.main(["--out", str(tmp_path), "--clips", "2", "--frames", "5", "--height", "48", "--width", "64", "--seed", "3"])
    rows = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert [r["key"] for r in rows] == ["clip_000_stick", "clip_001_quadruped"]
    with pytest.raises(ValueError, match="even"):
        gen.generate(tmp_path / "odd", clips=1, frames=3, height=47, width=64)
