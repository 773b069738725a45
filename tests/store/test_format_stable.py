"""The on-disk contract across the store split (stages/store/store.py -> format, snapshot, column, writer,
join, feature_store; named schemas in stages/store/schema.py): column keys and schemas of the sample
configs are the ones commit 89769df (before the move) computed, and a store that commit's
`extract` wrote (tests/fixtures/store_pre_move: 3 sample clips, 9 frames at 64x96, 2 shards, the
teacher, encodings and image_teacher columns, ~140 KB) opens, verifies and streams with this code.

The pinned values were computed at 89769df with its own code (pipeline/store.py's create_column
key over stages/extract/columns.py's column_spec); they must never be regenerated from this code.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from stages.config.extract import ExtractConfig
from stages.config.loader import load_config
from stages.extract.columns.registry import column_spec
from stages.store import FeatureStore, Snapshot
from stages.store.integrity import verify_store
from stages.store.schema import ENCODINGS, IMAGE_TEACHER, QUALITY, TEACHER, TEACHER_RECORD

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "store_pre_move"

TEACHER_SCHEMA = {
    "bwd": ["int8", [13, 8, 12, 32]], "bwd_scale": ["float32", [13, 8, 12, 1]],
    "fwd": ["int8", [13, 8, 12, 32]], "fwd_scale": ["float32", [13, 8, 12, 1]],
    "lgf": ["float16", [12, 8, 12, 49]], "mask": ["uint8", [13, 8, 12]], "mask_bwd": ["uint8", [13, 8, 12]],
}
# (config, column) -> (hash, {array: [dtype, shape]}) at 89769df
PINNED = {
    ("sample.yaml", "teacher"): ("df125c487243acc7", TEACHER_SCHEMA),
    ("sample.yaml", "encodings"): ("8b32fbfd2b654566", {
        "image_latents": ["float16", [16, 1, 16, 24]], "latents": ["float16", [32, 13, 16, 24]],
        "prompt_embeds": ["float16", [16, 32]], "prompt_mask": ["uint8", [16]],
    }),
    ("sample.yaml", "image_teacher"): ("741603bdf2f22b14", {
        "fwd": ["int8", [13, 8, 12, 32]], "fwd_scale": ["float32", [13, 8, 12, 1]], "lgf": ["float16", [12, 8, 12, 49]],
    }),
    ("sample_wan.yaml", "teacher"): ("df125c487243acc7", TEACHER_SCHEMA),
    ("sample_wan.yaml", "encodings"): ("6b9cebe8921e0930", {
        "latents": ["float16", [32, 13, 16, 24]], "prompt_embeds": ["float16", [16, 32]], "prompt_mask": ["uint8", [16]],
    }),
}
# the fixture's columns (its config: sample.yaml with the overrides below), as 89769df named them
FIXTURE_COLUMNS = {"teacher": "7d141dd5ecaa836b", "encodings": "c4abf30fc1e291c1", "image_teacher": "8137f8f0aca23bd9"}
FIXTURE_OVERRIDES = [
    "corpus.clips_per_shard=2", "video.num_frames=9", "video.height=64", "video.width=96",
    "teacher.image_size=64", "ray.num_workers=1",
]


def _keys(cfg: ExtractConfig, tmp_path: Path) -> dict[str, tuple[str, dict]]:
    """{column: (hash, schema)} as this code's FeatureStore keys the config's columns."""
    store = FeatureStore(str(tmp_path / "keys"))
    store.freeze_snapshot(Snapshot("/x", 1, [{"key": "a", "url": "/x/a.mp4", "caption": "", "prompt": None}]))
    out = {}
    for name in cfg.columns:
        spec = column_spec(name, cfg)
        col = store.create_column(name, spec.config, spec.schema, spec.attrs)
        out[name] = (col.hash, {k: [v.dtype, list(v.shape)] for k, v in col.schema.items()})
    return out


@pytest.mark.parametrize("config", ["sample.yaml", "sample_wan.yaml"])
def test_sample_column_keys_and_schemas_are_the_pre_move_ones(config, tmp_path):
    cfg = load_config(ExtractConfig, ROOT / "configs" / "extract" / config)
    want = {col: value for (cfg_name, col), value in PINNED.items() if cfg_name == config}
    assert _keys(cfg, tmp_path) == want


def test_the_fixture_config_keys_the_fixture_columns(tmp_path):
    # a rerun of the pre-move extract with this code joins its columns instead of starting new ones
    cfg = load_config(ExtractConfig, ROOT / "configs" / "extract" / "sample.yaml", [f"corpus.url={tmp_path}", *FIXTURE_OVERRIDES])
    assert {name: h for name, (h, _) in _keys(cfg, tmp_path).items()} == FIXTURE_COLUMNS


@pytest.fixture
def old_store(tmp_path) -> FeatureStore:
    shutil.copytree(FIXTURE, tmp_path / "store")  # a copy: nothing a reader does may touch the fixture
    return FeatureStore(str(tmp_path / "store"))


def test_pre_move_store_opens_with_its_columns_and_records(old_store):
    summary = old_store.summary()
    assert (summary["clips"], summary["shards"], summary["clips_per_shard"], summary["failed"]) == (3, 2, 2, 0)
    assert {c["dir"] for c in summary["columns"]} == {f"{n}-{h}" for n, h in FIXTURE_COLUMNS.items()}
    assert all(c["committed_shards"] == 2 and c["clips"] == 3 for c in summary["columns"])
    teacher = old_store.column("teacher")
    assert set(teacher.schema) == {TEACHER.fwd, TEACHER.fwd_scale, TEACHER.bwd, TEACHER.bwd_scale, TEACHER.lgf, TEACHER.mask, TEACHER.mask_bwd}
    assert set(old_store.column("image_teacher").schema) == {IMAGE_TEACHER.fwd, IMAGE_TEACHER.fwd_scale, IMAGE_TEACHER.lgf}
    encodings = old_store.column("encodings")
    assert set(encodings.schema) == {ENCODINGS.latents, ENCODINGS.image_latents, ENCODINGS.prompt_embeds, ENCODINGS.prompt_mask}
    records = teacher.shard_records(0) + teacher.shard_records(1)
    assert [r["key"] for r in records] == [c["key"] for c in old_store.require_snapshot().clips]
    assert all(set(r[TEACHER_RECORD.quality]) == set(QUALITY.all) for r in records)
    extra = encodings.column_arrays()
    assert extra[ENCODINGS.empty_prompt_embeds].shape == (16, 32) and extra[ENCODINGS.empty_prompt_mask].shape == (16,)


def test_pre_move_store_verifies_in_full(old_store):
    report = verify_store(old_store, full=True)
    assert report.ok and report.damaged == [] and report.unverified == []
    assert report.clips == 9  # 3 clips x 3 columns


def test_pre_move_store_streams_joined_dequantised_batches(old_store):
    from stages.distill.stream import ClipStream, StreamPosition

    cols = [old_store.column("teacher"), old_store.column("encodings")]
    arrays = {"teacher": [TEACHER.lgf, TEACHER.fwd, TEACHER.mask], "encodings": [ENCODINGS.latents, ENCODINGS.prompt_embeds]}
    stream = ClipStream(old_store, cols, arrays=arrays, batch_size=1, seed=0, shuffle_buffer=2)
    batches = list(stream.epoch(StreamPosition()))
    assert len(batches) == stream.batches_per_epoch() == 3
    assert sorted(k for b in batches for k in b["keys"]) == sorted(c["key"] for c in old_store.require_snapshot().clips)
    b = batches[0]
    assert tuple(b[TEACHER.fwd].shape) == (1, 3, 4, 6, 32) and str(b[TEACHER.fwd].dtype) == "torch.float32"  # int8 * scale
    assert tuple(b[TEACHER.lgf].shape) == (1, 2, 4, 6, 49) and tuple(b[ENCODINGS.latents].shape) == (1, 32, 3, 8, 12)
    assert tuple(b[TEACHER.mask].shape) == (1, 3, 4, 6) and str(b[TEACHER.mask].dtype) == "torch.uint8"
    # the same clip's values, read the column's own way, match what the stream yields
    teacher = old_store.column("teacher")
    index = b["index"][0]
    shard = old_store.require_snapshot().shard_of(index)
    data = teacher.read_shard(shard)
    row = next(r for r, rec in enumerate(data.records) if rec["index"] == index)
    np.testing.assert_array_equal(b[TEACHER.fwd][0].numpy(), teacher.read_dequantized(data, TEACHER.fwd, row))


def test_schema_names_are_the_stored_strings():
    from dataclasses import astuple

    from stages.core.quantize import scale_name
    from stages.store.schema import COMMIT, ENCODINGS_RECORD

    assert astuple(TEACHER) == ("fwd", "fwd_scale", "bwd", "bwd_scale", "lgf", "mask", "mask_bwd")
    assert (TEACHER.fwd_scale, TEACHER.bwd_scale, IMAGE_TEACHER.fwd_scale) == tuple(scale_name(n) for n in ("fwd", "bwd", "fwd"))
    assert astuple(ENCODINGS) == ("latents", "image_latents", "image_embeds", "prompt_embeds", "prompt_mask", "empty_prompt_embeds", "empty_prompt_mask")
    assert QUALITY.all == ("object_score_fwd", "object_score_bwd", "presence_min", "area_fwd_min", "area_bwd_min", "area_fwd_mean", "area_bwd_mean", "iou_fwd_bwd")
    assert astuple(ENCODINGS_RECORD) == ("image_noise_sigma", "image_seed", "caption_truncated")
    assert astuple(COMMIT) == ("attempt", "clips", "indices", "failed", "checksums", "chunks")
