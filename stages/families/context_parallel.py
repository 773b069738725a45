"""Context parallelism for the families whose diffusers transformer carries a `_cp_plan` that trains (Wan).

Nothing here computes attention: diffusers' own context parallelism (`ModelMixin.enable_parallelism` with a
`ContextParallelConfig`) does. Wan's plan splits the video tokens [B, S, D] along S at the first block's input
("blocks.0"), runs every block on S / n tokens per rank with Ulysses attention in self-attention (an
all-to-all swaps the sequence shard for a head shard, so each rank attends over all S tokens for H / n heads,
and back; cross-attention over the whole text stays local to the rank's queries), and gathers the sequence
again at `proj_out`. So the model's output is whole on every rank; a block's output in between is the rank's
S / n shard (contiguous chunks, rank order), which `gather_sequence` joins for the feature tap.
(LTX has a plan too, but diffusers runs its cross-attention through Ulysses, which does not train: see
stages/families/ltx/family.py.)

Gradients: every rank of a context group computes the same loss from the same gathered output. The gather's
backward hands each rank the chunk of the output gradient for its own tokens, so a transformer weight's
gradient on one rank is its tokens' share: the group's gradient is the SUM over the group
(stages/distill/parallel.py reduces it so).

Ring attention is not offered: diffusers' ring needs the attention's log-sum-exp, which its native (SDPA)
backend, the one `student.attention=sdpa` selects, does not return ("Native attention does not support
return_lse=True").
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch


def enable(transformer: torch.nn.Module, mesh: Any, family: str, video_tokens: int, heads: int) -> None:
    """Apply diffusers' context parallelism (Ulysses over the mesh's "ulysses" dimension) to `transformer`.

    mesh: a DeviceMesh with dimensions ("ring", "ulysses") among its names (stages/distill/parallel.py builds
    ("dp", "ring", "ulysses") with ring 1). video_tokens: T*h*w per sample; heads: attention heads per block.
    Refuses in one line what the plan cannot split evenly.
    """
    from diffusers import ContextParallelConfig

    from stages.config.loader import ConfigError

    degree = mesh["ulysses"].size()
    if heads % degree:
        raise ConfigError(f"parallel.context={degree}: the {family} transformer's {heads} attention heads do not divide "
                          f"into {degree} groups (Ulysses attention splits heads); use a divisor of {heads}")
    if video_tokens % degree:
        raise ConfigError(f"parallel.context={degree}: {video_tokens} video tokens per clip do not split evenly over "
                          f"{degree} ranks; use a divisor of {video_tokens}")
    with _accelerator_count_on_cpu_hosts():
        transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=degree, mesh=mesh))


def gather_sequence(transformer: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """A block's output shard [B, S / n, D] -> the whole [B, S, D] (unchanged without context parallelism).

    Uses the gather diffusers' plan applies at `proj_out` (an all-gather whose backward keeps this rank's chunk
    of the gradient), so a loss on the gathered tokens backpropagates as the model output's does."""
    config = getattr(transformer, "_parallel_config", None)
    cp = getattr(config, "context_parallel_config", None)
    if cp is None:
        return tokens
    from diffusers.hooks.context_parallel import EquipartitionSharder

    return EquipartitionSharder.unshard(tokens, 1, cp._flattened_mesh)


@contextlib.contextmanager
def _accelerator_count_on_cpu_hosts() -> Iterator[None]:
    """diffusers 0.42.1's `ModelMixin._resolve_parallel_config` records `torch.device(type, rank %
    torch.accelerator.device_count())`, which divides by zero on a host without an accelerator (a CPU-only
    torch); the device it records is never read afterwards (the mesh we pass is what runs). On such a host,
    and only for that call, the count reads 1. Remove once diffusers guards the zero."""
    if torch.accelerator.device_count() > 0:
        yield
        return
    count = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = count
