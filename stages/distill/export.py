"""Export the trained LoRA in the format the student family's stock diffusers pipelines load.

    out_dir/pytorch_lora_weights.safetensors   keys "transformer.<module>.lora_{A,B}.weight" + the
                                               adapter's LoraConfig (rank, alpha, targets) as metadata
    out_dir/projector/                         projector.safetensors + projector.json (training only)

The family's pipeline (Student.export_pipeline_class: e.g. CogVideoXImageToVideoPipeline / CogVideoXPipeline,
WanPipeline / WanImageToVideoPipeline, each family's one LoRA loader mixin) writes it, and its `load_lora_weights(out_dir)`
loads it as is. The LoraConfig metadata matters: without it diffusers
assumes alpha == rank, and a LoRA trained with another alpha would load at the wrong scale.
The projector sits in a subfolder because the loader refuses a folder with two .safetensors files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from stages.config.secrets import redact
from stages.distill.projector import Projector, save_projector
from stages.families.registry import family_of_class, get_student

logger = logging.getLogger(__name__)

PROJECTOR_DIR = "projector"
INFO_NAME = "sam2videox.json"
LORA_FILE = "pytorch_lora_weights.safetensors"  # the name diffusers' save_lora_weights writes


def export_lora(
    transformer: torch.nn.Module,
    out_dir: str | Path,
    projector: Projector | None = None,
    info: dict[str, Any] | None = None,
    adapter_name: str = "default",
    dtype: torch.dtype | None = None,
    pipeline_class: Any = None,
) -> Path:
    """Write the transformer's LoRA adapter (and optionally the projector) to `out_dir`.

    pipeline_class: the stock pipeline whose save_lora_weights writes it; None: the transformer's family's.
    info: JSON-able run facts (config, step, teacher column) written to sam2videox.json beside it.
    dtype: cast the LoRA tensors on the way out (e.g. torch.bfloat16 to halve the file); None keeps them.
    The model itself is not modified.
    """
    if adapter_name not in getattr(transformer, "peft_config", {}):
        raise ValueError(
            f"the transformer has no LoRA adapter named {adapter_name!r}; full fine-tunes are saved with save_pretrained"
        )
    state = get_peft_model_state_dict(transformer, adapter_name=adapter_name)
    metadata = transformer.peft_config[adapter_name].to_dict()
    return write_lora(state, metadata, out_dir, projector, info, dtype, pipeline_class=pipeline_class or lora_pipeline_class(transformer))


def lora_pipeline_class(transformer: torch.nn.Module) -> Any:
    """The stock pipeline class that writes and reads `transformer`'s family's LoRA file: the family of its diffusers
    class (the MRO's, so an FSDP-wrapped FSDP<Class> is its class's family)."""
    for cls in type(transformer).__mro__:
        try:
            return get_student(family_of_class(cls.__name__)).export_pipeline_class()
        except ValueError:
            continue
    raise ValueError(f"{type(transformer).__name__} is no supported student transformer: cannot say its LoRA format")


def lora_from_trainable_state(state: dict[str, torch.Tensor], adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """A gathered trainable state dict ("<module>.lora_A.<adapter>.weight", as FSDP's full state dict
    names them) -> the adapter-free keys `get_peft_model_state_dict` returns."""
    tag = f".{adapter_name}."
    return {k.replace(tag, "."): v for k, v in state.items() if "lora_" in k and tag in k}


def write_lora(
    state: dict[str, torch.Tensor],
    metadata: dict,
    out_dir: str | Path,
    projector: Projector | None = None,
    info: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    *,
    pipeline_class: Any,
) -> Path:
    """Write LoRA tensors (peft keys, no adapter name) + their LoraConfig metadata in the diffusers format.

    pipeline_class: the stock pipeline whose `save_lora_weights` writes the file (Student.export_pipeline_class:
    the family's loader mixin).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype is not None else v).detach().contiguous().cpu() for k, v in state.items()}
    pipeline_class.save_lora_weights(
        out_dir, transformer_lora_layers=state, transformer_lora_adapter_metadata=canonical_metadata(metadata)
    )
    canonical_header(out_dir / LORA_FILE)
    if projector is not None:
        save_projector(projector, out_dir / PROJECTOR_DIR)
    if info is not None:
        (out_dir / INFO_NAME).write_text(json.dumps(redact(info), indent=2, sort_keys=True, default=str))
    logger.info("exported LoRA (%d tensors) to %s", len(state), out_dir)
    return out_dir


def canonical_metadata(metadata: Any) -> Any:
    """The LoraConfig metadata with every set as a sorted list: peft keeps target_modules as a set, which
    diffusers writes into the header in hash order (PYTHONHASHSEED varies it per process), so two
    identical runs would export files that differ byte-wise."""
    if isinstance(metadata, dict):
        return {k: canonical_metadata(v) for k, v in metadata.items()}
    if isinstance(metadata, (set, frozenset)):
        return sorted(metadata, key=str)
    return metadata


def canonical_header(path: Path) -> None:
    """Rewrite a safetensors file's header with its __metadata__ entries in sorted order.

    safetensors serialises the metadata from a Rust HashMap, whose order is random per process, so
    the same tensors and metadata give files that differ byte-wise. Layout: 8-byte little-endian
    header length, the JSON header (space-padded to 8 bytes, as safetensors writes it), the data.
    """
    blob = path.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + blob[8 + n :])


def save_full_transformer(config: Any, state: dict[str, torch.Tensor], out_dir: str | Path, dtype: torch.dtype) -> Path:
    """A diffusers transformer folder (config.json + sharded safetensors) from a gathered full state dict.

    Built on the meta device and filled by assignment, so rank 0 holds one copy of the weights, in `dtype`.
    `CogVideoXTransformer3DModel.from_pretrained(out_dir)` loads it.
    """
    from diffusers import CogVideoXTransformer3DModel

    with torch.device("meta"):
        model = CogVideoXTransformer3DModel.from_config(config)
    missing, unexpected = model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"gathered state does not fit the transformer (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.save_pretrained(out_dir)
    return Path(out_dir)


def load_lora_for_training(transformer: torch.nn.Module, lora_dir: str | Path, adapter_name: str = "default") -> None:
    """Load an exported LoRA back into a transformer that already has the adapter (resume, fine-tune on).

    The adapter must have been added with the same rank and targets (stages.families.cogvideox.transformer.apply_lora).
    """
    state, _ = lora_pipeline_class(transformer).lora_state_dict(str(lora_dir), return_lora_metadata=True)
    prefix = "transformer."
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    result = set_peft_model_state_dict(transformer, state, adapter_name=adapter_name)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"{lora_dir}: {len(unexpected)} LoRA tensors fit no module of this transformer, e.g. {unexpected[0]}")
