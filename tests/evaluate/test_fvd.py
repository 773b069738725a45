"""stages/evaluate/metrics/fvd.py: the Frechet distance against closed forms, FVD(X, X) = 0 through a real
(tiny, random-weight) VideoMAE, and the I3D TorchScript calling protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.evaluate.metrics.fvd import I3DBackbone, VideoMAEBackbone, build_fvd_backbone, feature_stats, frechet_distance, fvd


def _videos(n: int, seed: int, frames: int = 6, h: int = 40, w: int = 48, brightness: float = 1.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.clip(rng.random((frames, h, w, 3)) * 255 * brightness, 0, 255).astype(np.uint8) for _ in range(n)]


def test_frechet_distance_matches_the_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    expected = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_of_rotated_gaussians_and_identity():
    """Full covariances: S2 = R S1 R^T with the same eigenvalues; the 1-d case is (m1-m2)^2 + (s1-s2)^2."""
    rng = np.random.default_rng(1)
    a = rng.normal(size=(4, 4))
    s1 = a @ a.T + 0.1 * np.eye(4)
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    s2 = q @ s1 @ q.T
    mu = rng.normal(size=4)
    assert frechet_distance(mu, s1, mu, s1) == pytest.approx(0.0, abs=1e-9)
    value = frechet_distance(mu, s1, mu, s2)
    assert value > 0
    # scalar check of the general formula: sd 2 vs sd 5 -> (5 - 2)^2 = 9, plus the mean term
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[25.0]])) == pytest.approx(4 + 9)


def test_feature_stats_and_errors():
    feats = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 8.0]])
    mu, sigma = feature_stats(feats)
    assert np.allclose(mu, [2, 4]) and np.allclose(sigma, np.cov(feats.T))
    with pytest.raises(ValueError, match="N >= 2"):
        feature_stats(feats[:1])
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


@pytest.fixture(scope="module")
def tiny():
    return build_fvd_backbone("tiny", "cpu", batch_size=3)


def test_fvd_of_a_set_with_itself_is_zero_and_differs_from_another_set(tiny):
    assert isinstance(tiny, VideoMAEBackbone)
    real = _videos(5, seed=0)
    value, protocol = fvd(real, real, tiny)
    assert value == pytest.approx(0.0, abs=1e-6)
    assert protocol["backbone"] == "videomae:tiny" and protocol["frames"] == 4 and protocol["resolution"] == [32, 32]
    assert protocol["num_real"] == protocol["num_generated"] == 5 and protocol["feature_dim"] == 32
    other, _ = fvd(real, _videos(5, seed=1, frames=9, h=30, w=50, brightness=0.4), tiny)  # any size resamples
    assert other > 1e-3


def test_fvd_rejects_too_few_or_malformed_videos(tiny):
    with pytest.raises(ValueError, match=">= 2 videos"):
        fvd(_videos(1, 0), _videos(3, 0), tiny)
    with pytest.raises(ValueError, match=r"video 1 must be uint8"):
        tiny.features([_videos(1, 0)[0], np.zeros((4, 8, 8), np.uint8)])


class _I3DProtocol(torch.nn.Module):
    """A scripted module with the StyleGAN-V detector's signature that checks the documented input
    (float [N, 3, T, 224, 224] in [-1, 1]) and returns a 400-d feature (per-channel moments)."""

    def forward(self, x: torch.Tensor, rescale: bool = True, resize: bool = True, return_features: bool = False) -> torch.Tensor:
        assert x.dim() == 5 and x.shape[1] == 3 and x.shape[3] == 224 and x.shape[4] == 224
        assert x.min() >= -1.0 and x.max() <= 1.0
        assert not rescale and not resize and return_features
        stats = torch.cat([x.mean(dim=(2, 3, 4)), x.std(dim=(2, 3, 4))], dim=1)  # [N, 6]
        return stats.repeat(1, 67)[:, :400]


def test_i3d_torchscript_file_is_loaded_and_called_as_documented(tmp_path):
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(_I3DProtocol()).save(str(path))
    backbone = build_fvd_backbone(str(path), "cpu", num_frames=5)
    assert isinstance(backbone, I3DBackbone) and backbone.num_frames == 5 and backbone.image_size == 224
    feats = backbone.features(_videos(2, seed=0, frames=3, h=24, w=24))
    assert feats.shape == (2, 400)
    value, protocol = fvd(_videos(3, 0), _videos(3, 0), backbone)
    assert value == pytest.approx(0.0, abs=1e-6) and protocol["backbone"] == "i3d-torchscript:i3d_torchscript.pt"


def test_bad_backbone_sources_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        build_fvd_backbone(str(tmp_path / "missing.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torchscript archive")
    with pytest.raises(ValueError, match="not a loadable TorchScript file"):
        build_fvd_backbone(str(junk))
    with pytest.raises(ValueError, match="cannot load VideoMAE"):
        build_fvd_backbone(str(tmp_path / "no-such-model-folder"))
