"""A contact sheet of evaluate's samples: for each clip, the real held-out clip and each model's sample
as a row of frames, so a reader sees at a glance whether subjects are drawn and whether they move.

Reads <eval>/samples/<model>/<clip>__seed<s>.mp4 (what `sam2videox evaluate` writes); the row labelled
`real` comes from --real (a corpus folder holding <clip>.mp4), when given.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from stages.media.video import read_video

LABEL_W = 110  # px of label column


def _frames(path: Path, picks: int) -> list[np.ndarray]:
    video, _fps = read_video(path)  # uint8 [F, H, W, 3]
    idx = np.linspace(0, len(video) - 1, picks).round().astype(int)
    return [video[i] for i in idx]


def contact_sheet(eval_dir: Path, models: list[str], clips: list[str], out: Path, real: Path | None = None,
                  seed: int = 0, picks: int = 6) -> Path:
    """Write a PNG: per clip, one row per source (real, then `models`), `picks` evenly spaced frames each."""
    rows: list[tuple[str, list[np.ndarray]]] = []
    for clip in clips:
        if real is not None:
            rows.append((f"{clip}\nreal", _frames(real / f"{clip}.mp4", picks)))
        for m in models:
            path = eval_dir / "samples" / m / f"{clip}__seed{seed}.mp4"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no sample of {clip} by {m} (run evaluate with that model first)")
            rows.append((m, _frames(path, picks)))
    h, w = rows[0][1][0].shape[:2]
    sheet = Image.new("RGB", (LABEL_W + picks * (w + 2), len(rows) * (h + 2)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (label, frames) in enumerate(rows):
        y = r * (h + 2)
        draw.multiline_text((4, y + 4), label, fill="black")
        for c, frame in enumerate(frames):
            sheet.paste(Image.fromarray(frame), (LABEL_W + c * (w + 2), y))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval", type=Path, required=True, help="an evaluate folder")
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--clips", nargs="+", required=True)
    parser.add_argument("--real", type=Path, default=None, help="corpus folder holding <clip>.mp4")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--picks", type=int, default=6)
    args = parser.parse_args(argv)
    contact_sheet(args.eval, args.models, args.clips, args.out, args.real, picks=args.picks)


if __name__ == "__main__":
    main()
