"""video.buckets: which bucket a clip goes to (stages/media/buckets.py) and the config refusals."""

from __future__ import annotations

import pytest

from conftest import ROOT
from stages.config.extract import ExtractConfig, VideoConfig
from stages.config.loader import ConfigError, load_config
from stages.media.buckets import assign_bucket, no_bucket_reason

BUCKETS = [[9, 64, 96], [9, 96, 64], [9, 80, 80], [17, 64, 96]]


@pytest.mark.parametrize("height, width, seconds, want", [
    (720, 1280, 1.5, (9, 64, 96)),  # landscape, too short for 17 frames
    (720, 1280, 3.0, (17, 64, 96)),  # landscape, long enough for both: the tie goes to the larger bucket
    (1280, 720, 3.0, (9, 96, 64)),  # portrait
    (500, 520, 3.0, (9, 80, 80)),  # near square
    (400, 400, None, (9, 80, 80)),  # duration unknown: aspect alone
])
def test_nearest_aspect_among_the_buckets_the_duration_allows(height, width, seconds, want):
    assert assign_bucket(BUCKETS, seconds, height, width, fps=8.0) == want


def test_aspect_distance_is_a_log_ratio():
    # between 1:1 and 4:1 the midpoint is 2:1 in log-ratio (linear would put it at 2.5:1): 2.2:1 goes to 4:1
    two = [[9, 80, 80], [9, 32, 128]]
    assert assign_bucket(two, 2.0, 100, 220, fps=8.0) == (9, 32, 128)
    assert assign_bucket(two, 2.0, 100, 180, fps=8.0) == (9, 80, 80)
    # and it is symmetric: 1:2.2 (portrait) is as far from 1:1 as 2.2:1
    assert assign_bucket([[9, 80, 80], [9, 128, 32]], 2.0, 220, 100, fps=8.0) == (9, 128, 32)


def test_a_clip_too_short_for_every_bucket_has_none_and_a_reason():
    assert assign_bucket(BUCKETS, 0.5, 720, 1280, fps=8.0) is None
    assert "too short for every bucket: 0.50 s" in no_bucket_reason(BUCKETS, 0.5, 8.0)
    # start_sec counts: 1.2 s fits 9 frames from 0 s, not from 0.5 s
    assert assign_bucket(BUCKETS, 1.2, 720, 1280, fps=8.0) == (9, 64, 96)
    assert assign_bucket(BUCKETS, 1.2, 720, 1280, fps=8.0, start_sec=0.5) is None


def _cfg(*overrides: str) -> ExtractConfig:
    return load_config(ExtractConfig, ROOT / "configs/extract/sample_wan.yaml", list(overrides))


def test_bucket_config_values_are_checked_on_load():
    with pytest.raises(ConfigError, match=r"video\.buckets\[1\]=\[9, 64\] must be \[frames, height, width\]"):
        _cfg("video.buckets=[[9, 64, 96], [9, 64]]")
    with pytest.raises(ConfigError, match=r"video\.buckets\[1\]=\[9, 64, 96\] is listed twice"):
        _cfg("video.buckets=[[9, 64, 96], [9, 64, 96]]")
    with pytest.raises(ConfigError, match=r"video\.buckets must list at least one"):
        _cfg("video.buckets=[]")


def test_buckets_the_student_grid_does_not_divide_are_refused():
    from stages.extract.columns.registry import column_spec

    with pytest.raises(ValueError, match=r"^video\.buckets\[1\]=\[9, 72, 64\]: height and width must be multiples of 16"):
        column_spec("teacher", _cfg("video.buckets=[[9, 64, 96], [9, 72, 64]]"))
    with pytest.raises(ValueError, match=r"^video\.buckets\[0\]=\[10, 64, 96\]: frames must be 4k\+1"):
        column_spec("encodings", _cfg("video.buckets=[[10, 64, 96]]"))


def test_a_model_trained_at_one_size_refuses_buckets():
    from stages.extract.columns.registry import column_spec

    cfg = load_config(ExtractConfig, ROOT / "configs/extract/sample.yaml",
                      ["student.model=THUDM/CogVideoX-5b-I2V", "video.buckets=[[49, 480, 720], [49, 720, 480]]",
                       "video.height=480", "video.width=720"])
    with pytest.raises(ValueError, match=r"^video\.buckets: student\.model=THUDM/CogVideoX-5b-I2V trains at one size only \(its learned positional embeddings"):
        column_spec("teacher", cfg)
    # CogVideoX 1.5 (a temporal patch) takes several sizes
    ok = load_config(ExtractConfig, ROOT / "configs/extract/sample.yaml",
                     ["student.model=THUDM/CogVideoX1.5-5B-I2V", "video.buckets=[[17, 768, 1360], [17, 1360, 768]]", "columns=[teacher]"])
    spec = column_spec("teacher", ok)
    assert spec.config["video"]["buckets"] == [[17, 768, 1360], [17, 1360, 768]]


def test_unset_buckets_keep_the_column_keys():
    from stages.extract.columns.registry import column_spec

    cfg = _cfg()
    assert "buckets" not in column_spec("teacher", cfg).config["video"]
    assert "buckets" not in column_spec("encodings", cfg).config["video"]
    assert VideoConfig().key() == {k: v for k, v in VideoConfig().__dict__.items() if k != "buckets"}


def test_the_schema_is_the_largest_bucket_in_each_dimension():
    from stages.extract.columns.registry import column_spec

    spec = column_spec("teacher", _cfg(f"video.buckets={BUCKETS}"))
    # envelope 17 x 96 x 96 pixels -> 5 latent frames x 6 x 6 tokens
    assert spec.schema["mask"].shape == (5, 6, 6)
    enc = column_spec("encodings", _cfg(f"video.buckets={BUCKETS}"))
    assert enc.schema["latents"].shape[1:] == (5, 12, 12)


def test_decoding_with_buckets_picks_the_clip_bucket_and_says_so(tmp_path):
    import numpy as np

    from stages.media.decode import ClipError, decode_clip
    from stages.media.video import write_mp4

    video = VideoConfig(fps=8.0, buckets=BUCKETS)
    frames = np.zeros((20, 120, 72, 3), np.uint8)  # portrait, 2.5 s at 8 fps
    write_mp4(tmp_path / "portrait.mp4", frames, 8)
    clip = decode_clip(str(tmp_path / "portrait.mp4"), video)
    assert clip.bucket == (9, 96, 64) and clip.frames.shape == (9, 96, 64, 3)
    assert clip.record()["bucket"] == [9, 96, 64]
    # a range caps the duration: 1 s of a long landscape clip fits no bucket (9 frames need 1.125 s)
    write_mp4(tmp_path / "land.mp4", np.zeros((20, 72, 120, 3), np.uint8), 8)
    assert decode_clip(str(tmp_path / "land.mp4"), video).bucket == (17, 64, 96)
    assert decode_clip(str(tmp_path / "land.mp4"), video, start=0.5, end=1.75).bucket == (9, 64, 96)
    with pytest.raises(ClipError, match="too short for every bucket: 1.00 s"):
        decode_clip(str(tmp_path / "land.mp4"), video, start=0.5, end=1.5)
    # without buckets the record has no bucket key (records as before)
    assert "bucket" not in decode_clip(str(tmp_path / "land.mp4"), VideoConfig(num_frames=9, height=64, width=96)).record()


def test_the_image_teacher_column_refuses_buckets():
    from stages.extract.columns.registry import column_spec

    cfg = load_config(ExtractConfig, ROOT / "configs/extract/sample.yaml", [f"video.buckets={BUCKETS}"])
    with pytest.raises(ValueError, match=r"^video\.buckets: the image_teacher column takes one video size only"):
        column_spec("image_teacher", cfg)
