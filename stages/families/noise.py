"""Family-independent pieces of a diffusion objective's sampling: caption dropout and where random draws live."""

from __future__ import annotations

import torch


def caption_dropout(
    prompt_embeds: torch.Tensor, empty: torch.Tensor | None, p: float, generator: torch.Generator | None
) -> torch.Tensor:
    drop = caption_drops(prompt_embeds.shape[0], p, generator, prompt_embeds.device)
    if not drop.any():
        return prompt_embeds
    if empty is None:
        raise ValueError("caption dropout needs empty_prompt_embeds [L, D_text]")
    return torch.where(drop.view(-1, 1, 1), empty.to(prompt_embeds).expand_as(prompt_embeds), prompt_embeds)


def caption_drops(batch: int, p: float, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """bool [batch] on `device`: which samples train on the empty prompt (one uniform draw per sample, on the
    generator's device). A family whose prompt has more parts than its embeddings (a mask) replaces those too."""
    return torch.rand(batch, generator=generator, device=rand_device(generator)).to(device) < p


def rand_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")
