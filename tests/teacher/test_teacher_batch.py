"""The teacher column with teacher.clip_batch > 1: the same arrays as one clip at a time, failures per clip.

The producer is called directly on sample clips decoded the way the worker decodes them
(configs/extract/sample.yaml fitted to the 17-frame test corpus, manifest box prompts).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conftest import ROOT, small_overrides
from stages.config.loader import ConfigError, load_config
from stages.media.corpus import ClipEntry, list_corpus
from stages.media.decode import ClipError, decode_clip
from stages.config.extract import ExtractConfig
from stages.extract.columns.teacher import QUALITY_KEYS, TeacherProducer, teacher_spec

SAMPLE = ROOT / "configs/extract/sample.yaml"


def config(corpus, **extra) -> ExtractConfig:
    return load_config(ExtractConfig, SAMPLE, small_overrides(corpus, **{"teacher.device": "cpu", **extra}))


@pytest.fixture(scope="module")
def decoded(small_corpus):
    cfg = config(small_corpus)
    entries = list_corpus(cfg.corpus)[:5]
    return [decode_clip(e.url, cfg.video, cfg.corpus.storage_options) for e in entries], entries


@pytest.fixture(scope="module")
def one_by_one(small_corpus, decoded):
    clips, entries = decoded
    producer = TeacherProducer(config(small_corpus), "cpu")
    return [producer.produce(c, e) for c, e in zip(clips, entries)]


def assert_same_arrays(ours: dict, ref: dict) -> None:
    """Float arrays: equal up to fp16 rounding of float noise (maskmem, stored bf16 on both
    sides, may move one bf16 step); int8 fwd/bwd compared dequantised (float noise may move a
    value one int8 step); the uint8 mask coverages to one level."""
    from stages.core.quantize import dequantize

    assert ours.keys() == ref.keys()
    for key in ours:
        assert ours[key].dtype == ref[key].dtype and ours[key].shape == ref[key].shape, key
        if key in ("mask", "mask_bwd"):
            assert np.abs(ours[key].astype(int) - ref[key].astype(int)).max() <= 1, key
        elif key in ("fwd", "bwd"):
            a, b = dequantize(ours[key], ours[f"{key}_scale"]), dequantize(ref[key], ref[f"{key}_scale"])
            np.testing.assert_allclose(a, b, rtol=2**-6, atol=1.01 * float(ref[f"{key}_scale"].max()), err_msg=key)
            assert (ours[key] == ref[key]).mean() > 0.95, key
        else:
            a, b = ours[key].astype(np.float32), ref[key].astype(np.float32)
            np.testing.assert_allclose(a, b, rtol=2**-7, atol=1e-3 * max(1.0, float(np.abs(b).max())), err_msg=key)
            if ours[key].dtype == np.float16:  # fp32 scales carry the float noise unrounded
                assert (a == b).mean() > 0.95, key


def test_clip_batch_is_validated_and_not_in_the_column_key(small_corpus):
    with pytest.raises(ConfigError, match="clip_batch must be >= 1"):
        config(small_corpus, **{"teacher.clip_batch": 0})
    one, two = config(small_corpus), config(small_corpus, **{"teacher.clip_batch": 2})
    assert two.teacher.clip_batch == 2
    assert teacher_spec(one).config == teacher_spec(two).config  # the same column, the same cache key


def test_column_with_clip_batch_2_equals_clip_batch_1(small_corpus, decoded, one_by_one):
    """5 clips in batches of 2, 2, 1: each clip's arrays and record equal produce()'s."""
    clips, entries = decoded
    producer = TeacherProducer(config(small_corpus, **{"teacher.clip_batch": 2}), "cpu")
    batched = producer.produce_batch(clips, entries)
    assert len(batched) == len(clips)
    for (arrays, record), (ref_arrays, ref_record) in zip(batched, one_by_one):
        assert_same_arrays(arrays, ref_arrays)
        assert record["prompt"] == ref_record["prompt"] and record["prompt_source"] == "manifest"
        assert record["object_score"] == pytest.approx(ref_record["object_score"], abs=1e-4)
        assert tuple(record["quality"]) == QUALITY_KEYS
        assert record["quality"]["object_score_fwd"] == pytest.approx(record["object_score"])
        for key in QUALITY_KEYS:
            assert record["quality"][key] == pytest.approx(ref_record["quality"][key], abs=1e-3), key


def test_a_bad_clip_fails_alone(small_corpus, decoded, one_by_one):
    """A prompt the crop loses fails before tracking; frames the tracker refuses fail its batch,
    which is then tracked clip by clip: only that clip fails, its neighbours are as produce() makes them."""
    clips, entries = decoded
    lost = dataclasses.replace(entries[1], prompt={"box": [5000, 5000, 5100, 5100]})
    broken = dataclasses.replace(clips[3], frames=clips[3].frames.astype(np.float32))
    producer = TeacherProducer(config(small_corpus, **{"teacher.clip_batch": 3}), "cpu")
    out = producer.produce_batch([clips[0], clips[1], clips[2], broken, clips[4]], [entries[0], lost, *entries[2:5]])
    assert isinstance(out[1], ClipError) and "outside the centre crop" in str(out[1])
    assert isinstance(out[3], ValueError) and "frames must be uint8" in str(out[3])
    for i in (0, 2, 4):
        assert_same_arrays(out[i][0], one_by_one[i][0])
    assert producer.produce_batch([], []) == []


def test_entries_without_prompt_use_auto(small_corpus, decoded):
    clips, entries = decoded
    bare = [ClipEntry(key=e.key, url=e.url, caption=e.caption) for e in entries[:2]]
    producer = TeacherProducer(config(small_corpus, **{"teacher.clip_batch": 2}), "cpu")
    out = producer.produce_batch(clips[:2], bare)
    alone = [producer.produce(c, e) for c, e in zip(clips[:2], bare)]
    for (arrays, record), (ref_arrays, ref_record) in zip(out, alone):
        assert record["prompt_source"] == "auto" and record["prompt"] == ref_record["prompt"]
        assert_same_arrays(arrays, ref_arrays)


def test_non_finite_teacher_values_fail_the_clip(small_corpus, decoded):
    """A teacher whose weights overflow (here: one memory-encoder weight set to inf) gives NaN/Inf
    features; the producer refuses them, so the worker puts the clip in the ledger with this reason."""
    import torch

    clips, entries = decoded
    producer = TeacherProducer(config(small_corpus), "cpu")
    with torch.no_grad():
        next(producer.tracker.model.memory_encoder.parameters()).fill_(float("inf"))
    with pytest.raises(ValueError, match=r"non-finite teacher values: 'fwd' has \d+ of \d+ non-finite"):
        producer.produce(clips[0], entries[0])
    out = producer.produce_batch(clips[:2], entries[:2])
    assert all(isinstance(o, ValueError) and "non-finite teacher values" in str(o) for o in out)


def test_resample_is_in_the_column_key(small_corpus):
    a, b = teacher_spec(config(small_corpus)), teacher_spec(config(small_corpus, **{"teacher.resample": "bilinear"}))
    assert a.config["teacher"]["resample"] == "antialias" and a.config != b.config
