"""Compact teacher storage: fwd/bwd int8 with a per-token scale. The real-size column fits 12 MB per
clip (from the schema, no extraction), the LGF relations recomputed from the stored features stay
within KL 1e-3 of the fp32 ones, and float16 columns written before still read."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import ROOT
from stages.config.loader import load_config
from stages.config.extract import ExtractConfig, LGFConfig
from stages.core.quantize import QUANT_INT8, dequantize, quantize
from stages.store import ArraySpec, FeatureStore, Snapshot, schema_bytes
from pipeline.teacher_stats import relation_kl
from stages.extract.columns.teacher import quantize_features, real_size_bytes_per_clip, teacher_spec
from stages.core.lgf import fuse, valid_neighbours

LIMIT_BYTES = 12_000_000  # issue 10: teacher bytes per clip at 49x480x720 with fwd and bwd kept
KL_LIMIT = 1e-3


def test_real_size_teacher_column_fits_12_mb_from_the_schema():
    """configs/extract/default.yaml (SAM 2.1 Hiera-L, memory_attention, 49x480x720): 10.75 MB per clip."""
    cfg = load_config(ExtractConfig, ROOT / "configs/extract/default.yaml", [])
    spec = teacher_spec(cfg)
    assert cfg.teacher.feature == "memory_attention" and spec.attrs["channels"] == 256
    assert spec.schema["fwd"] == ArraySpec((13, 30, 45, 256), "int8") and spec.schema["bwd_scale"] == ArraySpec((13, 30, 45, 1), "float32")
    assert spec.attrs["quantized"] == {"fwd": QUANT_INT8, "bwd": QUANT_INT8}
    total = schema_bytes(spec.schema)
    assert total == 2 * (13 * 30 * 45 * 256 + 13 * 30 * 45 * 4) + 12 * 30 * 45 * 49 * 2 + 2 * 13 * 30 * 45 == 10_748_700
    assert total <= LIMIT_BYTES
    assert sum(real_size_bytes_per_clip().values()) == total  # the figure `sam2videox report` prints


def realistic_features(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """[T, h, w, C] features with spatially smooth structure (what makes LGF relations peaked), some
    per-channel outliers and a token-norm spread of ~2 decades (log-normal), as memory-attention
    outputs have."""
    g = torch.Generator().manual_seed(seed)
    T, h, w, C = shape
    coarse = torch.randn(T, C, max(2, h // 4), max(2, w // 4), generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    x = smooth + 0.3 * torch.randn(T, h, w, C, generator=g)
    x[..., :4] *= 6.0  # a few large channels: the per-token scale is set by them
    norm = torch.exp(torch.randn(T, h, w, 1, generator=g) * 1.2)
    return (x * norm).numpy().astype(np.float32)


def stored_vs_fp32_kl(fwd: np.ndarray, bwd: np.ndarray, lgf: LGFConfig) -> tuple[float, float]:
    """(mean, max) per-relation KL(P_fp32 || P_stored) of the fused target from features that went
    through the column's storage (quantize_features, then the reader's dequantize)."""
    stored = quantize_features({"fwd": fwd, "bwd": bwd})
    back = {k: torch.from_numpy(dequantize(stored[k], stored[f"{k}_scale"])) for k in ("fwd", "bwd")}
    ref = fuse(torch.from_numpy(fwd)[None], torch.from_numpy(bwd)[None], lgf.kernel, lgf.tau, lgf.offsets, lgf.fusion)[0]
    got = fuse(back["fwd"][None], back["bwd"][None], lgf.kernel, lgf.tau, lgf.offsets, lgf.fusion)[0]
    kl = relation_kl(ref, got, valid_neighbours(ref.shape[1], ref.shape[2], lgf.kernel))
    return float(kl.mean()), float(kl.max())


def test_quantised_features_keep_lgf_within_kl_1e3_at_real_size():
    """256-channel features on the real 13x30x45 grid, default LGF settings (k=7, tau=0.1, gram fusion)."""
    shape = (13, 30, 45, 256)
    mean, worst = stored_vs_fp32_kl(realistic_features(shape, 0), realistic_features(shape, 1), LGFConfig())
    assert mean < KL_LIMIT / 10 and worst < KL_LIMIT, (mean, worst)


def test_quantised_sam2_features_keep_lgf_within_kl_1e3(small_corpus):
    """Memory-attention features of a tiny random SAM2 tracking a sample clip, every fusion mode."""
    from stages.media.corpus import list_corpus
    from stages.media.decode import decode_clip
    from stages.extract.columns.teacher import TeacherProducer
    from stages.core.grid import to_token_grid

    from conftest import small_overrides

    cfg = load_config(ExtractConfig, ROOT / "configs/extract/sample.yaml", small_overrides(small_corpus))
    assert cfg.teacher.feature == "memory_attention"
    producer = TeacherProducer(cfg, "cpu")
    entry = list_corpus(cfg.corpus)[0]
    clip = decode_clip(entry.url, cfg.video, {})
    prompt, source = producer._prompt(clip, entry)
    result = producer.tracker.track(torch.from_numpy(clip.frames), prompt, source)
    fwd, bwd = (to_token_grid(x, producer.grid, 4, "stride", "antialias").numpy() for x in (result.fwd, result.bwd))
    for fusion in ("gram", "probs", "feature", "forward"):
        mean, worst = stored_vs_fp32_kl(fwd, bwd, LGFConfig(fusion=fusion))
        assert mean < KL_LIMIT / 10 and worst < KL_LIMIT, (fusion, mean, worst)
    arrays, _ = producer._arrays(result, source)
    assert arrays["fwd"].dtype == np.int8 and arrays["fwd_scale"].shape == (*arrays["fwd"].shape[:-1], 1)
    assert arrays["mask_bwd"].dtype == np.uint8 and arrays["lgf"].dtype == np.float16


def test_float16_columns_written_before_still_read(tmp_path):
    """A column without "quantized" attrs reads as stored; a quantised one comes back float32."""
    store = FeatureStore(str(tmp_path / "s"))
    store.freeze_snapshot(Snapshot("/x", 1, [{"key": "c0", "url": "/x/0.mp4", "caption": "", "prompt": None}]))
    feats = realistic_features((2, 3, 4, 8), 3)
    old = store.create_column("teacher", {"v": "old"}, {"fwd": ArraySpec((2, 3, 4, 8), "float16")})
    old.write_shard(0, {"fwd": feats[None].astype(np.float16)}, [{"key": "c0", "index": 0}], [])
    got = old.read_dequantized(old.read_shard(0), "fwd", 0)
    assert got.dtype == np.float16 and np.array_equal(got, feats.astype(np.float16))
    q, scale = quantize(feats)
    new = store.create_column("teacher", {"v": "new"}, {"fwd": ArraySpec((2, 3, 4, 8), "int8"), "fwd_scale": ArraySpec((2, 3, 4, 1), "float32")},
                              {"quantized": {"fwd": QUANT_INT8}})
    new.write_shard(0, {"fwd": q[None], "fwd_scale": scale[None]}, [{"key": "c0", "index": 0}], [])
    back = new.read_dequantized(new.read_shard(0), "fwd", 0)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, feats, atol=float(scale.max()) / 2 + 1e-6)
    assert new.schema_bytes_per_clip() == 2 * 3 * 4 * 8 + 2 * 3 * 4 * 4 and old.schema_bytes_per_clip() == 2 * 3 * 4 * 8 * 2
