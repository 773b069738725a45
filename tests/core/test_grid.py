"""The token grid is derived from the student geometry; teacher maps land on it."""

import numpy as np
import pytest
import torch
from PIL import Image

from stages.core.grid import (
    latent_frame_groups, latent_shape, mask_to_token_grid, pixel_shape, to_latent_frames, to_token_grid, token_grid,
)


def test_real_cogvideox_grid():
    assert token_grid(49, 480, 720, vae_temporal=4, vae_spatial=8, patch_size=2).shape == (13, 30, 45)


def test_grid_rejects_bad_sizes():
    with pytest.raises(ValueError, match="4k\\+1"):
        token_grid(48, 480, 720, 4, 8, 2)
    with pytest.raises(ValueError, match="multiple of 16"):
        token_grid(49, 470, 720, 4, 8, 2)


def test_temporal_map_stride_and_mean():
    x = torch.arange(49, dtype=torch.float32).view(49, 1)
    assert to_latent_frames(x, 4, "stride").flatten().tolist() == [0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48]
    assert to_latent_frames(x, 4, "mean").flatten().tolist()[:3] == [0.0, 2.5, 6.5]
    assert latent_frame_groups(9, 4) == [[0], [1, 2, 3, 4], [5, 6, 7, 8]]


def test_spatial_resize_to_grid_is_channel_last():
    grid = token_grid(9, 64, 96, 4, 8, 2)
    feats = torch.randn(9, 16, 8, 8)
    out = to_token_grid(feats, grid, 4)
    assert out.shape == (3, 4, 6, 16)
    const = torch.ones(9, 2, 8, 8) * torch.tensor([1.0, -2.0]).view(1, 2, 1, 1)
    assert torch.allclose(to_token_grid(const, grid, 4), torch.tensor([1.0, -2.0]).expand(3, 4, 6, 2))


def test_mask_coverage():
    grid = token_grid(5, 32, 32, 4, 8, 2)
    masks = torch.zeros(5, 32, 32, dtype=torch.bool)
    masks[:, :16, :8] = True  # left half of the top-left 16x16 token
    cover = mask_to_token_grid(masks, grid, 4)
    assert cover.dtype == torch.uint8 and cover.shape == (2, 2, 2)
    assert cover[0, 0, 0] == 128 and cover[0, 1, 1] == 0


def _bilinear_reference(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize of [C, H, W] with half-pixel centres (align_corners=False, no antialiasing), by loops."""
    c, h, w = img.shape
    out = np.zeros((c, out_h, out_w))
    for i in range(out_h):
        y = max((i + 0.5) * h / out_h - 0.5, 0.0)
        y0 = min(int(np.floor(y)), h - 1)
        y1, fy = min(y0 + 1, h - 1), y - y0
        for j in range(out_w):
            x = max((j + 0.5) * w / out_w - 0.5, 0.0)
            x0 = min(int(np.floor(x)), w - 1)
            x1, fx = min(x0 + 1, w - 1), x - x0
            top = (1 - fx) * img[:, y0, x0] + fx * img[:, y0, x1]
            bottom = (1 - fx) * img[:, y1, x0] + fx * img[:, y1, x1]
            out[:, i, j] = (1 - fy) * top + fy * bottom
    return out


def _triangle_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of an antialiased linear resize, by its definition: output pixel i
    (centre (i + 0.5) * s in input pixels, s = n_in / n_out) averages the input pixels under a
    triangle of half-width max(s, 1) around that centre, weights renormalised to sum to 1."""
    s = n_in / n_out
    support = max(s, 1.0)
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) * s
        for k in range(n_in):
            w[i, k] = max(0.0, 1.0 - abs(k + 0.5 - centre) / support)
        w[i] /= w[i].sum()
    return w


def _antialias_reference(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Separable triangle-filter resize of [C, H, W] (rows, then columns), by loops."""
    wy, wx = _triangle_weights(img.shape[1], out_h), _triangle_weights(img.shape[2], out_w)
    return np.einsum("ik,ckl,jl->cij", wy, img.astype(np.float64), wx)


@pytest.mark.parametrize("mode", ["stride", "mean"])
def test_resize_of_varying_maps_matches_an_independent_reference(mode):
    grid = token_grid(9, 64, 96, 4, 8, 2)  # (3, 4, 6)
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((9, 3, 10, 14)).astype(np.float32)  # not a multiple of the grid
    out = to_token_grid(torch.from_numpy(feats), grid, 4, mode).numpy()  # [T, h, w, C], antialiased by default
    plain = to_token_grid(torch.from_numpy(feats), grid, 4, mode, resample="bilinear").numpy()
    groups = [[0], [1, 2, 3, 4], [5, 6, 7, 8]]
    for t, group in enumerate(groups):
        frame = feats[group[-1]] if mode == "stride" else feats[group].mean(0)
        np.testing.assert_allclose(out[t], _antialias_reference(frame, 4, 6).transpose(1, 2, 0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(plain[t], _bilinear_reference(frame, 4, 6).transpose(1, 2, 0), rtol=1e-5, atol=1e-5)
        # and a second, unrelated implementation: PIL's bilinear resize of float images is the same filter
        pil = np.stack([np.asarray(Image.fromarray(c, mode="F").resize((6, 4), Image.Resampling.BILINEAR)) for c in frame])
        np.testing.assert_allclose(out[t], pil.transpose(1, 2, 0), rtol=1e-4, atol=1e-4)


def test_antialiasing_suppresses_what_plain_bilinear_aliases():
    """White noise on the teacher's cells, 4x downscaled: everything above the token grid's Nyquist
    frequency should average out. Plain bilinear reads 2x2 cells per token and keeps much of it."""
    grid = token_grid(1, 64, 64, 4, 8, 2)  # (1, 4, 4)
    noise = torch.from_numpy(np.random.default_rng(2).standard_normal((1, 1, 64, 64)).astype(np.float32))
    grid16 = token_grid(1, 256, 256, 4, 8, 2)  # (1, 16, 16): 64 -> 16
    smooth, plain = to_token_grid(noise, grid16, 4), to_token_grid(noise, grid16, 4, resample="bilinear")
    assert float(plain.std()) == pytest.approx(0.5, abs=0.1)  # the mean of 4 cells: std 1/2
    assert float(smooth.std()) < 0.6 * float(plain.std())
    # upscaling: no difference between the two
    up = torch.randn(1, 2, 2, 3)
    assert torch.allclose(to_token_grid(up, grid, 4), to_token_grid(up, grid, 4, resample="bilinear"), atol=1e-6)


def test_mask_coverage_of_a_varying_mask_is_the_block_mean():
    grid = token_grid(9, 32, 48, 4, 8, 2)  # (3, 2, 3): tokens of 16x16 pixels
    rng = np.random.default_rng(1)
    masks = rng.random((9, 32, 48)) < np.linspace(0.1, 0.9, 48)  # coverage varies across the frame
    cover = mask_to_token_grid(torch.from_numpy(masks), grid, 4).numpy()
    for t, frame in enumerate((0, 4, 8)):
        blocks = masks[frame].reshape(2, 16, 3, 16).mean(axis=(1, 3))
        np.testing.assert_array_equal(cover[t], np.round(blocks * 255).astype(np.uint8))
    assert len(np.unique(cover)) > 3  # the test exercised varying coverage


def test_latent_shape_and_pixel_shape_are_inverse_on_the_clip_sizes_the_vaes_take():
    assert latent_shape(49, 480, 720, 4, 8) == (13, 60, 90)  # CogVideoX at its native size
    assert latent_shape(81, 480, 832, 4, 8) == (21, 60, 104)  # Wan 2.1
    assert latent_shape(121, 704, 1280, 4, 16) == (31, 44, 80)  # Wan 2.2 TI2V-5B's VAE: 16x spatial
    for clip in ((49, 480, 720), (17, 64, 96), (1, 16, 16)):
        assert pixel_shape(latent_shape(*clip, 4, 8), 4, 8) == clip
