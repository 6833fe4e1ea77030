"""Rectified-flow (flow-matching) schedule as used by Wan: pure tensor functions.

Noise level ``s`` (sigma) in [0, 1] runs from data (0) to noise (1):
``x_s = (1 - s) * x0 + s * noise``, velocity target ``v = noise - x0``, model timestep
``t = 1000 * s``. Wan's shift moves sigmas towards noise for large inputs:
``s' = shift * s / (1 + (shift - 1) * s)``. Sampling integrates ``dx/ds = v`` from s=1 to 0.
"""

from __future__ import annotations

from typing import Literal

import torch

NUM_TRAIN_TIMESTEPS = 1000

SigmaSampling = Literal["uniform", "logit_normal"]


def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan's timestep shift; monotone, keeps 0 and 1 fixed, ``shift=1`` is the identity."""
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return shift * sigma / (1 + (shift - 1) * sigma)


def sample_sigmas(
    n: int,
    *,
    generator: torch.Generator | None = None,
    mode: SigmaSampling = "uniform",
    shift: float = 1.0,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
) -> torch.Tensor:
    """Draw ``n`` training noise levels in (0, 1), shifted. (n,) float32."""
    if mode == "uniform":
        u = torch.rand(n, generator=generator)
    elif mode == "logit_normal":
        u = torch.sigmoid(logit_mean + logit_std * torch.randn(n, generator=generator))
    else:
        raise ValueError(f"unknown sigma sampling {mode!r}")
    return shift_sigma(u, shift)


def _expand(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # (B,) -> (B, 1, 1, ...) to broadcast over a (B, C, F, H, W) latent
    return sigma.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The noisy latent ``(1 - s) x0 + s noise`` for per-sample sigmas (B,)."""
    s = _expand(sigma, x0)
    return (1 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The regression target of the network: ``noise - x0`` (constant along the path)."""
    return noise - x0


def sigma_to_timestep(sigma: torch.Tensor) -> torch.Tensor:
    """Model timestep in [0, 1000] for sigma in [0, 1]."""
    return sigma * NUM_TRAIN_TIMESTEPS


def flow_loss(pred_velocity: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Mean squared velocity error, computed in float32."""
    target = velocity_target(x0, noise)
    return torch.mean((pred_velocity.float() - target.float()) ** 2)


def sampling_sigmas(num_steps: int, shift: float = 1.0) -> torch.Tensor:
    """Decreasing sigmas for Euler sampling, ``num_steps + 1`` values from 1 to 0 (shifted)."""
    if num_steps < 1:
        raise ValueError("num_steps must be >= 1")
    return shift_sigma(torch.linspace(1.0, 0.0, num_steps + 1), shift)


def euler_step(
    x: torch.Tensor,
    velocity: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
) -> torch.Tensor:
    """One Euler step of ``dx/ds = v`` from ``sigma`` to ``sigma_next`` (< sigma)."""
    return x + (sigma_next - sigma) * velocity


def predict_x0(x: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Clean-latent estimate ``x_s - s v`` implied by a velocity at noise level sigma (B,)."""
    return x - _expand(sigma, x) * velocity
