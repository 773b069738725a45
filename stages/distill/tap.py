"""FeatureTap: the video tokens output by transformer block L, captured once per forward, with their graph.

A CogVideoX block returns (video tokens [B, T*h*w, D], text tokens [B, L_text, D]); video tokens
are ordered (frame, row, column), so they reshape to [B, T, h, w, D] on the student's token grid.

Why not a bare forward hook: under gradient checkpointing, backward recomputes the block and the
hook fires again (a known fault of diffusers-style feature hooks). A recompute would overwrite the
captured tensor with one whose graph is not the loss's, or capture twice. The tap therefore
  - resets at the start of each transformer forward (a pre-hook on the transformer),
  - keeps only the first firing of that forward,
  - ignores firings while the autograd engine is running (that is the recompute).
The tensor kept is the block's own output, so a loss on it backpropagates into blocks 0..L. Under context
parallelism (parallel.context > 1) a block outputs this rank's share of the sequence; the family gathers it
(Student.full_sequence) so the tap always holds the whole grid.
Diffusers' default (non-reentrant) checkpointing keeps that output on the graph; a reentrant
checkpoint function would hand the hook a detached tensor, which the tap reports with a warning.

Under student.compile (each block compiled in place) a block's hooks run inside its compiled call;
both hooks are excluded from the graph (`torch.compiler.disable`): they keep Python state and ask the
autograd engine whether it is running, which a traced graph would freeze at its first call.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)


class FeatureTap:
    """Capture block `block`'s video-token output as [B, T, h, w, D].

    transformer: a CogVideoXTransformer3DModel (LoRA-adapted or not).
    block: 0-based index into transformer.transformer_blocks.
    Use as a context manager, or call remove() when done.
    """

    def __init__(self, transformer: torch.nn.Module, block: int, student: Any = None):
        # student: the family (stages/families/) saying where the blocks are, what a block returns
        # and the input layout; None = the family of the transformer's class (stages/families/registry.py)
        if student is None:
            from stages.families.registry import student_of

            student = student_of(transformer)
        self._student = student
        blocks = student.blocks(transformer)
        if not 0 <= block < len(blocks):
            raise ValueError(
                f"tap block {block} is out of range: the transformer has {len(blocks)} blocks (0..{len(blocks) - 1})"
            )
        self.block = block
        self.captures = 0  # firings kept in the current forward (1 after a forward)
        self.ignored = 0  # firings ignored in the current forward (recomputes, repeats)
        self._config = transformer.config
        self._transformer = transformer  # the family gathers a context-parallel shard through it (full_sequence)
        self._features: torch.Tensor | None = None
        self._grid: tuple[int, int, int] | None = None
        self._grad_expected = False
        self._handles = [
            transformer.register_forward_pre_hook(self._on_transformer_start, with_kwargs=True),
            blocks[block].register_forward_hook(self._on_block_end),
        ]

    @property
    def features(self) -> torch.Tensor:
        """[B, T, h, w, D] captured in the last forward (still attached to its graph)."""
        if self._features is None:
            raise RuntimeError(f"no features captured: run a transformer forward while the tap on block {self.block} is attached")
        return self._features

    def pop(self) -> torch.Tensor:
        """Return the features and drop the tap's reference (so the step's graph can be freed)."""
        out = self.features
        self._features = None
        return out

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._features = None

    def __enter__(self) -> FeatureTap:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    @torch.compiler.disable
    def _on_transformer_start(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if _in_backward():
            return  # a checkpoint recompute never re-enters the top-level forward, but be safe
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]  # [B, T, C, H8, W8] (CogVideoX)
        self._grid = self._student.forward_grid(self._config, {**kwargs, "hidden_states": hidden})
        self._grad_expected = torch.is_grad_enabled()
        self._features = None
        self.captures = 0
        self.ignored = 0

    @torch.compiler.disable
    def _on_block_end(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        if _in_backward() or self.captures > 0:
            self.ignored += 1
            return
        if self._grid is None:
            raise RuntimeError("the tapped block ran outside a transformer forward; the token grid is unknown")
        # [B, T*h*w, D]; under context parallelism the block returned this rank's [B, T*h*w / n, D] shard, which
        # the family gathers (its backward keeps this rank's chunk of the gradient, as the model output's does)
        video = self._student.full_sequence(self._transformer, self._student.video_tokens(output))
        frames, h, w = self._grid
        if video.shape[1] != frames * h * w:
            raise RuntimeError(f"block {self.block} returned {video.shape[1]} video tokens, expected {frames}x{h}x{w}")
        if self._grad_expected and not video.requires_grad and any(p.requires_grad for p in module.parameters()):
            logger.warning("tapped features are detached from the graph: is a reentrant checkpoint function in use?")
        self._features = video.reshape(video.shape[0], frames, h, w, video.shape[2])
        self.captures += 1


def _in_backward() -> bool:
    """True while the autograd engine runs a backward pass (where checkpoint recomputes happen)."""
    return torch._C._current_graph_task_id() != -1
