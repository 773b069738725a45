"""The `encodings` column: its spec comes from config files alone and matches what the producer makes."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from stages.media.corpus import ClipEntry
from stages.media.decode import DecodedClip
from stages.config.extract import EncodersConfig, ExtractConfig, StudentGridConfig, VideoConfig
from stages.families.cogvideox.encoders import save_tiny_encoders
from stages.extract.columns.encodings import EncodingsProducer, encodings_spec

F, H, W, L = 9, 64, 96, 24


def Clip(frames: np.ndarray) -> DecodedClip:
    """A decoded clip of `frames` as if sampled 1:1 from a source of the same size."""
    n, h, w, _ = frames.shape
    return DecodedClip(frames, list(range(n)), [i / 8 for i in range(n)], 8.0, (h, w), 1.0, 1.0, 0, 0)


def Entry(key: str, caption: str) -> ClipEntry:
    return ClipEntry(key=key, url=f"/clips/{key}.mp4", caption=caption)


def _cfg(model: str = "tiny", **video) -> ExtractConfig:
    v = {"num_frames": F, "height": H, "width": W, **video}
    return ExtractConfig(video=VideoConfig(**v), encoders=EncodersConfig(model=model, max_text_len=L, device="cpu"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAM2VIDEOX_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def producer(cache):
    return EncodingsProducer(_cfg(), "cpu")


@pytest.fixture(scope="module")
def clip():
    rng = np.random.default_rng(1)
    return Clip(rng.integers(0, 256, (F, H, W, 3), dtype=np.uint8))


def test_spec_matches_producer_output(producer, clip):
    spec = encodings_spec(_cfg())
    assert spec.name == "encodings"
    assert {k: v.shape for k, v in spec.schema.items()} == {
        "latents": (32, 3, 8, 12),
        "image_latents": (16, 1, 8, 12),
        "prompt_embeds": (L, 32),
        "prompt_mask": (L,),
    }
    arrays, record = producer.produce(clip, Entry("k0", "a dog runs"))
    assert set(arrays) == set(spec.schema)
    for key, s in spec.schema.items():
        assert arrays[key].shape == s.shape and arrays[key].dtype == np.dtype(s.dtype)
    assert set(record) == {"image_noise_sigma", "image_seed"}
    assert 0 < record["image_noise_sigma"] < 1 and isinstance(record["image_seed"], int)
    json.dumps(record)  # records go into JSON commit metadata
    extra = producer.column_arrays()
    assert extra["empty_prompt_embeds"].shape == (L, 32) and extra["empty_prompt_embeds"].dtype == np.float16
    assert extra["empty_prompt_mask"].tolist() == [1] + [0] * (L - 1)  # just </s>
    assert spec.attrs["scaling_factor"] == pytest.approx(0.7)
    assert (spec.attrs["latent_channels"], spec.attrs["temporal_compression"], spec.attrs["spatial_compression"]) == (16, 4, 8)
    assert spec.attrs["image_noise"]["mean"] == -3.0 and spec.attrs["image_noise"]["std"] == 0.5


def test_producer_is_deterministic_and_seeds_per_clip(producer, clip):
    a1, r1 = producer.produce(clip, Entry("k1", "a cat"))
    a2, r2 = producer.produce(clip, Entry("k1", "a cat"))
    b, rb = producer.produce(clip, Entry("k2", "a cat"))
    assert r1 == r2 and all(a1[k].tobytes() == a2[k].tobytes() for k in a1)
    assert rb["image_seed"] != r1["image_seed"] and not np.array_equal(b["image_latents"], a1["image_latents"])
    assert b["latents"].tobytes() == a1["latents"].tobytes()  # the video posterior has no noise in it
    none, _ = producer.produce(clip, Entry("k1", ""))  # a clip without caption gets the empty prompt
    assert none["prompt_embeds"].tobytes() == producer.column_arrays()["empty_prompt_embeds"].tobytes()


def test_producer_rejects_frames_of_another_size(producer, clip):
    with pytest.raises(ValueError, match="expected"):
        producer.produce(Clip(clip.frames[:, :32]), Entry("k", "x"))


def test_spec_of_a_folder_needs_only_config_files(cache, tmp_path):
    full = save_tiny_encoders(tmp_path / "model")
    configs_only = tmp_path / "configs"
    for sub in ("vae", "text_encoder"):
        (configs_only / sub).mkdir(parents=True)
        shutil.copy(full / sub / "config.json", configs_only / sub / "config.json")
    spec = encodings_spec(_cfg(str(configs_only)))
    tiny = encodings_spec(_cfg())
    assert spec.schema == tiny.schema and spec.attrs == tiny.attrs
    produced, _ = EncodingsProducer(_cfg(str(full)), "cpu").produce(Clip(np.zeros((F, H, W, 3), np.uint8)), Entry("k", "a"))
    assert {k: v.shape for k, v in produced.items()} == {k: v.shape for k, v in spec.schema.items()}


def test_spec_of_real_size_configs(tmp_path):
    """CogVideoX-5B-I2V's VAE and T5-XXL's width: the shapes of docs/method.md, derived, not hard-coded."""
    for sub, config in {
        "vae": {"_class_name": "AutoencoderKLCogVideoX", "block_out_channels": [128, 256, 256, 512], "scaling_factor": 0.7},
        "text_encoder": {"model_type": "t5", "d_model": 4096, "num_layers": 24, "num_heads": 64},
    }.items():
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "config.json").write_text(json.dumps(config))
    cfg = ExtractConfig(encoders=EncodersConfig(model=str(tmp_path)))
    schema = encodings_spec(cfg).schema
    assert schema["latents"].shape == (32, 13, 60, 90)
    assert schema["image_latents"].shape == (16, 1, 60, 90)
    assert schema["prompt_embeds"].shape == (226, 4096)


def test_spec_rejects_geometry_that_does_not_fit():
    with pytest.raises(ValueError, match="4k\\+1"):
        encodings_spec(_cfg(num_frames=16))
    with pytest.raises(ValueError, match="multiple of 8"):
        encodings_spec(_cfg(height=60))
    cfg = dataclasses.replace(_cfg(), student=StudentGridConfig(vae_spatial=16))
    with pytest.raises(ValueError, match="student"):
        encodings_spec(cfg)


def test_config_keys_content_not_placement():
    base = encodings_spec(_cfg()).config
    on_gpu, moved = _cfg(), _cfg()
    on_gpu.encoders.device, moved.encoders.device = "cuda:0", "cuda:3"
    assert encodings_spec(moved).config == encodings_spec(on_gpu).config  # which GPU never changes content
    assert encodings_spec(on_gpu).config != base  # but a GPU computes in bf16 and the CPU in fp32: another column
    assert encodings_spec(on_gpu).config["encoders"]["compute_dtype"] == "bfloat16" and base["encoders"]["compute_dtype"] == "float32"
    reseeded = _cfg()
    reseeded.encoders.seed = 1
    assert encodings_spec(reseeded).config != base
    assert encodings_spec(_cfg(height=128)).config != base
    assert base["model"]["vae"]["block_out_channels"] == [8, 8, 16, 16]


def test_caption_truncation_is_warned_once_and_recorded_per_clip(producer, clip, caplog):
    import logging

    producer.truncated = 0
    with caplog.at_level(logging.INFO):
        records = [producer.produce(clip, Entry(f"long{i}", "the dog runs on the grass " * 20))[1] for i in range(3)]
    warned = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warned) == 1 and "long0" in warned[0].getMessage() and warned[0].levelname == "WARNING"
    assert all(r["caption_truncated"] > L for r in records) and producer.truncated == 3
    assert "caption_truncated" not in producer.produce(clip, Entry("short", "a cat"))[1]
