"""Video VAE: diffusers ``AutoencoderKLWan`` (Wan2.2 family) with Wan's latent normalisation.

Production loads the Wan2.2 VAE (z_dim 48, stride (4, 16, 16)) from a local path.
``tiny-random`` builds the same class and architecture family (residual, patch size 2,
z_dim 48, stride (4, 16, 16)) with a small width and random weights: it runs the real code
path with no download, and everything it encodes is labelled tiny-random.

Registered as the ``vae`` backend families ``tiny-random`` and ``diffusers`` (a local Wan
folder): ``model.backends.load("vae", spec)`` equals ``VideoVAE.load(spec)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from diffusers import AutoencoderKLWan

from model.backends import CORE, TINY_RANDOM, BackendSpec, register, resolve

Z_DIM = 48
STRIDE = (4, 16, 16)  # (time, height, width)

# Same family as Wan2.2's VAE config, ~0.3M parameters.
TINY_VAE_CONFIG = dict(
    base_dim=8,
    decoder_base_dim=8,
    z_dim=Z_DIM,
    dim_mult=[1, 2, 2, 2],
    num_res_blocks=1,
    temperal_downsample=[False, True, True],
    is_residual=True,
    patch_size=2,
    in_channels=12,
    out_channels=12,
    scale_factor_temporal=4,
    scale_factor_spatial=16,
    latents_mean=[0.0] * Z_DIM,
    latents_std=[1.0] * Z_DIM,
)


def latent_shape(frames: int, height: int, width: int) -> tuple[int, int, int]:
    """Latent (F, h, w) of a (frames, height, width) video; frames must be 1 + 4k."""
    ft, fh, fw = STRIDE
    if (frames - 1) % ft or height % fh or width % fw:
        raise ValueError(f"video {frames}x{height}x{width} must be (1+{ft}k)x{fh}m x{fw}n")
    return 1 + (frames - 1) // ft, height // fh, width // fw


@register("vae", "diffusers")
@register("vae", TINY_RANDOM)
@dataclass
class VideoVAE:
    """Encode uint8 videos to normalised latents and decode back."""

    environment: ClassVar[str] = CORE

    model: AutoencoderKLWan
    model_id: str
    tiny_random: bool

    @classmethod
    def from_pretrained(cls, path: str) -> VideoVAE:
        """The production Wan2.2 VAE from a local folder: a Wan diffusers root (``vae/``
        inside) or the VAE folder itself. Never touches a hub."""
        root = Path(path).expanduser()
        vae_dir = root / "vae" if (root / "vae").is_dir() else root
        model = AutoencoderKLWan.from_pretrained(
            vae_dir, torch_dtype=torch.float32, local_files_only=True
        )
        return cls(model.eval().requires_grad_(False), model_id=str(path), tiny_random=False)

    @classmethod
    def tiny(cls, seed: int = 0) -> VideoVAE:
        """The tiny-random VAE, deterministic for a seed."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = AutoencoderKLWan(**TINY_VAE_CONFIG)
        return cls(model.eval().requires_grad_(False), f"tiny-random-vae-s{seed}", tiny_random=True)

    @classmethod
    def from_spec(cls, spec: BackendSpec, seed: int = 0) -> VideoVAE:
        """A resolved ``vae`` spec: family ``tiny-random`` or ``diffusers``."""
        if spec.tiny_random:
            return cls.tiny(seed)
        if spec.family != "diffusers":
            raise ValueError(f"VideoVAE loads tiny-random or a diffusers folder, not {spec}")
        return cls.from_pretrained(spec.path)

    @classmethod
    def load(cls, backend: str | BackendSpec, seed: int = 0) -> VideoVAE:
        """``backend`` is ``tiny-random`` or a local path (``diffusers:<path>`` too) to a
        Wan2.2 diffusers folder."""
        return cls.from_spec(resolve("vae", backend), seed)

    @property
    def family(self) -> str:
        return TINY_RANDOM if self.tiny_random else "diffusers"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> VideoVAE:
        self.model.to(device)
        return self

    def _stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.model.config
        mean = torch.tensor(cfg.latents_mean, device=self.device).view(1, -1, 1, 1, 1)
        std = torch.tensor(cfg.latents_std, device=self.device).view(1, -1, 1, 1, 1)
        return mean, std

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """uint8 (B, T, H, W, 3) -> normalised latents (B, 48, 1+(T-1)/4, H/16, W/16).

        Uses the posterior mean, so pre-encoded latents are deterministic.
        """
        if video.dtype != torch.uint8 or video.ndim != 5 or video.shape[-1] != 3:
            raise ValueError(f"expected uint8 (B,T,H,W,3), got {video.dtype} {tuple(video.shape)}")
        latent_shape(*video.shape[1:4])
        # (B, T, H, W, 3) uint8 -> (B, 3, T, H, W) in [-1, 1]
        x = video.to(self.device).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
        z = self.model.encode(x).latent_dist.mode()
        mean, std = self._stats()
        return (z - mean) / std

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, 48, F, h, w) -> uint8 video (B, 1+4(F-1), 16h, 16w, 3)."""
        mean, std = self._stats()
        z = latents.to(self.device, torch.float32) * std + mean
        x = self.model.decode(z).sample  # (B, 3, T, H, W) in ~[-1, 1]
        x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return x.permute(0, 2, 3, 4, 1).contiguous()
