"""student.fp8: the student's block matmuls in FP8 through torchao's float8 training (`Float8Linear`).

`torchao.float8.convert_to_float8_training` swaps chosen `nn.Linear` modules for `Float8Linear`, which
casts input, weight and output gradient to float8 (e4m3 forward, e5m2 gradients) with dynamic
tensorwise scales and multiplies with `torch._scaled_mm`; the weights themselves stay in the student
dtype (state-dict keys and shapes are unchanged, so checkpoints and exports do not change form).

Which linears (`fp8_linears`): those inside the transformer blocks (`Student.blocks`; the embeddings
and the output head stay as they are), whose in and out features are both multiples of 16
(`_scaled_mm` requires it). With LoRA only the frozen base linears are converted (peft's wrappers
hold them as `...to_q.base_layer`): peft's lora_A / lora_B are trained, rank-wide and small, and stay
in the compute dtype. With full fine-tuning every such block linear is converted.

Order in the trainer: after LoRA injection (the filter must see peft's wrappers), before
checkpointing, FSDP2 and compile (FSDP2 then shards the Float8Linear weights as plain weights, and
the compiled blocks trace the float8 casts, which is where torchao's speed comes from).

Run it with student.compile: eager, torchao's casts and scales are separate kernels, and its autograd
function computes a weight gradient even for a frozen base weight (an extra GEMM per linear under
LoRA); compiled, inductor fuses the casts, and AOT autograd's backward graph outputs gradients only
for inputs that need them, so that GEMM is dead code (expected, not yet measured on a GPU). The
trainer logs a warning when fp8 runs without compile.

Refused in one line (a ConfigError: `distill` exits 2) where it cannot run: not CUDA, compute
capability below 8.9 (FP8 tensor cores start with Ada and Hopper), or no torchao with float8.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Callable, Sequence

import torch
from torch import nn

from stages.config.loader import ConfigError

log = logging.getLogger(__name__)

MIN_CAPABILITY = (8, 9)
MULTIPLE = 16  # torch._scaled_mm: both matrix dims of each operand divisible by 16
LORA_PARTS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")  # peft's adapter modules


def fp8_refusal(device: torch.device) -> str | None:
    """Why student.fp8 cannot run on `device` (one line naming the key), or None when it can."""
    if device.type != "cuda":
        return (f"student.fp8=true needs a CUDA GPU of compute capability >= {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} "
                f"(Ada, Hopper or newer); this run is on {device}: set student.fp8=false")
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        return (f"student.fp8=true needs compute capability >= {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} (FP8 tensor cores); "
                f"{torch.cuda.get_device_name(device)} has {capability[0]}.{capability[1]}: set student.fp8=false")
    if importlib.util.find_spec("torchao") is None:
        return "student.fp8=true needs torchao (pip install torchao), which is not installed: install it or set student.fp8=false"
    try:
        from torchao.float8 import convert_to_float8_training  # noqa: F401
    except ImportError as exc:
        return f"student.fp8=true needs torchao's float8 training (torchao.float8.convert_to_float8_training): {exc}"
    return None


def check_fp8(device: torch.device) -> None:
    """Raise ConfigError (one line) when student.fp8 cannot run on `device`."""
    why = fp8_refusal(device)
    if why is not None:
        raise ConfigError(why)


def _is_lora_part(name: str) -> bool:
    return any(part in LORA_PARTS for part in name.split("."))


def fp8_linears(transformer: nn.Module, blocks: Sequence[nn.Module], full_finetune: bool) -> list[str]:
    """Names (as `transformer.named_modules()` gives them) of the linears student.fp8 converts.

    In a block; in and out features multiples of 16; with LoRA (full_finetune False), frozen and not a
    peft adapter module (lora_A / lora_B). Raises ValueError when nothing qualifies."""
    inside = {id(m) for block in blocks for m in block.modules()}
    names = []
    for name, module in transformer.named_modules():
        if not isinstance(module, nn.Linear) or id(module) not in inside:
            continue
        if module.in_features % MULTIPLE or module.out_features % MULTIPLE:
            continue
        if not full_finetune and (_is_lora_part(name) or module.weight.requires_grad):
            continue
        names.append(name)
    if not names:
        raise ValueError(f"student.fp8=true: no block linear has in and out features divisible by {MULTIPLE}")
    return names


def module_filter(names: Sequence[str]) -> Callable[[nn.Module, str], bool]:
    """torchao's module_filter_fn (module, fully qualified name) -> bool for exactly `names`."""
    chosen = frozenset(names)
    return lambda module, fqn: fqn in chosen


def convert_fp8(transformer: nn.Module, blocks: Sequence[nn.Module], full_finetune: bool) -> list[str]:
    """Swap the chosen linears for torchao's Float8Linear in place; returns their names.

    torchao's conversion itself is plain module surgery (it also runs on CPU modules); the float8
    matmuls need the GPU that `check_fp8` asks for."""
    from torchao.float8 import convert_to_float8_training

    names = fp8_linears(transformer, blocks, full_finetune)  # before the swap: it looks at nn.Linear
    convert_to_float8_training(transformer, module_filter_fn=module_filter(names))
    log.info("student.fp8: %d block linears in float8 (torchao Float8Linear, tensorwise scales)%s", len(names),
             "" if full_finetune else ", LoRA adapters kept in the compute dtype")
    return names
