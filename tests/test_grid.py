"""The token grid is derived from the student geometry; teacher maps land on it."""

import pytest
import torch

from stages.grid import latent_frame_groups, mask_to_token_grid, to_latent_frames, to_token_grid, token_grid


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
