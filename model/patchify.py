"""Multi-rate patchify: coarse patch embeddings made from the (1,2,2) Conv3d weights.

Interpolation (``interpolate_patch_weight``): the base kernel ``W`` of size (1,2,2) is resized
to the coarse size (pt,ph,pw) with ``F.interpolate`` ("nearest" by default, or "trilinear")
and multiplied by ``scale = prod(base) / prod(coarse)`` (1/4 for (1,4,4), 1/16 for (1,8,8)).
Both resizes multiply the kernel sum by exactly ``prod(coarse) / prod(base)`` for integer
ratios, so the scale keeps the embedding of a constant input equal at every rate.

With "nearest", each base weight is repeated over an s x s block, so the coarse patchify of
``x`` equals the base patchify of ``x`` average-pooled by s; equivalently, the coarse patchify
of a nearest-upsampled input equals the base patchify of the original input exactly (the
pseudo-inverse resize of FlexiViT for nearest input resizing). Tests check both identities.

Positions: every token gets a (t, h, w) position in units of base (1,2,2) tokens, so RoPE
sees one coordinate system for history and prediction. A coarse patch sits at the centre of
the base tokens it covers: along an axis with size ratio s, patch i covers base tokens
s*i .. s*i+s-1 and gets position s*i + (s-1)/2. A corner convention (s*i) would shift every
coarse token by (s-1)/2 towards the origin relative to the content it summarises; the centre
keeps relative offsets to prediction tokens unbiased. A history frame ``d`` latent frames
before the prediction block has temporal position ``-d``; prediction frames are 0..Fp-1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

Patch = tuple[int, int, int]


def interpolate_patch_weight(
    weight: torch.Tensor, patch_size: Sequence[int], mode: str = "nearest"
) -> torch.Tensor:
    """Resize a Conv3d patch kernel (D, C, *base) to (D, C, *patch_size), sum-preserving."""
    base = tuple(weight.shape[2:])
    patch_size = tuple(int(p) for p in patch_size)
    if patch_size == base:
        return weight
    if any(p % b for p, b in zip(patch_size, base, strict=True)):
        raise ValueError(f"patch {patch_size} is not an integer multiple of the base {base}")
    if mode not in ("nearest", "trilinear"):
        raise ValueError(f"unknown interpolation mode {mode!r}")
    kwargs = {"align_corners": False} if mode == "trilinear" else {}
    resized = F.interpolate(weight.float(), size=patch_size, mode=mode, **kwargs)
    scale = math.prod(base) / math.prod(patch_size)
    return (resized * scale).to(weight.dtype)


def pad_to_multiple(x: torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
    """Replicate-pad (B, C, F, H, W) at the end of each axis to a multiple of the patch.

    Replicate (not zero) padding keeps a constant input constant, so edge patches of a
    latent whose size is not a multiple of a coarse patch (44x80 at 704x1280) stay sane.
    """
    pads = [(-n) % p for n, p in zip(x.shape[2:], patch_size, strict=True)]
    if not any(pads):
        return x
    # F.pad order: (w_left, w_right, h_left, h_right, f_left, f_right)
    return F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]), mode="replicate")


def patchify(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, patch_size: Sequence[int]
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Strided Conv3d patch embedding. x (B, C, F, H, W) -> tokens (B, f*h*w, D) and (f, h, w)."""
    x = pad_to_multiple(x, patch_size)
    y = F.conv3d(x, weight, bias, stride=tuple(patch_size))  # (B, D, f, h, w)
    grid = tuple(y.shape[2:])
    return y.flatten(2).transpose(1, 2), grid


def patch_centers(n: int, ratio: float) -> torch.Tensor:
    """Centres of n patches of ``ratio`` base tokens each, in base-token units (float64)."""
    return torch.arange(n, dtype=torch.float64) * ratio + (ratio - 1) / 2


def grid_positions(
    t: torch.Tensor, grid_hw: tuple[int, int], ratio_hw: tuple[float, float]
) -> torch.Tensor:
    """(N, 3) float64 (t, h, w) positions in (f, h, w) flatten order; t has one entry per frame."""
    h = patch_centers(grid_hw[0], ratio_hw[0])
    w = patch_centers(grid_hw[1], ratio_hw[1])
    tt, hh, ww = torch.meshgrid(t.to(torch.float64).cpu(), h, w, indexing="ij")
    return torch.stack([tt, hh, ww], dim=-1).reshape(-1, 3)


def history_patch_sizes(
    frame_ids: Sequence[int],
    bounds: Sequence[int],
    sizes: Sequence[Sequence[int]],
    first_frame_size: Sequence[int] | None,
) -> list[Patch]:
    """Patch size per history frame by distance: id <= bounds[i] -> sizes[i], else sizes[-1].

    ``first_frame_size`` (None: no special rate) goes to the frame with the largest id, the
    oldest one passed; give it only when that frame is the video's first frame.
    """
    if len(sizes) != len(bounds) + 1:
        raise ValueError("history_patch_sizes needs exactly one more entry than the bounds")
    oldest = max(frame_ids) if len(frame_ids) else None
    out: list[Patch] = []
    for d in frame_ids:
        if d < 1:
            raise ValueError(f"history frame ids count back from 1, got {d}")
        if first_frame_size is not None and d == oldest:
            out.append(tuple(first_frame_size))
            continue
        band = next((i for i, b in enumerate(bounds) if d <= b), len(bounds))
        out.append(tuple(sizes[band]))
    return out


def multirate_patchify(
    history: torch.Tensor,
    frame_ids: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    patch_per_frame: Sequence[Patch],
    mode: str = "nearest",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Patchify each history frame at its own rate with interpolated base weights.

    history (B, C, Fh, H, W), frame_ids (Fh,) distances >= 1, weight the base (D, C, 1, 2, 2)
    kernel. Returns tokens (B, N, D), grouped by rate, and their (N, 3) float64 positions.
    """
    base = tuple(weight.shape[2:])
    if base[0] != 1:
        raise ValueError("multi-rate history patchify assumes a base temporal patch of 1")
    ids = frame_ids.tolist()
    tokens, positions = [], []
    for patch in sorted(set(patch_per_frame)):
        if patch[0] != 1:
            raise ValueError(
                f"history patch {patch}: temporal size must be 1 (sampling compresses time)"
            )
        frames = [i for i, p in enumerate(patch_per_frame) if p == patch]
        x = history[:, :, frames]  # (B, C, f, H, W)
        w = interpolate_patch_weight(weight, patch, mode)
        tok, (_, gh, gw) = patchify(x, w, bias, patch)  # (B, f*gh*gw, D)
        t = -torch.tensor([ids[i] for i in frames], dtype=torch.float64)
        ratio = (patch[1] / base[1], patch[2] / base[2])
        tokens.append(tok)
        positions.append(grid_positions(t, (gh, gw), ratio))
    return torch.cat(tokens, dim=1), torch.cat(positions, dim=0)
