"""The corpus snapshot: the clip listing frozen at a store's first run, in shard order (corpus/snapshot.json)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from stages.config.loader import config_hash
from stages.store.format import SNAPSHOT_VERSION, StoreError


@dataclass
class Snapshot:
    """The corpus listing frozen at the first run: clip i of shard s is the same clip in every column.

    A growing bucket is added to with `append` (`extract --append`): the new clips go after the
    existing ones and start a new shard, so no committed shard ever changes its clips. `appended`
    holds the snapshot index where each appended batch starts; shards never straddle one.
    """

    source: str
    clips_per_shard: int
    clips: list[dict]  # ClipEntry.to_json() rows, in shard order
    created: float = field(default_factory=time.time)
    appended: list[int] = field(default_factory=list)  # start index of each appended batch of clips
    dropped: list[str] = field(default_factory=list)  # keys an append left out as copies of stored clips (corpus.dedupe)

    def _segments(self) -> list[tuple[int, int]]:
        """[start, end) clip ranges sharded independently: the first listing, then each append."""
        bounds = [0, *self.appended, len(self.clips)]
        return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]

    @property
    def num_shards(self) -> int:
        return sum(-(-(b - a) // self.clips_per_shard) for a, b in self._segments())

    @property
    def id(self) -> str:
        # the first listing's id, kept across appends: they change no existing shard, so every
        # column built on this store (before or after an append) still joins with the others
        base = self.appended[0] if self.appended else len(self.clips)
        return config_hash({"clips": self.clips[:base], "clips_per_shard": self.clips_per_shard})

    def find(self, key: str) -> int:
        """Snapshot index of clip `key`, or of the Nth clip for "@N"; a StoreError names the first keys."""
        if key.startswith("@") and key[1:].isdigit():
            index = int(key[1:]) if int(key[1:]) < len(self.clips) else None
        else:
            index = next((i for i, c in enumerate(self.clips) if c["key"] == key), None)
        if index is None:
            raise StoreError(f"no clip '{key}' in the snapshot of {self.source}; first keys: {', '.join(c['key'] for c in self.clips[:5])}")
        return index

    def shard_range(self, shard: int) -> range:
        first = 0  # number of the segment's first shard
        for a, b in self._segments():
            n = -(-(b - a) // self.clips_per_shard)
            if shard < first + n:
                start = a + (shard - first) * self.clips_per_shard
                return range(start, min(start + self.clips_per_shard, b))
            first += n
        return range(0)

    def shard_of(self, index: int) -> int:
        """The shard holding snapshot index `index`."""
        first = 0
        for a, b in self._segments():
            if index < b:
                return first + (index - a) // self.clips_per_shard
            first += -(-(b - a) // self.clips_per_shard)
        raise StoreError(f"snapshot index {index} is past the {len(self.clips)} clips of {self.source}")

    def shard_clips(self, shard: int) -> list[dict]:
        return [self.clips[i] for i in self.shard_range(shard)]

    def duplicates(self) -> dict[str, list[str]]:
        """{key of the first copy: keys of the other copies}: identical files, flagged or dropped at listing."""
        out: dict[str, list[str]] = {}
        for c in self.clips:
            if c.get("duplicate_of"):
                out.setdefault(c["duplicate_of"], []).append(c["key"])
            if c.get("duplicates"):
                out.setdefault(c["key"], []).extend(c["duplicates"])
        return out

    def append(self, rows: list[dict], dropped: list[str] = ()) -> "Snapshot":
        """This snapshot with `rows` (ClipEntry.to_json() rows of new keys) added as new shards after the existing ones.

        dropped: new keys left out as copies of stored clips, remembered so later runs do not count them as new.
        """
        have = {c["key"] for c in self.clips}
        clash = [r["key"] for r in rows if r["key"] in have]
        if clash:
            raise StoreError(f"cannot append clips already in the snapshot of {self.source}: {', '.join(clash[:5])}")
        if not rows and not dropped:
            return self
        starts = [*self.appended, len(self.clips)] if rows else self.appended
        return Snapshot(self.source, self.clips_per_shard, [*self.clips, *rows], self.created, starts, [*self.dropped, *dropped])

    def to_json(self) -> dict:
        out = {"version": SNAPSHOT_VERSION, "id": self.id, **dataclasses.asdict(self)}
        for key in ("appended", "dropped"):
            if not out[key]:
                del out[key]  # a never-appended snapshot is written as before
        return out

    @staticmethod
    def from_json(d: dict) -> "Snapshot":
        return Snapshot(d["source"], d["clips_per_shard"], d["clips"], d.get("created", 0.0), list(d.get("appended", [])), list(d.get("dropped", [])))
