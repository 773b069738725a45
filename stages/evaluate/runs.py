"""Which runs to evaluate and on which held-out clips.

A run folder is what `sam2videox distill` writes: lora/ (the exported LoRA with sam2videox.json), lora_ema/
(its EMA weights, runs with train.ema.decay; `evaluate --ema` adds them as a row "<run>-ema") and
holdout.json (the held-out split it never trained on: {"fraction", "rule", "keys"}). `--runs` also
accepts a folder of run folders (e.g. out/.../ablations after `make ablate`): its sub-folders that
hold a LoRA are the runs, in name order.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

LORA_FILE = "pytorch_lora_weights.safetensors"
INFO_FILE = "sam2videox.json"
HOLDOUT_FILE = "holdout.json"
EMA_DIR = "lora_ema"  # the EMA weights a run with train.ema.decay exports beside lora/
EMA_SUFFIX = "-ema"  # the row name of a run's EMA weights

log = logging.getLogger(__name__)


class EvaluateError(ValueError):
    """Bad input to `evaluate`: the message is one line naming the run, store, file or clip."""


@dataclass(frozen=True)
class RunRef:
    name: str  # row label in the report: the folder name (parent/name when two runs share a name)
    path: Path
    info: dict[str, Any]  # lora/sam2videox.json: config, step, store, teacher/encodings column

    @property
    def lora_dir(self) -> Path:
        return self.path / "lora"

    @property
    def ema_dir(self) -> Path:
        """The run's EMA LoRA (EvaluateError when the run has none)."""
        folder = self.path / EMA_DIR
        if not (folder / LORA_FILE).is_file():
            raise EvaluateError(f"--ema: run {self.name} has no EMA weights ({folder / LORA_FILE} is missing; "
                                f"a run exports them when trained with train.ema.decay)")
        return folder

    @property
    def student_model(self) -> str:
        return self.info["config"]["student"]["model"]

    @property
    def student_task(self) -> str:
        return self.info["config"]["student"].get("task", "i2v")


def _is_run(path: Path) -> bool:
    return (path / "lora" / LORA_FILE).is_file()


def resolve_runs(paths: Sequence[Path]) -> list[RunRef]:
    """Run folders (or folders of run folders) -> RunRefs. EvaluateError for a folder without an exported LoRA."""
    found: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_file():  # `--runs $(ls -d ablations/*)` also lists ablations.json beside the run folders
            log.warning("skipping %s: a file, not a run folder", p)
            continue
        if not p.is_dir():
            raise EvaluateError(f"run folder {p} does not exist")
        if _is_run(p):
            found.append(p)
            continue
        inner = sorted(c for c in p.iterdir() if c.is_dir() and _is_run(c))
        if not inner:
            raise EvaluateError(f"run folder {p} has no exported LoRA ({p / 'lora' / LORA_FILE} is missing; "
                                f"a run exports it when training finishes), nor sub-folders that do")
        found.extend(inner)
    refs = []
    names = [p.name for p in found]
    for p in found:
        info_path = p / "lora" / INFO_FILE
        try:
            info = json.loads(info_path.read_text())
            info["config"]["student"]["model"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise EvaluateError(f"run folder {p}: {info_path} is missing or unreadable ({type(exc).__name__}: {exc})") from None
        name = p.name if names.count(p.name) == 1 else f"{p.parent.name}/{p.name}"
        refs.append(RunRef(name, p, info))
    if len({r.name for r in refs}) != len(refs):
        raise EvaluateError(f"two runs have the same name: {', '.join(str(r.path) for r in refs)}")
    if "base" in {r.name for r in refs}:
        raise EvaluateError("a run folder named 'base' clashes with the base model's row: rename it")
    return refs


def run_holdout(run: RunRef) -> dict | None:
    """The run's holdout.json as stages/store/holdout.py reads it; None when it has none (trained before the split existed)."""
    from stages.store.holdout import HoldoutError, read_holdout

    if not (run.path / HOLDOUT_FILE).is_file():
        return None
    try:
        return read_holdout(run.path).to_json()
    except HoldoutError as exc:
        raise EvaluateError(f"run {run.name}: {exc}") from None


def heldout_keys(runs: Sequence[RunRef], store_clips: Sequence[str | dict], fraction: float | None = None,
                 explicit: Sequence[str] = ()) -> tuple[list[str], dict]:
    """The clips to evaluate on, sorted, and where they came from (written into the protocol).

    store_clips: the store's snapshot rows in snapshot order (bare keys: clips without copies).
    Explicit (--holdout FRACTION and/or --holdout-key KEY): stages.store.holdout's rule on the store's
    clips, the same split a run with data.holdout=FRACTION, data.holdout_keys=KEYS trains without.
    Otherwise every run's holdout.json; they must all name the same clips. Either way no run may have
    trained on a chosen clip: each must be in every run's holdout.json, and no clip the run could
    train on may be a copy of it (check_untrained).
    """
    from stages.store.holdout import HoldoutError, holdout_keys

    splits = {r.name: run_holdout(r) for r in runs}
    if fraction is not None or explicit:
        try:
            keys = sorted(holdout_keys(list(store_clips), fraction or 0.0, list(explicit)))
        except HoldoutError as exc:
            raise EvaluateError(f"held-out clips: {exc}") from None
        check_untrained(runs, splits, store_clips, keys)
        return keys, {"source": "explicit", "fraction": fraction, "explicit": list(explicit)}
    if not runs:
        raise EvaluateError("no runs: give --runs, or --holdout FRACTION / --holdout-key KEY to evaluate the base model alone")
    missing = [n for n, s in splits.items() if s is None]
    if missing:
        raise EvaluateError(f"run(s) {', '.join(missing)} have no {HOLDOUT_FILE} (trained before the held-out split existed, on every "
                            f"clip of the store): no clip is held out from them; leave them out of --runs")
    by_split: dict[tuple[str, ...], list[str]] = {}  # held-out keys -> the runs holding out exactly those
    for name, split in splits.items():
        by_split.setdefault(tuple(sorted(split["keys"])), []).append(name)
    if len(by_split) > 1:
        described = "; ".join(f"{', '.join(names)}: {len(k)} clips" for k, names in by_split.items())
        common = sorted(set.intersection(*(set(k) for k in by_split)))
        hint = (f"or name clips all of them held out with --holdout-key ({len(common)} in common: {', '.join(common[:5])})" if common
                else "they hold out no clip in common")
        raise EvaluateError(f"the runs were trained with different held-out clips ({described}): evaluate them separately, {hint}")
    keys = list(next(iter(by_split)))
    check_untrained(runs, splits, store_clips, keys)
    first = next(iter(splits.values()))
    return keys, {"source": "runs", "fraction": first.get("fraction"), "rule": first.get("rule")}


def check_untrained(runs: Sequence[RunRef], splits: dict[str, dict | None], store_clips: Sequence[str | dict], keys: Sequence[str]) -> None:
    """EvaluateError naming the clip and the run when a run may have trained on a chosen clip: the clip is not in
    the run's holdout.json (a run without one trained on every clip), or shares a source video (content hash,
    url, source_id) with a clip the run could train on (a split made before copies were grouped)."""
    from stages.store.holdout import Holdout, clip_groups, trained_copies

    if not keys:
        return  # nothing chosen: the caller says so
    groups = clip_groups(store_clips)
    for run in runs:
        split = splits[run.name]
        if split is None:
            raise EvaluateError(f"clip {keys[0]}: run {run.name} has no {HOLDOUT_FILE} (trained before the held-out split existed, "
                                f"on every clip of the store): it trained on it; leave the run out of --runs")
        trained = sorted(set(keys) - set(split["keys"]))
        if trained:
            raise EvaluateError(f"clip {trained[0]}: run {run.name} trained on it (not in {run.path / HOLDOUT_FILE}; {len(trained)} of the "
                                f"{len(keys)} chosen clips are not): choose clips every run held out, or drop --holdout/--holdout-key")
        copies = trained_copies(Holdout(**split), store_clips, keys, groups)
        if copies:
            held, copy = copies[0]
            raise EvaluateError(f"clip {held}: run {run.name} trained on {copy}, the same video (content hash, url or source_id), "
                                f"so the clip is not held out from it ({len(copies)} such clip(s))")
