"""The fine-tuning arms of the miniature ablation: every arm YAML x every training seed, one run folder each.

Each arm is a diff on configs/miniature/tune.yaml (configs/miniature/arms/<arm>.yaml); repeat s sets
`train.seed=s` (the per-step noise and timesteps), so two arms with the same seed see the same clips
in the same order with the same noise and differ only in their loss. Runs land in
<out>/<arm>-s<seed> (evaluate labels rows by folder name); a run already exported is skipped, so an
interrupted table resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from miniature.world import ROOT
from stages.config.distill import DistillConfig
from stages.config.loader import load_config

log = logging.getLogger(__name__)

BASE = ROOT / "configs" / "miniature" / "tune.yaml"
ARMS = ROOT / "configs" / "miniature" / "arms"
SEEDS = (0, 1, 2)


def run_name(arm: str, seed: int) -> str:
    return f"{arm}-s{seed}"


def arm_of(run: str) -> tuple[str, int]:
    """'lgf-s2' -> ('lgf', 2): the inverse of run_name (the table groups evaluate's rows with it)."""
    arm, _, seed = run.rpartition("-s")
    if not arm or not seed.isdigit():
        raise ValueError(f"{run!r} is not an arm run name (<arm>-s<seed>)")
    return arm, int(seed)


def train_arms(out: Path, arms: list[str] | None = None, seeds: tuple[int, ...] = SEEDS,
               overrides: list[str] | None = None) -> dict[str, dict]:
    """Train every (arm, seed) into out/<arm>-s<seed>; returns {run: {loss, terms, s_per_step, seconds}}."""
    from stages.distill.run import run_distill

    files = sorted(ARMS.glob("*.yaml"))
    if arms:
        unknown = set(arms) - {f.stem for f in files}
        if unknown:
            raise ValueError(f"unknown arm(s) {', '.join(sorted(unknown))}; valid: {', '.join(f.stem for f in files)}")
        files = [f for f in files if f.stem in arms]
    rows: dict[str, dict] = {}
    for seed in seeds:  # seed-major: an interrupted table has whole repeats of every arm
        for f in files:
            name = run_name(f.stem, seed)
            run_dir = out / name
            if (run_dir / "lora" / "pytorch_lora_weights.safetensors").is_file():
                log.info("%s: already exported, skipped", name)
                continue
            cfg = load_config(DistillConfig, [BASE, f], [f"train.seed={seed}", f"out={run_dir}", *(overrides or [])])
            t0 = time.perf_counter()
            summary = run_distill(cfg)
            rows[name] = {"loss": summary.final["loss"], "terms": summary.final["terms"],
                          "s_per_step": summary.mean_step_seconds, "seconds": time.perf_counter() - t0}
            log.info("%s: loss %.4f, %.3f s/step", name, rows[name]["loss"], rows[name]["s_per_step"])
    out.mkdir(parents=True, exist_ok=True)
    done = json.loads((out / "arms.json").read_text()) if (out / "arms.json").is_file() else {}
    (out / "arms.json").write_text(json.dumps({**done, **rows}, indent=1, sort_keys=True))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "miniature" / "arms")
    parser.add_argument("--arms", nargs="*", default=None, help="arm names (configs/miniature/arms/*.yaml stems); default all")
    parser.add_argument("--seeds", type=int, nargs="*", default=list(SEEDS))
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], help="dotted overrides for every run, e.g. train.steps=5")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from stages.config.loader import ConfigError
    from stages.store import StoreError

    try:
        train_arms(args.out, args.arms, tuple(args.seeds), args.overrides)
    except (ConfigError, StoreError, ValueError) as exc:  # bad input: one line, the runs already exported are kept
        raise SystemExit(f"miniature.arms: {exc}") from None


if __name__ == "__main__":
    main()
