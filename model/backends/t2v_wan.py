"""Text-to-video backends: diffusers ``WanPipeline`` (Wan2.1-T2V-14B-Diffusers in production).

Specs:

- a local Diffusers folder (bare path or ``diffusers:/weights/Wan2.1-T2V-14B-Diffusers``):
  ``WanPipeline.from_pretrained`` in bfloat16 on CUDA (float32 on CPU), nothing downloaded;
- ``tiny-random``: the same pipeline class built from tiny components (a 2-layer
  ``WanTransformer3DModel``, a tiny ``AutoencoderKLWan``, a tiny ``UMT5EncoderModel`` and a
  T5 tokenizer made at run time from a word list): random weights, CPU, marked tiny-random.

The scheduler is ``UniPCMultistepScheduler`` (flow prediction) with ``flow_shift`` (5.0 for
720p, 3.0 for 480p, as the pipeline's docstring). ``generate`` returns uint8 frames and is
deterministic for a seed (a ``torch.Generator`` seeded per call).
"""

from __future__ import annotations

import numpy as np
import torch

from model.backends.protocols import CORE
from model.backends.registry import register
from model.backends.spec import BackendSpec

_WORDS = (
    "a the of and in on at with through over under red blue green old young small big "
    "fox cat dog car boat city forest lake sea sky road street night day sunset dawn rain "
    "snow light camera pans zooms walks runs flies slowly fast view aerial static shot"
).split()


def tiny_wan_components(seed: int = 0, in_channels: int = 16, transformers: int = 1) -> dict:
    """Tiny random Wan pipeline parts (diffusers' own test sizes), offline.

    ``in_channels`` 16 is text-to-video, 36 image-to-video (noise + mask + image latents);
    ``transformers`` 2 adds ``transformer_2`` (Wan2.2's low-noise expert). Modules are built
    in a fixed order after ``torch.manual_seed(seed)``, so the same arguments give the same
    weights.
    """
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import T5Tokenizer, UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(f"\u2581{w}", -float(n + 1)) for n, w in enumerate(_WORDS)]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    text_encoder = UMT5EncoderModel(
        UMT5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2,
                   num_heads=4, relative_attention_num_buckets=8)
    )  # fmt: skip
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])  # fmt: skip
    experts = [
        WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2,
                              attention_head_dim=12, in_channels=in_channels, out_channels=16,
                              text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2,
                              cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                              rope_max_seq_len=32)
        for _ in range(transformers)
    ]  # fmt: skip
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    for module in (text_encoder, vae, *experts):
        module.eval()  # built modules start in training mode: UMT5's dropout would be on
    parts = {"tokenizer": tokenizer, "text_encoder": text_encoder, "vae": vae,
             "scheduler": scheduler, "transformer": experts[0]}  # fmt: skip
    if transformers > 1:
        parts["transformer_2"] = experts[1]
    return parts


def tiny_wan_pipeline(seed: int = 0):
    """A ``WanPipeline`` of tiny random components (diffusers' own test sizes), offline."""
    from diffusers import WanPipeline

    return WanPipeline(**tiny_wan_components(seed))


@register("text_to_video", "diffusers")
class WanT2V:
    """``WanPipeline`` behind the TextToVideoBackend protocol."""

    environment = CORE
    family = "diffusers"
    tiny_random = False

    def __init__(self, pipe, model_id: str, steps: int, guidance_scale: float,
                 flow_shift: float, max_sequence_length: int, negative_prompt: str | None):  # fmt: skip
        from diffusers import UniPCMultistepScheduler

        self.pipe = pipe
        self.pipe.scheduler = UniPCMultistepScheduler.from_config(
            pipe.scheduler.config, flow_shift=flow_shift
        )
        self.pipe.set_progress_bar_config(disable=True)
        self.model_id = model_id
        self.steps, self.guidance_scale, self.flow_shift = steps, guidance_scale, flow_shift
        self.max_sequence_length = max_sequence_length
        self.negative_prompt = negative_prompt
        self.device = next(pipe.transformer.parameters()).device

    @classmethod
    def from_spec(
        cls, spec: BackendSpec, steps: int = 50, guidance_scale: float = 5.0,
        flow_shift: float = 5.0, max_sequence_length: int = 512,
        negative_prompt: str | None = None, device: str | None = None,
    ) -> WanT2V:  # fmt: skip
        from diffusers import WanPipeline

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        pipe = WanPipeline.from_pretrained(spec.path, torch_dtype=dtype, local_files_only=True)
        pipe.to(device)
        return cls(pipe, spec.path, steps, guidance_scale, flow_shift, max_sequence_length,
                   negative_prompt)  # fmt: skip

    def generate(
        self, prompt: str, *, seed: int, num_frames: int, height: int, width: int
    ) -> np.ndarray:
        if (num_frames - 1) % 4:
            raise ValueError(f"num_frames {num_frames} must be 4k+1 (Wan's VAE)")
        if height % 16 or width % 16:
            raise ValueError(f"height and width must be multiples of 16, got {height}x{width}")
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        with torch.inference_mode():
            out = self.pipe(
                prompt=prompt, negative_prompt=self.negative_prompt, height=height,
                width=width, num_frames=num_frames, num_inference_steps=self.steps,
                guidance_scale=self.guidance_scale, generator=gen, output_type="np",
                max_sequence_length=self.max_sequence_length,
            ).frames[0]  # fmt: skip
        return (np.clip(np.asarray(out, np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)


@register("text_to_video", "tiny-random")
class TinyWanT2V(WanT2V):
    family = "tiny-random"
    tiny_random = True

    @classmethod
    def from_spec(
        cls, spec: BackendSpec, steps: int = 2, guidance_scale: float = 5.0,
        flow_shift: float = 3.0, max_sequence_length: int = 16,
        negative_prompt: str | None = None, device: str | None = None, seed: int = 0,
    ) -> TinyWanT2V:  # fmt: skip
        pipe = tiny_wan_pipeline(seed)
        return cls(pipe, "tiny-random-wan2.1-t2v", steps, guidance_scale, flow_shift,
                   max_sequence_length, negative_prompt)  # fmt: skip
