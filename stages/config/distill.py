"""Schema of a distillation run (`sam2videox distill`): student, tap, projector, losses, optimiser, data.

Every [chosen] default of docs/method.md is a field here (LoRA rank 128 on q/k/v/out, tap block 16,
projector D -> 2048 -> 2048 -> C, lambda_lgf 0.5 with k 7 / tau 0.1 / offsets [1] / gram fusion,
t uniform over 1000 steps), so a baseline or sweep is a config change, never a code change.
Loaded with `stages.config.loader.load_config(DistillConfig, path, overrides)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from stages.config.extract import LGFConfig


def _check_schedule(name: str, warmup_steps: int, cutoff_step: int | None) -> None:
    if warmup_steps < 0:
        raise ValueError(f"{name}.warmup_steps must be >= 0, got {warmup_steps}")
    if cutoff_step is not None and cutoff_step < 1:
        raise ValueError(f"{name}.cutoff_step must be >= 1 or null (never cut off), got {cutoff_step}")


CHECKPOINTING_FORMS = "all, none, every:N (N >= 1), blocks:K (K >= 0), auto"


def parse_checkpointing(spec: str) -> tuple[str, int]:
    """student.checkpointing -> (kind, n): ("all", 0), ("none", 0), ("every", N), ("blocks", K), ("auto", 0)."""
    text = str(spec).strip().lower()
    if text in ("all", "none", "auto"):
        return text, 0
    kind, _, number = text.partition(":")
    if kind in ("every", "blocks") and number.strip().isdigit():
        n = int(number)
        if n >= (1 if kind == "every" else 0):
            return kind, n
    raise ValueError(f"student.checkpointing={spec!r} is not one of: {CHECKPOINTING_FORMS}")


@dataclass
class LoRAConfig:
    rank: int = 128  # r of every adapted projection (method.md [chosen])
    alpha: float = 128.0  # LoRA scale = alpha / rank; stored in the exported file, so loaders reproduce it
    # attention q, k, v and out projections of every block
    targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    dropout: float = 0.0  # dropout on the LoRA branch input

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lora.rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"lora.alpha must be > 0, got {self.alpha}")
        if not self.targets:
            raise ValueError("lora.targets must name at least one module (e.g. to_q)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class StudentCompileConfig:
    """student.compile: regional torch.compile, each transformer block compiled in place (stages/core/compiling.py).

    One block's graph serves every block (they share code; parameters are graph inputs), so compile time is
    that of one block, not of the model. LoRA, the feature tap and checkpointing keep working (the tap's hook
    runs eagerly beside the compiled block). Off by default; same maths, other kernels (a resume may switch it).
    """

    enabled: bool = False
    backend: Literal["inductor", "aot_eager", "eager"] = "inductor"  # aot_eager/eager: debugging graphs, no codegen
    mode: str | None = None  # inductor's mode (COMPILE_MODES); null: torch's default

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in COMPILE_MODES:
            raise ValueError(f"student.compile.mode={self.mode!r} is not one of: {', '.join(COMPILE_MODES)} (or null)")
        if self.mode is not None and self.backend != "inductor":
            raise ValueError(f"student.compile.mode={self.mode!r} is an inductor option: set student.compile.backend=inductor or mode=null")

    def kwargs(self) -> dict[str, Any]:
        """torch.compile keyword arguments (mode only when set: torch refuses mode with another backend)."""
        return {"backend": self.backend, **({"mode": self.mode} if self.mode else {})}


@dataclass
class StudentConfig:
    model: str = "THUDM/CogVideoX-5b-I2V"  # diffusers-format folder or hub id (transformer/, scheduler/), or "tiny"
    # i2v: first-frame latent concatenated on channels (in_channels 32); ti2v: Wan 2.2 TI2V, latent frame 0 kept clean
    task: Literal["i2v", "t2v", "ti2v"] = "i2v"
    # a registered family (stages/families/registry.py: cogvideox, wan, ...), checked against the registry when the
    # student is resolved (the trainer's first step, the memory plan); None: from the model (a family's tiny preset or
    # known hub id, or transformer/config.json's class)
    family: str | None = None
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"  # frozen base weights on GPU (CPU runs fp32)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    full_finetune: bool = False  # train every transformer weight instead of LoRA (lora.* then ignored)
    gradient_checkpointing: bool = True  # recompute blocks in backward; the feature tap is safe with it
    # selective activation checkpointing (stages/distill/recompute.py), overriding gradient_checkpointing when set:
    #   "all" | "none" | "every:N" (blocks 0, N, 2N, ...) | "blocks:K" (K blocks, spread evenly) |
    #   "auto" (the memory plan's fastest choice, fewest recomputed blocks, that fits parallel.gpu_memory_gb or the GPU)
    # null: "all" when gradient_checkpointing is true, else "none" (the behaviour before this key)
    checkpointing: str | None = None
    attention: Literal["sdpa", "xformers"] = "sdpa"  # xformers only when installed and on CUDA, else SDPA
    compile: StudentCompileConfig = field(default_factory=StudentCompileConfig)  # regional torch.compile (off)
    # FP8 matmuls through torchao's float8 training (Float8Linear, dynamic tensorwise scales): LoRA runs convert
    # the frozen base linears of the blocks (never peft's lora_A/lora_B), full fine-tuning every block linear;
    # only linears whose in and out features are multiples of 16. Needs CUDA compute capability >= 8.9
    # (Ada/Hopper) and torchao; refused in one line elsewhere (stages/distill/fp8.py)
    fp8: bool = False

    def __post_init__(self) -> None:
        if self.checkpointing is not None:
            parse_checkpointing(self.checkpointing)  # one line naming the forms, at load

    @property
    def checkpointing_spec(self) -> str:
        """student.checkpointing, or what gradient_checkpointing meant before it ("all" / "none")."""
        return self.checkpointing or ("all" if self.gradient_checkpointing else "none")


@dataclass
class TapConfig:
    block: int = 16  # L: features are the video tokens output by transformer block L (0-based; 16 of 42)

    def __post_init__(self) -> None:
        if self.block < 0:
            raise ValueError(f"tap.block must be >= 0, got {self.block}")


@dataclass
class ProjectorConfig:
    hidden: int = 2048  # width of the hidden layers (REPA-style MLP)
    layers: int = 2  # hidden layers: 2 gives D -> 2048 -> 2048 -> C_teacher
    out_channels: int | None = None  # None: the teacher column's channel count (256: memory_attention of released SAM2; 64 maskmem)

    def __post_init__(self) -> None:
        if self.hidden < 1:
            raise ValueError(f"projector.hidden must be >= 1, got {self.hidden}")
        if self.layers < 1:
            raise ValueError(f"projector.layers must be >= 1, got {self.layers}")
        if self.out_channels is not None and self.out_channels < 1:
            raise ValueError(f"projector.out_channels must be >= 1 or null, got {self.out_channels}")


@dataclass
class LGFCutoffConfig:
    """Cut (or decay) L_feat once held-out teacher agreement stops improving (stages/distill/cutoff.py).

    At each validation (eval.every) the held-out `metric` (a KL: lower = closer to the teacher) is compared
    with its best so far; after `patience` validations without an improvement of more than `min_delta`, the
    LGF weight is multiplied by `factor` (0: off for the rest of the run) and the count starts again.
    """

    patience: int = 0  # validations without improvement before a cut; 0 = off (needs eval.every > 0)
    min_delta: float = 0.0  # an improvement must lower the metric by more than this
    metric: Literal["lgf_projected", "lgf"] = "lgf_projected"  # validation's KL on the projector output / raw tap tokens
    factor: float = 0.0  # the weight's multiplier at each cut: 0 stops the loss, 0.5 halves it

    def __post_init__(self) -> None:
        if self.patience < 0 or self.min_delta < 0:
            raise ValueError(f"losses.lgf.cutoff.patience and min_delta must be >= 0, got {self.patience}, {self.min_delta}")
        if not 0.0 <= self.factor < 1.0:
            raise ValueError(f"losses.lgf.cutoff.factor must be in [0, 1), got {self.factor}")


@dataclass
class LGFLossConfig(LGFConfig):
    """L_feat: KL between teacher and student Local Gram Flow (kernel/tau/offsets/fusion as in stage one).

    When kernel, tau, offsets and fusion equal the teacher column's, the stored fused target is used;
    otherwise it is recomputed from the stored fwd/bwd features (a sweep needs no new extraction).
    """

    weight: float = 0.5  # lambda_lgf (method.md [chosen]); 0 = the plain LoRA baseline
    warmup_steps: int = 0  # weight ramps linearly from 0 over this many steps
    cutoff_step: int | None = None  # weight is 0 from this step on (null: never)
    cutoff: LGFCutoffConfig = field(default_factory=LGFCutoffConfig)  # by held-out agreement (off by default)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weight < 0:
            raise ValueError(f"losses.lgf.weight must be >= 0, got {self.weight}")
        _check_schedule("losses.lgf", self.warmup_steps, self.cutoff_step)


@dataclass
class REPALossConfig:
    """REPA baseline: negative cosine between projected student tokens and teacher features."""

    weight: float = 0.0
    teacher: Literal["fwd", "mean"] = "fwd"  # forward-pass features, or the mean of fwd and bwd
    warmup_steps: int = 0
    cutoff_step: int | None = None

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"losses.repa.weight must be >= 0, got {self.weight}")
        _check_schedule("losses.repa", self.warmup_steps, self.cutoff_step)


@dataclass
class MaskLossConfig:
    """Mask-supervision baseline: a linear head on projected features predicts SAM2's subject mask."""

    weight: float = 0.0
    bce_weight: float = 1.0  # BCE + Dice, each scaled
    dice_weight: float = 1.0
    warmup_steps: int = 0
    cutoff_step: int | None = None

    def __post_init__(self) -> None:
        if min(self.weight, self.bce_weight, self.dice_weight) < 0:
            raise ValueError("losses.mask.weight, bce_weight and dice_weight must be >= 0")
        _check_schedule("losses.mask", self.warmup_steps, self.cutoff_step)


@dataclass
class LossesConfig:
    lgf: LGFLossConfig = field(default_factory=LGFLossConfig)
    repa: REPALossConfig = field(default_factory=REPALossConfig)
    mask: MaskLossConfig = field(default_factory=MaskLossConfig)

    @property
    def needs_projector(self) -> bool:
        """Whether any feature loss is on (otherwise the tap and projector can be skipped)."""
        return max(self.lgf.weight, self.repa.weight, self.mask.weight) > 0


@dataclass
class DiffusionConfig:
    """L_diff as in diffusers' CogVideoX LoRA scripts: v-prediction, x0 target, weight 1 / (1 - alpha_bar_t)."""

    timesteps: int = 1000  # t ~ U{0, ..., timesteps - 1}; at most the scheduler's num_train_timesteps
    image_dropout: float = 0.05  # I2V: zero the conditioning image latent of a sample with this probability
    # The conditioning image was already noised (log-normal sigma) at extraction: see encoders.image_noise_*.

    def __post_init__(self) -> None:
        if self.timesteps < 1:
            raise ValueError(f"diffusion.timesteps must be >= 1, got {self.timesteps}")
        if not 0.0 <= self.image_dropout <= 1.0:
            raise ValueError(f"diffusion.image_dropout must be in [0, 1], got {self.image_dropout}")


@dataclass
class OptimConfig:
    lr: float = 1e-4  # AdamW learning rate of the LoRA (diffusers' CogVideoX LoRA script default)
    projector_lr: float | None = None  # None: same as lr
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 1e-4
    eps: float = 1e-8
    warmup_steps: int = 100  # linear LR warm-up
    schedule: Literal["constant", "cosine"] = "cosine"  # after warm-up
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of lr
    grad_clip: float | None = 1.0  # max global grad norm; null: no clipping
    accumulation: int = 1  # micro-batches per optimiser step
    # CUDA autocast dtype (and FSDP's all-gather dtype); trainable params are fp32 masters in every case.
    # fp16 runs scale the loss with torch.amp.GradScaler (bf16 needs no scaling).
    mixed_precision: Literal["no", "bf16", "fp16"] = "bf16"

    def __post_init__(self) -> None:
        if self.lr <= 0 or (self.projector_lr is not None and self.projector_lr <= 0):
            raise ValueError("optim.lr and optim.projector_lr must be > 0")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")
        if self.weight_decay < 0 or self.eps <= 0:
            raise ValueError("optim.weight_decay must be >= 0 and optim.eps > 0")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"optim.grad_clip must be > 0 or null, got {self.grad_clip}")
        if self.accumulation < 1:
            raise ValueError(f"optim.accumulation must be >= 1, got {self.accumulation}")


@dataclass
class EMAConfig:
    """Exponential moving average of the student's trainable weights (LoRA or all; not the projector).

    After each optimiser step: ema = decay * ema + (1 - decay) * weight, on the fp32 masters (sharded like
    them under FSDP). Saved in every checkpoint, resumed exactly, exported beside the raw weights
    (lora_ema/ or transformer_ema/); `evaluate --ema` samples it.
    """

    decay: float | None = None  # e.g. 0.999; null = off

    def __post_init__(self) -> None:
        if self.decay is not None and not 0.0 < self.decay < 1.0:
            raise ValueError(f"train.ema.decay must be in (0, 1) or null (off), got {self.decay}")


@dataclass
class TrainConfig:
    steps: int = 2000  # optimiser steps
    batch_size: int = 1  # clips per micro-batch per rank
    seed: int = 0  # per-step noise derives from (seed, step, rank): a resumed run draws the same noise
    caption_dropout: float = 0.0  # replace a sample's prompt with the empty prompt (0: as diffusers' script)
    checkpoint_every: int = 500  # steps between resumable checkpoints
    keep_last: int = 3  # checkpoints kept on disk
    log_every: int = 10  # steps between scalar logs
    ema: EMAConfig = field(default_factory=EMAConfig)  # EMA weights (off by default)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "keep_last", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise ValueError(f"train.caption_dropout must be in [0, 1], got {self.caption_dropout}")


@dataclass
class FilterConfig:
    """Teacher-quality filter, decided at stream start from the teacher column's per-clip quality
    records (stages/distill/teacher_filter.py; no array is read). A clip failing any active rule is
    neither streamed nor counted. Every threshold compares a value of the record with `<`: a clip
    whose value is below it is dropped; null turns that rule off.

    lost_subject (default on): drop a clip where SAM2 lost the subject in some frame of either pass:
        presence_min < 0.5 (SAM2's object-score logit below 0, the frames it blanks the mask of),
        or area_fwd_min == 0 or area_bwd_min == 0 (an empty mask in some frame).
    """

    enabled: bool = True  # false: no clip is dropped, no record is read
    lost_subject: bool = True  # the rule above
    min_object_score: float | None = None  # drop if min(object_score_fwd, object_score_bwd) < this (mean presence per pass)
    min_area: float | None = None  # drop if min(area_fwd_min, area_bwd_min) < this (mask area, fraction of the frame)
    min_iou: float | None = None  # drop if iou_fwd_bwd < this (mean per-frame IoU of the two passes' masks)

    def __post_init__(self) -> None:
        for name in ("min_object_score", "min_area", "min_iou"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"data.filter.{name} must be in [0, 1] or null (rule off), got {value}")


@dataclass
class DataConfig:
    store: str = "out/sample-store"  # feature store folder or fsspec URL (stage one's output)
    teacher_column: str | None = None  # teacher column selector (its name/hash); None: the only one in the store
    encodings_column: str | None = None  # encodings column selector; None: the only one in the store
    shuffle_buffer: int = 64  # samples held for shuffling
    num_workers: int = 2  # data-loading worker processes per rank
    storage_options: dict = field(default_factory=dict)  # passed to fsspec (e.g. endpoint_url for s3)
    # a clip whose arrays fail their commit checksum (or whose shard cannot be read): fail stops the
    # run naming store, column, shard, clip and array; skip logs it, leaves it out and counts it
    on_corrupt: Literal["fail", "skip"] = "fail"
    # columns that committed different shards: refused naming the gaps; true trains on the shards every
    # column committed, logging what is left out
    allow_partial_columns: bool = False
    # teacher-quality filter (default: drop lost-subject clips); counts per rule in the log and summary.json
    filter: FilterConfig = field(default_factory=FilterConfig)
    # held-out split (stages/store/holdout.py): clips whose sha256(key) falls below this fraction are never
    # trained on (at least one when > 0); validation and `evaluate` read them from <out>/holdout.json
    holdout: float = 0.05
    holdout_keys: list[str] = field(default_factory=list)  # clip keys held out besides the fraction's

    def __post_init__(self) -> None:
        if not 0.0 <= self.holdout < 1.0:
            raise ValueError(f"data.holdout must be in [0, 1), got {self.holdout}")
        if self.shuffle_buffer < 0:
            raise ValueError(f"data.shuffle_buffer must be >= 0, got {self.shuffle_buffer}")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")


@dataclass
class EvalConfig:
    """Validation during training on the held-out clips (stages/distill/validation.py)."""

    every: int = 0  # optimiser steps between validations; 0 = off
    timesteps: list[int] = field(default_factory=lambda: [100, 500, 900])  # L_diff at these t, fixed noise per (clip, t)
    max_clips: int = 16  # the first this many held-out keys (sorted): a fixed list, the same in every run
    seed: int = 0  # noise seed: the same for runs and ablations, so their validation losses compare
    # sample videos (stages/distill/samples.py): the stock I2V pipeline around the student being trained,
    # from the first held-out clips' first frames and captions; the VAE and T5 load only then
    sample_every: int = 0  # optimiser steps between samples; 0 = off
    sample_clips: int = 1  # held-out clips sampled (the first keys of the validation list)
    sample_steps: int | None = None  # denoising steps; None: 50 on a GPU, 8 on a CPU (as `generate`)
    sample_guidance: float = 6.0  # classifier-free guidance scale (1 = off)

    def __post_init__(self) -> None:
        if self.every < 0 or self.sample_every < 0:
            raise ValueError(f"eval.every and eval.sample_every must be >= 0 (0: off), got {self.every}, {self.sample_every}")
        if self.sample_clips < 1 or (self.sample_steps is not None and self.sample_steps < 1):
            raise ValueError("eval.sample_clips and eval.sample_steps must be >= 1")
        if not self.timesteps or any(t < 0 for t in self.timesteps):
            raise ValueError(f"eval.timesteps must be a non-empty list of timesteps >= 0, got {self.timesteps}")
        if self.max_clips < 1:
            raise ValueError(f"eval.max_clips must be >= 1, got {self.max_clips}")


@dataclass
class ParallelConfig:
    """How ranks share the student (torchrun sets the world size; one process per GPU).

    ddp:  every rank holds the whole model, gradients all-reduced (LoRA at 5B fits on 80 GB).
    fsdp: FSDP2 (`fully_shard` per transformer block, then the projector and the root): weights,
          gradients and AdamW state sharded over all ranks; bf16 all-gather, fp32 reduce-scatter.
    hsdp: FSDP2 inside groups of `shard_size` ranks (a node), replicated across groups.
    context: context-parallel degree (fsdp only): each group of `context` consecutive ranks runs one sample's
          forward with the token sequence split between them (diffusers' context parallelism, Ulysses attention:
          an all-to-all trades sequence shards for head shards around each attention). world = dp x context; the
          ranks of one group read the same batch; FSDP2 shards the weights over all ranks. The family says whether
          its transformer has a plan for it (Family.enable_context_parallel); 1 = off.
    """

    strategy: Literal["ddp", "fsdp", "hsdp"] = "ddp"
    shard_size: int | None = None  # hsdp: ranks per shard group (None: LOCAL_WORLD_SIZE, i.e. one node)
    reshard_after_forward: bool = True  # fsdp: free gathered block weights after forward (ZeRO-3); False: ZeRO-2-like
    memory_check: bool = True  # refuse a run whose memory plan exceeds the GPU before step one
    gpu_memory_gb: float | None = None  # GiB per GPU for the check (None: read from the device)
    context: int = 1  # context-parallel degree: ranks that split one sample's token sequence (fsdp only; 1 = off)

    def __post_init__(self) -> None:
        if self.context < 1:
            raise ValueError(f"parallel.context must be >= 1, got {self.context}")
        if self.context > 1 and self.strategy != "fsdp":
            raise ValueError(f"parallel.context={self.context} needs parallel.strategy=fsdp (context groups are composed with FSDP2), got {self.strategy}")
        if self.shard_size is not None and self.shard_size < 1:
            raise ValueError(f"parallel.shard_size must be >= 1 or null, got {self.shard_size}")
        if self.gpu_memory_gb is not None and self.gpu_memory_gb <= 0:
            raise ValueError(f"parallel.gpu_memory_gb must be > 0 or null, got {self.gpu_memory_gb}")

    @property
    def sharded(self) -> bool:
        return self.strategy in ("fsdp", "hsdp")


@dataclass
class DistillConfig:
    student: StudentConfig = field(default_factory=StudentConfig)
    tap: TapConfig = field(default_factory=TapConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    losses: LossesConfig = field(default_factory=LossesConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    out: str = "runs/distill"  # run folder: checkpoints, logs, the exported LoRA

    def __post_init__(self) -> None:
        if self.losses.lgf.cutoff.patience > 0 and self.eval.every == 0:
            raise ValueError("losses.lgf.cutoff needs held-out validation: set eval.every > 0 (the cut is decided at each validation)")
        late = [t for t in self.eval.timesteps if t >= self.diffusion.timesteps]
        if late:  # validation measures the timesteps the run trains on
            raise ValueError(f"eval.timesteps {late} must be < diffusion.timesteps ({self.diffusion.timesteps})")
        if self.parallel.context > 1 and self.student.attention != "sdpa":
            # diffusers' Ulysses attention wraps its native (SDPA) backend; xformers has no context-parallel path
            raise ValueError(f"parallel.context={self.parallel.context} needs student.attention=sdpa, got {self.student.attention}")


# Tiny preset for tests and the demo: every size shrunk, every switch kept. Build it with
# `stages.config.loader.from_dict(DistillConfig, TINY)`. The tiny student's latent grid is 16x24
# (128x192 pixels), its text length 16 and text width 32 (see stages/families/cogvideox/transformer.py).
TINY: dict[str, Any] = {
    "student": {
        "model": "tiny",
        "dtype": "float32",
        "device": "cpu",
        "lora": {"rank": 4, "alpha": 8.0},  # alpha != rank so a lost scale shows up in tests
    },
    "tap": {"block": 1},
    "projector": {"hidden": 32, "layers": 2},
    "losses": {"lgf": {"kernel": 3}},
    "optim": {"warmup_steps": 1, "mixed_precision": "no"},
    "train": {"steps": 4, "batch_size": 1, "checkpoint_every": 2, "keep_last": 2, "log_every": 1},
    "data": {"shuffle_buffer": 4, "num_workers": 0},
    "out": "out/tiny-distill",
}
