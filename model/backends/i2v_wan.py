"""Image-to-video backends: diffusers ``WanImageToVideoPipeline`` (Wan2.2-I2V-A14B-Diffusers).

Specs:

- a local Diffusers folder (bare path or ``diffusers:/weights/Wan2.2-I2V-A14B-Diffusers``):
  ``WanImageToVideoPipeline.from_pretrained(path, local_files_only=True)`` in bfloat16 on
  CUDA (float32 on CPU), nothing downloaded. Wan2.2-I2V-A14B has two experts split at
  ``boundary_ratio`` (``transformer`` for t >= ratio * 1000 at ``guidance_scale``,
  ``transformer_2`` below it at ``guidance_scale_2``) and no image encoder: the image is
  VAE-encoded into the 36-channel input. A Wan2.1-I2V folder (one transformer, CLIP image
  encoder) loads too; it has no boundary and no second scale.
- ``tiny-random``: the same two-expert pipeline from tiny components (in_channels 36,
  ``transformer`` + ``transformer_2``, ``boundary_ratio``, no image encoder), random weights,
  CPU, marked tiny-random.

The scheduler is ``UniPCMultistepScheduler`` (flow prediction) with ``flow_shift`` (5.0 is
Alibaba's I2V-A14B setting). ``generate_from_image`` takes the conditioning image already at
the output size and returns uint8 frames, deterministic for a seed.
"""

from __future__ import annotations

import numpy as np
import torch

from model.backends.protocols import CORE
from model.backends.registry import register
from model.backends.spec import BackendSpec
from model.backends.t2v_wan import tiny_wan_components


@register("image_to_video", "diffusers")
class WanI2V:
    """``WanImageToVideoPipeline`` behind the ImageToVideoBackend protocol."""

    environment = CORE
    family = "diffusers"
    tiny_random = False

    def __init__(self, pipe, model_id: str, steps: int, guidance_scale: float,
                 guidance_scale_2: float | None, boundary_ratio: float | None,
                 flow_shift: float, max_sequence_length: int, negative_prompt: str | None):  # fmt: skip
        from diffusers import UniPCMultistepScheduler

        self.pipe = pipe
        self.pipe.scheduler = UniPCMultistepScheduler.from_config(
            pipe.scheduler.config, flow_shift=flow_shift
        )
        self.pipe.set_progress_bar_config(disable=True)
        two_experts = getattr(pipe, "transformer_2", None) is not None
        # one expert (Wan2.1-I2V), or no boundary: the second expert and its scale are unused
        # (the pipeline refuses a second scale without a boundary)
        self.boundary_ratio = boundary_ratio if two_experts else None
        self.guidance_scale_2 = guidance_scale_2 if self.boundary_ratio is not None else None
        self.pipe.register_to_config(boundary_ratio=self.boundary_ratio)
        self.model_id = model_id
        self.steps, self.guidance_scale, self.flow_shift = steps, guidance_scale, flow_shift
        self.max_sequence_length = max_sequence_length
        self.negative_prompt = negative_prompt

    @classmethod
    def from_spec(
        cls, spec: BackendSpec, steps: int = 40, guidance_scale: float = 3.5,
        guidance_scale_2: float | None = 3.5, boundary_ratio: float | None = 0.9,
        flow_shift: float = 5.0, max_sequence_length: int = 512,
        negative_prompt: str | None = None, device: str | None = None,
    ) -> WanI2V:  # fmt: skip
        from diffusers import WanImageToVideoPipeline

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        pipe = WanImageToVideoPipeline.from_pretrained(
            spec.path, dtype=dtype, local_files_only=True
        )
        pipe.to(device)
        return cls(pipe, spec.path, steps, guidance_scale, guidance_scale_2, boundary_ratio,
                   flow_shift, max_sequence_length, negative_prompt)  # fmt: skip

    def _encode(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """UMT5 prompt (and, with CFG, negative prompt) embeddings, as the pipeline makes them.

        Why not the pipeline's own: diffusers 0.42.1's I2V module calls ``ftfy`` without
        checking it is installed (its T2V module checks). ``WanPipeline``'s T5 helper is the
        same tokenise-encode-pad code with that check, run on this pipeline's parts.
        """
        from diffusers import WanPipeline

        def encode(text: str) -> torch.Tensor:
            return WanPipeline._get_t5_prompt_embeds(  # noqa: SLF001 (see the docstring)
                self.pipe, prompt=text, max_sequence_length=self.max_sequence_length
            )

        negative = encode(self.negative_prompt or "") if self.guidance_scale > 1.0 else None
        return encode(prompt), negative

    def generate_from_image(
        self, image: np.ndarray, prompt: str, *, seed: int, num_frames: int, height: int, width: int
    ) -> np.ndarray:
        from PIL import Image

        if (num_frames - 1) % 4:
            raise ValueError(f"num_frames {num_frames} must be 4k+1 (Wan's VAE)")
        if height % 16 or width % 16:
            raise ValueError(f"height and width must be multiples of 16, got {height}x{width}")
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.shape != (height, width, 3):
            raise ValueError(f"image must be uint8 ({height}, {width}, 3), got "
                             f"{image.dtype} {image.shape}")  # fmt: skip
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        with torch.inference_mode():
            embeds, negative = self._encode(prompt)
            out = self.pipe(
                image=Image.fromarray(image), prompt_embeds=embeds,
                negative_prompt_embeds=negative, height=height, width=width,
                num_frames=num_frames, num_inference_steps=self.steps,
                guidance_scale=self.guidance_scale, guidance_scale_2=self.guidance_scale_2,
                generator=gen, output_type="np", max_sequence_length=self.max_sequence_length,
            ).frames[0]  # fmt: skip
        return (np.clip(np.asarray(out, np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)


def tiny_wan_i2v_pipeline(seed: int = 0, boundary_ratio: float | None = 0.9):
    """A two-expert ``WanImageToVideoPipeline`` of tiny random parts (no image encoder)."""
    from diffusers import WanImageToVideoPipeline

    parts = tiny_wan_components(seed, in_channels=36, transformers=2)
    return WanImageToVideoPipeline(**parts, image_encoder=None, image_processor=None,
                                   boundary_ratio=boundary_ratio)  # fmt: skip


@register("image_to_video", "tiny-random")
class TinyWanI2V(WanI2V):
    family = "tiny-random"
    tiny_random = True

    @classmethod
    def from_spec(
        cls, spec: BackendSpec, steps: int = 4, guidance_scale: float = 3.5,
        guidance_scale_2: float | None = 3.5, boundary_ratio: float | None = 0.9,
        flow_shift: float = 5.0, max_sequence_length: int = 16,
        negative_prompt: str | None = None, device: str | None = None, seed: int = 0,
    ) -> TinyWanI2V:  # fmt: skip
        pipe = tiny_wan_i2v_pipeline(seed, boundary_ratio)
        return cls(pipe, "tiny-random-wan2.2-i2v-a14b", steps, guidance_scale,
                   guidance_scale_2, boundary_ratio, flow_shift, max_sequence_length,
                   negative_prompt)  # fmt: skip
