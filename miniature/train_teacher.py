"""Train the miniature world's tiny SAM2 teacher with sam2's own training modules.

The model is the project's `tiny` preset (the real SAM2 architecture at reduced widths,
stages.teacher.sam2_model.tiny_preset) at image_size 128, built as sam2's `SAM2Train`
(training/model/sam2.py) and trained with sam2's `MultiStepMultiMasksAndIous` loss at the weights
of sam2's own training config (mask focal 20, dice 1, IoU 1, object class 1), on the true masks
of the world's `teacher` part (rendered in memory; disjoint from the `probe` part it is scored on).

Prompts follow how the project prompts the teacher: the forward pass gets the frame-0 box (here
SAM's noised box from the true mask, `sample_box_points`), the backward pass a mask, so 25% of
the windows are prompted with the true frame-0 mask instead. Windows are played reversed half of
the time, so the model also learns to track backwards in time as the backward pass does.

The result is written in SAM2's official checkpoint format ({"model": state_dict}, via
save_checkpoint), so it loads where a user's released checkpoint would (`teacher.checkpoint`).

  python -m miniature.train_teacher --out weights/miniature/teacher --steps 700 --seed 0
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import random
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from miniature.world import WEIGHTS, WORLD, Part, World, render
from stages.teacher.sam2_model import hydra_state_preserved, model_config, preprocess_frames, save_checkpoint

with hydra_state_preserved():  # sam2's training package imports sam2 (Hydra's global state)
    from training.loss_fns import MultiStepMultiMasksAndIous
    from training.model.sam2 import SAM2Train
    from training.utils.data_utils import BatchedVideoDatapoint, Frame, Object, VideoDatapoint, collate_fn

logger = logging.getLogger(__name__)

IMAGE_SIZE = 128
# sam2/configs/sam2.1_training/sam2.1_hiera_b+_MOSE_finetune.yaml, loss section
LOSS_WEIGHTS = {"loss_mask": 20.0, "loss_dice": 1.0, "loss_iou": 1.0, "loss_class": 1.0}
# the switches of the stock predictor that SAM2Base does not take (SAM2VideoPredictor's own)
_PREDICTOR_ONLY = ("_target_", "fill_hole_area", "non_overlap_masks")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 700
    batch: int = 4  # clips per step
    window: int = 8  # frames per clip per step (of the world's 17)
    clips: int = WORLD.teacher.clips  # clips of the teacher part to train on
    lr: float = 1e-3
    min_lr_ratio: float = 0.05  # cosine ends at lr * min_lr_ratio
    warmup: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    mask_prompt_p: float = 0.25  # windows prompted by the true frame-0 mask (else by a noised box)
    reverse_p: float = 0.5  # windows played backwards in time
    flip_p: float = 0.5  # windows mirrored left-right
    seed: int = 0


class BoxPromptSAM2Train(SAM2Train):
    """SAM2Train prompted by a box (or a mask) without correction clicks.

    Upstream, a point/box-prompted frame is always in `frames_to_add_correction_pt`, and
    `_iter_correct_pt_sampling` with num_correction_pt_per_frame == 0 runs its loop zero times and
    then returns the never-assigned `sam_outputs` (UnboundLocalError). With no clicks to add there
    is nothing to correct, so no frame is marked for correction.
    """

    def prepare_prompt_inputs(self, backbone_out, input, start_frame_idx=0):
        out = super().prepare_prompt_inputs(backbone_out, input, start_frame_idx)
        if self.num_correction_pt_per_frame == 0:
            out["frames_to_add_correction_pt"] = []
        return out


def build_train_model(cfg: TrainConfig) -> BoxPromptSAM2Train:
    """The tiny preset at IMAGE_SIZE as a BoxPromptSAM2Train, in train mode, seeded."""
    model_cfg = model_config("tiny", image_size=IMAGE_SIZE)
    for key in _PREDICTOR_ONLY:
        model_cfg.pop(key, None)
    torch.manual_seed(cfg.seed)
    with hydra_state_preserved():
        parts = {k: instantiate(model_cfg.pop(k), _recursive_=True) for k in ("image_encoder", "memory_attention", "memory_encoder")}
    model = BoxPromptSAM2Train(
        **parts,
        **model_cfg,
        # P(point/box input) * P(box | point input): box 1 - mask_prompt_p, else the true mask
        prob_to_use_pt_input_for_train=1.0 - cfg.mask_prompt_p,
        prob_to_use_box_input_for_train=1.0,
        num_frames_to_correct_for_train=1,
        num_init_cond_frames_for_train=1,  # frame 0 is the one prompted frame, as in the tracker
        rand_init_cond_frames_for_train=False,
        num_correction_pt_per_frame=0,
    )
    model.rng = np.random.default_rng(cfg.seed)  # upstream fixes 42; the run's seed decides
    return model.train()


@dataclass
class ClipBank:
    """The rendered clips: frames uint8 [N, F, H, W, 3], masks bool [N, F, H, W] at world size."""

    frames: np.ndarray
    masks: np.ndarray

    @classmethod
    def render(cls, part: Part, clips: int, world: World = WORLD) -> ClipBank:
        rendered = [render(part, i, world) for i in range(clips)]
        return cls(np.stack([c.frames for c in rendered]), np.stack([c.masks for c in rendered]))


def resize_masks(masks: torch.Tensor, size: int) -> torch.Tensor:
    """bool [N, H, W] -> bool [N, S, S] as Prompt.model_inputs resizes a mask prompt."""
    x = F.interpolate(masks[:, None].float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x[:, 0] >= 0.5


def make_batch(bank: ClipBank, cfg: TrainConfig, rng: np.random.Generator, step: int) -> BatchedVideoDatapoint:
    """One step's BatchedVideoDatapoint through sam2's own collate_fn: `batch` clips of the bank,
    a random `window`-frame window of each (reversed / mirrored at random), frames resized to
    IMAGE_SIZE and normalised as the tracker's input (preprocess_frames), masks resized likewise."""
    n_clips, n_frames = bank.frames.shape[:2]
    videos = []
    for b in range(cfg.batch):
        i = int(rng.integers(n_clips))
        s = int(rng.integers(n_frames - cfg.window + 1))
        frames, masks = bank.frames[i, s : s + cfg.window], bank.masks[i, s : s + cfg.window]
        if rng.random() < cfg.reverse_p:
            frames, masks = frames[::-1], masks[::-1]
        if rng.random() < cfg.flip_p:
            frames, masks = frames[:, :, ::-1], masks[:, :, ::-1]
        x = preprocess_frames(torch.from_numpy(np.ascontiguousarray(frames)), IMAGE_SIZE, torch.device("cpu"))  # [T, 3, S, S]
        m = resize_masks(torch.from_numpy(np.ascontiguousarray(masks)), IMAGE_SIZE)  # [T, S, S]
        videos.append(VideoDatapoint(
            frames=[Frame(data=x[t], objects=[Object(object_id=0, frame_index=t, segment=m[t])]) for t in range(cfg.window)],
            video_id=step * cfg.batch + b,
            size=(IMAGE_SIZE, IMAGE_SIZE),
        ))  # fmt: skip
    return collate_fn(videos, dict_key="miniature")


def make_loss() -> MultiStepMultiMasksAndIous:
    """sam2's training loss with its training config's settings."""
    return MultiStepMultiMasksAndIous(
        weight_dict=dict(LOSS_WEIGHTS),
        supervise_all_iou=True,
        iou_use_l1_loss=True,
        pred_obj_scores=True,
        focal_gamma_obj_score=0.0,
        focal_alpha_obj_score=-1.0,
    )


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup over `warmup` steps, then cosine from lr to lr * min_lr_ratio."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    low = cfg.lr * cfg.min_lr_ratio
    return low + 0.5 * (cfg.lr - low) * (1 + math.cos(math.pi * min(1.0, progress)))


@contextlib.contextmanager
def seeded_and_deterministic(seed: int) -> Iterator[None]:
    """Seed python, numpy and torch, and run torch's deterministic kernels; the caller's
    deterministic-algorithms setting is restored afterwards (a library call leaves it as found)."""
    was = torch.are_deterministic_algorithms_enabled()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)


def train_step(model, loss_fn, optimizer, batch: BatchedVideoDatapoint, grad_clip: float) -> float:
    """One optimisation step; returns sam2's core loss (the weighted sum it backpropagates)."""
    outs = model(batch)
    losses = loss_fn(outs, batch.masks)
    loss = losses["core_loss"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return float(loss.detach())


def train(cfg: TrainConfig, bank: ClipBank | None = None, log_every: int = 25, part: Part = WORLD.teacher) -> tuple[BoxPromptSAM2Train, list[float], float]:
    """Train from scratch on `part` (or `bank`); returns (model, per-step losses, training seconds without rendering)."""
    with seeded_and_deterministic(cfg.seed):
        return _train(cfg, bank if bank is not None else ClipBank.render(part, cfg.clips), log_every)


def _train(cfg: TrainConfig, bank: ClipBank, log_every: int) -> tuple[BoxPromptSAM2Train, list[float], float]:
    model = build_train_model(cfg)
    loss_fn = make_loss()
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim > 1 and "pos_embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and (p.ndim <= 1 or "pos_embed" in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
    rng = np.random.default_rng(cfg.seed)
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        losses.append(train_step(model, loss_fn, optimizer, make_batch(bank, cfg, rng, step), cfg.grad_clip))
        if log_every and (step % log_every == 0 or step == cfg.steps - 1):
            recent = losses[-log_every:]
            logger.info("step %d/%d loss %.3f (mean of last %d: %.3f) lr %.2e %.0f s", step + 1, cfg.steps,
                        losses[-1], len(recent), float(np.mean(recent)), lr_at(step, cfg), time.perf_counter() - t0)  # fmt: skip
    return model.eval(), losses, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=WEIGHTS / "teacher")
    p.add_argument("--steps", type=int, default=TrainConfig.steps)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=TrainConfig.batch)
    p.add_argument("--window", type=int, default=TrainConfig.window)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--clips", type=int, default=TrainConfig.clips, help="teacher-part clips to render and train on")
    p.add_argument("--probe-clips", type=int, default=None, help="probe-part clips to score (default: all)")
    p.add_argument("--part", choices=("teacher", "judge"), default="teacher",
                   help="teacher: the distillation teacher; judge: a second tiny SAM2 (another seed, the judge part's "
                        "clips) that scores evaluate's samples independently of the teacher; names the files")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run: 3 steps, batch 2, 3-frame windows, 1 clip, 1 probe clip")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.smoke:
        args.steps, args.batch, args.window, args.clips, args.probe_clips = 3, 2, 3, 1, 1
    cfg = TrainConfig(steps=args.steps, batch=args.batch, window=args.window, clips=args.clips, lr=args.lr, seed=args.seed,
                      warmup=min(TrainConfig.warmup, max(1, args.steps // 10)))  # fmt: skip
    t0 = time.perf_counter()
    part = getattr(WORLD, args.part)
    model, losses, train_s = train(cfg, part=part)
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.out / f"{args.part}.pt"
    save_checkpoint(model, str(checkpoint))

    from miniature.teacher_probe import probe  # after training: the probe builds its own models

    trained = probe(str(checkpoint), clips=args.probe_clips)
    random_weights = probe(None, clips=args.probe_clips, seed=args.seed)
    record = {
        "command": "python -m miniature.train_teacher " + shlex.join(sys.argv[1:] if argv is None else argv),
        "model": "tiny",
        "image_size": IMAGE_SIZE,
        "seed": args.seed,
        "steps": cfg.steps,
        "config": asdict(cfg),
        "loss_weights": LOSS_WEIGHTS,
        "train_part": asdict(part) | {"clips_used": cfg.clips},
        "probe_part": asdict(WORLD.probe),
        "losses": [round(v, 4) for v in losses],
        "loss_first": losses[0],
        "loss_last_mean_25": float(np.mean(losses[-25:])),
        "train_seconds": train_s,
        "total_seconds": time.perf_counter() - t0,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "jf": {"trained": trained.to_record(), "random": random_weights.to_record()},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),  # intra-op threads (OMP_NUM_THREADS): float sums may differ with another count
    }
    (args.out / f"{args.part}.json").write_text(json.dumps(record, indent=1) + "\n")
    logger.info("wrote %s: J&F trained fwd %.3f bwd %.3f, random fwd %.3f bwd %.3f", checkpoint,
                trained.forward.jf, trained.backward.jf, random_weights.forward.jf, random_weights.backward.jf)  # fmt: skip
    return record


if __name__ == "__main__":
    main()
