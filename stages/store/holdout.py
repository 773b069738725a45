"""The held-out split: clips of a store that no run trains on, read by validation and `evaluate`.

Membership is a property of the clip key alone: a key is held out when the first 8 bytes of
sha256(key), read as an unsigned little-endian integer and divided by 2**64, fall below the fraction.
So the split does not depend on the order of the keys, the rank, the run or its seed, and it is
stable when a store grows (`extract --append`): a clip held out stays held out. Explicit keys are
added to it. Two guards for small stores: a fraction > 0 holds out at least the one key with the
lowest hash (so a demo of a few clips has a validation clip), and a split that would hold out every
clip is refused (nothing would be left to train on).

A run writes its split to `<run>/holdout.json` (`write_holdout`); `evaluate` and anything else that
must use the very same clips read it back with `read_holdout`, never recomputing it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from stages.store.format import StoreError

RULE = "sha256(key)[:8] as little-endian uint64 / 2**64 < fraction; at least the lowest-hash key when fraction > 0; plus explicit keys"
FILENAME = "holdout.json"


class HoldoutError(StoreError):
    """A held-out split that cannot be made (unknown explicit keys, every clip held out) or read.

    A StoreError, so the CLI prints it as one line (it is about the store's clip keys)."""


def key_position(key: str) -> float:
    """Where a key falls in [0, 1): sha256-based, so the same on every machine and Python process."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little") / 2.0**64


def holdout_keys(keys: Sequence[str], fraction: float, explicit: Sequence[str] = ()) -> set[str]:
    """The held-out subset of `keys`: those hashing below `fraction`, plus `explicit`.

    keys: every clip key of the store (its snapshot). fraction: in [0, 1). explicit: keys held out
    whatever their hash; each must be one of `keys`.
    """
    if not 0.0 <= fraction < 1.0:
        raise HoldoutError(f"held-out fraction must be in [0, 1), got {fraction}")
    known = set(keys)
    unknown = sorted(set(explicit) - known)
    if unknown:
        raise HoldoutError(f"held-out keys not in the store: {', '.join(unknown[:10])}" + (f" (and {len(unknown) - 10} more)" if len(unknown) > 10 else ""))
    held = {k for k in known if key_position(k) < fraction}
    if fraction > 0 and not held and known:
        held = {min(known, key=lambda k: (key_position(k), k))}  # small store: still one validation clip
    held |= set(explicit)
    if known and held >= known:
        raise HoldoutError(
            f"the held-out split (fraction {fraction}, {len(set(explicit))} explicit key(s)) takes all {len(known)} clips "
            f"of the store: nothing left to train on; lower data.holdout or list fewer data.holdout_keys"
        )
    return held


@dataclass
class Holdout:
    """A run's split as written to `<run>/holdout.json`."""

    fraction: float
    explicit: list[str]
    keys: list[str]  # sorted
    total: int  # clips in the store when the split was made
    rule: str = RULE

    def to_json(self) -> dict:
        return {"fraction": self.fraction, "explicit": self.explicit, "keys": self.keys, "total": self.total, "rule": self.rule}


def make_holdout(keys: Sequence[str], fraction: float, explicit: Sequence[str] = ()) -> Holdout:
    return Holdout(fraction, sorted(set(explicit)), sorted(holdout_keys(keys, fraction, explicit)), len(set(keys)))


def write_holdout(run_dir: str | Path, holdout: Holdout) -> Path:
    path = Path(run_dir) / FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(holdout.to_json(), indent=1) + "\n")
    tmp.replace(path)  # atomic: a reader never sees half a split
    return path


def check_resumed_split(run_dir: str | Path, holdout: Holdout) -> None:
    """A resumed run must hold out the clips its checkpoints were trained without: HoldoutError (one
    line, old -> new counts) when <run>/holdout.json names another key set (e.g. the store grew by a
    clip that falls in the split). A run folder without the file (written before it existed) passes."""
    if not (Path(run_dir) / FILENAME).exists():
        return
    old = read_holdout(run_dir)
    if set(old.keys) != set(holdout.keys):
        gone, new = sorted(set(old.keys) - set(holdout.keys)), sorted(set(holdout.keys) - set(old.keys))
        raise HoldoutError(
            f"{Path(run_dir) / FILENAME}: the resumed run would hold out another split ({len(old.keys)} -> {len(holdout.keys)} keys; "
            f"added {new[:5]}, dropped {gone[:5]}): it trained on clips it would now validate on; "
            f"resume with the store and data.holdout/holdout_keys it started with, or start a new run"
        )


def read_holdout(run_dir: str | Path) -> Holdout:
    """The split a run trained without; a clear one-line error when the file is missing or malformed."""
    path = Path(run_dir) / FILENAME
    try:
        d = json.loads(path.read_text())
        return Holdout(float(d["fraction"]), list(d.get("explicit", [])), list(d["keys"]), int(d["total"]), d.get("rule", RULE))
    except FileNotFoundError:
        raise HoldoutError(f"{path}: no held-out split (the run was trained before holdout.json was written, or is not a run folder)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HoldoutError(f"{path}: not a held-out split ({type(exc).__name__}: {exc})") from None
