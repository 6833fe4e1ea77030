"""Multi-rate patchify: interpolated kernels agree with direct strided patchify where they must."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from model.patchify import (
    grid_positions,
    history_patch_sizes,
    interpolate_patch_weight,
    multirate_patchify,
    pad_to_multiple,
    patchify,
)

BASE = (1, 2, 2)


def _base_conv(
    dim: int = 16, channels: int = 6, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(dim, channels, *BASE, generator=g), torch.randn(dim, generator=g)


@pytest.mark.parametrize("s", [2, 4])
def test_nearest_kernel_on_upsampled_input_equals_base_patchify(s):
    w, b = _base_conv()
    x = torch.randn(2, 6, 3, 4, 6)
    x_up = x.repeat_interleave(s, dim=3).repeat_interleave(s, dim=4)  # nearest upsample by s
    coarse = (1, 2 * s, 2 * s)
    direct, grid = patchify(x, w, b, BASE)
    interp, grid_up = patchify(x_up, interpolate_patch_weight(w, coarse), b, coarse)
    assert grid == grid_up
    torch.testing.assert_close(interp, direct, rtol=1e-5, atol=1e-5)


def test_nearest_kernel_equals_base_patchify_of_average_pooled_input():
    w, b = _base_conv()
    x = torch.randn(1, 6, 2, 16, 8)
    coarse, _ = patchify(x, interpolate_patch_weight(w, (1, 8, 8)), b, (1, 8, 8))
    pooled = F.avg_pool3d(x, kernel_size=(1, 4, 4))
    direct, _ = patchify(pooled, w, b, BASE)
    torch.testing.assert_close(coarse, direct, rtol=1e-5, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(
    mode=st.sampled_from(["nearest", "trilinear"]),
    ph=st.sampled_from([2, 4, 8]),
    pw=st.sampled_from([2, 4, 8]),
    pt=st.sampled_from([1, 2]),
    value=st.floats(-3, 3),
)
def test_constant_input_embeds_equally_at_every_rate(mode, ph, pw, pt, value):
    w, b = _base_conv(dim=8, channels=3)
    coarse = (pt, ph, pw)
    x = torch.full((1, 3, 2, 8, 8), value)
    ref, _ = patchify(x, w, b, BASE)
    out, _ = patchify(x, interpolate_patch_weight(w, coarse, mode), b, coarse)
    torch.testing.assert_close(out, ref[:, : out.shape[1]], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out, ref[:, :1].expand_as(out), rtol=1e-4, atol=1e-4)


def test_interpolate_rejects_non_multiples_and_unknown_modes():
    w, _ = _base_conv()
    with pytest.raises(ValueError, match="multiple"):
        interpolate_patch_weight(w, (1, 3, 3))
    with pytest.raises(ValueError, match="mode"):
        interpolate_patch_weight(w, (1, 4, 4), mode="bicubic")
    assert interpolate_patch_weight(w, BASE) is w


def test_padding_replicates_edges_and_rounds_grid_up():
    x = torch.arange(2 * 11 * 10, dtype=torch.float32).view(1, 1, 2, 11, 10)
    padded = pad_to_multiple(x, (1, 4, 8))
    assert padded.shape == (1, 1, 2, 12, 16)
    torch.testing.assert_close(padded[..., 11, :10], x[..., 10, :])
    torch.testing.assert_close(padded[..., :11, 15], x[..., :, 9])
    w, b = _base_conv(channels=1)
    _, grid = patchify(x, interpolate_patch_weight(w, (1, 4, 8)), b, (1, 4, 8))
    assert grid == (2, 3, 2)


def test_coarse_positions_are_centres_of_the_fine_tokens_they_cover():
    t = torch.tensor([-3.0])
    fine = grid_positions(t, (8, 8), (1.0, 1.0)).view(8, 8, 3)
    coarse = grid_positions(t, (2, 2), (4.0, 4.0)).view(2, 2, 3)
    pooled = fine.permute(2, 0, 1).unsqueeze(0)
    pooled = F.avg_pool2d(pooled, 4)[0].permute(1, 2, 0)
    torch.testing.assert_close(coarse, pooled)


def test_schedule_assigns_rates_by_distance_and_keeps_first_frame_fine():
    sizes = ((1, 2, 2), (1, 4, 4), (1, 8, 8))
    ids = [1, 2, 3, 6, 7, 40, 90]
    got = history_patch_sizes(ids, (2, 6), sizes, (1, 2, 2))
    assert got == [sizes[0], sizes[0], sizes[1], sizes[1], sizes[2], sizes[2], (1, 2, 2)]
    assert history_patch_sizes(ids, (2, 6), sizes, None)[-1] == sizes[2]
    with pytest.raises(ValueError, match="count back from 1"):
        history_patch_sizes([0, 1], (2, 6), sizes, None)
    with pytest.raises(ValueError, match="one more entry"):
        history_patch_sizes([1], (2,), sizes, None)


def test_multirate_patchify_token_counts_positions_and_gradients():
    w, b = _base_conv()
    w.requires_grad_(True)
    history = torch.randn(2, 6, 4, 16, 16)
    ids = torch.tensor([30, 5, 2, 1])
    patches = [(1, 8, 8), (1, 4, 4), (1, 2, 2), (1, 2, 2)]
    tokens, pos = multirate_patchify(history, ids, w, b, patches)
    # 2 frames x 8x8 + 1 x 4x4 + 1 x 2x2
    assert tokens.shape == (2, 2 * 64 + 16 + 4, 16)
    assert pos.shape == (tokens.shape[1], 3)
    assert sorted(set(pos[:, 0].tolist())) == [-30.0, -5.0, -2.0, -1.0]
    # 8-pixel patches cover 4 base tokens each: centres 1.5 and 5.5 in base-token units
    assert pos[pos[:, 0] == -30.0, 1].unique().tolist() == [1.5, 5.5]
    tokens.square().mean().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="temporal size must be 1"):
        multirate_patchify(history, ids, w, b, [(2, 4, 4)] * 4)
