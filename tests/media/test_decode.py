"""stages.media.decode: timestamp sampling, resize + crop geometry, and a specific ClipError per bad file."""

from __future__ import annotations

import io
import re
from fractions import Fraction
from pathlib import Path

import av
import fsspec
import numpy as np
import pytest
from PIL import Image

from stages.media.corpus import load_prompt_mask
from stages.media.decode import ClipError, decode_clip, min_duration, sample_times
from stages.config.extract import VideoConfig


def _grey(i: int) -> int:
    """Brightness that encodes frame i (distinct for i < 40, far from the limited-range ends)."""
    return 20 + 5 * i


def write_mp4(
    path: Path,
    times: list[float] | np.ndarray,
    size: tuple[int, int] = (32, 48),
    image=None,
    faststart: bool = True,
) -> Path:
    """An H.264 mp4 with one frame per timestamp (seconds, ms precision, so frame rates may vary).

    Frame i is flat grey _grey(i % 40) unless image(i) gives its RGB array [H, W, 3].
    """
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"} if faststart else {}) as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = size[1], size[0], "yuv420p"
        s.time_base = s.codec_context.time_base = Fraction(1, 1000)
        s.options = {"crf": "1", "preset": "ultrafast", "threads": "1"}
        for i, t in enumerate(times):
            rgb = image(i) if image else np.full((*size, 3), _grey(i % 40), np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = int(round(t * 1000)), Fraction(1, 1000)
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    return path


def _cfg(num_frames: int, fps: float = 8, height: int = 32, width: int = 48, start: float = 0.0) -> VideoConfig:
    return VideoConfig(num_frames=num_frames, fps=fps, height=height, width=width, start_sec=start)


def test_samples_8fps_from_24fps_by_timestamp(tmp_path):
    path = write_mp4(tmp_path / "a.mp4", np.arange(60) / 24)  # 2.5 s
    clip = decode_clip(str(path), _cfg(17))
    assert clip.frame_indices == list(range(0, 49, 3))  # every third frame
    assert clip.frame_times == pytest.approx([i / 8 for i in range(17)], abs=1e-3)
    assert clip.source_fps == pytest.approx(24, abs=0.2)  # ms timestamps: 1/24 s rounds
    assert clip.frames.shape == (17, 32, 48, 3) and clip.frames.dtype == np.uint8
    # the pixels are those frames: frame i was painted grey _grey(i % 40)
    means = clip.frames.reshape(17, -1).mean(axis=1)
    assert means == pytest.approx([_grey(i % 40) for i in clip.frame_indices], abs=2)


def test_start_offset_and_slow_source(tmp_path):
    fast = write_mp4(tmp_path / "fast.mp4", np.arange(48) / 24)
    assert decode_clip(str(fast), _cfg(5, start=0.5)).frame_indices == [12, 15, 18, 21, 24]
    slow = write_mp4(tmp_path / "slow.mp4", np.arange(12) / 4)  # 4 fps: frames repeat at 8 fps
    clip = decode_clip(str(slow), _cfg(9))
    assert clip.frame_indices == [0, 0, 1, 1, 2, 2, 3, 3, 4]
    assert np.array_equal(clip.frames[0], clip.frames[1])


def test_variable_frame_rate_picks_nearest_pts(tmp_path):
    rng = np.random.default_rng(3)
    times = np.round(np.concatenate([[0.0], np.cumsum(rng.uniform(0.02, 0.09, 70))]), 3)
    cfg = _cfg(9)
    clip = decode_clip(str(write_mp4(tmp_path / "vfr.mp4", times)), cfg)
    expected = [int(np.argmin(np.abs(times - t))) for t in sample_times(cfg)]
    assert clip.frame_indices == expected
    assert clip.frame_times == pytest.approx(times[expected].tolist(), abs=1e-6)


@pytest.mark.parametrize("out_hw", [(48, 48), (40, 96), (96, 120)])  # crop width, crop height, upscale
def test_geometry_maps_box_points_and_mask_onto_pixels(tmp_path, out_hw):
    h0, w0 = 72, 128
    rect = (30, 18, 92, 50)  # x0, y0, x1, y1 in pixel edges
    src = np.zeros((h0, w0, 3), np.uint8)
    src[rect[1] : rect[3], rect[0] : rect[2]] = 255
    path = write_mp4(tmp_path / "rect.mp4", np.arange(3) / 8, size=(h0, w0), image=lambda i: src)
    clip = decode_clip(str(path), _cfg(2, height=out_hw[0], width=out_hw[1]))
    assert clip.frames.shape[1:3] == out_hw and clip.source_size == (h0, w0)
    bright = clip.frames[0].mean(axis=-1) > 128
    x0, y0, x1, y1 = clip.map_box(list(rect))
    ys, xs = np.nonzero(bright)
    # the mapped box covers the rendered rectangle to within a pixel on every side
    assert abs(xs.min() - x0) <= 1 and abs(xs.max() + 1 - x1) <= 1
    assert abs(ys.min() - y0) <= 1 and abs(ys.max() + 1 - y1) <= 1
    mask = clip.map_mask(src[..., 0] > 0)
    iou = (mask & bright).sum() / (mask | bright).sum()
    assert iou > 0.9
    centre = clip.map_points([[(rect[0] + rect[2]) / 2, (rect[1] + rect[3]) / 2]])[0]
    assert bright[int(centre[1]), int(centre[0])]


def test_map_prompt_drops_what_the_crop_loses(tmp_path):
    path = write_mp4(tmp_path / "wide.mp4", np.arange(3) / 8, size=(32, 128))
    clip = decode_clip(str(path), _cfg(2, height=32, width=32))  # keeps columns 48..80 of the source
    assert (clip.scale_x, clip.left) == (1.0, 48)
    out = clip.map_prompt({"points": [[10, 5], [60, 10], [70, 20]], "labels": [1, 1, 0]})
    assert out == {"points": [[12.0, 10.0], [22.0, 20.0]], "labels": [1, 0]}
    assert clip.map_prompt({"box": [40, 0, 60, 30]}) == {"box": [0.0, 0.0, 12.0, 30.0]}
    with pytest.raises(ClipError, match="outside the centre crop"):
        clip.map_prompt({"box": [0, 0, 40, 30]})
    with pytest.raises(ClipError, match="no foreground prompt point"):
        clip.map_prompt({"points": [[5, 5]]})


def test_map_prompt_loads_a_mask_png(tmp_path):
    path = write_mp4(tmp_path / "m.mp4", np.arange(3) / 8, size=(32, 64))
    clip = decode_clip(str(path), _cfg(2, height=16, width=16))  # scale 0.5, keeps source columns 16..48
    mask = np.zeros((32, 64), np.uint8)
    mask[8:24, 24:40] = 1  # a palette PNG, as DAVIS annotations are
    png = Image.fromarray(mask, mode="P")
    png.putpalette([0, 0, 0, 255, 0, 0])
    buf = io.BytesIO()
    png.save(buf, format="PNG")
    fsspec.filesystem("memory").pipe("/masks/m.png", buf.getvalue())
    out = clip.map_prompt({"mask": "memory://masks/m.png"}, lambda u: load_prompt_mask(u))
    expected = np.zeros((16, 16), bool)
    expected[4:12, 4:12] = True
    assert np.array_equal(out["mask"], expected)
    with pytest.raises(ClipError, match="unreadable"):
        clip.map_prompt({"mask": "memory://masks/missing.png"}, lambda u: load_prompt_mask(u))
    with pytest.raises(ClipError, match="but the video is 32x64"):
        clip.map_prompt({"mask": "x"}, lambda u: np.ones((10, 10), bool))


def test_decodes_from_an_fsspec_memory_url(tmp_path):
    path = write_mp4(tmp_path / "a.mp4", np.arange(20) / 8)
    fsspec.filesystem("memory").pipe("/bucket/clips/a.mp4", path.read_bytes())
    remote = decode_clip("memory://bucket/clips/a.mp4", _cfg(9))
    local = decode_clip(str(path), _cfg(9))
    assert remote.frame_indices == local.frame_indices == list(range(9))
    assert np.array_equal(remote.frames, local.frames)


def test_stops_at_the_last_needed_frame(tmp_path):
    rng = np.random.default_rng(0)
    path = write_mp4(tmp_path / "noise.mp4", np.arange(96) / 24, image=lambda i: rng.integers(0, 256, (32, 48, 3), dtype=np.uint8))
    data = bytearray(path.read_bytes())
    cut = int(len(data) * 0.6)
    data[cut:] = rng.integers(0, 256, len(data) - cut, dtype=np.uint8).tobytes()  # garbage after ~2.4 s
    path.write_bytes(bytes(data))
    # the first 2 s decode fine only because decoding stops before the garbage
    assert decode_clip(str(path), _cfg(17), threads=1).frame_indices[-1] == 48
    with pytest.raises(ClipError, match="corrupt or truncated stream: decoding failed"):
        decode_clip(str(path), _cfg(33), threads=1)


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    good = write_mp4(tmp_path / "good.mp4", np.arange(49) / 8, image=lambda i: np.random.default_rng(i).integers(0, 256, (32, 48, 3), dtype=np.uint8))
    slow_moov = write_mp4(tmp_path / "moov_last.mp4", np.arange(49) / 8, faststart=False)
    files = {
        "truncated": good.read_bytes()[: good.stat().st_size // 2],
        "truncated_container": slow_moov.read_bytes()[: slow_moov.stat().st_size // 2],
        "zero_bytes": b"",
        "text": b"this is not a video\n" * 20,
    }
    out = {name: tmp_path / f"{name}.mp4" for name in files}
    for name, blob in files.items():
        out[name].write_bytes(blob)
    out["five_frames"] = write_mp4(tmp_path / "five.mp4", np.arange(5) / 8)
    with av.open(str(tmp_path / "audio.mp4"), "w", format="wav") as c:  # audio only, named .mp4
        s = c.add_stream("pcm_s16le", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        c.mux(s.encode(frame))
        c.mux(s.encode(None))
    out["audio_only"] = tmp_path / "audio.mp4"
    out["missing"] = tmp_path / "missing.mp4"
    return out


EXPECTED_REASONS = {
    "truncated": r"^truncated or corrupt stream: decoded \d\.\d\d s \(\d+ frames\) of the 6\.\d\d s the container declares$",
    "truncated_container": r"^corrupt or truncated video container \(",
    "zero_bytes": r"^empty file \(0 bytes\)$",
    "text": r"^not a video file: FFmpeg cannot read it",
    "five_frames": r"^too short: 0\.62 s, needs 6\.12 s for 49 frames at 8 fps$",
    "audio_only": r"^no video stream \(streams: audio\)$",
    "missing": r"^file not found$",
}


def test_each_bad_file_gets_its_own_reason(tmp_path):
    files = _bad_files(tmp_path)
    reasons = {}
    for name, path in files.items():
        with pytest.raises(ClipError) as info:
            decode_clip(str(path), _cfg(49))
        assert info.value.url == str(path) and str(path) in str(info.value)
        reasons[name] = info.value.reason
    for name, pattern in EXPECTED_REASONS.items():
        assert re.search(pattern, reasons[name]), (name, reasons[name])
    assert len(set(reasons.values())) == len(reasons)
    # the intact original decodes, so the failures above are the damage, not the settings
    assert decode_clip(str(tmp_path / "good.mp4"), _cfg(49)).frames.shape[0] == 49


def test_min_duration_and_sample_times():
    cfg = _cfg(49)
    assert min_duration(cfg) == pytest.approx(6.125)
    assert sample_times(cfg)[-1] == pytest.approx(6.0)
    assert sample_times(_cfg(3, fps=2, start=1.0)) == [1.0, 1.5, 2.0]


def _marked(size: tuple[int, int], rotation: int | None = None, path: Path | None = None) -> Path:
    """A clip whose stored frames are black with a white 8x8 block at the top-left corner, written
    with the display matrix phones write (PyAV's set_display_rotation: counter-clockwise degrees;
    a phone held upright records landscape frames with -90, 'turn 90 degrees clockwise to show')."""
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = size[1], size[0], "yuv420p"
        s.options = {"crf": "1", "preset": "ultrafast", "threads": "1"}
        if rotation is not None:
            s.set_display_rotation(rotation)
        for _ in range(4):
            rgb = np.zeros((*size, 3), np.uint8)
            rgb[:8, :8] = 255
            c.mux(s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        c.mux(s.encode(None))
    return path


def _bright_corner(frame: np.ndarray) -> str:
    h, w = frame.shape[:2]
    quads = {"top-left": frame[: h // 2, : w // 2], "top-right": frame[: h // 2, w // 2 :],
             "bottom-left": frame[h // 2 :, : w // 2], "bottom-right": frame[h // 2 :, w // 2 :]}
    return max(quads, key=lambda q: quads[q].mean())


@pytest.mark.parametrize(
    "rotation, corner, turned",
    # where the stored top-left block is shown: turned clockwise (phone portrait) it lands top-right;
    # counter-clockwise bottom-left; upside down bottom-right
    [(None, "top-left", 0), (-90, "top-right", 270), (90, "bottom-left", 90), (180, "bottom-right", 180)],
)
def test_display_rotation_is_applied_so_frames_are_stored_upright(tmp_path, rotation, corner, turned):
    path = _marked((48, 32), rotation, tmp_path / "phone.mp4")  # stored 32 wide x 48 high
    upright = (32, 48) if turned in (90, 270) else (48, 32)  # (H0, W0) as a player shows it
    clip = decode_clip(str(path), _cfg(2, height=upright[0], width=upright[1]))  # same aspect: no crop
    assert clip.rotation == turned and clip.source_size == upright
    assert _bright_corner(clip.frames[0]) == corner
    block = clip.frames[0].mean(axis=-1) > 128
    assert 40 <= block.sum() <= 90  # the 8x8 block, whole: nothing cropped or stretched
    rec = clip.record()
    assert (rec["source_width"], rec["source_height"], rec["rotation"]) == (upright[1], upright[0], turned)


def test_portrait_clip_is_cropped_padded_or_skipped_and_its_record_says_so(tmp_path):
    path = _marked((96, 54), None, tmp_path / "portrait.mp4")  # 9:16 portrait, for a 3:2 landscape student
    cropped = decode_clip(str(path), _cfg(2, height=32, width=48))  # default: fit=crop
    rec = cropped.record()
    assert rec["fit"] == "crop" and rec["source_width"] == 54 and rec["source_height"] == 96
    x0, y0, x1, y1 = rec["crop_box"]  # the middle 36 rows of the 54-wide source: 62% of it is lost
    assert (x0, x1) == pytest.approx((0, 54), abs=0.1) and (y0, y1) == pytest.approx((30, 66), abs=1)  # (to the resize's rounding)
    assert rec["frame_indices"] == [0, 1] and rec["frame_times"] == pytest.approx([0, 0.125])
    assert rec["source_fps"] == pytest.approx(8) and rec["duration"] == pytest.approx(0.5)
    padded = decode_clip(str(path), VideoConfig(num_frames=2, height=32, width=48, fit="pad"))
    assert padded.fit == "pad" and padded.record()["fit"] == "pad"
    frame = padded.frames[0].mean(axis=-1)
    # letterboxed: the whole 54x96 frame shrunk to 18x32 in the middle columns, black beside it
    assert frame[:, :15].max() < 20 and frame[:, 33:].max() < 20
    assert frame[:3, 15:18].mean() > 128  # the top-left block of the source, at the content's corner
    x0, y0, x1, y1 = padded.crop_box
    assert (y0, y1) == pytest.approx((0, 96)) and x0 < 0 < 54 < x1  # the output reaches past the source's sides
    mask = np.zeros((96, 54), bool)
    mask[:8, :8] = True
    assert np.array_equal(padded.map_mask(mask)[:5, 15:20].any(axis=0), [True, True, True, False, False])
    with pytest.raises(ClipError, match=r"aspect 54x96 differs from 48x32: a crop would lose 62% .*skipped \(video.fit=skip\)"):
        decode_clip(str(path), VideoConfig(num_frames=2, height=32, width=48, fit="skip"))
    # under the threshold fit does not apply: a 16:9 clip is cropped whatever fit says
    wide = _marked((36, 64), None, tmp_path / "wide.mp4")
    assert decode_clip(str(wide), VideoConfig(num_frames=2, height=32, width=48, fit="skip")).fit == "crop"


def test_a_crop_beyond_max_crop_is_logged_with_the_share_lost(tmp_path, caplog):
    portrait = _marked((96, 54), None, tmp_path / "portrait.mp4")
    wide = _marked((36, 64), None, tmp_path / "wide.mp4")
    with caplog.at_level("WARNING", logger="stages.media.decode"):
        clip = decode_clip(str(portrait), _cfg(2, height=32, width=48))
        assert decode_clip(str(wide), _cfg(2, height=32, width=48)).crop_loss == pytest.approx(1 - (3 / 2) / (16 / 9), abs=0.01)
        decode_clip(str(portrait), VideoConfig(num_frames=2, height=32, width=48, fit="pad"))
    assert clip.crop_loss == pytest.approx(0.62, abs=0.01) and "crop_loss" not in clip.record()  # the record's format is unchanged
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"clip {portrait}: the centre crop to 48x32 loses 62% of its 54x96 frame (over video.max_crop=0.25; "
                     "video.fit=pad letterboxes, skip drops it)"]  # the 16% crop and the padded clip say nothing


def test_a_still_image_named_mp4_is_not_a_video(tmp_path):
    for fmt in ("PNG", "JPEG"):
        path = tmp_path / f"still_{fmt}.mp4"
        Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(path, format=fmt)
        with pytest.raises(ClipError) as info:
            decode_clip(str(path), _cfg(9))
        assert info.value.reason == f"not a video file: a still image ({'png' if fmt == 'PNG' else 'jpeg'})"
