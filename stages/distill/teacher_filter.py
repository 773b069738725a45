"""The teacher-quality filter (`data.filter`): which clips a run leaves out, decided at stream start.

Stage one writes a quality record per clip into the teacher column's shard records
(stages/extract/columns/teacher.py `teacher_quality`: object score per pass, presence minimum,
mask areas, fwd/bwd mask IoU). This module reads those records only (the shard groups' attrs, no
array), applies the rules of `FilterConfig`, and returns the keys to exclude with the counts per
rule. The result depends on the store and the config alone, so every rank of a DDP/FSDP run
excludes the same keys and the ranks' batch counts agree; the trainer unions the keys with any
other exclusion (held-out clips) and hands them to `TrainingData.stream(..., exclude=keys)`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from stages.config.distill import FilterConfig
from stages.store import Column, FeatureStore, StoreError
from stages.store.schema import CLIP, QUALITY, TEACHER_COLUMN, TEACHER_RECORD

log = logging.getLogger(__name__)

# rule name -> what it checks, in the order they are reported
RULES = ("lost_subject", "object_score", "area", "iou")


class FilterError(StoreError):
    """The filter leaves no clip to train on."""


@dataclass
class FilterResult:
    """What the filter decided for one teacher column.

    keys: the clips to exclude. clips: clips whose records were read (every committed clip of the
    column, less shards whose records are unreadable: the stream reports those). dropped: rule ->
    clips failing it (a clip failing several rules counts under each; `len(keys)` is the total).
    unrecorded: clips without a quality record (stores extracted before it), kept.
    """

    enabled: bool
    column: str | None
    rules: dict = field(default_factory=dict)
    keys: frozenset[str] = frozenset()
    clips: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    unrecorded: int = 0

    @property
    def kept(self) -> int:
        return self.clips - len(self.keys)

    def to_json(self) -> dict:
        """The run summary's `filter` entry (keys listed: a reader can see which clips were left out)."""
        return {
            "enabled": self.enabled,
            "column": self.column,
            "rules": self.rules,
            "clips": self.clips,
            "kept": self.kept,
            "dropped": len(self.keys),
            "dropped_by_rule": self.dropped,
            "without_quality_record": self.unrecorded,
            "dropped_keys": sorted(self.keys),
        }

    def line(self) -> str:
        """One log line: totals and counts per rule."""
        if not self.enabled:
            return "teacher filter off (data.filter.enabled=false)"
        per_rule = ", ".join(f"{r} {n}" for r, n in self.dropped.items()) or "no rule active"
        return f"teacher filter on {self.column}: dropped {len(self.keys)} of {self.clips} clips ({per_rule}); {self.kept} kept"


def active_rules(cfg: FilterConfig) -> dict:
    """The rules that can drop a clip, with their thresholds (JSON-able; the summary records them)."""
    rules: dict = {}
    if cfg.lost_subject:
        rules["lost_subject"] = {QUALITY.presence_min: 0.5, "area_min": 0.0}
    if cfg.min_object_score is not None:
        rules["object_score"] = cfg.min_object_score
    if cfg.min_area is not None:
        rules["area"] = cfg.min_area
    if cfg.min_iou is not None:
        rules["iou"] = cfg.min_iou
    return rules


def failed_rules(cfg: FilterConfig, quality: dict) -> list[str]:
    """The rules one clip's quality record fails (see FilterConfig for each rule's definition)."""
    q = {k: float(v) for k, v in quality.items()}
    failed = []
    if cfg.lost_subject and (q[QUALITY.presence_min] < 0.5 or q[QUALITY.area_fwd_min] == 0.0 or q[QUALITY.area_bwd_min] == 0.0):
        failed.append("lost_subject")
    if cfg.min_object_score is not None and min(q[QUALITY.object_score_fwd], q[QUALITY.object_score_bwd]) < cfg.min_object_score:
        failed.append("object_score")
    if cfg.min_area is not None and min(q[QUALITY.area_fwd_min], q[QUALITY.area_bwd_min]) < cfg.min_area:
        failed.append("area")
    if cfg.min_iou is not None and q[QUALITY.iou_fwd_bwd] < cfg.min_iou:
        failed.append("iou")
    return failed


def quality_column(store: FeatureStore, teacher: Column | None) -> Column | None:
    """The column whose clip records the filter reads: the SAM2 teacher column.

    A run trained against another teacher column (the image-only DINO baseline) reads the store's one
    SAM2 `teacher` column instead, so every ablation on a store trains on the same clips. With none or
    several SAM2 teacher columns and a non-SAM2 column selected, the selected column is used (it has no
    quality records: every clip is kept, with the warning below).
    """
    if teacher is not None and teacher.name == TEACHER_COLUMN:
        return teacher
    sam2 = [c for c in store.columns() if c.name == TEACHER_COLUMN]
    return sam2[0] if len(sam2) == 1 else teacher


def filtered_keys(cfg: FilterConfig, teacher: Column | None, store_url: str) -> FilterResult:
    """The clips of `teacher` that `cfg` drops, with counts per rule; reads shard records, no array.

    A column without quality records (extracted before them) keeps every such clip, with one
    warning. A filter that drops every clip raises FilterError naming the store and the counts.
    """
    rules = active_rules(cfg)
    if not cfg.enabled or not rules:
        return FilterResult(cfg.enabled and bool(rules), teacher.dirname if teacher is not None else None, rules)
    if teacher is None:
        log.warning("%s: no teacher column, so no quality records: data.filter cannot apply, every clip is kept", store_url)
        return FilterResult(True, None, rules)
    keys: set[str] = set()
    dropped = {r: 0 for r in RULES if r in rules}
    clips = unrecorded = 0
    for shard in sorted(teacher.committed_shards()):
        try:
            records = teacher.shard_records(shard)
        except StoreError:  # the stream reports (on_corrupt=fail) or skips this shard; nothing to filter here
            continue
        for record in records:
            clips += 1
            quality = record.get(TEACHER_RECORD.quality)
            if not isinstance(quality, dict):
                unrecorded += 1
                continue
            try:
                failed = failed_rules(cfg, quality)
            except (KeyError, TypeError, ValueError) as exc:
                raise StoreError(f"{store_url} ({teacher.dirname}), shard {shard}, clip {record.get(CLIP.key)}: quality record unreadable ({exc!r})") from exc
            for rule in failed:
                dropped[rule] += 1
            if failed:
                keys.add(record[CLIP.key])
    if unrecorded:
        log.warning(
            "%s (%s): %d of %d clips have no teacher quality record (extracted before it): data.filter cannot apply to them, they are kept",
            store_url, teacher.dirname, unrecorded, clips,
        )
    result = FilterResult(True, teacher.dirname, rules, frozenset(keys), clips, dropped, unrecorded)
    if clips and not result.kept:
        per_rule = ", ".join(f"{r} {n}" for r, n in dropped.items())
        raise FilterError(
            f"data.filter drops all {clips} clips of {store_url} ({teacher.dirname}): {per_rule}; "
            f"loosen data.filter (e.g. data.filter.lost_subject=false) or data.filter.enabled=false"
        )
    return result
