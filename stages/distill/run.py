"""Stage two's entry: train one run, export its LoRA, and summarise it (<out>/summary.json on rank 0).

The summary's keys are the run folder's on-disk contract: `sam2videox report`, `ablate` and the
tests read them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from stages.config.distill import DistillConfig


@dataclass
class StepTimes:
    """Wall and data-wait seconds of every step this process ran (a resumed run counts its own)."""

    seconds: list[float] = field(default_factory=list)
    data_seconds: list[float] = field(default_factory=list)

    def add(self, metrics: Any) -> None:
        self.seconds.append(metrics.seconds)
        self.data_seconds.append(metrics.data_seconds)

    @property
    def mean_step_seconds(self) -> float | None:
        return sum(self.seconds) / len(self.seconds) if self.seconds else None

    @property
    def data_wait_share(self) -> float | None:
        """Share of step time spent waiting for batches; None before the first step."""
        return sum(self.data_seconds) / sum(self.seconds) if self.seconds else None


@dataclass
class RunSummary:
    out: str
    steps: int
    rank: int
    world_size: int
    final: dict | None  # StepMetrics.to_json() of the last step run here; None when nothing was trained
    first: dict | None
    mean_step_seconds: float | None
    data_wait_share: float | None
    exported: str | None  # the LoRA folder for the stock pipelines
    teacher_column: str | None
    filter: dict  # data.filter: clips dropped per rule, and which

    def to_json(self) -> dict:
        return dict(self.__dict__)

    def line(self, total_steps: int) -> str:
        """The one line a finished (or already finished) run prints."""
        if self.final is None:  # a resume of a finished run
            return (f"nothing to train: the run is already at step {self.steps} of {total_steps} "
                    f"(raise train.steps to continue); exported: {self.exported}")
        return (f"{self.steps} steps, loss {self.final['loss']:.4f} {self.final['terms']}, "
                f"{self.mean_step_seconds or 0:.3f} s/step, data wait {self.data_wait_share or 0:.1%}; exported: {self.exported}")


def run_distill(cfg: DistillConfig, resume: bool = False, on_start: Callable[[int, int], None] | None = None,
                on_step: Callable[[Any, StepTimes], None] | None = None) -> RunSummary:
    """Train, export, and summarise. on_start(rank, step already done) runs once the trainer is built
    (a resumed run starts past 0); on_step(StepMetrics, StepTimes so far) after every step."""
    from stages.distill.trainer import Trainer

    trainer = Trainer(cfg, resume=resume)
    times = StepTimes()

    def step_done(metrics: Any) -> None:
        times.add(metrics)
        if on_step is not None:
            on_step(metrics, times)

    trainer.on_step = step_done
    try:
        if on_start is not None:
            on_start(trainer.rank, trainer.step)
        history = trainer.run()
        exported = trainer.finish()
    finally:
        trainer.close()
    summary = RunSummary(
        out=str(cfg.out), steps=trainer.step, rank=trainer.rank, world_size=trainer.world,
        final=history[-1].to_json() if history else None, first=history[0].to_json() if history else None,
        mean_step_seconds=times.mean_step_seconds, data_wait_share=times.data_wait_share,
        exported=str(exported) if exported else None,
        teacher_column=trainer.data.teacher.dirname if trainer.data.teacher else None,
        filter=trainer.filter.to_json(),
    )
    if trainer.rank == 0:
        (Path(cfg.out) / "summary.json").write_text(json.dumps(summary.to_json(), indent=1, default=str))
    return summary
