"""Channel-compression fusion branch: ReLU linear attention over prediction tokens + z_linear.

Formula (per head, RoFormer-style RoPE for linear attention): with feature map phi = ReLU,
q_i = phi(W_q x_i), k_j = phi(W_k c_j), v_j = W_v c_j and R the RoPE rotation of a position,

    out_i = sum_j <R_i q_i, R_j k_j> v_j / (sum_j <q_i, k_j> + eps)

The numerator carries the relative positions; the denominator uses the unrotated features so
it stays positive. Computed as R_i q_i . (sum_j R_j k_j v_j^T), so cost is linear in tokens:
O((Np + Nz) d^2) instead of O(Np (Np + Nz) d).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of x (B, N, H, d) by angles given as cos/sin (1, N, 1, d).

    Same convention as diffusers' Wan attention (pairs (0,1), (2,3), ...; cos/sin repeated).
    """
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    out = torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).flatten(-2)
    return out.type_as(x)


def relu_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rope_q: tuple[torch.Tensor, torch.Tensor] | None = None,
    rope_k: tuple[torch.Tensor, torch.Tensor] | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Linear attention of non-negative features. q (B, Nq, H, d), k/v (B, Nk, H, d) -> (B, Nq, H, d).

    Runs in float32 whatever the input dtype (the sums over tokens are long).
    """
    dtype = v.dtype
    q, k, v = q.float(), k.float(), v.float()
    qr = apply_rope(q, *rope_q) if rope_q is not None else q
    kr = apply_rope(k, *rope_k) if rope_k is not None else k
    kv = torch.einsum("bnhd,bnhe->bhde", kr, v)  # (B, H, d, d)
    num = torch.einsum("bnhd,bhde->bnhe", qr, kv)  # (B, Nq, H, d)
    den = torch.einsum("bnhd,bhd->bnh", q, k.sum(dim=1)) + eps  # (B, Nq, H)
    return (num / den.unsqueeze(-1)).to(dtype)


class LinearAttentionFusion(nn.Module):
    """FC down -> [prediction tokens ; z_linear] -> ReLU linear attention -> norm -> out -> FC up.

    Queries come from the prediction tokens only (the outputs at z_linear positions would be
    discarded), keys/values from prediction tokens and z_linear. ``up`` is zero-initialised,
    so a freshly built branch adds exactly zero and the model equals the pretrained Wan.
    """

    def __init__(self, dim: int, width: int, heads: int, eps: float = 1e-6):
        super().__init__()
        if width % heads:
            raise ValueError(f"fusion width {width} not divisible by {heads} heads")
        self.heads = heads
        self.down = nn.Linear(dim, width)
        self.to_q = nn.Linear(width, width)
        self.to_k = nn.Linear(width, width)
        self.to_v = nn.Linear(width, width)
        self.norm = nn.RMSNorm(width, eps=eps)
        self.to_out = nn.Linear(width, width)
        self.up = nn.Linear(width, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Default init of every layer, then ``up`` = 0 so the branch starts as a no-op."""
        for layer in (self.down, self.to_q, self.to_k, self.to_v, self.norm, self.to_out, self.up):
            layer.reset_parameters()
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(
        self,
        x: torch.Tensor,
        z_linear: torch.Tensor,
        rope_x: tuple[torch.Tensor, torch.Tensor],
        rope_z: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """x (B, Np, dim) prediction tokens, z_linear (B, Nz, width) -> update (B, Np, dim)."""
        h = self.down(x)  # (B, Np, w)
        ctx = torch.cat([h, z_linear.to(h.dtype)], dim=1)  # (B, Np + Nz, w)
        q = F.relu(self.to_q(h)).unflatten(-1, (self.heads, -1))  # (B, Np, H, w/H)
        k = F.relu(self.to_k(ctx)).unflatten(-1, (self.heads, -1))  # (B, Np + Nz, H, w/H)
        v = self.to_v(ctx).unflatten(-1, (self.heads, -1))
        rope_ctx = tuple(torch.cat([a, b], dim=1) for a, b in zip(rope_x, rope_z, strict=True))
        out = relu_linear_attention(q, k, v, rope_x, rope_ctx).flatten(2)  # (B, Np, w)
        out = self.norm(out.to(self.norm.weight.dtype))  # fp32 statistics under autocast
        return self.up(self.to_out(out))
