"""A contact sheet of evaluate's samples: for each clip, the real held-out clip and each model's sample
as a row of frames, so a reader sees at a glance whether subjects are drawn and whether they move.

Reads <eval>/samples/<model>/<clip>__seed<s>.mp4 (what `sam2videox evaluate` writes); the row labelled
`real` comes from --real (a corpus folder holding <clip>.mp4), when given.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from stages.media.video import read_video

LABEL_W = 110  # px of label column


def _frames(path: Path, picks: int) -> list[np.ndarray]:
    video, _fps = read_video(path)  # uint8 [F, H, W, 3]
    idx = np.linspace(0, len(video) - 1, picks).round().astype(int)
    return [video[i] for i in idx]


def frame_rows(rows: list[tuple[str, list[np.ndarray]]], label_w: int = LABEL_W, gap: int = 2) -> Image.Image:
    """One row per (label, frames uint8 [H, W, 3] each), a label strip on the left."""
    h, w = rows[0][1][0].shape[:2]
    picks = max(len(frames) for _, frames in rows)
    sheet = Image.new("RGB", (label_w + picks * (w + gap), len(rows) * (h + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (label, frames) in enumerate(rows):
        y = r * (h + gap)
        draw.multiline_text((4, y + 4), label, fill="black")
        for c, frame in enumerate(frames):
            sheet.paste(Image.fromarray(frame), (label_w + c * (w + gap), y))
    return sheet


def heldout_clips(eval_dir: Path, count: int = 3) -> list[str]:
    """The first `count` held-out clips evaluate scored (its report.json protocol)."""
    return json.loads((eval_dir / "report.json").read_text())["protocol"]["clips"][:count]


def contact_sheet(eval_dir: Path, models: list[str], clips: list[str] | None, out: Path, real: Path | None = None,
                  seed: int = 0, picks: int = 6) -> Path:
    """Write a PNG: per clip (None: the first 3 held-out clips), one row per source (real, then `models`),
    `picks` evenly spaced frames each."""
    rows: list[tuple[str, list[np.ndarray]]] = []
    for clip in clips or heldout_clips(eval_dir):
        if real is not None:
            rows.append((f"{clip}\nreal", _frames(real / f"{clip}.mp4", picks)))
        for m in models:
            path = eval_dir / "samples" / m / f"{clip}__seed{seed}.mp4"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no sample of {clip} by {m} (run evaluate with that model first)")
            rows.append((m, _frames(path, picks)))
    out.parent.mkdir(parents=True, exist_ok=True)
    frame_rows(rows).save(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval", type=Path, required=True, help="an evaluate folder")
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--clips", nargs="+", default=None, help="clip keys (default: the first 3 held-out clips evaluate scored)")
    parser.add_argument("--real", type=Path, default=None, help="corpus folder holding <clip>.mp4")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--picks", type=int, default=6)
    args = parser.parse_args(argv)
    contact_sheet(args.eval, args.models, args.clips, args.out, args.real, picks=args.picks)


if __name__ == "__main__":
    main()
