"""Transformer configs: diffusers ``WanTransformer3DModel`` kwargs plus the TSCM fields.

``transformer_config(name)`` returns one flat dict that ``TSCMTransformer(**cfg)`` accepts.
The Wan part (``WAN_FIELDS``) alone builds a plain ``WanTransformer3DModel`` of the same
architecture; the TSCM part (``TSCM_FIELDS``) only adds the compression schedule and the
channel-compression fusion branch.

``wan22-5b`` follows Wan2.2-TI2V-5B (dim 3072 = 24 heads x 128, ffn 14336, 30 layers, patch
(1,2,2), 48 latent channels from the Wan2.2 VAE with stride (4,16,16), UMT5-XXL text dim 4096,
freq dim 256, qk RMSNorm across heads, cross-attention norm, eps 1e-6).
``tiny`` is the same architecture at toy width for CPU tests and the demo (tiny-random).
"""

from __future__ import annotations

import copy
from typing import Any

WAN_FIELDS = (
    "patch_size",
    "num_attention_heads",
    "attention_head_dim",
    "in_channels",
    "out_channels",
    "text_dim",
    "freq_dim",
    "ffn_dim",
    "num_layers",
    "cross_attn_norm",
    "qk_norm",
    "eps",
    "image_dim",
    "added_kv_proj_dim",
    "rope_max_seq_len",
    "pos_embed_seq_len",
)

TSCM_FIELDS = (
    "history_patch_bounds",
    "history_patch_sizes",
    "first_frame_patch_size",
    "history_patch_interp",
    "linear_patch_size",
    "linear_channels",
    "linear_heads",
)

# Paper defaults (Yume-1.5): distance 1..2 at (1,2,2), 3..6 at (1,4,4), farther at (1,8,8),
# the first frame at (1,2,2); channel compression (8,4,4) to 96 channels.
TSCM_DEFAULTS: dict[str, Any] = {
    "history_patch_bounds": (2, 6),
    "history_patch_sizes": ((1, 2, 2), (1, 4, 4), (1, 8, 8)),
    "first_frame_patch_size": (1, 2, 2),
    "history_patch_interp": "nearest",
    "linear_patch_size": (8, 4, 4),
    "linear_channels": 96,
    "linear_heads": 2,
}

_WAN22_5B: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 24,
    "attention_head_dim": 128,
    "in_channels": 48,
    "out_channels": 48,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 14336,
    "num_layers": 30,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": None,
    "added_kv_proj_dim": None,
    "rope_max_seq_len": 1024,
    "pos_embed_seq_len": None,
    **TSCM_DEFAULTS,
}

_CONFIGS: dict[str, dict[str, Any]] = {
    "wan22-5b": _WAN22_5B,
    # The same architecture, shrunk: only widths, depth and the text width change.
    "tiny": {
        **_WAN22_5B,
        "num_attention_heads": 2,
        "attention_head_dim": 32,  # dim 64
        "text_dim": 32,
        "freq_dim": 32,
        "ffn_dim": 128,
        "num_layers": 2,
        "linear_channels": 32,
        "linear_heads": 1,
    },
}


def config_names() -> list[str]:
    return sorted(_CONFIGS)


def transformer_config(name: str) -> dict[str, Any]:
    """A fresh copy of the named config (Wan kwargs + TSCM fields)."""
    if name not in _CONFIGS:
        raise KeyError(f"unknown transformer config {name!r}; known: {config_names()}")
    return copy.deepcopy(_CONFIGS[name])


def wan_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """Only the ``WanTransformer3DModel`` kwargs of a config (builds plain Wan)."""
    return {k: v for k, v in config.items() if k in WAN_FIELDS}
