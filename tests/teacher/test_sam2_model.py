"""Building SAM2 without Hydra's global state; official-format checkpoints; input preprocessing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from stages.teacher.sam2_model import (
    CheckpointError,
    SAM2VideoPredictor,
    build_sam2,
    encode_frames,
    feature_channels,
    hydra_state_preserved,
    model_config,
    preprocess_frames,
    save_checkpoint,
)

ROOT = Path(__file__).resolve().parents[2]


def _params_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tiny_builds_frozen_video_predictor_without_cuda_postprocessing():
    net = build_sam2("tiny", seed=0)
    assert isinstance(net, SAM2VideoPredictor)
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert net.fill_hole_area == 0  # >0 calls the CUDA-only sam2._C
    assert net.binarize_mask_from_pts_for_mem_enc  # the stock predictor's switch is kept
    assert (net.image_size, net.hidden_dim, net.mem_dim, net.num_maskmem) == (64, 32, 16, 3)
    assert len(net.memory_attention.layers) == 1
    trunk = net.image_encoder.trunk
    stage_starts = {0} | {e + 1 for e in trunk.stage_ends[:-1]}
    assert not set(trunk.global_att_blocks) & stage_starts


def test_seed_reproducible_and_caller_rng_untouched():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b = build_sam2("tiny", seed=7), build_sam2("tiny", seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert _params_equal(a, b)
    assert not _params_equal(a, build_sam2("tiny", seed=8))


def test_image_size_override_sets_dependent_sizes():
    cfg = model_config("sam2.1_hiera_l", image_size=512)
    layer = cfg["memory_attention"]["layer"]
    assert cfg["image_size"] == 512
    assert layer["self_attention"]["feat_sizes"] == [32, 32] == layer["cross_attention"]["feat_sizes"]
    net = build_sam2("tiny", image_size=128, seed=0)
    assert net.image_size == 128 and net.sam_image_embedding_size == 8
    assert net.sam_prompt_encoder.mask_input_size == (32, 32)
    feats = encode_frames(net, torch.zeros(2, 100, 90, 3, dtype=torch.uint8), batch=2)
    assert feats[0].backbone_map().shape == (32, 8, 8)
    assert [tuple(s) for s in feats[0].feat_sizes] == [(32, 32), (16, 16), (8, 8)]
    with pytest.raises(ValueError, match="multiple of 32"):
        build_sam2("tiny", image_size=80)


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown SAM2 model 'sam3_hiera_x'"):
        build_sam2("sam3_hiera_x")


@pytest.mark.parametrize("feature, model, expected", [
    ("maskmem", "sam2.1_hiera_l", 64), ("memory_attention", "sam2.1_hiera_l", 256),
    ("backbone", "sam2_hiera_b+", 256), ("maskmem", "tiny", 16), ("backbone", "tiny", 32),
])  # fmt: skip
def test_feature_channels_without_building(feature, model, expected):
    assert feature_channels(model, feature) == expected


@pytest.mark.parametrize("model", ["tiny", "sam2.1_hiera_t"])
def test_checkpoint_round_trip_official_format(tmp_path, model):
    net = build_sam2(model, seed=3)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(net, str(path))
    blob = torch.load(path, map_location="cpu", weights_only=True)
    assert set(blob) == {"model"} and set(blob["model"]) == set(net.state_dict())
    again = build_sam2(model, checkpoint=str(path), seed=99)  # other random init, then overwritten
    assert _params_equal(net, again)


def test_checkpoint_still_fits_after_image_size_override(tmp_path):
    net = build_sam2("tiny", seed=1)
    save_checkpoint(net, str(tmp_path / "t.pt"))
    assert _params_equal(net, build_sam2("tiny", str(tmp_path / "t.pt"), image_size=128))


def test_wrong_checkpoint_names_file_and_keys(tmp_path):
    save_checkpoint(build_sam2("tiny", seed=0), str(tmp_path / "tiny.pt"))
    with pytest.raises(CheckpointError) as err:
        build_sam2("sam2.1_hiera_t", checkpoint=str(tmp_path / "tiny.pt"))
    msg = str(err.value)
    assert "tiny.pt" in msg and "another shape" in msg and "image_encoder" in msg
    state = build_sam2("tiny", seed=0).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["no_mem_embed"]
    torch.save({"model": state}, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match=r"edited\.pt.*1 missing keys \['no_mem_embed'\].*'extra\.weight'"):
        build_sam2("tiny", checkpoint=str(tmp_path / "edited.pt"))
    torch.save(state, tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match=r"bare\.pt: not a SAM2 checkpoint"):
        build_sam2("tiny", checkpoint=str(tmp_path / "bare.pt"))


def test_hydra_guard_clears_only_what_it_initialised():
    GlobalHydra.instance().clear()
    with hydra_state_preserved():
        initialize_config_module("sam2", version_base="1.2")
    assert not GlobalHydra.instance().is_initialized()
    initialize_config_module("sam2", version_base="1.2")  # an app's own Hydra state is kept
    try:
        with hydra_state_preserved():
            build_sam2("tiny")
        assert GlobalHydra.instance().is_initialized()
    finally:
        GlobalHydra.instance().clear()


def test_fresh_process_import_build_and_auto_prompt_leave_no_hydra_state_nor_torchvision_paths():
    """`import sam2` initialises GlobalHydra; only a fresh process shows that we clear it again."""
    script = textwrap.dedent(
        """
        import sys, torch
        from stages.teacher.sam2_model import build_sam2
        from stages.teacher.prompts import auto_prompt
        from stages.teacher.tracker import BidirectionalTracker
        from hydra.core.global_hydra import GlobalHydra
        assert "sam2" in sys.modules
        assert not GlobalHydra.instance().is_initialized(), "left by import"
        net = build_sam2("tiny", seed=0)
        auto_prompt(net, frame=torch.zeros(64, 64, 3, dtype=torch.uint8))
        assert not GlobalHydra.instance().is_initialized(), "left by build"
        banned = [m for m in ("sam2.automatic_mask_generator", "sam2.sam2_image_predictor",
                              "sam2.utils.transforms", "torchvision", "ray") if m in sys.modules]
        assert not banned, banned
        print("ok")
        """
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def test_preprocess_matches_sam2_jpeg_loader(tmp_path):
    """Same pixels as SAM2's loader (load_video_frames) when frames are already image_size."""
    from sam2.utils.misc import load_video_frames

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(2, 64, 64, 3), dtype=np.uint8)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(tmp_path / f"{i}.jpg")
    decoded = np.stack([np.array(Image.open(tmp_path / f"{i}.jpg").convert("RGB")) for i in range(2)])
    stock, _, _ = load_video_frames(str(tmp_path), 64, offload_video_to_cpu=True, compute_device=torch.device("cpu"))
    ours = preprocess_frames(torch.from_numpy(decoded), 64, torch.device("cpu"))
    assert ours.dtype == torch.float32 and torch.equal(ours, stock)


def test_preprocess_resize_close_to_pil_bicubic():
    """Other sizes: torch antialiased bicubic vs PIL's, both rounded to uint8 levels."""
    yy, xx = np.mgrid[:96, :144]
    frame = np.stack([xx * 1.7, yy * 2.5, (xx + yy) % 256], -1).astype(np.uint8)
    pil = np.array(Image.fromarray(frame).resize((64, 64))).astype(np.float32) / 255.0
    ours = preprocess_frames(torch.from_numpy(frame)[None], 64, torch.device("cpu"))[0]
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    back = (ours * std + mean).permute(1, 2, 0).numpy()
    assert np.abs(back - pil).mean() < 2 / 255 and np.median(np.abs(back - pil)) <= 1 / 255 + 1e-6
