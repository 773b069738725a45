"""Decode one clip: sample `num_frames` frames at `fps` by timestamp, turn them upright, resize to cover H x W, centre-crop.

Why this shape: the teacher (SAM2) and the student (CogVideoX) must see the same pixels, so every
clip becomes exactly [F, H, W, 3] at the student's resolution, and the resize + crop geometry is
kept so prompts given in source pixels (manifest boxes, points, masks) land on the same subject.

Frames are stored upright: the container's display matrix (phones record portrait video as
landscape frames plus a 90-degree rotation) is applied, and every source coordinate below
(sizes, prompts, crop boxes) is in the upright frame a player shows. A clip whose aspect differs
from H x W so much that the crop would lose more than `video.max_crop` of it is cropped anyway,
padded, or skipped, as `video.fit` says; the record says which, and where the crop was.

Frames are picked by presentation timestamp (the frame nearest to start + i / fps), so sources at
any frame rate, variable ones included, give the same temporal sampling. Decoding stops at the last
needed frame; only the chosen frames are converted to RGB, scaled and cropped (in one swscale pass).
A clip with a time range (a window of a long source: `start`) seeks to the keyframe before it
rather than decoding the source from its start: a late window of a 2-hour source costs what an
early one does. Times stay seconds from the source's first frame, and frame indices after a seek
are derived from the timestamps (exact at a constant frame rate).
A crop that loses more than `video.max_crop` of the frame (kept under `fit=crop`) is logged with the
share lost; the extract run counts them at its end.
Every way a file can be bad becomes a ClipError with a short reason, which the caller records in
its ledger before skipping the clip; PyAV exceptions never escape for a bad file.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import av
import numpy as np
from PIL import Image

from stages.config.extract import VideoConfig
from stages.core.fs import filesystem, is_local
from stages.media.buckets import assign_bucket, needs_seconds, no_bucket_reason

log = logging.getLogger(__name__)

# Leading bytes of containers we recognise: a file that starts like a video but cannot be opened
# is reported as corrupt or truncated rather than "not a video".
_SIGNATURES = (
    (4, b"ftyp"),  # mp4 / mov / m4v / 3gp
    (4, b"moov"),  # old QuickTime
    (4, b"mdat"),  # QuickTime with the payload first
    (4, b"wide"),
    (4, b"free"),
    (0, b"\x1a\x45\xdf\xa3"),  # EBML: mkv / webm
    (0, b"RIFF"),  # avi
    (0, b"\x00\x00\x01\xba"),  # MPEG program stream
)


class ClipError(Exception):
    """A clip that cannot be used. `.reason` is a short human string for the ledger."""

    def __init__(self, reason: str, url: str | None = None) -> None:
        super().__init__(reason, url)  # both in args, so the error survives a round trip between processes
        self.reason = reason  # e.g. "too short: 0.62 s, needs 6.12 s for 49 frames at 8 fps"
        self.url = url  # the clip's URL, when known

    def __str__(self) -> str:
        return f"{self.url}: {self.reason}" if self.url else self.reason


@dataclass
class DecodedClip:
    """F sampled frames at the output size and the geometry that maps source pixels onto them.

    Coordinates are continuous pixel coordinates (pixel i spans [i, i + 1)), so a box given by
    its pixel edges maps exactly: x_out = x_src * scale_x - left, y_out = y_src * scale_y - top.
    scale_x and scale_y differ only by the rounding of the resized size (under 1 / W0).
    """

    frames: np.ndarray  # uint8 [F, H, W, 3]
    frame_indices: list[int]  # source frame index (presentation order) of each sampled frame
    frame_times: list[float]  # seconds from the source's first frame, per sampled frame
    source_fps: float  # the stream's average rate (0.0 when the container does not say)
    source_size: tuple[int, int]  # (H0, W0) of the upright source frames
    scale_x: float  # resized width / W0 (the resize covers H x W with the aspect ratio kept; fits inside it for "pad")
    scale_y: float  # resized height / H0
    top: int  # rows cropped off the top of the resized frame (negative: rows of padding above it)
    left: int  # columns cropped off the left of the resized frame (negative: columns of padding)
    rotation: int = 0  # degrees the stored frames were turned (counter-clockwise) to stand upright
    fit: str = "crop"  # "crop" or "pad": how the frame was brought to H x W
    duration: float | None = None  # seconds, as the container declares it (None when it does not)
    crop_loss: float = 0.0  # share of the upright source frame the crop removed (0 when padded); not in the record
    decoded_frames: int = 0  # frames the decoder produced to sample this clip (a seek skips the rest); not in the record
    bucket: tuple[int, int, int] | None = None  # (frames, height, width) of its video.buckets entry; None without buckets

    @property
    def crop_box(self) -> list[float]:
        """The output frame in upright source pixels [x0, y0, x1, y1] (beyond the source where padded)."""
        h, w = self.size
        return [self.left / self.scale_x, self.top / self.scale_y, (self.left + w) / self.scale_x, (self.top + h) / self.scale_y]

    def record(self) -> dict:
        """The clip's provenance for its store record: where every stored frame came from."""
        return {
            "source_fps": round(self.source_fps, 6),
            "duration": None if self.duration is None else round(self.duration, 6),
            "source_width": self.source_size[1],
            "source_height": self.source_size[0],
            "rotation": self.rotation,
            "fit": self.fit,
            "crop_box": [round(v, 3) for v in self.crop_box],
            "frame_indices": list(self.frame_indices),
            "frame_times": [round(t, 6) for t in self.frame_times],
        } | ({"bucket": list(self.bucket)} if self.bucket is not None else {})  # no key without buckets: records as before

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the output frames."""
        return int(self.frames.shape[1]), int(self.frames.shape[2])

    @property
    def scale(self) -> float:
        """The nominal (cover) scale, max(H / H0, W / W0); see scale_x / scale_y for the exact ones."""
        h, w = self.size
        return max(h / self.source_size[0], w / self.source_size[1])

    def map_points(self, points: np.ndarray | list) -> np.ndarray:
        """Source [N, 2] (x, y) -> output float64 [N, 2]; points may land outside the crop."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        return np.stack([pts[:, 0] * self.scale_x - self.left, pts[:, 1] * self.scale_y - self.top], axis=1)

    def map_box(self, box: list | tuple | np.ndarray) -> list[float]:
        """Source [x0, y0, x1, y1] -> output box, clipped to the crop (may be empty if outside)."""
        (x0, y0), (x1, y1) = self.map_points(np.asarray(box, dtype=np.float64).reshape(2, 2))
        h, w = self.size
        return [float(np.clip(x0, 0, w)), float(np.clip(y0, 0, h)), float(np.clip(x1, 0, w)), float(np.clip(y1, 0, h))]

    def map_mask(self, mask: np.ndarray) -> np.ndarray:
        """Source bool [H0, W0] -> output bool [H, W], by the same resize and crop as the frames."""
        if tuple(mask.shape) != self.source_size:
            raise ClipError(f"mask prompt is {mask.shape[0]}x{mask.shape[1]} but the video is {self.source_size[0]}x{self.source_size[1]}")
        h, w = self.size
        rw, rh = round(self.source_size[1] * self.scale_x), round(self.source_size[0] * self.scale_y)
        img = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((rw, rh), Image.Resampling.BILINEAR))
        return _place(img, self.top, self.left, h, w) >= 128

    def map_prompt(self, prompt: dict, mask_loader: Callable[[str], np.ndarray] | None = None) -> dict:
        """Map a manifest prompt to output coordinates.

        {"box": [...]} -> {"box": [x0, y0, x1, y1]} (clipped to the crop);
        {"points": [[x, y], ...], "labels": [...]} -> the same, dropping points outside the crop
        (labels default to 1 = foreground); {"mask": url} -> {"mask": bool [H, W]} with
        mask_loader(url) giving the source mask. Raises ClipError when the crop loses the subject.
        """
        out: dict = {}
        if "mask" in prompt:
            out["mask"] = self._mapped_mask(prompt["mask"], mask_loader)
        if "box" in prompt:
            box = self.map_box(prompt["box"])
            if box[2] - box[0] < 1 or box[3] - box[1] < 1:
                raise ClipError(f"prompt box {list(prompt['box'])} lies outside the centre crop")
            out["box"] = box
        if "points" in prompt:
            pts = self.map_points(prompt["points"])
            labels = np.asarray(prompt.get("labels") or [1] * len(pts), dtype=np.int64)
            h, w = self.size
            inside = (pts[:, 0] >= 0) & (pts[:, 0] < w) & (pts[:, 1] >= 0) & (pts[:, 1] < h)
            if not (labels[inside] == 1).any() and "box" not in out:
                raise ClipError("no foreground prompt point lies inside the centre crop")
            out["points"] = pts[inside].tolist()
            out["labels"] = labels[inside].tolist()
        if not out:
            raise ClipError(f"prompt has none of box, points, mask: {sorted(prompt)}")
        return out

    def _mapped_mask(self, url: str, mask_loader: Callable[[str], np.ndarray] | None) -> np.ndarray:
        if mask_loader is None:
            raise ClipError("mask prompt given but no mask loader")
        try:
            mask = mask_loader(url)
        except (OSError, ValueError) as e:  # missing or unreadable PNG: this clip's data is bad
            raise ClipError(f"mask prompt {url} unreadable: {e}") from e
        mapped = self.map_mask(np.asarray(mask, dtype=bool))
        if not mapped.any():
            raise ClipError("mask prompt is empty inside the centre crop")
        return mapped


def _resized_size(source: tuple[int, int], out: tuple[int, int], fit: str = "crop") -> tuple[int, int]:
    """(width, height) of the source resized, aspect kept, to cover out = (H, W) ("crop") or fit inside it ("pad")."""
    (h0, w0), (h, w) = source, out
    if fit == "pad":
        s = min(h / h0, w / w0)
        return min(w, max(1, round(w0 * s))), min(h, max(1, round(h0 * s)))
    s = max(h / h0, w / w0)
    return max(w, round(w0 * s)), max(h, round(h0 * s))


def crop_loss(source: tuple[int, int], out: tuple[int, int]) -> float:
    """Share of the source frame (H0, W0) a centre crop to the aspect of out = (H, W) removes."""
    a_src, a_out = source[1] / source[0], out[1] / out[0]
    return 1.0 - min(a_src / a_out, a_out / a_src)


def _place(img: np.ndarray, top: int, left: int, h: int, w: int) -> np.ndarray:
    """The [h, w] window at (top, left) of img [rh, rw, ...]; parts outside img are zero (padding)."""
    out = np.zeros((h, w, *img.shape[2:]), img.dtype)
    y0, x0 = max(0, top), max(0, left)
    y1, x1 = min(img.shape[0], top + h), min(img.shape[1], left + w)
    out[y0 - top : y1 - top, x0 - left : x1 - left] = img[y0:y1, x0:x1]
    return out


@dataclass
class _Picked:
    index: int  # source frame index
    time: float  # seconds from the first frame
    frame: av.VideoFrame


def decode_clip(url: str, video: VideoConfig, storage_options: dict | None = None, *, threads: int = 0,
                start: float | None = None, end: float | None = None) -> DecodedClip:
    """Decode `video.num_frames` frames of the clip at `url` (local path or fsspec URL).

    threads: FFmpeg decoding threads (0 = FFmpeg's choice); 1 on a worker pinned to one core.
    start, end: the clip's time range in the source (seconds from its first frame; a ClipEntry's
    start / end): sampling begins at start + video.start_sec, after a seek. A range shorter than
    the clip's span is refused (its frames would come from past its end).
    With video.buckets, the clip is first probed (its upright size and declared duration, one frame decoded)
    and decoded at the bucket stages/media/buckets.py assigns it (DecodedClip.bucket says which); a clip too
    short for every bucket is a ClipError.
    Raises ClipError for a missing, empty, non-video, corrupt, truncated or too short file.
    """
    offset = start or 0.0
    if video.buckets is not None:
        return _decode_bucketed(url, video, storage_options, threads, start, end)
    if end is not None and end - offset < min_duration(video) - 1e-6:
        raise ClipError(f"range {offset:g}-{end:g} s is {end - offset:.2f} s, shorter than the {min_duration(video):.2f} s a clip "
                        f"of {video.num_frames} frames at {video.fps:g} fps needs", url)
    with _opened(url, storage_options) as container:
        return _decode(container, video, url, threads, offset)


@contextlib.contextmanager
def _opened(url: str, storage_options: dict | None):
    """The clip's container, open (ClipError for a missing, empty or unreadable file), closed on exit."""
    fs, path = filesystem(url, storage_options)
    try:
        nbytes = fs.size(path)
    except FileNotFoundError as e:
        raise ClipError("file not found", url) from e
    if not nbytes:
        raise ClipError("empty file (0 bytes)", url)
    with contextlib.ExitStack() as stack:
        # local files go to FFmpeg by name (its own buffered IO); others through a seekable fsspec file
        source = path if is_local(fs) else stack.enter_context(fs.open(path, "rb"))
        container = _open(source, fs, path, url)
        stack.callback(container.close)
        yield container


def _decode_bucketed(url: str, video: VideoConfig, storage_options: dict | None, threads: int, start: float | None,
                     end: float | None) -> DecodedClip:
    """decode_clip with video.buckets: probe, assign, decode at the bucket. A container may declare more than it
    holds: a clip found too short for its bucket is assigned again among the buckets of fewer frames."""
    offset = start or 0.0
    duration, (h, w) = _probe(url, storage_options, offset, end)
    candidates = video.bucket_shapes()
    while True:
        bucket = assign_bucket(candidates, duration, h, w, video.fps, video.start_sec)
        if bucket is None:
            raise ClipError(no_bucket_reason(video.bucket_shapes(), duration, video.fps, video.start_sec), url)
        try:
            clip = decode_clip(url, video.at(bucket), storage_options, threads=threads, start=start, end=end)
        except ClipError as exc:
            if not exc.reason.startswith("too short"):
                raise
            candidates = [b for b in candidates if b[0] < bucket[0]]
            continue
        clip.bucket = bucket
        return clip


def _probe(url: str, storage_options: dict | None, offset: float, end: float | None) -> tuple[float | None, tuple[int, int]]:
    """(seconds of the clip from `offset`, None when the container does not say; (H0, W0) of its upright frames):
    the declared duration less the range's start (its end caps it) and the first frame's size and rotation."""
    with _opened(url, storage_options) as container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise ClipError(f"no video stream (streams: {', '.join(kinds)})", url)
        stream = container.streams.video[0]
        declared = _declared_duration(stream, container)
        try:
            frame = next(container.decode(stream))
        except (StopIteration, av.FFmpegError) as e:
            raise ClipError("no decodable frames (corrupt or truncated stream)", url) from e
        _, (h, w) = _upright(frame)
    duration = None if declared is None else declared - offset
    if end is not None:
        duration = end - offset if duration is None else min(duration, end - offset)
    return duration, (h, w)


def _open(source, fs, path: str, url: str) -> av.container.InputContainer:
    try:
        container = av.open(source, "r")
    except av.FFmpegError as e:
        with fs.open(path, "rb") as f:
            head = f.read(192)
        ts = head[:1] == head[188:189] == b"\x47"  # MPEG transport stream: a sync byte every 188 bytes
        if ts or any(head[off : off + len(sig)] == sig for off, sig in _SIGNATURES):
            raise ClipError(f"corrupt or truncated video container ({_short(e)})", url) from e
        raise ClipError(f"not a video file: FFmpeg cannot read it ({_short(e)})", url) from e
    # FFmpeg also opens still images (a PNG or JPEG renamed .mp4) as one-frame "videos": name them
    # for what they are rather than report them as too short
    fmt = container.format.name
    if fmt == "image2" or fmt.endswith("_pipe"):
        container.close()
        raise ClipError(f"not a video file: a still image ({fmt.removesuffix('_pipe')})", url)
    return container


def _short(e: Exception) -> str:
    """FFmpeg's message without the errno and the '<none>' file name PyAV appends."""
    msg = getattr(e, "strerror", None) or str(e)
    return str(msg).split(": '")[0]


def _decode(container: av.container.InputContainer, video: VideoConfig, url: str, threads: int, offset: float = 0.0) -> DecodedClip:
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise ClipError(f"no video stream (streams: {', '.join(kinds)})", url)
    stream = container.streams.video[0]
    stream.codec_context.thread_type = "AUTO"
    stream.codec_context.thread_count = threads
    rate = float(stream.average_rate or stream.guessed_rate or 0.0)
    sampler = _Sampler(video, url, offset)
    last, count = _sample(container, stream, sampler, rate)
    if sampler.done < video.num_frames:
        raise ClipError(_short_reason(last, rate, stream, container, video, offset), url)
    clip = sampler.result(rate, _declared_duration(stream, container))
    clip.decoded_frames = count
    if clip.fit == "crop" and clip.crop_loss > video.max_crop:
        log.warning("clip %s: the centre crop to %dx%d loses %.0f%% of its %dx%d frame (over video.max_crop=%g; video.fit=pad "
                    "letterboxes, skip drops it)", url, video.width, video.height, 100 * clip.crop_loss,
                    clip.source_size[1], clip.source_size[0], video.max_crop)
    return clip


def _frames(container, stream, rate: float, fps: float, seek_to: float):
    """Decoded frames as _Picked (index, seconds from the source's first frame), in presentation order.

    The first frame is decoded to learn the source's time origin; then, when seek_to (seconds from
    that origin) lies past it, the demuxer seeks to the keyframe before seek_to and decoding goes
    on from there (frame indices from then on are round(time * rate)). Without a seek every frame
    is decoded and counted, as before ranges existed.
    """
    frames = container.decode(stream)
    origin: float | None = None
    seeked = False
    count = 0
    for frame in frames:
        count += 1
        t = frame.time if frame.time is not None else (count - 1) / (rate or fps)
        origin = t if origin is None else origin  # the first frame is time 0, whatever the container's start
        index = round((t - origin) * rate) if seeked and rate else count - 1
        yield _Picked(index, t - origin, frame), count
        if count == 1 and seek_to > 0 and frame.time is not None and stream.time_base:
            try:  # backward: the keyframe at or before; a margin so the frame before the first target is decoded too
                container.seek(int((origin + max(0.0, seek_to - 2.0 / (rate or fps))) / stream.time_base), stream=stream,
                               backward=True, any_frame=False)
            except av.FFmpegError as e:  # an unseekable source: decode on from here, as without a range
                log.debug("seek to %.3f s failed (%s); decoding from the start", seek_to, _short(e))
                continue
            seeked = True
            frames = container.decode(stream)
            for frame in frames:
                count += 1
                if frame.time is None or frame.time - origin <= 0:
                    continue  # a seek that lands at the start gives the first frame again
                t = frame.time
                yield _Picked(round((t - origin) * rate) if rate else count - 1, t - origin, frame), count
            return


def _sample(container, stream, sampler: _Sampler, rate: float) -> tuple[_Picked | None, int]:
    """Serve each target time with the decoded frame nearest to it; stop once the last is served.

    The nearest frame to a target is the first frame at or after it or the one before that, so
    only one earlier frame is ever held. A frame serves several targets when the source is slower
    than the sampling rate. Returns (the last frame decoded, how many were decoded).
    """
    targets, video = sampler.targets, sampler.video
    prev: _Picked | None = None
    count = 0
    try:
        for cur, count in _frames(container, stream, rate, video.fps, sampler.offset):
            if sampler.offset and prev is not None and cur.time <= prev.time:
                continue  # after a seek, frames already seen (or decoded twice) are not new
            while sampler.done < len(targets) and cur.time >= targets[sampler.done]:
                target = targets[sampler.done]
                near_prev = prev is not None and target - prev.time <= cur.time - target
                sampler.take(prev if near_prev else cur)  # type: ignore[arg-type]
            if sampler.done == len(targets):
                break
            prev = cur
        # past the last frame: it still serves targets within half a sampling period of its time
        while prev is not None and sampler.done < len(targets) and targets[sampler.done] - prev.time <= 0.5 / video.fps:
            sampler.take(prev)
    except av.FFmpegError as e:
        raise ClipError(f"corrupt or truncated stream: decoding failed after {count} frames ({_short(e)})", sampler.url) from e
    return prev, count


def _upright(frame: av.VideoFrame) -> tuple[int, tuple[int, int]]:
    """(rotation, (H0, W0)): the counter-clockwise degrees (0, 90, 180, 270) that stand the stored frame
    upright, and its size once turned. frame.rotation is FFmpeg's display-matrix angle (counter-clockwise):
    a phone's portrait clip says -90, i.e. turn the stored landscape frame 90 degrees clockwise to show it."""
    rotation = int(round((frame.rotation or 0) / 90.0)) * 90 % 360
    stored = (frame.height, frame.width)
    return rotation, (stored[::-1] if rotation in (90, 270) else stored)


@dataclass(frozen=True)
class _Geometry:
    """How stored source frames become output frames: turn upright, resize, then crop or pad."""

    rotation: int  # counter-clockwise degrees that stand the stored frame upright (0, 90, 180, 270)
    stored: tuple[int, int]  # (H, W) as decoded
    upright: tuple[int, int]  # (H0, W0) after the rotation
    fit: str  # "crop" or "pad"
    resized: tuple[int, int]  # (rw, rh): the upright frame resized, aspect kept
    top: int  # offset of the output window in the resized frame (negative = padding)
    left: int
    crop_loss: float = 0.0  # share of the upright frame the crop removes (0 when padded)

    @staticmethod
    def of(frame: av.VideoFrame, video: VideoConfig, url: str) -> _Geometry:
        rotation, upright = _upright(frame)
        stored = (frame.height, frame.width)
        out = (video.height, video.width)
        loss = crop_loss(upright, out)
        fit = "crop"
        if loss > video.max_crop and video.fit != "crop":  # (under fit=crop, decode_clip logs the loss)
            if video.fit == "skip":
                raise ClipError(
                    f"aspect {upright[1]}x{upright[0]} differs from {out[1]}x{out[0]}: a crop would lose {loss:.0%} of the frame "
                    f"(video.max_crop={video.max_crop:g}); skipped (video.fit=skip)",
                    url,
                )
            fit = "pad"
        rw, rh = _resized_size(upright, out, fit)
        if fit == "pad":
            top, left = -((out[0] - rh) // 2), -((out[1] - rw) // 2)
        else:
            top, left = (rh - out[0]) // 2, (rw - out[1]) // 2
        return _Geometry(rotation, stored, upright, fit, (rw, rh), top, left, loss if fit == "crop" else 0.0)


class _Sampler:
    """Fills the output clip as frames are picked: RGB, upright, resize to cover (H, W), centre-crop (or pad).

    Converting at pick time means at most two source frames are alive at once, whatever the
    source resolution (49 held 4K frames would be ~600 MB).
    """

    def __init__(self, video: VideoConfig, url: str, offset: float = 0.0) -> None:
        self.video, self.url, self.offset = video, url, offset
        self.targets = sample_times(video, offset)
        self.frames = np.empty((video.num_frames, video.height, video.width, 3), dtype=np.uint8)
        self.indices: list[int] = []
        self.times: list[float] = []
        self.geometry: _Geometry | None = None  # set by the first picked frame

    @property
    def done(self) -> int:
        return len(self.indices)

    def take(self, p: _Picked) -> None:
        i = self.done
        if i and self.indices[-1] == p.index:  # picks never go back, so a repeat is the previous one
            self.frames[i] = self.frames[i - 1]
        else:
            self.frames[i] = self._convert(p)
        self.indices.append(p.index)
        self.times.append(p.time)

    def _convert(self, p: _Picked) -> np.ndarray:
        if self.geometry is None:
            self.geometry = _Geometry.of(p.frame, self.video, self.url)
        g = self.geometry
        size = (p.frame.height, p.frame.width)
        if size != g.stored:
            raise ClipError(f"frame size changes mid-stream ({g.stored} -> {size})", self.url)
        if p.frame.is_corrupt:
            raise ClipError(f"corrupt stream: frame {p.index} decoded with errors", self.url)
        h, w = self.video.height, self.video.width
        rw, rh = g.resized
        sw, sh = (rh, rw) if g.rotation in (90, 270) else (rw, rh)  # the resize happens before the turn, in stored axes
        # one swscale pass does YUV -> RGB and the resize; area averaging is the good downscaler,
        # but it does not interpolate when upscaling, bicubic does
        interpolation = "AREA" if sw <= size[1] else "BICUBIC"
        rgb = p.frame.to_ndarray(width=sw, height=sh, format="rgb24", interpolation=interpolation)
        if g.rotation:
            rgb = np.rot90(rgb, k=g.rotation // 90)  # np.rot90 turns counter-clockwise, as the display matrix does
        if g.fit == "pad":
            return _place(rgb, g.top, g.left, h, w)
        return rgb[g.top : g.top + h, g.left : g.left + w]

    def result(self, rate: float, duration: float | None) -> DecodedClip:
        g = self.geometry
        assert g is not None  # result() follows a full set of picks
        rw, rh = g.resized
        return DecodedClip(
            frames=self.frames,
            frame_indices=self.indices,
            frame_times=self.times,
            source_fps=rate,
            source_size=g.upright,
            scale_x=rw / g.upright[1],
            scale_y=rh / g.upright[0],
            top=g.top,
            left=g.left,
            rotation=g.rotation,
            fit=g.fit,
            duration=duration,
            crop_loss=g.crop_loss,
        )


def _short_reason(last: _Picked | None, rate: float, stream, container, video: VideoConfig, offset: float = 0.0) -> str:
    """Why the stream ran out: truncated (the container promised more) or simply too short."""
    if last is None:
        return "no decodable frames (corrupt or truncated stream)"
    count = last.index + 1  # frames up to the last one (decoded, or skipped by a seek)
    # span of the decoded frames plus one mean frame period: the clip's length as a player shows it
    period = last.time / (count - 1) if count > 1 else (1 / rate if rate else 0.0)
    got = last.time + period
    needs = offset + min_duration(video)
    declared = _declared_duration(stream, container)
    if declared is not None and got < 0.9 * declared - period:
        return f"truncated or corrupt stream: decoded {got:.2f} s ({count} frames) of the {declared:.2f} s the container declares"
    return f"too short: {got:.2f} s, needs {needs:.2f} s for {video.num_frames} frames at {video.fps:g} fps" + (
        f" from {offset + video.start_sec:g} s" if offset + video.start_sec else ""
    )


def _declared_duration(stream, container) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


def sample_times(video: VideoConfig, offset: float = 0.0) -> list[float]:
    """The target timestamps (seconds from the first frame) that decode_clip samples; offset: the clip's range start."""
    return [offset + video.start_sec + i / video.fps for i in range(video.num_frames)]


def min_duration(video: VideoConfig) -> float:
    """Seconds of source a clip needs: the span of num_frames frames at fps, from start_sec."""
    return needs_seconds(video.num_frames, video.fps, video.start_sec)

