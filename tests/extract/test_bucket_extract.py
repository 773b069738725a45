"""A mixed-size corpus extracted with video.buckets: each clip in its bucket, its arrays read back at its own shape."""

from __future__ import annotations

import numpy as np

from conftest import MIXED_CLIPS
from stages.store import FeatureStore
from stages.store.schema import BUCKET


def test_each_clip_is_stored_at_its_bucket_and_read_back_at_its_shape(bucket_store):
    store = FeatureStore(bucket_store)
    teacher, enc = store.column("teacher"), store.column("encodings")
    seen = {}
    for shard in sorted(teacher.committed_shards()):
        tdata, edata = teacher.read_shard(shard), enc.read_shard(shard)
        for row, (trec, erec) in enumerate(zip(tdata.records, edata.records)):
            key = trec["key"]
            f, h, w = trec[BUCKET.bucket]
            assert erec[BUCKET.bucket] == [f, h, w]
            # tiny Wan: 4x temporal, 8x spatial VAE, 2x2 patch -> the teacher grid is the student's token grid
            grid = ((f - 1) // 4 + 1, h // 16, w // 16)
            mask = teacher.read_row(tdata, "mask", row)
            assert mask.shape == grid
            assert teacher.read_dequantized(tdata, "fwd", row).shape[:3] == grid
            assert teacher.read_row(tdata, "lgf", row).shape[:3] == (grid[0] - 1, *grid[1:])
            latents = enc.read_row(edata, "latents", row)
            assert latents.shape[1:] == (grid[0], h // 8, w // 8)
            assert np.isfinite(latents.astype(np.float32)).all()
            # padded on disk to the largest bucket in each dimension: the padding is zeros
            raw = np.asarray(tdata.arrays["mask"][row])
            assert raw.shape == teacher.schema["mask"].shape
            assert not raw[grid[0]:].any() and not raw[:, grid[1]:].any() and not raw[:, :, grid[2]:].any()
            seen[key] = (f, h, w)
    want = {k: v[3] for k, v in MIXED_CLIPS.items() if v[3] is not None}
    assert seen == want
    # the clip no bucket fits is in the ledger with its reason
    ledger = teacher.ledger()
    assert sorted(r["key"] for r in ledger) == ["tiny_short", "tiny_short_2"]
    assert all("too short for every bucket" in r["reason"] for r in ledger)


def test_the_run_counts_clips_per_bucket_and_those_no_bucket_fits(bucket_extract):
    url, summary, cfg = bucket_extract
    lines, code = summary.lines(cfg, url, append=False, allow_failures=True)
    assert code == 0
    (line,) = [text for level, text in lines if text.startswith("video.buckets")]
    assert line == ("video.buckets (frames x height x width: clips): 9x64x96 4, 9x96x64 4, 9x80x80 4, 17x64x96 4; "
                    "2 clips fit no bucket (too short), in the ledger")


def test_ray_workers_write_the_same_mixed_size_store(bucket_extract, ray_session, tmp_path):
    import dataclasses

    from pipeline.runner import run_extract

    url, _, cfg = bucket_extract
    other = str(tmp_path / "store")
    ray_cfg = dataclasses.replace(cfg, ray=dataclasses.replace(cfg.ray, num_workers=2))
    assert run_extract(ray_cfg, other).failed_keys == {"tiny_short", "tiny_short_2"}
    for name in ("teacher", "encodings"):
        a, b = FeatureStore(url).column(name), FeatureStore(other).column(name)
        assert a.dirname == b.dirname  # the worker count is not keyed
        for shard in sorted(a.committed_shards()):
            ra, rb = a.commit_record(shard), b.commit_record(shard)
            assert ra["clips"] == rb["clips"] and ra["checksums"] == rb["checksums"]
            assert [r[BUCKET.shapes] for r in a.shard_records(shard)] == [r[BUCKET.shapes] for r in b.shard_records(shard)]


def test_inspect_renders_a_clip_of_each_shape(bucket_store, tmp_path):
    from PIL import Image

    from pipeline.inspect import render_pca

    store = FeatureStore(bucket_store)
    sizes = set()
    for key in ("land_long", "port_a", "square_a"):
        out = render_pca(store, key, tmp_path / f"{key}.png", max_png_side=4096)
        sizes.add(Image.open(out).size)
    assert len(sizes) == 3  # a strip per clip at its own bucket's size
