"""data.filter: the teacher-quality filter decided at stream start from the clips' quality records.

A synthetic store with hand-made records checks each rule, the warning for stores without
records, the all-dropped error, the stream and the rank split; one in-process `distill` on the
stage-one store checks the run summary's counts and that no dropped clip is trained on.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import ROOT
from pipeline.cli import app
from stages.config.loader import ConfigError, from_dict, load_config
from stages.config.distill import DistillConfig, FilterConfig
from stages.store import ArraySpec, FeatureStore, Snapshot
from stages.distill.stream import ClipStream, StreamPosition
from stages.distill.teacher_filter import FilterError, failed_rules, filtered_keys

GOOD = {
    "object_score_fwd": 0.98, "object_score_bwd": 0.97, "presence_min": 0.95, "area_fwd_min": 0.2,
    "area_bwd_min": 0.2, "area_fwd_mean": 0.3, "area_bwd_mean": 0.3, "iou_fwd_bwd": 0.9,
}
# clip key -> how its record differs from GOOD (and the rules it fails under RULES_ON below)
CLIPS = {
    "c00": ({}, []),
    "c01": ({"presence_min": 0.3}, ["lost_subject"]),  # SAM2 says the subject left a frame
    "c02": ({"area_fwd_min": 0.0}, ["lost_subject", "area"]),  # an empty forward mask
    "c03": ({"area_bwd_min": 0.0, "iou_fwd_bwd": 0.4}, ["lost_subject", "area", "iou"]),
    "c04": ({"object_score_bwd": 0.6}, ["object_score"]),
    "c05": ({"area_fwd_min": 0.01}, ["area"]),  # small but present: only the area threshold drops it
    "c06": ({"iou_fwd_bwd": 0.5}, ["iou"]),
    "c07": ({}, []),
    "c08": ({"object_score_fwd": 0.69}, ["object_score"]),
    "c09": ({}, []),
}
RULES_ON = {"min_object_score": 0.7, "min_area": 0.05, "min_iou": 0.6}


def make_store(path, quality: bool = True, clips=CLIPS) -> FeatureStore:
    """5 shards of 2 clips, a teacher column (records with or without quality) and an encodings column."""
    keys = sorted(clips)
    store = FeatureStore(str(path))
    store.freeze_snapshot(Snapshot("/x", 2, [{"key": k, "url": f"/x/{k}.mp4", "caption": "", "prompt": None} for k in keys]))
    teacher = store.create_column("teacher", {}, {"lgf": ArraySpec((2,), "float16")})
    enc = store.create_column("encodings", {}, {"latents": ArraySpec((3,), "float16")})
    for shard in range(len(keys) // 2):
        idx = [2 * shard, 2 * shard + 1]
        recs = [{"key": keys[i], "index": i, **({"quality": {**GOOD, **clips[keys[i]][0]}} if quality else {})} for i in idx]
        teacher.write_shard(shard, {"lgf": np.stack([np.full(2, i, "float16") for i in idx])}, recs, [])
        enc.write_shard(shard, {"latents": np.stack([np.full(3, i, "float16") for i in idx])}, [{"key": keys[i], "index": i} for i in idx], [])
    return store


def expected(rule_names: set[str]) -> set[str]:
    return {k for k, (_, rules) in CLIPS.items() if set(rules) & rule_names}


def test_config_is_typed_and_validated():
    cfg = from_dict(DistillConfig, {})
    assert cfg.data.filter == FilterConfig(enabled=True, lost_subject=True, min_object_score=None, min_area=None, min_iou=None)
    cfg = load_config(DistillConfig, ROOT / "configs/distill/sample.yaml", ["data.filter.min_iou=0.5", "data.filter.lost_subject=false"])
    assert cfg.data.filter.min_iou == 0.5 and not cfg.data.filter.lost_subject
    with pytest.raises(ConfigError, match=r"data.filter.min_area must be in \[0, 1\]"):
        load_config(DistillConfig, ROOT / "configs/distill/sample.yaml", ["data.filter.min_area=2"])


@pytest.mark.parametrize(
    "settings, rules",
    [
        ({}, {"lost_subject"}),  # the default: lost-subject clips only
        ({"lost_subject": False, "min_object_score": 0.7}, {"object_score"}),
        ({"lost_subject": False, "min_area": 0.05}, {"area"}),
        ({"lost_subject": False, "min_iou": 0.6}, {"iou"}),
        ({**RULES_ON}, {"lost_subject", "object_score", "area", "iou"}),
    ],
)
def test_each_rule_drops_its_clips(tmp_path, settings, rules):
    store = make_store(tmp_path / "s")
    result = filtered_keys(FilterConfig(**settings), store.column("teacher"), store.url)
    assert set(result.keys) == expected(rules)
    assert result.dropped == {r: sum(r in rs for _, rs in CLIPS.values()) for r in ("lost_subject", "object_score", "area", "iou") if r in rules}
    assert result.clips == 10 and result.kept == 10 - len(expected(rules)) and result.unrecorded == 0
    summary = result.to_json()
    assert summary["dropped"] == len(expected(rules)) and summary["dropped_keys"] == sorted(expected(rules))
    json.dumps(summary)


def test_thresholds_compare_strictly_below():
    """A value equal to its threshold is kept; the lost-subject rule's presence line is 0.5."""
    cfg = FilterConfig(min_object_score=0.97, min_area=0.2, min_iou=0.9)
    assert failed_rules(cfg, GOOD) == []
    assert failed_rules(cfg, {**GOOD, "presence_min": 0.5}) == []
    assert failed_rules(cfg, {**GOOD, "presence_min": 0.4999}) == ["lost_subject"]


def test_disabled_filter_reads_nothing_and_drops_nothing(tmp_path):
    store = make_store(tmp_path / "s")
    result = filtered_keys(FilterConfig(enabled=False, **RULES_ON), store.column("teacher"), store.url)
    assert not result.keys and result.clips == 0 and result.to_json()["enabled"] is False
    assert "off" in result.line()


def test_store_without_quality_records_keeps_every_clip_with_one_warning(tmp_path, caplog):
    store = make_store(tmp_path / "old", quality=False)
    with caplog.at_level(logging.WARNING):
        result = filtered_keys(FilterConfig(**RULES_ON), store.column("teacher"), store.url)
    assert not result.keys and result.unrecorded == result.clips == 10
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "10 of 10 clips have no teacher quality record" in warnings[0] and "kept" in warnings[0]


def test_a_filter_that_drops_every_clip_is_one_clear_line(tmp_path):
    store = make_store(tmp_path / "s")
    with pytest.raises(FilterError) as err:
        filtered_keys(FilterConfig(min_iou=1.0), store.column("teacher"), store.url)
    message = str(err.value)
    assert "\n" not in message and store.url in message and "drops all 10 clips" in message and "iou 10" in message and "lost_subject 3" in message


def test_the_stream_never_yields_a_filtered_key_and_ranks_agree(tmp_path, monkeypatch):
    """Each rank decides from the store alone: the same keys on both ranks; together they stream
    exactly the kept clips, disjointly, in equal batch counts."""
    store = make_store(tmp_path / "s")
    cols = [store.column("teacher"), store.column("encodings")]
    seen, counts, decided = [], [], []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        result = filtered_keys(FilterConfig(**RULES_ON), store.column("teacher"), store.url)
        decided.append(result.keys)
        stream = ClipStream(store, cols, {"teacher": ["lgf"], "encodings": ["latents"]}, batch_size=1, seed=1, exclude=result.keys)
        batches = list(stream.epoch(StreamPosition()))
        counts.append((len(batches), stream.batches_per_epoch()))
        seen.append({k for b in batches for k in b["keys"]})
    assert decided[0] == decided[1] == expected({"lost_subject", "object_score", "area", "iou"})
    assert counts[0] == counts[1] and counts[0][0] == counts[0][1] > 0
    assert not seen[0] & seen[1]
    assert not (seen[0] | seen[1]) & decided[0]
    assert seen[0] | seen[1] <= set(CLIPS) - decided[0]


def test_distill_summary_holds_the_counts_and_no_dropped_clip_is_trained_on(student_store, tmp_path):
    """On the stage-one store: drop the clips whose fwd/bwd IoU is below the median; the run trains
    on the others only (rank log), and summary.json's `filter` entry says how many and why."""
    teacher = FeatureStore(student_store).column("teacher")
    records = [r for s in sorted(teacher.committed_shards()) for r in teacher.shard_records(s)]
    assert all(set(r["quality"]) >= set(GOOD) for r in records)  # stage one wrote them
    ious = sorted(r["quality"]["iou_fwd_bwd"] for r in records)
    threshold = ious[len(ious) // 2]
    dropped = {r["key"] for r in records if r["quality"]["iou_fwd_bwd"] < threshold}
    assert 0 < len(dropped) < len(records) and ious[-1] < 1.0
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        ["distill", "--config", str(ROOT / "configs/distill/sample.yaml"), "--store", student_store, "--out", str(out),
         "train.steps=3", "train.batch_size=1", "data.num_workers=0", "train.checkpoint_every=100", f"data.filter.min_iou={threshold}"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())["filter"]
    assert summary["enabled"] and summary["rules"]["iou"] == threshold
    assert summary["dropped"] == len(dropped) and summary["dropped_by_rule"]["iou"] == len(dropped)
    assert summary["clips"] == len(records) and summary["kept"] == len(records) - len(dropped)
    assert set(summary["dropped_keys"]) == dropped
    trained = {k for line in (out / "ranks" / "rank-0.jsonl").read_text().splitlines() for k in json.loads(line)["clips"]}
    assert trained and not trained & dropped
    everything = CliRunner().invoke(
        app,
        ["distill", "--config", str(ROOT / "configs/distill/sample.yaml"), "--store", student_store, "--out", str(tmp_path / "none"),
         "train.steps=1", "data.num_workers=0", "data.filter.min_iou=1.0"],
    )
    assert everything.exit_code == 2 and "Traceback" not in everything.output
    assert f"data.filter drops all {len(records)} clips of {student_store}" in everything.output
