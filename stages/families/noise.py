"""Family-independent pieces of a diffusion objective's sampling: caption dropout and where random draws live."""

from __future__ import annotations

import torch


def caption_dropout(
    prompt_embeds: torch.Tensor, empty: torch.Tensor | None, p: float, generator: torch.Generator | None
) -> torch.Tensor:
    drop = torch.rand(prompt_embeds.shape[0], generator=generator, device=rand_device(generator)).to(prompt_embeds.device) < p
    if not drop.any():
        return prompt_embeds
    if empty is None:
        raise ValueError("caption dropout needs empty_prompt_embeds [L, D_text]")
    return torch.where(drop.view(-1, 1, 1), empty.to(prompt_embeds).expand_as(prompt_embeds), prompt_embeds)


def rand_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")
