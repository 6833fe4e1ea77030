"""TSCM against independent references: diffusers' Wan with per-token timesteps, literal
formulas for RoPE, multi-rate positions and the linear-attention fusion branch.

Why: the equals-Wan test of tests/test_tscm.py runs without history on a square grid, so a
bug in the history timestep, the output modulation or the h/w order of the prediction
RoPE passes it. With every history band at the base (1,2,2) rate and the channel branch
off, TSCM over [history ; prediction] is exactly Wan over the frames [history ; prediction]
with per-token timesteps (history t = 0), because RoPE attention depends only on position
differences: TSCM's history positions -Fh..-1 are Wan's 0..Fh-1 shifted by a constant.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel

from model.configs import transformer_config, wan_kwargs
from model.linear_attention import LinearAttentionFusion, relu_linear_attention
from model.patchify import multirate_patchify
from model.tscm import TSCMTransformer, prediction_rope

BASE = (1, 2, 2)


@pytest.fixture(scope="module")
def full_attention_pair() -> tuple[TSCMTransformer, WanTransformer3DModel]:
    """TSCM with no compression (every band (1,2,2), no channel branch) and Wan, same weights."""
    cfg = transformer_config("tiny") | {
        "history_patch_sizes": (BASE, BASE, BASE),
        "first_frame_patch_size": BASE,
        "linear_channels": 0,
    }
    torch.manual_seed(0)
    tscm = TSCMTransformer(**cfg).eval()
    wan = WanTransformer3DModel(**wan_kwargs(cfg)).eval()
    wan.load_state_dict(tscm.state_dict(), strict=True)  # same keys: nothing TSCM-only
    return tscm, wan


def _inputs(frames=2, hist=3, h=8, w=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 48, frames, h, w, generator=g)
    t = torch.tensor([130.0, 810.0])
    text = torch.randn(2, 5, 32, generator=g)
    history = torch.randn(2, 48, hist, h, w, generator=g)
    return x, t, text, history


def _wan_reference(wan, x, t, text, history):
    """Wan over the frames [history ; prediction], per-token timesteps, prediction frames out."""
    hist, (b, _, fp, h, w) = history.shape[2], x.shape
    tokens_per_frame = (h // 2) * (w // 2)
    per_token = torch.cat(
        [torch.zeros(b, hist * tokens_per_frame), t[:, None].expand(b, fp * tokens_per_frame)],
        dim=1,
    )
    out = wan(torch.cat([history, x], dim=2), per_token, text, return_dict=False)[0]
    return out[:, :, hist:]


def test_history_forward_equals_diffusers_wan_on_a_non_square_grid(full_attention_pair):
    tscm, wan = full_attention_pair
    x, t, text, history = _inputs()
    ids = torch.arange(history.shape[2], 0, -1)
    with torch.no_grad():
        ours = tscm(x, t, text, history=history, history_frame_ids=ids)[0]
        ref = _wan_reference(wan, x, t, text, history)
        no_history = wan(x, t, text, return_dict=False)[0]
    assert ours.shape == x.shape
    assert not torch.allclose(ref, no_history, atol=1e-3)  # the history matters here
    torch.testing.assert_close(ours, ref, rtol=0, atol=2e-5)  # measured: below 1e-6


def test_no_history_equals_wan_on_a_non_square_grid(full_attention_pair):
    tscm, wan = full_attention_pair
    x, t, text, _ = _inputs(frames=3, h=4, w=16)
    with torch.no_grad():
        torch.testing.assert_close(
            tscm(x, t, text)[0], wan(x, t, text, return_dict=False)[0], rtol=0, atol=2e-5
        )


def test_forward_rope_tables_equal_wans_on_a_non_square_grid(full_attention_pair):
    _, wan = full_attention_pair
    cos, sin = wan.rope(torch.zeros(1, 48, 3, 8, 12))  # grid (3, 4, 6)
    ours = prediction_rope((3, 4, 6), 32, torch.device("cpu"))
    assert torch.equal(ours[0], cos) and torch.equal(ours[1], sin)


def test_coarse_history_positions_follow_the_centre_formula():
    """A frame d before the prediction at rate (1,s,s): token (i, j) sits at (-d, s*i + (s-1)/2,
    s*j + (s-1)/2) in base-token units, tokens in row-major (h, w) order."""
    weight, bias = torch.randn(8, 4, *BASE), torch.randn(8)
    history = torch.randn(1, 4, 2, 16, 24)  # base grid 8 x 12
    ids = torch.tensor([5, 1])
    tokens, pos = multirate_patchify(history, ids, weight, bias, [(1, 8, 8), (1, 2, 2)])
    want = []
    for d, s in ((1, 1), (5, 4)):  # grouped by patch size: (1,2,2) first
        for i in range(8 // s):
            for j in range(12 // s):
                want.append((-d, s * i + (s - 1) / 2, s * j + (s - 1) / 2))
    assert torch.equal(pos, torch.tensor(want, dtype=torch.float64))
    assert tokens.shape == (1, 8 * 12 + 2 * 3, 8)


def _rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Literal RoPE: pair (2m, 2m+1) of token n turned by angles[n, m]. x (N, d), angles (N, d/2)."""
    out = torch.empty_like(x)
    c, s = angles.cos(), angles.sin()
    out[:, 0::2] = x[:, 0::2] * c - x[:, 1::2] * s
    out[:, 1::2] = x[:, 0::2] * s + x[:, 1::2] * c
    return out


def _tables(angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, d/2) angles -> (1, N, 1, d) cos/sin tables, each angle repeated over its pair."""
    full = angles.repeat_interleave(2, dim=1)[None, :, None]
    return full.cos(), full.sin()


def test_linear_attention_equals_the_literal_formula_with_rope():
    """out_i = sum_j <R_i q_i, R_j k_j> v_j / (sum_j <q_i, k_j> + eps), token by token."""
    g = torch.Generator().manual_seed(3)
    nq, nk, d, eps = 5, 9, 8, 1e-6
    q = F.relu(torch.randn(1, nq, 1, d, generator=g, dtype=torch.float64))
    k = F.relu(torch.randn(1, nk, 1, d, generator=g, dtype=torch.float64))
    v = torch.randn(1, nk, 1, d, generator=g, dtype=torch.float64)
    aq = torch.rand(nq, d // 2, generator=g, dtype=torch.float64) * 6
    ak = torch.rand(nk, d // 2, generator=g, dtype=torch.float64) * 6
    got = relu_linear_attention(q, k, v, _tables(aq), _tables(ak), eps=eps)[0, :, 0]
    qr, kr = _rotate(q[0, :, 0], aq), _rotate(k[0, :, 0], ak)
    want = torch.stack(
        [
            sum((qr[i] @ kr[j]) * v[0, j, 0] for j in range(nk))
            / (sum(q[0, i, 0] @ k[0, j, 0] for j in range(nk)) + eps)
            for i in range(nq)
        ]
    )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)  # float32 inside


def test_fusion_branch_equals_its_literal_composition():
    """down -> ReLU q from prediction, ReLU k and v from [prediction ; z] -> attention -> RMSNorm
    -> out -> up, written out per head with the literal rotation."""
    torch.manual_seed(0)
    dim, width, heads = 12, 8, 2
    fusion = LinearAttentionFusion(dim, width, heads).double()
    torch.nn.init.normal_(fusion.up.weight, std=0.3)
    np_, nz, hd = 4, 6, width // heads
    x, z = torch.randn(1, np_, dim).double(), torch.randn(1, nz, width).double()
    ax, az = torch.rand(np_, hd // 2).double() * 5, torch.rand(nz, hd // 2).double() * 5
    got = fusion(x, z, _tables(ax), _tables(az))[0]

    h = fusion.down(x[0])
    ctx, a_ctx = torch.cat([h, z[0]]), torch.cat([ax, az])
    q, k, v = F.relu(fusion.to_q(h)), F.relu(fusion.to_k(ctx)), fusion.to_v(ctx)
    out = []
    for head in range(heads):
        sl = slice(head * hd, (head + 1) * hd)
        qr, kr = _rotate(q[:, sl], ax), _rotate(k[:, sl], a_ctx)
        num = (qr @ kr.T) @ v[:, sl]
        den = (q[:, sl] @ k[:, sl].T).sum(1, keepdim=True) + 1e-6
        out.append(num / den)
    o = torch.cat(out, dim=1)
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-6) * fusion.norm.weight
    want = fusion.up(fusion.to_out(o))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)  # float32 inside


def test_history_keep_without_the_first_frame_gives_it_its_band_rate():
    """history_keep that leaves out the video's first frame: the oldest kept frame is not the
    first frame, so attention must see exactly the kept frames passed with
    history_includes_first_frame=False (fusion at its zero init: only attention counts)."""
    torch.manual_seed(0)
    tscm = TSCMTransformer.from_config_name("tiny").eval()
    x, t, text, history = _inputs(hist=10, h=16, w=16)
    ids = torch.arange(10, 0, -1)
    keep = torch.tensor([3, 8, 9])  # distances 7, 2, 1: 7 is in the (1,8,8) band
    with torch.no_grad():
        got = tscm(x, t, text, history=history, history_frame_ids=ids, history_keep=keep)[0]
        kept = dict(history=history[:, :, keep], history_frame_ids=ids[keep])
        band = tscm(x, t, text, **kept, history_includes_first_frame=False)[0]
        as_first = tscm(x, t, text, **kept, history_includes_first_frame=True)[0]
    assert not torch.allclose(band, as_first, atol=1e-4)
    torch.testing.assert_close(got, band)
