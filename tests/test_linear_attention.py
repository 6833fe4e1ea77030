"""ReLU linear attention with RoPE: equals the quadratic form of the same formula; fusion branch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.linear_attention import LinearAttentionFusion, apply_rope, relu_linear_attention
from model.tscm import rope_cos_sin


def _positions(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randint(-20, 20, (n, 3), generator=g).double()
        + 0.5 * torch.rand(n, 3, generator=g).double()
    )


def _quadratic(q, k, v, rope_q, rope_k, eps=1e-6):
    """(Q K^T) V written out: numerator with rotated features, denominator without."""
    qr, kr = apply_rope(q, *rope_q), apply_rope(k, *rope_k)
    scores = torch.einsum("bihd,bjhd->bhij", qr, kr)  # (B, H, Nq, Nk)
    norm = torch.einsum("bihd,bjhd->bhij", q, k).sum(-1, keepdim=True) + eps
    return torch.einsum("bhij,bjhd->bihd", scores / norm, v)


def test_linear_attention_equals_quadratic_computation():
    g = torch.Generator().manual_seed(0)
    b, nq, nk, h, d = 2, 7, 19, 2, 12
    q = F.relu(torch.randn(b, nq, h, d, generator=g, dtype=torch.float64))
    k = F.relu(torch.randn(b, nk, h, d, generator=g, dtype=torch.float64))
    v = torch.randn(b, nk, h, d, generator=g, dtype=torch.float64)
    rope_q = tuple(t.double() for t in rope_cos_sin(_positions(nq, 1), d))
    rope_k = tuple(t.double() for t in rope_cos_sin(_positions(nk, 2), d))
    fast = relu_linear_attention(q, k, v, rope_q, rope_k).double()
    torch.testing.assert_close(fast, _quadratic(q, k, v, rope_q, rope_k), rtol=1e-5, atol=1e-6)


def test_rope_makes_scores_depend_on_relative_position_only():
    g = torch.Generator().manual_seed(1)
    q = F.relu(torch.randn(1, 5, 1, 12, generator=g))
    k = F.relu(torch.randn(1, 9, 1, 12, generator=g))
    v = torch.randn(1, 9, 1, 12, generator=g)
    pq, pk = _positions(5, 3), _positions(9, 4)
    shift = torch.tensor([[7.0, -3.0, 2.5]], dtype=torch.float64)
    a = relu_linear_attention(q, k, v, rope_cos_sin(pq, 12), rope_cos_sin(pk, 12))
    b = relu_linear_attention(q, k, v, rope_cos_sin(pq + shift, 12), rope_cos_sin(pk + shift, 12))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    c = relu_linear_attention(q, k, v, rope_cos_sin(pq + shift, 12), rope_cos_sin(pk, 12))
    assert not torch.allclose(a, c, atol=1e-3)


def _fusion_inputs(dim=24, width=16, np_=10, nz=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, np_, dim, generator=g, requires_grad=True)
    z = torch.randn(2, nz, width, generator=g, requires_grad=True)
    head = width // 2
    rx = rope_cos_sin(_positions(np_, 5), head)
    rz = rope_cos_sin(_positions(nz, 6), head)
    return x, z, rx, rz


def test_fusion_starts_as_exact_no_op_and_only_up_learns_first():
    fusion = LinearAttentionFusion(dim=24, width=16, heads=2)
    x, z, rx, rz = _fusion_inputs()
    out = fusion(x, z, rx, rz)
    assert out.shape == x.shape and torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert fusion.up.weight.grad.abs().sum() > 0
    assert fusion.down.weight.grad.abs().sum() == 0  # gated by the zero up-projection


def test_fusion_shapes_and_gradients_reach_every_input_and_parameter():
    torch.manual_seed(0)
    fusion = LinearAttentionFusion(dim=24, width=16, heads=2)
    torch.nn.init.normal_(fusion.up.weight, std=0.1)
    x, z, rx, rz = _fusion_inputs()
    out = fusion(x, z, rx, rz)
    assert out.shape == (2, 10, 24)
    out.square().mean().backward()
    for name, p in fusion.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0 and z.grad.abs().sum() > 0
    # history matters: a different z_linear changes the update
    assert not torch.allclose(out, fusion(x, z + 1.0, rx, rz))
    # no history (T2V): the branch still runs over the prediction tokens
    empty = (torch.zeros(2, 0, 16), tuple(t[:, :0] for t in rz))
    assert fusion(x, empty[0], rx, empty[1]).shape == (2, 10, 24)


def test_fusion_runs_in_bf16_autocast():
    fusion = LinearAttentionFusion(dim=24, width=16, heads=2)
    torch.nn.init.normal_(fusion.up.weight, std=0.1)
    x, z, rx, rz = _fusion_inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fusion(x, z, rx, rz)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_rope_tables_and_rotation_match_diffusers_wan_attention():
    """An independent reference: diffusers' WanRotaryPosEmbed tables and WanAttnProcessor's
    rotation. Our tables for the integer (t, h, w) grid must equal diffusers', and attention
    over q, k rotated by our apply_rope must equal diffusers' Wan self-attention."""
    from diffusers.models.transformers.transformer_wan import (
        WanAttention,
        WanAttnProcessor,
        WanRotaryPosEmbed,
    )

    heads, d, (f, h, w) = 2, 24, (3, 4, 5)
    torch.manual_seed(0)
    latents = torch.zeros(1, 4, f, 2 * h, 2 * w)  # patch (1, 2, 2) -> an f x h x w token grid
    ref_cos, ref_sin = WanRotaryPosEmbed(d, (1, 2, 2), max_seq_len=64)(latents)
    grid = torch.stack(torch.meshgrid(*map(torch.arange, (f, h, w)), indexing="ij"), -1)
    cos, sin = rope_cos_sin(grid.reshape(-1, 3), d)  # (1, N, 1, d)
    torch.testing.assert_close((cos, sin), (ref_cos.float(), ref_sin.float()), rtol=0, atol=0)

    attn = WanAttention(heads * d, heads=heads, dim_head=d, processor=WanAttnProcessor()).double()
    x = torch.randn(1, f * h * w, heads * d, dtype=torch.float64)
    with torch.no_grad():
        ref = attn(x, rotary_emb=(ref_cos.double(), ref_sin.double()))
        q = attn.norm_q(attn.to_q(x)).unflatten(2, (heads, -1))  # (B, N, H, d)
        k = attn.norm_k(attn.to_k(x)).unflatten(2, (heads, -1))
        v = attn.to_v(x).unflatten(2, (heads, -1))
        qr, kr = (apply_rope(t, cos.double(), sin.double()).transpose(1, 2) for t in (q, k))
        out = F.scaled_dot_product_attention(qr, kr, v.transpose(1, 2)).transpose(1, 2)
        ours = attn.to_out[0](out.flatten(2))
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
