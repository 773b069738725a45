"""Stage two: fine-tune CogVideoX on the store with L_diff + the scheduled feature losses.

One transformer forward per micro-batch; block L's tokens are tapped during it, projected to SAM2
space, and scored against the teacher. DDP over torchrun (gloo on CPU, NCCL on GPUs). Every random
draw of a step comes from a generator seeded by (seed, step, micro-batch, rank), and the stream's
position is saved with the weights, so `--resume` continues the exact trajectory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from pipeline.config import to_dict
from pipeline.distill_config import DistillConfig, LossesConfig
from pipeline.stream import StreamPosition
from stages.distill.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from stages.distill.data import check_fit, open_training_data
from stages.distill.losses import diffusion_loss_from_output, feature_losses, prepare_diffusion_inputs
from stages.distill.projector import Projector, ProjectorSpec
from stages.devices import resolve_device, resolve_dtype
from stages.distill.student import configure_student, load_student, rotary_embedding
from stages.distill.tap import FeatureTap

log = logging.getLogger(__name__)


@dataclass
class StepMetrics:
    step: int  # optimiser steps done after this one
    loss: float
    terms: dict[str, float]  # "diff", "lgf", "repa", "mask": unweighted values
    weights: dict[str, float]
    lr: float
    grad_norm: float
    seconds: float  # wall time of the step
    data_seconds: float  # of which waiting for batches
    epoch: int
    clips: list[str] = field(default_factory=list)  # keys this rank trained on in this step

    def to_json(self) -> dict:
        return self.__dict__.copy()


class DistillModel(nn.Module):
    """Transformer + projector in one module, so DDP sees every trainable parameter in one forward."""

    def __init__(self, transformer: nn.Module, projector: Projector | None, tap_block: int):
        super().__init__()
        self.transformer, self.projector = transformer, projector
        self.tap = FeatureTap(transformer, tap_block) if projector is not None else None

    def forward(self, model_kwargs: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(v prediction [B, T, C, h, w], tapped block-L tokens [B, T, h, w, D] or None)."""
        out = self.transformer(**model_kwargs)[0]
        return out, (self.tap.pop() if self.tap is not None else None)


def step_seed(*parts) -> int:
    """A 63-bit seed from any parts (seed, step, micro-batch, rank): the same draws on resume."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") & ((1 << 63) - 1)


@dataclass
class LossContext:
    """What a micro-batch's loss needs besides the batch; fixed for a run."""

    transformer_config: Any
    scheduler: Any
    losses: LossesConfig
    task: str
    scaling_factor: float
    timesteps: int
    image_dropout: float
    caption_dropout: float
    empty_prompt: torch.Tensor | None  # [L, D_text], for caption dropout
    rotary: Any  # (cos, sin) of the latent grid, or None
    column_lgf: dict | None  # the LGF settings the stored target was fused with
    dtype: torch.dtype  # of the model inputs
    device: torch.device
    autocast_dtype: torch.dtype | None  # CUDA autocast (None: off)
    projector: Projector | None


def distill_loss(ctx: LossContext, forward: Callable[[dict], tuple], batch: dict, generator: torch.Generator, step: int):
    """(total on the graph, unweighted terms, their weights) of one micro-batch: L_diff + sum_i w_i(step) L_i.

    forward: a DistillModel (or its DDP wrapper): model kwargs -> (v prediction, tapped features).
    """
    batch = {k: (v.to(ctx.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
    inputs = prepare_diffusion_inputs(
        ctx.transformer_config, ctx.scheduler, batch["latents"], batch["prompt_embeds"], ctx.scaling_factor, generator,
        task=ctx.task, image_latents=batch.get("image_latents"), timesteps=ctx.timesteps,
        image_dropout=ctx.image_dropout, empty_prompt_embeds=ctx.empty_prompt,
        caption_dropout=ctx.caption_dropout, rotary=ctx.rotary, dtype=ctx.dtype,
    )
    autocast = torch.autocast("cuda", dtype=ctx.autocast_dtype) if ctx.autocast_dtype else contextlib.nullcontext()
    with autocast:
        output, features = forward(inputs.model_kwargs)
    l_diff, _ = diffusion_loss_from_output(ctx.scheduler, output, inputs)
    total, terms = l_diff, {"diff": l_diff.item()}
    weights: dict[str, float] = {}
    if ctx.projector is not None:
        feats = feature_losses(ctx.losses, step, ctx.projector, features, batch, ctx.column_lgf)
        # Scheduled-off terms leave projector weights out of the graph; DDP's reducer needs every
        # trainable parameter in every backward, so they join with a zero weight.
        touch = sum(p.sum() for p in ctx.projector.parameters()) * 0.0
        total = total + feats.total + touch
        terms.update({k: v.item() for k, v in feats.terms.items()})
        weights = feats.weights
    return total, terms, weights


def lr_lambda(cfg: DistillConfig) -> Callable[[int], float]:
    o, total = cfg.optim, cfg.train.steps

    def f(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / (o.warmup_steps + 1)
        if o.schedule == "constant":
            return 1.0
        progress = (step - o.warmup_steps) / max(1, total - o.warmup_steps)
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return f


def init_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device) for this process; joins the torchrun group when there is one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    cuda = device.type == "cuda"
    if cuda and device.index is None:
        device = torch.device("cuda", local)  # one GPU per torchrun process
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return (dist.get_rank() if world > 1 else 0), world, device


class Trainer:
    def __init__(self, cfg: DistillConfig, resume: bool = False, on_step: Callable[[StepMetrics], None] | None = None):
        self.cfg, self.on_step = cfg, on_step
        self.rank, self.world, self.device = init_distributed(cfg.student.device)
        self.out = Path(cfg.out)
        self.data = open_training_data(cfg)
        dtype = resolve_dtype(cfg.student.dtype, self.device)
        transformer, self.scheduler = load_student(cfg.student.model, cfg.student.task, dtype, self.device)
        self.grid = check_fit(self.data, transformer.config, cfg)  # before anything is trained
        self.tconfig = transformer.config
        # peft draws LoRA A from the global RNG: seed it, on every device the model may be on, inside a fork
        with torch.random.fork_rng(devices=[self.device.index or 0] if self.device.type == "cuda" else []):
            torch.manual_seed(step_seed(cfg.train.seed, "init"))
            params = configure_student(transformer, cfg.student)
        projector = self._build_projector(transformer) if cfg.losses.needs_projector else None
        self.model = DistillModel(transformer, projector, cfg.tap.block).to(self.device)
        self.optimizer = self._build_optimizer(params, projector)
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg))
        self.ddp = self._wrap_ddp()
        self.stream = self.data.stream(cfg.train.batch_size, cfg.train.seed, cfg.data.shuffle_buffer, cfg.data.num_workers)
        self.empty_prompt = self._empty_prompt()
        lat = self.data.encodings.schema["latents"].shape
        self.rotary = rotary_embedding(self.tconfig, lat[1], lat[2], lat[3], self.device)
        self.loss_context = self._loss_context()
        self.step, self.position = 0, StreamPosition()
        if resume:
            self._resume()

    # -- construction ------------------------------------------------------------------
    def _build_projector(self, transformer) -> Projector:
        c = self.cfg
        width = transformer.config.num_attention_heads * transformer.config.attention_head_dim
        out = c.projector.out_channels or self.data.teacher_channels
        spec = ProjectorSpec(width, out, c.projector.hidden, c.projector.layers, mask_head=c.losses.mask.weight > 0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(step_seed(c.train.seed, "projector"))  # the same init on every rank
            return Projector(spec)

    def _build_optimizer(self, params, projector) -> torch.optim.Optimizer:
        o = self.cfg.optim
        groups = [{"params": params, "lr": o.lr}]
        if projector is not None:
            groups.append({"params": list(projector.parameters()), "lr": o.projector_lr or o.lr})
        return torch.optim.AdamW(groups, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps)

    def _wrap_ddp(self) -> nn.Module:
        if self.world == 1:
            return self.model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    def _empty_prompt(self) -> torch.Tensor | None:
        extra = self.data.encodings.column_arrays()
        if "empty_prompt_embeds" not in extra:
            if self.cfg.train.caption_dropout > 0:
                raise ValueError(f"caption_dropout needs the empty-prompt embedding, missing from {self.data.encodings.dirname}")
            return None
        return torch.from_numpy(extra["empty_prompt_embeds"]).to(self.device)

    def _loss_context(self) -> LossContext:
        c, mp = self.cfg, self.cfg.optim.mixed_precision
        autocast = None if self.device.type != "cuda" or mp == "no" else (torch.bfloat16 if mp == "bf16" else torch.float16)
        return LossContext(
            self.tconfig, self.scheduler, c.losses, c.student.task, self.data.scaling_factor, c.diffusion.timesteps,
            c.diffusion.image_dropout, c.train.caption_dropout, self.empty_prompt, self.rotary, self.data.column_lgf,
            self.model.transformer.dtype, self.device, autocast, self.model.projector,
        )

    def _trainables(self) -> dict[str, nn.Module]:
        mods = {"transformer": self.model.transformer}
        if self.model.projector is not None:
            mods["projector"] = self.model.projector
        return mods

    # -- training ------------------------------------------------------------------------
    def batches(self) -> Iterator[tuple[dict, float]]:
        """(batch, seconds waited) forever, epoch after epoch, tracking the stream position."""
        while True:
            it = self.stream.epoch(self.position)
            while True:
                start = time.perf_counter()
                batch = next(it, None)
                if batch is None:
                    break
                self.position = StreamPosition(self.position.epoch, self.position.batch + 1)
                yield batch, time.perf_counter() - start
            self.position = StreamPosition(self.position.epoch + 1, 0)

    def run(self, stop_at: int | None = None) -> list[StepMetrics]:
        """Train to `train.steps` (or stop, with a checkpoint, after step `stop_at`)."""
        history: list[StepMetrics] = []
        source = self.batches()
        self.model.train()
        last = min(self.cfg.train.steps, stop_at or self.cfg.train.steps)
        while self.step < last:
            metrics = self.train_step(source)
            history.append(metrics)
            self._log_rank(metrics)
            if self.rank == 0:
                self._log(metrics)
            if self.on_step is not None:
                self.on_step(metrics)
            if self.step % self.cfg.train.checkpoint_every == 0 or self.step == last:
                self.save()
        return history

    def finish(self) -> Path | None:
        """Rank 0: export the LoRA (+ projector) for the stock diffusers pipelines and draw the loss curve."""
        if self.rank != 0:
            return None
        from stages.distill.curves import plot_loss_curve
        from stages.distill.export import export_lora

        info = {"step": self.step, "config": to_dict(self.cfg), "teacher_column": self.data.teacher.dirname if self.data.teacher else None,
                "encodings_column": self.data.encodings.dirname, "store": self.data.store.url}
        out = self.out / "lora"
        if self.cfg.student.full_finetune:
            self.model.transformer.save_pretrained(self.out / "transformer")
            out = self.out / "transformer"
        else:
            export_lora(self.model.transformer, out, self.model.projector, info)
        plot_loss_curve(self.out / "metrics.jsonl", self.out / "loss_curve.png")
        return out

    def train_step(self, source: Iterator[tuple[dict, float]]) -> StepMetrics:
        cfg, started, waited = self.cfg, time.perf_counter(), 0.0
        accum = cfg.optim.accumulation
        sums: dict[str, float] = {}
        weights: dict[str, float] = {}
        keys: list[str] = []
        epoch = self.position.epoch
        self.optimizer.zero_grad(set_to_none=True)
        for micro in range(accum):
            batch, wait = next(source)
            waited += wait
            keys += batch["keys"]
            sync = micro == accum - 1 or self.world == 1
            ctx = contextlib.nullcontext() if sync else self.ddp.no_sync()
            with ctx:
                total, terms, weights = self._loss(batch, micro)
                (total / accum).backward()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v / accum
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip is not None else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        self.optimizer.step()
        self.lr_schedule.step()
        self.step += 1
        loss = sums["diff"] + sum(weights.get(k, 0.0) * v for k, v in sums.items() if k != "diff")
        lr = self.optimizer.param_groups[0]["lr"]
        return StepMetrics(self.step, loss, sums, weights, lr, grad_norm, time.perf_counter() - started, waited, epoch, keys)

    def _loss(self, batch: dict, micro: int) -> tuple[torch.Tensor, dict[str, float], dict[str, float]]:
        gen = torch.Generator(device="cpu").manual_seed(step_seed(self.cfg.train.seed, self.step, micro, self.rank))
        return distill_loss(self.loss_context, self.ddp, batch, gen, self.step)

    # -- persistence ---------------------------------------------------------------------
    def save(self) -> None:
        if self.rank == 0:
            extra = {"position": self.position.to_json(), "config": to_dict(self.cfg), "world_size": self.world}
            save_checkpoint(self.out, self.step, self._trainables(), self.optimizer, self.lr_schedule, extra, self.cfg.train.keep_last)
        if self.world > 1:
            dist.barrier()

    def _resume(self) -> None:
        found = list_checkpoints(self.out)
        if not found:
            log.info("no checkpoint in %s: starting from step 0", self.out)
            return
        state = load_checkpoint(found[-1], self._trainables(), self.optimizer, self.lr_schedule)
        self.step = state["step"]
        self.position = StreamPosition(**state["position"])
        _truncate_metrics(self.out / "ranks" / f"rank-{self.rank}.jsonl", self.step)
        if self.rank == 0:
            _truncate_metrics(self.out / "metrics.jsonl", self.step)
        log.info("resumed from %s at step %d, stream position %s", found[-1], self.step, state["position"])

    def _log_rank(self, m: StepMetrics) -> None:
        """Every rank: which clips it trained on at each step (for audits of the data split)."""
        path = self.out / "ranks" / f"rank-{self.rank}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps({"step": m.step, "epoch": m.epoch, "clips": m.clips}) + "\n")

    def _log(self, m: StepMetrics) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps({k: v for k, v in m.to_json().items() if k != "clips"}) + "\n")
        if self.step % self.cfg.train.log_every == 0 or self.step == self.cfg.train.steps:
            writer = self._writer()
            writer.add_scalar("loss/total", m.loss, m.step)
            for k, v in m.terms.items():
                writer.add_scalar(f"loss/{k}", v, m.step)
            writer.add_scalar("lr", m.lr, m.step)
            writer.add_scalar("grad_norm", m.grad_norm, m.step)
            writer.add_scalar("time/data_wait_share", m.data_seconds / max(m.seconds, 1e-9), m.step)
            writer.flush()

    def _writer(self):
        if not hasattr(self, "_tb"):
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.out / "tensorboard"))
        return self._tb

    def close(self) -> None:
        if hasattr(self, "_tb"):
            self._tb.close()
        if self.model.tap is not None:
            self.model.tap.remove()


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop logged steps after the checkpoint being resumed (they will be trained again)."""
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in lines))
