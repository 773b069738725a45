"""Step-time overhead of the LGF loss + projector + feature tap over the plain diffusion-loss step.

Variant A ("lgf"): L_diff + 0.5 L_LGF, block-L tap, projector (the method). Variant B ("plain"):
the same student trained with L_diff alone (lambda 0: no tap, no projector; the `lora` baseline).
Both see the SAME batches and the same per-step noise, timed interleaved (A, B, A, B, ...) after a
warm-up in one process, so background load hits both alike. Reported: median s/step of each, the
ratio A/B, and (store path) the share of step time spent waiting for data.

    python tests/benchmarks/bench_step.py                       # CPU: extract a small store, then time
    python tests/benchmarks/bench_step.py --store out/sample-store --no-mid   # reuse a store, tiny student only
    python tests/benchmarks/bench_step.py --device cuda --real  # GPU: real CogVideoX-5B-I2V size, synthetic batches
    python tests/benchmarks/bench_step.py --real --dry-run      # any box: build the GPU path on the meta device
    python tests/benchmarks/bench_step.py --device cuda --real --attention xformers --json step.json
    python tests/benchmarks/bench_step.py --device cuda --real --strategy fsdp   # FSDP2, one rank
    python tests/benchmarks/bench_step.py --synthetic --preset tiny             # the synthetic path on CPU
    python tests/benchmarks/bench_step.py --device cuda --real --compile        # student.compile: each block compiled
    python tests/benchmarks/bench_step.py --device cuda --real --compile --fp8  # + student.fp8 (torchao; Ada/Hopper)
    python tests/benchmarks/bench_step.py --device cuda --real --checkpointing auto,all  # selective checkpointing vs all

CPU path (default): extracts `--clips` clips of the sample corpus with the real worker
(stages.extract.shard_worker.ShardWorker, in-process) into a temporary store, then builds two
stages.distill.trainer.Trainer from configs/distill/sample.yaml (losses.lgf.weight=0.5 vs 0) that
stream that store and calls `train_step` on them alternately. Two students: the sample config's
3-block toy, and a "mid" student (more blocks, 64-wide heads; saved in diffusers format and loaded
through `student.model`) whose compute is not dwarfed by Python overhead. Then a parity check:
the synthetic step below (the GPU path's code) gives the same loss as `Trainer.train_step` on the
same batch, weights and seed; and a short synthetic run of the tiny preset exercises its construction.

GPU path (`--device cuda --real`): CogVideoX-5B-I2V's transformer config (42 blocks, 48 x 64 heads,
random weights, bf16, autocast bf16), LoRA rank 128 on q/k/v/out, gradient checkpointing, tap block
16, projector 3072 -> 2048 -> 2048 -> 64, synthetic batches of the real shapes; also peak memory per
variant (torch.cuda.max_memory_allocated). Neither path imports ray; the GPU path does not import
zarr or webdataset either (the trainer and the store are imported only by the CPU path).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler  # noqa: E402

from stages.config.distill import LoRAConfig, LossesConfig, StudentConfig  # noqa: E402
from stages.distill.trainer import LossContext, distill_loss, step_seed  # noqa: E402
from stages.families.registry import student_of  # noqa: E402
from stages.distill.projector import Projector, ProjectorSpec  # noqa: E402
from stages.families.cogvideox.transformer import (  # noqa: E402
    COGVIDEOX_5B_I2V_TRANSFORMER,
    COGVIDEOX_5B_SCHEDULER,
    tiny_transformer_config,
)
from stages.families.lora import configure_student  # noqa: E402
from stages.families.wan.family import (  # noqa: E402
    WAN21_SCHEDULER,
    WAN21_T2V_1_3B_TRANSFORMER,
    WAN21_T2V_14B_TRANSFORMER,
    tiny_transformer_config as wan_tiny_config,
    training_scheduler as wan_training_scheduler,
)
from stages.distill.recompute import apply_checkpointing, checkpointed_blocks  # noqa: E402
from stages.distill.tap import FeatureTap  # noqa: E402
from stages.families.registry import get_student  # noqa: E402
from stages.core.lgf import lgf_probs  # noqa: E402

LGF_SETTINGS = {"kernel": 7, "tau": 0.1, "offsets": [1], "fusion": "gram"}  # method.md defaults = the stored target's


@dataclass(frozen=True)
class Preset:
    """A student size for the synthetic path: transformer config + what the method scales with it."""

    name: str
    config: dict[str, Any]  # the family's transformer kwargs (CogVideoXTransformer3DModel, WanTransformer3DModel)
    lora_rank: int  # LoRA r (alpha = r, as the default run config)
    tap_block: int  # L, 0-based
    projector_hidden: int  # D -> hidden -> hidden -> teacher_channels
    teacher_channels: int  # C of the teacher features (256: memory_attention of released SAM2, the default; 64: maskmem; 16: tiny SAM2)
    model: str = "tiny"  # the student.model this size stands for (the memory plan of student.checkpointing=auto)
    family: str = "cogvideox"  # stages/families/ name: the transformer class, blocks, objective
    task: str = "i2v"
    latent_shape: tuple[int, int, int] | None = None  # (T, H8, W8) of the batches; None: CogVideoX's sample_* of the config
    text_len: int | None = None  # prompt tokens; None: the config's max_text_seq_length

    def geometry(self) -> tuple[tuple[int, int, int], int]:
        """((T, H8, W8), text tokens) of this preset's batches."""
        if self.latent_shape is not None:
            return tuple(self.latent_shape), int(self.text_len)
        c = self.config
        frames = (c["sample_frames"] - 1) // c["temporal_compression_ratio"] + 1
        return (frames, c["sample_height"], c["sample_width"]), int(c["max_text_seq_length"])


def mid_config(layers: int, heads: int, head_dim: int = 64) -> dict[str, Any]:
    """A bigger student that still fits the sample store: the tiny config's geometry (16x24 latents,
    13 latent frames, 16 text tokens of width 32) with real-style 64-wide heads and more blocks."""
    cfg = tiny_transformer_config("i2v")
    cfg.update(num_layers=layers, num_attention_heads=heads, attention_head_dim=head_dim, time_embed_dim=512)
    return cfg


def presets(mid_layers: int = 6, mid_heads: int = 6) -> dict[str, Preset]:
    mid = mid_config(mid_layers, mid_heads)
    width = mid_heads * 64
    return {
        "real": Preset("real", COGVIDEOX_5B_I2V_TRANSFORMER, 128, 16, 2048, 256, "THUDM/CogVideoX-5b-I2V"),  # 256: memory_attention, the teacher default since issue 10 (64 before: maskmem)
        # LoRA rank, tap depth and projector width scaled like the real ones (128/3072, 16/42, 2048/3072).
        "mid": Preset("mid", mid, max(4, width // 24), min(round(16 / 42 * mid_layers), mid_layers - 1), (2 * width) // 3, 16),
        "tiny": Preset("tiny", tiny_transformer_config("i2v"), 4, 1, 32, 16),
        # Wan 2.1 T2V at 81x480x832 (latents 21x60x104 through its 4x8 VAE, 512 UMT5 tokens), LoRA r128, tap at the
        # depth of configs/distill/wan21_t2v_*.yaml (11 of 30, 15 of 40)
        "wan-1.3b": Preset("wan-1.3b", WAN21_T2V_1_3B_TRANSFORMER, 128, 11, 2048, 256, "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
                           "wan", "t2v", (21, 60, 104), 512),
        "wan-14b": Preset("wan-14b", WAN21_T2V_14B_TRANSFORMER, 128, 15, 2048, 256, "Wan-AI/Wan2.1-T2V-14B-Diffusers",
                          "wan", "t2v", (21, 60, 104), 512),
        # the tiny Wan (3 blocks, 2x12 heads, text 32 wide) on a 3x16x24 latent grid (3x8x12 tokens), 16 prompt tokens
        "wan-tiny": Preset("wan-tiny", wan_tiny_config(), 4, 1, 32, 16, "tiny-wan", "wan", "t2v", (3, 16, 24), 16),
    }


REAL_PRESETS = ("real", "wan-1.3b", "wan-14b")  # built at full size: CUDA only (or the meta device, --dry-run)


def scheduler_for(family: str) -> Any:
    """The training noise schedule the trainer gets from the family's load(): CogVideoX-5B's DPM (v-prediction),
    Wan 2.1's flow matching at its folder's shift (3.0)."""
    if family == "wan":
        return wan_training_scheduler(WAN21_SCHEDULER)
    return CogVideoXDPMScheduler(**COGVIDEOX_5B_SCHEDULER)


def latent_norm(family: str, device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The encodings column's latents_mean/std attrs a Wan-VAE store carries ([16]: AutoencoderKLWan's defaults,
    Wan 2.1's values); (None, None) for CogVideoX (one scaling factor)."""
    if family != "wan":
        return None, None
    import inspect

    from diffusers import AutoencoderKLWan

    params = inspect.signature(AutoencoderKLWan.__init__).parameters
    return tuple(torch.tensor(params[k].default, dtype=torch.float32, device=device) for k in ("latents_mean", "latents_std"))


def build_transformer(config: dict[str, Any], device: str | torch.device, dtype: torch.dtype, seed: int = 0,
                      family: str = "cogvideox") -> torch.nn.Module:
    """Random-weight transformer of `family` (CogVideoX by default) built directly on `device` (no 22 GB fp32 copy
    in host RAM), then cast."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            model = get_student(family).transformer_from_config(config)
    return model if dtype == torch.float32 else model.to(dtype=dtype)


def save_student_folder(config: dict[str, Any], folder: Path) -> Path:
    """Write a random-weight student in diffusers format (transformer/, scheduler/) for `student.model`."""
    build_transformer(config, "cpu", torch.float32).save_pretrained(folder / "transformer")
    scheduler = CogVideoXDPMScheduler(**COGVIDEOX_5B_SCHEDULER)
    CogVideoXDDIMScheduler.from_config(scheduler.config).save_pretrained(folder / "scheduler")
    return folder


# ------------------------------------------------------------------------------ the synthetic step (GPU path)


@dataclass
class StepParts:
    """Everything one distillation step touches, mirroring stages.distill.trainer.Trainer._loss/train_step."""

    transformer: Any
    scheduler: Any
    projector: Projector | None  # None: variant B only
    losses: LossesConfig
    tap_block: int
    rotary: Any  # (cos, sin) of the latent grid, or None
    scaling_factor: float
    column_lgf: dict | None  # LGF settings the batch's `lgf` target was fused with
    optimizer: torch.optim.Optimizer | None
    autocast_dtype: torch.dtype | None  # CUDA autocast dtype (None: no autocast)
    timesteps: int = 1000
    image_dropout: float = 0.05
    caption_dropout: float = 0.0
    empty_prompt: torch.Tensor | None = None
    grad_clip: float = 1.0
    tap: FeatureTap | None = None  # attached for the duration of a variant-A step
    task: str = "i2v"
    latents_mean: torch.Tensor | None = None  # [C] Wan-VAE latent normalisation (LossContext), else None
    latents_std: torch.Tensor | None = None
    latent_shape: tuple | None = None  # (T, H8, W8) and prompt tokens of the synthetic batches
    text_len: int | None = None


def forward_loss(parts: StepParts, batch: dict, seed: int, step: int, lgf: bool) -> tuple[torch.Tensor, float]:
    """(total loss on the graph, the value Trainer logs as StepMetrics.loss) for one micro-batch.

    The trainer's own loss function (stages.distill.trainer.distill_loss), so the GPU path times
    exactly the trainer's step. The tap is attached for variant A only, by the caller.
    """
    device = next(parts.transformer.parameters()).device
    ctx = LossContext(
        parts.transformer.config, parts.scheduler, parts.losses, parts.task, parts.scaling_factor, parts.timesteps,
        parts.image_dropout, parts.caption_dropout, parts.empty_prompt, parts.rotary, parts.column_lgf,
        parts.transformer.dtype, device, parts.autocast_dtype, parts.projector if lgf else None,
        student=student_of(parts.transformer), latents_mean=parts.latents_mean, latents_std=parts.latents_std,
    )

    def forward(model_kwargs: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        return parts.transformer(**model_kwargs)[0], (parts.tap.pop() if lgf else None)

    gen = torch.Generator(device="cpu").manual_seed(seed)
    total, terms, weights = distill_loss(ctx, forward, batch, gen, step)
    return total, terms["diff"] + sum(weights.get(k, 0.0) * v for k, v in terms.items() if k != "diff")


def synthetic_step(parts: StepParts, batch: dict, seed: int, step: int, lgf: bool) -> tuple[float, float]:
    """One optimiser step of variant A (lgf) or B; returns (seconds, logged loss). Syncs CUDA around it."""
    device = next(parts.transformer.parameters()).device
    _sync(device)
    start = time.perf_counter()
    parts.tap = FeatureTap(parts.transformer, parts.tap_block) if lgf else None
    try:
        parts.optimizer.zero_grad(set_to_none=True)
        total, value = forward_loss(parts, batch, seed, step, lgf)
        total.backward()
        params = [p for g in parts.optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, parts.grad_clip)
        parts.optimizer.step()  # projector params without grads (variant B) are skipped by AdamW
    finally:
        if parts.tap is not None:
            parts.tap.remove()
    _sync(device)
    return time.perf_counter() - start, value


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_batch(config: Any, teacher_channels: int, device: torch.device, batch_size: int = 1, seed: int = 0,
                    latent_shape: tuple | None = None, text_len: int | None = None, task: str = "i2v", student: Any = None) -> dict:
    """Random batch of the store's shapes and dtypes for a transformer config (CogVideoX-5B-I2V real size:
    latents [1,32,13,60,90], image latents [1,16,1,60,90], prompt [1,226,4096], lgf [1,12,30,45,49]; Wan 2.1 T2V at
    81x480x832: latents [1,32,21,60,104], prompt [1,512,4096], lgf [1,20,30,52,49], no image latents).
    latent_shape (T, H8, W8) / text_len: None = CogVideoX's sample_* / max_text_seq_length of the config.

    The LGF target is the real fused-probability function of random teacher features, so its
    out-of-image entries are exactly zero as in a stored target.
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    student = student or student_of(config)  # a config from the class itself has no _class_name: pass the family
    if latent_shape is None:
        latent_shape = ((config.sample_frames - 1) // config.temporal_compression_ratio + 1, config.sample_height, config.sample_width)
    frames, h8, w8 = latent_shape
    grid = student.token_grid(config, latent_shape)  # (T', h, w) token grid of the tap and the LGF target
    text_len = text_len or config.max_text_seq_length
    c = config.out_channels
    extra = set(student.condition_arrays(task)) - {"image_latents"}
    if extra:
        raise ValueError(f"synthetic batches have no {sorted(extra)} (task {task})")

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=torch.float16)

    teacher = torch.randn(batch_size, *grid, teacher_channels, generator=g).to(device)
    k = LGF_SETTINGS["kernel"]
    lgf = lgf_probs(teacher, k, LGF_SETTINGS["tau"], LGF_SETTINGS["offsets"]).to(torch.float16)
    batch = {
        "keys": [f"synthetic/{i}" for i in range(batch_size)],
        "latents": randn(batch_size, 2 * c, frames, h8, w8),
        "prompt_embeds": randn(batch_size, text_len, student.text_dim(config)),
        "lgf": lgf,
    }
    if "image_latents" in student.condition_arrays(task):
        batch["image_latents"] = randn(batch_size, c, 1, h8, w8)
    return batch


def parts_batch(parts: "StepParts", teacher_channels: int, device: torch.device, batch_size: int = 1) -> dict:
    """synthetic_batch of the geometry and task `parts` was built for."""
    return synthetic_batch(parts.transformer.config, teacher_channels, device, batch_size,
                           latent_shape=parts.latent_shape, text_len=parts.text_len, task=parts.task,
                           student=student_of(parts.transformer))


def build_synthetic(preset: Preset, device: torch.device, dtype: torch.dtype, attention: str = "sdpa",
                    full_finetune: bool = False, compile_kwargs: dict | None = None, fp8: bool = False,
                    checkpointing: str = "all") -> StepParts:
    """The GPU path's construction: transformer on device, LoRA + checkpointing + attention backend as
    configure_student does, projector, one AdamW over LoRA + projector (the trainer's groups and defaults).
    fp8 / compile_kwargs: student.fp8 and student.compile through the trainer's own functions, in its order
    (LoRA, fp8, checkpointing, then each block compiled in place; the tap is attached per step, after).
    checkpointing: student.checkpointing, already resolved ("auto": resolve_checkpointing), applied as the trainer
    does (stages.distill.recompute.apply_checkpointing on the family's blocks)."""
    transformer = build_transformer(preset.config, device, dtype, family=preset.family)
    student = StudentConfig(model="<synthetic>", lora=LoRAConfig(rank=preset.lora_rank, alpha=float(preset.lora_rank)),
                            gradient_checkpointing=True, attention=attention, full_finetune=full_finetune)
    torch.manual_seed(0)  # peft draws LoRA A from the global RNG
    family = get_student(preset.family)
    lora_params = configure_student(transformer, student, family.set_attention)
    if fp8:
        from stages.distill.fp8 import convert_fp8

        convert_fp8(transformer, family.blocks(transformer), full_finetune)
    apply_checkpointing(transformer, family.blocks(transformer), checkpointing)
    if compile_kwargs is not None:
        from stages.core.compiling import block_compile_targets, compile_modules

        compile_modules("student", block_compile_targets(family.blocks(transformer), compile_kwargs), device, cpu=True)
    width = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    projector = Projector(ProjectorSpec(width, preset.teacher_channels, preset.projector_hidden, 2)).to(device)
    optimizer = torch.optim.AdamW(
        [{"params": lora_params, "lr": 1e-4}, {"params": list(projector.parameters()), "lr": 1e-4}],
        betas=(0.9, 0.95), weight_decay=1e-4, eps=1e-8,
    )
    latent_shape, text_len = preset.geometry()
    losses = LossesConfig()
    losses.lgf.weight = 0.5
    mean, std = latent_norm(preset.family, device)
    return StepParts(
        transformer, scheduler_for(preset.family), projector, losses, preset.tap_block,
        family.rotary(transformer.config, latent_shape, device), 0.7, dict(LGF_SETTINGS),
        optimizer, torch.bfloat16 if device.type == "cuda" else None,
        task=preset.task, latents_mean=mean, latents_std=std, latent_shape=latent_shape, text_len=text_len,
    )


def run_synthetic(preset: Preset, device: torch.device, dtype: torch.dtype, warmup: int, steps: int, batch_size: int,
                  attention: str = "sdpa", compile_kwargs: dict | None = None, fp8: bool = False, checkpointing: str = "all") -> dict:
    """Interleaved A/B steps of the synthetic path; per variant: seconds, and peak GPU memory on CUDA.
    Also the first step of each variant (with compile: the compile time, in the warm-up) and the graphs dynamo made."""
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    t0 = time.perf_counter()
    parts = build_synthetic(preset, device, dtype, attention, compile_kwargs=compile_kwargs, fp8=fp8, checkpointing=checkpointing)
    built = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.empty_cache()  # drop the fp32 construction copy before measuring
    batch = parts_batch(parts, preset.teacher_channels, device, batch_size)
    static = f"; static GPU memory {torch.cuda.memory_allocated(device) / 2**30:.2f} GiB" if device.type == "cuda" else ""
    trainable = sum(p.numel() for g in parts.optimizer.param_groups for p in g["params"])
    total = sum(p.numel() for p in parts.transformer.parameters())
    print(f"[synthetic {preset.name}] built in {built:.1f} s: {total / 1e6:,.1f} M transformer params "
          f"({parts.transformer.config.num_layers} blocks, width {parts.transformer.config.num_attention_heads}x"
          f"{parts.transformer.config.attention_head_dim}), {trainable / 1e6:.2f} M trainable (LoRA r{preset.lora_rank} + "
          f"projector), tap block {preset.tap_block}, dtype {dtype}{static}")  # fmt: skip
    seconds = {"lgf": [], "plain": []}
    peak = {"lgf": 0.0, "plain": 0.0}
    first = {}
    for i in range(warmup + steps):
        for variant in ("lgf", "plain"):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            s, _ = synthetic_step(parts, batch, seed=i, step=1000 + i, lgf=variant == "lgf")
            first.setdefault(variant, s)
            if i >= warmup:
                seconds[variant].append(s)
                if device.type == "cuda":
                    peak[variant] = max(peak[variant], torch.cuda.max_memory_allocated(device) / 2**30)
    return {"seconds": seconds, "peak_gib": peak if device.type == "cuda" else None, "build_s": built,
            "params": total, "trainable": trainable, "attention": attention_in_use(parts.transformer),
            "first_step_s": first, "compiled_graphs": counters["stats"]["unique_graphs"] - graphs}


def resolve_checkpointing(spec: str, preset: Preset, device: torch.device, gpu_memory_gb: float | None) -> tuple[str, float | None]:
    """student.checkpointing for the synthetic student, "auto" resolved as the trainer does (Trainer._plan_checkpointing):
    the memory plan's fastest choice that fits gpu_memory_gb, else the GPU's memory; "all" on a CPU without it.
    Returns (the spec, the plan's peak GiB for "auto", else None)."""
    if spec != "auto":
        checkpointed_blocks(spec, 1)  # a bad spec fails here, in the config's own words
        return spec, None
    capacity = gpu_memory_gb * 2**30 if gpu_memory_gb else (
        torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None)
    if capacity is None:
        return "all", None
    from stages.config.distill import DistillConfig
    from stages.config.loader import load_config
    from stages.distill.memory_plan import plan_memory

    cfg = load_config(DistillConfig, None, [
        f"student.model={preset.model}", f"student.task={preset.task}", "student.dtype=bfloat16", "student.checkpointing=auto",
        f"student.lora.rank={preset.lora_rank}", f"student.lora.alpha={float(preset.lora_rank)}",
        f"tap.block={preset.tap_block}", f"projector.hidden={preset.projector_hidden}", "losses.lgf.weight=0.5",
    ])  # fmt: skip
    latent_shape, text_len = preset.geometry()
    plan = plan_memory(cfg, 1, latent_shape=latent_shape, text_len=text_len, transformer_overrides=dict(preset.config), teacher_channels=preset.teacher_channels, capacity=int(capacity))
    print(f"student.checkpointing=auto: {plan.checkpointing} ({plan.checkpointed} of {plan.blocks} blocks recompute), "
          f"planned {plan.total / 2**30:.1f} GiB of {capacity / 2**30:.1f} GiB")
    return plan.checkpointing, plan.total / 2**30


def run_checkpointing(preset: Preset, device: torch.device, dtype: torch.dtype, warmup: int, steps: int,
                      specs: list[str], gpu_memory_gb: float | None) -> dict:
    """Selective checkpointing (student.checkpointing) compared in one process: ONE student (LoRA, tap, projector:
    variant lgf), its checkpointed blocks switched per step with apply_checkpointing, the specs interleaved
    (spec 0, spec 1, ... per step) on the same batch and seeds. Per spec: s/step, peak GPU memory; ratio = spec 0 / spec 1."""
    plans = {s: resolve_checkpointing(s, preset, device, gpu_memory_gb) for s in specs}
    resolved = {s: plans[s][0] for s in specs}
    parts = build_synthetic(preset, device, dtype, checkpointing=resolved[specs[0]])
    blocks = get_student(preset.family).blocks(parts.transformer)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    batch = parts_batch(parts, preset.teacher_channels, device)
    seconds = {s: [] for s in specs}
    peak = {s: 0.0 for s in specs}
    chosen = {}
    for i in range(warmup + steps):
        for s in specs:
            chosen[s] = len(apply_checkpointing(parts.transformer, blocks, resolved[s]))
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            took, _ = synthetic_step(parts, batch, seed=i, step=1000 + i, lgf=True)
            if i >= warmup:
                seconds[s].append(took)
                if device.type == "cuda":
                    peak[s] = max(peak[s], torch.cuda.max_memory_allocated(device) / 2**30)
    runs = [{"name": s, "resolved": resolved[s], "checkpointed_blocks": chosen[s], "s_per_step": median(seconds[s]),
             "peak_gib": peak[s] if device.type == "cuda" else None, "planned_gib": plans[s][1], "steps": seconds[s]} for s in specs]
    for r in runs:
        print(f"checkpointing {r['name']} ({r['resolved']}, {r['checkpointed_blocks']} of {len(blocks)} blocks): "
              f"{r['s_per_step']:.4f} s/step" + (f", peak {r['peak_gib']:.2f} GiB" if r["peak_gib"] is not None else ""))
    ratio = runs[0]["s_per_step"] / runs[1]["s_per_step"] if len(runs) > 1 else None
    if ratio is not None:
        print(f"ratio {specs[0]}/{specs[1]}: {ratio:.3f}")
    return {"checkpointing": specs, "blocks": len(blocks), "runs": runs, "ratio": ratio}


def attention_in_use(transformer: Any) -> str:
    """"xformers" when stages.families.cogvideox.transformer.set_attention installed its processor, else "sdpa"."""
    kinds = {type(p).__name__ for p in getattr(transformer, "attn_processors", {}).values()}
    return "xformers" if any("XFormers" in k for k in kinds) else "sdpa"


# ------------------------------------------------------------------------------ FSDP2 on one device (--strategy fsdp)


def run_fsdp(preset: Preset, device: torch.device, dtype: torch.dtype, warmup: int, steps: int, full_finetune: bool = False) -> dict:
    """FSDP2 distillation steps (variant lgf) on one device through the trainer's parallel layer.

    Wraps the trainer's DistillModel (transformer + projector + tap) with `parallel.wrap(model, "fsdp",
    world=1, ...)` (a one-rank process group: nccl on CUDA, gloo on CPU): bf16 all-gather, fp32
    reduce-scatter, fp32 LoRA masters. AdamW over the sharded trainable parameters; `steps` optimiser
    steps timed after `warmup`. Any exception -> gpu_suite.sh records the part as "not available".
    """
    from stages.distill import parallel  # not on every branch yet: ImportError -> "not available"
    from stages.distill.trainer import DistillModel

    cuda = device.type == "cuda"
    t0 = time.perf_counter()
    parts = build_synthetic(preset, device, dtype, full_finetune=full_finetune)
    parts.optimizer = None  # it holds the unsharded parameters: FSDP's own copies replace them
    model = DistillModel(parts.transformer, parts.projector, parts.tap_block, student_of(parts.transformer))
    model = parallel.wrap(model, "fsdp", 1, device, torch.bfloat16 if cuda else None)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, betas=(0.9, 0.95), weight_decay=1e-4, eps=1e-8)
    built = time.perf_counter() - t0
    if cuda:
        torch.cuda.empty_cache()
    batch = parts_batch(parts, preset.teacher_channels, device)
    cfg = parts.transformer.config
    ctx = LossContext(
        cfg, parts.scheduler, parts.losses, parts.task, parts.scaling_factor, parts.timesteps, parts.image_dropout,
        parts.caption_dropout, parts.empty_prompt, parts.rotary, parts.column_lgf, parts.transformer.dtype, device,
        parts.autocast_dtype, parts.projector, touch_unused=False, student=student_of(parts.transformer),
        latents_mean=parts.latents_mean, latents_std=parts.latents_std,
    )  # fmt: skip
    seconds, peak = [], 0.0
    for i in range(warmup + steps):
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        gen = torch.Generator(device="cpu").manual_seed(i)
        total, _, _ = distill_loss(ctx, model, batch, gen, 1000 + i)
        total.backward()
        norm = parallel.full_tensor(torch.nn.utils.get_total_norm([p.grad for p in trainable if p.grad is not None]))
        torch.nn.utils.clip_grads_with_norm_(trainable, parts.grad_clip, norm)
        optimizer.step()
        _sync(device)
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
            if cuda:
                peak = max(peak, torch.cuda.max_memory_allocated(device) / 2**30)
    print(f"[fsdp {preset.name}] built + wrapped in {built:.1f} s; s/step {' '.join(f'{x:.3f}' for x in seconds)}"
          + (f"; peak GPU memory {peak:.2f} GiB" if cuda else ""))  # fmt: skip
    return {"s_per_step": median(seconds), "steps": seconds, "peak_gib": peak if cuda else None, "build_s": built}


# ------------------------------------------------------------------------------ the store path (CPU; real trainer)


def ensure_sample_corpus() -> Path:
    clips = REPO / "datasets" / "sample" / "clips"
    if not (clips / "manifest.jsonl").exists():  # as `make sample` does
        subprocess.run([sys.executable, str(REPO / "datasets" / "sample" / "generate.py"), "--out", str(clips)], check=True)
    return clips


def build_store(root: Path, clips: int, frames: int) -> tuple[str, float]:
    """Extract `clips` sample clips (teacher + encodings columns) with the real worker, in-process."""
    from stages.config.loader import load_config
    from stages.config.extract import ExtractConfig
    from pipeline.runner import prepare_store
    from stages.extract.shard_worker import ShardWorker

    corpus = ensure_sample_corpus()
    overrides = [f"corpus.url={corpus}", f"corpus.limit={clips}", f"video.num_frames={frames}",
                 "teacher.device=cpu", "encoders.device=cpu", "columns=[teacher,encodings]",
                 "teacher.allow_random_weights=true"]  # fmt: skip
    cfg = load_config(ExtractConfig, REPO / "configs" / "extract" / "sample.yaml", overrides)
    url = str(root / "store")
    start = time.perf_counter()
    _, snapshot, _ = prepare_store(cfg, url, "stages.extract.columns.registry")
    worker = ShardWorker(cfg, url)
    for shard in range(snapshot.num_shards):
        worker.run_shard(shard)
    return url, time.perf_counter() - start


def make_trainers(store: str, root: Path, tag: str, overrides: list[str]) -> dict[str, Any]:
    """Trainer "lgf" (lambda 0.5, projector, tap) and "plain" (lambda 0) on the same store and seed."""
    from stages.config.loader import load_config
    from stages.config.distill import DistillConfig
    from stages.distill.trainer import Trainer

    trainers = {}
    for variant, weight in (("lgf", 0.5), ("plain", 0.0)):
        cfg = load_config(DistillConfig, REPO / "configs" / "distill" / "sample.yaml", [
            f"data.store={store}", f"out={root / f'run-{tag}-{variant}'}", "student.device=cpu",
            "train.steps=100000", f"losses.lgf.weight={weight}", *overrides,
        ])  # fmt: skip
        trainers[variant] = Trainer(cfg)
    return trainers


def time_trainers(trainers: dict[str, Any], warmup: int, steps: int) -> dict[str, list]:
    """Interleaved train_step calls (lgf, plain, lgf, plain, ...); returns StepMetrics per variant after warm-up."""
    sources = {v: t.batches() for v, t in trainers.items()}
    out: dict[str, list] = {v: [] for v in trainers}
    for i in range(warmup + steps):
        for variant, trainer in trainers.items():
            metrics = trainer.train_step(sources[variant])
            if i >= warmup:
                out[variant].append(metrics)
    return out


def check_parity(trainer: Any, batch: dict) -> tuple[float, float]:
    """(our synthetic-path loss, Trainer.train_step's logged loss) on the same batch, weights and seed."""

    cfg = trainer.cfg
    parts = StepParts(
        trainer.model.transformer, trainer.scheduler, trainer.model.projector, cfg.losses, cfg.tap.block, trainer.rotary,
        trainer.data.scaling_factor, trainer.data.column_lgf, None, None, cfg.diffusion.timesteps,
        cfg.diffusion.image_dropout, cfg.train.caption_dropout, trainer.empty_prompt,
    )  # fmt: skip
    seed = step_seed(cfg.train.seed, trainer.step, 0, trainer.rank)
    parts.tap = FeatureTap(parts.transformer, parts.tap_block)
    try:
        with torch.no_grad():
            _, ours = forward_loss(parts, batch, seed, trainer.step, lgf=True)
    finally:
        parts.tap.remove()
    theirs = trainer.train_step(iter([(batch, 0.0)])).loss
    return ours, theirs


# ------------------------------------------------------------------------------ reporting


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def report_pair(label: str, a: list[float], b: list[float], extra: str = "") -> None:
    ma, mb = median(a), median(b)
    print(f"{label}: lgf {ma:.4f} s/step | plain {mb:.4f} s/step | ratio lgf/plain {ma / mb:.3f} "
          f"(overhead {100 * (ma / mb - 1):+.1f}%){extra}")  # fmt: skip
    print(f"    lgf steps   {' '.join(f'{x:.3f}' for x in a)}")
    print(f"    plain steps {' '.join(f'{x:.3f}' for x in b)}")


def report_trainers(label: str, runs: dict[str, list]) -> float:
    seconds = {v: [m.seconds for m in ms] for v, ms in runs.items()}
    compute = {v: [m.seconds - m.data_seconds for m in ms] for v, ms in runs.items()}
    same = all(a.clips == b.clips for a, b in zip(runs["lgf"], runs["plain"]))
    report_pair(label, seconds["lgf"], seconds["plain"], f" | same clips every step: {same}")
    mc = {v: median(x) for v, x in compute.items()}
    print(f"    excluding data wait: lgf {mc['lgf']:.4f} | plain {mc['plain']:.4f} | ratio {mc['lgf'] / mc['plain']:.3f}")
    for v, ms in runs.items():
        wait, total = sum(m.data_seconds for m in ms), sum(m.seconds for m in ms)
        share = [m.data_seconds / m.seconds for m in ms]
        print(f"    data wait {v:5s}: {100 * wait / total:5.1f}% of step time (median per step {100 * median(share):.1f}%, "
              f"max {100 * max(share):.1f}%)")  # fmt: skip
    return median(seconds["lgf"]) / median(seconds["plain"])


def describe(trainer: Any) -> str:
    """The student and method sizes a Trainer actually runs with."""
    c, t = trainer.cfg, trainer.tconfig
    width = t.num_attention_heads * t.attention_head_dim
    out = trainer.model.projector.spec.out_dim if trainer.model.projector is not None else "?"
    return (f"{t.num_layers} blocks {t.num_attention_heads}x{t.attention_head_dim}, LoRA r{c.student.lora.rank}, tap block "
            f"{c.tap.block}, projector {width}->{c.projector.hidden}x{c.projector.layers}->{out}, batch {c.train.batch_size}")  # fmt: skip


def thread_line() -> str:
    return (f"torch threads {torch.get_num_threads()} (interop {torch.get_num_interop_threads()}), "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '<unset>')}, cpus {os.cpu_count()}, "
            f"load avg {os.getloadavg()[0]:.2f}")  # fmt: skip


# ------------------------------------------------------------------------------ main


def run_cpu(args: argparse.Namespace, root: Path) -> None:
    if args.store:
        store, took = args.store, 0.0
        print(f"store: {store} (given)")
    else:
        store, took = build_store(root, args.clips, args.frames)
        print(f"store: {args.clips} clips x {args.frames} frames extracted in-process in {took:.1f} s -> {store}")
    data = [f"data.num_workers={args.workers}"]

    trainers = make_trainers(store, root, "tiny", data + ([f"train.batch_size={args.batch_size}"] if args.batch_size else []))
    print(f"\n[tiny student: sample.yaml, {describe(trainers['lgf'])}, {args.workers} data worker(s)]  {thread_line()}")
    time_report_close("tiny", trainers, args.warmup, args.steps)

    if args.mid:
        p = presets(args.mid_layers, args.mid_heads)["mid"]
        folder = save_student_folder(p.config, root / "mid-student")
        over = data + [f"student.model={folder}", f"student.lora.rank={p.lora_rank}", f"student.lora.alpha={p.lora_rank}",
                       f"tap.block={p.tap_block}", f"projector.hidden={p.projector_hidden}",
                       f"train.batch_size={args.mid_batch_size}"]  # fmt: skip
        trainers = make_trainers(store, root, "mid", over)
        print(f"\n[mid student: saved diffusers folder, {describe(trainers['lgf'])}]  {thread_line()}")
        time_report_close("mid", trainers, args.warmup, args.mid_steps)

    preset = presets()["tiny"]
    res = run_synthetic(preset, torch.device("cpu"), torch.float32, args.warmup, args.steps, 1)
    report_pair("tiny (synthetic path = the GPU code path, batch 1, one model, tap attached per lgf step)",
                res["seconds"]["lgf"], res["seconds"]["plain"])


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def run_gpu(args: argparse.Namespace) -> dict:
    """The synthetic path (GPU by default, or any device with --synthetic): figures for --json."""
    device = torch.device(args.device)
    preset = presets(args.mid_layers, args.mid_heads)[args.preset]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # CPU: fp32, as the trainer runs there
    print(f"device {device_name(device)} | torch {torch.__version__} | {thread_line()}")
    head = {"script": "bench_step", "device": str(device), "gpu": device_name(device), "preset": preset.name,
            "strategy": args.strategy, "dtype": str(dtype).replace("torch.", ""), "lora_rank": preset.lora_rank}
    if args.strategy == "fsdp":
        res = run_fsdp(preset, device, dtype, args.warmup, args.gpu_steps, args.full_finetune)
        return {**head, "full_finetune": args.full_finetune, **res}
    if args.attention == "xformers" and importlib.util.find_spec("xformers") is None:
        print("attention=xformers: xformers is not installed here; skipped")
        return {**head, "attention": "xformers", "skipped": "xformers not present"}
    if args.attention == "xformers" and device.type != "cuda":
        print("attention=xformers needs CUDA; skipped")
        return {**head, "attention": "xformers", "skipped": "xformers needs CUDA"}
    specs = args.checkpointing.split(",") if args.checkpointing else ["all"]
    if len(specs) > 1:
        if args.compile or args.fp8 or args.attention != "sdpa":
            raise SystemExit("--checkpointing with several specs compares eager sdpa steps: drop --compile/--fp8/--attention")
        return {**head, **run_checkpointing(preset, device, dtype, args.warmup, args.gpu_steps, specs, args.gpu_memory_gb)}
    checkpointing, _ = resolve_checkpointing(specs[0], preset, device, args.gpu_memory_gb)
    head["checkpointing"] = checkpointing
    compile_kwargs = {"backend": args.compile_backend} if args.compile else None
    head.update(compile=args.compile_backend if args.compile else None, fp8=args.fp8)
    if args.fp8:
        from stages.distill.fp8 import fp8_refusal

        why = fp8_refusal(device)
        if why is not None:  # the trainer's own refusal (CPU, pre-Ada GPU, no torchao)
            print(f"fp8: {why}; skipped")
            return {**head, "skipped": why}
    res = run_synthetic(preset, device, dtype, args.warmup, args.gpu_steps, 1, args.attention, compile_kwargs, args.fp8, checkpointing)
    speed = "".join([f", compiled ({args.compile_backend}, {res['compiled_graphs']} graphs)" if args.compile else "",
                     ", fp8" if args.fp8 else ""])
    report_pair(f"{preset.name} (synthetic, {head['dtype']}, LoRA r{preset.lora_rank}, gradient checkpointing, "
                f"attention {res['attention']}{speed})", res["seconds"]["lgf"], res["seconds"]["plain"])  # fmt: skip
    print(f"first step (in the warm-up; with compile, its compile time): lgf {res['first_step_s']['lgf']:.1f} s | "
          f"plain {res['first_step_s']['plain']:.1f} s")
    pk = res["peak_gib"]
    if pk is not None:
        print(f"peak GPU memory per step: lgf {pk['lgf']:.2f} GiB | plain {pk['plain']:.2f} GiB | "
              f"difference {pk['lgf'] - pk['plain']:+.2f} GiB")  # fmt: skip
    med = {v: median(x) for v, x in res["seconds"].items()}
    return {**head, "attention": res["attention"], "params_b": res["params"] / 1e9, "trainable_m": res["trainable"] / 1e6,
            "build_s": res["build_s"], "s_per_step": med, "ratio_lgf_plain": med["lgf"] / med["plain"],
            "peak_gib": pk, "steps": res["seconds"], "first_step_s": res["first_step_s"],
            "compiled_graphs": res["compiled_graphs"]}  # fmt: skip


def run_dry(args: argparse.Namespace) -> dict:
    """Build the GPU path's model, optimiser and batch on the meta device (no memory, no step): checks
    the real config and the construction logic anywhere, e.g. on a CPU box before a GPU run."""
    preset = presets(args.mid_layers, args.mid_heads)[args.preset]
    meta = torch.device("meta")
    parts = build_synthetic(preset, meta, torch.bfloat16)
    batch = parts_batch(parts, preset.teacher_channels, meta)
    base = sum(p.numel() for p in parts.transformer.parameters() if not p.requires_grad)
    lora = sum(p.numel() for p in parts.optimizer.param_groups[0]["params"])
    proj = sum(p.numel() for p in parts.optimizer.param_groups[1]["params"])
    cfg = parts.transformer.config
    (t, h8, w8), text_len = parts.latent_shape, parts.text_len
    print(f"[dry run, {preset.name}: {preset.family} {preset.task}] {cfg.num_layers} blocks, {cfg.num_attention_heads}x"
          f"{cfg.attention_head_dim} heads, text {text_len}x{student_of(parts.transformer).text_dim(cfg)}, latents {t}x{h8}x{w8}, "
          f"RoPE {getattr(cfg, 'use_rotary_positional_embeddings', True)}, learned pos {getattr(cfg, 'use_learned_positional_embeddings', False)}")  # fmt: skip
    print(f"  frozen base {base / 1e9:.3f} B params ({parts.transformer.dtype}), LoRA r{preset.lora_rank} {lora / 1e6:.1f} M, "
          f"projector {proj / 1e6:.1f} M ({parts.projector.spec}), tap block {preset.tap_block}, "
          f"gradient checkpointing {parts.transformer.is_gradient_checkpointing}")  # fmt: skip
    shapes = [f"{k} {list(v.shape)} {str(v.dtype).replace('torch.', '')}" for k, v in batch.items() if torch.is_tensor(v)]
    print("  batch: " + ", ".join(shapes))
    print(f"  rotary: cos {list(parts.rotary[0].shape)}" if parts.rotary is not None else "  rotary: none")
    return {"script": "bench_step", "device": "meta", "preset": preset.name, "base_params_b": base / 1e9,
            "lora_params_m": lora / 1e6, "projector_params_m": proj / 1e6, "layers": cfg.num_layers,
            "gradient_checkpointing": bool(parts.transformer.is_gradient_checkpointing)}


def write_json(path: str | None, figures: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(figures, indent=1))


def time_report_close(label: str, trainers: dict, warmup: int, steps: int) -> None:
    """Time the two trainers interleaved, print the ratio and the parity check, release them."""
    runs = time_trainers(trainers, warmup, steps)
    report_trainers(f"{label} (Trainer.train_step, streaming the store)", runs)
    batch = next(trainers["lgf"].batches())[0]
    ours, theirs = check_parity(trainers["lgf"], batch)
    print(f"    parity: synthetic-path loss {ours:.6f} vs Trainer.train_step loss {theirs:.6f} "
          f"(rel diff {abs(ours - theirs) / abs(theirs):.1e})")  # fmt: skip
    for t in trainers.values():
        t.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu (store path) or cuda[:N] (synthetic path)")
    ap.add_argument("--real", action="store_true", help="GPU: the real CogVideoX-5B-I2V transformer size")
    ap.add_argument("--store", default=None, help="reuse this store (tiny-student geometry) instead of extracting one")
    ap.add_argument("--clips", type=int, default=8, help="clips to extract into the temporary store")
    ap.add_argument("--frames", type=int, default=49, help="pixel frames per clip (49 -> 13 latent frames)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per variant (tiny student)")
    ap.add_argument("--batch-size", type=int, default=None, help="tiny student batch (default: sample.yaml's)")
    ap.add_argument("--workers", type=int, default=1, help="data.num_workers (DataLoader processes per trainer)")
    ap.add_argument("--mid", action=argparse.BooleanOptionalAction, default=True, help="also time the mid-size student")
    ap.add_argument("--mid-layers", type=int, default=6)
    ap.add_argument("--mid-heads", type=int, default=6, help="64-wide heads")
    ap.add_argument("--mid-batch-size", type=int, default=1)
    ap.add_argument("--mid-steps", type=int, default=8, help="timed steps per variant (mid student)")
    ap.add_argument("--gpu-steps", type=int, default=5, help="timed steps per variant on GPU")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--dry-run", action="store_true", help="build the synthetic (GPU) path on the meta device and stop")
    ap.add_argument("--preset", default=None, choices=["real", "mid", "tiny", "wan-1.3b", "wan-14b", "wan-tiny"],
                    help="synthetic-path student (default: real with --real, else mid); real = CogVideoX-5B-I2V, wan-1.3b / "
                         "wan-14b = Wan 2.1 T2V at 81x480x832, wan-tiny = the tiny Wan")
    ap.add_argument("--synthetic", action="store_true", help="run the synthetic (GPU) path on --device, e.g. on CPU")
    ap.add_argument("--attention", default="sdpa", choices=["sdpa", "xformers"],
                    help="synthetic path: student.attention (xformers: skipped when it does not import)")
    ap.add_argument("--strategy", default="single", choices=["single", "fsdp"],
                    help="synthetic path: fsdp = FSDP2 over one rank through stages.distill.parallel (lgf steps only)")
    ap.add_argument("--full-finetune", action="store_true", help="--strategy fsdp: train every weight (fp32 masters) instead of LoRA")
    ap.add_argument("--compile", action="store_true", help="synthetic path: student.compile (each block torch.compiled in place)")
    ap.add_argument("--compile-backend", default="inductor", choices=["inductor", "aot_eager", "eager"],
                    help="--compile: student.compile.backend (aot_eager: no code generation, for quick CPU dry runs)")
    ap.add_argument("--fp8", action="store_true", help="synthetic path: student.fp8 (torchao Float8Linear; skipped where refused)")
    ap.add_argument("--checkpointing", default=None,
                    help="synthetic path: student.checkpointing (all|none|every:N|blocks:K|auto); two or more, comma-separated "
                         "(e.g. auto,all): compared on one student in one run, lgf steps, ratio = first / second")
    ap.add_argument("--gpu-memory-gb", type=float, default=None,
                    help="--checkpointing auto: the capacity the memory plan fits (parallel.gpu_memory_gb; default: the GPU's)")
    ap.add_argument("--json", default=None, help="synthetic and dry-run paths: also write the figures to this JSON file")
    args = ap.parse_args()
    args.preset = args.preset or ("real" if args.real else "mid")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.dry_run:
        write_json(args.json, run_dry(args))
        return
    if args.preset in REAL_PRESETS and not args.device.startswith("cuda"):
        ap.error(f"--preset {args.preset} builds a real-size transformer: it needs --device cuda (or --dry-run)")
    print(thread_line())
    if args.device.startswith("cuda") or args.synthetic:
        write_json(args.json, run_gpu(args))
        return
    with tempfile.TemporaryDirectory(prefix="bench-step-") as tmp:
        run_cpu(args, Path(tmp))
    print(f"end: {thread_line()}")


if __name__ == "__main__":
    main()
