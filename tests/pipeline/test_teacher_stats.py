"""`sam2videox inspect STORE --teacher-stats` on two teacher columns of the same clips, extracted with
a tiny random SAM2: feature=maskmem and feature=memory_attention (issue 10, "Must show").

The structural fact: SAM2's memory encoder reads the frame's own backbone feature and the pass's own
mask, never the memory bank, so forward and backward `maskmem` coincide where the two passes' masks
coincide; the memory-attention output carries each pass's past, so its directions differ there too.

Why the tiny SAM2 gets confident mask logits: the memory encoder does not read the binary mask but
sigmoid(logits) (scaled to +-10). A random mask decoder's logits sit near 0, so sigmoid(logits)
differs between the passes everywhere, even where the thresholded masks agree, and maskmem differs
everywhere with it (measured: |f_fwd - f_bwd| / |f_fwd| ~ 0.16 where the masks agree, against
~0.02 with confident logits). A trained SAM2's logits are confident (|logit| >> 1 away from the
boundary), so the test scales the last layer of the decoder's mask hypernetworks by 50 (the same
masks, confident logits) and loads that as a SAM2 checkpoint through `teacher.checkpoint`.
It measures where the masks agree: relations whose k x k window, at t and t+1, has the same token
mask coverage in both passes (mask vs mask_bwd, to 2/255; pipeline/teacher_stats.py), with tau 0.02
(the tiny model's features are smooth: at the default tau 0.1 every relation is near uniform and all
KLs are ~1e-3 whatever the feature).

Measured here (6 clips, 4x6 token grid, 13% of relations where the masks agree):
  where the masks agree   |f_fwd - f_bwd| / |f_fwd|   KL(P_fwd || P_bwd)
  maskmem                  0.018                        0.0094
  memory_attention         0.152                        0.027
Over all relations maskmem differs more (0.12; KL 0.16): where the masks differ, so does maskmem.
Binarised masks (coverage >= half) are not enough: they count a token covered 50% in one pass and
60% in the other as agreeing, and the memory encoder (a 7x7 depthwise conv over the whole 4x4 feature
map of image_size 64) spreads such differences (binarised: 0.054 vs 0.225, KL 0.093 vs 0.079).
What is left of the tiny model's gap sits at the clip's ends (per latent frame at image_size 128,
memory_attention differs by ~1 at frame 0 and ~0.6 at the last frame, ~0.01 between them): there one pass has no
past (the prompted frame takes backbone + no-memory embedding, or the raw backbone under a mask
prompt) while the other has the whole clip; in between, the synthetic clips change so little and a
random memory attention reads its memory so weakly that both passes read nearly the same thing.
"""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import ROOT, small_overrides
from pipeline.cli import app
from stages.config.loader import load_config
from stages.config.extract import ExtractConfig
from pipeline.runner import run_extract
from stages.store import FeatureStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
SAMPLE = ROOT / "configs/extract/sample.yaml"
LOGIT_GAIN = 50.0


@pytest.fixture(scope="module")
def store(tmp_path_factory, small_corpus) -> dict[str, str]:
    """{feature: column dir} of one store holding both columns over the 6-clip corpus (in-process)."""
    from stages.teacher.sam2_model import build_sam2, save_checkpoint

    root = tmp_path_factory.mktemp("teacher_stats")
    net = build_sam2("tiny", image_size=64, seed=0)
    with torch.no_grad():
        for mlp in net.sam_mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(LOGIT_GAIN)
            mlp.layers[-1].bias.mul_(LOGIT_GAIN)
    ckpt = root / "sam2_tiny_confident.pt"
    save_checkpoint(net, str(ckpt))
    url = str(root / "store")
    for feature in ("maskmem", "memory_attention"):
        overrides = small_overrides(small_corpus, **{"ray.num_workers": 0, "columns": "[teacher]", "teacher.feature": feature,
                                                     "teacher.checkpoint": str(ckpt), "lgf.tau": 0.02})
        assert not run_extract(load_config(ExtractConfig, SAMPLE, overrides), url).failed_keys
    return url, {c.producer_config["teacher"]["feature"]: c.dirname for c in FeatureStore(url).columns()}


def stats(url: str, column: str, *extra: str) -> dict:
    result = CliRunner().invoke(app, ["inspect", url, "--teacher-stats", "--column", column, "--json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_maskmem_directions_coincide_where_masks_agree_memory_attention_do_not(store):
    url, columns = store
    mm, ma = stats(url, columns["maskmem"]), stats(url, columns["memory_attention"])
    assert mm["clips"] == ma["clips"] == 6 and mm["feature"] == "maskmem" and ma["feature"] == "memory_attention"
    # the same masks (same decoder, same prompts) in both columns: the same agreeing relations
    assert mm["masks_agree_fraction"] == pytest.approx(ma["masks_agree_fraction"], abs=0.02) and mm["masks_agree_fraction"] > 0.05
    # features: maskmem nearly equal where the masks agree, memory_attention not (measured 0.018 vs 0.152)
    assert mm["feature_diff_fwd_bwd_masks_agree"] < 0.05 and ma["feature_diff_fwd_bwd_masks_agree"] > 5 * mm["feature_diff_fwd_bwd_masks_agree"], (mm, ma)
    # relations: KL(P_fwd || P_bwd) where the masks agree clearly larger for memory_attention (measured 0.027 vs 0.0094)
    assert ma["kl_fwd_bwd_masks_agree"] > 2 * mm["kl_fwd_bwd_masks_agree"], (mm, ma)
    # where the masks differ maskmem differs too: the restriction is what removes its difference
    assert mm["feature_diff_fwd_bwd"] > 3 * mm["feature_diff_fwd_bwd_masks_agree"] and mm["kl_fwd_bwd"] > 5 * mm["kl_fwd_bwd_masks_agree"]
    for s in (mm, ma):
        assert s["kl_fwd_bwd"] > 0 and s["kl_fwd_bwd_masks_agree"] > 0 and s["kl_fused_fwd"] > 0 and s["object_score"]["n"] == 6
        assert 0 < s["fused_differs_fraction"] < 1 and s["quality_clips"] == 6
        assert s["quality"]["iou_fwd_bwd"]["n"] == 6 and 0 <= s["quality"]["iou_fwd_bwd"]["min"] <= s["quality"]["iou_fwd_bwd"]["max"] <= 1
        assert {"object_score_bwd", "area_fwd_mean", "area_bwd_min", "presence_min"} <= set(s["quality"])
    # the other teacher column of the same grid is compared through the stored fused targets
    (other,) = mm["other_columns"]
    assert other["column"] == columns["memory_attention"] and other["clips"] == 6 and other["kl_this_other"] > 0


def test_plain_output_threshold_and_column_errors(store):
    url, columns = store
    runner = CliRunner()
    plain = runner.invoke(app, ["inspect", url, "--teacher-stats", "--column", columns["memory_attention"], "--threshold", "0.5"])
    assert plain.exit_code == 0, plain.output
    assert "KL(P_fwd || P_bwd)" in plain.output and "where the passes' masks agree" in plain.output
    assert "per-token KL > 0.5" in plain.output and f"vs {columns['maskmem']}" in plain.output
    assert stats(url, columns["memory_attention"], "--threshold", "100")["fused_differs_fraction"] == 0.0
    info = json.loads(runner.invoke(app, ["inspect", url, "--json"]).output)
    for c in info["columns"]:  # 5x4x6 tokens: int8 fwd/bwd (16 or 32 channels) + fp32 scales, fp16 lgf, two uint8 masks
        channels = 16 if c["describe"]["teacher.feature"] == "maskmem" else 32
        assert c["schema_bytes_per_clip"] == 2 * 120 * (channels + 4) + 4 * 24 * 49 * 2 + 2 * 120 and c["bytes_per_clip"] > 0
    assert "uncompressed)" in runner.invoke(app, ["inspect", url]).output
    several = runner.invoke(app, ["inspect", url, "--teacher-stats"])
    assert several.exit_code == 2 and "needs --column" in several.output and "Traceback" not in several.output
    bad = runner.invoke(app, ["inspect", url, "--teacher-stats", "--column", columns["maskmem"], "--threshold", "0"])
    assert bad.exit_code == 2 and "--threshold must be > 0" in bad.output


def test_a_store_written_before_reads_with_n_a(tmp_path):
    """A float16 teacher column without mask_bwd nor quality records (written before both): the
    relation statistics come from its float16 fwd/bwd, the rest is n/a."""
    import numpy as np

    from stages.store import ArraySpec, Snapshot
    from stages.core.lgf import fuse

    store = FeatureStore(str(tmp_path / "s"))
    store.freeze_snapshot(Snapshot("/x", 2, [{"key": f"c{i}", "url": f"/x/{i}.mp4", "caption": "", "prompt": None} for i in range(2)]))
    rng = np.random.default_rng(0)
    fwd, bwd = (rng.standard_normal((2, 3, 5, 6, 8)).astype(np.float16) for _ in range(2))
    lgf = {"kernel": 3, "tau": 0.1, "offsets": [1], "fusion": "gram"}
    target = fuse(torch.from_numpy(fwd).float(), torch.from_numpy(bwd).float(), 3, 0.1).numpy().astype(np.float16)
    col = store.create_column("teacher", {"old": True}, {"fwd": ArraySpec((3, 5, 6, 8), "float16"), "bwd": ArraySpec((3, 5, 6, 8), "float16"),
                                                         "lgf": ArraySpec((2, 5, 6, 9), "float16"), "mask": ArraySpec((3, 5, 6), "uint8")}, {"lgf": lgf})
    col.write_shard(0, {"fwd": fwd, "bwd": bwd, "lgf": target, "mask": np.zeros((2, 3, 5, 6), np.uint8)},
                    [{"key": f"c{i}", "index": i, "object_score": 0.9} for i in range(2)], [])
    out = stats(str(tmp_path / "s"), "teacher")
    assert out["clips"] == 2 and out["kl_fwd_bwd"] > 0.01 and out["kl_fused_fwd"] > 0
    assert out["kl_fwd_bwd_masks_agree"] is None and out["quality"] == "n/a" and out["object_score"]["mean"] == pytest.approx(0.9)
    plain = CliRunner().invoke(app, ["inspect", str(tmp_path / "s"), "--teacher-stats"])
    assert plain.exit_code == 0 and "n/a (no per-clip quality records" in plain.output and "n/a: no mask_bwd" in plain.output
    # an image-only teacher column (LGF from one stack, no fwd/bwd): compared through the stored targets
    image = store.create_column("image_teacher", {"model": "x"}, {"lgf": ArraySpec((2, 5, 6, 9), "float16")}, {"lgf": lgf})
    single = fuse(torch.from_numpy(fwd).float(), torch.from_numpy(fwd).float(), 3, 0.1).numpy().astype(np.float16)
    image.write_shard(0, {"lgf": single}, [{"key": f"c{i}", "index": i} for i in range(2)], [])
    both = stats(str(tmp_path / "s"), "teacher")
    (other,) = both["other_columns"]
    assert other["column"] == image.dirname and other["clips"] == 2 and other["kl_this_other"] > 0 and other["kl_other_this"] > 0
    default = json.loads(CliRunner().invoke(app, ["inspect", str(tmp_path / "s"), "--teacher-stats", "--json"]).output)
    assert default["column"] == col.dirname  # the SAM2 column, beside the image teacher
    alone = stats(str(tmp_path / "s"), "image_teacher")
    assert alone["kl_fwd_bwd"] is None and alone["other_columns"][0]["kl_this_other"] == pytest.approx(other["kl_other_this"])
