"""A tiny CogVideoX 1.5 (RoPE computed outside the model, temporal patch 2) trained on a mixed-size store:
each batch gets the rotary embedding of its own bucket's grid (LossContext.for_batch), so an epoch over
landscape, portrait and square clips of two lengths trains, one bucket per batch."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import BUCKETS, MIXED_CLIPS, ROOT, write_mixed_corpus
from stages.config.distill import DistillConfig
from stages.config.extract import ExtractConfig
from stages.config.loader import load_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_tiny_cogvideox15_trains_an_epoch_of_mixed_sizes(tmp_path):
    from pipeline.runner import run_extract
    from stages.distill.trainer import Trainer
    from stages.families.cogvideox.family import save_tiny_cogvideox15
    from stages.store import FeatureStore
    from stages.store.schema import BUCKET

    model = str(save_tiny_cogvideox15(tmp_path / "tiny-cogvideox15"))
    corpus = write_mixed_corpus(tmp_path / "clips")
    url = str(tmp_path / "store")
    cfg = load_config(ExtractConfig, ROOT / "configs/extract/sample.yaml", [
        f"corpus.url={corpus}", "corpus.clips_per_shard=6", f"video.buckets={BUCKETS}", "teacher.image_size=64",
        "teacher.prompt=auto", f"encoders.model={model}", f"student.model={model}", "columns=[teacher, encodings]",
        "ray.num_workers=0", "allow_failures=true"])
    assert run_extract(cfg, url).failed_keys == {k for k, v in MIXED_CLIPS.items() if v[3] is None}
    enc = FeatureStore(url).column("encodings")
    buckets = {r["key"]: tuple(r[BUCKET.bucket]) for s in enc.committed_shards() for r in enc.shard_records(s)}

    dcfg = load_config(DistillConfig, ROOT / "configs/distill/sample.yaml", [
        f"data.store={url}", f"out={tmp_path / 'run'}", f"student.model={model}", "student.task=i2v", "data.num_workers=0",
        "train.batch_size=2", "data.holdout=0", "data.filter.enabled=false", "eval.every=0", "train.checkpoint_every=100"])
    trainer = Trainer(dcfg)
    epoch = trainer.stream.batches_per_epoch(0)
    trainer.cfg.train.steps = epoch
    history = trainer.run()
    assert len(history) == epoch and trainer.position.epoch == 0
    for m in history:
        assert len({buckets[k] for k in m.clips}) == 1 and np.isfinite(m.terms["diff"]) and m.terms["lgf"] > 0
    trained = {buckets[k] for m in history for k in m.clips}
    assert len(trained) >= 3
    # the run's embedding is the schema's (the padded envelope) grid: every bucket trained got its own
    lat = {(((f - 1) // 4 + 1), h // 8, w // 8) for f, h, w in trained}
    assert lat <= set(trainer.loss_context.rotary_cache)
    trainer.close()
