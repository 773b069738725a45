"""The miniature world's fixed sizes, seeds and parts: one place every trainer reads them from.

Sizes: 17 frames at 8 fps (2 s) of 128x192 pixels. 17 frames is the shortest clip the CogVideoX
VAE maps to more than a couple of latent frames (4x temporal: 5 latent frames); 128x192 keeps the
sample corpus's subjects drawable (a walker's limbs are 2-3 px wide) and gives the student the
demo's 8x12 token grid (VAE 8x spatial, patch 2), so every tiny config already fits it.

Parts are disjoint by generator seed, so no clip is in two parts:
  teacher  seed 100, rendered in memory with true masks: the tiny SAM2 and the VAE train on it
  probe    seed 1000, in memory: held-out J&F of the teacher and judge, PSNR of the VAE
  judge    seed 300, in memory with true masks: a second tiny SAM2 (another init, other clips) that
           judges the samples, so no structure score rewards agreeing with the teacher
  base     seed 1, written as mp4 + manifest: the base student's L_diff corpus
  tune     seed 2, written as mp4 + manifest: the fine-tuning arms; its store's held-out split
           (stages/store/holdout.py, by key hash) is the evaluation set of the ablation table
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "weights" / "miniature"  # committed: make demo uses them, never trains them


@dataclass(frozen=True)
class Part:
    name: str
    seed: int  # generator seed: clip i of a part is clip_spec(i, ..., seed)
    clips: int


@dataclass(frozen=True)
class World:
    frames: int = 17
    fps: float = 8.0
    height: int = 128
    width: int = 192
    teacher: Part = Part("teacher", 100, 240)
    probe: Part = Part("probe", 1000, 30)
    base: Part = Part("base", 1, 320)
    tune: Part = Part("tune", 2, 200)
    judge: Part = Part("judge", 300, 240)  # the evaluation judge's own training clips (a second tiny SAM2)


WORLD = World()


def sample_generator() -> ModuleType:
    """datasets/sample/generate.py, imported by path: datasets/ is not a package (it would shadow Hugging Face's)."""
    spec = importlib.util.spec_from_file_location("sample_generate", ROOT / "datasets" / "sample" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def render(part: Part, index: int, world: World = WORLD):
    """Clip `index` of `part` in memory: a RenderedClip (frames uint8 [F,H,W,3], masks bool [F,H,W], box, caption)."""
    return sample_generator().render_clip(index, world.frames, world.fps, world.height, world.width, part.seed)


def write_part(part: Part, out: Path, world: World = WORLD) -> list[dict]:
    """Write `part` as a corpus folder (mp4 + caption + manifest.jsonl), as a user's bucket is laid out."""
    return sample_generator().generate(out, part.clips, world.frames, world.fps, world.height, world.width, part.seed)


def main(argv: list[str] | None = None) -> None:
    import argparse
    import logging

    parts = {p.name: p for p in (WORLD.base, WORLD.tune)}
    parser = argparse.ArgumentParser(description="write a part of the miniature world as a corpus folder")
    parser.add_argument("--part", choices=sorted(parts), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--clips", type=int, default=None, help="fewer clips than the part has (smoke runs)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    part = parts[args.part]
    if args.clips is not None:
        part = Part(part.name, part.seed, args.clips)
    write_part(part, args.out)


if __name__ == "__main__":
    main()
