"""stages/evaluate/metrics/fvd.py against the field's reference code: cd-fvd's own pieces (its InceptionI3d,
preprocess_i3d, VisionTransformer, the code of its preprocess_videomae, FeatureStats and compute_fvd_from_stats'
formula) and StyleGAN-V's detector call; checkpoints are random weights saved in the official formats and
loaded through the user's path. Also the minimum N, the bootstrap interval, the direction, and the errors."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

# cd-fvd is installed by `make install` (pip install --no-deps cd-fvd==0.1.1)
from cdfvd.third_party.i3d.pytorch_i3d import InceptionI3d
from cdfvd.third_party.i3d.utils import preprocess_i3d
from cdfvd.third_party.VideoMAEv2.videomaev2_finetune import VisionTransformer
from cdfvd.utils.metric_utils import FeatureStats

from stages.evaluate.metrics.fvd import (
    MIN_VIDEOS, CdFvdI3D, CdFvdVideoMAE, FVDResult, StyleGANVI3D, bootstrap_interval, build_fvd_backbone, fd_from_features,
    feature_stats, frechet_distance, fvd)

SMALL_VIT_224 = {"patch_size": 56, "embed_dim": 24, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0}  # 4x4 patches x 8 tubelets


def _videos(n: int, seed: int, frames: int = 17, h: int = 24, w: int = 32, brightness: float = 1.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.clip(rng.random((frames, h, w, 3)) * 255 * brightness, 0, 255).astype(np.uint8) for _ in range(n)]


def _reference_fd(real: torch.Tensor, fake: torch.Tensor) -> float:
    """cd-fvd's compute_fvd_from_stats on FeatureStats: m + tr(S_f + S_r - 2 sqrtm(S_r S_f)), real part.
    scipy is not installed: tr sqrtm(A) is the sum of the principal square roots of A's eigenvalues."""
    stats = []
    for feats in (real, fake):
        s = FeatureStats(capture_mean_cov=True)
        s.append_torch(feats, rank=0, num_gpus=1)
        stats.append(s.get_mean_cov())
    (mu_r, s_r), (mu_f, s_f) = stats
    tr_sqrt = np.sqrt(np.linalg.eigvals(s_r @ s_f).astype(complex)).sum()
    return float(np.real(np.square(mu_r - mu_f).sum() + np.trace(s_f + s_r) - 2 * tr_sqrt))


def _cdfvd_functions(relpath: str, names: set[str]) -> dict:
    """Functions of a cd-fvd module that cannot be imported here (VideoMAEv2/utils.py imports torchvision),
    taken from its installed source text, so the reference is their code, not a rewrite."""
    path = Path(importlib.util.find_spec("cdfvd").submodule_search_locations[0]) / relpath
    tree = ast.parse(path.read_text())
    module = ast.Module([n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names], type_ignores=[])
    scope = {"torch": torch}
    exec(compile(module, str(path), "exec"), scope)
    return scope


def _preprocess_videomae(videos: np.ndarray) -> torch.Tensor:
    """cd-fvd's preprocess_videomae: Compose([ToFloatTensorInZeroOne(), Resize((224, 224))]) per video."""
    f = _cdfvd_functions("third_party/VideoMAEv2/utils.py", {"to_normalized_float_tensor", "resize"})
    return torch.stack([f["resize"](f["to_normalized_float_tensor"](v), (224, 224)) for v in torch.from_numpy(videos)])


# ---------------------------------------------------------------- the distance


def test_frechet_distance_matches_the_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    expected = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)
    # 1-d: (m1 - m2)^2 + (sd1 - sd2)^2
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[25.0]])) == pytest.approx(4 + 9)
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


@pytest.mark.parametrize("n_real,n_fake,dim", [(3, 4, 50), (40, 30, 6), (5, 60, 8)])  # N < D, N > D, mixed
def test_fd_from_features_equals_cdfvd_feature_stats_and_formula(n_real, n_fake, dim):
    rng = np.random.default_rng(n_real)
    real = rng.normal(size=(n_real, dim)).astype(np.float32)
    fake = (rng.normal(size=(n_fake, dim)) * 1.5 + 0.3).astype(np.float32)
    expected = _reference_fd(torch.from_numpy(real), torch.from_numpy(fake))
    # rel 1e-7: at N < D the reference's eigenvalues of the singular S_r S_f carry round-off that the square root amplifies
    assert fd_from_features(real, fake) == pytest.approx(expected, rel=1e-7, abs=1e-9)
    s = FeatureStats(capture_mean_cov=True)
    s.append(real)
    mu, sigma = feature_stats(real)  # the 1/N covariance, as FeatureStats
    assert np.allclose(mu, s.get_mean_cov()[0]) and np.allclose(sigma, s.get_mean_cov()[1], atol=1e-10)


def test_fd_direction_zero_for_a_set_with_itself_and_growing_with_the_shift():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(64, 10))
    assert fd_from_features(real, real) == pytest.approx(0.0, abs=1e-9)
    values = [fd_from_features(real, real + shift) for shift in (0.1, 0.5, 2.0)]  # a mean shift adds 10 shift^2
    assert values == pytest.approx([10 * 0.1**2, 10 * 0.5**2, 10 * 2.0**2], rel=1e-9)
    wider = [fd_from_features(real, real * k) for k in (1.5, 3.0)]
    assert 0 < wider[0] < wider[1]
    with pytest.raises(ValueError, match="N >= 2"):
        fd_from_features(real[:1], real)


def test_bootstrap_interval_brackets_the_point_value_and_narrows_with_n():
    rng = np.random.default_rng(1)
    widths = []
    for n in (32, 256):
        real, fake = rng.normal(size=(n, 8)), rng.normal(size=(n, 8)) + 0.5
        point = fd_from_features(real, fake)
        interval = bootstrap_interval(real, fake, draws=100, seed=3)
        assert interval["low"] <= point <= interval["high"]
        assert interval["draws_median"] > point  # duplicates in a resample raise its FD: why the interval is re-centred
        assert interval == bootstrap_interval(real, fake, draws=100, seed=3)  # seeded
        widths.append(interval["high"] - interval["low"])
    assert widths[1] < widths[0] / 2


# ---------------------------------------------------------------- cd-fvd/videomae


@pytest.fixture(scope="module")
def small_vit_checkpoint(tmp_path_factory) -> Path:
    """A random-weight cd-fvd VisionTransformer (224 input, tiny widths) in VideoMAE-v2's layout {'model': state_dict}."""
    from functools import partial

    torch.manual_seed(0)
    model = VisionTransformer(img_size=224, num_classes=174, all_frames=16, tubelet_size=2, use_mean_pooling=True, qkv_bias=True,
                              norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), **SMALL_VIT_224)
    path = tmp_path_factory.mktemp("vit") / "vit_g_hybrid_pt_1200e_ssv2_ft.pth"
    torch.save({"model": model.state_dict()}, path)
    return path


def test_videomae_fvd_equals_cdfvd_pieces(small_vit_checkpoint):
    backbone = build_fvd_backbone(f"videomae:{small_vit_checkpoint}", "cpu", batch_size=2, videomae_arch=SMALL_VIT_224)
    assert isinstance(backbone, CdFvdVideoMAE) and backbone.protocol()["protocol"] == "cd-fvd/videomae"
    real, fake = _videos(3, seed=0, frames=20), _videos(4, seed=1, frames=18, brightness=0.6)
    result = fvd(real, fake, backbone, min_videos=2, bootstrap=0)

    from functools import partial

    reference = VisionTransformer(img_size=224, num_classes=174, all_frames=16, tubelet_size=2, use_mean_pooling=True, qkv_bias=True,
                                  norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), **SMALL_VIT_224).eval()
    reference.load_state_dict(torch.load(small_vit_checkpoint, weights_only=True)["model"])
    with torch.no_grad():  # cd-fvd's get_videomae_features on 16-frame arrays [B, T, H, W, C]
        feats = [reference.forward_features(_preprocess_videomae(np.stack([v[:16] for v in vs]))) for vs in (real, fake)]
    assert result.value == pytest.approx(_reference_fd(*feats), rel=1e-5)
    assert result.value > 0 and result.n_real == 3 and result.n_fake == 4 and result.low is None
    assert result.protocol["feature_dim"] == 24 and result.protocol["frames"] == 16 and "skipped" not in result.protocol


def test_only_the_first_16_consecutive_frames_count():
    tiny = build_fvd_backbone("tiny", "cpu")
    videos = _videos(2, seed=4, frames=16)
    longer = [np.concatenate([v, 255 - v[:9]]) for v in videos]  # frames 16..24 differ
    assert np.array_equal(tiny.features(videos), tiny.features(longer))
    moved = [v[1:] for v in longer]  # frames 1..16: a different clip
    assert not np.allclose(tiny.features(videos), tiny.features(moved))


def test_tiny_fvd_of_a_set_with_itself_is_zero_and_not_of_another_set():
    tiny = build_fvd_backbone("tiny", "cpu", batch_size=3)
    assert isinstance(tiny, CdFvdVideoMAE) and tiny.name == "videomae:tiny"
    real = _videos(5, seed=0)
    value, protocol = fvd(real, real, tiny, min_videos=2, bootstrap=20)  # unpacks like the former (value, protocol)
    assert value == pytest.approx(0.0, abs=1e-6)
    assert protocol["num_real"] == protocol["num_generated"] == 5 and protocol["feature_dim"] == 32
    other = fvd(real, _videos(5, seed=1, frames=19, h=30, w=50, brightness=0.4), tiny, min_videos=2, bootstrap=20)
    assert other.value > 1e-3 and other.low <= other.value <= other.high
    assert protocol["interval"]["draws"] == 20


# ---------------------------------------------------------------- cd-fvd/i3d


@pytest.mark.slow  # InceptionI3d on 4 videos of 16 x 224 x 224 takes ~15 s on 2 CPU cores
def test_i3d_fvd_equals_cdfvd_pieces(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "i3d_pretrained_400.pt"
    torch.save(InceptionI3d(400, in_channels=3).state_dict(), path)  # the file cd-fvd loads: a bare state dict
    backbone = build_fvd_backbone(str(path), "cpu")  # recognised from its keys
    assert isinstance(backbone, CdFvdI3D) and backbone.protocol()["protocol"] == "cd-fvd/i3d"
    saved = torch.load(path, weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in backbone.model.state_dict().items())
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    backbone.model.register_forward_hook(lambda _m, args, out: calls.append((args[0], out)))
    real, fake = _videos(2, seed=0, frames=18, h=40, w=48), _videos(2, seed=1, frames=16, h=40, w=48, brightness=0.5)
    result = fvd(real, fake, backbone, min_videos=2, bootstrap=0)

    assert len(calls) == 2  # one batch a side, each fed what cd-fvd's get_i3d_logits feeds the model
    for (x, _), videos in zip(calls, (real, fake)):
        assert torch.equal(x, preprocess_i3d(np.stack([v[:16] for v in videos])))
    assert calls[0][1].shape == (2, 400)
    assert result.value == pytest.approx(_reference_fd(calls[0][1], calls[1][1]), rel=1e-5) and result.value > 0


# ---------------------------------------------------------------- stylegan-v/i3d


class _StyleGANVDetector(torch.nn.Module):
    """A scripted module with the StyleGAN-V detector's signature; it checks that it gets what StyleGAN-V's
    compute_fvd gives it (uint8 [B, 3, T, H, W], rescale=True, resize=True, return_features=True), then
    rescales and resizes as the real one does and returns a 400-d feature."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False) -> torch.Tensor:
        assert x.dtype == torch.uint8 and x.dim() == 5 and x.shape[1] == 3 and x.shape[2] == 16
        assert rescale and resize and return_features
        y = x.float() / 127.5 - 1
        y = torch.nn.functional.interpolate(y, size=[16, 224, 224], mode="trilinear", align_corners=False)
        stats = torch.cat([y.mean(dim=(2, 3, 4)), y.std(dim=(2, 3, 4)), y[:, :, 0].mean(dim=(2, 3))], dim=1)  # [B, 9]
        return (stats.repeat(1, 45)[:, :400] * torch.arange(1, 401, dtype=torch.float32) / 400) ** 3


def test_stylegan_v_torchscript_is_called_as_stylegan_v_does(tmp_path):
    path = tmp_path / "i3d_torchscript.pt"
    detector = torch.jit.script(_StyleGANVDetector())
    detector.save(str(path))
    backbone = build_fvd_backbone(str(path), "cpu")  # recognised as TorchScript
    assert isinstance(backbone, StyleGANVI3D) and backbone.protocol()["protocol"] == "stylegan-v/i3d"
    assert isinstance(build_fvd_backbone(f"stylegan-v:{path}"), StyleGANVI3D)
    real, fake = _videos(3, seed=0, frames=20), _videos(3, seed=1, frames=16, brightness=0.7)
    result = fvd(real, fake, backbone, min_videos=3, bootstrap=0)
    # StyleGAN-V: frames 0..15 of each video, [B, T, H, W, C] -> [B, C, T, H, W] uint8, FeatureStats, the same formula
    feats = [detector(torch.from_numpy(np.stack([v[:16] for v in vs])).permute(0, 4, 1, 2, 3).contiguous(),
                      rescale=True, resize=True, return_features=True) for vs in (real, fake)]
    assert result.value == pytest.approx(_reference_fd(*feats), rel=1e-6) and result.value > 0


# ---------------------------------------------------------------- minimum N, short videos, errors


def test_below_the_minimum_n_or_frames_fvd_is_not_available():
    tiny = build_fvd_backbone("tiny", "cpu")
    result = fvd(_videos(2, 0), _videos(2, 1), tiny)  # the default floor
    assert isinstance(result, FVDResult) and result.value is None and result.low is None and result.high is None
    assert result.protocol["skipped"] == f"n/a (N=2 real, 2 generated; FVD needs >= {MIN_VIDEOS} videos a side)"
    assert MIN_VIDEOS == 32 and result.protocol["protocol"] == "cd-fvd/videomae"
    assert fvd(_videos(1, 0), _videos(3, 0), tiny, min_videos=1).value is None  # never below 2
    short = fvd(_videos(3, 0, frames=9), _videos(3, 1), tiny, min_videos=3)
    assert short.value is None and "a video has 9 frames" in short.protocol["skipped"]
    with pytest.raises(ValueError, match=r"video 1 must be uint8"):
        tiny.features([_videos(1, 0)[0], np.zeros((16, 8, 8), np.uint8)])


def _error(source: str, **kw) -> str:
    with pytest.raises(ValueError) as info:
        build_fvd_backbone(source, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_loading_failures_are_one_line_errors_naming_the_file(tmp_path, small_vit_checkpoint):
    assert "missing.pt not found" in _error(str(tmp_path / "missing.pt"))
    assert "missing.pth not found" in _error(f"i3d:{tmp_path / 'missing.pth'}")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert f"cannot load {junk} as a weights-only checkpoint" in _error(str(junk))
    assert f"{junk} is not a loadable TorchScript file" in _error(f"stylegan-v:{junk}")
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "fn": np.random.default_rng}, pickled)  # not weights-only
    assert f"cannot load {pickled} as a weights-only checkpoint" in _error(f"i3d:{pickled}")
    assert f"{small_vit_checkpoint} does not fit cd-fvd's VideoMAE-v2 ViT-g/14" in _error(f"videomae:{small_vit_checkpoint}")
    assert f"{small_vit_checkpoint} does not fit cd-fvd's InceptionI3d" in _error(f"i3d:{small_vit_checkpoint}")
    other = tmp_path / "other.pt"
    torch.save({"w": torch.zeros(2)}, other)
    assert f"{other} is neither an I3D nor a VideoMAE-v2 state dict" in _error(str(other))
    empty = tmp_path / "empty.pt"
    torch.save({"epoch": 3}, empty)
    assert f"{empty} holds no state dict" in _error(f"videomae:{empty}")
    assert "no-such-hub-model not found" in _error("no-such-hub-model")


def test_a_safetensors_or_module_keyed_checkpoint_loads(tmp_path, small_vit_checkpoint):
    from safetensors.torch import save_file

    state = torch.load(small_vit_checkpoint, weights_only=True)["model"]
    save_file(state, tmp_path / "vit.safetensors")
    torch.save({"module": state, "epoch": 1}, tmp_path / "vit_module.pth")
    for name in ("vit.safetensors", "vit_module.pth"):
        backbone = build_fvd_backbone(str(tmp_path / name), videomae_arch=SMALL_VIT_224)  # recognised from its keys
        assert isinstance(backbone, CdFvdVideoMAE) and torch.equal(backbone.model.state_dict()["patch_embed.proj.weight"],
                                                                   state["patch_embed.proj.weight"])
