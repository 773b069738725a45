"""The CogVideoX VAE / T5 encoders on the tiny preset (real architectures, random weights, CPU)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from stages.families.cogvideox.encoders import (
    cache_root,
    clip_seed,
    encode_image,
    encode_prompt,
    encode_video,
    load_encoders,
    save_tiny_encoders,
    tiny_encoders_dir,
)

F, H, W = 49, 32, 48  # 49 frames -> 13 latent frames, 32x48 -> 4x6


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("cache")
        mp.setenv("SAM2VIDEOX_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def enc(cache):
    return load_encoders("tiny", "bfloat16", "cpu")


@pytest.fixture(scope="module")
def frames():
    # A smooth moving pattern plus a little texture: closer to video than white noise.
    t, y, x = np.meshgrid(np.arange(F), np.arange(H), np.arange(W), indexing="ij")
    base = np.stack([np.sin((x + 2 * t) / 9), np.cos((y - t) / 7), np.sin((x + y) / 11)], -1)
    rng = np.random.default_rng(0)
    return np.clip(127.5 * (base + 1) + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def test_cpu_runs_fp32_with_the_real_compression(enc):
    assert enc.dtype == torch.float32 and enc.device.type == "cpu"
    assert (enc.geometry.spatial, enc.geometry.temporal, enc.geometry.latent_channels) == (8, 4, 16)
    assert enc.scaling_factor == pytest.approx(0.7)


@pytest.fixture(scope="module")
def params(enc, frames):
    return encode_video(enc, frames)


def test_video_latents_follow_vae_compression_and_decode_back(enc, frames, params):
    assert params.dtype == np.float16 and params.shape == (32, 13, H // 8, W // 8)
    # A reader scales the stored mean for the transformer and unscales it for decoding.
    mean = DiagonalGaussianDistribution(torch.from_numpy(params).float()[None]).mean
    scaled = mean * enc.scaling_factor
    with torch.no_grad():
        video = enc.vae.decode(scaled / enc.scaling_factor).sample
        # the VAE's own encode -> decode of the same pixels, with nothing stored in between
        x = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
        own = enc.vae.decode(enc.vae.encode(x).latent_dist.mean).sample
        shuffled = enc.vae.decode(mean[:, :, torch.randperm(mean.shape[2], generator=torch.Generator().manual_seed(0))]).sample
    assert video.shape == own.shape == (1, 3, F, H, W)
    # the stored fp16 posterior decodes to the VAE's own reconstruction (fp16 rounding aside) ...
    err = (video - own).abs()
    assert err.max() < 1e-2 and err.mean() < 5e-4, (err.max().item(), err.mean().item())  # measured 1.7e-3, 4e-5
    # ... and the tolerance is tight: the same latents in another frame order decode far from it
    assert (shuffled - own).abs().mean() > 100 * err.mean()  # measured 0.086


def test_video_latents_are_the_posterior_parameters(enc, frames):
    clip = frames[:9]
    params = encode_video(enc, clip)
    # Layout = DiagonalGaussianDistribution.parameters: [mean | logvar] of the VAE's own posterior.
    x = torch.from_numpy(clip).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    with torch.no_grad():
        dist = enc.vae.encode(x).latent_dist
    np.testing.assert_allclose(params[:16], dist.mean[0].numpy(), atol=2e-3, rtol=2e-3)
    np.testing.assert_allclose(params[16:], dist.logvar[0].numpy(), atol=2e-3, rtol=2e-3)


def test_video_encoding_is_bit_identical(enc, frames, params):
    assert encode_video(enc, frames).tobytes() == params.tobytes()


def test_image_noise_is_seeded_by_clip_key(enc, frames):
    s_a, s_b = clip_seed(0, "clip-a"), clip_seed(0, "clip-b")
    a1, a2, b = (encode_image(enc, frames[0], s) for s in (s_a, s_a, s_b))
    assert a1.latents.shape == (16, 1, H // 8, W // 8) and a1.latents.dtype == np.float16
    assert a1.latents.tobytes() == a2.latents.tobytes() and a1.sigma == a2.sigma
    assert a1.sigma != b.sigma and not np.array_equal(a1.latents, b.latents)
    assert clip_seed(1, "clip-a") != s_a  # the config seed matters too
    # sha256-based, never Python's salted hash(): pinned so a change cannot slip through unnoticed.
    assert clip_seed(0, "clip-a") == 1299383155569725558


def test_image_noise_sigma_is_log_normal(enc, frames):
    sigmas = np.array([encode_image(enc, frames[0, :8, :8], clip_seed(0, f"k{i}")).sigma for i in range(100)])
    assert abs(np.log(sigmas).mean() - (-3.0)) < 0.15
    assert 0.4 < np.log(sigmas).std() < 0.6


def test_prompt_embeddings_and_mask(enc):
    embeds, mask = encode_prompt(enc, "a dog runs on the grass", 226)
    assert embeds.shape == (226, 32) and embeds.dtype == np.float16 and mask.dtype == np.uint8
    assert mask.tolist() == [1] * 7 + [0] * 219  # 6 word pieces + </s>, then padding
    again, _ = encode_prompt(enc, "a dog runs on the grass", 226)
    other, _ = encode_prompt(enc, "a cat sits", 226)
    assert embeds.tobytes() == again.tobytes() and not np.array_equal(embeds, other)
    long_embeds, long_mask = encode_prompt(enc, "the dog runs " * 200, 16)
    assert long_embeds.shape == (16, 32) and long_mask.sum() == 16


def test_tiny_round_trip_through_a_folder(enc, frames, tmp_path):
    folder = save_tiny_encoders(tmp_path / "tiny", seed=0)
    assert {p.name for p in folder.iterdir()} == {"vae", "text_encoder", "tokenizer"}
    loaded = load_encoders(str(folder), "float32", "cpu")
    for a, b in ((enc.vae, loaded.vae), (enc.text_encoder, loaded.text_encoder)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert encode_video(enc, frames[:9]).tobytes() == encode_video(loaded, frames[:9]).tobytes()
    text = "a woman walks slowly, then turns left"
    assert encode_prompt(enc, text, 32)[0].tobytes() == encode_prompt(loaded, text, 32)[0].tobytes()
    other = load_encoders(str(save_tiny_encoders(tmp_path / "seed1", seed=1)), "float32", "cpu")
    w0, w1 = enc.vae.encoder.conv_in.conv.weight, other.vae.encoder.conv_in.conv.weight
    assert not torch.equal(w0, w1)


def test_tiny_cache_is_published_once_under_concurrency(cache, monkeypatch, tmp_path):
    monkeypatch.setenv("SAM2VIDEOX_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(tiny_encoders_dir(seed=3))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and len(set(results)) == 1
    assert [p.name for p in tmp_path.iterdir()] == [results[0].name]  # no temporary folders left behind
    assert (results[0] / "vae" / "config.json").is_file()
