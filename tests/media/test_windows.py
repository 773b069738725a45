"""stages.media.windows + the windowed corpus: many clips per long video, seeking decode, shot cuts.

Long synthetic videos are written with PyAV: frame i carries its index in its brightness, so a
decoded frame says where it came from; shots are flat colours that change at known cut times.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from stages.config.extract import CorpusConfig, VideoConfig, WindowsConfig
from stages.media.corpus import CorpusError, list_corpus
from stages.media.decode import ClipError, decode_clip, min_duration
from stages.media.windows import probe, shot_ranges, window_key, window_ranges

FPS = 8
SIZE = (32, 48)
COLOURS = [(220, 30, 30), (20, 20, 90), (150, 250, 150), (230, 230, 40)]  # far apart in HSV: ContentDetector sees each cut


def long_video(path: Path, seconds: float, cuts: tuple[float, ...] = (), fps: int = FPS, gop: int = FPS) -> Path:
    """An H.264 mp4 of `seconds` at `fps`, a keyframe every `gop` frames.

    Without cuts frame i is grey 16 + i % 200 (its index, readable back from the pixels); with cuts
    each shot is a flat colour of COLOURS with a small square moving in it (motion, no cut)."""
    n = int(round(seconds * fps))
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = SIZE[1], SIZE[0], "yuv420p"
        s.time_base = s.codec_context.time_base = Fraction(1, fps)
        s.options = {"crf": "1", "preset": "ultrafast", "threads": "1", "g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"}
        for i in range(n):
            if cuts:
                shot = sum(i / fps >= t for t in cuts)
                rgb = np.empty((*SIZE, 3), np.uint8)
                rgb[:] = COLOURS[shot % len(COLOURS)]
                x = i % (SIZE[1] - 6)
                rgb[10:16, x : x + 6] = 128
            else:
                rgb = np.full((*SIZE, 3), 16 + i % 200, np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    return path


def _video(num_frames: int = 9) -> VideoConfig:
    return VideoConfig(num_frames=num_frames, fps=FPS, height=SIZE[0], width=SIZE[1])


def test_probe_reads_duration_and_rate_without_decoding(tmp_path):
    p = probe(str(long_video(tmp_path / "a.mp4", 20)))
    assert p.duration == pytest.approx(20, abs=0.15) and p.fps == pytest.approx(FPS)


def test_a_late_window_seeks_instead_of_decoding_from_the_start(tmp_path):
    """A window at 15 s of a 20 s source decodes about a keyframe interval before it, not 15 s of frames;
    it gets the very frames (and times) that sampling from the start would."""
    path = str(long_video(tmp_path / "long.mp4", 20, gop=FPS))
    video = _video(9)
    windowed = decode_clip(path, video, start=15.0, end=15.0 + min_duration(video))
    from_start = decode_clip(path, VideoConfig(num_frames=9, fps=FPS, height=SIZE[0], width=SIZE[1], start_sec=15.0))
    assert windowed.frame_times == pytest.approx([15 + i / FPS for i in range(9)], abs=1e-6)
    assert windowed.frame_times == from_start.frame_times and windowed.frame_indices == from_start.frame_indices
    assert windowed.frame_indices == list(range(120, 129))
    assert np.array_equal(windowed.frames, from_start.frames)
    means = windowed.frames.reshape(9, -1).mean(axis=1)
    assert means == pytest.approx([16 + i for i in range(120, 129)], abs=2)  # the pixels are those frames
    assert from_start.decoded_frames >= 129  # no range: decoded from the start
    assert windowed.decoded_frames <= 1 + 3 * FPS  # the first frame, then from the keyframe before 15 s - margin


def test_a_range_shorter_than_a_clip_or_past_the_end_fails_the_clip(tmp_path):
    path = str(long_video(tmp_path / "a.mp4", 4))
    with pytest.raises(ClipError, match=r"range 1-1.5 s is 0.50 s, shorter than the 1.12 s a clip of 9 frames at 8 fps needs"):
        decode_clip(path, _video(9), start=1.0, end=1.5)
    with pytest.raises(ClipError, match=r"too short: 4.00 s, needs 4.62 s for 9 frames at 8 fps from 3.5 s"):
        decode_clip(path, _video(9), start=3.5)


def test_window_ranges_every_and_count_inside_spans():
    every = WindowsConfig(every=5.0)
    assert window_ranges([(0.0, 20.0)], 2.0, every) == [(0.0, 2.0), (5.0, 7.0), (10.0, 12.0), (15.0, 17.0)]
    assert window_ranges([(0.0, 20.0)], 6.0, every) == [(0.0, 6.0), (5.0, 11.0), (10.0, 16.0)]  # overlap allowed: every < length
    # with shots: windows restart at each shot and never cross its end
    shots = [(0.0, 7.0), (7.0, 9.0), (9.0, 20.0)]
    got = window_ranges(shots, 2.0, every)
    assert got == [(0.0, 2.0), (5.0, 7.0), (7.0, 9.0), (9.0, 11.0), (14.0, 16.0)]
    assert all(any(lo <= s and e <= hi for lo, hi in shots) for s, e in got)
    # count: K of the back-to-back windows, spread evenly
    assert window_ranges([(0.0, 20.0)], 2.0, WindowsConfig(count=2)) == [(4.0, 6.0), (14.0, 16.0)]
    assert len(window_ranges([(0.0, 5.0)], 2.0, WindowsConfig(count=4))) == 2  # only 2 fit
    assert window_ranges([(0.0, 1.0)], 2.0, every) == []
    assert window_ranges([(1 / 3, 5.0)], 1.0, WindowsConfig(every=2.0))[0][0] == 0.334  # ms, rounded up into the shot
    assert window_key("talks/a", 12.5) == "talks/a@00012.500"


@pytest.mark.parametrize("bad", [dict(every=1.0, count=2), dict(every=0.0), dict(count=0), dict(length=-1.0), dict(shots=True)])
def test_windows_config_refuses(bad):
    with pytest.raises(ValueError, match="corpus.windows"):
        WindowsConfig(**bad)


def test_windowed_listing_keys_ranges_and_sources(tmp_path):
    long_video(tmp_path / "a.mp4", 20)
    long_video(tmp_path / "b.mp4", 10)
    (tmp_path / "a.txt").write_text("a long walk")
    span = min_duration(_video(9))  # 1.125 s
    entries = list_corpus(CorpusConfig(url=str(tmp_path), windows=WindowsConfig(every=4.0)), span=span)
    assert [e.key for e in entries] == ["a@00000.000", "a@00004.000", "a@00008.000", "a@00012.000", "a@00016.000",
                                        "b@00000.000", "b@00004.000", "b@00008.000"]
    a0 = entries[0]
    assert (a0.start, a0.end, a0.source_id, a0.caption, a0.url) == (0.0, span, "a", "a long walk", str(tmp_path / "a.mp4"))
    row = a0.to_json()
    assert row["start"] == 0.0 and row["end"] == span and row["source_id"] == "a"
    # windows of one file are not copies of each other (same content hash, different ranges)
    assert all(e.duplicate_of is None for e in entries) and len({e.content_hash for e in entries}) == 2
    # K per video, and the window length by config
    counted = list_corpus(CorpusConfig(url=str(tmp_path), windows=WindowsConfig(count=2, length=3.0)))
    assert [(e.key, e.end - e.start) for e in counted] == [("a@00003.000", 3.0), ("a@00012.000", 3.0),
                                                         ("b@00000.000", 3.0), ("b@00006.000", 3.0)]
    with pytest.raises(CorpusError, match="corpus.windows needs the window length"):
        list_corpus(CorpusConfig(url=str(tmp_path), windows=WindowsConfig(every=4.0)))


def test_windowed_clips_decode_their_own_frames(tmp_path):
    long_video(tmp_path / "a.mp4", 20)
    video = _video(9)
    entries = list_corpus(CorpusConfig(url=str(tmp_path), windows=WindowsConfig(every=6.0)), span=min_duration(video))
    firsts = [decode_clip(e.url, video, start=e.start, end=e.end).frame_indices[0] for e in entries]
    assert firsts == [0, 48, 96, 144]


def test_shot_detection_finds_the_cuts_and_windows_never_straddle_one(tmp_path):
    cuts = (5.0, 11.5, 14.0)
    path = long_video(tmp_path / "shots.mp4", 20, cuts=cuts)
    shots = shot_ranges(str(path), threshold=27.0)
    assert [round(s, 3) for s, _ in shots] == [0.0, *cuts]
    assert shots[-1][1] == pytest.approx(20, abs=0.15)
    video = _video(9)
    cfg = CorpusConfig(url=str(tmp_path), windows=WindowsConfig(every=2.0, shots=True))
    entries = list_corpus(cfg, span=min_duration(video))
    bounds = [0.0, *cuts, 20.0]
    for e in entries:  # each window lies inside one shot
        assert any(lo <= e.start and e.end <= hi + 1e-6 for lo, hi in zip(bounds, bounds[1:])), (e.start, e.end)
    plain = list_corpus(CorpusConfig(url=str(tmp_path), windows=WindowsConfig(every=2.0)), span=min_duration(video))
    assert any(lo < e.start < hi < e.end for e in plain for lo, hi in zip(bounds, bounds[1:]))  # without shots one would
    assert {e.start for e in entries} >= {0.0, 5.0, 11.5, 14.0}  # every shot starts a window
    # and the decoded frames of every window are one colour: none crosses a cut
    for e in entries:
        clip = decode_clip(e.url, video, start=e.start, end=e.end)
        corners = clip.frames[:, 0, 0].astype(int)  # [F, 3], away from the moving square
        assert np.abs(corners - corners[0]).max() <= 8, e.key
