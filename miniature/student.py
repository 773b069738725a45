"""The miniature world's base student: a small CogVideoX image-to-video transformer trained from scratch.

`init` writes a randomly initialised student folder (`transformer/`, `scheduler/`: the layout of a
hub folder such as THUDM/CogVideoX-5b-I2V, loaded by `student.model: <folder>`); `sam2videox distill`
then trains it with L_diff alone (configs/miniature/base.yaml, full fine-tuning), and `publish`
turns that run's exported `transformer/` into the committed base student. The fine-tuning arms
load it through the same `student.model` path a user's checkpoint takes.

Size (profiled on the shared 2 cores, batch 4 at 5x16x24 latents, forward+backward+AdamW): the
repo's tiny preset (2 heads x 16, 3 blocks, 0.09M) ~0.2-0.6 s/step; 2 heads x 32, 3 blocks (0.33M)
~0.35 s/step; 4 heads x 16, 4 blocks (0.43M) over 1 s/step. 2 heads x 32 at 4 blocks is the widest
that trains a few thousand steps within the world's time budget.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from diffusers import CogVideoXDDIMScheduler, CogVideoXTransformer3DModel

from miniature.world import WEIGHTS, WORLD
from stages.families.cogvideox.transformer import COGVIDEOX_5B_SCHEDULER

log = logging.getLogger(__name__)

SEED = 0


def base_config() -> dict[str, Any]:
    """CogVideoX-5B-I2V's switches at toy width, sized for the world's 17x128x192 clips (latent 5x16x24)."""
    return {
        "num_attention_heads": 2,
        "attention_head_dim": 32,
        "in_channels": 32,  # i2v: noisy latent + first-frame latent on channels
        "out_channels": 16,
        "time_embed_dim": 64,
        "text_embed_dim": 32,  # the tiny T5's width (encoders folder)
        "num_layers": 4,
        "sample_width": WORLD.width // 8,
        "sample_height": WORLD.height // 8,
        "sample_frames": WORLD.frames,
        "patch_size": 2,
        "temporal_compression_ratio": 4,
        "max_text_seq_length": 48,  # = encoders.max_text_len of configs/miniature: whole captions
        "use_rotary_positional_embeddings": True,
        "use_learned_positional_embeddings": True,  # as the real I2V model
    }


def init(out: Path, seed: int = SEED) -> Path:
    """Write a random-weight student folder (deterministic in `seed`; the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = CogVideoXTransformer3DModel(**base_config())
        pos = transformer.patch_embed.pos_embedding  # diffusers' float64 sincos init -> float32 small noise
        pos.data = torch.randn(pos.shape, dtype=torch.float32) * 0.02
    transformer.save_pretrained(out / "transformer")
    CogVideoXDDIMScheduler(**COGVIDEOX_5B_SCHEDULER).save_pretrained(out / "scheduler")
    return out


def run_record(run: Path) -> dict[str, Any]:
    """What base.json keeps of the run: its steps, first/last loss, held-out validation and time."""
    summary = json.loads((run / "summary.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in rows if r.get("split", "train") == "train" and "loss" in r]
    val = [r for r in rows if r.get("split") == "val"]
    return {"steps": summary["steps"], "loss_first": summary["first"]["loss"], "loss_last": summary["final"]["loss"],
            "loss_last_mean_50": sum(r["loss"] for r in train[-50:]) / max(len(train[-50:]), 1),
            "train_seconds": sum(r.get("seconds", 0.0) for r in train), "validation": val}


def publish(run: Path, init_dir: Path, out: Path, info: dict[str, Any]) -> Path:
    """The base student folder from a full fine-tune run: its transformer/ plus the scheduler, and base.json
    (`info`, e.g. the command, with the run's record)."""
    if not (run / "transformer" / "config.json").is_file():
        raise FileNotFoundError(f"{run}: no exported transformer/ (was the run a full fine-tune that finished?)")
    info = {**info, "init_seed": SEED, "config": base_config(), **run_record(run)}
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(run / "transformer", tmp / "transformer")
    shutil.copytree(init_dir / "scheduler", tmp / "scheduler")
    (tmp / "base.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_init = sub.add_parser("init", help="write the random-weight student folder")
    p_init.add_argument("--out", type=Path, required=True)
    p_init.add_argument("--seed", type=int, default=SEED)
    p_pub = sub.add_parser("publish", help="copy a finished base run into the base student folder")
    p_pub.add_argument("--run", type=Path, required=True)
    p_pub.add_argument("--init", type=Path, required=True)
    p_pub.add_argument("--out", type=Path, default=WEIGHTS / "student")
    p_pub.add_argument("--command", default="make miniature-student", help="recorded in base.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.cmd == "init":
        init(args.out, args.seed)
    else:
        publish(args.run, args.init, args.out, {"command": args.command})


if __name__ == "__main__":
    main()
