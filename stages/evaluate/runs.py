"""Which runs to evaluate and on which held-out clips.

A run folder is what `sam2videox distill` writes: lora/ (the exported LoRA with sam2videox.json) and
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


def heldout_keys(runs: Sequence[RunRef], store_keys: Sequence[str], fraction: float | None = None,
                 explicit: Sequence[str] = ()) -> tuple[list[str], dict]:
    """The clips to evaluate on, sorted, and where they came from (written into the protocol).

    Explicit (--holdout FRACTION and/or --holdout-key KEY): stages.store.holdout's rule on the store's
    keys, the same split a run with data.holdout=FRACTION, data.holdout_keys=KEYS trains without.
    Otherwise every run's holdout.json; they must all name the same clips.
    """
    if fraction is not None or explicit:
        from stages.store.holdout import HoldoutError, holdout_keys

        try:
            keys = holdout_keys(list(store_keys), fraction or 0.0, list(explicit))
        except HoldoutError as exc:
            raise EvaluateError(f"held-out clips: {exc}") from None
        return sorted(keys), {"source": "explicit", "fraction": fraction, "explicit": list(explicit)}
    if not runs:
        raise EvaluateError("no runs: give --runs, or --holdout FRACTION / --holdout-key KEY to evaluate the base model alone")
    splits = {r.name: run_holdout(r) for r in runs}
    missing = [n for n, s in splits.items() if s is None]
    if missing:
        raise EvaluateError(f"run(s) {', '.join(missing)} have no {HOLDOUT_FILE} (trained before the held-out split existed): "
                            f"pass --holdout FRACTION or --holdout-key KEY to name the clips")
    groups: dict[tuple[str, ...], list[str]] = {}
    for name, split in splits.items():
        groups.setdefault(tuple(sorted(split["keys"])), []).append(name)
    if len(groups) > 1:
        described = "; ".join(f"{', '.join(names)}: {len(k)} clips" for k, names in groups.items())
        raise EvaluateError(f"the runs were trained with different held-out clips ({described}): evaluate them separately "
                            f"or pass --holdout/--holdout-key to choose the clips")
    keys = list(next(iter(groups)))
    first = next(iter(splits.values()))
    return keys, {"source": "runs", "fraction": first.get("fraction"), "rule": first.get("rule")}
