"""In-process InternVL captioners: ``transformers:/weights/InternVL3-8B-hf`` and ``tiny-random``.

Both run transformers' ``InternVLForConditionalGeneration``. The stock ``InternVLProcessor``
cannot be built without torchvision (REFERENCE.md section 2), so the prompt is expanded
here by InternVL's rule: each ``<image>`` placeholder becomes ``<img>`` +
``<IMG_CONTEXT>`` x ``image_seq_length`` + ``</img>`` (one tile per frame), and each frame
is resized to one ``image_size`` tile and normalised with the checkpoint's mean and std.

``tiny-random`` builds the same architecture from a tiny config with random weights and a
byte-level tokenizer made at run time (no download): 4 image tokens per frame, ~60k
parameters, for CPU tests. Its output is random bytes, marked tiny-random everywhere; the
special tokens are suppressed in generation so it never stops early.
Generation runs on one thread (``submit`` queues), so CPU preparation overlaps it.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from model.backends.captioner_openai import IMAGE, CaptionError, CaptionResult
from model.backends.protocols import CORE
from model.backends.registry import register
from model.backends.spec import BackendSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPECIAL = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}


def tiny_tokenizer():
    """A byte-level Qwen2 tokenizer built at run time: 256 byte symbols + specials."""
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {"<|endoftext|>": 0, **{c: i + 1 for i, c in enumerate(chars)}}
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], extra_special_tokens=SPECIAL)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    return tok


def tiny_model(vocab_size: int, image_token_id: int, seed: int):
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    vision = dict(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        image_size=56, patch_size=14,
    )  # fmt: skip
    text = dict(
        model_type="qwen2", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=64, vocab_size=vocab_size,
        max_position_embeddings=4096, tie_word_embeddings=False,
    )  # fmt: skip
    config = InternVLConfig(
        vision_config=vision, text_config=text, image_token_id=image_token_id,
        image_seq_length=4, downsample_ratio=0.5, tie_word_embeddings=False,
    )  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return InternVLForConditionalGeneration(config).eval()


class InternVLCaptioner:
    """InternVL generation in this process (a real checkpoint or the tiny-random one)."""

    environment = CORE

    def __init__(
        self, model, tokenizer, model_id: str, *, family: str, tiny_random: bool,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, temperature: float = 0.1, top_p: float = 0.9,
        max_tokens: int = 256, device: str | None = None,
    ):  # fmt: skip
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device)
        self.tok = tokenizer
        self.model_id, self.family, self.tiny_random = model_id, family, tiny_random
        cfg = model.config
        size = cfg.vision_config.image_size
        self.image_size = int(size[0] if isinstance(size, list | tuple) else size)
        self.tokens_per_image = int(cfg.image_seq_length)
        self.mean = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
        self.std = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
        self.sampling = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens}
        # tiny-random never stops early: its special tokens are suppressed
        self.suppress = list(tokenizer.all_special_ids) if tiny_random else None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        self._lock = threading.Lock()

    @classmethod
    def from_spec(cls, spec: BackendSpec, seed: int = 0, **kwargs) -> InternVLCaptioner:
        kwargs.pop("max_in_flight", None)  # server knobs: not used in process
        kwargs.pop("timeout", None)
        if spec.tiny_random:
            tok = tiny_tokenizer()
            model = tiny_model(len(tok), tok.context_image_token_id, seed)
            kwargs = {"temperature": 1.0, "top_p": 1.0, "max_tokens": 48} | kwargs
            return cls(model, tok, f"tiny-random-internvl-s{seed}", family="tiny-random",
                       tiny_random=True, **kwargs)  # fmt: skip
        from transformers import AutoTokenizer, InternVLForConditionalGeneration

        path = Path(spec.path)
        tok = AutoTokenizer.from_pretrained(path)
        model = InternVLForConditionalGeneration.from_pretrained(path, dtype="auto").eval()
        pre = path / "preprocessor_config.json"
        norm = {}
        if pre.exists():
            cfg = json.loads(pre.read_text())
            if "image_mean" in cfg:
                norm = {"mean": cfg["image_mean"], "std": cfg["image_std"]}
        return cls(model, tok, str(path), family="transformers", tiny_random=False,
                   **norm, **kwargs)  # fmt: skip

    @property
    def settings(self) -> dict:
        return dict(self.sampling)

    def prepare(self, frames) -> torch.Tensor:
        """Frames -> one normalised ``image_size`` tile each, float (T, 3, S, S) (CPU work)."""
        import cv2

        s = self.image_size
        tiles = np.stack([cv2.resize(np.asarray(f), (s, s), interpolation=cv2.INTER_AREA)
                          for f in frames])  # fmt: skip
        x = tiles.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        return torch.from_numpy((x - self.mean) / self.std)

    def chat_text(self, prompt: str) -> str:
        """The InternVL3 (Qwen2 chat) text with every image placeholder expanded."""
        one = "<img>" + "<IMG_CONTEXT>" * self.tokens_per_image + "</img>"
        body = prompt.replace(IMAGE, one)
        return f"<|im_start|>user\n{body}<|im_end|>\n<|im_start|>assistant\n"

    def submit(self, payload: torch.Tensor, prompt: str, seed: int) -> Future:
        return self.pool.submit(self._generate, payload, prompt, seed)

    def caption(self, frames, prompt: str) -> str:
        return self.submit(self.prepare(frames), prompt, 0).result().text

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _generate(self, pixels: torch.Tensor, prompt: str, seed: int) -> CaptionResult:
        t0 = time.perf_counter()
        if prompt.count(IMAGE) != len(pixels):
            raise CaptionError(
                "bad_request", f"{prompt.count(IMAGE)} placeholders for {len(pixels)} frames"
            )
        ids = self.tok(self.chat_text(prompt), return_tensors="pt").to(self.device)
        s = self.sampling
        sample = s["temperature"] > 0
        with self._lock, torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out = self.model.generate(
                **ids, pixel_values=pixels.to(self.device, self.model.dtype),
                max_new_tokens=s["max_tokens"], do_sample=sample,
                temperature=s["temperature"] if sample else None,
                top_p=s["top_p"] if sample else None, pad_token_id=self.tok.pad_token_id or 0,
                suppress_tokens=self.suppress,
            )  # fmt: skip
        new = out[0, ids["input_ids"].shape[1] :]
        eos = self.tok.eos_token_id
        stopped = eos is not None and bool((new == eos).any())
        text = self.tok.decode(new, skip_special_tokens=True)
        return CaptionResult(
            text=text,
            finish_reason="stop" if stopped or len(new) < s["max_tokens"] else "length",
            prompt_tokens=int(ids["input_ids"].shape[1]),
            output_tokens=int(len(new)),
            seconds=time.perf_counter() - t0,
        )


register("captioner", "transformers")(InternVLCaptioner)


@register("captioner", "tiny-random")
class TinyRandomCaptioner(InternVLCaptioner):
    """The tiny-random InternVL (see the module docstring)."""
