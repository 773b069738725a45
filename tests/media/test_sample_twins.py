"""datasets/sample/generate.py's structure-broken twins: written beside, never in, the default corpus."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stages.media.corpus import list_corpus
from stages.media.decode import decode_clip
from stages.config.extract import CorpusConfig, VideoConfig

SMALL = dict(frames=9, fps=8, height=72, width=108, seed=0)


def test_intact_twin_is_the_clip_and_breaks_start_after_frame_zero(sample_generator):
    gen = sample_generator
    clip = gen.render_clip(0, **SMALL)
    intact = gen.render_twin(0, "intact", **SMALL)
    assert np.array_equal(clip.frames, intact.frames) and np.array_equal(clip.masks, intact.masks)
    for broken in gen.BREAKS:
        twin = gen.render_twin(0, broken, **SMALL)
        assert np.array_equal(twin.frames[0], clip.frames[0]) and twin.box == clip.box  # same prompt frame
        assert not np.array_equal(twin.masks, clip.masks), broken
    with pytest.raises(ValueError, match="unknown break 'melt'"):
        gen.render_twin(0, "melt", **SMALL)


def test_generate_twins_writes_videos_masks_and_a_manifest(sample_generator, tmp_path):
    gen = sample_generator
    rows = gen.generate_twins(tmp_path, clips=1, breaks=("detach",), **SMALL)
    assert [r["key"] for r in rows] == ["clip_000_stick__intact", "clip_000_stick__detach"]
    assert {r["break"] for r in rows} == {"intact", "detach"} and {r["twin_of"] for r in rows} == {"clip_000_stick"}
    for row in rows:
        with np.load(tmp_path / row["masks"], allow_pickle=False) as z:  # plain arrays, no pickle
            masks = z["masks"]
        assert masks.dtype == bool and masks.shape == (9, 72, 108)
        assert np.array_equal(masks, gen.render_twin(0, row["break"], **SMALL).masks)
    entries = list_corpus(CorpusConfig(url=str(tmp_path)))  # the folder is a valid corpus for extraction
    assert [e.key for e in entries] == sorted(r["key"] for r in rows)
    video = decode_clip(str(tmp_path / rows[1]["path"]), VideoConfig(num_frames=9, height=72, width=108))
    assert video.frames.shape == (9, 72, 108, 3)
    assert json.loads((tmp_path / "manifest.jsonl").read_text().splitlines()[0])["prompt"]["box"] == rows[0]["prompt"]["box"]
