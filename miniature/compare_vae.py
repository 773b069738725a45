"""Compare trained miniature VAE folders on the probe part: whole-frame and subject PSNR (as
train_vae's encoders.json reports them) and a PNG grid of real vs reconstructed frames of one clip.

Why: the whole-frame PSNR of v1 (20.6 dB) hid that it washed the subjects out; the subject PSNR
and a look at the frames show it.

Usage:  python -m miniature.compare_vae --vae v1=weights/miniature/encoders --vae v2=out/encoders-v2 \
            --png out/vae_compare.png [--clip 0] [--frames 0 8 16]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from miniature.contact_sheet import frame_rows
from miniature.train_vae import Clips, TrainConfig, probe_psnr, reconstruct, render_part
from miniature.world import WORLD

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vae", action="append", required=True, help="label=folder (an encoders folder), repeatable")
    p.add_argument("--png", type=Path, required=True)
    p.add_argument("--probe-clips", type=int, default=TrainConfig.probe_clips)
    p.add_argument("--clip", type=int, default=0, help="probe clip shown in the PNG")
    p.add_argument("--frames", type=int, nargs="+", default=[0, 8, 16])
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    probe = render_part(WORLD.probe, max(args.probe_clips, args.clip + 1))
    scores, rows = {}, [("real", probe.frames[args.clip])]
    for spec in args.vae:
        label, folder = spec.split("=", 1)
        scores[label] = probe_psnr(folder, Clips(probe.frames[: args.probe_clips], probe.masks[: args.probe_clips]))
        rows.append((label, reconstruct(folder, probe.frames[args.clip : args.clip + 1])[0]))
    args.png.parent.mkdir(parents=True, exist_ok=True)
    frame_rows([(label, [clip[f] for f in args.frames]) for label, clip in rows], label_w=64).save(args.png)
    print(json.dumps({"probe_clips": args.probe_clips, "psnr_db": scores, "png": str(args.png)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
