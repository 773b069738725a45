"""Memory plan of a distillation run: bytes per GPU before anything is allocated.

The student is built on the meta device (no memory, no weights), configured exactly as the trainer
configures it (LoRA or full fine-tuning, fp32 masters), and its parameters are counted. Per GPU:

    weights      frozen base weights in the student dtype (FSDP: 1/S of them)
    masters      trainable parameters, fp32 (LoRA or all weights, plus the projector)
    grads        fp32 gradients of the masters (DDP with >1 rank: plus its all-reduce buckets)
    optimizer    AdamW exp_avg + exp_avg_sq, fp32
    gathered     FSDP: two blocks' unsharded weights (current + prefetched) and one block's unsharded
                 fp32 gradients before reduce-scatter, plus the root's weights
    autocast     DDP full fine-tuning: bf16 copies of fp32 weights that CUDA autocast caches for a step
    activations  per micro-batch: a checkpointed block keeps its inputs (plus one block recomputed in
                 backward), any other block all its saved tensors; the tap, projector (fp32) and LGF terms on top

Selective checkpointing (student.checkpointing, stages/distill/recompute.py): the plan holds the
activations for every count of checkpointed blocks, 0..L, so `fastest_fit(capacity)` answers "auto":
the fewest checkpointed blocks (the least recompute, so the fastest step) whose total fits.

S is the shard group: the world size for fsdp, parallel.shard_size for hsdp. Activation bytes are an
estimate (coefficients from the CogVideoX block's saved tensors, checked against a measured CPU step
in tests/distill/test_memory_plan.py); everything else is exact counting.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

# Tensors a CogVideoX block keeps for backward, in (tokens x width) elements, measured with
# saved_tensors_hooks on CPU (tests/distill/test_memory_plan.py keeps them honest): a LoRA block keeps ~20
# (frozen linears keep no inputs for weight gradients), a fully trained one ~29; under checkpointing a
# block keeps only its input, ~1. Outside the blocks (patch embedding, final norm, output): ~2.5.
BLOCK_SAVED_LORA = 20
BLOCK_SAVED_FULL = 29
CHECKPOINT_SAVED = 1.0
OUTSIDE_BLOCKS = 2.5
AUTOCAST_MIX = 1.25  # under bf16 autocast some kept tensors stay fp32 (norm outputs, softmax stats)
CUDA_CONTEXT_BYTES = 600 * 2**20  # CUDA context + cuBLAS/cuDNN workspaces, not in torch's allocator
FRAGMENTATION = 1.10  # caching-allocator slack on top of live tensors

class MemoryPlanError(ValueError):
    """The configured run cannot fit the GPU; the message gives the figures and the fix."""


@dataclass
class MemoryPlan:
    model: str
    strategy: str
    world: int
    shard_group: int  # ranks a parameter is sharded over (1 for ddp)
    full_finetune: bool
    params: int  # every transformer parameter
    trainable: int  # of which trained (LoRA or all)
    projector: int  # projector parameters (trained, fp32)
    tokens: int  # text + video tokens per sample
    context: int = 1  # parallel.context: ranks that split one sample's tokens (each block holds tokens / context)
    weights: int = 0
    masters: int = 0
    grads: int = 0
    optimizer: int = 0
    gathered: int = 0
    autocast: int = 0
    activations: int = 0
    blocks: int = 0  # transformer blocks
    checkpointing: str = "all"  # the resolved student.checkpointing of these activations
    checkpointed: int = 0  # blocks that recompute in backward
    # the speed switches, shown but not modelled: a compiled or FP8 step is planned as the eager one
    # (inductor may fuse away some saved tensors, torchao keeps bf16 weights and saves high-precision inputs)
    compile: str | None = None  # student.compile's backend when on
    fp8: bool = False  # student.fp8
    # activations bytes with k = 0..blocks checkpointed blocks (for fastest_fit; not in the JSON)
    by_checkpointed: list[int] = field(default_factory=list, repr=False)

    def with_checkpointed(self, count: int) -> "MemoryPlan":
        """The same run with `count` blocks checkpointed (spread evenly: recompute.spec_for)."""
        from stages.distill.recompute import spec_for

        return replace(self, checkpointed=count, checkpointing=spec_for(count, self.blocks), activations=self.by_checkpointed[count])

    def fastest_fit(self, capacity: int) -> "MemoryPlan | None":
        """The plan with the fewest checkpointed blocks whose total fits `capacity` bytes; None when even all do not."""
        for count in range(self.blocks + 1):
            plan = self.with_checkpointed(count)
            if plan.total <= capacity:
                return plan
        return None

    @property
    def parts(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("weights", "masters", "grads", "optimizer", "gathered", "autocast", "activations")}

    @property
    def total(self) -> int:
        """Estimated peak bytes per GPU: live tensors with allocator slack, plus the CUDA context."""
        return int(sum(self.parts.values()) * FRAGMENTATION) + CUDA_CONTEXT_BYTES

    def table(self) -> str:
        kind = "full fine-tuning" if self.full_finetune else "LoRA"
        lines = [
            f"{self.model}: {self.params / 1e9:.3f} B parameters, {self.trainable / 1e6:.1f} M trained ({kind}) "
            f"+ {self.projector / 1e6:.1f} M projector; {self.tokens} tokens per sample"
            + (f", {-(-self.tokens // self.context)} per GPU in the blocks (parallel.context={self.context})" if self.context > 1 else ""),
            f"{self.strategy} over {self.world} GPU(s), parameters sharded over {self.shard_group}; per GPU:",
        ]
        lines += [f"  {name:12s} {value / 2**30:8.2f} GiB" for name, value in self.parts.items()]
        lines.append(f"  {'total':12s} {self.total / 2**30:8.2f} GiB  (x{FRAGMENTATION} allocator slack + CUDA context)")
        lines.append(f"  checkpointing {self.checkpointing}: {self.checkpointed} of {self.blocks} blocks recompute in backward")
        speed = [f"compile ({self.compile})"] * bool(self.compile) + ["fp8"] * self.fp8
        if speed:
            lines.append(f"  {' + '.join(speed)}: not modelled, planned as the eager step")
        return "\n".join(lines)

    def to_json(self) -> dict:
        out = {**asdict(self), "total": self.total}
        out.pop("by_checkpointed")
        return out

    def refusal(self, capacity: int) -> str:
        need, have = self.total / 2**30, capacity / 2**30
        fixes = []
        if self.strategy == "ddp":
            fixes.append("parallel.strategy=fsdp (shards weights, gradients and AdamW state over the GPUs)")
        elif self.shard_group < 8:
            fixes.append("more GPUs in the shard group (torchrun --nproc_per_node / parallel.shard_size)")
        if self.full_finetune:
            fixes.append("LoRA instead of full fine-tuning (student.full_finetune=false)")
        fixes.append("train.batch_size=1 with optim.accumulation for the batch, student.checkpointing=all")
        return (
            f"the run needs ~{need:.1f} GiB per GPU but the GPU has {have:.1f} GiB ({self.strategy}, {self.world} GPU(s), "
            f"{'full fine-tuning' if self.full_finetune else 'LoRA'}): try " + "; or ".join(fixes)
            + ". `sam2videox plan` prints the breakdown; parallel.memory_check=false skips this check."
        )


def plan_family(model: str, family: str | None = None) -> str:
    """The student family of `student.model` for a plan (known hub ids answer without a download)."""
    from stages.families.registry import infer_family

    try:
        return infer_family(model, family)
    except (OSError, ValueError) as exc:  # offline hub id, typo, an unregistered family
        raise MemoryPlanError(f"student.model={model!r}: {exc}") from exc


def transformer_config(model: str, family: str | None = None) -> dict[str, Any]:
    """The transformer config of `student.model` without loading weights: tiny, a local folder, or a known hub id."""
    from stages.families import registry

    try:
        return registry.transformer_config(model, family)
    except (OSError, ValueError) as exc:  # offline hub id, typo
        raise MemoryPlanError(f"student.model={model!r}: no transformer/config.json there and not a known hub id ({exc})") from exc


def plan_memory(
    cfg: Any,
    world: int,
    latent_shape: tuple[int, int, int] | None = None,
    text_len: int | None = None,
    transformer_overrides: dict[str, Any] | None = None,
    teacher_channels: int = 256,
    capacity: int | None = None,
) -> MemoryPlan:
    """Plan a DistillConfig on `world` GPUs. latent_shape (T, H8, W8) and text_len default to the model's
    sample size (Wan: 81 frames of 480x832 and 512 text tokens); teacher_channels is the projector's output
    (256: memory_attention of the released SAM2 models, the default feature). A Wan plan uses the CogVideoX block
    coefficients (an estimate: a Wan block's saved tensors were not measured; its text sits in cross-attention, not
    in the token count). student.checkpointing=auto plans the fastest choice that fits `capacity` bytes
    (every block checkpointed when capacity is None or nothing fits)."""
    from stages.distill.recompute import checkpointed_blocks
    from stages.families.lora import configure_student
    from stages.families.registry import get_student

    family = plan_family(cfg.student.model, getattr(cfg.student, "family", None))
    student = get_student(family)
    config = {**transformer_config(cfg.student.model, family), **(transformer_overrides or {})}
    if cfg.student.task == "t2v":
        config["in_channels"] = config.get("out_channels") or config["in_channels"]
    dtype = getattr(torch, cfg.student.dtype)
    default = torch.get_default_dtype()
    try:  # built in the student dtype directly (a cast after the fact makes diffusers warn)
        torch.set_default_dtype(dtype)
        with torch.device("meta"):
            transformer = student.transformer_from_config(config)
            configure_student(transformer, _without_attention(cfg.student), student.set_attention)
    finally:
        torch.set_default_dtype(default)
    c = transformer.config
    if latent_shape is None:
        latent_shape = student.plan_latent_shape(c, cfg.student.model)
    frames, h, w = student.token_grid(c, latent_shape)
    video_tokens = frames * h * w
    # the tokens the blocks attend over: text + video jointly for some families, video only when text is cross-attended
    tokens = student.attention_tokens(c, video_tokens, text_len)
    width = c.num_attention_heads * c.attention_head_dim

    params = sum(p.numel() for p in transformer.parameters())
    trainable = sum(p.numel() for p in transformer.parameters() if p.requires_grad)
    frozen_bytes = sum(p.numel() * p.element_size() for p in transformer.parameters() if not p.requires_grad)
    projector = _projector_params(cfg, width, teacher_channels) if cfg.losses.needs_projector else 0
    sharded = cfg.parallel.strategy in ("fsdp", "hsdp")
    group = (cfg.parallel.shard_size or world) if cfg.parallel.strategy == "hsdp" else (world if sharded else 1)
    plan = MemoryPlan(cfg.student.model, cfg.parallel.strategy, world, group, cfg.student.full_finetune,
                      params, trainable, projector, tokens, context=cfg.parallel.context,
                      compile=cfg.student.compile.backend if cfg.student.compile.enabled else None, fp8=cfg.student.fp8)

    compute_bytes = 2 if cfg.optim.mixed_precision != "no" else 4
    trained = trainable + projector
    plan.weights = frozen_bytes // group
    plan.masters = trained * 4 // group
    plan.grads = trained * 4 // group + (trained * 4 if cfg.parallel.strategy == "ddp" and world > 1 else 0)
    plan.optimizer = trained * 8 // group
    if sharded:
        blocks = student.blocks(transformer)
        block = max(sum(p.numel() for p in b.parameters()) for b in blocks)
        block_trained = max(sum(p.numel() for p in b.parameters() if p.requires_grad) for b in blocks)
        root = params - sum(p.numel() for b in blocks for p in b.parameters())
        plan.gathered = (2 * block + root) * compute_bytes + block_trained * 4
    elif cfg.student.full_finetune and compute_bytes == 2:
        plan.autocast = trainable * 2
    plan.blocks = len(student.blocks(transformer))
    plan.by_checkpointed = [cfg.train.batch_size * sum(activation_parts(cfg, c, tokens, video_tokens, width, compute_bytes, teacher_channels,
                                                                        checkpointed=k, blocks=plan.blocks).values())
                            for k in range(plan.blocks + 1)]
    spec = cfg.student.checkpointing_spec
    if spec == "auto":
        return (plan.fastest_fit(capacity) if capacity is not None else None) or plan.with_checkpointed(plan.blocks)
    plan = plan.with_checkpointed(len(checkpointed_blocks(spec, plan.blocks)))
    return replace(plan, checkpointing=spec)


def activation_parts(cfg: Any, c: Any, tokens: int, video_tokens: int, width: int, elem: int, teacher_channels: int = 256,
                     checkpointed: int | None = None, blocks: int | None = None) -> dict[str, int]:
    """One micro-batch's activations, bytes: "forward" (kept from forward to backward: a checkpointed block's
    input, every saved tensor of the others), "recompute" (one block rebuilt in backward), "head" (tap,
    projector, LGF). The peak is their sum. checkpointed: how many of the `blocks` (default c.num_layers)
    recompute; None: student.checkpointing's count ("auto" counts as all).
    Under parallel.context = n the blocks run on each rank's tokens / n (stages/families/context_parallel.py: the
    sequence splits at the first block and is gathered again at the output), so what the blocks keep and
    recompute is per rank; the embeddings, the output and the head (the tap gathers the whole sequence) are not."""
    from stages.distill.recompute import checkpointed_blocks

    td = tokens * width
    shard = -(-tokens // cfg.parallel.context) * width  # a block's tokens x width on one rank
    block = (BLOCK_SAVED_FULL if cfg.student.full_finetune else BLOCK_SAVED_LORA) * shard * elem
    mix = AUTOCAST_MIX if elem == 2 else 1.0
    blocks = c.num_layers if blocks is None else blocks
    if checkpointed is None:
        spec = cfg.student.checkpointing_spec
        checkpointed = blocks if spec == "auto" else len(checkpointed_blocks(spec, blocks))
    checkpointing = checkpointed > 0
    kept = checkpointed * CHECKPOINT_SAVED * shard * elem + (blocks - checkpointed) * block + OUTSIDE_BLOCKS * td * elem
    head = 0
    if cfg.losses.needs_projector:
        p = cfg.projector
        out = p.out_channels or teacher_channels
        k2 = cfg.losses.lgf.kernel ** 2
        copy = width if elem != 4 else 0  # half-precision features are cast to an fp32 copy first
        head += video_tokens * (copy + 2 * p.layers * p.hidden + out) * 4  # fp32 MLP: linears and SiLU
        head += 3 * video_tokens * k2 * 4 * max(1, len(cfg.losses.lgf.offsets))  # gram, log-probs, KL terms
    return {"forward": int(kept * mix), "recompute": int(block * mix) if checkpointing else 0, "head": int(head)}


def _projector_params(cfg: Any, width: int, teacher_channels: int) -> int:
    p = cfg.projector
    dims = [width] + [p.hidden] * p.layers + [p.out_channels or teacher_channels]
    n = sum(a * b + b for a, b in zip(dims[:-1], dims[1:]))
    return n + ((dims[-1] + 1) if cfg.losses.mask.weight > 0 else 0)


def _without_attention(student: Any) -> Any:
    """The student config with SDPA: xformers' processor needs CUDA, and attention has no parameters."""
    from dataclasses import replace

    return replace(student, attention="sdpa")
