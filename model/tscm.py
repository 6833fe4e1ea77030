"""TSCM transformer: Wan2.2 DiT with Yume-1.5's joint temporal-spatial-channel history modelling.

``TSCMTransformer`` subclasses diffusers' ``WanTransformer3DModel`` and keeps every Wan
parameter name, so a local Wan2.2-TI2V-5B diffusers checkpoint loads unchanged::

    model = TSCMTransformer.from_pretrained(
        "<local>/Wan2.2-TI2V-5B-Diffusers", subfolder="transformer", torch_dtype=torch.bfloat16
    )

The checkpoint's config.json has only Wan fields, so the TSCM fields take the paper defaults
of ``model.configs.TSCM_DEFAULTS`` (override them as keyword arguments). The TSCM parameters
(``linear_patch_embedding.*`` and ``blocks.<i>.channel_fusion.*``) are missing from a Wan
checkpoint: that is expected, they are logged and initialised so that the model equals the
pretrained Wan on any input (zero ``up`` projection). Any other missing or unexpected key is
an error. ``from_pretrained`` is overridden with this local-only loader because diffusers'
generic one skips weight initialisation for keys a checkpoint lacks (and needs accelerate);
directories written by ``save_pretrained`` load back the same way with all keys present.

Per prediction block the token sequence is ``[history tokens ; prediction tokens]``:
- temporal-spatial compression: history frames (already sampled in time by the caller, see
  ``select_history``) are patchified at rates chosen by their distance from the prediction,
  with kernels interpolated from the (1,2,2) ``patch_embedding`` (``model.patchify``);
- per-token timesteps as in Wan2.2 TI2V (``expand_timesteps``): history tokens are clean
  (t = 0), prediction tokens carry ``timestep``. Every history token shares t = 0, so the
  modulation is computed once per segment and applied per token, which gives the same
  numbers as a (B, S, 6, D) per-token table without materialising it;
- channel compression: all passed history frames go through an (8,4,4) patchify to
  ``linear_channels`` (``z_linear``), which every block reads through the linear-attention
  fusion branch after cross-attention (``model.linear_attention``);
- the output (and so the loss) covers prediction tokens only.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.nn as nn
from diffusers.configuration_utils import register_to_config
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import no_init_weights
from diffusers.models.transformers.transformer_wan import (
    WanTransformer3DModel,
    WanTransformerBlock,
)

from model.configs import TSCM_DEFAULTS, TSCM_FIELDS, transformer_config
from model.linear_attention import LinearAttentionFusion
from model.patchify import grid_positions, history_patch_sizes, multirate_patchify, patchify

logger = logging.getLogger(__name__)

Rope = tuple[torch.Tensor, torch.Tensor]


def _is_tscm_key(name: str) -> bool:
    return name.startswith("linear_patch_embedding.") or ".channel_fusion." in name


# diffusers' from_pretrained keywords with nothing to do here: loading is always local, eager
# and from safetensors (the others, e.g. device_map or revision, are refused by name)
LOAD_NO_OPS = ("low_cpu_mem_usage", "local_files_only", "use_safetensors")


def _weight_files(root: Path, variant: str | None = None) -> list[Path]:
    """The safetensors file(s) of a diffusers model directory, sharded or not; ``variant``
    names them as diffusers does (``diffusion_pytorch_model.<variant>.safetensors``, index
    ``diffusion_pytorch_model.safetensors.index.<variant>.json``)."""
    tag = f".{variant}" if variant else ""
    index = root / f"diffusion_pytorch_model.safetensors.index{tag}.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [root / s for s in shards]
    single = root / f"diffusion_pytorch_model{tag}.safetensors"
    if single.is_file():
        return [single]
    present = sorted(p.name for p in root.glob("diffusion_pytorch_model*"))
    raise FileNotFoundError(f"no {single.name} or {index.name} in {root} (present: {present})")


def rope_cos_sin(
    positions: torch.Tensor,
    head_dim: int,
    theta: float = 10000.0,
    device: torch.device | None = None,
) -> Rope:
    """Wan-layout RoPE tables for arbitrary (t, h, w) positions: (N, 3) -> 2 x (1, N, 1, head_dim).

    Same split and frequencies as diffusers' ``WanRotaryPosEmbed`` (h and w get 2*(d//6)
    channels each, t the rest; float64 angles, float32 tables), so integer grid positions give
    bit-identical tables, and fractional positions (coarse patch centres) work too.
    """
    hw = 2 * (head_dim // 6)
    angles = []
    for axis, dim in enumerate((head_dim - 2 * hw, hw, hw)):
        inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64)[: dim // 2] / dim))
        angles.append(
            torch.outer(positions[:, axis].to(torch.float64), inv).repeat_interleave(2, 1)
        )
    ang = torch.cat(angles, dim=1)  # (N, head_dim)
    cos = ang.cos().float()[None, :, None].to(device)
    sin = ang.sin().float()[None, :, None].to(device)
    return cos, sin


@functools.lru_cache(maxsize=8)
def prediction_rope(
    grid: tuple[int, int, int], head_dim: int, device: torch.device, theta: float = 10000.0
) -> Rope:
    """rope_cos_sin of the prediction token grid (Fp, H/2, W/2), cached per (grid, head
    dim, device): it is the same on every forward and every Euler step, so it is built in
    float64 on the CPU and copied to the device once. Callers must not modify the tables.
    History tables depend on the selected frames and are built per call."""
    pos = grid_positions(torch.arange(grid[0]), grid[1:], (1.0, 1.0))  # (Np, 3)
    return rope_cos_sin(pos, head_dim, theta, device)


def select_history(
    num_history_frames: int,
    generator: torch.Generator | None = None,
    sample_every: int = 32,
    keep_recent: int = 6,
) -> torch.LongTensor:
    """Random temporal sampling of far history (paper: 1 frame in every 32).

    History is indexed in time order (0 = the video's first frame, Fh-1 = the frame just
    before the prediction block). Keeps the ``keep_recent`` nearest frames (the full and
    (1,4,4) bands of the default schedule), the first frame, and one uniformly random frame
    from every window of ``sample_every`` frames in between, windows counted back from the
    recent frames. Returns sorted indices; the matching ``history_frame_ids`` are
    ``num_history_frames - indices``.
    """
    if num_history_frames <= 0:
        return torch.zeros(0, dtype=torch.long)
    recent_start = max(num_history_frames - keep_recent, 0)
    keep = set(range(recent_start, num_history_frames)) | {0}
    end = recent_start  # far frames are 1 .. recent_start-1
    while end > 1:
        start = max(end - sample_every, 1)
        keep.add(start + int(torch.randint(end - start, (1,), generator=generator)))
        end = start
    return torch.tensor(sorted(keep), dtype=torch.long)


def _per_segment(fn, x: torch.Tensor, num_history: int, *params: torch.Tensor) -> torch.Tensor:
    """Apply ``fn(x, *params)`` with per-token timestep parameters.

    params are (B, 1, D) (one timestep for all tokens, exactly Wan's path) or (B, 2, D)
    [history (t=0), prediction]; tokens are ordered [history ; prediction].
    """
    if params[0].shape[1] == 1:
        return fn(x, *params)
    hist = fn(x[:, :num_history], *(p[:, :1] for p in params))
    pred = fn(x[:, num_history:], *(p[:, 1:] for p in params))
    return torch.cat([hist, pred], dim=1)


def _modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def _gate(x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    return x * gate


class TSCMBlock(WanTransformerBlock):
    """Wan block (same parameter names) + per-segment timestep modulation + channel fusion."""

    def __init__(
        self,
        dim: int,
        ffn_dim: int,
        num_heads: int,
        qk_norm: str,
        cross_attn_norm: bool,
        eps: float,
        added_kv_proj_dim: int | None,
        linear_channels: int,
        linear_heads: int,
    ):
        super().__init__(dim, ffn_dim, num_heads, qk_norm, cross_attn_norm, eps, added_kv_proj_dim)
        self.channel_fusion = (
            LinearAttentionFusion(dim, linear_channels, linear_heads, eps)
            if linear_channels
            else None
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        rotary_emb: Rope,
        num_history: int = 0,
        z_linear: torch.Tensor | None = None,
        linear_rope: tuple[Rope, Rope] | None = None,
    ) -> torch.Tensor:
        """hidden_states (B, Nh + Np, D) = [history ; prediction]; temb (B, 6, D) or (B, 2, 6, D)."""
        if temb.ndim == 4:  # (B, 2, 6, D): [history, prediction] segments
            mods = (self.scale_shift_table.unsqueeze(0) + temb.float()).chunk(6, dim=2)
            mods = [m.squeeze(2) for m in mods]  # 6 x (B, 2, D)
        else:  # (B, 6, D)
            mods = (self.scale_shift_table + temb.float()).chunk(6, dim=1)  # 6 x (B, 1, D)
        shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = mods
        n = num_history

        # 1. Self-attention over history and prediction tokens
        norm = _per_segment(_modulate, self.norm1(hidden_states.float()), n, scale_msa, shift_msa)
        attn_output = self.attn1(norm.type_as(hidden_states), None, None, rotary_emb)
        hidden_states = (
            hidden_states.float() + _per_segment(_gate, attn_output, n, gate_msa)
        ).type_as(hidden_states)

        # 2. Cross-attention to the event + action text
        norm = self.norm2(hidden_states.float()).type_as(hidden_states)
        hidden_states = hidden_states + self.attn2(norm, encoder_hidden_states, None, None)

        # 2b. TSCM channel compression: linear attention of prediction tokens with z_linear
        if self.channel_fusion is not None:
            pred = hidden_states[:, n:]  # (B, Np, D)
            update = self.channel_fusion(pred, z_linear, *linear_rope)
            hidden_states = torch.cat([hidden_states[:, :n], pred + update], dim=1)

        # 3. Feed-forward
        norm = _per_segment(
            _modulate, self.norm3(hidden_states.float()), n, c_scale_msa, c_shift_msa
        )
        ff_output = self.ffn(norm.type_as(hidden_states))
        hidden_states = (
            hidden_states.float() + _per_segment(_gate, ff_output.float(), n, c_gate_msa)
        ).type_as(hidden_states)
        return hidden_states


class TSCMTransformer(WanTransformer3DModel):
    """Wan2.2 DiT + TSCM. See the module docstring for the load path and the token layout."""

    _no_split_modules = ["TSCMBlock"]
    _repeated_blocks = ["TSCMBlock"]

    @register_to_config
    def __init__(
        self,
        patch_size: tuple[int, ...] = (1, 2, 2),
        num_attention_heads: int = 24,
        attention_head_dim: int = 128,
        in_channels: int = 48,
        out_channels: int = 48,
        text_dim: int = 4096,
        freq_dim: int = 256,
        ffn_dim: int = 14336,
        num_layers: int = 30,
        cross_attn_norm: bool = True,
        qk_norm: str | None = "rms_norm_across_heads",
        eps: float = 1e-6,
        image_dim: int | None = None,
        added_kv_proj_dim: int | None = None,
        rope_max_seq_len: int = 1024,
        pos_embed_seq_len: int | None = None,
        history_patch_bounds: tuple[int, ...] = TSCM_DEFAULTS["history_patch_bounds"],
        history_patch_sizes: tuple[tuple[int, int, int], ...] = TSCM_DEFAULTS[
            "history_patch_sizes"
        ],
        first_frame_patch_size: tuple[int, int, int] | None = TSCM_DEFAULTS[
            "first_frame_patch_size"
        ],
        history_patch_interp: str = TSCM_DEFAULTS["history_patch_interp"],
        linear_patch_size: tuple[int, int, int] = TSCM_DEFAULTS["linear_patch_size"],
        linear_channels: int = TSCM_DEFAULTS["linear_channels"],
        linear_heads: int = TSCM_DEFAULTS["linear_heads"],
    ) -> None:
        # Build Wan with no blocks (so a 5B model is not allocated twice), then add TSCM blocks
        # under the same `blocks.<i>` names and restore num_layers in the config.
        super().__init__(
            patch_size=patch_size,
            num_attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim,
            in_channels=in_channels,
            out_channels=out_channels,
            text_dim=text_dim,
            freq_dim=freq_dim,
            ffn_dim=ffn_dim,
            num_layers=0,
            cross_attn_norm=cross_attn_norm,
            qk_norm=qk_norm,
            eps=eps,
            image_dim=image_dim,
            added_kv_proj_dim=added_kv_proj_dim,
            rope_max_seq_len=rope_max_seq_len,
            pos_embed_seq_len=pos_embed_seq_len,
        )
        self.register_to_config(num_layers=num_layers)
        if tuple(patch_size)[0] != 1:
            raise ValueError("TSCM assumes Wan's temporal patch size 1")
        inner_dim = num_attention_heads * attention_head_dim
        self.blocks = nn.ModuleList(
            [
                TSCMBlock(
                    inner_dim,
                    ffn_dim,
                    num_attention_heads,
                    qk_norm,
                    cross_attn_norm,
                    eps,
                    added_kv_proj_dim,
                    linear_channels,
                    linear_heads,
                )
                for _ in range(num_layers)
            ]
        )
        self.linear_patch_embedding = (
            nn.Conv3d(in_channels, linear_channels, linear_patch_size, stride=linear_patch_size)
            if linear_channels
            else None
        )

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        subfolder: str | None = None,
        torch_dtype: torch.dtype | None = None,
        variant: str | None = None,
        **tscm_overrides: Any,
    ) -> TSCMTransformer:
        """Load a local diffusers-format Wan2.2 or TSCM transformer directory (never downloads).

        Of diffusers' keywords it honours ``subfolder``, ``torch_dtype`` and ``variant`` and
        accepts ``LOAD_NO_OPS``; any other keyword that is not a TSCM field is a TypeError
        naming every such keyword (silently ignoring ``device_map`` or ``revision`` would load
        something other than what was asked)."""
        for option in LOAD_NO_OPS:
            tscm_overrides.pop(option, None)
        unsupported = sorted(set(tscm_overrides) - set(TSCM_FIELDS))
        if unsupported:
            raise TypeError(
                f"TSCMTransformer.from_pretrained (a local-only loader) does not support "
                f"{', '.join(unsupported)}; it takes subfolder, torch_dtype, variant, "
                f"{', '.join(LOAD_NO_OPS)} (no effect here) and the TSCM fields "
                f"{', '.join(TSCM_FIELDS)}"
            )
        root = Path(pretrained_model_name_or_path) / (subfolder or "")
        if not (root / "config.json").is_file():
            raise FileNotFoundError(f"no diffusers transformer config at {root} (local paths only)")
        config = json.loads((root / "config.json").read_text())
        config = {k: v for k, v in config.items() if not k.startswith("_")} | tscm_overrides
        with no_init_weights():  # every parameter is loaded or re-initialised below
            model = cls.from_config(config)

        expected = set(model.state_dict())
        loaded: set[str] = set()
        for file in _weight_files(root, variant):
            state = safetensors.torch.load_file(file)
            unexpected = sorted(k for k in set(state) - expected if "norm_added_q" not in k)
            if unexpected:
                raise ValueError(f"{file}: keys this model does not have: {unexpected[:8]}")
            model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
            loaded |= set(state)
        missing = expected - loaded
        tscm_keys = {k for k in expected if _is_tscm_key(k)}
        if missing - tscm_keys:
            raise ValueError(
                f"checkpoint at {root} lacks Wan keys: {sorted(missing - tscm_keys)[:8]}"
            )
        if missing and missing != tscm_keys:
            raise ValueError(f"checkpoint at {root} has only part of the TSCM parameters")
        if missing:
            logger.info(
                "%d TSCM parameters not in %s (a plain Wan checkpoint, expected): "
                "initialised so the model equals Wan",
                len(missing),
                root,
            )
            model.reset_tscm_parameters()
        if torch_dtype is not None:
            model.cast_parameters(torch_dtype)
        return model.eval()

    def cast_parameters(self, dtype: torch.dtype) -> TSCMTransformer:
        """Cast parameters to ``dtype`` except Wan's float32 modules (as diffusers' loader does)."""
        keep_fp32 = set(self._keep_in_fp32_modules)
        for name, param in self.named_parameters():
            fp32 = bool(set(name.split(".")) & keep_fp32)
            param.data = param.data.to(torch.float32 if fp32 else dtype)
        return self

    def reset_tscm_parameters(self) -> None:
        """Re-initialise the TSCM-only parameters; the fusion branches start as exact no-ops."""
        if self.linear_patch_embedding is not None:
            self.linear_patch_embedding.reset_parameters()
        for block in self.blocks:
            if block.channel_fusion is not None:
                block.channel_fusion.reset_parameters()

    @classmethod
    def from_config_name(cls, name: str) -> TSCMTransformer:
        """Random-init model of a named config (``tiny`` in tests and the demo: tiny-random)."""
        return cls(**transformer_config(name))

    def _temporal_spatial_tokens(
        self, history: torch.Tensor, frame_ids: torch.Tensor, oldest_is_first_frame: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """history (B, C, Fh, H, W) -> tokens (B, Nh, D) at the distance schedule, positions (Nh, 3)."""
        cfg = self.config
        patches = history_patch_sizes(
            frame_ids.tolist(),
            cfg.history_patch_bounds,
            cfg.history_patch_sizes,
            cfg.first_frame_patch_size if oldest_is_first_frame else None,
        )
        return multirate_patchify(
            history,
            frame_ids,
            self.patch_embedding.weight,
            self.patch_embedding.bias,
            patches,
            cfg.history_patch_interp,
        )

    def _channel_tokens(
        self, history: torch.Tensor | None, frame_ids: torch.Tensor | None, batch: int, device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """z_linear (B, Nz, linear_channels) from an (8,4,4) patchify of all history, positions (Nz, 3).

        Frames are ordered oldest first and grouped by 8 consecutive passed frames; a partial
        group is completed at the oldest end by repeating the oldest frame, and each group's
        temporal position is the mean position of its real frames.
        """
        width = self.config.linear_channels
        if history is None:
            empty = torch.zeros(
                batch, 0, width, device=device
            )  # T2V: fusion over prediction tokens
            return empty, torch.zeros(0, 3, dtype=torch.float64)
        lp = tuple(self.config.linear_patch_size)
        frame_ids = frame_ids.cpu()
        x = history  # (B, C, Fh, H, W), oldest first (ids descending)
        if not bool((frame_ids[:-1] > frame_ids[1:]).all()):
            order = torch.argsort(frame_ids, descending=True)
            x, frame_ids = history[:, :, order.to(history.device)], frame_ids[order]
        t = -frame_ids.to(torch.float64)  # (Fh,)
        pad = (-x.shape[2]) % lp[0]
        if pad:
            x = torch.cat([x[:, :, :1].expand(-1, -1, pad, -1, -1), x], dim=2)
        z, (_, gh, gw) = patchify(
            x, self.linear_patch_embedding.weight, self.linear_patch_embedding.bias, lp
        )  # (B, Nz, width)
        t = torch.cat([torch.full((pad,), float("nan"), dtype=torch.float64), t]).view(-1, lp[0])
        t_centres = t.nanmean(dim=1)  # (Fh_padded / 8,)
        _, ph, pw = self.config.patch_size
        return z, grid_positions(t_centres, (gh, gw), (lp[1] / ph, lp[2] / pw))

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        history: torch.Tensor | None = None,
        history_frame_ids: torch.Tensor | None = None,
        return_dict: bool = False,
        history_keep: torch.Tensor | None = None,
        history_includes_first_frame: bool = True,
    ) -> tuple[torch.Tensor] | Transformer2DModelOutput:
        """Velocity for the prediction block.

        hidden_states (B, C, Fp, H, W) noisy prediction latents; timestep (B,) in [0, 1000];
        encoder_hidden_states (B, L, text_dim) event + action embeddings; history
        (B, C, Fh, H, W) clean history latents or None; history_frame_ids (Fh,) distance of
        each history frame from the prediction block (1 = just before, largest = oldest).
        history_keep: optional indices into the Fh frames for the attention (temporal-spatial)
        path, e.g. ``select_history`` on the full history; the channel path always sees all
        passed frames. history_includes_first_frame: the oldest passed frame (index 0) is the
        video's first frame, which gets ``first_frame_patch_size``; False when the history
        starts later in the video. Returns (velocity (B, C, Fp, H, W),) or an output object.
        """
        batch, _, num_frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.config.patch_size
        device = hidden_states.device

        # Prediction tokens at (1,2,2): (B, C, Fp, H, W) -> (B, Np, D)
        x = self.patch_embedding(hidden_states)
        grid = tuple(x.shape[2:])  # (Fp, H/2, W/2)
        x = x.flatten(2).transpose(1, 2).contiguous()

        num_history = 0
        ts_seq_len = None
        head_dim = self.config.attention_head_dim
        rotary_emb = prediction_rope(grid, head_dim, device)  # 2 x (1, Np, 1, d)
        if history is not None:
            history_frame_ids = self._check_history(history, history_frame_ids, hidden_states)
            attn_history, attn_ids = history, history_frame_ids
            first = history_includes_first_frame
            if history_keep is not None:
                attn_history = history[:, :, history_keep.to(history.device)]
                attn_ids = history_frame_ids[history_keep.cpu()]
                first = first and int(attn_ids.max()) == int(history_frame_ids.max())
            hist_tokens, pos_hist = self._temporal_spatial_tokens(
                attn_history, attn_ids, first
            )  # (B, Nh, D), (Nh, 3)
            num_history = hist_tokens.shape[1]
            x = torch.cat([hist_tokens.to(x.dtype), x], dim=1)  # (B, Nh + Np, D)
            hist_rope = rope_cos_sin(pos_hist, head_dim, device=device)  # 2 x (1, Nh, 1, d)
            rotary_emb = tuple(
                torch.cat(ab, dim=1) for ab in zip(hist_rope, rotary_emb, strict=True)
            )
            # per-token timesteps by segment: history clean (0), prediction `timestep`
            timestep = torch.stack([torch.zeros_like(timestep), timestep], dim=1).flatten()
            ts_seq_len = 2

        linear_rope = z_linear = None
        if self.linear_patch_embedding is not None:
            z_linear, pos_z = self._channel_tokens(history, history_frame_ids, batch, device)
            linear_dim = self.config.linear_channels // self.config.linear_heads
            linear_rope = (
                prediction_rope(grid, linear_dim, device),
                rope_cos_sin(pos_z, linear_dim, device=device),
            )

        temb, timestep_proj, encoder_hidden_states, _ = self.condition_embedder(
            timestep, encoder_hidden_states, None, timestep_seq_len=ts_seq_len
        )
        if ts_seq_len is not None:
            timestep_proj = timestep_proj.unflatten(2, (6, -1))  # (B, 2, 6, D)
            temb = temb[:, 1]  # (B, D): the output layer sees prediction tokens only
        else:
            timestep_proj = timestep_proj.unflatten(1, (6, -1))  # (B, 6, D)

        block_args = (
            encoder_hidden_states,
            timestep_proj,
            rotary_emb,
            num_history,
            z_linear,
            linear_rope,
        )
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, x, *block_args)
            else:
                x = block(x, *block_args)

        # Output on prediction tokens only: (B, Np, D) -> (B, C, Fp, H, W)
        x = x[:, num_history:]
        shift, scale = (self.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
        x = (self.norm_out(x.float()) * (1 + scale) + shift).type_as(x)
        x = self.proj_out(x)
        x = x.reshape(batch, *grid, p_t, p_h, p_w, -1)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
        output = x.flatten(6, 7).flatten(4, 5).flatten(2, 3)
        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)

    @staticmethod
    def _check_history(
        history: torch.Tensor, frame_ids: torch.Tensor | None, hidden_states: torch.Tensor
    ) -> torch.Tensor:
        if frame_ids is None:
            raise ValueError(
                "history needs history_frame_ids (distance of each frame, 1 = nearest)"
            )
        if history.ndim != 5 or history.shape[:2] != hidden_states.shape[:2]:
            raise ValueError(
                f"history {tuple(history.shape)} must be (B, C, Fh, H, W) like the prediction"
            )
        if history.shape[3:] != hidden_states.shape[3:]:
            raise ValueError("history and prediction latents must have the same spatial size")
        frame_ids = torch.as_tensor(frame_ids, dtype=torch.long)
        if frame_ids.shape != (history.shape[2],):
            raise ValueError(f"history_frame_ids must have shape ({history.shape[2]},)")
        return frame_ids
