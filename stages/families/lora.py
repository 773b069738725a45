"""What makes any family's transformer trainable: a PEFT LoRA adapter or full fine-tuning, fp32 masters.

Family-independent: a family only says which modules LoRA adapts (`Student.lora_targets`, the config's
lora.targets) and how its attention backend is set (`Student.set_attention`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from peft import LoraConfig


def trainable_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def cast_trainable_to_fp32(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Trainable parameters -> fp32 in place (frozen ones keep their dtype); returns them."""
    params = trainable_parameters(module)
    for p in params:
        if p.dtype != torch.float32:
            p.data = p.data.float()
    return params


def apply_lora(
    transformer: torch.nn.Module,
    rank: int,
    alpha: float,
    targets: Sequence[str] = ("to_q", "to_k", "to_v", "to_out.0"),
    dropout: float = 0.0,
    adapter_name: str = "default",
) -> list[torch.nn.Parameter]:
    """Freeze the base weights and add a PEFT LoRA adapter (as diffusers' scripts do); returns its params.

    LoRA B starts at zero, so the adapted model equals the base model until trained. The adapter's
    parameters are kept in fp32 even over a half-precision base, so small updates are not rounded away.
    """
    transformer.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights=True, target_modules=list(targets))
    transformer.add_adapter(config, adapter_name=adapter_name)
    if not trainable_parameters(transformer):
        raise ValueError(f"LoRA targets {list(targets)} matched no module of the transformer")
    return cast_trainable_to_fp32(transformer)


def enable_full_finetune(transformer: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Make every transformer weight trainable (the full fine-tuning option), as fp32 master weights.

    Why fp32: AdamW steps of lr 1e-5 are far below bf16's resolution (8 mantissa bits), so a bf16
    weight would round most updates away. As diffusers' `cast_training_params`, the trainable copy is
    fp32 and the forward runs in bf16 (CUDA autocast under DDP, FSDP's all-gather dtype under FSDP).
    """
    transformer.requires_grad_(True)
    return cast_trainable_to_fp32(transformer)


def configure_student(transformer: torch.nn.Module, cfg: Any, set_attention: Callable[[torch.nn.Module, str], str]) -> list[torch.nn.Parameter]:
    """Apply a `StudentConfig` (stages/config/distill.py): LoRA or full fine-tuning, checkpointing, attention.

    set_attention: the family's (`Student.set_attention`). Returns the trainable parameters. Gradient
    checkpointing uses diffusers' non-reentrant default, which keeps the tapped features attached to the
    graph (see stages/distill/tap.py).
    """
    if cfg.full_finetune:
        params = enable_full_finetune(transformer)
    else:
        params = apply_lora(transformer, cfg.lora.rank, cfg.lora.alpha, cfg.lora.targets, cfg.lora.dropout)
    if cfg.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    set_attention(transformer, cfg.attention)
    return params
