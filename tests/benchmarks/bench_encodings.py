"""Throughput of the `encodings` producer (VAE latents, image latents, T5 embeddings) and its size.

    python tests/benchmarks/bench_encodings.py --device cuda   # real-size configs, random weights, 49x480x720
    python tests/benchmarks/bench_encodings.py --device cpu    # tiny preset at a tiny size (exercises the path)
    python tests/benchmarks/bench_encodings.py --device cuda --tiling both --json enc.json   # tiling on vs off

The cuda path builds CogVideoX-5B-I2V's VAE and T5-v1.1-XXL from their published configs (below)
with random weights (no weights can be downloaded), so speed and memory are real and values are
not. Both paths print the bytes per clip of each stored array at the real 49x480x720 shapes, from
the column schema computed out of config files alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from stages.media.corpus import ClipEntry  # noqa: E402
from stages.media.decode import DecodedClip  # noqa: E402
from stages.config.extract import EncodersConfig, ExtractConfig, VideoConfig  # noqa: E402
from stages.families.cogvideox.encoders import (  # noqa: E402
    build_encoders,
    clip_seed,
    encode_image,
    encode_prompt,
    encode_video,
    tiny_tokenizer,
)
from stages.extract.columns.encodings import EncodingsProducer, encodings_spec  # noqa: E402

# THUDM/CogVideoX-5b-I2V vae/config.json (diffusers 0.30+); unlisted keys take diffusers' defaults.
COGVIDEOX_5B_I2V_VAE = {
    "_class_name": "AutoencoderKLCogVideoX",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 256, 512],
    "down_block_types": ["CogVideoXDownBlock3D"] * 4,
    "up_block_types": ["CogVideoXUpBlock3D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 16,
    "latents_mean": None,
    "latents_std": None,
    "layers_per_block": 3,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "sample_height": 480,
    "sample_width": 720,
    "scaling_factor": 0.7,
    "shift_factor": None,
    "temporal_compression_ratio": 4,
    "use_post_quant_conv": False,
    "use_quant_conv": False,
    "invert_scale_latents": False,
}

# google/t5-v1_1-xxl, the text_encoder of every CogVideoX (encoder only: ~4.76 B parameters).
T5_V1_1_XXL = {
    "architectures": ["T5EncoderModel"],
    "model_type": "t5",
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_decoder_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "dropout_rate": 0.1,
    "layer_norm_epsilon": 1e-06,
    "initializer_factor": 1.0,
    "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": False,
    "is_encoder_decoder": True,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}


def write_config_folder(root: Path) -> str:
    """A diffusers-layout folder with the real configs and no weights (the tokenizer is the tiny one)."""
    for sub, config in (("vae", COGVIDEOX_5B_I2V_VAE), ("text_encoder", T5_V1_1_XXL)):
        (root / sub).mkdir(parents=True, exist_ok=True)
        (root / sub / "config.json").write_text(json.dumps(config, indent=1))
    tiny_tokenizer().save_pretrained(root / "tokenizer")
    return str(root)


def bytes_per_clip(cfg: ExtractConfig) -> dict[str, int]:
    spec = encodings_spec(cfg)
    return {k: int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize for k, s in spec.schema.items()}


def print_sizes(real_folder: str) -> int:
    cfg = ExtractConfig(encoders=EncodersConfig(model=real_folder))  # defaults: 49 x 480 x 720, 226 tokens
    spec = encodings_spec(cfg)
    sizes = bytes_per_clip(cfg)
    print(f"bytes per clip at {cfg.video.num_frames}x{cfg.video.height}x{cfg.video.width} (float16 / uint8, uncompressed):")
    for key, n in sizes.items():
        print(f"  {key:15s} {str(spec.schema[key].shape):18s} {n:>11,d} B  {n / 1e6:7.3f} MB  {n / 2**20:7.3f} MiB")
    total = sum(sizes.values())
    print(f"  {'total':15s} {'':18s} {total:>11,d} B  {total / 1e6:7.3f} MB  {total / 2**20:7.3f} MiB")
    return total


def moving_frames(f: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    t, y, x = np.meshgrid(np.arange(f), np.arange(h), np.arange(w), indexing="ij", sparse=True)
    base = np.stack(np.broadcast_arrays(np.sin((x + 3 * t) / 17.0), np.cos((y - 2 * t) / 13.0), np.sin((x + y) / 23.0)), -1)
    noise = np.random.default_rng(seed).normal(0, 6, base.shape)
    return np.clip(127.5 * (base + 1) + noise, 0, 255).astype(np.uint8)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeats


def tiling_modes(args: argparse.Namespace) -> list[bool]:
    return {"on": [True], "off": [False], "both": [True, False]}["off" if args.no_tiling else args.tiling]


def run(args: argparse.Namespace, real_folder: str) -> dict:
    """Time `produce` per tiling mode on one set of models (built once); returns the figures for --json."""
    modes = tiling_modes(args)
    cuda = args.device.startswith("cuda")
    if cuda or args.real:
        video = VideoConfig(num_frames=args.frames or 49, height=args.height or 480, width=args.width or 720)
        model = real_folder
        start = time.perf_counter()
        enc = build_encoders(COGVIDEOX_5B_I2V_VAE, T5_V1_1_XXL, tiny_tokenizer(), args.dtype, args.device,
                             True, modes[0])
        print(f"built real-size VAE + T5-XXL (random weights) in {time.perf_counter() - start:.1f} s")
    else:
        video = VideoConfig(num_frames=args.frames or 49, height=args.height or 64, width=args.width or 96)
        model, enc = "tiny", None
    params = None
    frames = moving_frames(video.num_frames, video.height, video.width)
    clip = DecodedClip(frames, list(range(len(frames))), [i / video.fps for i in range(len(frames))], video.fps,
                       (video.height, video.width), 1.0, 1.0, 0, 0)
    entry = ClipEntry(key="bench/0", url="bench.mp4", caption="a person walks a dog along the beach, the camera follows")
    results = []
    for tiling in modes:
        encoders = EncodersConfig(model=model, dtype=args.dtype, vae_tiling=tiling, device=args.device)
        cfg = ExtractConfig(video=video, encoders=encoders) if model != "tiny" else ExtractConfig(
            video=video, encoders=EncodersConfig(model="tiny", device="cpu", vae_tiling=tiling))
        if enc is not None:  # same models for every mode: only the VAE's tiling switch changes
            enc.vae.enable_tiling() if tiling else enc.vae.disable_tiling()
        producer = EncodingsProducer(cfg, args.device, encoders=enc)
        enc = producer.enc
        if params is None:
            params = sum(p.numel() for p in enc.vae.parameters()), sum(p.numel() for p in enc.text_encoder.parameters())
            print(f"device {args.device} ({torch.cuda.get_device_name() if cuda else 'cpu'}), "
                  f"dtype {enc.dtype}, VAE {params[0] / 1e6:.1f} M params, T5 {params[1] / 1e6:.1f} M params, "
                  f"clip {video.num_frames}x{video.height}x{video.width}")
        producer.produce(clip, entry)  # warm-up: kernel selection, allocator
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        per_clip = timed(lambda: producer.produce(clip, entry), args.device, args.clips)
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        seed, caption = clip_seed(0, entry.key), entry.caption
        parts = {
            "video (VAE encode)": timed(lambda: encode_video(enc, frames), args.device, args.clips),
            "image (noise + VAE encode)": timed(lambda: encode_image(enc, frames[0], seed), args.device, args.clips),
            "prompt (T5, 226 tokens)": timed(lambda: encode_prompt(enc, caption, cfg.encoders.max_text_len), args.device, args.clips),
        }
        print(f"[tiling {'on' if tiling else 'off'}] produce(): {per_clip * 1e3:.1f} ms per clip -> "
              f"{3600 / per_clip:,.0f} clips/hour per worker ({args.clips} clips)")
        for name, sec in parts.items():
            print(f"  {name:28s} {sec * 1e3:9.1f} ms  ({100 * sec / per_clip:5.1f}%)")
        if cuda:
            print(f"  peak GPU memory (produce): {peak:.2f} GiB")
        results.append({"tiling": tiling, "s_per_clip": per_clip, "clips_per_hour": 3600 / per_clip,
                        "parts_s": parts, "peak_gib": peak})
    if len(results) == 2:
        on, off = results
        print(f"tiling on / off: {on['s_per_clip'] / off['s_per_clip']:.2f}x time per clip"
              + (f", {on['peak_gib'] / off['peak_gib']:.2f}x peak memory" if cuda else ""))
    return {
        "script": "bench_encodings", "device": args.device, "gpu": torch.cuda.get_device_name() if cuda else None,
        "dtype": str(enc.dtype).replace("torch.", ""), "clip": [video.num_frames, video.height, video.width],
        "clips": args.clips, "vae_params": params[0], "t5_params": params[1], "runs": results,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu (tiny preset) or cuda[:N] (real-size configs)")
    ap.add_argument("--clips", type=int, default=3, help="timed clips after one warm-up clip")
    ap.add_argument("--frames", type=int, default=None)
    ap.add_argument("--height", type=int, default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--dtype", default="bfloat16", help="compute dtype on GPU (CPU always runs fp32)")
    ap.add_argument("--tiling", default="on", choices=["on", "off", "both"],
                    help="VAE tiling; both: on then off with the same models (the memory / speed trade)")
    ap.add_argument("--no-tiling", action="store_true", help="the same as --tiling off")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument("--real", action="store_true", help="the real-size configs on any device (the default on cuda)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        real_folder = write_config_folder(Path(tmp) / "cogvideox-5b-i2v-configs")
        total = print_sizes(real_folder)
        figures = run(args, real_folder)
    figures["bytes_per_clip_real"] = total
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
