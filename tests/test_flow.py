"""Flow-matching schedule: interpolation, target, shift, sampling, Euler integration."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model import flow


@given(s=st.floats(0.0, 1.0), shift=st.floats(0.2, 10.0))
@settings(max_examples=200, deadline=None)
def test_shift_keeps_endpoints_and_range(s: float, shift: float) -> None:
    out = flow.shift_sigma(torch.tensor([0.0, s, 1.0], dtype=torch.float64), shift)
    assert out[0] == 0 and abs(out[2].item() - 1) < 1e-12
    assert 0.0 <= out[1].item() <= 1.0 + 1e-12
    if shift > 1:  # shift > 1 moves every interior sigma towards noise
        assert out[1].item() >= s - 1e-12


def test_shift_is_monotone_identity_at_one_and_matches_formula() -> None:
    s = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert torch.equal(flow.shift_sigma(s, 1.0), s)
    out = flow.shift_sigma(s, 5.0)
    assert torch.all(out[1:] > out[:-1])
    assert out[50].item() == pytest.approx(5 * 0.5 / (1 + 4 * 0.5))
    with pytest.raises(ValueError):
        flow.shift_sigma(s, 0.0)


def test_interpolation_endpoints_and_velocity() -> None:
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 2, 3, 3, generator=g), torch.randn(3, 4, 2, 3, 3, generator=g)
    sig = torch.tensor([0.0, 0.25, 1.0])
    xt = flow.add_noise(x0, noise, sig)
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[2], noise[2])
    assert torch.allclose(xt[1], 0.75 * x0[1] + 0.25 * noise[1])
    # the path is linear: d x_s / d s equals the velocity target
    v = flow.velocity_target(x0, noise)
    eps = 1e-3
    dx = (flow.add_noise(x0, noise, sig + eps) - flow.add_noise(x0, noise, sig)) / eps
    assert torch.allclose(dx, v, atol=1e-3)
    assert torch.allclose(flow.predict_x0(xt, v, sig), x0, atol=1e-6)
    assert flow.flow_loss(v, x0, noise).item() == 0.0
    assert torch.equal(flow.sigma_to_timestep(torch.tensor([0.5])), torch.tensor([500.0]))


@pytest.mark.parametrize("mode", ["uniform", "logit_normal"])
def test_sample_sigmas_range_reproducible_and_shifted(mode: str) -> None:
    a = flow.sample_sigmas(4000, generator=torch.Generator().manual_seed(1), mode=mode)
    b = flow.sample_sigmas(4000, generator=torch.Generator().manual_seed(1), mode=mode)
    assert torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1 and abs(a.mean().item() - 0.5) < 0.03
    shifted = flow.sample_sigmas(
        4000, generator=torch.Generator().manual_seed(1), mode=mode, shift=5.0
    )
    assert shifted.mean() > a.mean() + 0.15
    with pytest.raises(ValueError):
        flow.sample_sigmas(2, mode="nope")  # type: ignore[arg-type]


def test_euler_with_exact_velocity_recovers_data() -> None:
    """With the true (constant) velocity, Euler sampling from pure noise lands on x0."""
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    sigmas = flow.sampling_sigmas(7, shift=3.0)
    assert sigmas[0] == 1 and sigmas[-1] == 0 and torch.all(sigmas[1:] < sigmas[:-1])
    x = noise.clone()
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        x = flow.euler_step(x, flow.velocity_target(x0, noise), s, s_next)
    assert torch.allclose(x, x0, atol=1e-5)
