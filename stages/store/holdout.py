"""The held-out split: clips of a store that no run trains on, read by validation and `evaluate`.

Membership is decided per *group*, the clips of one source video: rows of the store's snapshot are
linked when they share a content hash (identical files under two keys, `corpus.content_hash`), a
url, or a manifest `source_id` (windows or crops of one video), or when one is flagged
`duplicate_of` the other. A group is held out when any of its keys falls below the fraction: the
first 8 bytes of sha256(key), read as an unsigned little-endian integer and divided by 2**64. A
clip alone in its group (every clip of a store without copies) is thus held out exactly as before
groups existed. So the split does not depend on the order of the keys, the rank, the run or its
seed, a copy of a held-out clip is never trained on, and a group held out stays held out when a
store grows (growth only adds keys, and a group's lowest position only falls). A clip with a time
range (a window of a long source: its row has `start` / `end`) is placed by its source instead of its
own key (the position of its `source_id`, else its url): a source cut into 100 windows would
otherwise be held out whenever any one of 100 keys fell below the fraction (a 5% split would hold
out 99% of such sources); so sources, not windows, are held out at the fraction. Explicit keys hold
out their whole group. Two guards for small stores: a fraction > 0 holds out at least the group of
the lowest-hash key (so a demo of a few clips has a validation clip), and a split that would hold
out every clip is refused (nothing would be left to train on).

A run writes its split to `<run>/holdout.json` (`write_holdout`); `evaluate` and anything else that
must use the very same clips read it back with `read_holdout`, never recomputing it. A resumed run
keeps the split it started with (`resume_split`): clips appended to the store since then join
training, except copies of held-out clips, which join the held-out set.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence, Union

from stages.store.format import StoreError

log = logging.getLogger(__name__)

RULE = ("groups (same content_hash, url, source_id or duplicate_of) held out whole; a group is held out when "
        "sha256(key)[:8] as little-endian uint64 / 2**64 < fraction for one of its keys (for a clip with a start/end range: "
        "of 'source:' + its source_id, else its url); at least the group of the lowest-hash key when fraction > 0; "
        "plus the groups of explicit keys")
FILENAME = "holdout.json"
LINKS = ("content_hash", "url", "source_id")  # snapshot row fields that name the source video

Clip = Union[str, Mapping]  # a snapshot row (ClipEntry.to_json()) or a bare key (a clip alone in its group)


class HoldoutError(StoreError):
    """A held-out split that cannot be made (unknown explicit keys, every clip held out) or read.

    A StoreError, so the CLI prints it as one line (it is about the store's clip keys)."""


def key_position(key: str) -> float:
    """Where a key falls in [0, 1): sha256-based, so the same on every machine and Python process."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little") / 2.0**64


def _rows(clips: Sequence[Clip]) -> list[Mapping]:
    return [{"key": c} if isinstance(c, str) else c for c in clips]


def _anchor(row: Mapping) -> str:
    """What places a clip in [0, 1): its key, or for a window of a source (a row with a range) the source."""
    if row.get("start") is None and row.get("end") is None:
        return row["key"]
    return "source:" + (row.get("source_id") or row.get("url") or row["key"])


def clip_groups(clips: Sequence[Clip]) -> dict[str, str]:
    """{key: its group's id}: the id is the member key whose anchor (_anchor: the key, or a window's source) has the
    lowest key_position (ties: the smaller key).

    clips: snapshot rows, in any order. Union-find over the keys, joined through each row's LINKS
    values and its duplicate_of / duplicates keys (those not in `clips`, e.g. copies dropped by
    corpus.dedupe, are ignored).
    """
    rows = _rows(clips)
    parent = {r["key"]: r["key"] for r in rows}

    def find(k: str) -> str:
        while parent[k] != k:
            parent[k] = parent[parent[k]]  # path halving
            k = parent[k]
        return k

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    first: dict[tuple[str, str], str] = {}  # (field, value) -> first key seen with it
    for r in rows:
        for name in LINKS:
            value = r.get(name)
            if value:
                union(r["key"], first.setdefault((name, value), r["key"]))
        for other in [r.get("duplicate_of"), *r.get("duplicates", ())]:
            if other in parent:
                union(r["key"], other)
    members: dict[str, list[str]] = {}
    for k in parent:
        members.setdefault(find(k), []).append(k)
    anchor = {r["key"]: _anchor(r) for r in rows}
    out: dict[str, str] = {}
    for keys in members.values():
        gid = min(keys, key=lambda k: (key_position(anchor[k]), k))
        out.update(dict.fromkeys(keys, gid))
    return out


def _positions(clips: Sequence[Clip], groups: Mapping[str, str]) -> dict[str, float]:
    """{group id: its position}: the key_position of the id's anchor (the lowest of its group's)."""
    anchor = {r["key"]: _anchor(r) for r in _rows(clips)}
    return {g: key_position(anchor[g]) for g in set(groups.values())}


def _unknown(explicit: Sequence[str], known: set[str]) -> None:
    unknown = sorted(set(explicit) - known)
    if unknown:
        raise HoldoutError(f"held-out keys not in the store: {', '.join(unknown[:10])}" + (f" (and {len(unknown) - 10} more)" if len(unknown) > 10 else ""))


def _not_all(held: set[str], known: set[str], what: str) -> None:
    if known and held >= known:
        raise HoldoutError(f"the held-out split ({what}) takes all {len(known)} clips of the store: nothing left to train on; "
                           f"lower data.holdout or list fewer data.holdout_keys")


def holdout_keys(clips: Sequence[Clip], fraction: float, explicit: Sequence[str] = ()) -> set[str]:
    """The held-out subset of the store's keys: whole groups (clip_groups) whose id hashes below `fraction`, plus
    the groups of `explicit`.

    clips: every clip of the store (its snapshot rows, or bare keys). fraction: in [0, 1). explicit: keys
    held out whatever their hash; each must be one of the clips.
    """
    if not 0.0 <= fraction < 1.0:
        raise HoldoutError(f"held-out fraction must be in [0, 1), got {fraction}")
    groups = clip_groups(clips)
    known = set(groups)
    _unknown(explicit, known)
    position = _positions(clips, groups)
    ids = {g for g in position if position[g] < fraction}  # a group's id is its lowest-position key
    if fraction > 0 and not ids and known:
        ids = {min(position, key=lambda g: (position[g], g))}  # small store: still one validation clip
    ids |= {groups[k] for k in explicit}
    held = {k for k, g in groups.items() if g in ids}
    _not_all(held, known, f"fraction {fraction}, {len(set(explicit))} explicit key(s)")
    return held


@dataclass
class Holdout:
    """A run's split as written to `<run>/holdout.json`."""

    fraction: float
    explicit: list[str]
    keys: list[str]  # sorted
    total: int  # clips in the store (the first `total` snapshot rows) when the split was last written
    rule: str = RULE

    def to_json(self) -> dict:
        return {"fraction": self.fraction, "explicit": self.explicit, "keys": self.keys, "total": self.total, "rule": self.rule}


def make_holdout(clips: Sequence[Clip], fraction: float, explicit: Sequence[str] = ()) -> Holdout:
    keys = {r["key"] for r in _rows(clips)}
    return Holdout(fraction, sorted(set(explicit)), sorted(holdout_keys(clips, fraction, explicit)), len(keys))


def write_holdout(run_dir: str | Path, holdout: Holdout) -> Path:
    path = Path(run_dir) / FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(holdout.to_json(), indent=1) + "\n")
    tmp.replace(path)  # atomic: a reader never sees half a split
    return path


def trained_copies(split: Holdout, clips: Sequence[Clip], keys: Sequence[str] | None = None,
                   groups: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """(held-out key, copy) pairs: a clip of `keys` (default: the split's) shares a group with a clip the run
    may have trained on, one of the first `split.total` snapshot rows that the split does not hold out.

    clips: the store's snapshot rows in snapshot order (appends go last, so rows past `total` were
    added after the split was written and never trained on by this run). groups: clip_groups(clips), when known."""
    rows = _rows(clips)
    groups = groups if groups is not None else clip_groups(rows)
    held = set(split.keys)
    by_group: dict[str, list[str]] = {}
    for r in rows[: split.total]:
        if r["key"] not in held:
            by_group.setdefault(groups[r["key"]], []).append(r["key"])
    return [(k, by_group[groups[k]][0]) for k in sorted(keys if keys is not None else held) if k in groups and groups[k] in by_group]


def resume_split(run_dir: str | Path, clips: Sequence[Clip], fraction: float, explicit: Sequence[str] = ()) -> Holdout:
    """The split a resumed run keeps: <run>/holdout.json's, never recomputed (a store that grew must not move a
    held-out clip into training, nor a trained one into validation). Clips appended since it was written join
    training, except copies (same group) of held-out clips, which are held out with them (logged).

    HoldoutError, one line, when the run cannot keep it: data.holdout / data.holdout_keys differ from the saved
    ones, a held-out clip is gone from the store, or a clip the run trained on is a copy of a held-out one.
    A run folder without the file (a run from before the split) gets a fresh split (make_holdout).
    """
    path = Path(run_dir) / FILENAME
    if not path.exists():
        return make_holdout(clips, fraction, explicit)
    saved = read_holdout(run_dir)
    changed = [f"{name}: {a!r} -> {b!r}" for name, a, b in (("data.holdout", saved.fraction, fraction),
                                                             ("data.holdout_keys", saved.explicit, sorted(set(explicit)))) if a != b]
    if changed:
        raise HoldoutError(f"{path}: the run's split was made with other settings ({', '.join(changed)}): "
                           f"restore them, or start a new run in another --out folder")
    rows = _rows(clips)
    keys = [r["key"] for r in rows]
    gone = sorted(set(saved.keys) - set(keys))
    if gone:
        raise HoldoutError(f"{path}: held-out clip(s) {', '.join(gone[:5])} are no longer in the store ({len(gone)} of {len(saved.keys)}): "
                           f"resume on the store the run started with, or start a new run")
    groups = clip_groups(rows)
    leaks = trained_copies(saved, rows, groups=groups)
    if leaks:
        held, copy = leaks[0]
        raise HoldoutError(f"{path}: held-out clip {held} is the same video as {copy}, which the run may have trained on "
                           f"({len(leaks)} such clip(s); the split predates copy grouping or a new clip links them): start a new run")
    held_groups = {groups[k] for k in saved.keys}
    copies = sorted(k for k in keys[saved.total:] if groups[k] in held_groups)
    if len(keys) > saved.total:
        log.info("resume: %d clip(s) appended to the store since %s was written join training; the saved split is kept "
                 "(%d held out)", len(keys) - saved.total - len(copies), path, len(saved.keys))
    if copies:
        log.warning("resume: %d appended clip(s) are copies of held-out clips and are held out with them: %s", len(copies), ", ".join(copies[:5]))
    held = set(saved.keys) | set(copies)
    _not_all(held, set(keys), f"{path} plus {len(copies)} appended copies")
    return Holdout(saved.fraction, saved.explicit, sorted(held), len(keys), saved.rule)


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
