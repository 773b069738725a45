"""Golden loss curve of the Wan family: the tiny Wan 2.1 T2V student on a fixed synthetic Wan store.

As tests/distill/test_golden_curve.py for CogVideoX: seeded numpy arrays (no extraction), so only stage two's
code moves it (the flow-matching objective, its shift and sigma sampling, the Wan tap, LGF, the
optimiser). Regenerate on an intended change with SAM2VIDEOX_UPDATE_GOLDEN=1 and review the diff of
tests/golden/distill_tiny_wan.json.
"""

from __future__ import annotations

import numpy as np

from conftest import ROOT
from stages.store import ArraySpec, FeatureStore, Snapshot
from stages.families.wan.encoders import WanVaeGeometry, TINY_WAN_VAE_CONFIG
from stages.core.lgf import lgf_probs
from test_golden_curve import departs, matches_golden, run_curve

GOLDEN = ROOT / "tests" / "golden" / "distill_tiny_wan.json"
T, H8, W8, C = 5, 16, 24, 16
WAN = ("student.model=tiny-wan", "student.task=t2v")


def synthetic_wan_store(url: str, clips: int = 6, vae_config: dict | None = None) -> None:
    """vae_config: the VAE whose channels and latents_mean/std the latents have (default the tiny Wan 2.1 one)."""
    import torch

    rng = np.random.default_rng(0)
    geo = WanVaeGeometry.from_config(vae_config or TINY_WAN_VAE_CONFIG)
    c = geo.latent_channels
    store = FeatureStore(url)
    store.freeze_snapshot(Snapshot("/synthetic", 2, [{"key": f"c{i}", "url": f"/synthetic/c{i}.mp4", "caption": "", "prompt": None} for i in range(clips)]))
    enc = store.create_column("encodings", {"synthetic": "wan"}, {
        "latents": ArraySpec((2 * c, T, H8, W8), "float16"), "prompt_embeds": ArraySpec((16, 32), "float16"),
        "prompt_mask": ArraySpec((16,), "uint8")},
        {"vae_family": "wan", "scaling_factor": 1.0, "latents_mean": list(geo.latents_mean), "latents_std": list(geo.latents_std)})
    lgf = {"kernel": 7, "tau": 0.1, "offsets": [1], "fusion": "gram"}
    teacher = store.create_column("teacher", {"synthetic": 1}, {
        "fwd": ArraySpec((T, 8, 12, C), "float16"), "bwd": ArraySpec((T, 8, 12, C), "float16"),
        "lgf": ArraySpec((T - 1, 8, 12, 49), "float16"), "mask": ArraySpec((T, 8, 12), "uint8")},
        {"grid": [T, 8, 12], "channels": C, "lgf": lgf})
    enc.write_column_arrays({"empty_prompt_embeds": np.zeros((16, 32), "float16")})
    mean, std = np.array(geo.latents_mean, "float32"), np.array(geo.latents_std, "float32")
    for shard in range(clips // 2):
        recs = [{"key": f"c{i}", "index": i} for i in (2 * shard, 2 * shard + 1)]
        lat = rng.standard_normal((2, 2 * c, T, H8, W8)).astype("float32")
        lat[:, :c] = lat[:, :c] * std[:, None, None, None] + mean[:, None, None, None]  # unnormalised, as the VAE gives
        lat[:, c:] = -4.0
        enc.write_shard(shard, {"latents": lat.astype("float16"), "prompt_embeds": rng.standard_normal((2, 16, 32)).astype("float16"),
                                "prompt_mask": np.ones((2, 16), "uint8")}, recs, [])
        fwd = rng.standard_normal((2, T, 8, 12, C)).astype("float16")
        bwd = (fwd + 0.3 * rng.standard_normal(fwd.shape)).astype("float16")
        target = lgf_probs(torch.from_numpy(fwd.astype("float32")), 7, 0.1).numpy().astype("float16")
        teacher.write_shard(shard, {"fwd": fwd, "bwd": bwd, "lgf": target, "mask": rng.integers(0, 256, (2, T, 8, 12)).astype("uint8")}, recs, [])


def test_tiny_wan_distill_matches_the_golden_curve(tmp_path):
    synthetic_wan_store(str(tmp_path / "store"))
    got = run_curve(tmp_path, "run", *WAN)
    assert np.mean(got["lgf"][-3:]) < np.mean(got["lgf"][:3]), got["lgf"]
    want = matches_golden(got, GOLDEN)
    assert departs(run_curve(tmp_path, "perturbed", *WAN, "train.steps=2", "losses.lgf.weight=0.55"), want)
