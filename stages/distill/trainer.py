"""Stage two: fine-tune CogVideoX on the store with L_diff + the scheduled feature losses.

One transformer forward per micro-batch; block L's tokens are tapped during it, projected to SAM2
space, and scored against the teacher. DDP or FSDP2 over torchrun (gloo on CPU, NCCL on GPUs; see
stages/distill/parallel.py). Trainable parameters are fp32 masters in every strategy. Every random
draw of a step comes from a generator seeded by (seed, step, global micro-batch), where the global
micro-batch is rank * accumulation + micro: two ranks draw what one rank accumulating two draws (the
data-parallel rank under parallel.context: the ranks of a context group read and draw alike).
Every rank's stream position is saved with the weights (state.json "positions", by rank), so
`--resume` continues the exact trajectory on each rank.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from safetensors import SafetensorError
from torch import nn

from stages.config.loader import to_dict
from stages.config.secrets import redact
from stages.config.distill import DistillConfig, LossesConfig
from stages.distill.stream import StreamPosition
from stages.distill import parallel
from stages.distill.checkpoint.local import list_checkpoints, load_checkpoint, remove_stale_temp, save_checkpoint
from stages.distill.cutoff import AgreementCutoff
from stages.distill.ema import EMA, FILE as EMA_FILE
from stages.distill.recompute import apply_checkpointing
from stages.distill.data import check_fit, largest_latent_shape, open_training_data
from stages.distill.teacher_filter import filtered_keys, quality_column
from stages.distill.losses import feature_losses
from stages.distill.projector import Projector, ProjectorSpec
from stages.core.compiling import block_compile_targets, compile_modules
from stages.core.devices import resolve_device, resolve_dtype
from stages.distill.fp8 import check_fp8, convert_fp8
from stages.families.base import Student
from stages.families.lora import configure_student
from stages.families.registry import student_for, student_of
from stages.distill.tap import FeatureTap

log = logging.getLogger(__name__)


@dataclass
class StepMetrics:
    step: int  # optimiser steps done after this one
    loss: float
    terms: dict[str, float]  # "diff", "lgf", "repa", "mask": unweighted values
    weights: dict[str, float]
    lr: float
    grad_norm: float  # of the student's trainable weights (LoRA or all), before clipping
    seconds: float  # wall time of the step
    data_seconds: float  # of which waiting for batches
    epoch: int
    clips: list[str] = field(default_factory=list)  # keys this rank trained on in this step
    grad_norms: dict[str, float] = field(default_factory=dict)  # per parameter group ("student", "projector")

    def to_json(self) -> dict:
        return self.__dict__.copy()


class DistillModel(nn.Module):
    """Transformer + projector in one module, so DDP sees every trainable parameter in one forward."""

    def __init__(self, transformer: nn.Module, projector: Projector | None, tap_block: int, student: Student | None = None):
        super().__init__()
        self.transformer, self.projector = transformer, projector
        self.tap = FeatureTap(transformer, tap_block, student) if projector is not None else None

    def forward(self, model_kwargs: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(prediction in the family's layout (CogVideoX: v [B, T, C, h, w]), tapped block-L tokens [B, T, h, w, D] or None)."""
        out = self.transformer(**model_kwargs)[0]
        features = self.tap.pop() if self.tap is not None else None
        return _owned(out), (_owned(features) if features is not None else None)


def _owned(t: torch.Tensor) -> torch.Tensor:
    """`t`, or a copy of it when it is a view (the families' outputs are reshapes / permutes of the last
    projection; the tap's [B, T, h, w, D] is a reshape of the block's [B, N, D]).

    Under FSDP2 this module is the root, whose backward hook sits on the tensors forward returns; an in-place
    op on a returned view would rebase its graph and silently drop that hook (FSDP2 warns so). A copy has its
    own graph node. It costs one output-sized and one feature-sized copy per step (CogVideoX-5B at 49x480x720:
    ~0.1 GB against a ~20 GB step), so it is done on every strategy rather than asking which one wraps us."""
    return t.clone() if t._base is not None else t


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
    # DDP's reducer needs every trainable parameter in every backward; FSDP's hooks do not (False there)
    touch_unused: bool = True
    image_scale: float | None = None  # image latents' factor: None = scaling_factor; 1 / it for CogVideoX 1.5
    student: Student | None = None  # the family (training objective); None = the one of transformer_config's class
    latents_mean: torch.Tensor | None = None  # [C] per-channel latent normalisation (Wan VAE), else None
    latents_std: torch.Tensor | None = None
    lgf_scale: float = 1.0  # multiplies losses.lgf.weight: the agreement cutoff's (stages/distill/cutoff.py), 1 when off
    # the latent grid (T, H8, W8) `rotary` was computed for; a batch of another grid (a mixed-size store's other
    # bucket) gets its own, computed once per grid (for_batch)
    rotary_shape: tuple | None = None
    rotary_cache: dict = field(default_factory=dict)

    def for_batch(self, batch: dict) -> "LossContext":
        """This context for one batch: the positional embedding of the batch's own latent grid (a mixed-size
        store's buckets: each computed once); itself when the run's embedding fits or the family computes its
        own inside the model (rotary None)."""
        latents = batch.get("latents")
        if self.rotary is None or latents is None or self.rotary_shape is None:
            return self
        shape = tuple(int(s) for s in latents.shape[-3:])
        if shape == tuple(self.rotary_shape):
            return self
        if shape not in self.rotary_cache:
            student = self.student or student_of(self.transformer_config)
            self.rotary_cache[shape] = student.rotary(self.transformer_config, shape, self.device)
        return dataclasses.replace(self, rotary=self.rotary_cache[shape], rotary_shape=shape)


def distill_loss(ctx: LossContext, forward: Callable[[dict], tuple], batch: dict, generator: torch.Generator, step: int):
    """(total on the graph, unweighted terms, their weights) of one micro-batch: L_diff + sum_i w_i(step) L_i.

    forward: a DistillModel (or its DDP wrapper): model kwargs -> (v prediction, tapped features).
    """
    batch = {k: (v.to(ctx.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
    ctx = ctx.for_batch(batch)  # a mixed-size store: this batch's grid
    student = ctx.student or student_of(ctx.transformer_config)  # None: the family of the transformer's class
    inputs = student.prepare_inputs(ctx, batch, generator)
    autocast = torch.autocast("cuda", dtype=ctx.autocast_dtype) if ctx.autocast_dtype else contextlib.nullcontext()
    with autocast:
        output, features = forward(inputs.model_kwargs)
    l_diff, _ = student.loss_from_output(ctx, output, inputs)
    total, terms = l_diff, {"diff": l_diff.item()}
    weights: dict[str, float] = {}
    if ctx.projector is not None:
        feats = feature_losses(ctx.losses, step, ctx.projector, features, batch, ctx.column_lgf, ctx.lgf_scale)
        total = total + feats.total
        if ctx.touch_unused:
            # Scheduled-off terms leave projector weights out of the graph; DDP's reducer needs every
            # trainable parameter in every backward, so they join with a zero weight.
            total = total + sum(p.sum() for p in ctx.projector.parameters()) * 0.0
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
        self.student = student_for(cfg.student.model, cfg.student.family)  # first: an unregistered family fails in one line
        if cfg.student.fp8:
            check_fp8(self.device)  # before the store opens: a CPU or pre-Ada GPU is refused in one line
        self.student.check_context_parallel(cfg.parallel.context)  # a family without a plan refuses in one line
        # parallel.context: groups of that many consecutive ranks share one batch (the data-parallel rank reads it)
        self.dp_rank, self.dp_world = parallel.data_rank(self.rank, self.world, cfg.parallel.context)
        self.context_mesh = parallel.context_mesh(self.world, cfg.parallel.context, self.device) if cfg.parallel.context > 1 else None
        self.out = Path(cfg.out)
        self.data = open_training_data(cfg)
        # decided from the store alone: every rank excludes the same clips (before the model loads: a
        # filter that drops every clip fails fast); other exclusions are unioned with its keys below
        self.filter = filtered_keys(cfg.data.filter, quality_column(self.data.store, self.data.teacher), self.data.store.url)
        if self.rank == 0:
            log.info("%s", self.filter.line())
        self._check_precision()
        self.checkpointing = self._plan_checkpointing()  # "auto" resolved by the memory plan; refuses a run that cannot fit
        dtype = resolve_dtype(cfg.student.dtype, self.device)
        transformer, self.scheduler = self.student.load(cfg.student.model, cfg.student.task, dtype, self.device)
        self.grid = check_fit(self.data, transformer.config, cfg, self.student)  # before anything is trained
        self.tconfig = transformer.config
        # peft draws LoRA A from the global RNG: seed it, on every device the model may be on, inside a fork
        with torch.random.fork_rng(devices=[self.device.index or 0] if self.device.type == "cuda" else []):
            torch.manual_seed(step_seed(cfg.train.seed, "init"))
            configure_student(transformer, cfg.student, self.student.set_attention)
        # The order of the speed switches (each acts on the same block objects, in place):
        #   1. LoRA (above): peft wraps the target linears (to_q -> to_q.base_layer + lora_A/lora_B)
        #   2. student.fp8: the frozen base linears (all block linears for a full fine-tune) become Float8Linear;
        #      after LoRA so the filter can leave the adapters alone, before FSDP2 so it shards Float8Linear weights
        #   2b. parallel.context: diffusers' enable_parallelism hooks per the transformer's _cp_plan (split and gather)
        #   3. checkpointing: the transformer's checkpoint function wraps the chosen blocks' __call__
        #   4. the tap's forward hook on block L (DistillModel)
        #   5. parallel.wrap: FSDP2 fully_shard per block, in place (same block objects, class swapped, hooks added)
        #   6. student.compile: nn.Module.compile on each of those blocks, in place and last, so the compiled block
        #      is the FSDP2 unit (dynamo skips FSDP2's hooks: they run eagerly around the graph), the checkpoint
        #      function wraps the compiled call, and the tap's hook runs eagerly (torch.compiler.disable)
        if cfg.student.fp8:
            convert_fp8(transformer, self.student.blocks(transformer), cfg.student.full_finetune)
            if not cfg.student.compile.enabled:
                log.warning("student.fp8 without student.compile: torchao's casts run unfused and frozen weights get a weight "
                            "gradient computed anyway (see stages/distill/fp8.py); set student.compile.enabled=true")
        if self.context_mesh is not None:  # after the attention backend is chosen: diffusers checks it supports the split
            self.student.enable_context_parallel(transformer, self.context_mesh, self.grid[0] * self.grid[1] * self.grid[2])
        apply_checkpointing(transformer, self.student.blocks(transformer), self.checkpointing)
        self.input_dtype = transformer.dtype  # of the model inputs: the base dtype (fp32 for a full fine-tune)
        projector = self._build_projector(transformer) if cfg.losses.needs_projector else None
        self.model = DistillModel(transformer, projector, cfg.tap.block, self.student).to(self.device)
        p = cfg.parallel
        # FSDP replaces the parameters by sharded ones: wrap first, then give the optimizer what it made
        self.ddp = parallel.wrap(self.model, p.strategy, self.world, self.device, self._autocast_dtype(), p.shard_size, p.reshard_after_forward,
                                 self.context_mesh)
        self.sharded = parallel.is_sharded(self.ddp)
        c = cfg.student.compile
        if c.enabled:  # regional: every block, compiled on first use (see the order above)
            compile_modules("student", block_compile_targets(self.student.blocks(self.model.transformer), c.kwargs()), self.device, cpu=True)
        self.optimizer = self._build_optimizer()
        # after wrapping: under FSDP the shadow clones the sharded masters (DTensors), sharded like them
        self.ema = EMA(self.model.transformer, cfg.train.ema.decay) if cfg.train.ema.decay else None
        self.cutoff = AgreementCutoff.from_config(cfg.losses.lgf.cutoff)
        if self.cutoff is not None and cfg.losses.lgf.weight == 0:
            raise ValueError("losses.lgf.cutoff.patience > 0 but losses.lgf.weight is 0: there is no LGF loss to cut")
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg))
        fp16 = self._autocast_dtype() == torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)  # bf16 has fp32's range: no scaling
        self.holdout = self._held_out(resume)  # never trained on: left out of the stream (and of its batch count)
        exclude = set(self.filter.keys) | set(self.holdout.keys)  # filtered and held-out clips
        self.stream = self.data.stream(cfg.train.batch_size, cfg.train.seed, cfg.data.shuffle_buffer, cfg.data.num_workers, cfg.data.on_corrupt, exclude,
                                       cfg.data.allow_partial_columns, (self.dp_rank, self.dp_world))
        self.empty_prompt = self._empty_prompt()
        lat = self.data.encodings.schema["latents"].shape
        self.rotary = self.student.rotary(self.tconfig, lat[1:], self.device)
        self.loss_context = self._loss_context()
        self.validator = self._validator() if cfg.eval.every > 0 or cfg.eval.sample_every > 0 else None
        self.step, self.position = 0, StreamPosition()
        if self.rank == 0:
            remove_stale_temp(self.out)
        if resume:
            self._resume()
        self._write_holdout()  # only now: a refused run (resume, memory, fit) leaves the old split alone

    # -- construction ------------------------------------------------------------------
    def _build_projector(self, transformer) -> Projector:
        c = self.cfg
        width = transformer.config.num_attention_heads * transformer.config.attention_head_dim
        out = c.projector.out_channels or self.data.teacher_channels
        spec = ProjectorSpec(width, out, c.projector.hidden, c.projector.layers, mask_head=c.losses.mask.weight > 0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(step_seed(c.train.seed, "projector"))  # the same init on every rank
            return Projector(spec)

    def _build_optimizer(self) -> torch.optim.Optimizer:
        """AdamW over two named groups, "student" (LoRA or all weights) and "projector", each clipped apart."""
        o = self.cfg.optim
        student = [p for p in self.model.transformer.parameters() if p.requires_grad]
        groups = [{"params": student, "lr": o.lr, "name": "student"}]
        if self.model.projector is not None:
            groups.append({"params": list(self.model.projector.parameters()), "lr": o.projector_lr or o.lr, "name": "projector"})
        return torch.optim.AdamW(groups, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps)

    def _autocast_dtype(self) -> torch.dtype | None:
        """CUDA autocast dtype (also FSDP's all-gather dtype); None on CPU or with mixed_precision=no."""
        mp = self.cfg.optim.mixed_precision
        if self.device.type != "cuda" or mp == "no":
            return None
        return torch.bfloat16 if mp == "bf16" else torch.float16

    def _check_precision(self) -> None:
        if self.cfg.optim.mixed_precision == "fp16" and self.cfg.parallel.sharded and self.device.type == "cuda":
            raise ValueError(
                "optim.mixed_precision=fp16 with parallel.strategy=fsdp/hsdp is not supported (no sharded loss "
                "scaler): use optim.mixed_precision=bf16"
            )

    def _plan_checkpointing(self) -> str:
        """The run's student.checkpointing, "auto" resolved; before the model loads (see memory_plan.py).

        On a GPU with parallel.memory_check, a run whose plan does not fit is refused. "auto" takes the plan's
        fastest choice that fits parallel.gpu_memory_gb, else the GPU; on a CPU without gpu_memory_gb, "all"."""
        p, spec = self.cfg.parallel, self.cfg.student.checkpointing_spec
        cuda = self.device.type == "cuda"
        check = cuda and p.memory_check
        if not check and spec != "auto":
            return spec
        capacity = p.gpu_memory_gb * 2**30 if p.gpu_memory_gb else (torch.cuda.get_device_properties(self.device).total_memory if cuda else None)
        if capacity is None:
            log.info("student.checkpointing=auto on %s without parallel.gpu_memory_gb: every block checkpointed", self.device)
            return "all"
        from stages.distill.memory_plan import MemoryPlanError, plan_memory

        lat = largest_latent_shape(self.data)  # (T, H8, W8); a mixed-size store: its largest bucket
        text = self.data.encodings.schema["prompt_embeds"].shape[0]
        plan = plan_memory(self.cfg, self.world, latent_shape=lat, text_len=text,
                           teacher_channels=self.data.teacher_channels or 256, capacity=int(capacity))
        if spec == "auto":
            log.info("student.checkpointing=auto: %s (%d of %d blocks recompute), planned %.1f GiB of %.1f GiB per GPU",
                     plan.checkpointing, plan.checkpointed, plan.blocks, plan.total / 2**30, capacity / 2**30)
        if check and plan.total > capacity:
            raise MemoryPlanError(plan.refusal(capacity))
        if check:
            log.info("memory plan: %.1f GiB of %.1f GiB per GPU", plan.total / 2**30, capacity / 2**30)
        return plan.checkpointing

    def _held_out(self, resume: bool):
        """The run's held-out split (stages/store/holdout.py), written to <out>/holdout.json for `evaluate`.

        A resume keeps the split in <out>/holdout.json (clips appended to the store since join training,
        copies of held-out clips excepted); HoldoutError when it cannot be kept."""
        from stages.store.holdout import make_holdout, resume_split

        clips = self.data.store.require_snapshot().clips  # rows: content hash, url, source_id group copies
        d = self.cfg.data
        split = resume_split(self.out, clips, d.holdout, d.holdout_keys) if resume else make_holdout(clips, d.holdout, d.holdout_keys)
        log.info("held out %d of %d clips (data.holdout=%g, %d explicit)", len(split.keys), split.total, split.fraction, len(split.explicit))
        return split

    def _write_holdout(self) -> None:
        """<out>/holdout.json for `evaluate`, once every refusal check has passed."""
        from stages.store.holdout import write_holdout

        self.stream.batches_per_epoch(self.position.epoch)  # refuses a batch no rank can fill, before anything is written
        if self.rank == 0:
            write_holdout(self.out, self.holdout)

    def _validator(self):
        from stages.distill.validation import Validator

        # a held-out clip the teacher filter drops is not validated on either (its teacher target is what was judged bad)
        keys = sorted(set(self.holdout.keys) - set(self.filter.keys))
        return Validator(self.cfg, self.data, keys, self.loss_context, self.ddp, self.model, self.rank, self.out)

    def _empty_prompt(self) -> torch.Tensor | None:
        extra = self.data.encodings.column_arrays()
        if "empty_prompt_embeds" not in extra:
            if self.cfg.train.caption_dropout > 0:
                raise ValueError(f"caption_dropout needs the empty-prompt embedding, missing from {self.data.encodings.dirname}")
            return None
        return torch.from_numpy(extra["empty_prompt_embeds"]).to(self.device)

    def _loss_context(self) -> LossContext:
        c = self.cfg
        return LossContext(
            self.tconfig, self.scheduler, c.losses, c.student.task, self.data.scaling_factor, c.diffusion.timesteps,
            c.diffusion.image_dropout, c.train.caption_dropout, self.empty_prompt, self.rotary, self.data.column_lgf,
            self.input_dtype, self.device, self._autocast_dtype(), self.model.projector,
            touch_unused=not self.sharded, image_scale=self.data.image_scale, student=self.student,
            latents_mean=_vector(self.data.encodings.attrs.get("latents_mean"), self.device),
            latents_std=_vector(self.data.encodings.attrs.get("latents_std"), self.device),
            rotary_shape=tuple(self.data.encodings.schema["latents"].shape[1:]),
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
            if self.validator is not None:  # held-out validation and samples, when due
                self.validator.after_step(self.step, self._writer() if self.rank == 0 else None, self._agreement)
            if self.step % self.cfg.train.checkpoint_every == 0 or self.step == last:
                self.save()
        if self.stream.skipped:
            log.warning("left out %d damaged clip read(s) (data.on_corrupt=skip); `sam2videox inspect STORE --verify` lists them", self.stream.skipped)
        return history

    def finish(self) -> Path | None:
        """Export for the stock diffusers pipelines and draw the loss curve (rank 0 writes; returns its path).

        LoRA runs: the adapter (+ projector) as `load_lora_weights` reads it. Full fine-tunes: a diffusers
        transformer folder in the student dtype. Sharded runs gather the fp32 masters on rank 0 first
        (a collective: every rank calls finish).
        """
        gathered = None
        if self.sharded:
            from stages.distill.checkpoint.sharded import gather_full_state

            gathered = gather_full_state(self.ddp, frozen=self.cfg.student.full_finetune)
        ema = self.ema.full_state() if self.ema is not None else None  # a collective too under FSDP
        if self.rank != 0:
            return None
        from stages.distill.curves import plot_loss_curve

        info = {"step": self.step, "config": redact(to_dict(self.cfg)), "teacher_column": self.data.teacher.dirname if self.data.teacher else None,
                "encodings_column": self.data.encodings.dirname, "store": self.data.store.url}
        out = self._export(gathered, info)
        if ema is not None:
            self._export_ema(ema, {**info, "ema_decay": self.ema.decay}, gathered)
        plot_loss_curve(self.out / "metrics.jsonl", self.out / "loss_curve.png")
        return out

    def _export(self, gathered: dict | None, info: dict) -> Path:
        from stages.distill.export import export_lora, lora_from_trainable_state, save_full_transformer, write_lora

        dtype = resolve_dtype(self.cfg.student.dtype, self.device)
        transformer = self.model.transformer
        if self.cfg.student.full_finetune:
            out = self.out / "transformer"
            if gathered is None:
                gathered = {k: v.detach().cpu() for k, v in transformer.state_dict().items()}
            else:
                gathered = _submodule_state(gathered, "transformer")
            save_full_transformer(transformer.config, gathered, out, dtype)
            return out
        out = self.out / "lora"
        pipeline = self.student.pipeline_class(self.cfg.student.task)
        if gathered is None:
            return export_lora(transformer, out, self.model.projector, info, pipeline_class=pipeline)
        projector = None
        if self.model.projector is not None:
            projector = Projector(self.model.projector.spec)
            projector.load_state_dict(_submodule_state(gathered, "projector"))
        return write_lora(lora_from_trainable_state(_submodule_state(gathered, "transformer")), transformer.peft_config["default"].to_dict(), out, projector, info, pipeline_class=pipeline)

    def _export_ema(self, ema: dict[str, torch.Tensor], info: dict, gathered: dict | None) -> Path:
        """The EMA weights beside the raw ones: lora_ema/ (the LoRA format, no projector) or transformer_ema/.
        gathered: a sharded run's full state (the buffers of a full fine-tune come from it)."""
        from stages.distill.export import lora_from_trainable_state, save_full_transformer, write_lora

        transformer = self.model.transformer
        if self.cfg.student.full_finetune:
            state = (_submodule_state(gathered, "transformer") if gathered is not None
                     else {k: v.detach().cpu() for k, v in transformer.state_dict().items()})
            # every weight is trained, so the shadow covers them all; buffers (if any) come from the model
            state.update(ema)
            return save_full_transformer(transformer.config, state, self.out / "transformer_ema", resolve_dtype(self.cfg.student.dtype, self.device))
        pipeline = self.student.pipeline_class(self.cfg.student.task)
        return write_lora(lora_from_trainable_state(ema), transformer.peft_config["default"].to_dict(), self.out / "lora_ema", None, info,
                          pipeline_class=pipeline)

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
            if micro == 0:  # the epoch the step's first batch came from (the position before it may be the last one's end)
                epoch = self.position.epoch
            waited += wait
            keys += batch["keys"]
            with parallel.gradient_sync(self.ddp, enabled=micro == accum - 1 or self.world == 1):
                total, terms, weights = self._loss(batch, micro)
                self.scaler.scale(total / accum).backward()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v / accum
        self.scaler.unscale_(self.optimizer)
        norms = self._clip_gradients()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update()
        self.lr_schedule.step()
        self.step += 1
        sums = self._mean_over_ranks(sums)
        loss = sums["diff"] + sum(weights.get(k, 0.0) * v for k, v in sums.items() if k != "diff")
        lr = self.optimizer.param_groups[0]["lr"]
        return StepMetrics(
            self.step, loss, sums, weights, lr, norms["student"], time.perf_counter() - started, waited, epoch, keys, norms
        )

    def _agreement(self, row: dict) -> dict:
        """The LGF cutoff's look at one validation row (every rank, the same numbers); what the row records of it."""
        if self.cutoff is None:
            return {}
        c = self.cfg.losses.lgf.cutoff
        value = row["terms"].get(c.metric)
        if value is None:
            log.warning("losses.lgf.cutoff: validation at step %d measured no %s (%s n/a): no cut decided", row["step"], c.metric, c.metric)
            return {}
        if self.cutoff.observe(row["step"], value):
            self.loss_context.lgf_scale = self.cutoff.scale
            if self.rank == 0:
                log.info("LGF cutoff at step %d: held-out %s %.4f has not improved on its best %.4f by more than %g for %d "
                         "validations: losses.lgf.weight x %g from step %d on", row["step"], c.metric, value, self.cutoff.best,
                         c.min_delta, c.patience, self.cutoff.scale, row["step"] + 1)
        return {"lgf_cutoff": {"metric": c.metric, **self.cutoff.state()}}

    def _clip_gradients(self) -> dict[str, float]:
        """Clip each parameter group to optim.grad_clip on its own; returns the norms before clipping.

        Per group, so the student's update is scaled the same whether or not a projector trains beside
        it (a LoRA-only baseline and an LGF run clip the LoRA alike). Sharded gradients (DTensors) give
        their global norm.
        """
        clip = self.cfg.optim.grad_clip
        norms = {}
        for group in self.optimizer.param_groups:
            grads = [p.grad for p in group["params"] if p.grad is not None]
            if not grads:
                norms[group["name"]] = 0.0
                continue
            norm = parallel.full_tensor(torch.nn.utils.get_total_norm(grads))
            if clip is not None:
                torch.nn.utils.clip_grads_with_norm_(group["params"], clip, norm)
            norms[group["name"]] = float(norm)
        return norms

    def _mean_over_ranks(self, terms: dict[str, float]) -> dict[str, float]:
        """The logged loss terms are the global batch's: the mean over ranks (one small all-reduce)."""
        if self.world == 1:
            return terms
        names = sorted(terms)
        values = torch.tensor([terms[k] for k in names], dtype=torch.float64, device=self.device)
        dist.all_reduce(values)
        return {k: float(v) / self.world for k, v in zip(names, values.tolist())}

    def _loss(self, batch: dict, micro: int) -> tuple[torch.Tensor, dict[str, float], dict[str, float]]:
        # global micro-batch index: rank r's micro m is what one rank accumulating world*accum draws at r*accum+m
        # (the data-parallel rank: the ranks of a context group draw the same noise for the same batch)
        index = self.dp_rank * self.cfg.optim.accumulation + micro
        gen = torch.Generator(device="cpu").manual_seed(step_seed(self.cfg.train.seed, self.step, index, 0))
        return distill_loss(self.loss_context, self.ddp, batch, gen, self.step)

    # -- persistence ---------------------------------------------------------------------
    def save(self) -> None:
        # "position" (rank 0's) stays for readers of older checkpoints and for a resume on another world size
        extra = {"position": self.position.to_json(), "positions": self._rank_positions(), "config": redact(to_dict(self.cfg)),
                 "world_size": self.world, "data_world": self.dp_world, "scaler": self.scaler.state_dict()}
        if self.cutoff is not None:
            extra["lgf_cutoff"] = self.cutoff.state()
        if self.sharded:
            from stages.distill.checkpoint.sharded import save_sharded

            ema = {"ema": self.ema.shadow} if self.ema is not None else None  # sharded like the masters
            save_sharded(self.out, self.step, self.ddp, self.optimizer, self.lr_schedule, extra, self.cfg.train.keep_last, ema)
            return
        if self.rank == 0:
            files = {EMA_FILE: self.ema.state_dict()} if self.ema is not None else None
            save_checkpoint(self.out, self.step, self._trainables(), self.optimizer, self.lr_schedule, extra, self.cfg.train.keep_last, files)
        if self.world > 1:
            dist.barrier()

    def _resume(self) -> None:
        """Continue from the newest checkpoint that loads (an unreadable newer one is skipped, with a warning)."""
        from stages.distill.checkpoint.resume import ResumeMismatch, apply_optimizer_changes, compare

        found = list_checkpoints(self.out)
        if not found:
            raise ResumeMismatch(f"--resume: no checkpoint in {self.out / 'checkpoints'}; drop --resume to start a new run there")
        for path in reversed(found):
            saved, error = _read_state(path)
            if saved is not None:
                changed = compare(redact(saved.get("config", {})), redact(to_dict(self.cfg)), str(path))  # refuses before loading; never logs a secret
                state, error = self._load_checkpoint(path)
            if self._agree(error is None):
                break
            log.warning("checkpoint %s cannot be read (%s): trying the one before", path, error or "on another rank")
        else:
            raise ResumeMismatch(f"--resume: no checkpoint in {self.out / 'checkpoints'} can be read (see the warnings above)")
        if any(k.startswith("optim.") or k == "train.steps" for k in changed):
            apply_optimizer_changes(self.optimizer, self.lr_schedule, self.cfg)
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.cutoff is not None and state.get("lgf_cutoff"):
            self.cutoff.load(state["lgf_cutoff"])
            self.loss_context.lgf_scale = self.cutoff.scale
        self.step = state["step"]
        self.position = self._position_for_world(state)
        _truncate_metrics(self.out / "ranks" / f"rank-{self.rank}.jsonl", self.step)
        if self.rank == 0:
            _truncate_metrics(self.out / "metrics.jsonl", self.step)
        log.info("resumed from %s at step %d, stream position %s", path, self.step, self.position.to_json())

    def _rank_positions(self) -> list[dict]:
        """Every rank's stream position, by rank (a collective: one all-gather of [epoch, batch] per rank).

        The stream keeps them equal (stages/distill/stream.py: on_corrupt=skip tops a short rank's epoch
        up), but each rank resumes from its own, so the checkpoint never stands in one rank's for another's."""
        mine = torch.tensor([self.position.epoch, self.position.batch], dtype=torch.int64, device=self.device)
        gathered = [mine]
        if self.world > 1:
            gathered = [torch.zeros_like(mine) for _ in range(self.world)]
            dist.all_gather(gathered, mine)
        return [StreamPosition(*map(int, t.tolist())).to_json() for t in gathered]

    def _load_checkpoint(self, path: Path) -> tuple[dict | None, str | None]:
        """(state.json, None) once `path` is loaded into model, optimizer and schedule; (None, cause) if it can't be."""
        try:
            if self.sharded:
                from stages.distill.checkpoint.sharded import load_sharded

                return load_sharded(path, self.ddp, self.optimizer, self.lr_schedule, {"ema": self.ema.shadow} if self.ema else None), None
            state = load_checkpoint(path, self._trainables(), self.optimizer, self.lr_schedule)
            if self.ema is not None:
                from safetensors.torch import load_file

                self.ema.load_state_dict(load_file(str(path / EMA_FILE)), str(path))
            return state, None
        except (OSError, RuntimeError, ValueError, KeyError, SafetensorError) as exc:  # truncated or missing files
            return None, f"{type(exc).__name__}: {exc}"

    def _agree(self, ok: bool) -> bool:
        """True when every rank loaded its part (they must all continue from the same checkpoint)."""
        if self.world == 1:
            return ok
        flag = torch.tensor([1 if ok else 0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def _position_for_world(self, state: dict) -> StreamPosition:
        """This rank's stream position to continue from; rank 0's rescaled when the world size changed (sharded
        runs only). A checkpoint from before per-rank positions holds rank 0's only: every rank takes it."""
        position = StreamPosition(**state["position"])
        saved = int(state.get("world_size", self.world))
        saved_split = int(state.get("data_world", saved))  # data-parallel ranks (world / parallel.context)
        if saved == self.world and saved_split == self.dp_world:
            positions = state.get("positions")
            return StreamPosition(**positions[self.rank]) if positions and len(positions) == saved else position
        # each rank had consumed `batch` of its own split; the same share of the epoch on the new split
        batch = position.batch * saved_split // self.dp_world
        log.warning("checkpoint written by %d ranks, resuming on %d: continuing at batch %d of epoch %d "
                    "(same weights and optimizer state; a different data order from here)", saved, self.world, batch, position.epoch)
        return StreamPosition(position.epoch, batch)

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


def _vector(values: Any, device: torch.device) -> torch.Tensor | None:
    """A column attr list (e.g. latents_mean) as an fp32 tensor on `device`; None stays None."""
    return None if values is None else torch.tensor([float(v) for v in values], dtype=torch.float32, device=device)


def _submodule_state(state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The entries of a DistillModel state dict under `name.`, with that prefix removed."""
    prefix = f"{name}."
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _read_state(path: Path) -> tuple[dict | None, str | None]:
    try:
        return json.loads((path / "state.json").read_text()), None
    except (OSError, json.JSONDecodeError) as exc:
        return None, f"state.json: {exc}"


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop logged steps after the checkpoint being resumed (they will be trained again), and a line a
    kill left half-written."""
    if not path.exists():
        return
    kept = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            row = json.loads(line) if line else None
        except json.JSONDecodeError:
            log.warning("%s:%d is not a complete JSON line (a write cut short): dropped", path, number)
            continue
        if row is not None and row["step"] <= step:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept))
