"""The worker's overlap machinery: decode-ahead and write-behind threads, clip groups through
`produce_batch`, per-shard timings, the in-process runner, and the compile switches' wiring."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, small_overrides
from stages.config.loader import ConfigError, load_config
from stages.media.corpus import ClipEntry
from stages.media.decode import ClipError
from stages.config.extract import ExtractConfig
from stages.extract.overlap import BackgroundWriter, ClipPrefetcher
from pipeline.runner import prepare_store, run_extract
from stages.store import FeatureStore

SAMPLE = ROOT / "configs/extract/sample.yaml"
REGISTRY = "stages.extract.columns.registry"


def config(corpus: Path, **extra) -> ExtractConfig:
    return load_config(ExtractConfig, SAMPLE, small_overrides(corpus, **extra))


def entries(n: int) -> list[tuple[int, ClipEntry]]:
    return [(i, ClipEntry(f"c{i}", f"/nowhere/c{i}.mp4", "")) for i in range(n)]


# -- the threads -------------------------------------------------------------------------------


def test_prefetcher_keeps_order_and_hands_clip_errors_over():
    def decode(entry):
        if entry.key == "c2":
            raise ClipError("too short", entry.url)
        return entry.key.upper()

    with ClipPrefetcher(entries(5), decode, ahead=2) as clips:
        got = [(d.index, d.clip, d.error.reason if d.error else None) for d in clips]
    assert got == [(0, "C0", None), (1, "C1", None), (2, None, "too short"), (3, "C3", None), (4, "C4", None)]
    assert clips.decode_s >= 0 and clips.wait_s >= 0


def test_prefetcher_raises_other_errors_and_stops_when_the_consumer_leaves():
    def broken(entry):
        if entry.key == "c1":
            raise PermissionError("bucket says no")
        return entry.key

    with pytest.raises(PermissionError, match="bucket says no"):
        with ClipPrefetcher(entries(3), broken, ahead=1) as clips:
            list(clips)
    started = threading.active_count()
    with ClipPrefetcher(entries(100), lambda e: e.key, ahead=1) as clips:
        next(iter(clips))  # leave with 99 clips undecoded: the thread must not hang on its full queue
    assert threading.active_count() <= started


def test_background_writer_runs_jobs_in_order_and_reports_the_first_error():
    done = []
    with BackgroundWriter(depth=2) as writer:
        for i in range(6):
            writer.submit(lambda i=i: done.append(i))
        writer.flush()
        assert done == list(range(6)) and writer.busy_s >= 0

    def fail():
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        with BackgroundWriter() as writer:
            writer.submit(fail)
            writer.submit(lambda: done.append("after"))  # skipped: the attempt is dead
            writer.flush()
    assert "after" not in done


# -- the worker --------------------------------------------------------------------------------


class _Batched:
    """The real producer behind a produce_batch that records its groups and fails chosen clips."""

    def __init__(self, inner, fail: set[str], groups: list[list[str]]):
        self.inner, self.fail, self.groups = inner, fail, groups
        self.device = inner.device

    def column_arrays(self):
        return self.inner.column_arrays()

    def produce(self, clip, entry):
        return self.inner.produce(clip, entry)

    def produce_batch(self, clips, entries):
        self.groups.append([e.key for e in entries])
        return [ValueError(f"rejected {e.key}") if e.key in self.fail else self.inner.produce(c, e) for c, e in zip(clips, entries)]


def test_clip_groups_go_through_produce_batch_and_an_exception_fails_one_clip_in_one_column(tmp_path, small_corpus):
    from stages.extract.shard_worker import ShardWorker
    from stages.extract.columns.registry import make_producer

    cfg = config(small_corpus, columns="[teacher]", **{"corpus.clips_per_shard": 4, "ray.num_workers": 0})
    url = str(tmp_path / "store")
    prepare_store(cfg, url, REGISTRY)
    keys = [ClipEntry.from_json(c).key for c in FeatureStore(url).snapshot().clips]
    groups: list[list[str]] = []
    worker = ShardWorker(cfg, url, registry=REGISTRY)
    worker._producers["teacher"] = _Batched(make_producer("teacher", cfg, "cpu"), {keys[1]}, groups)
    worker.clip_batch = 3  # what teacher.clip_batch will set
    report = worker.run_shard(0)
    assert groups == [keys[0:3], keys[3:4]]
    assert report.ok == {"teacher": 3} and [r["key"] for r in report.failed["teacher"]] == [keys[1]]
    assert report.failed["teacher"][0]["reason"] == f"ValueError: rejected {keys[1]}"
    assert report.model_s["teacher"] > 0 and report.seconds >= report.model_s["teacher"]
    shard = FeatureStore(url).column("teacher").read_shard(0)
    assert [r["key"] for r in shard.records] == [keys[0], keys[2], keys[3]]

    # the same clips one at a time through produce (no produce_batch): the same rows, bit for bit
    url1 = str(tmp_path / "one")
    prepare_store(cfg, url1, REGISTRY)
    ShardWorker(cfg, url1, registry=REGISTRY).run_shard(0)
    one = FeatureStore(url1).column("teacher").read_shard(0)
    keep = [0, 2, 3]
    for name, arr in shard.arrays.items():
        np.testing.assert_array_equal(np.asarray(arr[...]), np.asarray(one.arrays[name][...])[keep], err_msg=name)


def test_in_process_run_matches_ray_and_reports_timings(tmp_path, small_corpus, ray_session):
    cfg = config(small_corpus, **{"ray.num_workers": 0})
    inproc = run_extract(cfg, str(tmp_path / "inproc"))
    ray = run_extract(config(small_corpus), str(tmp_path / "ray"))
    for summary in (inproc, ray):
        t = summary.timing()
        assert t["clips"] == 6 and set(summary.model_s) == {"teacher", "encodings", "image_teacher"}
        assert t["model_s"] > 0 and t["wall_over_model"] >= 1.0 and t["decode_s"] > 0 and t["write_s"] > 0
    a, b = FeatureStore(str(tmp_path / "inproc")), FeatureStore(str(tmp_path / "ray"))
    for col in a.columns():
        other = b.column(col.name, col.hash)
        for shard in range(3):
            x, y = col.read_shard(shard), other.read_shard(shard)
            assert x.records == y.records
            for key in x.arrays:
                np.testing.assert_array_equal(np.asarray(x.arrays[key][...]), np.asarray(y.arrays[key][...]), err_msg=f"{col.name}/{shard}/{key}")


# -- compile switches ---------------------------------------------------------------------------


def test_compile_switches_are_validated_and_do_not_change_the_column_keys(small_corpus):
    from stages.extract.columns.encodings import encodings_spec
    from stages.extract.columns.teacher import teacher_spec

    plain = config(small_corpus)
    compiled = config(small_corpus, **{"teacher.compile": "true", "encoders.compile": "true"})
    assert compiled.teacher.compile and compiled.encoders.compile and not plain.teacher.compile
    assert teacher_spec(compiled).config == teacher_spec(plain).config
    assert encodings_spec(compiled).config == encodings_spec(plain).config
    with pytest.raises(ConfigError, match="teacher.compile"):
        config(small_corpus, **{"teacher.compile": "sometimes"})
    looped = config(small_corpus, **{"teacher.compile": "true", "teacher.compile_loop": "true"})
    assert teacher_spec(looped).config == teacher_spec(plain).config  # speed only
    with pytest.raises(ConfigError, match="compile_loop=true needs teacher.compile=true"):
        config(small_corpus, **{"teacher.compile_loop": "true"})
    with pytest.raises(ConfigError, match="num_workers"):
        config(small_corpus, **{"ray.num_workers": -1})


def test_cast_weights_is_keyed_only_where_it_changes_the_weights(small_corpus):
    """teacher.cast_weights: CPU computes in float32, so the weights stay float32 and the key is the plain one;
    a GPU worker's bf16 weights are keyed (bf16-rounded weights move the features by bf16 noise)."""
    import torch

    from stages.extract.columns.teacher import TeacherProducer, teacher_spec

    plain, cast = config(small_corpus), config(small_corpus, **{"teacher.cast_weights": "true"})
    assert teacher_spec(cast).config == teacher_spec(plain).config
    gpu = {"teacher.device": "cuda", "ray.gpus_per_worker": 1, "teacher.dtype": "bfloat16"}
    gpu_plain, gpu_cast = config(small_corpus, **gpu), config(small_corpus, **gpu, **{"teacher.cast_weights": "true"})
    assert "weights_dtype" not in teacher_spec(gpu_plain).config["teacher"]
    assert teacher_spec(gpu_cast).config["teacher"] == {**teacher_spec(gpu_plain).config["teacher"], "weights_dtype": "bfloat16"}
    assert teacher_spec(gpu_cast).config["teacher"]["compute_dtype"] == "bfloat16"
    producer = TeacherProducer(cast, "cpu")  # the producer follows the key: float32 weights, no autocast on CPU
    assert {p.dtype for p in producer.tracker.model.parameters()} == {torch.float32}
    assert producer.tracker.dtype == torch.float32


def test_compile_is_ignored_on_cpu_and_wires_the_modules_on_cuda(caplog):
    """On CPU: a logged note, nothing compiled. For CUDA: the SAM2 image encoder and memory attention
    and the VAE encoder are compiled in place (lazily: nothing runs, so no GPU is needed here)."""
    import torch

    from stages.core.compiling import compile_modules, sam2_compile_targets, vae_compile_targets
    from stages.families.cogvideox.encoders import TINY_VAE_CONFIG
    from stages.teacher.sam2_model import build_sam2

    model = build_sam2("tiny", image_size=64, seed=0)
    with caplog.at_level(logging.WARNING):
        assert compile_modules("teacher", sam2_compile_targets(model), torch.device("cpu")) == []
    assert "teacher.compile=true ignored on cpu" in caplog.text
    assert getattr(model.image_encoder, "_compiled_call_impl", None) is None
    keys = set(model.state_dict())
    assert compile_modules("teacher", sam2_compile_targets(model), torch.device("cuda")) == ["image_encoder", "memory_attention"]
    assert model.image_encoder._compiled_call_impl is not None and model.memory_attention._compiled_call_impl is not None
    assert set(model.state_dict()) == keys  # in place: checkpoints and state dicts are unchanged
    # teacher.compile_loop: the rest of the per-frame loop too, the modules SAM2's VOS predictor compiles
    assert compile_modules("teacher", sam2_compile_targets(model, loop=True), torch.device("cuda")) == [
        "image_encoder", "memory_attention", "memory_encoder", "sam_prompt_encoder", "sam_mask_decoder"]
    assert all(getattr(model, m)._compiled_call_impl is not None for m in ("memory_encoder", "sam_prompt_encoder", "sam_mask_decoder"))
    from diffusers import AutoencoderKLCogVideoX

    vae = AutoencoderKLCogVideoX.from_config(TINY_VAE_CONFIG)
    assert compile_modules("encoders", vae_compile_targets(vae), torch.device("cuda")) == ["vae.encoder"]
    assert vae.encoder._compiled_call_impl is not None
