"""Conditioning: window samples -> latent samples (VAE + text encoder) -> model ``Batch``es
(history/prediction split, event embeddings + action embeddings from the cache).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from model.sampling import Batch
from model.text import ActionEmbeddingCache, TextEncoder, encoder_id
from model.vae import STRIDE, VideoVAE
from model.windows import encode_windows
from training.config import TrainConfig


class Conditioner:
    """Turns window samples into latent samples (VAE + text encoder) and latent samples into
    model inputs (history/prediction split, action embeddings from the cache)."""

    def __init__(
        self,
        cfg: TrainConfig,
        vae: VideoVAE | None,
        text: TextEncoder | None,
        actions: ActionEmbeddingCache | None,
    ):
        self.cfg, self.vae, self.text, self.actions = cfg, vae, text, actions

    def to_latent_samples(self, samples: list[dict]) -> list[dict]:
        """Encode raw windows (those without ``latents``) with the VAE and text encoder
        (``model.windows.encode_windows``); latent samples pass through."""
        raw = [i for i, s in enumerate(samples) if "latents" not in s]
        if not raw:
            return samples
        if self.vae is None or self.text is None:
            raise ValueError("raw clip samples need a VAE and a text encoder")
        encoded = encode_windows([samples[i] for i in raw], self.vae, self.text, self.cfg)
        out = list(samples)
        for i, lat in zip(raw, encoded, strict=True):
            out[i] = lat
        return out

    def batch(self, samples: list[dict], task: str, rng: np.random.Generator) -> Batch:
        """Stack latent samples and split them into history and prediction latent frames.

        T2V: no history. I2V: the nearest ``h`` history latent frames, h drawn uniformly in
        [1, min(max_history_latent_frames, available)]; the model then samples far history
        in time and patchifies it by distance. ``history_first_frame`` says whether the
        oldest passed frame is the video's first frame (for every sample of the batch).
        """
        fp = self.cfg.pred_latent_frames
        hist = [int(s["history_latent_frames"]) for s in samples]
        for s, hl in zip(samples, hist, strict=True):
            if s["latents"].shape[1] != hl + fp:
                raise ValueError(
                    f"{s['__key__']}: {s['latents'].shape[1]} latent frames, need {hl}+{fp}"
                )
        h = 0
        if task == "i2v":
            most = min(min(hist), self.cfg.max_history_latent_frames)
            if most < 1:
                raise ValueError("an I2V sample has no history frame")
            h = int(rng.integers(1, most + 1))
        pred = torch.stack([s["latents"][:, hl:] for s, hl in zip(samples, hist, strict=True)])
        # prediction pixel frames: after 1 + 4(hl - 1) history frames; their action label
        starts = [0 if hl == 0 else 1 + STRIDE[0] * (hl - 1) for hl in hist]
        labels = [
            _mode(s["keys"][p:], s["mouse"][p:]) for s, p in zip(samples, starts, strict=True)
        ]
        keys = torch.tensor([k for k, _ in labels])
        mouse = torch.tensor([m for _, m in labels])
        event = torch.stack([s["event_emb"] for s in samples]).float()  # (B, Le, D)
        action = self.actions.lookup(keys, mouse).float()  # (B, La, D)
        history = None
        if h:
            history = torch.stack(
                [s["latents"][:, hl - h : hl] for s, hl in zip(samples, hist, strict=True)]
            ).float()  # (B, 48, h, h_lat, w_lat)
        first = bool(h) and all(
            s.get("history_starts_at_first_frame", False) and hl == h
            for s, hl in zip(samples, hist, strict=True)
        )
        return Batch(
            task=task,
            prediction=pred.float(),  # (B, 48, Fp, h_lat, w_lat)
            history=history,
            history_frame_ids=torch.arange(h, 0, -1) if h else None,  # distances, 1 = nearest
            text=torch.cat([event, action], dim=1),  # (B, Le + La, D)
            tiny_random=any(s["tiny_random"] for s in samples),
            history_first_frame=first,
        )


def _mode(keys: np.ndarray, mouse: np.ndarray) -> tuple[int, int]:
    """Most frequent (keys, mouse) pair (lowest codes on ties); (0, 0) for an empty range."""
    if not len(keys):
        return 0, 0
    pairs, counts = np.unique(
        np.stack([np.asarray(keys, np.int64), np.asarray(mouse, np.int64)], 1),
        axis=0,
        return_counts=True,
    )
    k, m = pairs[int(counts.argmax())]
    return int(k), int(m)


def stored_action_cache(path: Path, cfg: TrainConfig) -> ActionEmbeddingCache | None:
    """The action cache at ``path`` if ``cfg``'s encoder, style and length built it (checked
    without loading the encoder), else None."""
    if not path.exists():
        return None
    cache = ActionEmbeddingCache.load(path)
    ok = (
        cache.meta.get("encoder_id") == encoder_id(cfg.text_encoder)
        and cache.meta.get("style") == cfg.action_style
        and cache.embeddings.shape[2] == cfg.action_len
    )
    return cache if ok else None
