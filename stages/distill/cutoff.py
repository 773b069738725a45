"""The LGF cutoff by agreement (losses.lgf.cutoff): stop or decay L_feat once held-out teacher agreement
stops improving.

Alignment losses applied for too long pull the student's features past what helps the video (the trainer
anchors warn of artefacts); a fixed losses.lgf.cutoff_step has to be guessed before the run. This controller
decides from the validation the run already does: at each eval.every step it reads one held-out KL
(validation.py's "lgf_projected" or "lgf": lower = closer to the teacher) and keeps the best so far. After
`patience` validations in a row that did not improve on the best by more than `min_delta`, it multiplies
the LGF weight by `factor` (0 stops the loss for good) and starts counting again. Every rank sees the same
validation numbers, so every rank cuts at the same step. Its state is saved in each checkpoint's state.json.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class AgreementCutoff:
    patience: int
    min_delta: float = 0.0
    factor: float = 0.0
    best: float | None = None  # lowest held-out KL seen
    waited: int = 0  # validations since the best (or the last cut)
    scale: float = 1.0  # multiplies losses.lgf.weight from the next step on
    cuts: list[int] = field(default_factory=list)  # steps at which the weight was cut

    @classmethod
    def from_config(cls, cfg: Any) -> "AgreementCutoff | None":
        """An LGFCutoffConfig -> a controller, or None when it is off (patience 0)."""
        return cls(cfg.patience, cfg.min_delta, cfg.factor) if cfg.patience > 0 else None

    def observe(self, step: int, value: float) -> bool:
        """One validation's metric at `step`; True when this validation cuts the weight."""
        if self.scale == 0.0:
            return False  # already off
        if not math.isnan(value) and (self.best is None or value < self.best - self.min_delta):
            self.best, self.waited = float(value), 0
            return False
        self.waited += 1
        if self.waited < self.patience:
            return False
        self.scale *= self.factor
        self.cuts.append(step)
        self.waited = 0
        return True

    def state(self) -> dict:
        """JSON of what a resume restores (the settings come from the resumed run's config)."""
        return {k: v for k, v in asdict(self).items() if k in ("best", "waited", "scale", "cuts")}

    def load(self, state: dict) -> None:
        self.best, self.waited, self.scale, self.cuts = state["best"], int(state["waited"]), float(state["scale"]), list(state["cuts"])
