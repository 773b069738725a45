"""Whole-video I/O: frames to an mp4 (samples, evaluation grids, inspect's PCA panels), and every frame of a
video file back (`score` on videos made elsewhere). Clips for training go through decode.py instead."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    """uint8 [N, H, W, 3] -> H.264 mp4 (even sizes padded), via PyAV."""
    import av

    n, h, w, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=int(round(fps)))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())


class VideoReadError(ValueError):
    """A video file that cannot be read: one line naming the file and why."""


def read_video(path: Path) -> tuple[np.ndarray, float]:
    """Every frame of a video file -> (uint8 [F, H, W, 3] RGB, fps), via PyAV. VideoReadError when the file does
    not open, has no video stream, or decodes no frame."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(f"{path}: no video stream")
            stream = container.streams.video[0]
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
            fps = float(stream.average_rate or stream.guessed_rate or 0) or 8.0
    except VideoReadError:
        raise
    except Exception as exc:  # av.error.InvalidDataError and friends: the reason, not a traceback
        raise VideoReadError(f"{path}: unreadable video ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not frames:
        raise VideoReadError(f"{path}: no decodable frame")
    if len({f.shape for f in frames}) > 1:
        raise VideoReadError(f"{path}: frames change size mid-video")
    return np.stack(frames), fps
