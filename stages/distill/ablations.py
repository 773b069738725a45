"""`ablate`: every ablation YAML (a diff on one base config) trained on the same store, one row each
in <out>/ablations.json. Cached features are reused; nothing is extracted again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from stages.config.distill import DistillConfig
from stages.config.loader import load_config


class AblationError(ValueError):
    """An ablation that cannot run; the message names it and the fix."""


def select_ablations(folder: Path, only: list[str] | None) -> list[Path]:
    """The ablation YAMLs of `folder` (sorted), or the named ones; AblationError for an empty folder or an unknown name."""
    files = sorted(Path(folder).glob("*.yaml"))
    if not files:
        raise AblationError(f"no ablation YAMLs in {folder}")
    if only:
        unknown = set(only) - {f.stem for f in files}
        if unknown:
            raise AblationError(f"unknown ablation(s) {', '.join(sorted(unknown))} in {folder}; valid: {', '.join(f.stem for f in files)}")
        files = [f for f in files if f.stem in only]
    return files


def schedule_warnings(cfg: DistillConfig) -> list[str]:
    """Loss schedules that reach past the run's train.steps (e.g. a real-size ablation run for a few steps)."""
    out = []
    for name in ("lgf", "repa", "mask"):
        term = getattr(cfg.losses, name)
        for key in ("warmup_steps", "cutoff_step"):
            value = getattr(term, key)
            if value and value > cfg.train.steps:
                out.append(f"losses.{name}.{key}={value} is beyond the run's {cfg.train.steps} steps")
    return out


def run_ablations(base: Path, files: list[Path], store: str, out: str, steps: int | None,
                  on_warning: Callable[[str, str], None] | None = None,
                  on_row: Callable[[str, dict], None] | None = None) -> dict[str, dict]:
    """Train each ablation into <out>/<name> for `steps` steps (None: the config's own train.steps) and
    write {name: {loss, terms, s_per_step}} to <out>/ablations.json. Raises ConfigError for a bad YAML
    and AblationError (naming the ablation) when its store cannot be read."""
    from stages.distill.run import run_distill
    from stages.store import StoreError

    rows = {}
    for f in files:
        overrides = [f"data.store={store}", f"out={out}/{f.stem}"]
        if steps is not None:
            overrides += [f"train.steps={steps}", f"train.checkpoint_every={steps}"]
        cfg = load_config(DistillConfig, [base, f], overrides)
        for line in schedule_warnings(cfg):
            if on_warning is not None:
                on_warning(f.stem, line)
        try:
            summary = run_distill(cfg)
        except StoreError as exc:
            raise AblationError(f"{f.stem} ({f}): {exc}") from exc
        rows[f.stem] = {"loss": summary.final["loss"], "terms": summary.final["terms"], "s_per_step": summary.mean_step_seconds}
        if on_row is not None:
            on_row(f.stem, rows[f.stem])
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "ablations.json").write_text(json.dumps(rows, indent=1))
    return rows
